"""ema: the frozen averaged copy's contract, each mistake's consequence, a smoke run, a resume and
one real process."""

import pytest
import torch

from gallery import ema
from gallery.check import constant, disjoint, no_grad_reaches, updated
from gallery.core.cli import compose
from gallery.core.probes import saved_bytes, state_hash
from gallery.data import images
from gallery.nets import sync_target


def _setup(mistake="none", seed=0):
    torch.manual_seed(seed)
    variant = ema.BY_MISTAKE[mistake]
    student = ema.classifier(64, 32, 10)
    teacher = variant.make_ema(student)
    x, y = images.load_digits_tensors()
    return variant, student, teacher, torch.optim.Adam(student.parameters(), lr=3e-3), x, y


def _steps(variant, student, teacher, optimizer, x, y, n, weight=1.0):
    for i in range(n):
        xu = x[100 + 48 * i:148 + 48 * i]
        ema.mean_teacher_step(student, teacher, optimizer, x[:50], y[:50], xu, weight, ema.views)
        variant.sync(teacher, student, tau=0.1)


# --- the pattern's contract ---------------------------------------------------------------------

def test_make_ema_is_an_independent_frozen_copy_in_eval_mode():
    _, student, teacher, _, _, _ = _setup()
    assert not teacher.training and student.training
    assert all(not p.requires_grad for p in teacher.parameters())
    assert state_hash(teacher) == state_hash(student)
    with torch.no_grad():
        next(student.parameters()).add_(1.0)
    assert state_hash(teacher) != state_hash(student)  # its own storage


def test_the_update_averages_parameters_copies_buffers_and_leaves_no_graph():
    variant, student, teacher, optimizer, x, y = _setup()
    _steps(variant, student, teacher, optimizer, x, y, 1)
    assert all(p.grad_fn is None and p.grad is None for p in teacher.parameters())
    for t, s in zip(teacher.buffers(), student.buffers()):
        assert torch.equal(t, s)  # running statistics (and their counter) copied
    before = [p.clone() for p in teacher.parameters()]
    sync_target(teacher, student, tau=0.25)
    for b, t, s in zip(before, teacher.parameters(), student.parameters()):
        assert torch.allclose(t, b + 0.25 * (s - b))


def test_the_teacher_step_never_reaches_the_teacher():
    variant, student, teacher, optimizer, x, y = _setup()
    with no_grad_reaches(teacher=teacher):
        ema.mean_teacher_step(student, teacher, optimizer, x[:50], y[:50], x[50:200], 1.0,
                              ema.views)


# --- the mistakes' consequences -------------------------------------------------------------------

def test_skip_buffers_leaves_the_teachers_running_statistics_as_they_were_born():
    results = {}
    for mistake in ("none", "skip_buffers"):
        variant, student, teacher, optimizer, x, y = _setup(mistake)
        _steps(variant, student, teacher, optimizer, x, y, 25)
        bn = teacher[2]
        results[mistake] = bool((bn.running_mean == 0).all() and (bn.running_var == 1).all())
        results[mistake, "accuracy"] = ema.accuracy(teacher, x[1000:], y[1000:])
    assert results["skip_buffers"] is True and results["none"] is False
    # stale statistics on inputs that are not standardised: the averaged model falls apart
    assert results["none", "accuracy"] > results["skip_buffers", "accuracy"] + 0.25


def test_ema_with_grad_grows_the_teachers_graph_by_the_same_amount_every_step():
    variant, student, teacher, optimizer, x, y = _setup("ema_with_grad")
    nodes = []
    for _ in range(3):
        _steps(variant, student, teacher, optimizer, x, y, 2, weight=0.0)
        nodes.append(ema.graph_nodes(teacher))
    assert 0 < nodes[0] < nodes[1] < nodes[2] and nodes[2] - nodes[1] == nodes[1] - nodes[0]
    assert all(p.grad_fn is not None for p in teacher.parameters())
    pattern = _setup()
    _steps(*pattern[:5], pattern[5], 6)
    assert ema.graph_nodes(pattern[2]) == 0


