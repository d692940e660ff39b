import math

import pytest
import torch

from gallery import dpo, lm
from gallery.check import disjoint, no_grad_reaches, runs_in_eval_mode, unchanged
from gallery.core.cli import compose
from gallery.core.probes import SavedTensorMeter, state_hash
from tests.conftest import run_here, run_module

SMOKE = [*dpo.EXAMPLE.smoke, "device=cpu"]
STOP = torch.tensor([0])  # character 0 ends a completion


def tiny(seed: int = 0):
    """A 10-character policy with dropout, and a batch of 6 pairs of 4-character prompts and
    8-character completions, each cut at its first stop character and padded with it."""
    torch.manual_seed(seed)
    policy = lm.CharTransformer(10, 16, 1, 2, 12, dropout=0.2)
    seq = torch.randint(1, 10, (12, 12))
    seq[::3, 7] = 0  # every third completion stops after 4 characters
    mask = dpo.completion_mask(seq, 4, STOP)
    seq[:, 4:] = torch.where(mask.bool(), seq[:, 4:], 0)
    return policy, {"chosen": seq[:6], "rejected": seq[6:], "chosen_mask": mask[:6],
                    "rejected_mask": mask[6:]}


def test_a_completion_ends_at_its_first_stop_character_and_padding_is_not_scored():
    seq = torch.tensor([[5, 5, 1, 0, 2, 0], [5, 5, 1, 2, 3, 4]])
    assert dpo.completion_mask(seq, 2, STOP).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    policy, batch = tiny()
    policy.eval()
    padded = batch["chosen"].clone()
    padded[0, 8:] = 7  # other characters after the stop
    masked = [dpo.sequence_logprobs(policy, s, batch["chosen_mask"], 4)
              for s in (batch["chosen"], padded)]
    unmasked = [dpo.completion_logprobs(policy, s, 4).sum(1)  # dpo_step_unmasked_logprobs's
                for s in (batch["chosen"], padded)]
    assert torch.equal(masked[0], masked[1])
    assert not torch.allclose(unmasked[0][0], unmasked[1][0])


def test_the_reference_is_frozen_in_eval_mode_and_its_logprobs_are_constants():
    policy, batch = tiny()
    reference = dpo.make_reference(policy)
    assert not reference.training and not any(p.requires_grad for p in reference.parameters())
    first, second = dpo.reference_logprobs(reference, batch, 4), dpo.reference_logprobs(
        reference, batch, 4)
    assert all(t.grad_fn is None for t in first) and torch.equal(first[0], second[0])
    before = state_hash(reference)
    dpo.dpo_step(policy, reference, torch.optim.Adam(policy.parameters()), batch, 0.1, 4)
    assert state_hash(reference) == before
    assert all(p.grad is None for p in reference.parameters())


def test_at_the_reference_the_loss_is_log_2_and_its_gradient_raises_chosen_over_rejected():
    policy, batch = tiny()
    policy.eval()
    ref = dpo.reference_logprobs(dpo.make_reference(policy), batch, 4)
    chosen = dpo.sequence_logprobs(policy, batch["chosen"], batch["chosen_mask"], 4)
    rejected = dpo.sequence_logprobs(policy, batch["rejected"], batch["rejected_mask"], 4)
    loss = dpo.dpo_loss(chosen, rejected, *ref, beta=0.5)
    assert math.isclose(loss.item(), math.log(2), rel_tol=1e-6)
    g_chosen, g_rejected = torch.autograd.grad(loss, [chosen, rejected])
    assert (g_chosen < 0).all() and (g_rejected > 0).all()  # descent raises chosen, lowers rejected


def test_preference_pairs_choose_the_larger_share_of_targets_and_drop_ties():
    policy, _ = tiny()
    cfg = dpo.DpoConfig(prompt_len=4, completion_len=8)
    targets = torch.tensor([1, 2, 3])
    pairs = dpo.preference_pairs(policy, torch.randint(1, 10, (40, 4)), cfg, STOP, targets)
    chosen = dpo.rewards(pairs["chosen"], pairs["chosen_mask"], 4, targets)
    rejected = dpo.rewards(pairs["rejected"], pairs["rejected_mask"], 4, targets)
    assert 0 < len(chosen) <= 40 and (chosen > rejected).all()
    assert torch.equal(pairs["chosen"][:, :4], pairs["rejected"][:, :4])  # one prompt per pair


