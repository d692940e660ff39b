"""distill: the frozen teacher's contract, Hinton's loss, each mistake's consequence, a smoke run,
a resume, one real process, and (marked peer) torchdistill's KD loss beside ours."""

import sys

import pytest
import torch
import torch.nn.functional as F

from gallery import distill
from gallery.check import constant, frozen, no_grad_reaches, runs_in_eval_mode
from gallery.core.cli import compose
from gallery.core.probes import saved_bytes, state_hash
from tests.conftest import run_here


def _setup(mistake="none", seed=0):
    torch.manual_seed(seed)
    steps = distill.BY_MISTAKE[mistake]
    teacher = steps.make_teacher(distill.teacher_net(16, 32, 4, 0.3))
    student = distill.student_net(16, 8, 4)
    optimizer = steps.make_optimizer(student, teacher, 1e-2)
    x = torch.randn(24, 1, 4, 4)
    y = torch.cat([torch.randint(4, (8,)), torch.full((16,), -1)])  # 8 labelled, 16 not
    return steps, teacher, student, optimizer, x, y


def _step(steps, teacher, student, optimizer, x, y, temperature=4.0, alpha=0.9):
    target = steps.soft_targets(teacher, x)
    loss = steps.distill_loss(student(x), target, y, temperature, alpha)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return target


# --- the pattern's contract ---------------------------------------------------------------------

def test_the_teacher_is_frozen_in_eval_mode_and_its_targets_are_data():
    steps, teacher, student, optimizer, x, y = _setup()
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    with frozen(teacher=teacher), runs_in_eval_mode(teacher=teacher):
        target = _step(steps, teacher, student, optimizer, x, y)
    constant(soft_targets=target)
    assert all(p.grad is None for p in teacher.parameters())


def test_distill_loss_is_hintons_and_t_squared_keeps_the_soft_gradient_scale():
    torch.manual_seed(0)
    s, t = torch.randn(6, 5, requires_grad=True), torch.randn(6, 5)
    labels = torch.tensor([0, 1, -1, -1, 2, -1])
    loss = distill.distill_loss(s, t, labels, 4.0, 0.7)
    p_t = F.softmax(t / 4, 1)
    kl = (p_t * (p_t.log() - F.log_softmax(s / 4, 1))).sum(1).mean()
    ce = F.cross_entropy(s[labels >= 0], labels[labels >= 0])
    torch.testing.assert_close(loss, 0.3 * ce + 0.7 * 16 * kl)
    # the soft gradient: T² puts back what the two divisions by T take away
    soft = [torch.autograd.grad(fn(s, t, torch.full((6,), -1), temperature, 1.0), s)[0].norm()
            for fn, temperature in ((distill.distill_loss, 4.0), (distill.distill_loss, 8.0),
                                    (distill.distill_loss_no_t_squared, 4.0))]
    assert 0.5 < float(soft[1] / soft[0]) < 2  # with T²: about the same at T=4 and T=8
    torch.testing.assert_close(soft[2] * 16, soft[0])  # without it: 1/16 at T=4


# --- the mistakes' consequences -------------------------------------------------------------------

def test_teacher_train_mode_changes_the_teacher_and_makes_its_targets_noisy():
    steps, teacher, student, optimizer, x, y = _setup("teacher_train_mode")
    before = state_hash(teacher)
    first = _step(steps, teacher, student, optimizer, x, y)
    second = steps.soft_targets(teacher, x)
    assert state_hash(teacher) != before  # BatchNorm's running statistics moved
    assert not torch.equal(first, second)  # dropout: two passes, two targets
    with pytest.raises(AssertionError, match=r"^runs_in_eval_mode: teacher:"):
        with runs_in_eval_mode(teacher=teacher):
            _step(steps, teacher, student, optimizer, x, y)


def test_teacher_with_grad_writes_grad_into_the_teacher_and_holds_more_bytes():
    held, grads = {}, {}
    for mistake in ("none", "teacher_with_grad"):
        steps, teacher, student, optimizer, x, y = _setup(mistake)
        held[mistake], _ = saved_bytes(_step, steps, teacher, student, optimizer, x, y)
        grads[mistake] = any(p.grad is not None for p in teacher.parameters())
    assert grads == {"none": False, "teacher_with_grad": True}
    assert held["teacher_with_grad"] > 2 * held["none"]


def test_teacher_in_optimizer_moves_the_teacher():
    steps, teacher, student, optimizer, x, y = _setup("teacher_in_optimizer")
    before = state_hash(teacher)
    for _ in range(3):
        _step(steps, teacher, student, optimizer, x, y)
    assert state_hash(teacher) != before
    pattern = _setup()
    hash_before = state_hash(pattern[1])
    for _ in range(3):
        _step(*pattern)
    assert state_hash(pattern[1]) == hash_before


# --- runs ---------------------------------------------------------------------------------------

ARGS = ["device=cpu", "steps=40", "eval_every=20", "log_every=20", "teacher_steps=40"]


def test_a_smoke_run_distills_without_touching_the_teacher(tmp_path):
    s = distill.train(compose("distill", [*ARGS, f"out_dir={tmp_path}/run",
                                          f"teacher_dir={tmp_path}/teacher"]))
    assert s["labels"] == 50 and [e["step"] for e in s["curve"]] == [20, 40]
    assert not s["teacher_changed"] and not s["teacher_has_grad"]
    assert s["teacher_accuracy"] == s["teacher_accuracy_at_start"] > 0.5
    assert (tmp_path / "run" / "accuracy.png").is_file()
    assert list((tmp_path / "teacher").glob("seed0-*/last.pt"))  # cached for the next run


