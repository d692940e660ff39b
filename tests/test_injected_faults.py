"""Faults injected during a run (docs/faults.md): a full disk while a checkpoint or a metrics row is
written, an env that raises mid-run, a data file gone between a run and its resume, a damaged
last.pt. Each ends in one line and a documented exit status; the last good checkpoint stays
loadable; once the fault is gone the printed command resumes, and every metrics row is there
once."""

from __future__ import annotations

import errno
import shlex

import pytest
import torch

from gallery.core import checkpoint as checkpoint_module
from gallery.core import run as run_module
from gallery.core.checkpoint import load_checkpoint
from gallery.core.errors import EXIT_STATUS
from gallery.core.registry import examples
from tests.conftest import run_here, smoke_args
from tests.test_faults import GAN, rows

FULL = OSError(errno.ENOSPC, "No space left on device")


def _each_once(found: list[dict]) -> bool:
    """Every row once: no (step, keys) logged twice (a step's training row and its eval row are
    two rows)."""
    return len({(r["step"], *sorted(r)) for r in found}) == len(found)


def _resume_args(stderr: str) -> list[str]:
    """The arguments of the resume command the fault's line prints."""
    command = stderr.split("resume with: ")[1].strip().splitlines()[0]
    assert command.startswith("python -m ")
    return shlex.split(command)[3:]


def _check_fault_then_resume(out, ran, module: str, straight_rows: list[dict] | None,
                             expect: str) -> None:
    assert ran.returncode == EXIT_STATUS["fault"], ran.stderr[-2000:]
    assert ran.stderr.count("\n") == 1 and expect in ran.stderr, ran.stderr
    kept = load_checkpoint(out / "checkpoints" / "last.pt")  # the last good one, loadable
    resumed = run_here(module, *_resume_args(ran.stderr))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    steps = [r["step"] for r in rows(out / "metrics.jsonl")]
    assert steps == sorted(steps) and kept["step"] in steps
    assert _each_once(rows(out / "metrics.jsonl"))
    if straight_rows is not None:  # exact resume: the rows of one straight run
        assert rows(out / "metrics.jsonl") == straight_rows


@pytest.fixture(scope="module")
def straight_gan(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "run"
    assert run_here("gallery.gan", *GAN, "ckpt_every=200", f"out_dir={out}").returncode == 0
    return rows(out / "metrics.jsonl")


def test_a_full_disk_while_a_checkpoint_is_written(tmp_path, monkeypatch, straight_gan):
    real, calls = checkpoint_module.atomic_write, []

    def second_write_fails(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise FULL
        return real(*args, **kwargs)

    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(checkpoint_module, "atomic_write", second_write_fails)
        ran = run_here("gallery.gan", *GAN, "ckpt_every=200", f"out_dir={out}")
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == 200
    _check_fault_then_resume(out, ran, "gallery.gan", straight_gan,
                             f"could not write a checkpoint to {out}/checkpoints (No space left "
                             f"on device); {out}/checkpoints/last.pt is as it was")


class FillsUp:
    """A metrics file on a disk that fills up after `rows` rows: the next row is cut short."""

    def __init__(self, file, rows: int):
        self.file, self.left = file, rows

    def write(self, text: str) -> int:
        if self.left == 0:
            self.file.write(text[: len(text) // 2])  # what a full disk lets through
            self.file.flush()
            raise FULL
        self.left -= 1
        return self.file.write(text)

    def __getattr__(self, name):
        return getattr(self.file, name)


def test_a_full_disk_while_a_metrics_row_is_written(tmp_path, monkeypatch, straight_gan):
    def filling_open(path, mode="r", *args, **kwargs):
        file = open(path, mode, *args, **kwargs)
        return FillsUp(file, 15) if str(path).endswith("metrics.jsonl") and "w" in mode else file

    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(run_module, "open", filling_open, raising=False)
        ran = run_here("gallery.gan", *GAN, "ckpt_every=200", f"out_dir={out}")
    assert not (out / "metrics.jsonl").read_text().endswith("\n")  # a row cut in half
    _check_fault_then_resume(out, ran, "gallery.gan", straight_gan,
                             f"could not write {out}/metrics.jsonl at step")


def test_an_env_that_raises_mid_run(tmp_path, monkeypatch):
    from gymnasium.envs.classic_control.cartpole import CartPoleEnv

    real, calls = CartPoleEnv.step, []

    def breaks_once(self, action):
        calls.append(1)
        if len(calls) == 1500:  # past the checkpoints at 512 and 1024 env steps
            raise RuntimeError("the simulator lost its connection")
        return real(self, action)

    out = tmp_path / "run"
    args = ["steps=2048", "eval_every=1024", "eval_episodes=1", "value_check_episodes=0",
            "ckpt_every=512", "stop_when_solved=false", "device=cpu", f"out_dir={out}"]
    with monkeypatch.context() as patch:
        patch.setattr(CartPoleEnv, "step", breaks_once)
        ran = run_here("gallery.a2c", *args)
    # a resumed RL run restarts the episodes in flight: the rows follow on, not bit for bit
    _check_fault_then_resume(out, ran, "gallery.a2c", None,
                             "env CartPole-v1 raised in step(): RuntimeError: the simulator lost "
                             "its connection")
    assert rows(out / "metrics.jsonl")[-1]["step"] == 2048


def test_a_data_file_gone_between_a_run_and_its_resume(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 400)
    out = tmp_path / "run"
    args = ["data=file", f"data.path={text}", "steps=40", "log_every=10", "eval_every=20",
            "hidden=16", "embed=8", "batch_size=4", "bptt_len=16", "eval_streams=4",
            "sample_len=10", "device=cpu", f"out_dir={out}"]
    assert run_here("gallery.tbptt", *args, "steps=20").returncode == 0
    kept = text.read_bytes()
    text.unlink()
    ran = run_here("gallery.tbptt", *args, "resume=true")
    assert ran.returncode == EXIT_STATUS["bad_input"] and ran.stderr.count("\n") == 1
    assert str(text) in ran.stderr, ran.stderr
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == 20
    text.write_bytes(kept)
    assert run_here("gallery.tbptt", *args, "resume=true").returncode == 0
    assert _each_once(rows(out / "metrics.jsonl"))
    assert rows(out / "metrics.jsonl")[-1]["step"] == 40


@pytest.mark.parametrize("name", sorted(examples()))
def test_a_damaged_last_checkpoint_resumes_from_the_previous_one(tmp_path, name,
                                                                 pretrained_backbone):
    example = examples()[name]
    out = tmp_path / "run"
    args = [*smoke_args(example, tmp_path, pretrained_backbone), "ckpt_every=1", "device=cpu",
            f"out_dir={out}"]
    assert run_here(f"gallery.{name}", *args).returncode == 0
    before = rows(out / "metrics.jsonl")
    previous = torch.load(out / "checkpoints" / "previous.pt", weights_only=True)["step"]
    (out / "checkpoints" / "last.pt").write_bytes(b"\0" * 64)  # a write the disk mangled
    resumed = run_here(f"gallery.{name}", *args, "resume=true")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming from {out}/checkpoints/previous.pt" in resumed.stderr
    after = rows(out / "metrics.jsonl")
    steps = [r["step"] for r in after]
    assert steps == sorted(steps) and _each_once(after)
    assert [r for r in after if r["step"] <= previous] == [
        r for r in before if r["step"] <= previous]
    assert steps[-1] == before[-1]["step"]
