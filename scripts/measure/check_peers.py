"""`scripts/bench.py check_peers`: gallery.check beside the libraries people already use to test a
training step (torcheck, tinytorchtest, pytest-torch), each installed with pip --target --no-deps,
never a dependency. Each pair is a small step written twice, correct and with one mistake, in the
project's own words; each tool judges both with its own natural API, and the verdict is:

- right: it passes the correct step and fails the mistake;
- false alarm: it fails the correct step;
- miss: it passes the mistake;
- cannot express: the tool has no way to state the property (an adapter that returns CANNOT).

It also times each tool's check on one step every tool can judge (`TIMED`), over the plain step,
in alternating blocks."""

from __future__ import annotations

import contextlib
import copy
import io
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gallery import check
from scripts.measure.peers import peer_path

PEERS = ("torcheck==1.0.1", "tinytorchtest==1.2.3", "pytest-torch==1.1.1")
TOOLS = ("gallery.check", "pytest-torch", "torcheck", "tinytorchtest")
CANNOT = object()  # an adapter's answer when its tool has no way to state the property


@dataclass
class Setup:
    """One step of a pair, built fresh: its model, the part that matters, its optimizer and the
    step itself (a closure: one call is one training step)."""
    model: nn.Module
    part: nn.Module
    optimizer: torch.optim.Optimizer
    step: Callable[[], object]
    batch: tuple[torch.Tensor, torch.Tensor]
    loss_fn: Callable | None = None  # (model output, y) -> loss, for the tools that run a step


def classifier(bn: bool = False, dropout: float = 0.0) -> nn.Sequential:
    torch.manual_seed(0)
    layers = [nn.Linear(8, 16)] + ([nn.BatchNorm1d(16)] if bn else []) + [nn.ReLU()]
    layers += [nn.Dropout(dropout)] if dropout else []
    model = nn.Sequential(nn.Sequential(*layers), nn.Linear(16, 3))
    return model


def supervised(model, optimizer, x, y, zero_grad_to_none=True):
    def step():
        optimizer.zero_grad(set_to_none=zero_grad_to_none)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        return loss.detach()
    return step


BATCH = (torch.randn(16, 8, generator=torch.Generator().manual_seed(1)),
         torch.randint(3, (16,), generator=torch.Generator().manual_seed(2)))


# --- the pairs: (mistake: bool) -> Setup ---------------------------------------------------------

def frozen_backbone(mistake: bool) -> Setup:
    """Fine-tuning a head: the backbone must not move (mistake: it was never frozen)."""
    model = classifier()
    backbone = model[0]
    if not mistake:
        backbone.requires_grad_(False)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    return Setup(model, backbone, optimizer, supervised(model, optimizer, *BATCH), BATCH,
                 F.cross_entropy)


def frozen_bn_in_train_mode(mistake: bool) -> Setup:
    """A frozen backbone with BatchNorm: kept in eval mode (mistake: left in train mode, so its
    running statistics move)."""
    model = classifier(bn=True)
    backbone = model[0].requires_grad_(False)
    optimizer = torch.optim.SGD(model[1].parameters(), lr=0.1)
    base = supervised(model, optimizer, *BATCH)

    def step():
        model.train()
        if not mistake:
            backbone.eval()
        return base()
    return Setup(model, backbone, optimizer, step, BATCH, F.cross_entropy)


def frozen_in_adamw(mistake: bool) -> Setup:
    """A frozen backbone inside AdamW with weight decay: harmless while its grad is None (mistake:
    zero_grad(set_to_none=False) leaves stale zero grads, and decay moves it)."""
    model = classifier()
    backbone = model[0]
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1)
    backbone.requires_grad_(False)
    if mistake:
        for p in backbone.parameters():
            p.grad = torch.zeros_like(p)
    step = supervised(model, optimizer, *BATCH, zero_grad_to_none=not mistake)
    return Setup(model, backbone, optimizer, step, BATCH, F.cross_entropy)


