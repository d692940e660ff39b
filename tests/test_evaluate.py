"""evaluate: the evaluation block's contract, the lesson that eval() and no_grad are independent,
each mistake's consequence, a smoke run, a resume and one real process."""

import pytest
import torch
import torch.nn.functional as F

from gallery import evaluate
from gallery.check import (
    constant,
    modes_restored,
    runs_in_eval_mode,
    runs_in_train_mode,
    unchanged,
)
from gallery.core.cli import compose
from gallery.core.errors import ExplainedMistake
from gallery.core.probes import SavedTensorMeter, state_hash
from gallery.data import images
from tests.conftest import run_here


@pytest.fixture(scope="module")
def trained():
    """A model trained for 300 steps on 20 images per class, and the validation set."""
    torch.manual_seed(0)
    x, y = images.load_digits_tensors()
    xt, yt, xv, yv = images.stratified_split(x, y, 0.3, 0, 20)
    model = evaluate.classifier(64, 64, 10, 0.3)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        i = torch.randint(len(yt), (64,), generator=g)
        evaluate.train_step(model, optimizer, xt[i], yt[i])
    return model, optimizer, xt, yt, xv, yv


# --- the pattern's contract ---------------------------------------------------------------------

def test_evaluating_is_eval_mode_without_a_graph_and_gives_each_mode_back_even_on_error(trained):
    model = trained[0]
    model[2].eval()  # a part kept in eval by design (a frozen BatchNorm) stays in eval
    modes = [m.training for m in model.modules()]
    with pytest.raises(RuntimeError, match="mid-evaluation"):
        with evaluating_checked(model):
            raise RuntimeError("mid-evaluation")
    assert [m.training for m in model.modules()] == modes and not model[2].training
    model.train()


def evaluating_checked(model):
    """`evaluating` with its own contract asserted inside the block."""
    import contextlib

    @contextlib.contextmanager
    def block():
        with evaluate.evaluating(model):
            assert not torch.is_grad_enabled()
            assert not any(m.training for m in model.modules())
            yield
    return block()


def test_evaluate_returns_floats_and_leaves_the_model_as_it_found_it(trained):
    model, _, _, _, xv, yv = trained
    before = state_hash(model)
    with modes_restored(model), runs_in_eval_mode(model), unchanged(model):
        with SavedTensorMeter() as meter:
            metrics = evaluate.evaluate(model, evaluate.in_batches(xv, yv, 128))
    assert meter.total == 0 and state_hash(model) == before
    assert all(type(v) is float for v in metrics.values()) and metrics["accuracy"] > 0.8
    constant(metrics=metrics)
    again = evaluate.evaluate(model, evaluate.in_batches(xv, yv, 4))  # any batch size: the same,
    assert abs(again["accuracy"] - metrics["accuracy"]) <= 2 / len(yv)  # up to rounding


def test_hardest_returns_plain_tensors_that_a_training_step_can_use(trained):
    model, optimizer, xt, yt, _, _ = trained
    x_hard, y_hard = evaluate.hardest(model, xt, yt, 16)
    assert len(y_hard) == 16 and not x_hard.is_inference() and not x_hard.requires_grad
    with evaluate.evaluating(model):  # they are the k largest losses, whichever ties fall out
        losses = F.cross_entropy(model(xt), yt, reduction="none")
        theirs = F.cross_entropy(model(x_hard), y_hard, reduction="none")
    assert torch.allclose(theirs.sort().values, losses.topk(16).values.sort().values)
    with runs_in_train_mode(model):
        evaluate.train_step(model, optimizer, x_hard, y_hard)


def test_eval_mode_and_no_grad_are_independent_either_alone_leaves_one_problem(trained):
    model, _, _, _, xv, yv = trained
    x = xv[:128]
    model.eval()  # eval mode alone: the forward still builds a graph
    with pytest.raises(AssertionError, match="^constant: logits"):
        constant(logits=model(x))
    model.train()
    with torch.no_grad():  # no_grad alone: BatchNorm still learns from the validation batch
        with pytest.raises(AssertionError, match=r"^unchanged: the block changed .*running_mean"):
            with unchanged(model):
                model(x)
    with evaluate.evaluating(model), unchanged(model):  # both: neither problem
        constant(logits=model(x))


# --- the mistakes' consequences -------------------------------------------------------------------

def test_eval_with_grad_holds_bytes_that_grow_with_the_validation_set(trained):
    model, _, _, _, xv, yv = trained
    cost = evaluate.cost_of_evaluating(evaluate.evaluate_with_grad, model, xv, yv, 64)
    assert cost["eval_held_bytes_half"] > 0 and cost["eval_graph_nodes_all"] > 0
    assert 1.8 < cost["eval_held_bytes_all"] / cost["eval_held_bytes_half"] < 2.2
    assert cost["eval_graph_nodes_all"] > cost["eval_graph_nodes_half"]
    pattern = evaluate.cost_of_evaluating(evaluate.evaluate, model, xv, yv, 64)
    assert pattern["eval_held_bytes_all"] == pattern["eval_graph_nodes_all"] == 0


