"""gallery.check, the public checks: each one passes on the pattern and fails, with its sentence, on
the mistake it guards. The table at the bottom holds every mistake of every example to a check
that catches it (or to a stated reason why none can), so a new mistake needs one or the other."""

from __future__ import annotations

import copy
import importlib
import re
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gallery import check
from gallery.check import (
    NothingToCheck,
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
from gallery.core.registry import examples
from tests.conftest import ROOT

# --- each check on its own --------------------------------------------------------------------


def test_no_grad_reaches_names_the_module_and_its_parameters():
    torch.manual_seed(0)
    g, d = nn.Linear(2, 2), nn.Linear(2, 1)
    with no_grad_reaches(generator=g):
        d(g(torch.randn(4, 2)).detach()).sum().backward()
    with pytest.raises(AssertionError, match=r"^no_grad_reaches: a backward wrote a grad into "
                                             r"generator \(bias, weight\)"):
        with no_grad_reaches(generator=g):
            d(g(torch.randn(4, 2))).sum().backward()


def test_no_grad_reaches_before_an_optimizer_step_ignores_the_backwards_after_it():
    g, d = nn.Linear(2, 2), nn.Linear(2, 1)
    opt_d = torch.optim.SGD(d.parameters(), lr=0.1)
    with no_grad_reaches(g, before=opt_d):
        fake = g(torch.randn(4, 2))
        d(fake.detach()).sum().backward()
        opt_d.step()
        d(fake).sum().backward()  # the G step: allowed once opt_d has stepped
    with pytest.raises(AssertionError, match=r"before SGD.step\(\) wrote a grad into Linear"):
        with no_grad_reaches(g, before=opt_d):
            d(g(torch.randn(4, 2))).sum().backward()
            opt_d.step()


def test_no_grad_reaches_judges_a_block_that_raised_and_chains_the_error():
    g = nn.Linear(2, 2)
    with pytest.raises(AssertionError) as caught:
        with no_grad_reaches(g=g):
            g(torch.randn(3, 2)).sum().backward()
            raise RuntimeError("later")
    assert isinstance(caught.value.__cause__, RuntimeError)
    with pytest.raises(RuntimeError, match="later"), no_grad_reaches(g=g):
        raise RuntimeError("later")


def test_gets_grad_fails_on_a_module_the_loss_does_not_reach():
    critic = nn.Linear(3, 1)
    with gets_grad(critic=critic):
        critic(torch.randn(4, 3)).pow(2).mean().backward()
    value = critic(torch.randn(4, 3)).mean().item()  # a float: no graph back to the critic
    with pytest.raises(AssertionError, match=r"^gets_grad: no backward inside the block wrote a "
                                             r"non-zero grad into critic \(weight, bias\)"):
        with gets_grad(critic=critic):
            loss = (torch.tensor(value, requires_grad=True) - 1.0).pow(2)
            loss.backward()


def test_gets_grad_skips_frozen_parameters_and_raises_when_none_is_left():
    """A bias frozen by design (SimSiam's reference freezes one) is not a failure; a module with
    nothing trainable leaves the check nothing to judge, and that is an error, not a pass."""
    net = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    net[1].bias.requires_grad_(False)
    with gets_grad(encoder=net):
        net(torch.randn(5, 3)).pow(2).mean().backward()
    net.requires_grad_(False)
    with pytest.raises(ValueError, match=r"^gets_grad: encoder has nothing to check \(all 4 of its "
                                         r"parameters have requires_grad=False\)"):
        gets_grad(encoder=net)
    with pytest.raises(ValueError, match=r"BatchNorm1d has nothing to check \(ignore=\['weight', "
                                         r"'bias'\] leaves out all 2"):
        gets_grad(nn.BatchNorm1d(3), ignore=["weight", "bias"])
    with pytest.raises(ValueError, match=r"codebook has nothing to check \(it has no parameters, "
                                         r"only 1 buffers"):
        holder = nn.Module()
        holder.register_buffer("embed", torch.randn(4, 2))  # an EMA codebook: buffers only
        gets_grad(codebook=holder)


def test_gets_grad_with_a_loss_tells_which_loss_reaches_the_module():
    """An autoencoder whose decoder reads a constant (no straight-through) still trains its encoder
    through a second loss: the block form passes, the loss form names the loss that does not."""
    torch.manual_seed(0)
    encoder, decoder = nn.Linear(4, 4), nn.Linear(4, 4)
    x = torch.randn(8, 4)
    z = encoder(x)
    recon = (decoder(z.detach().round()) - x).pow(2).mean()  # the straight-through path is gone
    commitment = z.pow(2).mean()
    with gets_grad(encoder=encoder):
        (recon + commitment).backward(retain_graph=True)
    gets_grad(encoder=encoder, loss=commitment)
    with pytest.raises(AssertionError, match=r"^gets_grad: the loss \(MeanBackward0\) gives no "
                                             r"non-zero grad to encoder \(weight, bias\)"):
        gets_grad(encoder=encoder, loss=recon)
    grads_before = encoder.weight.grad.clone()
    gets_grad(decoder=decoder, loss=recon)  # autograd.grad: .grad is left as it was
    assert torch.equal(encoder.weight.grad, grads_before)
    with pytest.raises(AssertionError, match=r"the loss carries no graph"):
        gets_grad(encoder=encoder, loss=recon.detach())


def test_unchanged_names_a_batchnorm_buffer_that_moved():
    net = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3)).eval()
    with unchanged(backbone=net):
        net(torch.randn(8, 3))
    net.train()
    with pytest.raises(AssertionError, match=r"changed backbone \(1.num_batches_tracked "
                                             r"\(buffer\), 1.running_mean \(buffer\)"):
        with unchanged(backbone=net):
            net(torch.randn(8, 3))
    with unchanged(net, buffers=False):  # parameters only
        net(torch.randn(8, 3))


