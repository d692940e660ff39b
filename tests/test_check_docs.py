"""The examples on docs/check.md ("Check your own training step"), run as tests. Each is written
the way a user writes their own step, with no gallery import but gallery.check; the page includes
them from this file by their snippet markers, and shows each mistake's message as these tests
produce it (docs/gen/pages.py runs `FAILING`)."""

# --8<-- [start:gan]
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gallery.check import (
    bounded_memory,
    constant,
    disjoint,
    has_graph,
    modes_restored,
    no_grad_reaches,
    runs_in_eval_mode,
    unchanged,
)


def gan_iteration(g, d, opt_g, opt_d, real, z, detach=True):
    fake = g(z)
    opt_d.zero_grad(set_to_none=True)
    fake_for_d = fake.detach() if detach else fake  # the cut under test
    d_loss = (F.softplus(-d(real)) + F.softplus(d(fake_for_d))).mean()
    d_loss.backward()
    opt_d.step()
    opt_g.zero_grad(set_to_none=True)
    F.softplus(-d(fake)).mean().backward()
    opt_g.step()


def gan_setup():
    torch.manual_seed(0)
    g = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 2))
    d = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 1))
    return g, d, torch.optim.Adam(g.parameters()), torch.optim.Adam(d.parameters())


def test_my_d_step_does_not_train_g():
    g, d, opt_g, opt_d = gan_setup()
    with no_grad_reaches(generator=g, before=opt_d):  # only what runs before opt_d.step()
        gan_iteration(g, d, opt_g, opt_d, torch.randn(16, 2), torch.randn(16, 8))


def test_my_gan_loop_never_trains_g_in_a_d_step(gallery_check):  # the fixture is gallery.check
    g, d, opt_g, opt_d = gan_setup()
    with gallery_check.no_grad_reaches(generator=g, before=opt_d):  # every D step in the block
        for _ in range(3):
            gan_iteration(g, d, opt_g, opt_d, torch.randn(16, 2), torch.randn(16, 8))


def gan_without_detach():
    g, d, opt_g, opt_d = gan_setup()
    with no_grad_reaches(generator=g, before=opt_d):
        gan_iteration(g, d, opt_g, opt_d, torch.randn(16, 2), torch.randn(16, 8), detach=False)
# --8<-- [end:gan]


# --8<-- [start:dqn]
def dqn_update(online, target, optimizer, batch, gamma=0.99, use_no_grad=True):
    with torch.set_grad_enabled(not use_no_grad):  # the cut under test
        next_q = target(batch["next_obs"]).max(1).values
        td_target = batch["reward"] + gamma * (1 - batch["done"]) * next_q
    constant(td_target=td_target)  # a regression target is a constant
    q = online(batch["obs"]).gather(1, batch["action"][:, None]).squeeze(1)
    loss = F.smooth_l1_loss(q, td_target)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def dqn_setup(freeze_target=True):
    torch.manual_seed(0)
    online = nn.Sequential(nn.Linear(4, 64), nn.ReLU(), nn.Linear(64, 2))
    target = nn.Sequential(nn.Linear(4, 64), nn.ReLU(), nn.Linear(64, 2))
    target.load_state_dict(online.state_dict())
    target.requires_grad_(not freeze_target)
    batch = {"obs": torch.randn(32, 4), "next_obs": torch.randn(32, 4),
             "action": torch.randint(2, (32,)), "reward": torch.randn(32), "done": torch.zeros(32)}
    return online, target, torch.optim.Adam(online.parameters(), lr=1e-3), batch


def test_my_dqn_update_leaves_the_target_alone():
    online, target, optimizer, batch = dqn_setup()
    with unchanged(target=target), no_grad_reaches(target=target):
        for _ in range(3):
            dqn_update(online, target, optimizer, batch)


def dqn_target_with_grad():
    online, target, optimizer, batch = dqn_setup(freeze_target=False)
    dqn_update(online, target, optimizer, batch, use_no_grad=False)
# --8<-- [end:dqn]


