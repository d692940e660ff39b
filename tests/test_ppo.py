
import math

import gymnasium as gym
import pytest
import torch

from gallery import ppo
from gallery.check import constant
from gallery.core.cli import compose
from gallery.core.errors import ExplainedMistake
from gallery.core.probes import graph_saved_bytes, reached_parameters, state_hash
from tests.conftest import StubEnvs, arguments_of


def _envs(n=2, limit=None, seed=0):
    kwargs = {"max_episode_steps": limit} if limit else {}
    envs = gym.make_vec("CartPole-v1", num_envs=n, vectorization_mode="sync",
                        vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP},
                        **kwargs)
    obs = torch.as_tensor(envs.reset(seed=seed)[0], dtype=torch.float32)
    return envs, obs


def _agent(seed=0):
    torch.manual_seed(seed)
    return ppo.Agent(4, 2, 16)


# --- the pattern's contract ---------------------------------------------------------------------

def test_the_rollout_is_data_and_the_loss_never_reaches_its_history():
    agent, (envs, obs) = _agent(), _envs()
    batch, _ = ppo.rollout(agent, envs, obs, 8, 0.99)
    assert all(t.grad_fn is None and not t.requires_grad for t in batch.values())
    assert batch["obs"].shape == (8, 2, 4) and batch["logprobs"].shape == (8, 2)
    advantages, returns = ppo.gae(batch, agent.value(obs), 0.99, 0.95)
    # even from a next value with a graph
    assert advantages.grad_fn is None and returns.grad_fn is None
    policy_loss, value_loss, _ = ppo.ppo_loss(agent, batch["obs"][0], batch["actions"][0],
                                              batch["logprobs"][0], advantages[0], returns[0], 0.2)
    # the policy loss trains the actor only
    assert reached_parameters(policy_loss, agent.critic) == set()
    assert reached_parameters(value_loss, agent.actor) == set()


def test_gae_by_hand_stops_at_an_episode_end_and_bootstraps_otherwise():
    batch = {"rewards": torch.tensor([[1.0], [1.0], [1.0]]),
             "values": torch.tensor([[0.5], [0.4], [0.3]]),
             "dones": torch.tensor([[0.0], [1.0], [0.0]])}
    gamma, lam, next_value = 0.9, 0.8, torch.tensor([2.0])
    advantages, returns = ppo.gae(batch, next_value, gamma, lam)
    d2 = 1.0 + gamma * 2.0 - 0.3  # bootstraps from the value after the rollout
    d1 = 1.0 - 0.4  # the episode ended here: no bootstrap, and nothing flows back across it
    d0 = 1.0 + gamma * 0.4 - 0.5
    expected = torch.tensor([[d0 + gamma * lam * d1], [d1], [d2]])
    assert torch.allclose(advantages, expected) and torch.allclose(
        returns, expected + batch["values"])


def test_a_truncated_step_bootstraps_from_the_true_final_observation():
    agent = _agent()
    with torch.no_grad():  # a critic that says 5 everywhere
        agent.critic[-1].weight.zero_(), agent.critic[-1].bias.fill_(5.0)
    envs, obs = _envs(n=1, limit=3)
    batch, _ = ppo.rollout(agent, envs, obs, 3, 0.9)
    assert batch["dones"][:, 0].tolist() == [0.0, 0.0, 1.0]
    # reward + gamma * V(final obs)
    assert batch["rewards"][:, 0].tolist() == [1.0, 1.0, 1.0 + 0.9 * 5.0]
    envs, obs = _envs(n=1, limit=3)
    torch.manual_seed(0)
    mistake, _ = ppo.rollout_truncation_as_terminal(agent, envs, obs, 3, 0.9)
    assert mistake["rewards"][:, 0].tolist() == [1.0, 1.0, 1.0] and mistake["dones"][2, 0] == 1.0


# --- the mistakes' consequences -------------------------------------------------------------------