def test_constant_looks_into_tuples_and_dicts():
    w = torch.ones(2, requires_grad=True)
    constant(target=w.detach() * 2, state=(torch.zeros(2), torch.ones(2)),
             batch={"r": torch.ones(1)})
    with pytest.raises(AssertionError, match=r"^constant: state\[1\] \(grad_fn=MulBackward0\) "
                                             r"carries a graph"):
        constant(state=(torch.zeros(2), w * 2))
    with pytest.raises(AssertionError, match=r"tensor 0 \(requires_grad=True\)"):
        constant(w)
    # a Python number is data (a metric taken with .item()); strings and None are skipped
    constant(metrics={"loss": 0.25, "accuracy": 1, "split": "val", "note": None})
    constant(batch={"group": 4, "obs": torch.ones(2)})
    with pytest.raises(ValueError, match=r"^constant: x holds no tensor or number \(NoneType\)"):
        constant(x=None)
    with pytest.raises(ValueError, match=r"^constant: batch holds no tensor or number"):
        constant(batch={"split": "val"})
    with pytest.raises(AssertionError, match=r"^has_graph: x carries no graph"):
        has_graph(x=3.0)


def test_bounded_memory_sees_a_running_sum_of_losses_grow_and_item_stay_flat():
    net = nn.Linear(16, 16)
    x = torch.randn(32, 16)
    totals = {"graph": torch.zeros(()), "float": 0.0}

    def accumulate_graph():
        totals["graph"] = totals["graph"] + net(x).pow(2).mean()  # the classic: total_loss += loss

    def accumulate_float():
        loss = net(x).pow(2).mean()
        loss.backward()
        totals["float"] += loss.item()

    held = bounded_memory(accumulate_float, steps=4)
    assert held == [0, 0, 0, 0]
    with pytest.raises(AssertionError, match=r"^bounded_memory: the bytes held for backward grew "
                                             r"from [\d,]+ to [\d,]+ over 4 calls of "
                                             r"accumulate_graph"):
        bounded_memory(accumulate_graph, steps=5)