def test_reference_is_policy_has_margin_zero_so_the_loss_is_log_2_and_no_pair_is_won():
    policy, batch = tiny()
    policy.eval()
    reference = dpo.make_reference_is_policy(policy)
    ref = dpo.reference_logprobs(reference, batch, 4)
    for _ in range(3):  # however far the policy moves
        dpo.dpo_step(policy, reference, torch.optim.Adam(policy.parameters(), lr=1e-2), batch,
                     0.5, 4)
        ref = dpo.reference_logprobs(reference, batch, 4)
        chosen = dpo.sequence_logprobs(policy, batch["chosen"], batch["chosen_mask"], 4)
        rejected = dpo.sequence_logprobs(policy, batch["rejected"], batch["rejected_mask"], 4)
        assert math.isclose(dpo.dpo_loss(chosen, rejected, *ref, 0.5).item(), math.log(2),
                            rel_tol=1e-6)


def test_reference_with_grad_writes_grad_into_the_reference_and_holds_its_graph():
    steps = dpo.BY_MISTAKE["reference_with_grad"]
    policy, batch = tiny()
    reference = steps.make_reference(policy)
    with SavedTensorMeter() as held:
        steps.step(policy, reference, torch.optim.Adam(policy.parameters()), batch, 0.1, 4)
    assert any(p.grad is not None for p in reference.parameters())
    pattern = tiny()[0]
    frozen = dpo.make_reference(pattern)
    with SavedTensorMeter() as kept:
        dpo.dpo_step(pattern, frozen, torch.optim.Adam(pattern.parameters()), batch, 0.1, 4)
    assert held.total > kept.total and all(p.grad is None for p in frozen.parameters())


def test_reference_train_mode_gives_the_same_pair_another_value_on_each_call():
    policy, batch = tiny()
    noisy = dpo.make_reference_train_mode(policy)
    first, second = dpo.reference_logprobs(noisy, batch, 4), dpo.reference_logprobs(
        noisy, batch, 4)
    assert not torch.allclose(first[0], second[0])


def test_a_short_run_learns_and_reports(tmp_path):
    s = dpo.train(compose("dpo", [*SMOKE, f"out_dir={tmp_path}"]))
    assert dpo.EXAMPLE.check(s) is None
    assert s["reference_noise"] == 0 and s["pairs"] > 0 and 0 <= s["held_out_accuracy"] <= 1
    assert (tmp_path / "dpo_curves.png").is_file()


def test_a_run_that_pretrains_first_starts_where_one_that_reads_the_cache_does(tmp_path):
    """Pretraining's dropout must leave the global RNG as it found it: the pairs sampled next are
    the same either way."""
    overrides = [*SMOKE, f"pretrain_dir={tmp_path}/cache"]
    first = dpo.train(compose("dpo", [*overrides, f"out_dir={tmp_path}/a"]))
    cached = dpo.train(compose("dpo", [*overrides, f"out_dir={tmp_path}/b"]))
    assert first["reward_at_start"] == cached["reward_at_start"]
    assert first["final_loss"] == cached["final_loss"]