def head_not_in_optimizer(mistake: bool) -> Setup:
    """Every trainable parameter in the optimizer (mistake: the head added after it was built)."""
    model = classifier()
    params = model[0].parameters() if mistake else model.parameters()
    optimizer = torch.optim.SGD(params, lr=0.1)
    return Setup(model, model[1], optimizer, supervised(model, optimizer, *BATCH), BATCH,
                 F.cross_entropy)


def gan_d_step(mistake: bool) -> Setup:
    """The D step trains D on fake.detach() (mistake: no detach: its backward reaches G)."""
    torch.manual_seed(0)
    g, d = nn.Linear(4, 8), nn.Linear(8, 1)
    opt_d = torch.optim.SGD(d.parameters(), lr=0.1)
    z, real = torch.randn(16, 4), torch.randn(16, 8)

    def step():
        fake = g(z)
        opt_d.zero_grad(set_to_none=True)
        loss = (F.softplus(-d(real)) + F.softplus(d(fake if mistake else fake.detach()))).mean()
        loss.backward()
        opt_d.step()
        return loss.detach()
    model = nn.ModuleDict({"g": g, "d": d})
    return Setup(model, g, opt_d, step, (z, real))


def td_target_with_grad(mistake: bool) -> Setup:
    """The TD target is data: computed under no_grad from a frozen target net (mistake: with
    grad, through a target copy that still requires grad)."""
    torch.manual_seed(0)
    online = nn.Linear(4, 2)
    target = copy.deepcopy(online)
    if not mistake:
        target.requires_grad_(False)
    optimizer = torch.optim.SGD(online.parameters(), lr=0.1)
    obs, nxt, reward = torch.randn(16, 4), torch.randn(16, 4), torch.randn(16)
    holder = {}

    def step():
        with contextlib.nullcontext() if mistake else torch.no_grad():
            holder["td_target"] = reward + 0.99 * target(nxt).max(1).values
        loss = F.mse_loss(online(obs).max(1).values, holder["td_target"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()
    model = nn.ModuleDict({"online": online, "target": target})
    setup = Setup(model, target, optimizer, step, (obs, reward))
    setup.holder = holder
    return setup


def ema_skips_buffers(mistake: bool) -> Setup:
    """An EMA update writes the weights and BatchNorm's running statistics (mistake: the buffers
    are skipped)."""
    student = classifier(bn=True)
    ema = copy.deepcopy(student).requires_grad_(False)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    train = supervised(student, optimizer, *BATCH)

    def update():
        with torch.no_grad():
            for e, s in zip(ema.parameters(), student.parameters()):
                e.lerp_(s, 0.1)
            if not mistake:
                for e, s in zip(ema.buffers(), student.buffers()):
                    e.copy_(s)
    train()  # the student's statistics have moved: the update must carry them

    return Setup(ema, ema, optimizer, update, BATCH)


def nan_from_learning_rate(mistake: bool) -> Setup:
    """Three steps that keep every parameter finite (mistake: a learning rate so large that the
    logits overflow and the next gradients are NaN)."""
    model = classifier()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e30 if mistake else 0.1)
    one = supervised(model, optimizer, *BATCH)

    def steps():
        for _ in range(3):
            one()
    return Setup(model, model, optimizer, steps, BATCH, F.cross_entropy)


def nan_in_batchnorm_buffer(mistake: bool) -> Setup:
    """A model whose state is finite (mistake: a NaN in BatchNorm's running variance, which no
    parameter shows, from a batch with a NaN seen at some step)."""
    model = classifier(bn=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    if mistake:
        model[0][1].running_var[3] = float("nan")
    return Setup(model, model, optimizer, supervised(model, optimizer, *BATCH), BATCH,
                 F.cross_entropy)


def evaluation_in_train_mode(mistake: bool) -> Setup:
    """An evaluation under no_grad in eval mode (mistake: no eval(): BatchNorm learns the
    validation batch)."""
    model = classifier(bn=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    def evaluate():
        if not mistake:
            model.eval()
        with torch.no_grad():
            accuracy = (model(BATCH[0]).argmax(1) == BATCH[1]).float().mean().item()
        model.train()
        return accuracy
    return Setup(model, model, optimizer, evaluate, BATCH)


def evaluation_leaves_eval_mode(mistake: bool) -> Setup:
    """An evaluation gives the model its train mode back (mistake: model.eval() never undone)."""
    model = classifier(dropout=0.5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    def evaluate():
        model.eval()
        with torch.no_grad():
            accuracy = (model(BATCH[0]).argmax(1) == BATCH[1]).float().mean().item()
        if not mistake:
            model.train()
        return accuracy
    return Setup(model, model, optimizer, evaluate, BATCH)


def inner_grad_without_create_graph(mistake: bool) -> Setup:
    """A MAML inner step keeps the graph (mistake: autograd.grad without create_graph)."""
    torch.manual_seed(0)
    model = nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(10, 1), torch.randn(10, 1)
    holder = {}

    def step():
        loss = F.mse_loss(model(x), y)
        holder["inner_grads"] = torch.autograd.grad(loss, list(model.parameters()),
                                                    create_graph=not mistake)
        return loss.detach()
    setup = Setup(model, model, optimizer, step, (x, y))
    setup.holder = holder
    return setup


def logged_loss_keeps_graph(mistake: bool) -> Setup:
    """The logged loss is a number (mistake: `running += loss`, which keeps every graph)."""
    model = classifier()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    base = supervised(model, optimizer, *BATCH)
    log = {"running": 0.0}

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(BATCH[0]), BATCH[1])
        loss.backward()
        optimizer.step()
        log["running"] = log["running"] + (loss if mistake else loss.item())
    del base
    return Setup(model, model, optimizer, step, BATCH)


def dead_layer(mistake: bool) -> Setup:
    """Every layer meant to train gets a grad (mistake: a layer whose output is .detach()ed in the
    forward, so it never learns)."""
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 3)

        def forward(self, x):
            h = torch.relu(self.a(x))
            return self.b(h.detach() if mistake else h)
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return Setup(model, model.a, optimizer, supervised(model, optimizer, *BATCH), BATCH,
                 F.cross_entropy)


def target_is_online(mistake: bool) -> Setup:
    """The target network is a copy (mistake: the online network under a second name)."""
    torch.manual_seed(0)
    online = nn.Linear(4, 2)
    target = online if mistake else copy.deepcopy(online).requires_grad_(False)
    optimizer = torch.optim.SGD(online.parameters(), lr=0.1)
    obs = torch.randn(16, 4)

    def step():
        with torch.no_grad():
            goal = target(obs).max(1).values + 1.0
        loss = F.mse_loss(online(obs).max(1).values, goal)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model = nn.ModuleDict({"online": online})
    setup = Setup(model, target, optimizer, step, (obs, obs))
    setup.online = online
    return setup


PAIRS: dict[str, Callable[[bool], Setup]] = {
    "frozen backbone": frozen_backbone,
    "frozen BatchNorm left in train mode": frozen_bn_in_train_mode,
    "frozen part in AdamW with a stale zero grad": frozen_in_adamw,
    "head missing from the optimizer": head_not_in_optimizer,
    "GAN D step without detach": gan_d_step,
    "TD target with grad": td_target_with_grad,
    "EMA skips the buffers": ema_skips_buffers,
    "NaN from the learning rate": nan_from_learning_rate,
    "NaN in a BatchNorm buffer": nan_in_batchnorm_buffer,
    "evaluation in train mode": evaluation_in_train_mode,
    "evaluation leaves eval mode": evaluation_leaves_eval_mode,
    "inner grad without create_graph": inner_grad_without_create_graph,
    "logged loss keeps its graph": logged_loss_keeps_graph,
    "a layer detached in the forward": dead_layer,
    "target network is the online one": target_is_online,
}


# --- each tool's natural way to state the pair's property ---------------------------------------

def gallery_check(name: str, s: Setup):
    if name in ("frozen backbone", "frozen BatchNorm left in train mode"):
        with check.frozen(backbone=s.part):
            s.step()
    elif name == "frozen part in AdamW with a stale zero grad":
        with check.optimizer_covers(s.optimizer, model=s.model):
            s.step()
    elif name == "head missing from the optimizer":
        check.optimizer_covers(s.optimizer, model=s.model)
    elif name == "GAN D step without detach":
        with check.no_grad_reaches(generator=s.part):
            s.step()
    elif name == "TD target with grad":
        s.step()
        check.constant(td_target=s.holder["td_target"])
    elif name == "EMA skips the buffers":
        with check.updated(ema=s.part):
            s.step()
    elif name.startswith("NaN"):
        with check.finite(model=s.model):
            s.step()
    elif name == "evaluation in train mode":
        with check.unchanged(model=s.model):
            s.step()
    elif name == "evaluation leaves eval mode":
        with check.modes_restored(model=s.model):
            s.step()
    elif name == "inner grad without create_graph":
        s.step()
        check.has_graph(inner_grads=s.holder["inner_grads"])
    elif name == "logged loss keeps its graph":
        check.bounded_memory(s.step, steps=4)
    elif name == "a layer detached in the forward":
        with check.gets_grad(model=s.model):
            s.step()
    elif name == "target network is the online one":
        check.disjoint(online=s.online, target=s.part)
    else:
        return CANNOT


def pytest_torch(name: str, s: Setup):
    from pytest_torch import training, training_loop
    from pytest_torch.assertions import assert_finite

    x, y = s.batch[0], s.batch[-1]

    def loss_fn(output):  # its API: the model is called on the inputs, the loss takes the output
        return s.loss_fn(output, y)
    if name == "GAN D step without detach":  # G frozen through a D step: its assert_frozen

        class DStep(nn.Module):  # its API wants a model and a loss of the model's output
            def __init__(self):
                super().__init__()
                self.g, self.d = s.model["g"], s.model["d"]

            def forward(self, z):
                fake = self.g(z)
                fake = fake if "no-detach" in mode else fake.detach()
                return (F.softplus(-self.d(real)) + F.softplus(self.d(fake))).mean()
        z, real = s.batch
        mode = "no-detach" if s.mistake else ""
        training.assert_frozen(DStep(), z, lambda loss: loss, ["g.*"], steps=1)
    elif name in ("frozen backbone", "frozen BatchNorm left in train mode"):
        # it trains a deep copy with its own AdamW over every parameter: its own step, not ours
        training.assert_frozen(s.model, x, loss_fn, ["0.*"], steps=2)
    elif name == "frozen part in AdamW with a stale zero grad":
        training.assert_frozen(s.model, x, loss_fn, ["0.*"], steps=1,
                               optimizer=lambda params: torch.optim.AdamW(params,
                                                                          weight_decay=0.1))
    elif name == "head missing from the optimizer":
        training_loop.assert_optimizer_coverage(s.model, s.optimizer)
    elif name.startswith("NaN"):
        s.step()
        assert_finite(dict(s.model.state_dict()), "state")
    elif name == "a layer detached in the forward":
        training.assert_all_params_receive_grad(s.model, x, loss_fn)
    else:
        return CANNOT


def torcheck_check(name: str, s: Setup):
    from torcheck.registry import Registry

    registry = Registry()
    if name in ("frozen backbone", "frozen BatchNorm left in train mode",
                "frozen part in AdamW with a stale zero grad"):
        registry.register(s.optimizer)  # it refuses a module none of whose tensors it holds
        registry.add_module_unchanging_check(s.part, module_name="backbone")
    elif name == "head missing from the optimizer":
        registry.register(s.optimizer)
        registry.add_module_changing_check(s.model, module_name="model")  # raises: not held
    elif name == "a layer detached in the forward":
        registry.register(s.optimizer)
        registry.add_module_changing_check(s.part, module_name="layer")
    elif name.startswith("NaN"):
        registry.register(s.optimizer)
        registry.add_module_nan_check(s.model, module_name="model")
        registry.add_module_inf_check(s.model, module_name="model")
    elif name == "GAN D step without detach":
        return CANNOT  # it watches values an optimizer changed, not where grads go
    else:
        return CANNOT
    s.step()


def tinytorchtest_check(name: str, s: Setup):
    import tinytorchtest.tinytorchtest as ttt

    if s.loss_fn is None:
        return CANNOT  # it runs its own supervised step of (model, loss_fn, batch)
    if name in ("frozen backbone", "frozen BatchNorm left in train mode",
                "frozen part in AdamW with a stale zero grad"):
        ttt.assert_vars_same(s.model, s.loss_fn, s.optimizer, list(s.batch), "cpu",
                             params=list(s.part.named_parameters()))
    elif name == "a layer detached in the forward":
        ttt.assert_vars_change(s.model, s.loss_fn, s.optimizer, list(s.batch), "cpu",
                               params=list(s.part.named_parameters()))
    elif name == "NaN from the learning rate":
        s.step()
        for p in s.model.parameters():
            ttt.assert_never_nan(p)
    elif name == "NaN in a BatchNorm buffer":
        s.step()
        for p in s.model.parameters():  # its NaN test takes what you hand it: the parameters
            ttt.assert_never_nan(p)
    else:
        return CANNOT


ADAPTERS = {"gallery.check": gallery_check, "pytest-torch": pytest_torch,
            "torcheck": torcheck_check, "tinytorchtest": tinytorchtest_check}


def fails(adapter, name: str, mistake: bool):
    """True when the tool's check fails the step, False when it passes, CANNOT when it cannot
    say."""
    setup = PAIRS[name](mistake)
    setup.mistake = mistake  # for an adapter that must rebuild the step in its own API
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            answer = adapter(name, setup)
    except Exception:  # the tool's own failure: AssertionError, RuntimeError, ValueError, ...
        return True
    return CANNOT if answer is CANNOT else False


def verdict(adapter, name: str) -> str:
    correct, wrong = fails(adapter, name, False), fails(adapter, name, True)
    if correct is CANNOT or wrong is CANNOT:
        return "cannot express"
    if correct:
        return "false alarm"
    return "right" if wrong else "miss"


TIMED = "a layer detached in the forward"  # a pair every tool judges, and judges right


def overheads(alternate, device) -> dict:
    """Each tool's check on the timed pair's correct step (built fresh, then judged), over the
    same step built fresh and run plain."""
    def timed(tool):
        return lambda: fails(ADAPTERS[tool], TIMED, False)
    plain = lambda: PAIRS[TIMED](False).step()  # noqa: E731
    seconds = alternate({"plain": plain, **{tool: timed(tool) for tool in TOOLS}}, 9, 20, device)
    return {f"{tool}_step_ratio": seconds[tool] / seconds["plain"] for tool in TOOLS}


def bench_check_peers(device: torch.device, alternate) -> list[dict]:
    deps = peer_path("check-peers", PEERS)
    if deps is None:
        return [{"setting": "check peers", "skipped": "the peers would not install"}]
    sys.path.insert(0, str(deps))
    torch.set_num_threads(1)
    rows = []
    for name in PAIRS:
        row = {"pair": name, **{tool: verdict(ADAPTERS[tool], name) for tool in TOOLS}}
        rows.append(row)
        print(f"  {row}", flush=True)
    right = {tool: sum(r[tool] == "right" for r in rows) for tool in TOOLS}
    express = {tool: sum(r[tool] != "cannot express" for r in rows) for tool in TOOLS}
    summary = {"setting": f"check peers: {len(PAIRS)} correct-vs-mistake step pairs, each judged "
                          f"by each tool's natural API (torcheck 1.0.1, tinytorchtest 1.2.3, "
                          f"pytest-torch 1.1.1); 1 thread",
               "pairs": len(PAIRS),
               **{f"{tool}_expresses": express[tool] for tool in TOOLS},
               **{f"{tool}_right": right[tool] for tool in TOOLS},
               **overheads(alternate, device)}
    return [summary, *rows]
