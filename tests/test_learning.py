"""Learning gates: fixed seeds, default configs, marked slow (CI still runs them).

The full targets (every seed each example's EXAMPLE.gate names) are checked by scripts/gates.py;
these run the subset that fits the test budget: seed 0 or seeds 0-2 of each example.
"""

import pytest

from gallery import (
    a2c,
    accumulate,
    distill,
    dpo,
    dqn,
    ema,
    evaluate,
    finetune,
    gan,
    grpo,
    maml,
    ppo,
    sac,
    simsiam,
    tbptt,
    vqvae,
)
from gallery.core.cli import compose

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ring8_seed0(tmp_path_factory):
    out = tmp_path_factory.mktemp("ring8")
    return gan.train(compose("gan", ["device=cpu", "seed=0", f"out_dir={out}"]))


def test_gan_one_config_covers_ring8_and_grid25_with_sharp_samples(ring8_seed0, tmp_path):
    grid = gan.train(compose("gan", ["device=cpu", "seed=0", "data=grid25", f"out_dir={tmp_path}"]))
    assert ring8_seed0["modes_covered"] == 8 and ring8_seed0["high_quality_frac"] >= 0.85
    # seed 0 gave 0.872; seeds 0-4: 0.804-0.882
    assert grid["modes_covered"] >= 24 and grid["high_quality_frac"] >= 0.8
    assert ring8_seed0["g_grad_norm_after_d_step"] == 0.0
    assert grid["g_grad_norm_after_d_step"] == 0.0


