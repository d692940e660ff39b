"""Autograd inspection: the evidence behind every pattern and every mistake in the gallery.

- `reached_parameters`: which parameters a loss's backward would write a grad into.
- `graph_stats`: how many autograd nodes a graph has and its longest path.
- `grads_absent` / `grad_norm`: "no grad was written".
- `state_hash`: a digest of parameters *and buffers*, to prove a module is unchanged.
- `SavedTensorMeter`: bytes saved for backward, counted exactly with saved-tensor hooks, the
  same on CPU and GPU and free of allocator noise; `graph_saved_bytes`: the same count, read
  from a live graph without hooks.
- `Probe`: the one measurement object of a training loop, on sampled steps only.
- `live_graph_nodes`: how many autograd nodes the live tensors of this process keep alive; a
  graph that `backward()` has run through holds no saved tensors but still holds its nodes.
- `recording`: what a function returned inside a block, to walk the graph of a loss that a step
  built and then returned detached.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

Params = nn.Module | Mapping[str, torch.Tensor] | Iterable[torch.Tensor]


def _named(params: Params) -> dict[str, torch.Tensor]:
    if isinstance(params, nn.Module):
        return dict(params.named_parameters())
    if isinstance(params, Mapping):
        return dict(params)
    return {str(i): p for i, p in enumerate(params)}


def leaf_tensors(output: torch.Tensor) -> list[torch.Tensor]:
    """Every leaf tensor that `output.backward()` would accumulate a grad into."""
    root = output.grad_fn
    if root is None:
        return [output] if output.requires_grad else []
    seen, stack, leaves = {root}, [root], []
    while stack:
        node = stack.pop()
        if hasattr(node, "variable"):  # AccumulateGrad: the edge into a leaf tensor
            leaves.append(node.variable)
        for child, _ in node.next_functions:
            if child is not None and child not in seen:
                seen.add(child)
                stack.append(child)
    return leaves


def reached_parameters(output: torch.Tensor, params) -> set[str]:
    """Names of the given parameters that `output`'s graph reaches."""
    by_id = {id(p): name for name, p in _named(params).items()}
    return {by_id[id(t)] for t in leaf_tensors(output) if id(t) in by_id}


@dataclass(frozen=True)
class GraphStats:
    nodes: int
    depth: int  # nodes on the longest path from the output to a leaf


@contextlib.contextmanager
def recording(namespace, name: str):
    """Inside the block, each call of `namespace.name` (a module's function, or an entry of a dict
    of pasted functions) also appends its result to the list the block gets."""
    is_dict = isinstance(namespace, dict)
    real = namespace[name] if is_dict else getattr(namespace, name)
    results: list = []

    def record(*args, **kwargs):
        results.append(real(*args, **kwargs))
        return results[-1]

    put = namespace.__setitem__ if is_dict else lambda key, value: setattr(namespace, key, value)
    put(name, record)
    try:
        yield results
    finally:
        put(name, real)


def graph_stats(output: torch.Tensor) -> GraphStats:
    root = output.grad_fn
    if root is None:
        return GraphStats(0, 0)
    # Iterative post-order walk: graphs of long unrolled sequences overflow Python's recursion.
    depth: dict = {}
    stack = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        children = [c for c, _ in node.next_functions if c is not None]
        if expanded:
            depth[node] = 1 + max((depth[c] for c in children), default=0)
        elif node not in depth:
            stack.append((node, True))
            stack.extend((c, False) for c in children if c not in depth)
    return GraphStats(len(depth), depth[root])


def grads_absent(params) -> bool:
    """True when no parameter holds a gradient (grad None, or all zeros after
    zero_grad(set_to_none=False))."""
    return all(p.grad is None or not bool(p.grad.any()) for p in _named(params).values())


def grad_norm(params) -> float:
    grads = [p.grad.detach().float().norm() for p in _named(params).values() if p.grad is not None]
    return float(torch.stack(grads).norm()) if grads else 0.0


def grad_snapshot(params) -> list[torch.Tensor | None]:
    return [None if p.grad is None else p.grad.detach().clone() for p in _named(params).values()]


def grad_written_norm(params, snapshot: list[torch.Tensor | None]) -> float:
    """Norm of the gradient written into `params` since `snapshot` was taken (0.0: nothing
    written)."""
    total = 0.0
    for p, before in zip(_named(params).values(), snapshot):
        if p.grad is None:
            continue
        delta = p.grad.detach().float() - (0 if before is None else before.float())
        total += float(delta.pow(2).sum())
    return total**0.5