# --8<-- [start:tbptt]
def tbptt_loop(chunks=6, detach=True, carry_graph=False):
    torch.manual_seed(0)
    rnn, head = nn.GRU(8, 32, batch_first=True), nn.Linear(32, 8)
    optimizer = torch.optim.Adam([*rnn.parameters(), *head.parameters()], lr=1e-3)
    stream = torch.randn(4, 16 * chunks + 1, 8)
    hidden, i = None, 0

    def chunk():
        nonlocal hidden, i
        x, y = stream[:, i:i + 16], stream[:, i + 1:i + 17]
        i += 16
        out, hidden = rnn(x, hidden)
        loss = F.mse_loss(head(out), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward(retain_graph=carry_graph)
        if not carry_graph:
            optimizer.step()
        if detach:
            hidden = hidden.detach()  # the cut under test

    return chunk


def test_my_tbptt_loop_holds_no_more_memory_chunk_after_chunk():
    bounded_memory(tbptt_loop(), steps=5)


def tbptt_without_detach():
    # the "fix" people reach for when backward complains about a freed graph
    bounded_memory(tbptt_loop(detach=False, carry_graph=True), steps=5)
# --8<-- [end:tbptt]


# --8<-- [start:loop]
def training_loop(keep_the_loss=False):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    log = {"running_loss": 0.0}

    def iteration():
        x, y = torch.randn(32, 16), torch.randn(32, 1)
        loss = F.mse_loss(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        log["running_loss"] += loss if keep_the_loss else loss.item()  # the line under test

    return iteration


def test_my_loss_log_keeps_no_graph():
    bounded_memory(training_loop(), steps=5)


def loss_log_keeps_every_graph():
    # backward runs every iteration, so no byte stays saved for it; the nodes stay all the same
    bounded_memory(training_loop(keep_the_loss=True), steps=5)
# --8<-- [end:loop]


# --8<-- [start:maml]
def inner_step(model, x, y, lr=0.01, second_order=True):
    params = dict(model.named_parameters())
    loss = F.mse_loss(torch.func.functional_call(model, params, (x,)), y)
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=second_order)
    has_graph(inner_grads=grads)  # the meta-gradient flows through these
    return {name: p - lr * g for (name, p), g in zip(params.items(), grads)}


def test_my_inner_step_keeps_the_graph():
    torch.manual_seed(0)
    inner_step(nn.Linear(1, 1), torch.randn(10, 1), torch.randn(10, 1))


def inner_step_without_create_graph():
    torch.manual_seed(0)
    inner_step(nn.Linear(1, 1), torch.randn(10, 1), torch.randn(10, 1), second_order=False)
# --8<-- [end:maml]


# --8<-- [start:alias]
def make_target(online, copy_it=True):
    import copy

    target = copy.deepcopy(online) if copy_it else online  # the line under test
    return target.requires_grad_(False) if copy_it else target


def test_my_target_is_a_separate_network():
    online = nn.Sequential(nn.Linear(4, 64), nn.ReLU(), nn.Linear(64, 2))
    disjoint(online=online, target=make_target(online))


def target_is_the_online_net():
    online = nn.Sequential(nn.Linear(4, 64), nn.ReLU(), nn.Linear(64, 2))
    disjoint(online=online, target=make_target(online, copy_it=False))
# --8<-- [end:alias]


# --8<-- [start:evaluation]
def my_evaluate(model, x, y, restore=True):
    was_training = model.training
    model.eval()
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    if restore:  # the line under test
        model.train(was_training)
    return accuracy


def eval_setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2),
                          nn.Linear(16, 3))
    return model, torch.randn(32, 4), torch.randint(3, (32,))


def test_my_evaluation_changes_nothing_and_gives_the_mode_back():
    model, x, y = eval_setup()
    with modes_restored(model=model), runs_in_eval_mode(model=model), unchanged(model=model):
        constant(accuracy=my_evaluate(model, x, y))


def evaluation_leaves_eval_mode():
    model, x, y = eval_setup()
    with modes_restored(model=model):
        my_evaluate(model, x, y, restore=False)
# --8<-- [end:evaluation]


FAILING = {"gan": gan_without_detach, "dqn": dqn_target_with_grad, "tbptt": tbptt_without_detach,
           "loop": loss_log_keeps_every_graph, "maml": inner_step_without_create_graph,
           "alias": target_is_the_online_net, "evaluation": evaluation_leaves_eval_mode}


@pytest.mark.parametrize("name,start", [
    ("gan", "no_grad_reaches: a backward before Adam.step() wrote a grad into generator"),
    ("dqn", "constant: td_target (grad_fn="),
    ("tbptt", "bounded_memory: the bytes held for backward grew"),
    ("loop", "bounded_memory: the autograd nodes kept alive grew"),
    ("maml", "has_graph: inner_grads[0], inner_grads[1] carry no graph"),
    ("alias", "disjoint: online and target share 4 tensors"),
    ("evaluation", "modes_restored: the block did not give back the modes it found (model: 1 "
                   "(BatchNorm1d) train -> eval, 3 (Dropout) train -> eval"),
])
def test_each_example_fails_on_its_mistake(name, start):
    with pytest.raises(AssertionError) as caught:
        FAILING[name]()
    assert str(caught.value).startswith(start)
