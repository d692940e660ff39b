"""The examples under torchrun, on their own code path: 2 processes with gloo on the CPU.

scripts/torchrun_smoke.sh runs this file; GALLERY_DDP_NPROC and GALLERY_DDP_DEVICE choose the
process count and the device (on a GPU machine: GALLERY_DDP_NPROC=1 GALLERY_DDP_DEVICE=cuda,
nccl)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import torch

from gallery.core import dist
from gallery.core.registry import examples
from gallery.core.run import read_metrics
from scripts.measure.gate import ONE_THREAD, torchrun_command
from tests.conftest import ROOT, run_here, smoke_args

NPROC = int(os.environ.get("GALLERY_DDP_NPROC", "2"))
DEVICE = os.environ.get("GALLERY_DDP_DEVICE", "cpu")


def torchrun(module: str, out_dir, *overrides: str, nproc: int = NPROC) -> dict:
    cmd = torchrun_command(module.removeprefix("gallery."), nproc, f"out_dir={out_dir}",
                           *overrides, device=DEVICE)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env=ONE_THREAD)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("outputs:") == 1, "only rank 0 reports"
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["world_size"] == nproc
    assert summary["ranks_agree"], "every rank ends with the same weights"
    rows = read_metrics(out_dir / "metrics.jsonl")
    steps = [r["step"] for r in rows]
    assert steps == sorted(steps) and len(rows) == len({json.dumps(
        r, sort_keys=True) for r in rows})
    return summary


def test_bad_input_under_torchrun_is_one_line_from_rank_0_and_writes_nothing(tmp_path):
    """Every worker finds the same bad input; rank 0 says it and exits 2, and torchrun stops the
    other worker, which waits for that instead of racing rank 0 to the exit."""
    out = tmp_path / "run"
    proc = subprocess.run(torchrun_command("accumulate", 2, f"out_dir={out}", "micro_batch_size=0"),
                          capture_output=True, text=True, timeout=120, cwd=ROOT, env=ONE_THREAD)
    said = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(said) == 1 and "micro_batch_size" in said[0], proc.stderr[-3000:]
    assert proc.returncode == 1  # torchrun's own status for a failed worker
    assert "exitcode  : 2" in proc.stderr  # rank 0's, the first failure torchrun reports
    assert not out.exists(), sorted(out.rglob("*"))


# One process too: torchrun --nproc_per_node=1 (the one-GPU nccl smoke's launch) must run DDP in a
# group of one, not the run-alone path, so its G is all-reduced like N processes' are.
@pytest.mark.parametrize("nproc", sorted({NPROC, 1}))
def test_gan_under_ddp_g_is_never_all_reduced_in_the_d_step(tmp_path, nproc):
    steps = 12
    s = torchrun("gallery.gan", tmp_path / "gan", f"steps={steps}", "log_every=4", "eval_every=12",
                 "hidden=16", "batch_size=32", "eval_samples=64", nproc=nproc)
    for probe, buckets in zip(s["probe_by_rank"], s["g_allreduce_buckets"]):
        assert probe["g_grad_norm_after_d_step"] == 0.0 and probe["d_step_reaches_g"] is False
        # one bucket per G step or more
        assert buckets["d_step"] == 0 and buckets["g_step"] >= steps
    assert (tmp_path / "gan" / "samples_step000012.png").is_file()


def test_finetune_under_ddp_all_reduces_the_head_only(tmp_path):
    s = torchrun("gallery.finetune", tmp_path / "ft", "steps=8", "eval_every=8", "log_every=4",
                 "backbone.pretrain_steps=20", f"backbone.checkpoint_dir={tmp_path / 'bb'}")
    head_tensors = 4  # two Linear layers, weight and bias
    for reducer in s["reducer"]:
        expected = {"tensors": head_tensors, "bytes": 4 * s["trainable_params"]}
        assert reducer == expected, "the frozen blocks are not registered"
    assert all(p["backbone_unchanged"] for p in s["probe_by_rank"]) and s["backbone_unchanged"]
    assert (tmp_path / "bb" / "last.pt").is_file()  # rank 0 pretrained it; the others read it


def test_tbptt_under_ddp_each_rank_carries_a_detached_state(tmp_path):
    s = torchrun("gallery.tbptt", tmp_path / "tb", "steps=8", "eval_every=8", "log_every=4",
                 "hidden=16", "embed=8", "batch_size=4", "bptt_len=8", "probe_every=1")
    # detached at the chunk's start
    assert [p["state_grad_fn"] for p in s["probe_by_rank"]] == [False] * NPROC


@pytest.mark.parametrize("name", sorted(examples()))
def test_a_non_zero_rank_writes_nothing(name, tmp_path, monkeypatch, pretrained_backbone):
    """RANK=1 without a process group (run in this process): the example trains as rank 1 would, and
    every write it makes (metrics, checkpoints, figures, samples, summary) is rank 0's to make, so
    the folder stays empty."""
    example = examples()[name]
    # rank 0 pretrains finetune's backbone into the cache; here it is there already
    smoke = smoke_args(example, tmp_path, pretrained_backbone)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "1")
    proc = run_here(f"gallery.{name}", *smoke, f"out_dir={tmp_path / 'run'}", "device=cpu",
                    "threads=1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = tmp_path / "run"
    written = sorted(str(p.relative_to(tmp_path)) for p in run.rglob("*")) if run.exists() else []
    assert written == [], written
    assert "outputs:" not in proc.stdout


def test_each_rank_gets_its_own_shard(monkeypatch):
    data = torch.arange(10)
    monkeypatch.setenv("WORLD_SIZE", "2")
    parts = {}
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        parts[rank] = (dist.shard(data).tolist(), dist.shard(data, contiguous=True).tolist())
    assert parts[0] == ([0, 2, 4, 6, 8], [0, 1, 2, 3, 4]) and parts[1] == (
        [1, 3, 5, 7, 9], [5, 6, 7, 8, 9])


def test_alone_the_ddp_helpers_are_no_ops():
    module = torch.nn.Linear(2, 2)
    assert dist.wrap(module, torch.device("cpu")) is module and dist.agree("x") == "x"
    assert dist.gather(3) == [3]
    assert dist.ddp_report({"m": module}, {}) == {} and dist.reducer_size(module) == {}
    with dist.main_first():
        pass
