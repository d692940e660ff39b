import contextlib

import pytest
import torch

from gallery import accumulate as acc
from gallery.check import constant, gets_grad, same_grad_as, updated
from gallery.core.cli import compose
from tests.conftest import run_here
from tests.test_ddp import torchrun

SMOKE = [*acc.EXAMPLE.smoke, "device=cpu"]


def setup(min_len=2, max_len=64, seed=0):
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(20, (5000,), generator=generator)
    model = acc.CausalConvLM(20, 16)
    return model, [acc.micro_batch(ids, 4, min_len, max_len, generator) for _ in range(4)]


def error(accumulate, min_len=2, max_len=64) -> float:
    model, micro_batches = setup(min_len, max_len)
    return acc.relative_grad_error(model, model, micro_batches, accumulate)


def test_the_accumulated_gradient_is_the_full_batchs():
    assert error(acc.accumulate_grads) < 1e-6


def test_mean_of_means_is_off_with_unequal_lengths_and_exact_with_equal_ones():
    assert error(acc.accumulate_grads_mean_of_means) > 0.01
    assert error(acc.accumulate_grads_mean_of_means, 32, 32) < 1e-6


def test_clipping_a_scaled_gradient_hands_the_optimizer_a_gradient_scale_times_too_small():
    norms = {}
    for name, step in (("pattern", acc.clip_and_step), ("mistake", acc.clip_and_step_clip_scaled)):
        model, micro_batches = setup()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        seen = []
        optimizer.register_step_pre_hook(lambda *_, s=seen, m=model: s.append(float(torch.cat(
            [p.grad.flatten() for p in m.parameters()]).norm())))
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
        acc.accumulate_grads(model, micro_batches, scaler, contextlib.nullcontext)
        step(model, optimizer, scaler, 1.0)
        norms[name] = seen[0]
    assert norms["pattern"] <= 1.0 + 1e-5  # at most max_norm=1, in the gradient's own units
    assert norms["mistake"] == pytest.approx(1.0 / 2 ** 16, rel=1e-3)  # max_norm / scale
    assert norms["pattern"] > 1000 * norms["mistake"]


def test_a_short_run_reports_an_exact_gradient(tmp_path):
    s = acc.train(compose("accumulate", [*SMOKE, f"out_dir={tmp_path}"]))
    assert acc.EXAMPLE.check(s) is None and s["grad_rel_error"] < 1e-5
    assert (tmp_path / "val_loss.png").is_file()


def test_amp_runs_with_a_grad_scaler_on_cpu(tmp_path):
    s = acc.train(compose("accumulate", [*SMOKE, "amp=true", f"out_dir={tmp_path}"]))
    assert 0 < s["optimizer_grad_norm"] <= 1.0 + 1e-5


def test_on_two_processes_the_pattern_syncs_once_per_step_and_the_mistake_every_micro_batch(
        tmp_path):
    # tests/test_ddp.py's launcher: 2 gloo processes, every rank's weights compared
    pattern = torchrun("gallery.accumulate", tmp_path / "p", *acc.EXAMPLE.smoke, nproc=2)
    every = torchrun("gallery.accumulate", tmp_path / "m", *acc.EXAMPLE.smoke,
                     "mistake=sync_every_micro_batch", nproc=2)
    assert pattern["world_size"] == 2 and pattern["ranks_agree"]
    assert pattern["grad_rel_error"] < 1e-5 and pattern["allreduces_per_step"] == 1
    assert every["allreduces_per_step"] == 4  # micro_batches=4, one bucket each


