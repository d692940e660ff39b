"""Checks for your own training step: is the autograd graph still cut where the pattern cuts it?

    from gallery.check import (bounded_memory, constant, disjoint, finite, frozen, gets_grad,
                               has_graph, modes_restored, no_grad_reaches, optimizer_covers,
                               runs_in_eval_mode, runs_in_train_mode, same_grad_as, unchanged,
                               updated)

    with no_grad_reaches(generator=g, before=opt_d):   # each D step writes no grad into G
        for _ in range(3):
            gan_step(...)
    with gets_grad(critic=critic):                     # some backward in the block trains it
        a2c_update(...)
    gets_grad(encoder=vq.encoder, loss=recon_loss)     # this loss, by itself, reaches it
    with unchanged(target=target_net):                 # between syncs, the target stays put
        dqn_update(...)
    with updated(ema=teacher):                         # an EMA update writes weights and buffers
        sync_target(teacher, student, tau=0.01)
    constant(td_target=target)                         # no graph behind a regression target
    has_graph(inner_grads=grads)                       # MAML: create_graph=True kept the graph
    disjoint(target=target_net, online=online_net)     # two networks, not one under two names
    bounded_memory(lambda: train_iteration(...), steps=5)  # nothing keeps each call's graph
    with modes_restored(model), runs_in_eval_mode(model):  # an evaluation: eval inside, and
        metrics = evaluate(model, val_batches)              #   every module's mode back after
    with runs_in_train_mode(model, ignore=["backbone"]):   # the step trains in train mode
        train_step(...)
    with finite(model=model):                          # no NaN or inf appears, buffers included
        for _ in range(10):
            train_step(...)
    finite(loss=loss)                                  # the loss itself (NaN before the model is)
    optimizer_covers(optimizer, model=model)           # all that trains is in it; no frozen
                                                       #   parameter in it has a grad
    with frozen(backbone=backbone):                    # no grad reaches it, nothing in it changes
        train_step(...)
    with same_grad_as(full_batch_step, model=model):   # the micro-batches sum to the full batch's
        accumulate_grads(...)                          #   gradient

The block checks (`with ...:` above) check only when entered: one made as a plain statement
checks nothing, and says so with a `CheckNotEntered` warning (the gallery's pytest plugin fails
the test that made it). `gets_grad(..., loss=...)`, `constant`, `has_graph`, `disjoint`,
`optimizer_covers`, `finite` and `bounded_memory` check at once.

Each check raises `AssertionError` with one sentence that names the module or tensor and what it
saw, and ends by pointing at its own docstring (`help(gallery.check.<check>)`). A check that is
handed nothing it could judge (no module or tensor at all, a module with no trainable parameter for
`gets_grad`, an optimizer that never stepped, an empty list) raises `ValueError` (with nothing
named at all, `NothingToCheck`, which is also a `TypeError`) instead of passing: a check that
cannot fail would only look like a test. A module whose parameters are all frozen passes
`no_grad_reaches`: no backward can write into it, which is what that check asks.

What can be watched: a module, a bare parameter (a VQ codebook, a temperature) or a single tensor
(one buffer), passed positionally (named by its class, or `tensor 0`, ...) or by keyword (named by
the keyword). `ignore=` leaves parts of a module out by name, as `named_parameters()` and
`named_buffers()` spell them: a name, a prefix (`"stem"` covers `stem.weight`) or a shell-style
pattern (`"*.num_batches_tracked"`).

This module needs torch and nothing else. The checks read the graph and the tensors; they do not
change what the step computes. One caveat: while `bounded_memory` runs, autograd's saved-tensor
hooks are on, and with them autograd does not check saved tensors for in-place changes: prove a
"modified by an inplace operation" error without it.
"""

from __future__ import annotations

import collections
import contextlib
import fnmatch
import functools
import sys
import warnings
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from gallery.core.probes import SavedTensorMeter, live_graph_nodes  # torch only, like this module
from gallery.core.probes import leaf_tensors as _leaves

Watched = nn.Module | torch.Tensor  # a module, a bare parameter (a codebook) or one tensor

__all__ = ["CheckNotEntered", "MemoryTrace", "NothingToCheck", "bounded_memory", "constant",
           "disjoint", "finite", "frozen", "gets_grad", "has_graph", "modes_restored",
           "no_grad_reaches", "optimizer_covers", "runs_in_eval_mode", "runs_in_train_mode",
           "same_grad_as", "unchanged", "updated"]


class NothingToCheck(ValueError, TypeError):
    """A check handed nothing it could judge. A `ValueError`, as the checks promise; also a
    `TypeError`, which a call with no arguments raised before."""


class CheckNotEntered(UserWarning):
    """A block check (`frozen`, `no_grad_reaches`, `unchanged`, `updated`, `gets_grad` without
    `loss=`, `modes_restored`, `runs_in_eval_mode`, `runs_in_train_mode`, `same_grad_as`) was made
    and never entered with `with`, so it checked nothing. The gallery's pytest plugin turns it
    into a failure of the test that made it."""


# what each block check made and never entered said, for the pytest plugin to fail the test with
_never_entered: collections.deque[str] = collections.deque(maxlen=64)


class _Block(contextlib.AbstractContextManager):
    """A block check: the context manager its function returns, which knows whether it was
    entered. Called as a plain statement, a block check runs nothing; when such a check is
    collected unentered it warns (`CheckNotEntered`), naming itself, where it was made and the
    fix."""

    def __init__(self, check: str, manager: contextlib.AbstractContextManager):
        self._check, self._manager, self._entered = check, manager, False
        frame = sys._getframe(1)
        while frame is not None and frame.f_code.co_filename == __file__:
            frame = frame.f_back
        self._made_at = (f"{frame.f_code.co_filename}:{frame.f_lineno}" if frame is not None
                         else "an unknown line")

    def __enter__(self) -> Any:
        self._entered = True
        return self._manager.__enter__()

    def __exit__(self, *exc: Any) -> bool | None:
        return self._manager.__exit__(*exc)

    def __del__(self) -> None:
        if getattr(self, "_entered", True):
            return
        message = (f"{self._check}: made at {self._made_at} and never entered, so it checked "
                   f"nothing: a block check runs only as `with gallery.check.{self._check}(...):`"
                   f" around the step")
        _never_entered.append(message)
        try:
            warnings.warn(message, CheckNotEntered, stacklevel=2)
        except Exception:  # noqa: BLE001 (an error filter, or interpreter shutdown: it is recorded)
            pass


def _block(check: str) -> Callable[[Callable[..., Iterator[None]]], Callable[..., _Block]]:
    """`contextlib.contextmanager` for a block check, whose result knows whether it was
    entered."""
    def wrap(generator: Callable[..., Iterator[None]]) -> Callable[..., _Block]:
        manager = contextlib.contextmanager(generator)

        @functools.wraps(generator)
        def check_block(*args: Any, **kwargs: Any) -> _Block:
            return _Block(check, manager(*args, **kwargs))
        return check_block
    return wrap


