"""What each gallery.check costs, and what the loss-logging leak costs: `scripts/bench.py check`
(scripts/measure/ holds measurements that bench.py runs; each is a module, not a script).

- The checks that wrap or follow one training step (no_grad_reaches, gets_grad, constant,
  has_graph, modes_restored, runs_in_train_mode, finite, optimizer_covers, frozen, same_grad_as)
  around one training step of a small MLP and of a ResNet-18-sized CNN: the step's time with the
  check over its time without, in alternating blocks in one process. same_grad_as runs a whole
  reference backward: it costs a step by design.
- runs_in_eval_mode: around an evaluation (eval mode, a forward under no_grad), against the same
  evaluation without it.
- unchanged, updated and disjoint: milliseconds per million watched parameters (the snapshot and
  the comparison; the storages compared), measured on the same two models.
- bounded_memory: its five calls against five plain calls of a small LSTM chunk.
- The leak `running_loss += loss` in a loop that runs backward every iteration: the resident set
  grows by the bytes per iteration reported here (10,000 iterations, read from /proc), against
  `running_loss += loss.item()`; and the autograd nodes each kept loss holds (an exact count).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from gallery.check import (
    bounded_memory,
    constant,
    disjoint,
    finite,
    frozen,
    gets_grad,
    has_graph,
    modes_restored,
    no_grad_reaches,
    optimizer_covers,
    runs_in_eval_mode,
    runs_in_train_mode,
    same_grad_as,
    unchanged,
    updated,
)


def models(device: torch.device) -> dict[str, tuple[nn.Module, torch.Tensor, torch.Tensor]]:
    """The two models, each with a batch: an MLP, and torchvision's ResNet-18 (random weights) on
    4 images of 128 px."""
    from torchvision.models import resnet18

    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                        nn.Linear(256, 10)).to(device)
    resnet = resnet18(num_classes=10).to(device)
    return {"small MLP (83k params, batch 64)": (mlp, torch.randn(64, 64, device=device),
                                                 torch.randint(10, (64,), device=device)),
            "ResNet-18 (11.2M params, 4 x 3 x 128 x 128)":
                (resnet, torch.randn(4, 3, 128, 128, device=device),
                 torch.randint(10, (4,), device=device))}


def graph_check_overheads(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                          alternate: Callable, device: torch.device, rounds: int,
                          per_round: int) -> dict:
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
    target = copy.deepcopy(model)  # watched, never reached: the cost of a check that passes

    def reference():  # same_grad_as's reference: the same step's backward, once more
        F.cross_entropy(model(x), y).backward()

    def step(wrap=None, after=None):
        def run():
            with wrap() if wrap else _nothing():
                loss = F.cross_entropy(model(x), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            if after:
                after(loss)
        return run

    variants = {
        "plain": step(),
        "no_grad_reaches": step(lambda: no_grad_reaches(target=target)),
        "gets_grad": step(lambda: gets_grad(model=model)),
        "constant": step(after=lambda loss: constant(labels=y, loss_value=loss.detach())),
        "has_graph": step(after=lambda loss: has_graph(loss=loss)),
        "modes_restored": step(lambda: modes_restored(model=model)),
        "runs_in_train_mode": step(lambda: runs_in_train_mode(model=model)),
        "finite": step(lambda: finite(model=model)),
        "optimizer_covers": step(lambda: optimizer_covers(optimizer, model=model)),
        "frozen": step(lambda: frozen(target=target)),
        "same_grad_as": step(lambda: same_grad_as(reference, model=model)),
    }
    def evaluation(wrap=None):  # runs_in_eval_mode guards an evaluation, not a training step
        def run():
            model.eval()
            with wrap() if wrap else _nothing(), torch.no_grad():
                model(x)
            model.train()
        return run

    variants |= {"plain_evaluation": evaluation(),
                 "runs_in_eval_mode": evaluation(lambda: runs_in_eval_mode(model=model))}
    seconds = alternate(variants, rounds, per_round, device)
    base = {name: "plain_evaluation" if name == "runs_in_eval_mode" else "plain"
            for name in variants if not name.startswith("plain")}
    return ({"step_ms": round(1e3 * seconds["plain"], 3),
             "evaluation_ms": round(1e3 * seconds["plain_evaluation"], 3)}
            | {f"{name}_step_ratio": round(seconds[name] / seconds[of], 3)
               for name, of in base.items()}
            | {f"{name}_added_us": round(1e6 * (seconds[name] - seconds[of]), 1)
               for name, of in base.items()})


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return None


def snapshot_checks_ms_per_million(model: nn.Module, alternate: Callable,
                                   device: torch.device, rounds: int) -> dict:
    """unchanged around a block that changes nothing, and updated around an EMA-style write of
    every tensor, less the write itself: milliseconds per million parameters and buffers."""
    ema = copy.deepcopy(model).requires_grad_(False)
    tensors = list(ema.state_dict().values())
    millions = sum(t.numel() for t in tensors) / 1e6

    def write():
        with torch.no_grad():
            for t in tensors:
                t.copy_(t)

    def write_under_updated():
        with updated(ema=ema):
            write()

    def under_unchanged():
        with unchanged(ema=ema):
            pass

    def apart():  # disjoint compares storages, the model's against its copy's
        disjoint(online=model, target=ema)

    seconds = alternate({"write": write, "updated": write_under_updated,
                         "unchanged": under_unchanged, "disjoint": apart}, rounds, 3, device)
    return {"unchanged_ms_per_million": round(1e3 * seconds["unchanged"] / millions, 3),
            "updated_ms_per_million": round(1e3 * (seconds["updated"] - seconds["write"])
                                            / millions, 3),
            "disjoint_ms_per_million": round(1e3 * seconds["disjoint"] / millions, 3)}


def bounded_memory_overhead(alternate: Callable, device: torch.device) -> dict:
    torch.manual_seed(0)
    rnn, head = nn.LSTM(32, 128, batch_first=True).to(device), nn.Linear(128, 32).to(device)
    optimizer = torch.optim.SGD([*rnn.parameters(), *head.parameters()], lr=1e-3)
    stream = torch.randn(8, 33, 32, device=device)
    state = {"hidden": None}

    def chunk():
        hidden = state["hidden"]
        out, hidden = rnn(stream[:, :32], hidden)
        loss = F.mse_loss(head(out), stream[:, 1:])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        state["hidden"] = tuple(h.detach() for h in hidden)

    def five_plain():
        for _ in range(5):
            chunk()

    seconds = alternate({"plain": five_plain,
                         "checked": lambda: bounded_memory(chunk, steps=5)}, 7, 2, device)
    return {"bounded_memory_ratio_lstm_chunk": round(seconds["checked"] / seconds["plain"], 3)}


LEAK_LOOP = """
import gc, json, os, sys
import torch
import torch.nn.functional as F
from torch import nn
from gallery.core.probes import live_graph_nodes