def test_bounded_memory_sees_the_training_loop_leak_where_backward_runs_every_time():
    """The most asked leak: every iteration runs backward (which frees the saved tensors), and the
    log keeps the loss itself. No byte stays held for backward, but each kept loss keeps its chain
    of autograd nodes alive; the check counts those nodes and fails by them."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 1))
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    x, y = torch.randn(32, 16), torch.randn(32, 1)
    log = {"running": 0.0, "losses": []}

    def iteration(keep):
        loss = F.mse_loss(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        keep(loss)

    def running_loss_plus_loss():
        iteration(lambda loss: log.__setitem__("running", log["running"] + loss))

    def losses_append_loss():
        iteration(log["losses"].append)

    def running_loss_plus_item():
        iteration(lambda loss: log.__setitem__("running", log["running"] + loss.item()))

    held = bounded_memory(running_loss_plus_item, steps=5)
    assert list(held) == [0] * 5 and held.graph_nodes[0] == held.graph_nodes[1]
    for leak in (running_loss_plus_loss, losses_append_loss):
        with pytest.raises(AssertionError, match=r"^bounded_memory: the autograd nodes kept alive "
                                                 r"grew from [\d,]+ to [\d,]+ over 4 calls of "
                                                 + leak.__name__ + r" \(about \d+ per call"):
            bounded_memory(leak, steps=5)
    log["losses"].clear()


def test_bounded_memory_nodes_grow_by_the_same_count_every_iteration():
    """The consequence, measured: each kept loss holds the same number of nodes after its backward
    (a deterministic count), so the leak is linear in the iterations run."""
    net = nn.Linear(4, 1)
    kept = []

    def step():
        loss = net(torch.randn(2, 4)).pow(2).mean()
        loss.backward()
        kept.append(loss)

    with pytest.raises(AssertionError, match=r"about 4 per call"):
        bounded_memory(step, steps=6)
    assert len(kept) == 6 and all(loss.grad_fn is not None for loss in kept)
    kept.clear()


def test_no_grad_reaches_with_nothing_to_judge_raises():
    g, d = nn.Linear(2, 2), nn.Linear(2, 1)
    opt_d = torch.optim.SGD(d.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"^no_grad_reaches: before=SGD never stepped inside the "
                                         r"block"):
        with no_grad_reaches(generator=g, before=opt_d):
            d(g(torch.randn(4, 2)).detach()).sum().backward()
    with pytest.raises(ValueError, match=r"^no_grad_reaches: ReLU has nothing to check \(it has no "
                                         r"parameters\)"):
        no_grad_reaches(nn.ReLU()).__enter__()
    frozen = nn.Linear(2, 2).requires_grad_(False)  # a frozen target: nothing can reach it
    with no_grad_reaches(target=frozen):
        frozen(torch.randn(3, 2, requires_grad=True)).sum().backward()


def test_no_grad_reaches_names_an_alias_instead_of_advising_detach():
    """`target = online`: the target's grad is written by the online loss, and the optimizer that
    trains online holds it. The advice is then about the alias, not about a missing detach."""
    online = nn.Linear(3, 2)
    target = online  # the mistake
    optimizer = torch.optim.SGD(online.parameters(), lr=0.1)
    with pytest.raises(AssertionError, match=r"SGD.step\(\) trains those very parameters: .* "
                                             r"gallery.check.disjoint"):
        with no_grad_reaches(target=target):
            online(torch.randn(4, 3)).sum().backward()
            optimizer.step()


def test_disjoint_names_the_shared_tensors():
    online = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    disjoint(target=copy.deepcopy(online), online=online)
    with pytest.raises(AssertionError, match=r"^disjoint: online and target share 7 tensors "
                                             r"\(0.weight, 0.bias, 1.weight and 4 more\): they are "
                                             r"one network under two names"):
        disjoint(online=online, target=online)
    half = nn.Sequential(online[0], nn.Linear(3, 3))  # a shared first layer is named by both names
    with pytest.raises(AssertionError, match=r"share 2 tensors \(0.weight, 0.bias\)"):
        disjoint(online=online, other=half)
    with pytest.raises(ValueError, match="name at least two modules"):
        disjoint(online=online)


def mode_model() -> nn.Module:
    """A backbone kept in eval by design (its BatchNorm frozen) under a head with dropout."""
    model = nn.Sequential()
    model.backbone = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8))
    model.head = nn.Sequential(nn.Dropout(0.5), nn.Linear(8, 2))
    model.backbone.eval()
    return model


def test_modes_restored_wants_each_modules_own_flag_back_even_when_the_block_raises():
    model = mode_model()
    with modes_restored(model=model):
        modes = {m: m.training for m in model.modules()}
        model.eval()
        for m, mode in modes.items():
            m.train(mode)
    with pytest.raises(AssertionError, match=r"^modes_restored: the block did not give back the "
                                             r"modes it found \(model: head.0 \(Dropout\) "
                                             r"train -> eval"):
        with modes_restored(model=model):
            model.eval()  # never undone
    model.train()  # a plain train() afterwards puts the frozen backbone's BatchNorm in train
    model.backbone.eval()
    with pytest.raises(AssertionError, match=r"backbone.1 \(BatchNorm1d\) eval -> train"):
        with modes_restored(model=model):
            model.eval()
            model.train()
    model.backbone.eval()
    with pytest.raises(AssertionError, match="modes_restored") as caught:
        with modes_restored(model=model):
            model.eval()
            raise RuntimeError("mid-evaluation")  # the mode is left behind on the error
    assert isinstance(caught.value.__cause__, RuntimeError)


def test_runs_in_train_mode_sees_dropout_off_and_leaves_out_a_backbone_by_name():
    model = mode_model()
    x = torch.randn(4, 4)
    with runs_in_train_mode(model=model, ignore=["backbone"]):
        model(x)
    with pytest.raises(AssertionError, match=r"^runs_in_train_mode: model: backbone.1 "
                                             r"\(BatchNorm1d\)"):
        with runs_in_train_mode(model=model):
            model(x)
    model.head.eval()  # what an evaluation that never restored the mode leaves behind
    with pytest.raises(AssertionError, match=r"^runs_in_train_mode: model: backbone.1 "
                                             r"\(BatchNorm1d\), head.0 \(Dropout\)"):
        with runs_in_train_mode(model=model):
            model(x)
    with pytest.raises(ValueError, match=r"^runs_in_train_mode: model never ran a forward"):
        with runs_in_train_mode(model=model):
            pass
    with pytest.raises(TypeError, match="has no train or eval mode"):
        with runs_in_train_mode(w=torch.ones(2)):
            pass


def test_runs_in_eval_mode_sees_batchnorm_learning_from_an_evaluation():
    model = mode_model()
    with runs_in_eval_mode(model=model), torch.no_grad():
        model.eval()
        model(torch.randn(4, 4))
    model.train()
    with pytest.raises(AssertionError, match=r"^runs_in_eval_mode: model: backbone.1 "
                                             r"\(BatchNorm1d\), head.0 \(Dropout\), .*ran in "
                                             r"train mode"):
        with runs_in_eval_mode(model=model), torch.no_grad():
            model(torch.randn(4, 4))


def test_finite_names_the_first_nan_and_the_step_it_appeared_after():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e30)  # a learning rate far too large
    finite(model=model)  # the immediate form
    with pytest.raises(AssertionError, match=r"^finite: model \(.+\) holds .* after optimizer "
                                             r"step \d in the block \(SGD.step\(\)\)"):
        with finite(model=model):
            for _ in range(5):
                optimizer.zero_grad()
                model(torch.randn(16, 4)).pow(2).mean().backward()
                optimizer.step()
    bn = nn.BatchNorm1d(3)  # a NaN only a buffer holds: named_parameters() never shows it
    bn.running_var[1] = float("nan")
    with pytest.raises(AssertionError, match=r"^finite: bn \(running_var \(buffer\)\) holds 1 "
                                             r"NaN of 3 when the check began"):
        finite(bn=bn)
    finite(bn=bn, ignore=["running_var"])
    w = torch.ones(2, requires_grad=True)
    (w * float("inf")).sum().backward()
    with pytest.raises(AssertionError, match=r"^finite: w \(w.grad\) holds 2 NaN or infinite"):
        finite(w=w)
    finite(w=w, grads=False)


def test_optimizer_covers_a_missing_head_and_a_frozen_part_with_a_stale_grad():
    torch.manual_seed(0)
    backbone, head = nn.Linear(4, 4), nn.Linear(4, 2)
    model = nn.Sequential(backbone, head)
    with pytest.raises(AssertionError, match=r"^optimizer_covers: Adam does not hold model "
                                             r"\(1.weight, 1.bias\), which require grad"):
        optimizer_covers(torch.optim.Adam(backbone.parameters()), model=model)
    optimizer = torch.optim.AdamW(model.parameters(), weight_decay=0.1)
    backbone.requires_grad_(False)

    def step():
        optimizer.zero_grad(set_to_none=False)  # a frozen grad stays a zero tensor, not None
        F.mse_loss(model(torch.randn(8, 4)), torch.zeros(8, 2)).backward()
        optimizer.step()

    with optimizer_covers(optimizer, model=model):  # a grad of None: AdamW leaves it alone
        step()
    backbone.weight.grad = torch.zeros_like(backbone.weight)  # a stale zero grad
    before = backbone.weight.detach().clone()
    with pytest.raises(AssertionError, match=r"^optimizer_covers: model \(0.weight\): frozen, yet "
                                             r"with a grad and in the optimizer"):
        optimizer_covers(optimizer, model=model)
    step()  # the consequence: weight decay moves the frozen weight
    assert (backbone.weight - before).abs().max() > 0
    with pytest.raises(TypeError, match="the first argument is the optimizer"):
        optimizer_covers(model, model=model)


def test_frozen_fails_on_a_grad_and_on_a_value_and_passes_a_frozen_teacher():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    student = nn.Linear(4, 2)
    x = torch.randn(16, 4)
    teacher.requires_grad_(False).eval()
    with frozen(teacher=teacher):
        with torch.no_grad():
            target = teacher(x)
        F.mse_loss(student(x), target).backward()
    teacher.train()  # BatchNorm learns from the batch: a value moves, no grad is written
    with pytest.raises(AssertionError, match=r"^frozen: the block changed teacher "
                                             r"\(1.num_batches_tracked"):
        with frozen(teacher=teacher), torch.no_grad():
            teacher(x)
    teacher.eval().requires_grad_(True)  # the teacher left trainable
    with pytest.raises(AssertionError, match=r"^frozen: a backward wrote a grad into "
                                             r"teacher"):
        with frozen(teacher=teacher):
            F.mse_loss(student(x), teacher(x)).backward()


def test_has_graph_reaches_tells_fast_weights_from_detached_copies():
    w = nn.Linear(2, 2)
    grads = torch.autograd.grad(w(torch.randn(3, 2)).sum(), list(w.parameters()),
                                create_graph=True)
    fast = [p - 0.1 * g for p, g in zip(w.parameters(), grads)]
    has_graph(fast=fast, reaches=w)
    detached = [f.detach().requires_grad_() for f in fast]  # requires grad, reaches nothing
    has_graph(fast=detached)  # without reaches= this passes: a leaf that requires grad
    with pytest.raises(AssertionError, match=r"^has_graph: fast\[0\], fast\[1\] carry a graph "
                                             r"that does not reach Linear"):
        has_graph(fast=detached, reaches=w)


def test_same_grad_as_holds_an_accumulated_step_to_the_full_batchs_gradient():
    torch.manual_seed(0)
    net = nn.Linear(3, 1)
    x, y = torch.randn(10, 3), torch.randn(10, 1)
    sizes = (2, 8)  # unequal micro-batches: where a mean of means goes wrong
    parts = list(zip(x.split(sizes), y.split(sizes)))

    def full_batch():
        F.mse_loss(net(x), y).backward()

    with same_grad_as(full_batch, net=net):  # each micro-batch's sum over the whole count
        for xb, yb in parts:
            (F.mse_loss(net(xb), yb, reduction="sum") / len(x)).backward()
    with pytest.raises(AssertionError, match=r"^same_grad_as: the block's gradient is [\d.]+ off "
                                             r"the reference step's"):
        with same_grad_as(full_batch, net=net):
            for xb, yb in parts:
                (F.mse_loss(net(xb), yb) / len(parts)).backward()
    with pytest.raises(ValueError, match="the reference step left no gradient"):
        with same_grad_as(lambda: None, net=net):
            pass


def test_a_check_handed_nothing_raises_value_error_which_is_also_a_type_error():
    assert issubclass(NothingToCheck, ValueError) and issubclass(NothingToCheck, TypeError)
    for immediate in (constant, has_graph, disjoint, finite, gets_grad):
        with pytest.raises(NothingToCheck, match="name at least one"):
            immediate()
    for block in (no_grad_reaches, unchanged, updated, modes_restored, runs_in_eval_mode, frozen,
                  lambda: same_grad_as(lambda: None)):
        with pytest.raises(ValueError, match="name at least one"), block():
            pass


def test_has_graph_sees_a_missing_create_graph():
    """MAML's inner gradient: with create_graph=True it carries the graph the meta-gradient needs;
    without it, autograd.grad returns constants and every other check passes."""
    w = torch.randn(3, requires_grad=True)
    inner_loss = (w * torch.randn(3)).pow(2).sum()
    (grad,) = torch.autograd.grad(inner_loss, w, create_graph=True)
    has_graph(inner_grad=grad, fast_weights=[w - 0.1 * grad])
    (cut,) = torch.autograd.grad((w * 2).pow(2).sum(), w)
    with pytest.raises(AssertionError, match=r"^has_graph: inner_grad carries no graph: .*"
                                             r"create_graph=True"):
        has_graph(inner_grad=cut)
    with pytest.raises(ValueError, match=r"^has_graph: grads holds no tensor"):
        has_graph(grads=[])
    with pytest.raises(ValueError, match=r"^constant: targets holds no tensor"):
        constant(targets=())


def test_unchanged_and_updated_take_one_tensor_and_leave_out_by_name():
    bn = nn.BatchNorm1d(3)
    with pytest.raises(AssertionError, match=r"^unchanged: the block changed running_mean: "):
        with unchanged(running_mean=bn.running_mean):
            bn(torch.randn(8, 3))
    with updated(bn.running_var, bn.running_mean):
        bn(torch.randn(8, 3))
    with unchanged(bn, ignore=["running_*", "num_batches_tracked"]):  # parameters only, by name
        bn(torch.randn(8, 3))
    net = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    with unchanged(net, ignore=["1"]):  # a prefix leaves a whole submodule out
        net(torch.randn(8, 3))
    with pytest.raises(ValueError, match=r"^updated: BatchNorm1d has nothing to check \(ignore="):
        updated(bn, ignore=["*"]).__enter__()


def test_updated_counts_in_place_writes_that_round_to_the_same_value():
    """A correct EMA at decay 0.9999 with weights that moved by less than float32 resolves; a
    parameter whose grad was zero; an integer counter and a constant buffer it copies: each is
    written, so each passes, though its value did not change."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    model[1].register_buffer("index", torch.arange(4))  # a constant table, copied by the EMA
    ema_model = copy.deepcopy(model).requires_grad_(False)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1e-9)  # below float32 resolution near 1: the EMA's value cannot move
    with updated(ema=ema_model):
        with torch.no_grad():
            for e, m in zip(ema_model.state_dict().values(), model.state_dict().values()):
                if e.is_floating_point():
                    e.lerp_(m, 1 - 0.9999)
                else:
                    e.copy_(m)
    assert torch.equal(ema_model[0].weight, copy.deepcopy(ema_model)[0].weight)


