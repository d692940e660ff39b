"""One writer per run: a run holds an OS lock on its run dir while it writes; a second process is
refused with one line naming the holder, in every mode, and a killed run leaves no stale lock."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gallery.core.run import LOCK, lock_run_dir, unlock_run_dir
from tests.conftest import ROOT, run_here
from tests.test_faults import GAN, digest, rows


def _steps(out: Path) -> list[int]:
    return [r["step"] for r in rows(out / "metrics.jsonl") if "d_loss" in r]


@pytest.mark.parametrize("mode", ["fresh", "resume=true", "overwrite=true"])
def test_a_run_dir_another_process_holds_is_refused_in_every_mode(tmp_path, mode):
    out = tmp_path / "run"
    if mode != "fresh":  # a run to resume or to overwrite
        assert run_here("gallery.gan", *GAN, "steps=20", f"out_dir={out}").returncode == 0
    out.mkdir(exist_ok=True)
    held = lock_run_dir(out)  # the other writer (flock: a second open file is a second holder)
    try:
        before = digest(out)
        extra = [] if mode == "fresh" else [mode, "steps=40"]
        ran = run_here("gallery.gan", *GAN, "steps=20", *extra, f"out_dir={out}")
        assert ran.returncode == 2, ran.stderr
        assert ran.stderr == (f"error: out_dir={out} is in use by another run (pid {os.getpid()} "
                              f"on {socket.gethostname()}): wait for it to end, or pick another "
                              f"out_dir\n")
        assert digest(out) == before
    finally:
        unlock_run_dir(held)
    if mode != "fresh":  # once the holder lets go, the same command goes ahead
        assert run_here("gallery.gan", *GAN, *extra, f"out_dir={out}").returncode == 0


def test_a_refused_fresh_run_into_a_new_folder_leaves_no_folder(tmp_path):
    out = tmp_path / "new" / "run"
    ran = run_here("gallery.gan", *GAN, "steps=20", "resume=true", f"out_dir={out}")
    assert ran.returncode == 2 and not (tmp_path / "new").exists()


def _start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "gallery.gan", *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_two_processes_resuming_one_run_together_one_writes_and_one_is_refused(tmp_path):
    """The case from the issue: two `resume=true` commands started together on one run. One trains
    to the end; the other gets one line and exit 2; the rows are each step once."""
    out = tmp_path / "run"
    assert run_here("gallery.gan", *GAN, "steps=40", "ckpt_every=20",
                    f"out_dir={out}").returncode == 0
    args = [*GAN, "steps=4000", "ckpt_every=200", "eval_every=2000", "resume=true",
            f"out_dir={out}"]
    procs = [_start(*args), _start(*args)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    for p in procs:
        p.stdout.close(), p.stderr.close()
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    assert f"out_dir={out} is in use by another run (pid " in refused
    steps = _steps(out)
    assert len(steps) == len(set(steps)) and steps[-1] == 4000
    assert json.loads((out / "summary.json").read_text())["steps"] == 4000


def test_a_run_killed_with_sigkill_leaves_no_stale_lock_and_its_resume_goes_on(tmp_path):
    out = tmp_path / "run"
    args = [*GAN, "steps=4000", "ckpt_every=100", "eval_every=2000", f"out_dir={out}"]
    proc = _start(*args)
    deadline = time.monotonic() + 120
    while not (out / "checkpoints" / "last.pt").is_file() and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    proc.stdout.close(), proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL and (out / LOCK).is_file()  # the file stays...
    resumed = run_here("gallery.gan", *args, "resume=true")  # ...but its lock went with the process
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    steps = _steps(out)
    assert len(steps) == len(set(steps)) and steps[-1] == 4000
