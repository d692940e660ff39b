"""torchrun on the examples' own code path: `RANK` and `WORLD_SIZE` decide, nothing else changes.

    torchrun --standalone --nproc_per_node=2 -m gallery.gan out_dir=/tmp/gan2

Run alone, every function here is a no-op (`wrap` returns the module itself), so one loop serves
one process and N. gloo on CPU, nccl on CUDA (each rank on the GPU of its `LOCAL_RANK`). Every rank
agrees on the run dir (rank 0's, broadcast), only rank 0 writes (gallery/core/run.py), and each rank
seeds its RNGs with seed + rank so it draws its own data; DDP copies rank 0's weights to every rank
when it wraps a module, so the models still start equal.
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.nn.parallel import DistributedDataParallel as DDP

from gallery.core.probes import state_hash


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def launched() -> bool:
    """A launcher started this process: more than one rank, or a rendezvous address (torchrun sets
    one even for one process, which then joins a group of one: the one-GPU DDP smoke runs that
    way)."""
    return world_size() > 1 or "MASTER_ADDR" in os.environ


def setup(device: torch.device) -> torch.device:
    """Join the process group when torchrun started this process; return this rank's device."""
    if not launched():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not active():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def teardown(finished: bool = True) -> None:
    """Leave the process group before the process exits. After a finished run: first free what the
    run left behind (DDP's reducer and the work it launched, which the group's threads may still
    touch: freed only at interpreter exit, it can abort the process), then meet every rank at a
    barrier, so that no peer is still talking when the group goes. After a failed run the process
    just exits: a peer that failed never reaches the barrier, and torchrun stops the others."""
    if not active() or not finished:
        return
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


def wrap(module: nn.Module, device: torch.device, sync_buffers: bool = True) -> nn.Module:
    """DistributedDataParallel around `module` under torchrun; the module itself otherwise.

    DDP registers, when it is built, only the parameters that require grad: freeze first, then wrap.
    sync_buffers=False: rank 0's buffers are copied once, at wrapping, and not before every
    forward."""
    if not active() or not any(p.requires_grad for p in module.parameters()):
        # a module with nothing to train needs no all-reduce (and DDP refuses to wrap it)
        return module
    kwargs = {}
    # the flag was renamed in recent torch; the old name still works there, with a warning
    if not sync_buffers:
        renamed = "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters
        kwargs["forward_sync_buffers" if renamed else "broadcast_buffers"] = False
    return DDP(module, device_ids=[device.index] if device.type == "cuda" else None, **kwargs)


@contextlib.contextmanager
def main_first():
    """Rank 0 runs the block first (a download, a pretraining run that writes a cache), the other
    ranks after it, reading what it wrote. Run alone: just the block."""
    if active() and rank() != 0:
        dist.barrier()
    yield
    if active() and rank() == 0:
        dist.barrier()


def reducer_size(module: nn.Module) -> dict:
    """What a DDP module's reducer all-reduces: parameter tensors and bytes (empty when not
    wrapped)."""
    if not hasattr(module, "_get_ddp_logging_data"):
        return {}
    data = module._get_ddp_logging_data()
    return {"tensors": int(data["num_parameter_tensors"]),
            "bytes": int(data["total_parameter_size_bytes"])}


def shard(data, contiguous: bool = False):
    """This rank's part of an in-memory dataset: every world_size-th item from `rank` (what a
    DistributedSampler hands out), or one contiguous slice (a text's streams). All of it when
    alone."""
    r, w = rank(), world_size()
    if w == 1:
        return data
    return data[r * len(data) // w: (r + 1) * len(data) // w] if contiguous else data[r::w]


def agree(value: Any) -> Any:
    """Rank 0's `value` on every rank (a run dir with a timestamp in it, say)."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(value: Any) -> list:
    """Every rank's `value`, in rank order (a probe's record, a parameter hash)."""
    if not active():
        return [value]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


class AllReduceCounter:
    """Counts the gradient buckets a DDP module all-reduces, through a communication hook (the
    default all-reduce, counted), and attributes them to optimizer steps: `d_step=opt_d` (or
    `attribute(opt_d, "d_step")`) hangs a hook on `opt_d.step` that books the all-reduces since the
    previous booked step to "d_step". Off the training path: the step functions stay as they are."""

    def __init__(self, ddp: nn.Module, **optimizers: torch.optim.Optimizer):
        self.calls, self._booked, self.by_step = 0, 0, {name: 0 for name in optimizers}
        self.steps = {name: 0 for name in optimizers}  # the steps booked, per name
        if active():  # run alone: no hooks at all
            for name, optimizer in optimizers.items():
                self.attribute(optimizer, name)
            def counting_hook(state, bucket):
                self.calls += 1
                return allreduce_hook(state, bucket)

            ddp.register_comm_hook(None, counting_hook)

    def attribute(self, optimizer: torch.optim.Optimizer, name: str) -> None:
        self.by_step[name], self.steps[name] = 0, 0

        def book(*_: Any) -> None:
            self.by_step[name] += self.calls - self._booked
            self.steps[name] += 1
            self._booked = self.calls

        optimizer.register_step_post_hook(book)

    def per_step(self, name: str) -> float:
        """All-reduces per booked step of `name` in this process (0 when run alone)."""
        return self.by_step[name] / max(self.steps[name], 1)


def ddp_report(modules: dict[str, nn.Module], probe_record: dict, **per_rank: Any) -> dict:
    """What summary.json says of a torchrun run (nothing when run alone): the world size, whether
    every rank ended with the same parameters (a hash per module, compared across ranks), and each
    rank's probe record and any other per-rank figures, in rank order. A collective: every rank
    calls it."""
    if not active():
        return {}
    hashes = gather({name: state_hash(m, buffers=False) for name, m in modules.items()})
    probes = gather(probe_record)
    return {"world_size": dist.get_world_size(), "ranks_agree": all(h == hashes[0] for h in hashes),
            **({"probe_by_rank": probes} if any(probes) else {}),  # none: nothing was probed
            **{k: gather(v) for k, v in per_rank.items()}}