def test_updated_says_what_it_saw():
    """Parameters averaged and buffers skipped: the message says so (the classic EMA slip).
    Another part skipped: the message says it was not written, and does not blame buffers."""
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    ema_model = copy.deepcopy(model)
    with pytest.raises(AssertionError, match=r"^updated: the block left ema \(1.running_mean "
                                             r"\(buffer\), 1.running_var \(buffer\)\) as they "
                                             r"were: the parameters were written and these buffers "
                                             r"were not"):
        with updated(ema=ema_model), torch.no_grad():
            for e, m in zip(ema_model.parameters(), model.parameters()):
                e.lerp_(m, 0.1)
    with pytest.raises(AssertionError, match=r"left ema \(0.bias, 0.weight\) as they were: nothing "
                                             r"wrote them"):
        with updated(ema=ema_model), torch.no_grad():
            for name, e in ema_model.state_dict().items():
                if not name.startswith("0."):
                    e.copy_(model.state_dict()[name])
    with pytest.raises(ValueError, match=r"it has no parameters, and buffers=False leaves out its "
                                         r"1 buffers"):
        holder = nn.Module()
        holder.register_buffer("embed", torch.zeros(2))
        updated(holder, buffers=False).__enter__()


@pytest.mark.parametrize("failing", [
    lambda: constant(x=torch.ones(1, requires_grad=True)),
    lambda: has_graph(x=torch.ones(1)),
    lambda: disjoint(a=nn.Linear(1, 1), b=nn.Linear(1, 1)) or disjoint(a=(m := nn.Linear(1, 1)),
                                                                      b=m),
])
def test_every_message_points_at_a_docstring_a_user_can_open(failing):
    with pytest.raises(AssertionError) as caught:
        failing()
    name = str(caught.value).split(":")[0]
    assert str(caught.value).endswith(f"(see help(gallery.check.{name}))")
    assert len(getattr(check, name).__doc__) > 200