def test_resume_continues_from_the_checkpoint_to_the_end(tmp_path):
    args = [*ARGS[:1], "eval_every=20", "log_every=20", "ckpt_every=20", "teacher_steps=40",
            f"teacher_dir={tmp_path}/teacher"]
    distill.train(compose("distill", ["steps=20", *args, f"out_dir={tmp_path}/run"]))
    resumed = distill.train(compose("distill", ["steps=40", *args, f"out_dir={tmp_path}/run",
                                                "resume=true"]))
    straight = distill.train(compose("distill", ["steps=40", *args,
                                                 f"out_dir={tmp_path}/straight"]))
    assert resumed["curve"] == straight["curve"]


@pytest.mark.gpu
def test_gpu_smoke(tmp_path):
    s = distill.train(compose("distill", ["device=cuda", *ARGS[1:], f"out_dir={tmp_path}/run",
                                          f"teacher_dir={tmp_path}/teacher"]))
    assert s["device"].startswith("cuda") and not s["teacher_has_grad"]


@pytest.mark.peer
def test_torchdistills_kd_loss_equals_ours_in_value_and_gradient():
    """torchdistill's KDLoss (alpha * CE + beta * T² * KL, batchmean) on the same logits, with
    every example labelled, as its loss expects."""
    from scripts.measure.peers import installed

    deps = installed("torchdistill")
    if deps is None:
        pytest.skip("scripts/test.sh --peers installs torchdistill first")
    sys.path.insert(0, str(deps))
    from torchdistill.losses.mid_level import KDLoss

    torch.manual_seed(0)
    s, t = torch.randn(8, 10, requires_grad=True), torch.randn(8, 10)
    labels = torch.randint(10, (8,))
    kd = KDLoss(student_module_path="student", student_module_io="output",
                teacher_module_path="teacher", teacher_module_io="output",
                temperature=4.0, alpha=0.3, beta=0.7, reduction="batchmean")
    theirs = kd({"student": {"output": s}}, {"teacher": {"output": t}}, targets=labels)
    ours = distill.distill_loss(s, t, labels, 4.0, 0.7)
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(torch.autograd.grad(ours, s)[0], torch.autograd.grad(theirs, s)[0])


# --- this example's row of the check table (tests/test_check.py) ---

def check_step(mistake: str) -> None:
    """One distillation step under gallery.check: the pattern passes every check; each mistake
    fails with its `caught` sentence."""
    steps, teacher, student, optimizer, x, y = _setup(mistake)
    with no_grad_reaches(teacher=teacher), runs_in_eval_mode(teacher=teacher):
        target = _step(steps, teacher, student, optimizer, x, y)
    with frozen(teacher=teacher):
        _step(steps, teacher, student, optimizer, x, y)
    constant(soft_targets=target)


def test_the_loss_on_a_batch_with_no_label_is_the_soft_term_alone_and_finite():
    """An unlabelled transfer set is the usual case in distillation: every label -1. The hard
    term is then 0 (a mean over no example would be 0/0 = NaN), and the gradient reaches the
    student's logits through the soft term only."""
    torch.manual_seed(0)
    student = torch.randn(6, 4, requires_grad=True)
    teacher = torch.randn(6, 4)
    none = torch.full((6,), -1)
    loss = distill.distill_loss(student, teacher, none, 2.0, 0.5)
    soft = distill.distill_loss(student, teacher, none, 2.0, 1.0)
    assert torch.isfinite(loss) and torch.allclose(loss, 0.5 * soft)
    loss.backward()
    assert torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0
    some = torch.tensor([1, -1, 2, -1, -1, 0])  # and with labels: the mean over those alone
    hard = distill.distill_loss(student, teacher, some, 2.0, 0.0)
    assert torch.allclose(hard, F.cross_entropy(student[some >= 0], some[some >= 0]))


@pytest.mark.parametrize("override,message", [
    ("temperature=1e9", "temperature must be in [0.0, 100.0], got 1000000000.0"),
    ("alpha=1.5", "alpha must be in [0.0, 1.0], got 1.5"),
    ("alpha=-0.1", "alpha must be in [0.0, 1.0], got -0.1"),
])
def test_a_value_out_of_its_bound_is_one_line_naming_the_bound(tmp_path, override, message):
    ran = run_here("gallery.distill", *distill.EXAMPLE.smoke_overrides(tmp_path), override,
                   f"out_dir={tmp_path}/run")
    assert ran.returncode == 2 and message in ran.stderr, ran.stderr[-2000:]
    assert not (tmp_path / "run").exists()


def test_a_folder_key_given_a_file_is_refused_before_anything_runs(tmp_path):
    (tmp_path / "a_file").write_text("not a folder")
    ran = run_here("gallery.distill", *distill.EXAMPLE.smoke_overrides(tmp_path),
                   f"teacher_dir={tmp_path}/a_file", f"out_dir={tmp_path}/run")
    assert ran.returncode == 2, ran.stderr[-2000:]
    assert ran.stderr.strip().startswith(f"error: teacher_dir={tmp_path}/a_file is a file")
    assert not (tmp_path / "run").exists()