def test_teacher_requires_grad_writes_grad_into_the_teacher_and_holds_more_for_backward():
    held, grads = {}, {}
    for mistake in ("none", "teacher_requires_grad"):
        variant, student, teacher, optimizer, x, y = _setup(mistake)
        held[mistake], _ = saved_bytes(ema.mean_teacher_step, student, teacher, optimizer, x[:50],
                                       y[:50], x[50:200], 1.0, ema.views)
        grads[mistake] = any(p.grad is not None for p in teacher.parameters())
    assert grads == {"none": False, "teacher_requires_grad": True}
    assert held["teacher_requires_grad"] > 1.5 * held["none"]
    with pytest.raises(AssertionError, match="teacher"):
        variant, student, teacher, optimizer, x, y = _setup("teacher_requires_grad")
        with no_grad_reaches(teacher=teacher):
            ema.mean_teacher_step(student, teacher, optimizer, x[:50], y[:50], x[50:200], 1.0,
                                  ema.views)


# --- runs ---------------------------------------------------------------------------------------

def test_a_smoke_run_writes_its_summary_and_figure(tmp_path):
    s = ema.train(compose("ema", ["device=cpu", "steps=40", "eval_every=20", "log_every=20",
                                  "ramp=10", f"out_dir={tmp_path}"]))
    assert s["steps"] == 40 and s["labels"] == 100 and s["teacher_graph_nodes"] == 0
    assert s["teacher_has_grad"] is False and s["step_saved_bytes"] > 0
    assert [e["step"] for e in s["curve"]] == [20, 40] and 0.1 < s["ema_accuracy"] <= 1
    assert (tmp_path / "accuracy.png").is_file()


def test_resume_continues_from_the_checkpoint_to_the_end(tmp_path):
    args = ["eval_every=20", "log_every=20", "ckpt_every=20", "ramp=10", f"out_dir={tmp_path}",
            "device=cpu"]
    first = ema.train(compose("ema", ["steps=20", *args]))
    resumed = ema.train(compose("ema", ["steps=40", *args, "resume=true"]))
    straight = ema.train(compose("ema", ["steps=40", *args[:-2], f"out_dir={tmp_path}/straight",
                                         "device=cpu"]))
    assert first["steps"] == 20 and [e["step"] for e in resumed["curve"]] == [20, 40]
    assert resumed["ema_accuracy"] == straight["ema_accuracy"]


@pytest.mark.gpu
def test_gpu_smoke(tmp_path):
    s = ema.train(compose("ema", ["device=cuda", "steps=20", "eval_every=10", "log_every=10",
                                  f"out_dir={tmp_path}"]))
    assert s["device"].startswith("cuda") and s["teacher_graph_nodes"] == 0


# --- this example's row of the check table (tests/test_check.py) ---

def check_step(mistake: str) -> None:
    """This example's step under gallery.check, for the check table in tests/test_check.py: the
    pattern passes every check; each mistake fails with its `caught` sentence."""
    torch.manual_seed(0)
    variant = ema.BY_MISTAKE[mistake]
    student = ema.classifier(16, 8, 3)
    teacher = variant.make_ema(student)
    disjoint(student=student, teacher=teacher)
    optimizer = torch.optim.Adam(student.parameters())
    x, y = torch.randn(24, 1, 4, 4), torch.randint(3, (8,))
    with no_grad_reaches(teacher=teacher):
        ema.mean_teacher_step(student, teacher, optimizer, x[:8], y, x[8:], 1.0,
                              lambda v: v + 0.1 * torch.randn_like(v))
    with updated(teacher=teacher):  # weights and BatchNorm statistics both move
        variant.sync(teacher, student, tau=0.5)
    constant(teacher_weights=list(teacher.parameters()))