def test_check_imports_with_torch_alone():
    """Past what `import torch` loads, gallery.check brings in only the gallery's own modules (the
    probes it shares with the examples), none of Hydra, Gymnasium, matplotlib or the rest."""
    code = ("import sys, torch; before = set(sys.modules); import gallery.check; "
            "print(sorted({m.split('.')[0] for m in set(sys.modules) - before}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=ROOT)
    assert out.stdout.strip() == "['gallery']"


def test_the_pytest_plugin_loads_by_its_entry_point_in_another_project(tmp_path):
    """A project that is not this one: its test asks for the plugin's fixture, and pytest finds it
    through the pytest11 entry point (no conftest, no -p)."""
    (tmp_path / "test_mine.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn

        def test_target_is_left_alone(gallery_check):
            online, target = nn.Linear(2, 1), nn.Linear(2, 1).requires_grad_(False)
            with gallery_check.no_grad_reaches(target=target):
                online(torch.randn(3, 2)).sum().backward()

        def test_a_mistake_fails(gallery_check):
            net = nn.Linear(2, 1)
            try:
                with gallery_check.no_grad_reaches(target=net):
                    net(torch.randn(3, 2)).sum().backward()
            except AssertionError as err:
                assert "target" in str(err)
            else:
                raise AssertionError("the check did not fail")
        """))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "test_mine.py"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "2 passed" in proc.stdout


# --- the table: every mistake in the gallery is caught by a public check ----------------------



























# Each example's step under the checks is `check_step(mistake)` in its own test file, and each
# mistake names the check that catches it (`caught`, the sentence it fails with) or why none can
# (`no_check`) in its EXAMPLE: a new example brings its row with it.
EXAMPLES = examples()
RUNNERS = {name: getattr(importlib.import_module(f"tests.test_{name}"), "check_step", None)
           if (ROOT / "tests" / f"test_{name}.py").is_file() else None for name in EXAMPLES}
CAUGHT = {(name, key): m.caught for name, ex in EXAMPLES.items()
          for key, m in ex.mistakes.items() if m.caught}
NOT_A_CUT = {(name, key): m.no_check for name, ex in EXAMPLES.items()
             for key, m in ex.mistakes.items() if m.no_check}


def test_every_example_has_its_check_step_and_every_mistake_a_check_or_a_reason():
    missing = [f"tests/test_{name}.py has no check_step(mistake)"
               for name, runner in RUNNERS.items() if runner is None]
    for name, example in EXAMPLES.items():
        for key, mistake in example.mistakes.items():
            if bool(mistake.caught) == bool(mistake.no_check):
                missing.append(f"{name}: mistake {key} needs exactly one of caught= (the check's "
                               "sentence) or no_check= (why no check can)")
    assert not missing, "\n".join(missing)


@pytest.mark.parametrize("name", sorted(RUNNERS))
def test_the_pattern_passes_every_check(name):
    RUNNERS[name]("none")


@pytest.mark.parametrize("name,mistake", sorted(CAUGHT))
def test_each_mistake_fails_its_check_with_its_sentence(name, mistake):
    with pytest.raises(AssertionError) as caught:
        RUNNERS[name](mistake)
    assert str(caught.value).startswith(CAUGHT[name, mistake]), str(caught.value)
    assert "(see help(gallery.check." in str(caught.value)


@pytest.mark.parametrize("name,mistake", sorted(NOT_A_CUT))
def test_a_mistake_no_check_catches_passes_them_all_as_its_reason_says(name, mistake):
    RUNNERS[name](mistake)  # the reason is only honest if the checks really pass it


# --- the leak no example owns: any loop that logs the loss itself --------------------------------

def loss_log_loop(mistake: str) -> list[int]:
    """The loss-logging leak in its two forms, beside the fix: an eval loop without no_grad (no
    backward runs: the saved tensors stay, and bytes grow) and a training loop (backward frees the
    saved tensors; the nodes stay, and their count grows)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1))
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-3)
    x, y = torch.randn(32, 16), torch.randn(32, 1)
    log = {"running_loss": 0.0}

    def iteration():
        loss = F.mse_loss(net(x), y)
        if mistake != "running_loss_in_eval":
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        log["running_loss"] += loss.item() if mistake == "none" else loss

    return bounded_memory(iteration, steps=5)


