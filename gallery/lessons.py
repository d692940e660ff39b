"""The seed tutorial's claims about detaching, each as a runnable proof that asserts what it says.

    python -m gallery lessons              # every lesson: its claim, what it measured, PASS or FAIL
    python -m gallery lessons data_is_not_detach inference_mode_is_stricter

Each lesson is a function whose docstring is its claim; it asserts the claim and returns what it
measured, one line. Where the tutorial was imprecise or wrong, the claim says so. The exit status
is non-zero when any lesson fails, so the lessons are a check, not only a demonstration.
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from gallery.core.probes import SavedTensorMeter, live_graph_nodes


def detach_shares_storage() -> str:
    """`detach()` copies nothing: the result shares the original's storage and its version
    counter."""
    x = torch.randn(4, requires_grad=True) * 2
    y = x.detach()
    assert y.data_ptr() == x.data_ptr() and y._version == x._version
    y.add_(1)  # an in-place change through the detached view ...
    assert x._version == y._version == 1  # ... is counted on the original too
    return (f"same data_ptr, and one in-place op on the detached tensor bumped both versions to "
            f"{x._version}")


def inplace_on_detached_breaks_backward() -> str:
    """An in-place change to a detached tensor changes the original; if autograd saved the original
    for backward, the next backward fails with the version-counter error."""
    a = torch.randn(3, requires_grad=True)
    b = a.sigmoid()  # sigmoid saves its output for backward
    b.detach().zero_()
    assert bool((b == 0).all())  # the original changed
    try:
        b.sum().backward()
    except RuntimeError as err:
        assert "modified by an inplace operation" in str(err)
        return "RuntimeError: " + str(err).split(". Hint")[0]
    raise AssertionError("backward did not notice the in-place change")


def clone_detach_is_independent() -> str:
    """`detach().clone()` (or `clone().detach()`) is a real copy: changing it leaves the original
    and its backward intact."""
    a = torch.randn(3, requires_grad=True)
    b = a.sigmoid()
    c = b.detach().clone()
    c.zero_()
    assert c.data_ptr() != b.data_ptr() and not bool((b == 0).any())
    b.sum().backward()
    torch.testing.assert_close(a.grad, (b * (1 - b)).detach())
    return ("the copy was zeroed; the original kept its values and its backward gave the right "
            "gradient")


def data_is_not_detach() -> str:
    """`.data` is not `.detach()`: an in-place change through `.data` is invisible to the version
    counter, so backward runs without complaint and returns a wrong gradient."""
    a = torch.tensor([0.5, -1.0, 2.0], requires_grad=True)
    b = a.sigmoid()
    right = (b * (1 - b)).detach().clone()  # d sigmoid / da, from the true output
    b.data.zero_()  # with b.detach().zero_() the backward below would raise instead
    b.sum().backward()
    assert not torch.allclose(a.grad, right)
    expected = [round(v, 4) for v in right.tolist()]
    return f"no error, gradient {a.grad.tolist()} instead of {expected}"


def no_grad_cuts_every_operation() -> str:
    """`detach()` cuts one tensor; `torch.no_grad()` cuts every operation in its block: results made
    there do not require grad even from parameters that do, and the parameters themselves still
    do."""
    w = nn.Parameter(torch.randn(3))
    x = torch.randn(3)
    with torch.no_grad():
        inside = w * x + w.exp()
    mixed = w.detach() * x + w * x  # one input cut, the other not: the result still has a graph
    assert not inside.requires_grad and inside.grad_fn is None and w.requires_grad
    assert mixed.requires_grad and mixed.grad_fn is not None
    return ("under no_grad: requires_grad=False from a parameter; with one detach: still "
            "requires_grad=True")


def inference_mode_is_stricter() -> str:
    """Tensors made under `torch.inference_mode()` can never be saved for backward later; tensors
    made under `no_grad` can. Use inference_mode for pure evaluation, no_grad for values that may
    meet a graph again (cached features, TD targets)."""
    w = torch.randn(3, requires_grad=True)
    with torch.no_grad():
        ok = torch.randn(3) * 2
    (ok * w).sum().backward()  # fine: `ok` is saved for backward as an ordinary constant
    with torch.inference_mode():
        frozen = torch.randn(3) * 2
    try:
        (frozen * w).sum().backward()
    except RuntimeError as err:
        assert "Inference tensors cannot be saved for backward" in str(err)
        return "RuntimeError: " + str(err).split(". ")[0]
    raise AssertionError("an inference tensor was saved for backward")


def only_leaves_that_require_grad_get_grad() -> str:
    """Only leaf tensors that require grad get `.grad`. Parameters require grad; model inputs do
    not by default. (The seed tutorial says inputs default to requires_grad=True; they do not.)"""
    net = nn.Linear(3, 1)
    x = torch.randn(5, 3)
    hidden = net(x)
    hidden.sum().backward()
    assert not x.requires_grad and x.grad is None
    assert net.weight.requires_grad and net.weight.grad is not None
    assert not hidden.is_leaf  # a non-leaf keeps no .grad unless asked with retain_grad()
    return "input: requires_grad=False, .grad None; weight: requires_grad=True, .grad set"


def detach_does_not_free_the_graph() -> str:
    """Detaching makes a new tensor; it does not free the original graph. The bytes saved for
    backward stay alive while any reference to the graph's output lives; `del` frees them."""
    net = nn.Sequential(nn.Linear(4, 64), nn.Tanh(), nn.Linear(64, 1))
    with SavedTensorMeter() as meter:
        out = net(torch.randn(32, 4)).sum()
    alive = weakref.ref(out)
    value = out.detach()
    held = meter.live
    assert held > 0 and alive() is not None
    del out
    assert meter.live == 0 and alive() is None and value.grad_fn is None
    return f"{held:,} bytes held after detach(); 0 after del of the last reference"


