import json

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gallery import dqn
from gallery.check import constant, disjoint, no_grad_reaches
from gallery.core.cli import compose
from gallery.core.probes import SavedTensorMeter, state_hash
from tests.conftest import arguments_of


def _nets(seed=0):
    torch.manual_seed(seed)
    online = dqn.q_network(4, 2, 32)
    target = dqn.make_target(online)
    opt = torch.optim.Adam(online.parameters(), lr=1e-3)
    return online, target, opt


def _batch(n=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {"obs": torch.randn(n, 4, generator=g), "next_obs": torch.randn(n, 4, generator=g),
            "actions": torch.randint(2, (n,), generator=g), "rewards": torch.ones(n),
            "terminated": (torch.arange(n) % 2).float()}


# --- the pattern's contract ---------------------------------------------------------------------

def test_target_is_frozen_and_not_in_the_optimizer():
    online, target, opt = _nets()
    assert all(not p.requires_grad for p in target.parameters())
    in_opt = {id(p) for group in opt.param_groups for p in group["params"]}
    assert not in_opt & {id(p) for p in target.parameters()}


def test_update_leaves_target_grads_none_and_target_unchanged():
    online, target, opt = _nets()
    before = state_hash(target)
    for _ in range(3):
        dqn.update(online, target, opt, _batch())
    assert all(p.grad is None for p in target.parameters())
    assert state_hash(target) == before  # changes only at a sync
    dqn.sync_target(target, online, 1.0)
    assert state_hash(target) == state_hash(online) and state_hash(target) != before


def _captured_targets(monkeypatch, mistake):
    seen = []
    real = F.smooth_l1_loss

    def spy(q, target, *a, **k):
        seen.append(target)
        return real(q, target, *a, **k)

    monkeypatch.setattr(dqn.F, "smooth_l1_loss", spy)
    make_target, update = dqn.BY_MISTAKE[mistake]
    torch.manual_seed(0)
    online = dqn.q_network(4, 2, 32)
    target = make_target(online)
    update(online, target, torch.optim.Adam(online.parameters(), lr=1e-3), _batch())
    return seen[0], online, target


def test_td_target_has_no_grad_fn(monkeypatch):
    value, _, _ = _captured_targets(monkeypatch, "none")
    assert value.grad_fn is None and not value.requires_grad


def test_polyak_update_is_exactly_the_formula():
    online, target, _ = _nets()
    with torch.no_grad():
        for p in online.parameters():
            p.add_(1.0)
    expected = [t + 0.05 * (o - t) for t, o in zip(target.parameters(), online.parameters())]
    dqn.sync_target(target, online, 0.05)
    for t, e in zip(target.parameters(), expected):
        torch.testing.assert_close(t, e, rtol=0, atol=1e-7)
    assert all(p.grad is None and not p.requires_grad for p in target.parameters())


def test_termination_stops_bootstrapping_and_truncation_does_not():
    online, target, _ = _nets()
    batch = _batch(2)
    # row 1 was truncated by a time limit: not terminated
    batch["terminated"] = torch.tensor([1.0, 0.0])
    with torch.no_grad():
        value = dqn.td_target(target, online, batch, 0.9, double=False)
        next_q = target(batch["next_obs"]).max(1).values
    assert value[0] == 1.0
    torch.testing.assert_close(value[1], 1.0 + 0.9 * next_q[1])


def test_truncated_transition_stores_final_obs_and_is_not_terminal():
    cfg = dqn.DqnConfig(env=dqn.EnvConfig(num_envs=1, max_episode_steps=3))
    envs, eval_env = dqn.make_envs(cfg.env, "DQN", 1)
    obs, _ = envs.reset(seed=0)
    for _ in range(3):
        prev = obs
        obs, real_next, _, terminated, info = dqn.env_step(envs, np.array([0]))
    envs.close(), eval_env.close()
    assert info["_final_obs"][0] and not terminated[0]  # truncated at step 3, still balanced
    assert np.array_equal(real_next[0], info["final_obs"][0])
    assert not np.array_equal(real_next[0], obs[0])  # the reset obs is what the agent acts on next
    assert not np.array_equal(real_next[0], prev[0])


# --- the mistakes' consequences --------------------------------------------------------------

def test_target_grad_writes_grads_into_target_and_saves_more_bytes():
    online, target, opt = _nets()
    with SavedTensorMeter() as pattern:
        dqn.update(online, target, opt, _batch())
    target = dqn.make_target_with_grad(online)
    with SavedTensorMeter() as mistake:
        dqn.update_target_grad(online, target, opt, _batch())
    assert all(p.grad is not None for p in target.parameters())
    assert mistake.total > pattern.total


def test_no_target_bootstraps_from_the_online_net(monkeypatch):
    value, online, _ = _captured_targets(monkeypatch, "no_target")
    assert value.grad_fn is None
    torch.manual_seed(0)
    online_before = dqn.q_network(4, 2, 32)  # the online net before its update
    batch = _batch()
    with torch.no_grad():
        expected = dqn.td_target(online_before, online_before, batch, 0.99, True)
    torch.testing.assert_close(value, expected)


def test_residual_gradient_flows_through_both_sides():
    grads = {}
    for mistake in ("no_target", "no_target+target_grad"):
        online, target, opt = _nets()
        opt.step = lambda: None  # keep the grads, skip the update
        dqn.BY_MISTAKE[mistake].update(online, target, opt, _batch())
        grads[mistake] = torch.cat([p.grad.flatten() for p in online.parameters()])
    # with grad through the target side too, the online net's gradient is a different vector
    assert not torch.allclose(grads["no_target"], grads["no_target+target_grad"])


# --- runs ----------------------------------------------------------------------------------------

def _tiny(tmp_path, *overrides):
    return compose("dqn", [f"out_dir={tmp_path}", "device=cpu", "steps=400", "learning_starts=100",
                                  "eval_every=200", "eval_episodes=2", "log_every=100", "hidden=16",
                                  "batch_size=32", *overrides])


def test_smoke_train_through_compose(tmp_path):
    summary = dqn.train(_tiny(tmp_path))
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert summary["env_steps"] == 400 and summary["target_grad_seen"] is False
    assert summary["updates"] > 0 and summary["saved_bytes_per_update"] > 0
    assert len(summary["evals"]) == 2 and (tmp_path / "learning_curve.png").is_file()


def test_target_grad_run_reports_target_grad_seen(tmp_path):
    assert dqn.train(_tiny(tmp_path, "mistake=target_grad"))["target_grad_seen"] is True


@pytest.mark.parametrize("env_id, message", [("NoSuchEnv-v0", "env.id='NoSuchEnv-v0'"),
                                              ("Pendulum-v1", "Discrete")])
def test_bad_env_is_a_clear_error(tmp_path, env_id, message):
    with pytest.raises(dqn.ConfigError, match=message):
        dqn.train(_tiny(tmp_path, f"env.id={env_id}"))


@pytest.mark.gpu
def test_gpu_smoke(tmp_path):
    summary = dqn.train(_tiny(tmp_path, "device=cuda"))
    assert summary["device"].startswith("cuda") and summary["target_grad_seen"] is False


def test_episode_returns_match_gymnasiums_record_episode_statistics():
    from gallery.data.envs import EpisodeReturns

    envs = gym.wrappers.vector.RecordEpisodeStatistics(gym.make_vec(
        "CartPole-v1", num_envs=3, vectorization_mode="sync",
        vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP}))
    envs.reset(seed=0)
    returns, theirs, ours = EpisodeReturns(3), [], []
    rng = np.random.default_rng(0)
    for _ in range(200):
        *_, rewards, _, info = dqn.env_step(envs, rng.integers(2, size=3))
        returns.add(rewards, info)
        if "_episode" in info:
            theirs += info["episode"]["r"][info["_episode"]].tolist()
        if len(theirs) > 5:
            ours.append(returns.pop_mean())
            assert ours[-1] == pytest.approx(np.mean(theirs))
            theirs = []
    envs.close()
    returns.pop_mean()
    # a mean covers only the episodes since the last
    assert len(ours) >= 3 and returns.pop_mean() is None


