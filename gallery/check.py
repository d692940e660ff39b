"""Checks for your own training step: is the autograd graph still cut where the pattern cuts it?

    from gallery.check import bounded_memory, constant, gets_grad, no_grad_reaches, unchanged

    with no_grad_reaches(generator=g, before=opt_d):   # the D step writes no grad into G
        gan_step(...)
    with unchanged(target=target_net):                 # between syncs, the target stays put
        dqn_update(...)
    with updated(ema=teacher):                         # an EMA update moves weights and buffers
        sync_target(teacher, student, tau=0.01)
    constant(td_target=target)                          # no graph behind a regression target
    bounded_memory(lambda: tbptt_chunk(...), steps=5)   # each chunk frees the last one's graph

Each check raises `AssertionError` with one sentence that names the module or tensor, what
reached it (or what grew), and the section of the gallery's docs (docs/check.md) that lists the
patterns it guards. Modules (or bare parameters, such as a codebook) and tensors can be passed
positionally (named by their class, or `tensor 0`, ...) or by keyword (named by the keyword).
This module needs torch and nothing else.

The checks read the graph; they do not change what the step computes. One caveat: while
`bounded_memory` runs, autograd's saved-tensor hooks are on, and with them autograd does not check
saved tensors for in-place changes: prove an "modified by an inplace operation" error without it.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from gallery.core.probes import SavedTensorMeter  # torch only, like this module

Watched = nn.Module | nn.Parameter  # a module, or one parameter such as a codebook

__all__ = ["bounded_memory", "constant", "gets_grad", "no_grad_reaches", "unchanged", "updated"]

DOCS = "docs/check.md"  # each message names its section: docs/check.md#<check>


def _see(check: str) -> str:
    return f"(see {DOCS}#{check})"


def _modules(modules: tuple[Watched, ...],
             named: Mapping[str, Watched]) -> dict[str, nn.Module]:
    """Name each module: by its keyword, else by its class (with its position when two share
    one)."""
    out: dict[str, nn.Module] = {}
    for i, module in enumerate(modules):
        name = type(module).__name__
        out[name if name not in out else f"{name}#{i}"] = _as_module(module, f"position {i}")
    for name, module in named.items():
        out[name] = _as_module(module, name)
    if not out:
        raise TypeError("name at least one module to check")
    return out


def _as_module(value: Watched, where: str) -> nn.Module:
    """A module as it is; a bare parameter (a VQ codebook, a temperature) inside a module of its
    own, so that it is checked like any other."""
    if isinstance(value, nn.Module):
        return value
    if isinstance(value, nn.Parameter):
        holder = nn.Module()
        holder.register_parameter("data", value)
        return holder
    raise TypeError(f"{where}: expected an nn.Module or nn.Parameter, got {type(value).__name__}")


def _listed(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


@contextlib.contextmanager
def no_grad_reaches(*modules: Watched, before: torch.optim.Optimizer | None = None,
                    **named: Watched) -> Iterator[None]:
    """No backward inside the block writes a gradient into these modules' parameters.

    Guards: G during the discriminator step, a target network, a frozen backbone, the critics
    during SAC's actor step. With `before=optimizer`, only the backward passes that run before
    `optimizer.step()` first returns count: wrap a whole GAN iteration with `before=opt_d` and the
    check covers its D step, while the G step that follows may train G. The check holds even when
    the block raises: a grad written before the error still fails it (the error is chained)."""
    watched = _modules(modules, named)
    reached: dict[str, list[str]] = {}
    done = {"stepped": False}

    def on_grad(module_name: str, param_name: str) -> Callable[[torch.Tensor], None]:
        def hook(_: torch.Tensor) -> None:
            if not done["stepped"]:
                reached.setdefault(module_name, []).append(param_name)
        return hook

    def stepped(*_: Any) -> None:
        done["stepped"] = True

    handles = [p.register_post_accumulate_grad_hook(on_grad(m_name, p_name))
               for m_name, module in watched.items()
               for p_name, p in module.named_parameters() if p.requires_grad]
    if before is not None:
        handles.append(before.register_step_post_hook(stepped))
    error: Exception | None = None
    try:
        yield
    except Exception as err:  # judged below, then raised again
        error = err
    finally:
        for handle in handles:
            handle.remove()
    if reached:
        where = "; ".join(f"{name} ({_listed(sorted(set(params)))})"
                          for name, params in reached.items())
        when = f" before {type(before).__name__}.step()" if before is not None else ""
        raise AssertionError(
            f"no_grad_reaches: a backward{when} wrote a grad into {where}: the graph of that "
            f"loss runs into a module it must not train; cut it with .detach(), "
            f"torch.no_grad() or requires_grad_(False) {_see('no_grad_reaches')}") from error
    if error is not None:
        raise error


@contextlib.contextmanager
def gets_grad(*modules: Watched, **named: Watched) -> Iterator[None]:
    """Every parameter of these modules gets a non-zero gradient from some backward inside the
    block. Guards what must learn: a VQ codebook, a critic, blocks behind a checkpoint. Use it
    with `zero_grad(set_to_none=True)` inside the block, so that an old grad cannot pass for a new
    one."""
    watched = _modules(modules, named)
    nonzero: set[tuple[str, str]] = set()

    def on_grad(key: tuple[str, str]) -> Callable[[torch.Tensor], None]:
        def hook(param: torch.Tensor) -> None:
            if param.grad is not None and bool(param.grad.ne(0).any()):
                nonzero.add(key)
        return hook

    handles = [p.register_post_accumulate_grad_hook(on_grad((m_name, p_name)))
               for m_name, module in watched.items()
               for p_name, p in module.named_parameters() if p.requires_grad]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
    starved = {m_name: [p_name for p_name, p in module.named_parameters()
                        if (m_name, p_name) not in nonzero]
               for m_name, module in watched.items()}
    starved = {name: params for name, params in starved.items() if params}
    if starved:
        frozen = [f"{m}.{p}" for m, module in watched.items() for p, t in module.named_parameters()
                  if not t.requires_grad and p in starved.get(m, [])]
        where = "; ".join(f"{name} ({_listed(params)})" for name, params in starved.items())
        note = f" ({_listed(frozen)} has requires_grad=False)" if frozen else ""
        raise AssertionError(
            f"gets_grad: no backward inside the block wrote a non-zero grad into {where}{note}: "
            f"the loss that should train it does not reach it (a .detach(), .item() or no_grad "
            f"too many?) {_see('gets_grad')}")


def _digests(module: nn.Module, buffers: bool) -> dict[str, str]:
    items = list(module.named_parameters())
    if buffers:
        items += [(f"{name} (buffer)", b) for name, b in module.named_buffers()]
    out = {}
    for name, tensor in items:
        data = tensor.detach().cpu().contiguous()
        digest = hashlib.sha256(f"{data.dtype}:{tuple(data.shape)}".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
        out[name] = digest.hexdigest()
    return out


@contextlib.contextmanager
def unchanged(*modules: Watched, buffers: bool = True, **named: Watched) -> Iterator[None]:
    """The modules' parameters, and with `buffers=True` their buffers (BatchNorm's running
    statistics), are bit-for-bit the same after the block as before. Guards a frozen backbone and
    a target network between syncs."""
    watched = _modules(modules, named)
    before = {name: _digests(module, buffers) for name, module in watched.items()}
    yield
    changed = {}
    for name, module in watched.items():
        after = _digests(module, buffers)
        moved = [key for key in before[name].keys() | after.keys()
                 if before[name].get(key) != after.get(key)]
        if moved:
            changed[name] = sorted(moved)
    if changed:
        where = "; ".join(f"{name} ({_listed(keys)})" for name, keys in changed.items())
        raise AssertionError(
            f"unchanged: the block changed {where}: something trains or updates what must stay "
            f"fixed (an optimizer that holds it, BatchNorm in train mode, an update outside the "
            f"schedule) {_see('unchanged')}")


@contextlib.contextmanager
def updated(*modules: Watched, buffers: bool = True, **named: Watched) -> Iterator[None]:
    """Every parameter, and with `buffers=True` every buffer, of the modules differs after the
    block from before it: the opposite of `unchanged`. Guards an EMA or target-network update that
    must carry the BatchNorm statistics along with the weights. (A value that happens to equal its
    old one, such as an average of two equal weights, counts as left alone.)"""
    watched = _modules(modules, named)
    before = {name: _digests(module, buffers) for name, module in watched.items()}
    yield
    stale = {}
    for name, module in watched.items():
        after = _digests(module, buffers)
        kept = [key for key in after if before[name].get(key) == after[key]]
        if kept:
            stale[name] = sorted(kept)
    if stale:
        where = "; ".join(f"{name} ({_listed(keys)})" for name, keys in stale.items())
        raise AssertionError(
            f"updated: the block left {where} as they were: the update skips them (an EMA that "
            f"averages the parameters but not BatchNorm's running statistics?) {_see('updated')}")


def _tensors(value: Any, name: str) -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors in a value: itself, or those inside a tuple, list or dict (an LSTM's (h, c), a
    batch)."""
    if isinstance(value, torch.Tensor):
        yield name, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _tensors(item, f"{name}[{key!r}]")
    elif isinstance(value, (tuple, list)):
        for i, item in enumerate(value):
            yield from _tensors(item, f"{name}[{i}]")
    else:
        raise TypeError(f"{name}: expected a tensor (or a tuple, list or dict of them), got "
                        f"{type(value).__name__}")


