"""A resume goes on with the run it resumes, or is refused in one line: it may extend the run
(steps) or change how it is observed (the cadences, the device, the threads), and says so in its
summary; a change to what the run is (the mistake, the data, the model, the optimizer's settings),
a checkpoint with nothing left to train and resume beside overwrite are refused, exit 2, with
nothing written."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_here

SMOKE = ("steps=20", "eval_every=10", "log_every=10", "device=cpu")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One finished 20-step evaluate run: its folder, and its summary as written."""
    out = tmp_path_factory.mktemp("finished") / "run"
    ran = run_here("gallery.evaluate", *SMOKE, f"out_dir={out}")
    assert ran.returncode == 0, ran.stderr
    return out, (out / "summary.json").read_text()


def refused(ran, *words: str) -> str:
    assert ran.returncode == 2, ran.stderr[-2000:]
    line = ran.stderr.strip()
    assert len(line.splitlines()) == 1 and all(w in line for w in words), line
    return line


def test_a_resume_that_changes_what_the_run_is_is_refused_naming_each_key(finished):
    out, summary = finished
    ran = run_here("gallery.evaluate", *SMOKE, "steps=40", f"out_dir={out}", "resume=true",
                   "mistake=no_eval_mode", "lr=0.01")
    refused(ran, "mistake=none there, no_eval_mode here", "lr=0.001 there, 0.01 here")
    assert (out / "summary.json").read_text() == summary  # the run is as it was


def test_resume_beside_overwrite_is_a_contradiction(finished):
    out, summary = finished
    ran = run_here("gallery.evaluate", *SMOKE, f"out_dir={out}", "resume=true", "overwrite=true")
    refused(ran, "resume and overwrite=true contradict each other")
    assert (out / "summary.json").read_text() == summary


@pytest.mark.parametrize("steps", [10, 20], ids=["fewer steps", "the same steps"])
def test_a_checkpoint_with_nothing_left_to_train_is_refused_into_a_new_folder(
        finished, tmp_path, steps):
    out, _ = finished
    ran = run_here("gallery.evaluate", *SMOKE, f"steps={steps}", f"out_dir={tmp_path}/new",
                   f"resume={out}/checkpoints/last.pt")
    refused(ran, "is at step 20", f"steps={steps} leaves nothing to train")
    assert not (tmp_path / "new").exists()


def test_a_resume_that_extends_the_run_says_what_it_changed(finished, tmp_path):
    out, _ = finished
    ran = run_here("gallery.evaluate", *SMOKE, "steps=30", "eval_every=15",
                   f"out_dir={tmp_path}/longer", f"resume={out}/checkpoints/last.pt")
    assert ran.returncode == 0, ran.stderr[-2000:]
    summary = json.loads((tmp_path / "longer" / "summary.json").read_text())
    assert summary["resumed_with"] == {"steps": [20, 30], "eval_every": [10, 15]}