def _see(check: str) -> str:
    return f"(see help(gallery.check.{check}))"


def _where(name: str, labels: Collection[str]) -> str:
    """`critic (weight, bias)`; a lone tensor, whose only label is empty, by its name alone."""
    labels = [label for label in labels if label]
    return f"{name} ({_listed(labels)})" if labels else name


def _listed(names: Collection[str], limit: int = 3) -> str:
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


# --- what is watched ------------------------------------------------------------------------------

def _watched(check: str, modules: tuple[Watched, ...],
             named: Mapping[str, Watched]) -> dict[str, Watched]:
    """Name each watched thing: by its keyword, else by its class (a position added when two share
    one) or `tensor i`."""
    out: dict[str, Watched] = {}
    for i, value in enumerate(modules):
        name = type(value).__name__ if isinstance(value, (nn.Module, nn.Parameter)) else \
            f"tensor {i}"
        out[name if name not in out else f"{name}#{i}"] = _accepted(value, f"position {i}")
    for name, value in named.items():
        out[name] = _accepted(value, name)
    if not out:
        raise NothingToCheck(f"{check}: name at least one module or tensor to check")
    return out


def _accepted(value: Any, where: str) -> Watched:
    if isinstance(value, (nn.Module, torch.Tensor)):
        return value
    raise TypeError(f"{where}: expected an nn.Module, nn.Parameter or tensor, got "
                    f"{type(value).__name__}")


def _left_out(name: str, ignore: Collection[str]) -> bool:
    return any(name == pattern or name.startswith(pattern + ".") or fnmatch.fnmatchcase(name,
                                                                                       pattern)
               for pattern in ignore)


_GRAPH_CHECKS = ("no_grad_reaches", "gets_grad")  # they look at parameters only


@dataclass(frozen=True)
class _Part:
    """One tensor of a watched thing: its label in messages, and whether it is a buffer."""
    label: str
    tensor: torch.Tensor
    buffer: bool


def _parts(check: str, name: str, value: Watched, *, params: bool = True, buffers: bool = True,
           trainable_only: bool = False, ignore: Collection[str] = ()) -> list[_Part]:
    """The tensors a check looks at in one watched thing. Raises `ValueError` when there are none:
    a check over nothing cannot fail."""
    if not isinstance(value, nn.Module):  # a lone parameter or tensor is looked at whatever it is
        if trainable_only and not value.requires_grad:
            raise ValueError(f"{check}: {name} has requires_grad=False: no backward can write a "
                             f"grad into it, so there is nothing to check")
        return [_Part("", value, not isinstance(value, nn.Parameter))]  # named by its keyword
    found: list[_Part] = []
    everything = [(p_name, p, False) for p_name, p in value.named_parameters()] + \
                 [(b_name, b, True) for b_name, b in value.named_buffers()]
    for part_name, tensor, is_buffer in everything:
        if (is_buffer and not buffers) or (not is_buffer and not params):
            continue
        if _left_out(part_name, ignore) or (trainable_only and not tensor.requires_grad):
            continue
        found.append(_Part(part_name + (" (buffer)" if is_buffer else ""), tensor, is_buffer))
    if not found:
        n_params = sum(1 for _ in value.parameters())
        n_buffers = sum(1 for _ in value.buffers())
        looked_at = n_params * params + n_buffers * buffers
        if trainable_only and n_params and not any(p.requires_grad for p in value.parameters()):
            why = f"all {n_params} of its parameters have requires_grad=False"
        elif looked_at:
            why = f"ignore={list(ignore)!r} leaves out all {looked_at} of its tensors"
        elif check in _GRAPH_CHECKS:
            why = (f"it has no parameters, only {n_buffers} buffers, which no backward writes"
                   if n_buffers else "it has no parameters")
        elif n_buffers:
            why = f"it has no parameters, and buffers=False leaves out its {n_buffers} buffers"
        else:
            why = "it has no parameters and no buffers"
        raise ValueError(f"{check}: {name} has nothing to check ({why})")
    return found


# --- the graph: what a backward reaches -----------------------------------------------------------

@_block("no_grad_reaches")
def no_grad_reaches(*modules: Watched, before: torch.optim.Optimizer | None = None,
                    ignore: Collection[str] = (), **named: Watched) -> Iterator[None]:
    """No backward inside the block writes a gradient into these modules' parameters.

    Guards G during the discriminator step, a target network, a frozen backbone, the critics
    during SAC's actor step. Parameters with `requires_grad=False` cannot be reached and pass.

    With `before=optimizer`, only the gradients that this optimizer's `step()` goes on to see
    count: those written since the last step of any optimizer. Wrap a whole GAN loop with
    `before=opt_d`: every D step is judged (its backward must not reach G), while each G step,
    which ends with `opt_g.step()`, may train G. An optimizer named by `before` that never steps
    inside the block leaves nothing judged and raises `ValueError`.

    The check holds even when the block raises: a grad written before the error still fails it
    (the error is chained)."""
    watched = _watched("no_grad_reaches", modules, named)
    params = {name: [p for p in _parts("no_grad_reaches", name, value, buffers=False,
                                       ignore=ignore)
                     if p.tensor.requires_grad]
              for name, value in watched.items()}
    reached: dict[str, set[str]] = {}
    pending: dict[str, set[str]] = {}  # written since the last step of any optimizer
    stepped: list[torch.optim.Optimizer] = []

    def on_grad(module_name: str, label: str) -> Callable[[torch.Tensor], None]:
        def hook(_: torch.Tensor) -> None:
            (pending if before is not None else reached).setdefault(module_name,
                                                                    set()).add(label)
        return hook

    def on_step(optimizer: torch.optim.Optimizer, *_: Any) -> None:
        if not any(optimizer is seen for seen in stepped):
            stepped.append(optimizer)
        if optimizer is before:
            for name, labels in pending.items():
                reached.setdefault(name, set()).update(labels)
        pending.clear()

    handles = [part.tensor.register_post_accumulate_grad_hook(on_grad(name, part.label))
               for name, parts in params.items() for part in parts]
    handles.append(register_optimizer_step_post_hook(on_step))
    error: Exception | None = None
    try:
        yield
    except Exception as err:  # judged below, then raised again
        error = err
    finally:
        for handle in handles:
            handle.remove()
    if reached:
        where = "; ".join(_where(name, sorted(labels)) for name, labels in reached.items())
        when = f" before {type(before).__name__}.step()" if before is not None else ""
        trained_by = [opt for opt in ([before] if before is not None else stepped)
                      if _holds(opt, [p.tensor for name in reached for p in params[name]
                                      if p.label in reached[name]])]
        if trained_by:
            advice = (f"and {type(trained_by[0]).__name__}.step() trains those very parameters: "
                      f"if this module is meant to be a separate copy (a target, a teacher, a "
                      f"reference), it is the trained module under another name (see "
                      f"gallery.check.disjoint); make it with copy.deepcopy")
        else:
            advice = ("the graph of that loss runs into a module it must not train; cut it with "
                      ".detach(), torch.no_grad() or requires_grad_(False)")
        raise AssertionError(f"no_grad_reaches: a backward{when} wrote a grad into {where}: "
                             f"{advice} {_see('no_grad_reaches')}") from error
    if error is not None:
        raise error
    if before is not None and not any(opt is before for opt in stepped):
        raise ValueError(f"no_grad_reaches: before={type(before).__name__} never stepped inside "
                         f"the block, so no backward was judged; call its step() in the block, or "
                         f"leave before= out to judge every backward")


