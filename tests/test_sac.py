import math

import numpy as np
import pytest
import torch
from torch import nn

from gallery import sac
from gallery.check import disjoint, no_grad_reaches
from gallery.core.cli import compose
from gallery.core.probes import SavedTensorMeter, reached_parameters, state_hash


def _nets(seed=0, mistake="none"):
    torch.manual_seed(seed)
    make_targets, make_optimizers, critic_step, actor_step = sac.BY_MISTAKE[mistake]
    actor = sac.Actor(3, 1, 16, np.array([-2.0]), np.array([2.0]))
    critics = nn.ModuleList([sac.Critic(3, 1, 16) for _ in range(2)])
    temperature = sac.Temperature()
    targets = make_targets(critics)
    opts = make_optimizers(actor, critics, temperature, 1e-2)
    g = torch.Generator().manual_seed(seed)
    batch = {"obs": torch.randn(32, 3, generator=g), "next_obs": torch.randn(32, 3, generator=g),
             "actions": torch.rand(32, 1, generator=g) * 4 - 2,
             "rewards": -torch.rand(32, generator=g), "terminated": torch.zeros(32)}
    return actor, critics, temperature, targets, opts, batch, critic_step, actor_step


# --- the pattern's contract ---------------------------------------------------------------------

def test_the_critic_step_writes_no_grad_into_the_targets_or_the_actor():
    actor, critics, temperature, targets, (actor_opt, critic_opt,
                                           _), batch, critic_step, _ = _nets()
    before = state_hash(targets)
    critic_step(critics, targets, actor, critic_opt, batch, 0.2, 0.99)
    assert all(p.grad is None for p in targets.parameters())
    assert all(p.grad is None for p in actor.parameters())
    assert all(p.grad is not None for p in critics.parameters()) and state_hash(targets) == before


def test_the_actor_step_leaves_the_critics_and_only_log_alpha_learns_from_the_alpha_loss():
    actor, critics, temperature, targets, optimizers, batch, _, actor_step = _nets()
    actor_opt, critic_opt, alpha_opt = optimizers
    critics_before, actor_before = state_hash(critics), state_hash(actor)
    actor_step(actor, critics, temperature, actor_opt, alpha_opt, batch["obs"], -1.0)
    assert state_hash(critics) == critics_before
    assert all(p.grad is None for p in critics.parameters())
    # switched back on for the critic step
    assert all(p.requires_grad for p in critics.parameters())
    assert state_hash(actor) != actor_before and temperature.log_alpha.grad is not None
    _, logp = actor.sample(batch["obs"])
    alpha_loss = -(temperature.log_alpha * (logp.detach() + -1.0)).mean()  # the pattern's line
    assert reached_parameters(alpha_loss, actor) == set()


def test_polyak_moves_the_targets_by_tau_without_a_graph():
    _, critics, _, targets, *_ = _nets()
    with torch.no_grad():
        for p in critics.parameters():
            p.add_(1.0)
    before = [p.clone() for p in targets.parameters()]
    sac.sync_target(targets, critics, 0.1)
    for b, t, o in zip(before, targets.parameters(), critics.parameters()):
        assert torch.allclose(t, b + 0.1 * (o - b)) and t.grad_fn is None and t.grad is None


# --- the mistakes' consequences -------------------------------------------------------------------

def test_target_grad_gives_the_targets_and_the_actor_grads_and_saves_more_bytes():
    saved = {}
    for mistake in ("none", "target_grad"):
        actor, critics, _, targets, (_, critic_opt,
                                     _), batch, critic_step, _ = _nets(mistake=mistake)
        with SavedTensorMeter() as meter:
            critic_step(critics, targets, actor, critic_opt, batch, 0.2, 0.99)
        saved[mistake] = meter.total
    assert all(p.grad is not None for p in targets.parameters())
    assert all(p.grad is not None for p in actor.net.parameters())  # through the next-action sample
    assert saved["target_grad"] > 1.5 * saved["none"]


def test_actor_updates_critic_moves_the_critics_in_the_actor_step():
    actor, critics, temperature, _, optimizers, batch, _, actor_step = _nets(
        mistake="actor_updates_critic")
    actor_opt, _, alpha_opt = optimizers
    before = state_hash(critics)
    actor_step(actor, critics, temperature, actor_opt, alpha_opt, batch["obs"], -1.0)
    assert state_hash(critics) != before


def test_alpha_no_detach_writes_the_temperature_losss_grad_into_the_actor():
    """The alpha step alone (the actor loss switched off by alpha=0 and constant critics) still
    moves the actor."""
    grads = {}
    for mistake in ("none", "alpha_no_detach"):
        actor, critics, temperature, _, (actor_opt, _,
                                         alpha_opt), batch, _, actor_step = _nets(mistake=mistake)
        for c in critics:  # Q = 0 everywhere: the actor loss is alpha * logp only
            nn.init.zeros_(c.net[-1].weight), nn.init.zeros_(c.net[-1].bias)
        with torch.no_grad():
            # alpha ~ 1e-13: the actor loss gives (almost) no grad
            temperature.log_alpha.fill_(-30.0)
        actor_step(actor, critics, temperature, actor_opt, alpha_opt, batch["obs"], -1.0)
        grads[mistake] = sum(float(p.grad.abs().sum()) for p in actor.parameters()
                             if p.grad is not None)
    assert grads["none"] < 1e-6 < 1.0 < grads["alpha_no_detach"]