def test_rollout_grad_holds_bytes_that_grow_with_every_step_and_the_second_backward_fails():
    held = {}
    for steps in (2, 4, 8):
        agent, (envs, obs) = _agent(), _envs()
        batch, _ = ppo.rollout_grad(agent, envs, obs, steps, 0.99)
        held[steps] = graph_saved_bytes(batch["logprobs"], batch["values"])
    assert 0 < held[2] < held[4] < held[8] and held[8] - held[4] == 2 * (held[4] - held[2])
    agent, (envs, obs) = _agent(), _envs()
    assert graph_saved_bytes(*ppo.rollout(agent, envs, obs, 8, 0.99)[0].values()) == 0
    batch, _ = ppo.rollout_grad(agent, envs, obs, 4, 0.99)
    advantages, returns = ppo.gae(batch, torch.zeros(2), 0.99, 0.95)
    optimizer = torch.optim.Adam(agent.parameters())
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        ppo.ppo_update(agent, optimizer, batch, advantages, returns, epochs=2, minibatch_size=8,
                       clip=0.2)


def test_rollout_grad_run_stops_with_the_explained_fix(tmp_path):
    with pytest.raises(ExplainedMistake, match=r"act under torch.no_grad\(\)"):
        ppo.train(compose("ppo", ["mistake=rollout_grad", "steps=512", f"out_dir={tmp_path}",
                                  "device=cpu"]))


def test_advantage_grad_lets_the_policy_loss_move_the_critic():
    """With the value loss and the entropy switched off, only the policy loss trains: the pattern
    leaves the critic exactly as it was; advantages taken from the critic with grad move it."""
    envs, obs = _envs(n=4)
    batch, next_obs = ppo.rollout(_agent(), envs, obs, 16, 0.99)
    for update, critic_moves in ((ppo.ppo_update, False), (ppo.ppo_update_advantage_grad, True)):
        agent = _agent()
        advantages, returns = ppo.gae(batch, agent.value(next_obs), 0.99, 0.95)
        before, actor_before = state_hash(agent.critic), state_hash(agent.actor)
        update(agent, torch.optim.Adam(agent.parameters(), lr=1e-2), batch, advantages, returns,
               epochs=2, minibatch_size=32, clip=0.2, vf_coef=0.0, ent_coef=0.0)
        assert (state_hash(agent.critic) != before) is critic_moves
        assert state_hash(agent.actor) != actor_before
    mb_advantages = returns[0] - agent.value(batch["obs"][0])  # the mistake's line
    policy_loss, _, _ = ppo.ppo_loss(agent, batch["obs"][0], batch["actions"][0],
                                     batch["logprobs"][0], mb_advantages, returns[0], 0.2)
    assert reached_parameters(policy_loss, agent.critic)


def test_advantage_grad_push_on_the_critic_is_nearly_cancelled_by_minibatch_normalisation():
    """Why advantage_grad did not learn worse on CartPole (README): the loss standardises each
    minibatch's advantages, and the gradient of a standardised vector is orthogonal to the constant
    direction. At ratio 1 (the first minibatch of a rollout) the policy loss is -mean(standardised
    A), a constant, so it sends the critic nothing; later the ratios move only within the clip
    range."""
    agent, (envs, obs) = _agent(), _envs(n=4)
    batch, _ = ppo.rollout(agent, envs, obs, 16, 0.99)
    obs, actions = batch["obs"].flatten(0, 1), batch["actions"].flatten()
    old = batch["logprobs"].flatten()
    returns = torch.linspace(1.0, 30.0, len(obs))  # any targets: the push is what is measured

    def critic_grad_norm(normalise: bool) -> float:
        # the mistake's line: advantages with the critic's graph
        advantages = returns - agent.value(obs)
        logprob = agent.evaluate(obs, actions)[0]
        if normalise:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        ratio = (logprob - old).exp()
        loss = -torch.min(ratio * advantages, ratio.clamp(0.8, 1.2) * advantages).mean()
        grads = torch.autograd.grad(loss, list(agent.critic.parameters()))
        return float(torch.cat([g.flatten() for g in grads]).norm())

    assert critic_grad_norm(normalise=True) < 1e-5 < 0.1 < critic_grad_norm(normalise=False)
    with torch.no_grad():  # the policy moves on, as after a few minibatches
        for p in agent.actor.parameters():
            p.add_(0.1 * torch.randn_like(p))
    assert 100 * critic_grad_norm(normalise=True) < critic_grad_norm(normalise=False)


