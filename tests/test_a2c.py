"""a2c: the advantage as a constant for the actor and a fixed target for the critic; each
mistake's consequence, a smoke run, a resume and one real process."""

import gymnasium as gym
import pytest
import torch

from gallery import a2c
from gallery.check import constant, gets_grad, no_grad_reaches
from gallery.core.cli import compose
from gallery.core.probes import reached_parameters, state_hash
from tests.conftest import StubEnvs


def _envs(n=2, limit=None, seed=0):
    kwargs = {"max_episode_steps": limit} if limit else {}
    envs = gym.make_vec("CartPole-v1", num_envs=n, vectorization_mode="sync",
                        vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP},
                        **kwargs)
    obs = torch.as_tensor(envs.reset(seed=seed)[0], dtype=torch.float32)
    return envs, obs


def _agent(seed=0):
    torch.manual_seed(seed)
    return a2c.Agent(4, 2, 16)


def _rollout(variant="none", steps=8, n=2, seed=0):
    agent, (envs, obs) = _agent(seed), _envs(n)
    batch, next_obs = a2c.BY_MISTAKE[variant].rollout(agent, envs, obs, steps, 0.99)
    return agent, batch, next_obs


# --- the pattern's contract ---------------------------------------------------------------------

def test_the_rollout_keeps_its_graphs_and_the_target_is_a_constant():
    agent, batch, next_obs = _rollout()
    # A2C trains on the pass that acted: the stored log-probs and values carry their graphs
    assert batch["logprobs"].grad_fn is not None and batch["values"].grad_fn is not None
    assert batch["values"].shape == (8, 2) and batch["rewards"].grad_fn is None
    advantages, returns = a2c.gae(batch, agent.value(next_obs), 0.99, 0.95)
    # even from values and a next value with graphs
    assert advantages.grad_fn is None and returns.grad_fn is None
    policy_loss, value_loss, _ = a2c.a2c_losses(batch, returns)
    # the policy loss trains the actor only, the value loss the critic only
    assert reached_parameters(policy_loss, agent.critic) == set()
    assert reached_parameters(policy_loss, agent.actor)
    assert reached_parameters(value_loss, agent.actor) == set()
    assert reached_parameters(value_loss, agent.critic)


def test_gae_with_lambda_one_is_the_n_step_return_and_stops_at_an_episode_end():
    batch = {"rewards": torch.tensor([[1.0], [1.0], [1.0]]),
             "values": torch.tensor([[0.5], [0.4], [0.3]]),
             "dones": torch.tensor([[0.0], [1.0], [0.0]])}
    _, returns = a2c.gae(batch, torch.tensor([2.0]), 0.9, 1.0)
    # the episode ends at t=1: t=0 and t=1 see only its rewards; t=2 bootstraps from V = 2
    assert torch.allclose(returns[:, 0], torch.tensor([1.0 + 0.9, 1.0, 1.0 + 0.9 * 2.0]))


def test_a_truncated_step_bootstraps_from_the_true_final_observation():
    agent = _agent()
    with torch.no_grad():  # a critic that says 5 everywhere
        agent.critic[-1].weight.zero_(), agent.critic[-1].bias.fill_(5.0)
    envs, obs = _envs(n=1, limit=3)
    batch, _ = a2c.rollout(agent, envs, obs, 3, 0.9)
    assert batch["dones"][:, 0].tolist() == [0.0, 0.0, 1.0]
    assert batch["rewards"][:, 0].tolist() == [1.0, 1.0, 1.0 + 0.9 * 5.0]


def _one_update(variant_name: str, vf_coef: float, seed=0):
    """One a2c_update with the named variant's pieces; the agent's critic and actor hashes before
    and after."""
    variant = a2c.BY_MISTAKE[variant_name]
    agent, (envs, obs) = _agent(seed), _envs(4)
    batch, next_obs = variant.rollout(agent, envs, obs, 16, 0.99)
    before = state_hash(agent.critic), state_hash(agent.actor)
    _, returns = variant.gae(batch, agent.value(next_obs), 0.99, 0.95)
    a2c.a2c_update(agent, torch.optim.Adam(agent.parameters(), lr=1e-2),
                   *variant.losses(batch, returns), vf_coef=vf_coef, ent_coef=0.0)
    return before, (state_hash(agent.critic), state_hash(agent.actor))


# --- the mistakes' consequences -------------------------------------------------------------------

def test_advantage_grad_lets_the_actors_loss_move_the_critic():
    """With the value loss off, only the policy loss trains: the pattern leaves the critic exactly
    as it was; the undetached advantage moves it."""
    for name, critic_moves in (("none", False), ("advantage_grad", True)):
        (critic0, actor0), (critic1, actor1) = _one_update(name, vf_coef=0.0)
        assert (critic1 != critic0) is critic_moves and actor1 != actor0
    agent, batch, next_obs = _rollout()
    _, returns = a2c.gae(batch, agent.value(next_obs), 0.99, 0.95)
    policy_loss, _, _ = a2c.a2c_losses_advantage_grad(batch, returns)
    assert reached_parameters(policy_loss, agent.critic)