def requires_grad_false_does_not_freeze_batchnorm() -> str:
    """`requires_grad_(False)` freezes a module's parameters but not its BatchNorm running
    statistics: in train() mode they still move with every batch. Freezing also needs eval()."""
    bn = nn.BatchNorm1d(4)
    bn.requires_grad_(False)
    before = bn.running_mean.clone()
    bn.train()
    bn(torch.randn(16, 4) + 3)
    moved = float((bn.running_mean - before).abs().max())
    bn.eval()
    after_train = bn.running_mean.clone()
    bn(torch.randn(16, 4) + 3)
    assert moved > 0 and torch.equal(bn.running_mean, after_train)
    return f"train(): running_mean moved by up to {moved:.3f}; eval(): unchanged"


def checkpointing_trades_bytes_for_recompute() -> str:
    """Gradient checkpointing (`checkpoint(..., use_reentrant=False)`) saves fewer bytes for
    backward and recomputes the forward during backward; the gradients are identical."""
    torch.manual_seed(0)
    blocks = nn.Sequential(*[nn.Sequential(nn.Linear(64, 64), nn.Tanh()) for _ in range(8)])
    x = torch.randn(32, 64)
    with SavedTensorMeter() as plain:
        loss = blocks(x).pow(2).sum()
    loss.backward()
    grads = [p.grad.clone() for p in blocks.parameters()]
    blocks.zero_grad(set_to_none=True)
    with SavedTensorMeter() as saved:
        h = x
        for block in blocks:
            h = checkpoint(block, h, use_reentrant=False)
        loss = h.pow(2).sum()
    loss.backward()
    assert saved.total < plain.total
    assert all(torch.equal(a, p.grad) for a, p in zip(grads, blocks.parameters()))
    ratio = plain.total / saved.total
    return (f"{plain.total:,} bytes saved without, {saved.total:,} with ({ratio:.1f}x); "
            "gradients equal")


def straight_through_is_value_of_f_gradient_of_identity() -> str:
    """`y = x + (f(x) - x).detach()` has the value of `f(x)` and the gradient of the identity: the
    straight-through estimator, as VQ-VAE uses it for a step with no gradient of its own."""
    x = torch.randn(6, requires_grad=True)
    y = x + (x.round() - x).detach()  # round() has zero gradient almost everywhere
    assert torch.equal(y, x.round())
    (grad,) = torch.autograd.grad((y * torch.arange(6.0)).sum(), x)
    assert torch.equal(grad, torch.arange(6.0))  # d(sum w*y)/dx = w: as if y were x
    return "value == round(x) exactly; gradient == the weights, as if y were x"