def resident_bytes():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

keep_loss, warmup, iterations = sys.argv[1] == "loss", 1000, int(sys.argv[2])
torch.set_num_threads(1)
torch.manual_seed(0)
net = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 1))
optimizer = torch.optim.SGD(net.parameters(), lr=1e-3)
x, y = torch.randn(64, 32), torch.randn(64, 1)
running = 0.0
for i in range(warmup + iterations):
    if i == warmup:
        gc.collect()
        start, start_nodes = resident_bytes(), live_graph_nodes()
    loss = F.mse_loss(net(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    running = running + (loss if keep_loss else loss.item())
del loss
print(json.dumps({"bytes": (resident_bytes() - start) / iterations,
                  "nodes": (live_graph_nodes() - start_nodes) / iterations}))
"""


def loss_log_leak(iterations: int = 20_000) -> dict:
    """The training-loop form of the most asked leak, against its fix: each in a fresh process
    (a process that ran other work first has free heap the leak would fill unseen)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    measured = {}
    for keep in ("item", "loss"):
        out = subprocess.run([sys.executable, "-c", LEAK_LOOP, keep, str(iterations)], cwd=root,
                             capture_output=True, text=True, check=True)
        measured[keep] = json.loads(out.stdout.strip().splitlines()[-1])
    return {"setting": f"any loop: backward every iteration, running_loss += loss against += "
                       f"loss.item(), {iterations:,} iterations of a 32-64-1 MLP after 1,000 "
                       f"warm-up, a fresh process each",
            "leak_resident_bytes_per_iteration": round(measured["loss"]["bytes"]),
            "fixed_resident_bytes_per_iteration": round(measured["item"]["bytes"]),
            "leak_graph_nodes_per_iteration": round(measured["loss"]["nodes"], 2),
            "fixed_graph_nodes_per_iteration": round(measured["item"]["nodes"], 2)}


def bench_check(device: torch.device, alternate: Callable) -> list[dict]:
    rows = []
    for name, (model, x, y) in models(device).items():
        big = sum(p.numel() for p in model.parameters()) > 1e6
        row = {"setting": f"check: {name}"}
        row |= graph_check_overheads(model, x, y, alternate, device, rounds=15 if big else 15,
                                     per_round=2 if big else 20)
        row |= snapshot_checks_ms_per_million(model, alternate, device, rounds=9 if big else 31)
        rows.append(row)
        print(f"  {row}", flush=True)
    rows.append({"setting": "check: bounded_memory, an LSTM chunk (8 x 32 steps, 128 units)"}
                | bounded_memory_overhead(alternate, device))
    rows.append(loss_log_leak())
    return rows