@pytest.mark.parametrize("override,message", [
    ("heads=3", "d_model=64 must be a multiple of heads=3"),
    ("stop_chars=''", "stop_chars must name at least one character"),
    ("dropout=1.5", "dropout"),
])
def test_keys_the_model_cannot_take_are_one_line_and_exit_2(tmp_path, override, message):
    ran = run_here("gallery.dpo", *SMOKE, override, f"out_dir={tmp_path}/run")
    assert ran.returncode == 2 and message in ran.stderr, ran.stderr
    assert len(ran.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def test_the_command_line_runs_the_pattern(tmp_path):
    proc = run_module("gallery.dpo", *SMOKE, f"out_dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "held_out_accuracy" in proc.stdout


# --- this example's row of the check table (tests/test_check.py) ---

def check_step(mistake: str) -> None:
    """This example's step under gallery.check: the pattern passes every check; each mistake fails
    with its `caught` sentence."""
    steps = dpo.BY_MISTAKE[mistake]
    policy, batch = tiny()
    reference = steps.make_reference(policy)
    disjoint(policy=policy, reference=reference)
    with runs_in_eval_mode(reference=reference), no_grad_reaches(reference=reference), \
            unchanged(reference=reference):
        steps.step(policy, reference, torch.optim.Adam(policy.parameters()), batch, 0.1, 4)


# --- against TRL (a peer, installed by scripts/test.sh --peers, never a dependency) ------------

@pytest.mark.peer
def test_our_dpo_loss_is_trls_in_value_and_gradient_on_completions_of_unequal_lengths():
    """TRL's DPOTrainer._compute_loss (the sigmoid loss, reference log-probs precomputed), given a
    model whose per-token log-probs come from the same logits as ours: the masked sums, the margin
    and -logsigmoid(beta * margin) agree in value and in gradient, with padding after each
    completion's stop."""
    from collections import defaultdict
    from types import SimpleNamespace

    from tests.test_grpo import _OneProcess, _trl

    DPOTrainer = _trl().DPOTrainer  # noqa: N806 (TRL's class)

    torch.manual_seed(0)
    n, prompt_len, length, vocab, beta = 4, 3, 7, 9, 0.2
    seq = torch.randint(1, vocab, (2 * n, prompt_len + length))
    seq[[0, 3, 5], [5, 8, 4]] = 0  # three completions stop early, at different places
    mask = dpo.completion_mask(seq, prompt_len, STOP)
    seq[:, prompt_len:] = torch.where(mask.bool(), seq[:, prompt_len:], 0)
    assert len(set(mask.sum(1).tolist())) > 1
    logits = torch.randn(2 * n, seq.shape[1] - 1, vocab, requires_grad=True)  # predicts seq[:, 1:]
    ref = torch.randn(2 * n)

    per_token = torch.log_softmax(logits, -1).gather(-1, seq[:, 1:, None]).squeeze(-1)
    ours_logps = (per_token[:, prompt_len - 1:] * mask).sum(1)
    ours = dpo.dpo_loss(*ours_logps.chunk(2), *ref.chunk(2), beta)
    (our_grad,) = torch.autograd.grad(ours, logits)

    def model(input_ids, labels, **_):  # a causal LM's fused head: log-probs of the labels
        shifted = labels[:, 1:]
        logp = torch.log_softmax(logits, -1).gather(-1, shifted.clamp(min=0)[..., None])
        zeros = torch.zeros(shifted.shape)
        return SimpleNamespace(log_probs=logp.squeeze(-1) * (shifted != -100), entropy=zeros,
                               mean_logits=zeros, is_top1=zeros.bool())

    trainer = SimpleNamespace(
        model=SimpleNamespace(training=True), accelerator=_OneProcess(), aux_loss_enabled=False,
        ld_alpha=None, precompute_ref_logps=True, f_divergence_type="reverse_kl",
        loss_types=["sigmoid"], loss_weights=[1.0], beta=beta, use_weighting=False,
        _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0, _tp_size=1)
    trainer.accelerator.device = torch.device("cpu")
    completion_mask = torch.cat([torch.zeros(2 * n, prompt_len, dtype=torch.long),
                                 mask.long()], 1)
    inputs = {"input_ids": seq, "attention_mask": torch.ones_like(seq),
              "completion_mask": completion_mask, "ref_chosen_logps": ref[:n],
              "ref_rejected_logps": ref[n:]}
    theirs = DPOTrainer._compute_loss(trainer, model, inputs, return_outputs=False)
    (their_grad,) = torch.autograd.grad(theirs, logits)
    assert torch.allclose(ours, theirs, atol=1e-6)
    assert torch.allclose(our_grad, their_grad, atol=1e-7)
    # and the unmasked mistake is not TRL's loss
    unmasked = per_token[:, prompt_len - 1:].sum(1)
    assert not torch.allclose(dpo.dpo_loss(*unmasked.chunk(2), *ref.chunk(2), beta), theirs,
                              atol=1e-3)


@pytest.mark.parametrize("override,message", [
    ("target_chars='~'", "pairs=16: every sampled pair scored the same share of "  # held_out_
                         "target_chars='~', so no preference pair is left"),
    ("beta=0", "beta must be > 0"),
])
def test_a_setting_that_can_never_train_is_one_line_and_exit_2(tmp_path, override, message):
    ran = run_here("gallery.dpo", *SMOKE, override, f"out_dir={tmp_path}/run")
    assert ran.returncode == 2 and message in ran.stderr, ran.stderr[-2000:]
    assert len(ran.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()
