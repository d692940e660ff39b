"""The replay buffer: rows land where the ring says, batches come back on the table's device, and a
checkpoint round trip (CPU tensors) restores it exactly."""

import numpy as np
import pytest
import torch

from gallery.data.replay import ReplayBuffer


def _fill(buffer: ReplayBuffer, steps: int, n: int = 3, act_dim: int | None = None) -> None:
    for t in range(steps):
        obs = np.full((n, 4), t, np.float32) + np.arange(n, dtype=np.float32)[:, None] / 10
        actions = np.arange(n) % 2 if act_dim is None else np.full((n, act_dim), -t, np.float32)
        buffer.add(obs, actions, np.full(n, t, np.float32), obs + 1, np.arange(n) == 0)


def test_add_wraps_around_the_ring_and_keeps_every_field_in_its_row():
    buffer = ReplayBuffer(7, 4, torch.device("cpu"))
    # 3 steps of 3 envs into 7 rows: step 2 writes row 6, then wraps to rows 0 and 1
    _fill(buffer, 3)
    assert (buffer.size, buffer.pos) == (7, 2)
    state = buffer.state_dict()
    # rows 0, 1: step 2's envs 1, 2; row 2: step 0's env 2 (its envs 0, 1 overwritten); 3-5: step 1;
    # 6: step 2's env 0
    assert state["rewards"].tolist() == [2, 2, 0, 1, 1, 1, 2]
    assert torch.allclose(state["obs"][:, 0], torch.tensor([2.1, 2.2, 0.2, 1.0, 1.1, 1.2, 2.0]))
    assert torch.equal(state["next_obs"], state["obs"] + 1)
    assert state["actions"].dtype == torch.int64 and state["actions"].tolist() == [
        1, 0, 0, 0, 1, 0, 0]
    assert state["terminated"].tolist() == [0, 0, 0, 1, 0, 0, 1]


def test_sample_returns_whole_rows_on_the_table_device_and_a_round_trip_restores_them():
    buffer = ReplayBuffer(50, 4, torch.device("cpu"), act_dim=2)
    _fill(buffer, 10, act_dim=2)
    batch = buffer.sample(64)
    assert batch["actions"].shape == (64, 2) and batch["actions"].dtype == torch.float32
    # fields of one transition stay together
    assert torch.equal(batch["next_obs"], batch["obs"] + 1)
    assert torch.equal(batch["actions"][:, 0], -batch["rewards"])
    restored = ReplayBuffer(50, 4, torch.device("cpu"), act_dim=2)
    restored.load_state_dict(buffer.state_dict())
    assert (restored.size, restored.pos) == (buffer.size,
                                             buffer.pos) and torch.equal(restored.rows, buffer.rows)
    # the sampler's state too
    assert torch.equal(restored.sample(8)["obs"], buffer.sample(8)["obs"])


@pytest.mark.gpu
def test_on_cuda_the_table_and_batches_stay_on_the_device_and_checkpoints_are_cpu_tensors():
    buffer = ReplayBuffer(20, 4, torch.device("cuda"))
    _fill(buffer, 10)
    assert buffer.rows.is_cuda
    assert all(v.is_cuda for v in buffer.sample(8).values())
    state = buffer.state_dict()
    assert not any(v.is_cuda for v in state.values() if isinstance(v, torch.Tensor))
    restored = ReplayBuffer(20, 4, torch.device("cuda"))
    restored.load_state_dict(state)
    assert torch.equal(restored.rows, buffer.rows)
