"""The loop helper every example's train() uses: cadences, checkpoints, resume, signals, solved."""

from __future__ import annotations

import json
import signal

import pytest
import torch
from omegaconf import OmegaConf

from gallery.core.errors import Diverged, Interrupted
from gallery.core.loop import Counters, Loop

DEVICE = torch.device("cpu")


def config(tmp_path, **changes):
    fields = {"steps": 40, "out_dir": str(tmp_path), "tensorboard": False, "resume": "",
              "overwrite": False, "mistake": "none", "seed": 0, "progress": False,
              "ckpt_every": 0, "stop_when_solved": False, **changes}
    return OmegaConf.create(fields)


def run(cfg, by=4, solve_at=None, threshold=None):
    """A toy loop: a counter and a weight that moves every iteration, logs every 10 units, an
    evaluation every 12 (and at the end) whose score is the step."""
    weight, tally = torch.nn.Linear(1, 1), Counters(iterations=0, seen=[])
    torch.nn.init.zeros_(weight.weight)
    log_steps = []
    with Loop(cfg, "toy", {"weight": weight, "tally": tally}, DEVICE, by=by) as loop:
        if loop.finished_summary:
            return loop.finished_summary, tally, log_steps
        for start in loop:
            step = loop.step  # the units done once this iteration ends
            assert start == step - by
            tally.iterations += 1
            tally.seen.append(step)
            with torch.no_grad():
                weight.weight += 1.0
            if loop.due(10):
                log_steps.append(step)
                loop.log(losses={"loss": torch.tensor(1.0 / step)}, iterations=tally.iterations)
            if loop.due(12, final=True):
                loop.evaluated(score=float(step), weight=float(weight.weight.detach()))
                if loop.solved(float(step), threshold if solve_at is None else solve_at):
                    break
        return loop.summary(iterations=tally.iterations,
                            first_solved=loop.first_solved), tally, log_steps


def test_cadences_fire_once_per_crossed_multiple_and_the_evaluation_also_at_the_end(tmp_path):
    summary, tally, log_steps = run(config(tmp_path, steps=38), by=4)
    # the last iteration passes steps=38, as a vector env does
    assert tally.seen == list(range(4, 41, 4))
    assert log_steps == [12, 20, 32, 40]  # crossed 10, 20, 30, 40
    evals = [row["step"] for row in summary_evals(tmp_path)]
    assert evals == [12, 24, 36, 40]  # multiples of 12, then the last step
    assert summary["example"] == "toy" and summary["mistake"] == "none"
    assert summary["iterations"] == 10


def summary_evals(tmp_path):
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    return state["loop"]["evals"]


def test_the_last_iteration_saves_a_checkpoint_and_a_resume_continues_every_counter(tmp_path):
    straight, _, _ = run(config(tmp_path / "straight", steps=80))
    run(config(tmp_path / "split", steps=36))
    state = torch.load(tmp_path / "split" / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] == 36 and state["tally"]["iterations"] == 9 and state["loop"]["step"] == 36
    resumed, tally, _ = run(config(tmp_path / "split", steps=80, resume="true"))
    assert tally.iterations == 20 and tally.seen == list(range(4, 81, 4))
    drop = ("out_dir", "wall_seconds")
    assert resumed.pop("resumed_with") == {"steps": [36, 80]}
    assert {k: v for k, v in resumed.items() if k not in drop} == \
        {k: v for k, v in straight.items() if k not in drop}
    assert summary_evals(tmp_path / "split") == summary_evals(tmp_path / "straight")


def test_a_finished_run_resumed_does_nothing_and_returns_its_summary(tmp_path, capsys):
    first, _, _ = run(config(tmp_path))
    again, tally, _ = run(config(tmp_path, resume="true"))
    assert again == first and tally.iterations == 10  # restored, and not one iteration more
    assert "is finished" in capsys.readouterr().err


def test_stop_when_solved_saves_there_and_a_resume_finds_the_run_finished(tmp_path):
    summary, tally, _ = run(config(tmp_path, stop_when_solved=True), solve_at=20.0)
    assert summary["first_solved"] == 24 and tally.iterations == 6  # the first eval past 20
    assert torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["step"] == 24
    again, tally, _ = run(config(tmp_path, stop_when_solved=True, resume="true"))
    assert again["first_solved"] == 24 and tally.iterations == 6
    # without stop_when_solved the first solved step is kept and the run goes on
    summary, tally, _ = run(config(tmp_path / "on"), solve_at=20.0)
    assert summary["first_solved"] == 24 and tally.iterations == 10


def test_a_signal_stops_after_the_iteration_with_a_checkpoint_to_resume_from(tmp_path):
    cfg = config(tmp_path)
    with pytest.raises(Interrupted) as info:
        with Loop(cfg, "toy", {"tally": Counters(n=0)}, DEVICE, by=4) as loop:
            for _ in loop:
                if loop.step == 8:
                    loop.run._on_signal(signal.SIGTERM, None)
    assert info.value.step == 8
    assert torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["step"] == 8


def test_a_nan_loss_stops_the_run_and_is_recorded(tmp_path):
    with pytest.raises(Diverged, match="loss=nan"):
        with Loop(config(tmp_path), "toy", {}, DEVICE) as loop:
            for _ in loop:
                loop.log(losses={"loss": torch.tensor(float("nan"))})
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "diverged"


def test_counters_save_tensors_as_data_without_their_graph():
    x = torch.ones(2, requires_grad=True)
    tally = Counters(state=(x * 2, [x + 1]), n=3)
    state = tally.state_dict()
    assert state["n"] == 3 and state["state"][0].grad_fn is None
    assert state["state"][1][0].grad_fn is None
    assert tally.state[0].grad_fn is not None  # the live value keeps its graph
    fresh = Counters(state=None, n=0)
    fresh.load_state_dict(state)
    assert fresh.n == 3 and torch.equal(fresh.state[0], torch.full((2,), 2.0))
