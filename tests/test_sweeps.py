"""Sweeps on Hydra's launchers: joblib on this machine (a real 2-job sweep), SLURM composed and
checked (there is no cluster here), and scripts/sweep_report.py on the sweep's folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from gallery.core.cli import compose
from tests.conftest import ROOT, run_module

REPORT = ROOT / "scripts" / "sweep_report.py"


def test_a_joblib_sweep_runs_two_seeds_in_parallel_and_the_report_pools_them(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_module("gallery.gan", "-m", "seed=0,1", "hydra/launcher=joblib",
                      "hydra.launcher.n_jobs=2", "data=digits", "steps=6", "log_every=3",
                      "eval_every=6", "batch_size=16", "hidden=64", "device=cpu",
                      f"out_dir={sweep}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Joblib" in proc.stdout + proc.stderr  # Hydra names the launcher it used
    summaries = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/summary.json"))]
    assert sorted(s["seed"] for s in summaries) == [0, 1]
    cores = os.cpu_count() or 1
    assert all(2 * s["threads"] <= max(cores, 2) for s in summaries), "jobs x threads <= cores"
    report = subprocess.run([sys.executable, str(REPORT), str(sweep), "--metrics", "d_loss,g_loss"],
                            capture_output=True, text=True, cwd=ROOT)
    assert report.returncode == 0, report.stderr
    table = (sweep / "report.md").read_text()
    assert "| jobs | finished | d_loss | g_loss |" in table and "| 2 | 2 |" in table
    mean = sum(s["d_loss"] for s in summaries) / 2
    assert f"{mean:.4g} +/- " in table  # the mean of the two jobs' own summaries
    assert (sweep / "report" / "d_loss.png").stat().st_size > 0


def test_the_report_groups_by_swept_keys_and_counts_jobs_without_a_summary(tmp_path):
    jobs = [("0.1", 0, 1.0), ("0.1", 1, 3.0), ("0.2", 0, 5.0), ("0.2", 1, None)]
    for i, (lr, seed, value) in enumerate(jobs):
        job = tmp_path / f"{i}_lr={lr},seed={seed}"
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(f"- lr={lr}\n- seed={seed}\n- steps=10\n")
        if value is not None:
            (job / "summary.json").write_text(json.dumps({
                "loss": value, "seed": seed, "ok": True, "threads": 1}))
    proc = subprocess.run([sys.executable, str(REPORT), str(tmp_path)], capture_output=True,
                          text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    table = (tmp_path / "report.md").read_text()
    # steps did not vary; seed is pooled; a bool, threads: no metrics
    assert "| lr | jobs | finished | loss |\n" in table
    assert "| 0.1 | 2 | 2 | 2 +/- 1.41 |" in table and "| 0.2 | 2 | 1 | 5 |" in table
    listed = subprocess.run([sys.executable, str(REPORT), str(tmp_path), "--values"],
                            capture_output=True, text=True, cwd=ROOT)
    assert listed.returncode == 0 and "| 0.1 | 2 | 2 | 2 +/- 1.41 (1, 3) |" in listed.stdout
    assert "| 0.2 | 2 | 1 | 5 (5, -) |" in listed.stdout, listed.stdout + listed.stderr
    empty = subprocess.run([sys.executable, str(REPORT), str(tmp_path / "0_lr=0.1,seed=0")],
                           capture_output=True, text=True, cwd=ROOT)
    assert empty.returncode != 0 and "holds no sweep jobs" in empty.stderr


def test_slurm_launcher_composes_with_the_usual_fields_and_checks_their_types():
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import gallery.gan  # noqa: F401 - registers the gan schema
    from gallery.core.config import config_dir

    with initialize_config_dir(version_base="1.3", config_dir=config_dir("gan")):
        cfg = hydra_compose("gan", ["hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                                    "hydra.launcher.gpus_per_node=4"], return_hydra_config=True)
        launcher = cfg.hydra.launcher
        assert launcher._target_.endswith("SlurmLauncher") and launcher.partition == "gpu"
        assert launcher.gpus_per_node == 4 and launcher.tasks_per_node == 1
        assert launcher.timeout_min > 0 and launcher.mem_gb > 0
        with pytest.raises((HydraException, OmegaConfBaseException)):
            hydra_compose("gan", ["hydra/launcher=slurm", "hydra.launcher.timeout_min=soon"],
                          return_hydra_config=True)
    # the launcher is Hydra's business, not the example's
    assert compose("gan", ["seed=3"]).seed == 3