def _holds(optimizer: torch.optim.Optimizer, tensors: list[torch.Tensor]) -> bool:
    ids = {id(p) for group in optimizer.param_groups for p in group["params"]}
    return any(id(t) in ids for t in tensors)


class _Done(contextlib.AbstractContextManager):
    """What `gets_grad(..., loss=...)` returns: the check has already run, so `with` adds
    nothing."""

    def __exit__(self, *exc: Any) -> None:
        return None


def gets_grad(*modules: Watched, loss: torch.Tensor | None = None, ignore: Collection[str] = (),
              **named: Watched) -> contextlib.AbstractContextManager[Any]:
    """Every trainable parameter of these modules gets a non-zero gradient.

    Two forms:
    - `with gets_grad(critic=critic): ...`: from some backward inside the block. Guards what must
      learn: a VQ codebook, a critic, blocks behind a checkpoint. Use it with
      `zero_grad(set_to_none=True)` inside the block, so that an old grad cannot pass for a new one.
    - `gets_grad(encoder=enc, loss=recon_loss)`: from this loss alone, checked at once with
      `torch.autograd.grad` (the graph is kept, `.grad` is left alone). It tells the losses apart:
      a VQ autoencoder whose straight-through path is gone still trains its encoder through the
      commitment loss, but its reconstruction loss no longer reaches it.

    Parameters with `requires_grad=False` are not expected to learn and are skipped; a module with
    no trainable parameter left raises `ValueError`. `ignore=` leaves parameters out by name."""
    watched = _watched("gets_grad", modules, named)
    params = {name: _parts("gets_grad", name, value, buffers=False, trainable_only=True,
                           ignore=ignore)
              for name, value in watched.items()}
    if loss is None:
        return _Block("gets_grad", _gets_grad_in_block(params))
    if not isinstance(loss, torch.Tensor):
        raise TypeError(f"gets_grad: loss= expects a tensor, got {type(loss).__name__}")
    flat = [part for parts in params.values() for part in parts]
    if loss.requires_grad:
        grads = torch.autograd.grad(loss.sum(), [part.tensor for part in flat], retain_graph=True,
                                    allow_unused=True)
    else:
        grads = (None,) * len(flat)
    given = {id(part): g is not None and _nonzero(g) for part, g in zip(flat, grads)}
    starved = {name: [part.label for part in parts if not given[id(part)]]
               for name, parts in params.items()}
    source = (f"the loss ({type(loss.grad_fn).__name__}) gives no non-zero grad to"
              if loss.grad_fn is not None else "the loss carries no graph, so it gives no grad to")
    _starved_fails(starved, source)
    return _Done()


@contextlib.contextmanager
def _gets_grad_in_block(params: dict[str, list[_Part]]) -> Iterator[None]:
    nonzero: set[int] = set()

    def on_grad(part: _Part) -> Callable[[torch.Tensor], None]:
        def hook(param: torch.Tensor) -> None:
            if id(part) not in nonzero and param.grad is not None and _nonzero(param.grad):
                nonzero.add(id(part))
        return hook

    handles = [part.tensor.register_post_accumulate_grad_hook(on_grad(part))
               for parts in params.values() for part in parts]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
    _starved_fails({name: [p.label for p in parts if id(p) not in nonzero]
                    for name, parts in params.items()},
                   "no backward inside the block wrote a non-zero grad into")


def _nonzero(grad: torch.Tensor) -> bool:
    """Any non-zero entry: the first 1,024 entries decide almost always, the rest only if they are
    all zero (a step's cost stays that of a small read)."""
    flat = grad.reshape(-1)
    return bool(flat[:1024].ne(0).any()) or bool(flat[1024:].ne(0).any())


def _starved_fails(starved: dict[str, list[str]], source: str) -> None:
    starved = {name: labels for name, labels in starved.items() if labels}
    if starved:
        where = "; ".join(_where(name, labels) for name, labels in starved.items())
        raise AssertionError(
            f"gets_grad: {source} {where}: the loss that should train "
            f"it does not reach it (a .detach(), .item() or no_grad too many?) {_see('gets_grad')}")


# --- the values: what a block wrote -------------------------------------------------------------

def _version(tensor: torch.Tensor) -> int:
    try:
        return tensor._version  # bumped by every in-place write, optimizers' and EMAs' included
    except RuntimeError:  # inference tensors have no version counter
        return -1


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-for-bit equality (NaN equals NaN, 0.0 differs from -0.0), on the tensors' device."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.is_floating_point() or a.is_complex():
        bits = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
        if a.element_size() in bits:
            a, b = a.view(bits[a.element_size()]), b.view(bits[a.element_size()])
    return torch.equal(a, b)


class _Snapshot:
    """A copy of each watched tensor, with the tensor object and its version counter, taken before
    a block. One copy in memory per watched tensor, and one comparison after: no hashing."""

    def __init__(self, check: str, watched: dict[str, Watched], buffers: bool,
                 ignore: Collection[str]):
        self.parts = {name: _parts(check, name, value, buffers=buffers, ignore=ignore)
                      for name, value in watched.items()}
        self.watched = watched
        self.buffers, self.ignore, self.check = buffers, ignore, check
        with torch.no_grad():
            self.copies = {id(p): (p.tensor.detach().clone(), _version(p.tensor))
                           for parts in self.parts.values() for p in parts}

    def now(self) -> dict[str, dict[str, tuple[_Part, _Part | None]]]:
        """For each watched thing, each label: (the part before, the part now, or None if gone)."""
        out = {}
        for name, value in self.watched.items():
            current = {p.label: p for p in _parts_or_none(self.check, name, value, self.buffers,
                                                          self.ignore)}
            out[name] = {p.label: (p, current.get(p.label)) for p in self.parts[name]}
            out[name].update({label: (p, p) for label, p in current.items()
                              if label not in out[name]})  # appeared: compared to nothing
        return out

    def same_value(self, before: _Part, after: _Part | None) -> bool:
        if after is None or id(before) not in self.copies:
            return False
        return _same_bits(self.copies[id(before)][0], after.tensor.detach())

    def written(self, before: _Part, after: _Part | None) -> bool:
        """Replaced, written in place (its version counter moved), or different in value."""
        if after is None or after.tensor is not before.tensor or id(before) not in self.copies:
            return True
        return _version(after.tensor) != self.copies[id(before)][1] or \
            not self.same_value(before, after)