def test_no_eval_mode_changes_the_model_disagrees_with_itself_and_loses_accuracy_at_batch_4(
        trained):
    model, _, _, _, xv, yv = trained
    pattern = evaluate.cost_of_evaluating(evaluate.evaluate, model, xv, yv, 128)
    before = state_hash(model)
    mistake = evaluate.cost_of_evaluating(evaluate.evaluate_no_eval_mode, model, xv, yv, 128)
    assert state_hash(model) != before  # the running statistics learned the validation set
    assert mistake["eval_changed_state"] and not pattern["eval_changed_state"]
    assert mistake["eval_repeat_gap"] > 0 == pattern["eval_repeat_gap"]
    assert mistake["val_accuracy_batch4"] < pattern["val_accuracy_batch4"] - 0.1


def test_train_not_restored_leaves_training_in_eval_mode(trained):
    model, optimizer, xt, yt, xv, yv = trained
    evaluate.evaluate_train_not_restored(model, evaluate.in_batches(xv, yv, 128))
    assert not model.training
    with pytest.raises(AssertionError, match=r"^runs_in_train_mode: Sequential: 2 "
                                             r"\(BatchNorm1d\), 4 \(Dropout\), 6 \(BatchNorm1d\)"):
        with runs_in_train_mode(model):
            evaluate.train_step(model, optimizer, xt[:32], yt[:32])
    model.train()


def test_inference_tensor_reused_raises_at_the_replay_step(trained, tmp_path):
    model, optimizer, xt, yt, _, _ = trained
    x_hard, y_hard = evaluate.hardest_inference_mode(model, xt, yt, 16)
    assert x_hard.is_inference()
    with pytest.raises(RuntimeError, match="Inference tensors cannot be saved for backward"):
        evaluate.train_step(model, optimizer, x_hard, y_hard)
    with pytest.raises(ExplainedMistake, match="picked under torch.inference_mode"):
        evaluate.train(compose("evaluate", ["device=cpu", "steps=20", "eval_every=10",
                                            "mistake=inference_tensor_reused",
                                            f"out_dir={tmp_path}"]))


# --- runs ---------------------------------------------------------------------------------------

def test_a_smoke_run_writes_its_summary_and_figure(tmp_path):
    s = evaluate.train(compose("evaluate", ["device=cpu", "steps=40", "eval_every=20",
                                            "log_every=20", f"out_dir={tmp_path}"]))
    assert s["steps"] == 40 and s["train_images"] == 200 and s["val_images"] == 539
    assert [e["step"] for e in s["curve"]] == [20, 40] and s["evaluations"] == 2
    assert s["eval_held_bytes_all"] == 0 and s["trained_in_eval_mode"] == 0
    assert abs(s["val_accuracy_batch4"] - s["val_accuracy"]) <= 0.01
    assert (tmp_path / "curves.png").is_file()


def test_train_not_restored_run_counts_every_evaluation_as_left_in_eval_mode(tmp_path):
    s = evaluate.train(compose("evaluate", ["device=cpu", "steps=40", "eval_every=20",
                                            "mistake=train_not_restored", f"out_dir={tmp_path}"]))
    assert s["trained_in_eval_mode"] == s["evaluations"] == 2


def test_resume_continues_from_the_checkpoint_to_the_end(tmp_path):
    args = ["eval_every=20", "log_every=20", "ckpt_every=20", f"out_dir={tmp_path}", "device=cpu"]
    evaluate.train(compose("evaluate", ["steps=20", *args]))
    resumed = evaluate.train(compose("evaluate", ["steps=60", *args, "resume=true"]))
    straight = evaluate.train(compose("evaluate", ["steps=60", *args[:-2], "device=cpu",
                                                   f"out_dir={tmp_path}/straight"]))
    assert resumed["curve"] == straight["curve"]


@pytest.mark.gpu
def test_gpu_smoke(tmp_path):
    s = evaluate.train(compose("evaluate", ["device=cuda", "steps=20", "eval_every=10",
                                            "log_every=10", f"out_dir={tmp_path}"]))
    assert s["device"].startswith("cuda") and s["eval_held_bytes_all"] == 0


# --- this example's row of the check table (tests/test_check.py) ---

def check_step(mistake: str) -> None:
    """This example's evaluation and replay under gallery.check: the pattern passes every check;
    each mistake fails with its `caught` sentence."""
    torch.manual_seed(0)
    steps = evaluate.BY_MISTAKE[mistake]
    model = evaluate.classifier(16, 8, 3, 0.2)
    optimizer = torch.optim.Adam(model.parameters())
    x, y = torch.randn(24, 1, 4, 4), torch.randint(3, (24,))
    evaluate.train_step(model, optimizer, x, y)
    batches = evaluate.in_batches(x, y, 8)
    with modes_restored(model=model):  # every module's mode back afterwards
        metrics = steps.evaluate(model, batches)
    constant(metrics=metrics)  # plain floats: nothing holds a graph
    with unchanged(model=model):  # evaluating leaves the weights and BatchNorm's buffers alone
        steps.evaluate(model, batches)
    constant(hard=steps.hardest(model, x, y, 8))  # data, for the replay step


def test_a_count_above_what_the_data_holds_and_an_ignored_size_are_said(tmp_path):
    """Capped or ignored, never in silence: one line each, and the run goes on."""
    ran = run_here("gallery.evaluate", *evaluate.EXAMPLE.smoke, "device=cpu",
                   "data.train_per_class=1000", "data.image_size=4", f"out_dir={tmp_path}/run")
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert "note: data.train_per_class=1000 is more than 10 classes hold" in ran.stderr
    assert "note: data.image_size=4 is ignored on digits" in ran.stderr
