import torch
from torch import nn

from gallery.core.probes import (
    SavedTensorMeter,
    grad_norm,
    grads_absent,
    graph_stats,
    reached_parameters,
    saved_bytes,
    state_hash,
)


def _two_nets():
    torch.manual_seed(0)
    return nn.Linear(4, 4), nn.Linear(4, 1)


def test_detached_branch_reaches_no_upstream_parameter():
    first, second = _two_nets()
    hidden = first(torch.randn(8, 4))
    loss = second(hidden.detach()).sum()
    assert reached_parameters(loss, first) == set()
    assert reached_parameters(loss, second) == {"weight", "bias"}


def test_live_branch_reaches_upstream_parameters():
    first, second = _two_nets()
    loss = second(first(torch.randn(8, 4))).sum()
    assert reached_parameters(loss, first) == {"weight", "bias"}


def test_graph_stats_grow_with_chained_ops():
    x = torch.randn(3, requires_grad=True)
    short, long = x * 2, x
    for _ in range(10):
        long = long * 2
    assert graph_stats(short.sum()).depth < graph_stats(long.sum()).depth
    assert graph_stats(long.sum()).depth == 12  # 10 muls + sum + AccumulateGrad
    assert graph_stats(x.detach()).nodes == 0


def test_grads_absent_then_present_then_zeroed():
    first, _ = _two_nets()
    assert grads_absent(first) and grad_norm(first) == 0.0
    first(torch.randn(2, 4)).sum().backward()
    assert not grads_absent(first) and grad_norm(first) > 0
    first.zero_grad(set_to_none=False)  # zeros, not None, still count as "no grad written"
    assert grads_absent(first)


def test_state_hash_changes_when_one_batchnorm_buffer_changes():
    net = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    before = state_hash(net)
    assert state_hash(net) == before  # stable
    with torch.no_grad():
        net[1].running_mean[2] += 1e-3
    assert state_hash(net) != before


def test_state_hash_sees_num_batches_tracked():
    net = nn.BatchNorm1d(4)
    before = state_hash(net)
    net.num_batches_tracked += 1
    assert state_hash(net) != before


def test_saved_bytes_proportional_to_activation_size():
    net = nn.Sequential(nn.Linear(64, 64), nn.Tanh())

    def forward(batch):
        return net(torch.randn(batch, 64)).sum()

    small, _ = saved_bytes(forward, 100)
    large, _ = saved_bytes(forward, 400)
    assert small == 2 * 100 * 64 * 4  # the Linear's input and the Tanh's output, float32
    assert large == 4 * small


def test_saved_bytes_zero_under_no_grad():
    net = nn.Sequential(nn.Linear(64, 64), nn.Tanh())
    with torch.no_grad():
        nbytes, out = saved_bytes(lambda: net(torch.randn(100, 64)).sum())
    assert nbytes == 0 and out.grad_fn is None


def test_meter_live_bytes_drop_to_zero_after_backward_and_grow_when_graphs_are_retained():
    x = torch.randn(32, 32, requires_grad=True)
    with SavedTensorMeter() as meter:
        loss = (x.tanh() * 3).sum()
        held = meter.live
        assert held > 0
        loss.backward()
        assert meter.live == 0  # backward freed the saved tensors

        chain = x
        lives = []
        for _ in range(3):
            chain = chain.tanh()
            chain.sum().backward(retain_graph=True)
            lives.append(meter.live)
        assert lives[0] < lives[1] < lives[2]
        del chain
        assert meter.live == 0


def test_grad_written_norm_sees_only_new_gradient():
    from gallery.core.probes import grad_snapshot, grad_written_norm

    first, _ = _two_nets()
    first(torch.randn(2, 4)).sum().backward()  # stale grads from an earlier step
    snap = grad_snapshot(first)
    assert grad_written_norm(first, snap) == 0.0
    first(torch.randn(2, 4)).sum().backward()
    assert grad_written_norm(first, snap) > 0