def test_gan_shared_zero_grad_is_worse_than_the_pattern_on_the_same_seed(ring8_seed0, tmp_path):
    mistake = gan.train(compose("gan", ["device=cpu", "seed=0", f"out_dir={tmp_path}",
                                        "mistake=retain_graph_shared_zero_grad"]))
    assert (mistake["modes_covered"] < ring8_seed0["modes_covered"]
            or mistake["high_quality_frac"] < ring8_seed0["high_quality_frac"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dqn_solves_cartpole_within_50k_steps(tmp_path, seed):
    summary = dqn.train(compose("dqn", ["device=cpu", f"seed={seed}", f"out_dir={tmp_path}"]))
    assert summary["first_solved_step"] is not None and summary["first_solved_step"] <= 50_000
    if seed == 0:
        assert summary["first_solved_step"] <= 20_000  # the budget the no_target test gets
    assert summary["eval_return_mean"] >= 475 and summary["target_grad_seen"] is False


def test_dqn_no_target_does_not_solve_in_the_budget_the_pattern_needs(tmp_path):
    """The moving-target consequence, on seed 0: the pattern solves by 20k env steps (see above);
    bootstrapping from the online net does not within the same 20k."""
    summary = dqn.train(compose("dqn", ["device=cpu", "seed=0", f"out_dir={tmp_path}",
                                               "mistake=no_target", "steps=20000"]))
    assert summary["first_solved_step"] is None
    assert max(e["eval_return_mean"] for e in summary["evals"]) < 475


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_finetune_frozen_backbone_reaches_95_percent(tmp_path_factory, seed):
    ckpt = tmp_path_factory.getbasetemp() / "digits_cnn"  # pretrained once, shared by the seeds
    out = tmp_path_factory.mktemp(f"ft{seed}")
    summary = finetune.train(compose("finetune", ["device=cpu", f"seed={seed}", f"out_dir={out}",
                                                  f"backbone.checkpoint_dir={ckpt}"]))
    assert summary["val_acc"] >= 0.95 and summary["backbone_unchanged"] is True


def test_tbptt_pydoc_reaches_the_seeded_bpc(tmp_path):
    summary = tbptt.train(compose("tbptt", ["device=cpu", "seed=0", f"out_dir={tmp_path}",
                                                   "steps=600", "eval_every=600"]))
    assert summary["val_bpc"] <= 2.2


def test_simsiam_keeps_its_output_spread_and_without_the_stop_gradient_collapses(tmp_path):
    """Digits, the default config, seed 0 (scripts/gates.py runs seeds 0-2)."""
    pattern = simsiam.train(compose("simsiam", ["device=cpu", "seed=0", f"out_dir={tmp_path}/p"]))
    assert pattern["output_std_sqrt_d"] >= 0.5
    assert pattern["knn_acc"] >= pattern["knn_random_encoder"] + 0.02
    mistake = simsiam.train(compose("simsiam", ["device=cpu", "seed=0", f"out_dir={tmp_path}/m",
                                                "mistake=no_stop_grad"]))
    assert mistake["output_std_sqrt_d"] <= 0.1 and mistake["loss"] < pattern["loss"]
    assert mistake["knn_acc"] < mistake["knn_random_encoder"] < pattern["knn_acc"]


@pytest.mark.parametrize("seed", [0, 1])
def test_ppo_solves_cartpole_within_100k_steps(tmp_path, seed):
    summary = ppo.train(compose("ppo", ["device=cpu", f"seed={seed}", f"out_dir={tmp_path}"]))
    assert summary["first_solved_step"] is not None and summary["first_solved_step"] <= 100_000
    assert summary["eval_return_mean"] >= 475 and summary["rollout_saved_bytes"] == 0


def test_ppo_truncation_as_terminal_underestimates_values_against_monte_carlo_returns(tmp_path):
    """A 100-step time limit that the policy soon reaches every episode. Ending the episode there
    teaches the critic that values fall off towards the limit, which it cannot see: against
    Monte-Carlo returns of the task run past the limit it underestimates by about 15 (values are
    about 50 at gamma 0.98). Seed 0 measured 3.7 for the pattern and -15.4 for the mistake
    (scripts/gates.py ppo: seeds 0-2)."""
    limit = ["device=cpu", "seed=0", "env.max_episode_steps=100", "stop_when_solved=false",
             "steps=30000"]
    pattern = ppo.train(compose("ppo", [*limit, f"out_dir={tmp_path}/p"]))
    mistake = ppo.train(compose("ppo", [*limit, f"out_dir={tmp_path}/m",
                                        "mistake=truncation_as_terminal"]))
    assert mistake["value_bias"] < -10 and mistake["value_bias"] < pattern["value_bias"] - 10
    assert pattern["eval_return_mean"] == mistake["eval_return_mean"] == 100  # both reach the limit


def test_sac_balances_the_pendulum_within_20k_steps(tmp_path):
    summary = sac.train(compose("sac", ["device=cpu", "seed=0", f"out_dir={tmp_path}"]))
    assert summary["eval_return_mean"] >= -200 and summary["target_grad_seen"] is False


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vqvae_straight_through_reconstructs_and_its_mistakes_show(tmp_path, seed):
    """Digits, the default config. On the machine of docs/gates.json the pattern's held-out MSE is
    about 0.025 against about 0.29 without the straight-through line (an 11x gap where the gate
    asks for 30%), with every code of K in use (the gate asks for half)."""
    base = ["device=cpu", f"seed={seed}"]
    pattern = vqvae.train(compose("vqvae", [*base, f"out_dir={tmp_path}/p"]))
    no_st = vqvae.train(compose("vqvae", [*base, f"out_dir={tmp_path}/n", *vqvae.NO_REVIVAL,
                                          "mistake=no_straight_through"]))
    on_st = vqvae.train(compose("vqvae", [*base, f"out_dir={tmp_path}/c", *vqvae.NO_REVIVAL,
                                          "mistake=codebook_on_st"]))
    assert pattern["recon_mse"] <= 0.7 * no_st["recon_mse"]
    assert pattern["codes_used"] >= 0.5 and not pattern["codebook_unchanged"]
    assert on_st["codebook_unchanged"] is True  # the codebook never moved...
    assert on_st["recon_mse"] < 0.8 * on_st["recon_mse_at_start"]  # ...and the loss still fell


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a2c_solves_cartpole_within_300k_steps(tmp_path, seed):
    """On the machine of docs/gates.json seeds 0-4 solved by 10k-90k env steps: the default budget
    of 300k is about 3x the slowest."""
    summary = a2c.train(compose("a2c", ["device=cpu", f"seed={seed}", f"out_dir={tmp_path}",
                                        "value_check_episodes=0"]))
    assert summary["first_solved_step"] is not None and summary["critic_changed"] is True


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ema_teacher_keeps_up_with_the_student_and_skip_buffers_falls_apart(tmp_path, seed):
    """Digits, 10 labels per class. On the machine of docs/gates.json the EMA and the student end
    within a point of each other (95-97%), and skip_buffers' EMA near chance."""
    base = ["device=cpu", f"seed={seed}"]
    pattern = ema.train(compose("ema", [*base, f"out_dir={tmp_path}/p"]))
    skipped = ema.train(compose("ema", [*base, f"out_dir={tmp_path}/s", "mistake=skip_buffers"]))
    assert pattern["ema_accuracy"] >= pattern["student_accuracy"] - 0.02
    assert pattern["ema_accuracy"] >= 0.9
    assert skipped["ema_accuracy"] <= pattern["ema_accuracy"] - 0.3


def test_grpo_raises_the_reward_within_a_bounded_kl_and_k1_drifts(tmp_path):
    """pydoc, seed 0. On the machine of docs/gates.json the pattern took the reward from 0.26 to
    0.46-0.50 at an exact KL of 0.83-0.88 nats per character; k1_kl_loss ended at 6.3-8.4."""
    base = ["device=cpu", "seed=0", f"pretrain_dir={tmp_path}/cache"]
    pattern = grpo.train(compose("grpo", [*base, f"out_dir={tmp_path}/p"]))
    k1 = grpo.train(compose("grpo", [*base, f"out_dir={tmp_path}/k", "mistake=k1_kl_loss"]))
    assert pattern["reward"] >= pattern["reward_at_start"] + 0.15
    assert pattern["exact_kl"] <= 2.0 and pattern["clip_fraction_per_pass"][-1] >= 0.05
    assert k1["exact_kl"] >= 3 * pattern["exact_kl"]


def test_maml_adapts_far_better_than_the_pretrained_baseline(tmp_path):
    """Sine tasks, seed 0. On the machine of docs/gates.json the pattern's MSE after 10 steps was
    0.50-0.58 against the baseline's 1.78-2.14."""
    pattern = maml.train(compose("maml", ["device=cpu", "seed=0", f"out_dir={tmp_path}/p"]))
    baseline = maml.train(compose("maml", ["device=cpu", "seed=0", "baseline=true",
                                           f"out_dir={tmp_path}/b"]))
    assert pattern["mse_10_steps"] <= 0.5 * baseline["mse_10_steps"]
    assert pattern["meta_gradient_cosine"] >= 0.9999


def test_accumulate_is_the_full_batch_and_clip_scaled_halts(tmp_path):
    """pydoc, seed 0, bf16 with a GradScaler. On the machine of docs/gates.json the pattern ended
    at a validation loss of 1.63-1.66 and clip_scaled at 4.64-4.67 (untrained)."""
    base = ["device=cpu", "seed=0", "amp=true"]
    pattern = accumulate.train(compose("accumulate", [*base, f"out_dir={tmp_path}/p"]))
    scaled = accumulate.train(compose("accumulate", [*base, "mistake=clip_scaled",
                                                     f"out_dir={tmp_path}/m"]))
    assert pattern["grad_rel_error"] <= 1e-5
    assert scaled["val_loss"] >= pattern["val_loss"] + 0.3


def test_vqvae_default_keeps_half_the_codes_alive_at_256_codes(tmp_path):
    """The shipped default revives dead codes after its warm-up: on the machine of
    docs/gates.json, 99% of 256 codes are in use at seed 0, where no revival leaves 15%."""
    s = vqvae.train(compose("vqvae", ["device=cpu", "seed=0", "codebook_size=256",
                                      f"out_dir={tmp_path}"]))
    assert s["codes_used"] >= 0.5 and s["codes_revived"] > 0


@pytest.mark.parametrize("example", [evaluate, distill, dpo],
                         ids=lambda m: m.__name__.split(".")[-1])
def test_the_gate_holds_on_seed_0(tmp_path, example):
    """The example's gate, its own criteria (EXAMPLE.gate.passes), on seed 0 of each of its
    runs."""
    gate, name = example.EXAMPLE.gate, example.EXAMPLE.name
    rows = {label: [example.train(compose(name, [
        "device=cpu", "seed=0", f"mistake={runs.mistake}", *runs.overrides,
        f"out_dir={tmp_path}/{label.replace(' ', '_')}"]))] for label, runs in gate.runs.items()}
    assert gate.passes(rows), {label: {k: r[0].get(k) for k in gate.keys}
                               for label, r in rows.items()}