LOOP_MISTAKES = {
    "running_loss_in_eval": "bounded_memory: the bytes held for backward grew",
    "running_loss_in_training": "bounded_memory: the autograd nodes kept alive grew",
}


def test_the_loss_log_fix_passes_with_nothing_held():
    trace = loss_log_loop("none")
    assert list(trace) == [0] * 5 and trace.graph_nodes[0] == trace.graph_nodes[-1]


@pytest.mark.parametrize("mistake", sorted(LOOP_MISTAKES))
def test_both_forms_of_the_loss_log_leak_fail_bounded_memory(mistake):
    with pytest.raises(AssertionError) as caught:
        loss_log_loop(mistake)
    assert str(caught.value).startswith(LOOP_MISTAKES[mistake]), str(caught.value)


def test_the_eval_form_holds_one_forward_of_bytes_per_iteration_and_the_training_form_none():
    """The consequence, exact: without backward each kept loss holds its forward's saved tensors
    (the same bytes every iteration); with backward it holds 0 bytes but the same nodes."""
    with pytest.raises(AssertionError, match=r"grew from ([\d,]+) to ([\d,]+) over 4 calls") as e:
        loss_log_loop("running_loss_in_eval")
    base, last = (int(v.replace(",", "")) for v in re.search(
        r"grew from ([\d,]+) to ([\d,]+)", str(e.value)).groups())
    assert base > 0 and last == 5 * base
    with pytest.raises(AssertionError, match=r"about 7 per call"):
        loss_log_loop("running_loss_in_training")


# --- beside the other check libraries (scripts/bench.py check_peers) ----------------------------

def test_gallery_check_is_right_on_every_pair_of_the_peer_comparison():
    """Live, with no peer installed: the comparison's own adapter for gallery.check passes each
    correct step and fails each mistake; docs/bench.json's record lists the same pairs."""
    import json

    from scripts.measure import check_peers

    for name in check_peers.PAIRS:
        assert check_peers.verdict(check_peers.gallery_check, name) == "right", name
    rows = json.loads((ROOT / "docs" / "bench.json").read_text())["check_peers"]
    assert [row["pair"] for row in rows[1:]] == list(check_peers.PAIRS), \
        "run scripts/bench.py check_peers --json docs/bench.json"
    assert rows[0]["gallery.check_right"] == rows[0]["gallery.check_expresses"] == len(rows) - 1