def _parts_or_none(check: str, name: str, value: Watched, buffers: bool,
                   ignore: Collection[str]) -> list[_Part]:
    try:
        return _parts(check, name, value, buffers=buffers, ignore=ignore)
    except ValueError:  # everything removed inside the block: each part is then "gone"
        return []


@_block("unchanged")
def unchanged(*modules: Watched, buffers: bool = True, ignore: Collection[str] = (),
              **named: Watched) -> Iterator[None]:
    """The parameters, and with `buffers=True` the buffers (BatchNorm's running statistics), of
    the watched modules or tensors have the same value, bit for bit, after the block as before.
    Guards a frozen backbone, and a target network between syncs. A write of the same value (a
    sync that copies what is already there) counts as unchanged. `ignore=` leaves tensors out by
    name; a watched module with nothing left to compare raises `ValueError`.

    Cost: one copy of every watched tensor while the block runs, and one comparison after it."""
    snapshot = _Snapshot("unchanged", _watched("unchanged", modules, named), buffers, ignore)
    yield
    changed = {name: [label for label, (before, after) in parts.items()
                      if not snapshot.same_value(before, after)]
               for name, parts in snapshot.now().items()}
    changed = {name: sorted(labels) for name, labels in changed.items() if labels}
    if changed:
        where = "; ".join(_where(name, labels) for name, labels in changed.items())
        raise AssertionError(
            f"unchanged: the block changed {where}: something trains or updates what must stay "
            f"fixed (an optimizer that holds it, BatchNorm in train mode, an update outside the "
            f"schedule) {_see('unchanged')}")


def _not_state(part: _Part, state: set[str] | None) -> bool:
    """A buffer of a watched module that no average moves: not floating point (a step counter, a
    relative-position index, an "initialised" flag) or not in the state dict (non-persistent)."""
    if state is None or not part.buffer:
        return False
    floating = part.tensor.is_floating_point() or part.tensor.is_complex()
    return not floating or part.label.removesuffix(" (buffer)") not in state


@_block("updated")
def updated(*modules: Watched, buffers: bool = True, ignore: Collection[str] = (),
            **named: Watched) -> Iterator[None]:
    """The block writes every parameter, and with `buffers=True` every buffer, of the watched
    modules or tensors: the check for an EMA or target-network update that must carry BatchNorm's
    statistics along with the weights.

    A tensor counts as written when its value changed, when it was written in place (its version
    counter moved: a `lerp_`, `copy_` or `mul_` whose result rounds to the old value, or copies a
    value that was already there, still counts) or when it was replaced by another tensor. So a
    correct EMA passes at a decay of 0.9999, on parameters whose gradient was zero, on frozen
    parameters and constant buffers it copies, and on integer counters. One blind spot: a write
    through `.data` does not move the version counter, so it is seen only when the value moves.

    A buffer of a watched module that is not floating point (BatchNorm's step counter, a
    relative-position index, an "initialised" flag) or not in its state dict (non-persistent) is
    not state an average must move, and is excused; watch it as a tensor of its own
    (`updated(counter=bn.num_batches_tracked)`) to require its write. `ignore=` leaves out anything
    else that is meant to stay as it is; a watched module with nothing left to check raises
    `ValueError`."""
    snapshot = _Snapshot("updated", _watched("updated", modules, named), buffers, ignore)
    yield
    stale: dict[str, list[_Part]] = {}
    wrote_params: dict[str, bool] = {}
    for name, parts in snapshot.now().items():
        value = snapshot.watched[name]
        state = set(value.state_dict(keep_vars=True)) if isinstance(value, nn.Module) else None
        stale[name] = [before for before, after in parts.values()
                       if not snapshot.written(before, after) and not _not_state(before, state)]
        wrote_params[name] = any(not before.buffer and snapshot.written(before, after)
                                 for before, after in parts.values())
    stale = {name: parts for name, parts in stale.items() if parts}
    if not stale:
        return
    where = "; ".join(_where(name, sorted(p.label for p in parts)) for name, parts in stale.items())
    only_buffers = all(p.buffer for parts in stale.values() for p in parts) and \
        all(wrote_params[name] for name in stale)
    if only_buffers:
        why = ("the parameters were written and these buffers were not: an update that averages "
               "the parameters and skips the buffers (BatchNorm's running statistics)")
    else:
        why = ("nothing wrote them, not even in place with an equal value: the update skips "
               "them or runs outside the block; leave out what is meant to stay as it is with "
               "ignore=[...]")
    raise AssertionError(f"updated: the block left {where} as they were: {why} "
                         f"{_see('updated')}")


def disjoint(*modules: Watched, ignore: Collection[str] = (), **named: Watched) -> None:
    """No two of the watched modules share a parameter or buffer (the same storage). Catches
    `target = online`, `teacher = student` and `reference = policy`: one network under two names,
    so training one trains the other. Needs at least two things to compare."""
    watched = _watched("disjoint", modules, named)
    if len(watched) < 2:
        raise ValueError(f"disjoint: name at least two modules to compare, got {_listed(watched)}")
    owner: dict[tuple[str, int], tuple[str, str]] = {}
    shared: dict[tuple[str, str], list[str]] = {}
    for name, value in watched.items():
        for part in _parts("disjoint", name, value, ignore=ignore):
            if part.tensor.numel() == 0 or part.tensor.device.type == "meta":
                continue
            key = (str(part.tensor.device), part.tensor.untyped_storage().data_ptr())
            label = part.label or name
            if key in owner and owner[key][0] != name:
                other, other_label = owner[key]
                shared.setdefault((other, name), []).append(
                    label if label == other_label else f"{other_label} = {label}")
            else:
                owner.setdefault(key, (name, label))
    if shared:
        where = "; ".join(f"{a} and {b} share {len(labels)} tensors ({_listed(labels)})"
                          for (a, b), labels in shared.items())
        raise AssertionError(
            f"disjoint: {where}: they are one network under two names, so what trains one moves "
            f"the other; make the second one with copy.deepcopy (then requires_grad_(False)) "
            f"{_see('disjoint')}")


# --- tensors: a graph where there must be none, or none where there must be one ---------------