def gumbel_softmax_hard_is_straight_through() -> str:
    """`F.gumbel_softmax(logits, hard=True)` is a straight-through estimator: its forward is
    exactly one-hot, and its gradient is the gradient of the soft sample drawn with the same
    noise."""
    import torch.nn.functional as F

    logits = torch.randn(4, 5, requires_grad=True)
    weights = torch.randn(4, 5)
    torch.manual_seed(0)
    hard = F.gumbel_softmax(logits, tau=0.7, hard=True)
    (hard_grad,) = torch.autograd.grad((hard * weights).sum(), logits)
    torch.manual_seed(0)  # the same Gumbel noise
    soft = F.gumbel_softmax(logits, tau=0.7, hard=False)
    (soft_grad,) = torch.autograd.grad((soft * weights).sum(), logits)
    assert bool(((hard == 0) | (hard == 1)).all()) and torch.equal(hard.sum(1), torch.ones(4))
    torch.testing.assert_close(hard_grad, soft_grad)
    return ("forward one-hot in every row; gradient equal to the soft sample's "
            f"(max difference {float((hard_grad - soft_grad).abs().max()):.1g})")


def ratio_to_detached_self_is_one_with_the_policy_gradient() -> str:
    """`torch.exp(logp - logp.detach())` is exactly 1, and its gradient is exactly the gradient of
    `logp`: the first pass of a PPO or GRPO step over a fresh rollout is the plain policy gradient,
    not a ratio "stuck at 1" that teaches nothing."""
    logits = torch.randn(5, requires_grad=True)
    logp = torch.log_softmax(logits, 0)[2]
    ratio = torch.exp(logp - logp.detach())
    assert ratio.item() == 1.0
    (from_ratio,) = torch.autograd.grad(ratio, logits, retain_graph=True)
    (from_logp,) = torch.autograd.grad(logp, logits)
    assert torch.equal(from_ratio, from_logp)
    return "value 1.0 exactly; gradient equal to d logp / d logits, element for element"


def grad_without_create_graph_is_a_constant() -> str:
    """`torch.autograd.grad(loss, w)` returns a constant: no graph, so nothing after it can
    differentiate through it. With `create_graph=True` the gradient has a graph of its own and its
    own gradient exists: what MAML's inner step and the GAN's R1 penalty need."""
    w = torch.tensor([1.5, -0.5], requires_grad=True)
    (plain,) = torch.autograd.grad((w ** 3).sum(), w)
    assert plain.grad_fn is None and not plain.requires_grad
    (kept,) = torch.autograd.grad((w ** 3).sum(), w, create_graph=True)
    (second,) = torch.autograd.grad(kept.sum(), w)  # d/dw of sum(3 w^2) = 6 w
    assert kept.grad_fn is not None and torch.equal(second, 6 * w.detach())
    return "without: grad_fn None, requires_grad False; with: a graph, and d(sum g)/dw == 6w"


def running_loss_sum_keeps_every_graph() -> str:
    """`total_loss += loss` across iterations keeps every iteration's graph alive, in both loops
    people write. In an eval loop without no_grad (no backward) it keeps the saved tensors, so the
    bytes held for backward grow with each iteration. In a training loop, backward frees those
    bytes every iteration, yet the kept loss still holds its chain of autograd nodes, so the nodes
    (and the process's memory) grow instead. `total_loss += loss.item()` keeps both flat. The most
    asked memory question about autograd."""
    net = nn.Linear(64, 64)
    x = torch.randn(128, 64)

    def after(n: int, keep_graph: bool, backward: bool) -> tuple[int, int]:
        with SavedTensorMeter() as meter:
            start_nodes = live_graph_nodes()
            total = 0.0
            for _ in range(n):
                loss = net(x).pow(2).mean()
                if backward:
                    loss.backward()
                total = total + (loss if keep_graph else loss.item())
            del loss
            return meter.live, live_graph_nodes() - start_nodes

    summed = [after(n, keep_graph=True, backward=False)[0] for n in (1, 2, 4)]
    flat = [after(n, keep_graph=False, backward=False)[0] for n in (1, 2, 4)]
    assert summed[0] > 0 and summed[2] == 4 * summed[0] and summed[1] == 2 * summed[0]
    assert flat == [0] * 3
    trained = [after(n, keep_graph=True, backward=True) for n in (1, 2, 4)]
    trained_flat = [after(n, keep_graph=False, backward=True) for n in (1, 2, 4)]
    nodes = [count for _, count in trained]
    assert [held for held, _ in trained] == [0] * 3  # the saved-bytes meter alone sees nothing
    per_iteration = nodes[1] - nodes[0]  # the parameters' AccumulateGrad nodes are shared
    assert per_iteration > 0 and nodes[2] - nodes[1] == 2 * per_iteration
    assert trained_flat == [(0, 0)] * 3
    return (f"eval loop, bytes held after 1, 2, 4 iterations: {', '.join(f'{b:,}' for b in summed)}"
            f" with `+= loss`, 0 with `+= loss.item()`; training loop (backward every iteration): "
            f"0 bytes held either way, but {', '.join(str(n) for n in nodes)} autograd nodes kept "
            f"alive with `+= loss` ({per_iteration} more per iteration), 0 with `+= loss.item()` "
            f"(gallery.check.bounded_memory counts both)")