def test_advantage_grad_pushes_every_value_up():
    """The policy loss's gradient on each V is log p / n < 0, so every descent step raises every
    value (the gate measures what that does to the value error at a fixed budget)."""
    agent, batch, next_obs = _rollout()
    _, returns = a2c.gae(batch, agent.value(next_obs), 0.99, 0.95)
    policy_loss, _, _ = a2c.a2c_losses_advantage_grad(batch, returns)
    grad_values = torch.autograd.grad(policy_loss, batch["values"])[0]
    assert (grad_values < 0).all()
    assert torch.allclose(grad_values, batch["logprobs"].detach() / batch["logprobs"].numel())


def test_critic_through_gae_gives_the_target_a_graph_and_changes_the_critics_gradient():
    agent, batch, next_obs = _rollout()
    next_value = agent.value(next_obs)
    _, fixed = a2c.gae(batch, next_value, 0.99, 0.95)
    _, moving = a2c.gae_with_grad(batch, next_value, 0.99, 0.95)
    assert fixed.grad_fn is None and moving.grad_fn is not None
    assert torch.equal(fixed, moving.detach())  # the same numbers: only the graph differs
    critic = list(agent.critic.parameters())
    pattern = torch.autograd.grad(a2c.a2c_losses(batch, fixed)[1], critic, retain_graph=True)
    mistake = torch.autograd.grad(a2c.a2c_losses(batch, moving)[1], critic)
    # the pattern's value loss is the regression to a fixed target; the mistake's is not
    assert not all(torch.allclose(p, m) for p, m in zip(pattern, mistake))
    assert torch.allclose(pattern[-1], -2 * (fixed - batch["values"]).mean().detach())


def test_value_item_leaves_the_critic_bit_for_bit_unchanged(tmp_path):
    agent, batch, next_obs = _rollout("value_item")
    assert batch["values"].grad_fn is None
    _, returns = a2c.gae(batch, agent.value(next_obs), 0.99, 0.95)
    assert a2c.a2c_losses(batch, returns)[1].grad_fn is None  # the value loss: no graph
    (critic0, actor0), (critic1, actor1) = _one_update("value_item", vf_coef=0.5)
    assert critic1 == critic0 and actor1 != actor0
    s = a2c.train(compose("a2c", ["device=cpu", "mistake=value_item", "steps=512",
                                  "eval_every=512", "eval_episodes=1", "value_check_episodes=0",
                                  f"out_dir={tmp_path}"]))
    assert s["critic_changed"] is False


# --- runs ---------------------------------------------------------------------------------------

def test_a_smoke_run_writes_its_summary_and_curve(tmp_path):
    s = a2c.train(compose("a2c", ["device=cpu", "steps=1024", "eval_every=512",
                                  "eval_episodes=2", "value_check_episodes=1", "log_every=512",
                                  f"out_dir={tmp_path}"]))
    assert s["env_steps"] == 1024 and s["critic_changed"] is True
    assert [e["env_steps"] for e in s["evals"]] == [512, 1024]
    assert "value_bias" in s and (tmp_path / "learning_curve.png").is_file()


def test_resume_continues_from_the_checkpoint_to_the_end(tmp_path):
    args = ["eval_every=512", "eval_episodes=1", "value_check_episodes=0", "ckpt_every=512",
            "stop_when_solved=false", f"out_dir={tmp_path}", "device=cpu"]
    first = a2c.train(compose("a2c", ["steps=512", *args]))
    assert first["env_steps"] == 512
    resumed = a2c.train(compose("a2c", ["steps=1024", *args, "resume=true"]))
    assert resumed["env_steps"] == 1024 and [e["env_steps"] for e in resumed["evals"]] == [
        512, 1024]


@pytest.mark.gpu
def test_gpu_smoke(tmp_path):
    s = a2c.train(compose("a2c", ["device=cuda", "steps=512", "eval_every=512", "eval_episodes=1",
                                  "value_check_episodes=1", f"out_dir={tmp_path}"]))
    assert s["device"].startswith("cuda") and s["critic_changed"] is True


# --- this example's row of the check table (tests/test_check.py) ---

def check_step(mistake: str) -> None:
    """This example's step under gallery.check, for the check table in tests/test_check.py: the
    pattern passes every check; each mistake fails with its `caught` sentence."""
    torch.manual_seed(0)
    variant = a2c.BY_MISTAKE[mistake]
    agent = a2c.Agent(4, 2, 16)
    batch, obs = variant.rollout(agent, StubEnvs(), torch.randn(2, 4), 4, 0.99)
    _, returns = variant.gae(batch, agent.value(obs), 0.99, 0.95)
    constant(returns=returns)  # the critic's target
    policy_loss, value_loss, entropy = variant.losses(batch, returns)
    with no_grad_reaches(critic=agent.critic):  # the actor's loss alone trains the actor alone
        policy_loss.backward(retain_graph=True)
    with gets_grad(critic=agent.critic):  # and the update trains the critic
        a2c.a2c_update(agent, torch.optim.Adam(agent.parameters()), policy_loss, value_loss,
                       entropy)