# A reader's script on 2 processes: the pattern functions pasted from their source, with torch
# alone, a model of the reader's own, and the full batch's gradient to compare with.
READER_DRIVER = """
import copy, gc, json
import torch.distributed
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

torch.distributed.init_process_group("gloo")
rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
torch.manual_seed(0)
model = nn.Sequential(nn.Embedding(11, 8), nn.Linear(8, 11))
alone = copy.deepcopy(model)
ddp = torch.nn.parallel.DistributedDataParallel(model)
gen = torch.Generator().manual_seed(1)
batches = []
for length in (3, 9, 5, 12):  # unequal micro-batches, padded with -100
    targets = torch.randint(11, (2, 12), generator=gen)
    targets[:, length:] = -100
    batches.append({"inputs": torch.randint(11, (2, 12), generator=gen), "targets": targets})
mine = batches[rank::world]
allreduces = []


def counted(state, bucket):  # DDP's own all-reduce, counted
    allreduces.append(bucket.index())
    return allreduce_hook(state, bucket)


ddp.register_comm_hook(None, counted)
accumulate_grads(ddp, mine, torch.amp.GradScaler("cpu", enabled=False), contextlib.nullcontext)
tokens = sum(int((m["targets"] != -100).sum()) for m in batches)
(sum(token_loss_sum(alone, m) for m in batches) / tokens).backward()
error = max(float((a.grad - b.grad).norm() / b.grad.norm())
            for a, b in zip(model.parameters(), alone.parameters()))
if rank == 0:
    print(json.dumps({"world": world, "error": error, "allreduces": len(allreduces)}))
# leave as gallery/core/dist.py's teardown does: without it, DDP's reducer outlives the group and
# a rank can abort at exit ("terminate called without an active exception")
del ddp
gc.collect()
torch.distributed.barrier()
torch.distributed.destroy_process_group()
"""


def test_the_pattern_pasted_into_a_readers_script_is_the_full_batch_on_two_processes(tmp_path):
    """accumulate's pattern functions, pasted from their source into a file that imports torch
    and nothing of the gallery, run under torchrun on 2 processes: each process accumulates its
    share of unequal micro-batches, and DDP's one all-reduce leaves every rank with the gradient
    of the whole batch on one process."""
    import inspect
    import json
    import os
    import subprocess
    import sys

    pattern = "\n\n".join(inspect.getsource(getattr(acc, name))
                           for name in acc.EXAMPLE.pattern_functions)
    script = tmp_path / "reader.py"
    script.write_text("import contextlib\nimport torch\nimport torch.nn.functional as F\n"
                      "from torch import nn\n\n" + pattern + "\n" + READER_DRIVER)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=2", str(script)], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    # one bucket for so small a model: one all-reduce for the step's two micro-batches
    assert result["world"] == 2 and result["error"] < 1e-5 and result["allreduces"] == 1, result


# --- this example's row of the check table (tests/test_check.py) ---

def check_step(mistake: str) -> None:
    """One accumulated step under gallery.check: its gradient is the full batch's (same_grad_as,
    which catches mean_of_means); the sync and clip mistakes pass here, as their table rows say
    why."""
    steps = acc.BY_MISTAKE[mistake]
    model, micro_batches = setup()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)

    def full_batch():  # the plain step: one backward of the whole batch's mean token loss
        tokens = sum(int((m["targets"] != acc.PAD).sum()) for m in micro_batches)
        (sum(acc.token_loss_sum(model, m) for m in micro_batches) / tokens).backward()

    with same_grad_as(full_batch, model=model), gets_grad(model=model):
        tokens = steps.accumulate(model, micro_batches, scaler, contextlib.nullcontext)
    constant(step_tokens=tokens)
    with updated(model=model):
        steps.step(model, optimizer, scaler, 1.0)


@pytest.mark.parametrize("override,message", [
    ("mistake=clip_scaled", "mistake=clip_scaled needs amp=true"),
    ("mistake=sync_every_micro_batch", "mistake=sync_every_micro_batch needs two processes"),
    ("mistake=no_sync_backward_only", "mistake=no_sync_backward_only needs two processes"),
])
def test_a_mistake_these_settings_cannot_show_is_refused_in_one_line(tmp_path, override, message):
    """At the defaults (no amp, one process) these mistakes would print the pattern's numbers
    while --help promises a consequence: refused, saying what they need, nothing written."""
    ran = run_here("gallery.accumulate", *acc.EXAMPLE.smoke, "device=cpu", override,
                   f"out_dir={tmp_path}/run")
    assert ran.returncode == 2 and message in ran.stderr, ran.stderr
    assert len(ran.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()