def _tensors(value: Any, name: str) -> Iterator[tuple[str, torch.Tensor | float]]:
    """The tensors in a value: itself, or those inside a tuple, list or dict (an LSTM's (h, c), a
    batch). A Python number (a metric taken with `.item()`, a count in a rollout dict) is data, so
    it comes out as itself; anything else that is not a tensor (a string, None) is skipped."""
    if isinstance(value, torch.Tensor):
        yield name, value
    elif isinstance(value, (bool, int, float)):
        yield name, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _tensors(item, f"{name}[{key!r}]")
    elif isinstance(value, (tuple, list)):
        for i, item in enumerate(value):
            yield from _tensors(item, f"{name}[{i}]")


def _all_tensors(check: str, tensors: tuple[Any, ...],
                 named: Mapping[str, Any]) -> list[tuple[str, torch.Tensor | float]]:
    values = {f"tensor {i}": t for i, t in enumerate(tensors)} | dict(named)
    if not values:
        raise NothingToCheck(f"{check}: name at least one tensor to check")
    found = []
    for name, value in values.items():
        inside = list(_tensors(value, name))
        if not inside:
            raise ValueError(f"{check}: {name} holds no tensor or number "
                             f"({type(value).__name__}), so there is nothing to check")
        found += inside
    return found


def constant(*tensors: Any, **named: Any) -> None:
    """Each tensor carries no graph: no `grad_fn` and no `requires_grad`. Guards TD targets,
    advantages and returns, stored log-probs, a teacher's output, and a hidden state at the start
    of a chunk, and the metrics an evaluation returns. Tuples, lists and dicts of tensors are
    looked into. A Python number is data and passes (`loss.item()` is the fix for a metric that
    kept its graph); a string or None inside a container is skipped; a value with no tensor and no
    number in it raises `ValueError`."""
    found = _all_tensors("constant", tensors, named)
    graphs = [f"{name} (grad_fn={type(t.grad_fn).__name__})" if t.grad_fn is not None
              else f"{name} (requires_grad=True)" for name, t in found
              if isinstance(t, torch.Tensor) and t.requires_grad]
    if graphs:
        raise AssertionError(
            f"constant: {_listed(graphs)} {'carries' if len(graphs) == 1 else 'carry'} a graph: "
            f"a backward through it reaches the parameters it was computed from; compute it under "
            f"torch.no_grad() or .detach() it {_see('constant')}")


def has_graph(*tensors: Any, reaches: Watched | None = None, **named: Any) -> None:
    """Each tensor carries a graph (`requires_grad`): the opposite of `constant`. Guards where the
    graph must *not* be cut: an inner-loop gradient made with `create_graph=True` (MAML), the
    gradient an R1 or WGAN-GP penalty is built from, fast weights a meta-loss must reach. Without
    `create_graph=True`, `torch.autograd.grad` returns constants, and the penalty or meta-gradient
    silently loses its second-order term. Tuples, lists and dicts are looked into.

    `reaches=module` (or a parameter) says where the graph must lead: each tensor's graph must
    reach at least one of its parameters. Fast weights made with `.detach().requires_grad_()`
    require grad, yet their graph is a leaf that reaches nothing the meta-step trains.

    What `reaches=` does not catch: an inner gradient taken without `create_graph=True`. The fast
    weights `p - lr * g` still reach `p` through the identity, so `has_graph(fast_weights=...,
    reaches=model)` passes while the second-order term is gone (first-order MAML, silently).
    Check the inner gradients themselves, `has_graph(inner_grads=grads)`: without
    `create_graph=True` they carry no graph. For a meta-step, check both."""
    found = _all_tensors("has_graph", tensors, named)
    cut = [name for name, t in found if not (isinstance(t, torch.Tensor) and t.requires_grad)]
    if reaches is not None and not cut:
        target = _accepted(reaches, "reaches")
        params = list(target.parameters()) if isinstance(target, nn.Module) else [target]
        if not params:
            raise ValueError("has_graph: reaches= names a module with no parameters, so there is "
                             "nothing a graph could reach")
        ids = {id(p) for p in params}
        short = [name for name, t in found if not any(id(leaf) in ids for leaf in _leaves(t))]
        if short:
            label = type(target).__name__
            raise AssertionError(
                f"has_graph: {_listed(short)} {'carries' if len(short) == 1 else 'carry'} a graph "
                f"that does not reach {label}: it starts at a new leaf (a .detach() followed by "
                f".requires_grad_(), or a copy), so the gradient of what is built on it never "
                f"arrives where it should; build it from the parameters themselves "
                f"{_see('has_graph')}")
    if cut:
        raise AssertionError(
            f"has_graph: {_listed(cut)} {'carries' if len(cut) == 1 else 'carry'} no graph: a "
            f"backward through it reaches nothing, "
            f"so what should flow through it (a second-order term, a meta-gradient) is silently "
            f"dropped; take the gradient with create_graph=True and do not .detach() it "
            f"{_see('has_graph')}")


# --- modes: train and eval ------------------------------------------------------------------------

def _modules(check: str, modules: tuple[Watched, ...], named: Mapping[str, Watched],
             ignore: Collection[str]) -> dict[str, dict[str, nn.Module]]:
    """Each watched module's submodules (itself included, as ""), by name, less those `ignore=`
    leaves out. A tensor has no mode."""
    out: dict[str, dict[str, nn.Module]] = {}
    for name, value in _watched(check, modules, named).items():
        if not isinstance(value, nn.Module):
            raise TypeError(f"{check}: {name} is a tensor, which has no train or eval mode; "
                            f"name the module it belongs to")
        # the watched module itself always stays: ignore= names what is inside it
        out[name] = {sub: m for sub, m in value.named_modules()
                     if not sub or not _left_out(sub, ignore)}
    return out


def _mode_matters(module: nn.Module) -> bool:
    """Dropout and the norms: the layers whose output depends on the mode, named first."""
    return any(kind in type(module).__name__ for kind in ("Dropout", "Norm"))


def _module_label(sub: str, module: nn.Module) -> str:
    return f"{sub or 'itself'} ({type(module).__name__})"