def state_hash(module: nn.Module, buffers: bool = True) -> str:
    """sha256 over every parameter and buffer (names, dtypes, shapes and bytes); buffers=False:
    parameters only."""
    digest = hashlib.sha256()
    for kind, items in (("param", module.named_parameters()),
                        ("buffer", module.named_buffers() if buffers else ())):
        for name, tensor in items:
            data = tensor.detach().cpu().contiguous()
            digest.update(f"{kind}:{name}:{data.dtype}:{tuple(data.shape)}".encode())
            digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def float_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the floating-point parameters and buffers (BatchNorm running stats included)."""
    return {k: v.detach().clone() for k, v in module.state_dict().items() if v.is_floating_point()}


def drift(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> float:
    """L2 distance between two snapshots of parameters and buffers (BatchNorm running stats
    included)."""
    squares = (float((after[k].float() - v.float()).pow(2).sum()) for k, v in before.items())
    return float(sum(squares)) ** 0.5


def tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class _Held:
    """Wraps one saved tensor; the graph owns it, so its death means autograd let the tensor go."""

    __slots__ = ("tensor", "nbytes", "meter")

    def __init__(self, tensor: torch.Tensor, meter: SavedTensorMeter):
        # Detached: a saved *output* would otherwise hold its own grad_fn, a cycle autograd never
        # frees. Backward only needs the values (double backward through a meter is unsupported).
        self.tensor, self.nbytes, self.meter = tensor.detach(), tensor_bytes(tensor), meter
        meter.total += self.nbytes
        meter.live += self.nbytes
        meter.peak = max(meter.peak, meter.live)

    def __del__(self):
        # None when __init__ did not finish (torch.compile tracing the hook)
        meter = getattr(self, "meter", None)
        if meter is not None:
            meter.live -= self.nbytes


class SavedTensorMeter:
    """Counts the bytes autograd saves for backward while the context is active.

    - `total`: bytes saved since the meter started (or since `reset()`);
    - `live`: bytes still held by graphs that have not been freed (by backward or by dropping them);
    - `peak`: the largest `live` seen.

    Under `torch.no_grad()` nothing is saved, so all three stay 0.

    Caveat: while saved-tensor hooks are active, autograd does not check saved tensors' version
    counters, so an in-place change that would raise "modified by an inplace operation" may go
    unnoticed. Measure with the meter; prove such errors without it.
    """

    def __init__(self):
        self.total = self.live = self.peak = 0
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def _pack(self, tensor: torch.Tensor) -> _Held:
        return _Held(tensor, self)

    @staticmethod
    def _unpack(held: _Held) -> torch.Tensor:
        return held.tensor

    def reset(self) -> None:
        """Start counting `total` and `peak` afresh; `live` keeps counting graphs still alive."""
        self.total = 0
        self.peak = self.live

    def __enter__(self) -> SavedTensorMeter:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)


def saved_bytes(fn, *args, **kwargs) -> tuple[int, object]:
    """Run `fn` and return (bytes it saved for backward, its result)."""
    with SavedTensorMeter() as meter:
        result = fn(*args, **kwargs)
    return meter.total, result


def graph_saved_bytes(*outputs: torch.Tensor) -> int:
    """Bytes the graph behind `outputs` still holds for backward, found by walking it (no hooks).

    Sums every tensor a node keeps in its `_saved_*` fields, once per node: the same count the
    `SavedTensorMeter` makes while its hooks are on, taken afterwards from the graph itself. A
    graph whose saved tensors were freed by a backward counts 0."""
    roots = [t.grad_fn for t in outputs if isinstance(t, torch.Tensor) and t.grad_fn is not None]
    seen, stack, total = set(roots), list(roots), 0
    while stack:
        node = stack.pop()
        for name in dir(node):
            if not name.startswith("_saved_"):
                continue
            try:
                value = getattr(node, name)
            except RuntimeError:  # freed by an earlier backward
                continue
            for tensor in value if isinstance(value, (tuple, list)) else (value,):
                if isinstance(tensor, torch.Tensor):
                    total += tensor_bytes(tensor)
        for child, _ in node.next_functions:
            if child is not None and child not in seen:
                seen.add(child)
                stack.append(child)
    return total


class Probe:
    """One per training loop: measures on sampled steps only, and times the other steps.

        probe = Probe(device)
        with probe.step(sampled=step % log_every == 0) as meter:   # meter is None when not sampled
            ...the algorithm's lines...
        probe.sec_per_step                                          # from unsampled steps only

    On a sampled step it counts the bytes saved for backward (`meter`) and enters `self.measure()`,
    which an example overrides with its own hooks. Unsampled steps run bare: no hooks, so autograd's
    in-place checks stay on, and the timing holds no measurement cost."""

    def __init__(self, device: torch.device, saved_bytes_name: str | None = None):
        self.device, self.saved_bytes_name = device, saved_bytes_name
        self.timed_units, self.timed_seconds = 0, 0.0
        self.record: dict = {saved_bytes_name: None} if saved_bytes_name else {}

    def measure(self, meter: SavedTensorMeter):
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def step(self, sampled: bool, units: int = 1, per: int = 1):
        """Run one step; on a sampled one, record the bytes it saved for backward (divided by `per`,
        e.g. per update) under `saved_bytes_name`."""
        start = time.perf_counter()
        if sampled:
            with SavedTensorMeter() as meter, self.measure(meter):
                yield meter
            if self.saved_bytes_name:
                self.record[self.saved_bytes_name] = meter.total // max(per, 1)
        else:
            yield None
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        if not sampled:
            self.timed_units += units
            self.timed_seconds += time.perf_counter() - start

    @staticmethod
    def crosses(done: int, n: int, every: int) -> bool:
        """Whether the `n` units after the `done` so far (updates, say) include a multiple of
        `every`: a step that does several updates is measured when one of them is due."""
        return -done % every < n

    @property
    def sec_per_step(self) -> float:
        return self.timed_seconds / max(self.timed_units, 1)

    @property
    def units_per_sec(self) -> float:
        return self.timed_units / max(self.timed_seconds, 1e-9)


class CrossStepProbe(Probe):
    """For a step that must not train another module (the GAN's D step and G; an actor step and
    its critics): on sampled steps, whether `optimizer`'s step was reached by a backward into
    `watched`, how much grad it wrote there, and the bytes it saved. Hooks only (a forward hook on
    `watched`, grad-accumulation hooks on its parameters, a post-step hook on `optimizer`), so the
    step functions carry no measurement. Records, for prefix="d_step" and into="g":
    `d_step_reaches_g`, `d_step_saved_bytes` (without `watched`'s own forward unless reached),
    `g_grad_norm_after_d_step` and `iter_peak_saved_bytes`."""

    def __init__(self, device: torch.device, optimizer: torch.optim.Optimizer, watched: nn.Module,
                 prefix: str, into: str):
        super().__init__(device)
        self.optimizer, self.watched, self.prefix, self.into = optimizer, watched, prefix, into

    @contextlib.contextmanager
    def measure(self, meter: SavedTensorMeter):
        seen = {"forward_bytes": 0, "reached": False, "stepped": False}
        snapshot = grad_snapshot(self.watched)

        def after_forward(*_):
            seen["forward_bytes"] = meter.total

        def on_grad(_):
            seen["reached"] |= not seen["stepped"]  # a grad into `watched` before the step ended

        def after_step(*_):
            seen["stepped"] = True
            reached = seen["reached"]
            self.record.update({
                f"{self.prefix}_reaches_{self.into}": reached,
                f"{self.prefix}_saved_bytes": meter.total - (
                    0 if reached else seen["forward_bytes"]),
                f"{self.into}_grad_norm_after_{self.prefix}": grad_written_norm(
                    self.watched, snapshot),
            })

        hooks = [self.watched.register_forward_hook(after_forward),
                 self.optimizer.register_step_post_hook(after_step),
                 *(p.register_post_accumulate_grad_hook(on_grad)
                   for p in self.watched.parameters())]
        try:
            yield
        finally:
            for hook in hooks:
                hook.remove()
            self.record["iter_peak_saved_bytes"] = meter.peak


def live_graph_nodes() -> int:
    """Autograd nodes reachable from every tensor alive in this process that has a `grad_fn`.

    After `loss.backward()` a graph holds no saved tensors, so the saved-bytes meter reads 0, yet
    a tensor that is still referenced (a `running_loss += loss`, a list of losses) keeps its whole
    chain of nodes alive, and each node owns C++ memory. Counting the nodes sees that leak. Live
    tensors are found through the garbage collector, which tracks every tensor object; it collects
    first, so that garbage some earlier code left in reference cycles neither counts now nor, freed
    by a later automatic collection, hides a growth between two counts."""
    gc.collect()
    roots = [obj.grad_fn for obj in gc.get_objects()
             if issubclass(type(obj), torch.Tensor) and obj.grad_fn is not None]
    seen, stack = set(roots), list(roots)
    while stack:
        for child, _ in stack.pop().next_functions:
            if child is not None and child not in seen:
                seen.add(child)
                stack.append(child)
    return len(seen)