def constant(*tensors: Any, **named: Any) -> None:
    """Each tensor carries no graph: no `grad_fn` and no `requires_grad`. Guards TD targets,
    advantages and returns, stored log-probs, a teacher's output, and a hidden state at the start
    of a chunk. Tuples, lists and dicts of tensors are looked into."""
    found = [*(item for i, t in enumerate(tensors) for item in _tensors(t, f"tensor {i}")),
             *(item for key, t in named.items() for item in _tensors(t, key))]
    if not found:
        raise TypeError("name at least one tensor to check")
    graphs = [f"{name} (grad_fn={type(t.grad_fn).__name__})" if t.grad_fn is not None
              else f"{name} (requires_grad=True)" for name, t in found if t.requires_grad]
    if graphs:
        raise AssertionError(
            f"constant: {_listed(graphs)} carries a graph: a backward through it reaches the "
            f"parameters it was computed from; compute it under torch.no_grad() or .detach() it "
            f"{_see('constant')}")


def bounded_memory(step: Callable[[], Any], steps: int = 5, warmup: int = 1,
                   slack_bytes: int = 0) -> list[int]:
    """Call `step()` `steps` times and return the bytes still held for backward after each call.
    After the first `warmup` calls the count must not grow (beyond `slack_bytes`): a step that
    keeps each call's graph alive (a hidden state carried without detach, `total_loss += loss`, a
    rollout stored with grad, an EMA update outside no_grad) fails. `step` must keep what it
    returns small: the returned values are dropped before counting."""
    if steps < warmup + 2:
        raise ValueError(f"steps={steps}: need at least warmup + 2 = {warmup + 2} calls to see "
                         f"growth")
    meter, held = SavedTensorMeter(), []
    with meter:
        for _ in range(steps):
            step()
            held.append(meter.live)
    base = held[warmup - 1] if warmup else 0
    if held[-1] > base + slack_bytes:
        per_call = (held[-1] - base) / max(steps - warmup, 1)
        raise AssertionError(
            f"bounded_memory: the bytes held for backward grew from {base:,} to {held[-1]:,} over "
            f"{steps - warmup} calls of {getattr(step, '__name__', 'step')} (about "
            f"{per_call:,.0f} per call; after each call: {', '.join(f'{b:,}' for b in held)}): "
            f"something keeps every call's graph alive {_see('bounded_memory')}")
    return held