def eval_and_no_grad_are_independent() -> str:
    """`model.eval()` and `torch.no_grad()` do different things, and an evaluation needs both.
    eval() changes what the layers compute (dropout off, BatchNorm reads its running statistics)
    but autograd still records a graph; no_grad() stops the graph but dropout still drops and
    BatchNorm still normalises by the batch and updates its running statistics. Either one alone
    leaves the other problem."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Dropout(0.5), nn.Linear(16, 2))
    x = torch.randn(32, 8)

    def evaluated(eval_mode: bool, no_grad: bool) -> tuple[bool, bool, bool]:
        """(a graph was recorded, the running mean moved, two passes disagree)"""
        net.train(not eval_mode)
        before = net[1].running_mean.clone()
        with torch.set_grad_enabled(not no_grad):
            first, second = net(x), net(x)
        net.train()
        return (first.requires_grad, not torch.equal(before, net[1].running_mean),
                not torch.equal(first, second))

    only_eval, only_no_grad, both = (evaluated(True, False), evaluated(False, True),
                                     evaluated(True, True))
    assert only_eval == (True, False, False)  # a graph, but the layers behave
    assert only_no_grad == (False, True, True)  # no graph, but the layers train and drop
    assert both == (False, False, False)
    return ("eval() alone: a graph recorded, statistics unchanged, repeatable; no_grad() alone: "
            "no graph, but the running mean moved and two passes disagreed; both: neither")


LESSONS: dict[str, Callable[[], str]] = {f.__name__: f for f in (
    detach_shares_storage, inplace_on_detached_breaks_backward, clone_detach_is_independent,
    data_is_not_detach, no_grad_cuts_every_operation, inference_mode_is_stricter,
    only_leaves_that_require_grad_get_grad, detach_does_not_free_the_graph,
    requires_grad_false_does_not_freeze_batchnorm, checkpointing_trades_bytes_for_recompute,
    running_loss_sum_keeps_every_graph, straight_through_is_value_of_f_gradient_of_identity,
    gumbel_softmax_hard_is_straight_through,
    ratio_to_detached_self_is_one_with_the_policy_gradient,
    grad_without_create_graph_is_a_constant, eval_and_no_grad_are_independent)}


# The claims where the seed tutorial was wrong or imprecise (the lesson's claim says what is true).
CORRECTS_THE_TUTORIAL = {"only_leaves_that_require_grad_get_grad"}


def status(name: str) -> str:
    if name in CORRECTS_THE_TUTORIAL:
        return "corrects the tutorial; asserted"
    return "as the tutorial says; asserted"


def claim(lesson: Callable[[], str]) -> str:
    return " ".join((lesson.__doc__ or "").split())


def run(names: list[str] | None = None, out=None) -> dict[str, tuple[bool, str]]:
    """Run the named lessons (all by default); print each claim, what it measured and PASS/FAIL."""
    results = {}
    for name in names or list(LESSONS):
        try:
            passed, shown = True, LESSONS[name]()
        # a failed assertion or an unexpected error: the claim did not hold
        except Exception as err:
            passed, shown = False, f"{type(err).__name__}: {err}"
        results[name] = (passed, shown)
        print(f"{'PASS' if passed else 'FAIL'}  {name}\n      {claim(LESSONS[name])}\n      -> "
              f"{shown}", file=out or sys.stdout)
    return results


def main(argv: list[str]) -> int:
    unknown = [n for n in argv if n not in LESSONS]
    if unknown:
        print(f"error: no lesson named {', '.join(unknown)}; the lessons: {', '.join(LESSONS)}",
              file=sys.stderr)
        return 2
    results = run(argv or None)
    failed = [n for n, (ok, _) in results.items() if not ok]
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