@_block("modes_restored")
def modes_restored(*modules: Watched, ignore: Collection[str] = (),
                   **named: Watched) -> Iterator[None]:
    """After the block, every submodule of the watched modules is in the mode (`training`) it was
    in before: the check for an evaluation that calls `model.eval()` and never gives the model its
    mode back, so dropout stays off and BatchNorm stops learning its statistics for the rest of
    training. A plain `model.train()` afterwards fails it too when a submodule was in eval mode by
    design (a frozen backbone): that flag is not given back either.

    The check holds when the block raises: an evaluation that leaves the mode behind on an error
    fails it (the error is chained). `ignore=` leaves submodules out by name (a prefix covers what
    is inside).

    Cost: one read of each submodule's flag before and after the block."""
    watched = _modules("modes_restored", modules, named, ignore)
    before = {name: {sub: m.training for sub, m in subs.items()} for name, subs in watched.items()}
    error: Exception | None = None
    try:
        yield
    except Exception as err:  # judged below, then raised again
        error = err
    changed: dict[str, list[str]] = {}
    for name, subs in watched.items():
        moved = [f"{_module_label(sub, m)} {'train' if before[name][sub] else 'eval'} -> "
                 f"{'train' if m.training else 'eval'}"
                 for sub, m in sorted(subs.items(), key=lambda item: not _mode_matters(item[1]))
                 if m.training != before[name][sub]]
        if moved:
            changed[name] = moved
    if changed:
        where = "; ".join(f"{name}: {_listed(moved)}" for name, moved in changed.items())
        raise AssertionError(
            f"modes_restored: the block did not give back the modes it found ({where}): "
            f"training goes on in the wrong mode (dropout off, BatchNorm frozen) or a module kept "
            f"in eval by design is put back in train; keep each module's own flag and restore it "
            f"in a finally {_see('modes_restored')}") from error
    if error is not None:
        raise error


@contextlib.contextmanager
def _forwards_in_mode(check: str, training: bool, modules: tuple[Watched, ...],
                      named: Mapping[str, Watched], ignore: Collection[str]) -> Iterator[None]:
    watched = _modules(check, modules, named, ignore)
    ran: set[tuple[str, str]] = set()
    wrong: dict[str, list[str]] = {}

    def on_forward(name: str, sub: str) -> Callable[..., None]:
        def hook(module: nn.Module, _: Any) -> None:
            ran.add((name, sub))
            if module.training != training:
                label = _module_label(sub, module)
                if label not in wrong.setdefault(name, []):
                    wrong[name].append(label)
                    # dropout and the norms first: the layers the mode changes
                    wrong[name].sort(key=lambda text: not any(
                        kind in text.rsplit("(", 1)[-1] for kind in ("Dropout", "Norm")))
        return hook

    handles = [m.register_forward_pre_hook(on_forward(name, sub))
               for name, subs in watched.items() for sub, m in subs.items()]
    error: Exception | None = None
    try:
        yield
    except Exception as err:  # judged below, then raised again
        error = err
    finally:
        for handle in handles:
            handle.remove()
    want, other = ("train", "eval") if training else ("eval", "train")
    if wrong:
        where = "; ".join(f"{name}: {_listed(labels)}" for name, labels in wrong.items())
        fix = ("an evaluation before it left the model in eval mode (see modes_restored), so "
               "dropout is off and BatchNorm stops learning; call model.train() before the step, "
               "or leave out by name a module kept in eval by design (ignore=[...])"
               if training else
               "dropout drops and BatchNorm normalises with this batch's statistics and updates "
               "its running ones, so the metric is noisy and evaluating changes the model; call "
               "model.eval() for the block")
        raise AssertionError(f"runs_in_{want}_mode: {where} ran in {other} mode: {fix} "
                             f"{_see(f'runs_in_{want}_mode')}") from error
    if error is not None:
        raise error
    silent = [name for name in watched if not any(n == name for n, _ in ran)]
    if silent:
        raise ValueError(f"runs_in_{want}_mode: {_listed(silent)} never ran a forward inside the "
                         f"block, so there is nothing to check")


def runs_in_train_mode(*modules: Watched, ignore: Collection[str] = (),
                       **named: Watched) -> contextlib.AbstractContextManager[None]:
    """Every forward of the watched modules and their submodules inside the block runs in train
    mode: the check for a training step that follows an evaluation which never put the model back
    (dropout silently off, BatchNorm's statistics frozen). A submodule kept in eval by design (a
    frozen backbone with its BatchNorm) is left out by name with `ignore=`.

    A watched module that runs no forward inside the block raises `ValueError`. Submodules called
    through `module.forward(x)` rather than `module(x)` run no hook and are not seen.

    Cost: a forward pre-hook on every watched submodule while the block runs."""
    return _Block("runs_in_train_mode",
                  _forwards_in_mode("runs_in_train_mode", True, modules, named, ignore))


def runs_in_eval_mode(*modules: Watched, ignore: Collection[str] = (),
                      **named: Watched) -> contextlib.AbstractContextManager[None]:
    """Every forward of the watched modules and their submodules inside the block runs in eval
    mode: the check for an evaluation, a frozen teacher or reference, and a target network. In
    train mode dropout drops and BatchNorm normalises by the batch and updates its running
    statistics: the metric depends on the batch size and evaluating changes the model.

    A watched module that runs no forward inside the block raises `ValueError`.

    Cost: a forward pre-hook on every watched submodule while the block runs."""
    return _Block("runs_in_eval_mode",
                  _forwards_in_mode("runs_in_eval_mode", False, modules, named, ignore))


# --- values that must stay finite ----------------------------------------------------------------

def _first_not_finite(parts: dict[str, list[_Part]], grads: bool) -> str | None:
    """`model: 1.running_var (buffer) holds 3 NaN of 16` for the first tensor (a parameter, its
    grad, a buffer) with a NaN or an infinity, in the order the module lists them; None if none.
    One sum per tensor decides (a NaN or an infinity makes the sum non-finite); only a tensor whose
    sum is not finite is looked at entry by entry (its sum may have overflowed)."""
    candidates: list[tuple[str, str, torch.Tensor]] = []
    for name, found in parts.items():
        for part in found:
            tensor = part.tensor
            if tensor.is_floating_point() or tensor.is_complex():
                candidates.append((name, part.label, tensor.detach()))
            if grads and tensor.is_leaf and tensor.requires_grad and tensor.grad is not None:
                candidates.append((name, f"{part.label or name}.grad", tensor.grad.detach()))
    if not candidates:
        return None
    with torch.no_grad():
        sums = torch.stack([t.sum(dtype=torch.float64 if t.dtype == torch.float64
                                  else torch.float32).to("cpu", torch.float64)
                            if not t.is_complex() else t.abs().sum().to("cpu", torch.float64)
                            for _, _, t in candidates])
    for i in torch.nonzero(~torch.isfinite(sums)).flatten().tolist():
        name, label, tensor = candidates[i]
        bad = ~torch.isfinite(tensor)
        if bool(bad.any()):
            nans = int(tensor.isnan().sum())
            kind = (f"{nans} NaN" if nans == int(bad.sum())
                    else f"{int(bad.sum())} NaN or infinite values")
            return f"{_where(name, [label])} holds {kind} of {tensor.numel():,}"
    return None