def test_batched_evaluation_scores_each_episode_as_a_sequential_one_would():
    """Evaluation steps one sub-env per episode, all at once; sub-env i is reset with seed + i, so
    the returns are those of the episodes a sequential evaluation runs one after another."""
    from gallery.data.envs import evaluate

    cfg = dqn.DqnConfig(env=dqn.EnvConfig(num_envs=1, max_episode_steps=60))
    envs, eval_envs = dqn.make_envs(cfg.env, "DQN", 5)
    torch.manual_seed(0)
    net = dqn.q_network(4, 2, 16)
    batched = evaluate(dqn.greedy(net), eval_envs, 100, torch.device("cpu"))
    returns = []
    for episode in range(5):
        env = gym.make("CartPole-v1", max_episode_steps=60)
        obs, _ = env.reset(seed=100 + episode)
        total, done = 0.0, False
        while not done:
            with torch.no_grad():
                action = int(net(torch.as_tensor(obs)[None]).argmax(1))
            obs, reward, terminated, truncated, _ = env.step(action)
            total, done = total + float(reward), terminated or truncated
        returns.append(total)
        env.close()
    envs.close(), eval_envs.close()
    assert len(set(returns)) > 1  # the episodes differ: each sub-env got its own seed
    assert batched["eval_return_mean"] == pytest.approx(np.mean(returns))
    assert batched["eval_return_std"] == pytest.approx(np.std(returns))


# --- this example's row of the check table (tests/test_check.py) ---

def check_step(mistake: str) -> None:
    """This example's step under gallery.check, for the check table in tests/test_check.py: the
    pattern passes every check; each mistake fails with its `caught` sentence."""
    torch.manual_seed(0)
    variant = dqn.BY_MISTAKE[mistake]
    online = dqn.q_network(4, 2, 16)
    target = variant.make_target(online)
    disjoint(online=online, target=target)
    optimizer = torch.optim.Adam(online.parameters(), lr=1e-3)
    batch = {"obs": torch.randn(8, 4), "next_obs": torch.randn(8, 4),
             "actions": torch.randint(2, (8,)), "rewards": torch.ones(8),
             "terminated": torch.zeros(8)}
    with arguments_of(F, "smooth_l1_loss") as calls, no_grad_reaches(target=target):
        variant.update(online, target, optimizer, batch)
    constant(td_target=calls[0][1])