# --- runs ---------------------------------------------------------------------------------------

def test_resume_restores_the_buffer_and_goes_on_to_the_end(tmp_path):
    args = ["learning_starts=100", "eval_every=200", "eval_episodes=1", "hidden=16",
            "batch_size=32", "ckpt_every=200", f"out_dir={tmp_path}", "device=cpu"]
    first = sac.train(compose("sac", ["steps=200", *args]))
    assert first["updates"] == 100
    resumed = sac.train(compose("sac", ["steps=400", *args, "resume=true"]))
    assert resumed["env_steps"] == 400 and resumed["updates"] == 300
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert state["buffer"]["size"] == 400


@pytest.mark.parametrize("mistake", ["target_grad", "actor_updates_critic", "alpha_no_detach"])
def test_every_mistake_runs_to_its_summary_and_trains_other_weights_than_the_pattern(
        tmp_path, mistake):
    """Same seed, same batches. target_grad trains the same weights (every optimizer clears what it
    wrote) but leaves grads on the targets and holds more bytes; the other two train another actor
    than the pattern's. (Each mistake's exact mechanism: the tests above.)"""
    args = ["steps=300", "learning_starts=100", "eval_every=300", "eval_episodes=1", "hidden=16",
            "batch_size=32", "probe_every=10", "device=cpu"]
    runs = {m: sac.train(compose("sac", [*args, f"mistake={m}", f"out_dir={tmp_path / m}"]))
            for m in ("none", mistake)}
    assert runs[mistake]["target_grad_seen"] is (mistake == "target_grad")
    assert runs["none"]["target_grad_seen"] is False
    assert runs[mistake]["updates"] == runs["none"]["updates"] == 200
    actors = [torch.load(tmp_path / m / "checkpoints" / "last.pt",
                         weights_only=True)["actor"] for m in runs]
    moved = any(not torch.equal(actors[0][k], actors[1][k]) for k in actors[0])
    assert moved is (mistake != "target_grad")
    if mistake == "target_grad":
        assert runs[mistake]["saved_bytes_per_update"] > runs["none"]["saved_bytes_per_update"]


@pytest.mark.gpu
def test_gpu_smoke(tmp_path):
    s = sac.train(compose("sac", ["device=cuda", "steps=300", "learning_starts=100",
                                  "eval_every=300", "eval_episodes=1", "hidden=16", "batch_size=32",
                                  "probe_every=10", f"out_dir={tmp_path}"]))
    assert s["device"].startswith("cuda") and s["target_grad_seen"] is False


@pytest.mark.gpu
def test_compile_true_on_cuda_replays_graphs_and_keeps_the_stop_gradients(tmp_path):
    """compile=true on a GPU (torch.compile's CUDA graphs): the run finishes, the target critics
    still never get .grad, and the update's probe still measures saved bytes."""
    s = sac.train(compose("sac", ["device=cuda", "compile=true", "steps=400", "learning_starts=100",
                                  "eval_every=400", "eval_episodes=2", "hidden=32", "batch_size=64",
                                  "probe_every=10", f"out_dir={tmp_path}"]))
    assert s["device"].startswith("cuda") and s["env_steps"] == 400
    assert s["target_grad_seen"] is False and s["saved_bytes_per_update"] > 0
    assert math.isfinite(s["eval_return_mean"])


# --- this example's row of the check table (tests/test_check.py) ---

def check_step(mistake: str) -> None:
    """This example's step under gallery.check, for the check table in tests/test_check.py: the
    pattern passes every check; each mistake fails with its `caught` sentence."""
    torch.manual_seed(0)
    variant = sac.BY_MISTAKE[mistake]
    actor = sac.Actor(3, 1, 16, np.array([-2.0]), np.array([2.0]))
    critics = nn.ModuleList([sac.Critic(3, 1, 16) for _ in range(2)])
    temperature = sac.Temperature()
    targets = variant.make_targets(critics)
    disjoint(critics=critics, target_critics=targets)
    actor_opt, critic_opt, alpha_opt = variant.make_optimizers(actor, critics, temperature, 1e-3)
    batch = {"obs": torch.randn(8, 3), "next_obs": torch.randn(8, 3), "actions": torch.rand(8, 1),
             "rewards": torch.randn(8), "terminated": torch.zeros(8)}
    with no_grad_reaches(target_critics=targets):
        variant.critic_step(critics, targets, actor, critic_opt, batch, 0.2, 0.99)
    with no_grad_reaches(critics=critics):
        variant.actor_step(actor, critics, temperature, actor_opt, alpha_opt, batch["obs"],
                                 -1.0)