class finite(contextlib.AbstractContextManager):  # noqa: N801 (a check, named like the others)
    """Every parameter, its grad (with `grads=True`) and every buffer of the watched modules, or the
    watched tensors, is finite: no NaN, no infinity. Buffers count: a NaN in BatchNorm's running
    statistics never shows in `named_parameters()`, and it turns every evaluation into NaN.

    What it sees: what it is handed. A module: its parameters, their grads and its buffers. A
    tensor (`finite(loss=loss)`): that tensor's values. A loss of `log` of a negative number is NaN
    while every parameter and grad stays finite until the next backward: watch the loss as well as
    the model to see it at the step it appears.

    Two forms:
    - `finite(model=model)`, `finite(loss=loss)`: checked at once.
    - `with finite(model=model): for ...: train_step(...)`: checked at once, then after every
      optimizer step inside the block and at its end; the failure names the first bad tensor and
      the step (the n-th `optimizer.step()` in the block) after which it appeared.

    `ignore=` leaves tensors out by name; a watched module with nothing left raises `ValueError`.

    Cost: one `isfinite` pass over every watched tensor per check (per optimizer step in the block
    form)."""

    def __init__(self, *modules: Watched, grads: bool = True, ignore: Collection[str] = (),
                 **named: Watched):
        watched = _watched("finite", modules, named)
        self.parts = {name: _parts("finite", name, value, ignore=ignore)
                      for name, value in watched.items()}
        self.grads, self.steps, self._handle = grads, 0, None
        self._judge("when the check began")

    def _judge(self, when: str) -> None:
        found = _first_not_finite(self.parts, self.grads)
        if found:
            raise AssertionError(
                f"finite: {found} {when}: a learning rate too large, a log or a division of 0, or "
                f"a NaN in the data, and every later step spreads it {_see('finite')}")

    def __enter__(self) -> finite:
        def after_step(optimizer: torch.optim.Optimizer, *_: Any) -> None:
            self.steps += 1
            self._judge(f"after optimizer step {self.steps} in the block "
                        f"({type(optimizer).__name__}.step())")
        self._handle = register_optimizer_step_post_hook(after_step)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._handle.remove()
        if exc[0] is None:
            self._judge(f"at the end of the block ({self.steps} optimizer steps)")
        return None


# --- the optimizer: what it holds ----------------------------------------------------------------

def _held(optimizer: torch.optim.Optimizer) -> dict[int, dict]:
    return {id(p): group for group in optimizer.param_groups for p in group["params"]}


class optimizer_covers(contextlib.AbstractContextManager):  # noqa: N801
    """The optimizer holds every parameter of the watched modules that is meant to train
    (`requires_grad=True`), and moves none that is frozen.

    A trainable parameter in no param group never learns (a head added after the optimizer was
    built). A frozen parameter that sits in the optimizer is left alone only while its grad is
    None: with a grad, even a stale zero one (`zero_grad(set_to_none=False)`, or a grad from
    before it was frozen), weight decay and momentum still move it on every step.

    Two forms:
    - `optimizer_covers(optimizer, model=model)`: checked at once: the missing trainable
      parameters, and the frozen ones it holds that have a grad.
    - `with optimizer_covers(optimizer, model=model): ...`: the same at once, then at the end of
      the block, the frozen parameters it holds must have the same value as before.

    `ignore=` leaves parameters out by name. Cost: one copy of the frozen parameters the optimizer
    holds, in the block form."""

    def __init__(self, optimizer: torch.optim.Optimizer, *modules: Watched,
                 ignore: Collection[str] = (), **named: Watched):
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer_covers: the first argument is the optimizer, got "
                            f"{type(optimizer).__name__}")
        watched = _watched("optimizer_covers", modules, named)
        self.optimizer = optimizer
        self.parts = {name: [p for p in _parts("optimizer_covers", name, value, buffers=False,
                                               ignore=ignore)]
                      for name, value in watched.items()}
        held = _held(optimizer)
        missing = {name: [p.label for p in parts
                          if p.tensor.requires_grad and id(p.tensor) not in held]
                   for name, parts in self.parts.items()}
        missing = {name: labels for name, labels in missing.items() if labels}
        if missing:
            where = "; ".join(_where(name, labels) for name, labels in missing.items())
            raise AssertionError(
                f"optimizer_covers: {type(optimizer).__name__} does not hold {where}, which "
                f"require grad: they get grads and never learn (a module added after the optimizer "
                f"was built?); build the optimizer from the trainable parameters "
                f"{_see('optimizer_covers')}")
        self.frozen = {name: [p for p in parts if not p.tensor.requires_grad
                              and id(p.tensor) in held] for name, parts in self.parts.items()}
        stale = {name: [p.label for p in parts if p.tensor.grad is not None]
                 for name, parts in self.frozen.items()}
        stale = {name: labels for name, labels in stale.items() if labels}
        if stale:
            where = "; ".join(_where(name, labels) for name, labels in stale.items())
            self._fail_frozen(where, "frozen, yet with a grad and in the optimizer: its next "
                                     "step moves them (weight decay, momentum)")
        self.copies: dict[int, torch.Tensor] = {}

    def _fail_frozen(self, where: str, what: str) -> None:
        raise AssertionError(
            f"optimizer_covers: {where}: {what}; build the optimizer from the trainable parameters "
            f"only, or set their grads to None {_see('optimizer_covers')}")

    def __enter__(self) -> optimizer_covers:
        with torch.no_grad():
            self.copies = {id(p): p.tensor.detach().clone()
                           for parts in self.frozen.values() for p in parts}
        return self

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is not None:
            return None
        moved = {name: [p.label for p in parts
                        if not _same_bits(self.copies[id(p)], p.tensor.detach())]
                 for name, parts in self.frozen.items()}
        moved = {name: labels for name, labels in moved.items() if labels}
        if moved:
            where = "; ".join(_where(name, labels) for name, labels in moved.items())
            self._fail_frozen(where, f"frozen, yet held by {type(self.optimizer).__name__} and "
                                     f"moved inside the block (a stale grad under weight decay "
                                     f"or momentum)")
        return None


# --- the gradient a step hands the optimizer ------------------------------------------------------