# --- runs ---------------------------------------------------------------------------------------

def test_resume_continues_from_the_checkpoint_to_the_end(tmp_path):
    args = ["steps=1024", "eval_every=512", "eval_episodes=1", "value_check_episodes=0",
            "ckpt_every=512", "stop_when_solved=false", f"out_dir={tmp_path}", "device=cpu"]
    first = ppo.train(compose("ppo", [*args[:-3], "steps=512", *args[-3:]]))
    assert first["env_steps"] == 512
    resumed = ppo.train(compose("ppo", [*args, "resume=true"]))
    assert resumed["env_steps"] == 1024 and [e["env_steps"] for e in resumed["evals"]] == [
        512, 1024]


@pytest.mark.gpu
def test_gpu_smoke(tmp_path):
    s = ppo.train(compose("ppo", ["device=cuda", "steps=512", "eval_every=512", "eval_episodes=1",
                                  "value_check_episodes=1", "epochs=1", f"out_dir={tmp_path}"]))
    assert s["device"].startswith("cuda") and s["rollout_saved_bytes"] == 0


def test_the_update_reports_means_over_every_minibatch_so_one_nan_minibatch_shows():
    torch.manual_seed(0)
    agent = ppo.Agent(4, 2, 16)
    optimizer = torch.optim.SGD(agent.parameters(), lr=0.1)
    # every minibatch sees the same weights (a NaN grad never reaches them)
    optimizer.step = lambda: None
    batch = {"obs": torch.randn(8, 2, 4), "actions": torch.randint(2, (8, 2)),
             "logprobs": torch.full((8, 2), -0.7)}
    advantages, returns = torch.randn(8, 2), torch.randn(8, 2)
    seen = []
    real = ppo.ppo_loss

    def recording(*args):
        losses = real(*args)
        seen.append([float(losses[0].detach()), float(losses[1].detach())])
        return losses

    ppo.ppo_loss = recording
    try:
        policy, value = ppo.ppo_update(agent, optimizer, batch, advantages, returns, epochs=2,
                                       minibatch_size=4, clip=0.2)
        assert len(seen) == 2 * 4
        assert float(policy) == pytest.approx(sum(p for p, _ in seen) / 8)
        assert float(value) == pytest.approx(sum(v for _, v in seen) / 8)
        returns[0, 0] = float("nan")  # one minibatch of the eight
        policy, value = ppo.ppo_update(agent, optimizer, batch, advantages, returns, epochs=2,
                                       minibatch_size=4, clip=0.2)
        assert math.isnan(float(value))
    finally:
        ppo.ppo_loss = real


# --- this example's row of the check table (tests/test_check.py) ---

def check_step(mistake: str) -> None:
    """This example's step under gallery.check, for the check table in tests/test_check.py: the
    pattern passes every check; each mistake fails with its `caught` sentence."""
    torch.manual_seed(0)
    variant = ppo.BY_MISTAKE[mistake]
    agent = ppo.Agent(4, 2, 16)
    optimizer = torch.optim.Adam(agent.parameters(), lr=1e-3)
    batch, obs = variant.rollout(agent, StubEnvs(), torch.randn(2, 4), 4, 0.99)
    constant(logprobs=batch["logprobs"], values=batch["values"])  # the rollout is data
    with torch.no_grad():
        advantages, returns = ppo.gae(batch, agent.value(obs), 0.99, 0.95)
    with arguments_of(ppo, "ppo_loss") as calls:
        variant.update(agent, optimizer, batch, advantages, returns, 1, 4, 0.2)
    constant(advantages=[args[4] for args in calls])