@_block("same_grad_as")
def same_grad_as(reference: Callable[[], Any], *modules: Watched, rtol: float = 1e-4,
                 ignore: Collection[str] = (), **named: Watched) -> Iterator[None]:
    """The gradient the block leaves in the watched modules' `.grad` equals the one `reference()`
    leaves there, within `rtol` relative to the reference's norm: the check for an accumulated
    step, which must hand the optimizer the full batch's gradient. `reference` runs the plain
    step (one backward of the whole batch's mean loss) before the block.

    Both start from no gradient: the check sets every watched `.grad` to None before the reference
    and again before the block, and leaves the block's gradient in place. A parameter whose grad is
    None counts as zero. A mean of micro-batch means fails it whenever the micro-batches hold
    different numbers of tokens (or samples).

    Cost: one extra step (the reference) and one copy of the gradient."""
    if isinstance(reference, nn.Module) or not callable(reference):
        raise TypeError(
            f"same_grad_as: its first argument is the reference step, a function of no "
            f"arguments that runs the plain step (one backward of the whole batch), got "
            f"{type(reference).__name__}; pass the modules to watch after it: "
            f"same_grad_as(lambda: full_batch_step(), model=model)")
    watched = _watched("same_grad_as", modules, named)
    params = [part for name, value in watched.items()
              for part in _parts("same_grad_as", name, value, buffers=False, trainable_only=True,
                                 ignore=ignore)]
    owner = {id(part): name for name, value in watched.items() for part in params}

    def grads() -> list[torch.Tensor]:
        return [torch.zeros_like(p.tensor) if p.tensor.grad is None else p.tensor.grad.detach()
                .clone() for p in params]

    def clear() -> None:
        for p in params:
            p.tensor.grad = None

    clear()
    reference()
    expected = grads()
    clear()
    yield
    written = any(p.tensor.grad is not None for p in params)
    got = grads()
    norm = torch.sqrt(sum((e.double() ** 2).sum() for e in expected))
    if float(norm) == 0.0:
        raise ValueError("same_grad_as: the reference step left no gradient in the watched "
                         "modules, so there is nothing to compare with")
    diff = torch.sqrt(sum(((g - e).double() ** 2).sum() for g, e in zip(got, expected)))
    error = float(diff / norm)
    if not written:
        raise AssertionError(
            f"same_grad_as: no backward inside the block wrote a gradient into the watched "
            f"modules, so the block's step hands the optimizer nothing; run the micro-batches' "
            f"forward and backward inside the `with` block {_see('same_grad_as')}")
    if error > rtol:
        worst = max(range(len(params)), key=lambda i: float((got[i] - expected[i]).norm()))
        where = _where(owner[id(params[worst])], [params[worst].label])
        raise AssertionError(
            f"same_grad_as: the block's gradient is {error:.3g} off the reference step's "
            f"(relative to its norm; rtol={rtol:g}), most in {where}: the step is not the full "
            f"batch's (a mean of micro-batch means weighs a short micro-batch's tokens more; a "
            f"loss not divided once by the whole step's count) {_see('same_grad_as')}")


# --- intents: what a module is meant to be --------------------------------------------------------

@_block("frozen")
def frozen(*modules: Watched, ignore: Collection[str] = (), **named: Watched) -> Iterator[None]:
    """The watched modules are frozen inside the block: no backward writes a grad into them
    (`no_grad_reaches`) and their parameters and buffers keep their values (`unchanged`). The check
    for a frozen backbone, a teacher, a reference model and a target network between syncs: it
    fails whether the harm is a grad (a teacher that requires grad) or a value (BatchNorm left in
    train mode, a teacher in the optimizer). Its failures are theirs, told as its own."""
    _watched("frozen", modules, named)  # nothing named: the one line says frozen, not another
    from_block: list[BaseException] = []
    try:
        with unchanged(*modules, ignore=ignore, **named), \
                no_grad_reaches(*modules, ignore=ignore, **named):
            try:
                yield
            except BaseException as error:  # the block's own: passed on as it is
                from_block.append(error)
                raise
    except (AssertionError, ValueError) as failure:
        if failure in from_block:
            raise
        text = str(failure)
        for inner in ("unchanged", "no_grad_reaches"):
            if text.startswith(f"{inner}: "):
                raise type(failure)(f"frozen: {text.removeprefix(f'{inner}: ')}".replace(
                    _see(inner), _see("frozen"))) from failure.__cause__
        raise


# --- memory across calls --------------------------------------------------------------------------

class MemoryTrace(list):
    """What `bounded_memory` returns: a list of the bytes still held for backward after each call,
    with `graph_nodes`, the autograd nodes still alive after the last warm-up
    call and after the last call."""

    graph_nodes: list[int]


def bounded_memory(step: Callable[[], Any], steps: int = 5, warmup: int = 1,
                   slack_bytes: int = 0, slack_nodes: int = 0) -> MemoryTrace:
    """Call `step()` `steps` times; after the first `warmup` calls, nothing a call leaves behind
    may grow from one call to the next. Two things are counted after each call:
    - the bytes still held for backward (tensors saved by graphs that are alive), which grow when
      no backward runs: an eval loop without no_grad that keeps `total_loss += loss`, a rollout
      stored with grad, an EMA update outside no_grad;
    - the autograd nodes still alive, which grow even when every call runs `backward()` (which
      frees the saved tensors but not the nodes): a training loop that logs with
      `running_loss += loss` or `losses.append(loss)`, a hidden state carried without detach.

    Either one growing by more than its slack (`slack_bytes`, `slack_nodes`) fails. `step` must
    keep what it returns small: the returned values are dropped before counting.

    Cost: the saved-tensor hooks on every call, and twice (after the warm-up and at the end) a
    scan of every live Python object for tensors with a graph: tens of milliseconds in a process
    that has imported much. It is a test-time check, not one to leave in a training run."""
    if steps < warmup + 2:
        raise ValueError(f"bounded_memory: steps={steps}: need at least warmup + 2 = "
                         f"{warmup + 2} calls to see growth")
    meter, held, nodes = SavedTensorMeter(), MemoryTrace(), []
    counted = {warmup - 1, steps - 1} if warmup else {steps - 1}
    with meter:
        for i in range(steps):
            step()
            held.append(meter.live)
            if i in counted:  # a scan of every live object: only where the verdict reads it
                nodes.append(live_graph_nodes())
    held.graph_nodes = nodes  # after the last warm-up call (when there is one) and the last
    name = getattr(step, "__name__", "step")
    base = held[warmup - 1] if warmup else 0
    if held[-1] > base + slack_bytes:
        per_call = (held[-1] - base) / max(steps - warmup, 1)
        raise AssertionError(
            f"bounded_memory: the bytes held for backward grew from {base:,} to {held[-1]:,} over "
            f"{steps - warmup} calls of {name} (about {per_call:,.0f} per call; after each call: "
            f"{', '.join(f'{b:,}' for b in held)}): something keeps every call's graph alive "
            f"{_see('bounded_memory')}")
    base_nodes = nodes[0] if warmup else 0
    if nodes[-1] > base_nodes + slack_nodes:
        per_call = (nodes[-1] - base_nodes) / max(steps - warmup, 1)
        raise AssertionError(
            f"bounded_memory: the autograd nodes kept alive grew from {base_nodes:,} to "
            f"{nodes[-1]:,} over {steps - warmup} calls of {name} (about {per_call:,.0f} per "
            f"call): something keeps every call's graph alive after backward (a running total or "
            f"a list of losses: keep loss.item() or loss.detach()) {_see('bounded_memory')}")
    return held
