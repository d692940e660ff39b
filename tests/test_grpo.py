from unittest import mock

import pytest
import torch

from gallery import grpo, lm
from gallery.check import constant, disjoint
from gallery.core.cli import compose
from gallery.core.errors import ExplainedMistake
from gallery.core.probes import state_hash
from tests.conftest import run_here, run_module

SMOKE = [*grpo.EXAMPLE.smoke, "device=cpu"]


def tiny(seed: int = 0):
    """A 10-character policy, its frozen reference, prompts and the target characters."""
    torch.manual_seed(seed)
    policy = lm.CharTransformer(10, 16, 1, 2, 12)
    return policy, torch.randint(10, (3, 4)), torch.tensor([1, 2, 3])


def test_the_rollout_is_data_and_the_reference_is_frozen():
    policy, prompts, targets = tiny()
    reference = grpo.make_reference(policy)
    batch = grpo.rollout(policy, reference, prompts, 4, 8, targets)
    assert batch["seq"].shape == (12, 12)
    for key in ("old_logprobs", "ref_logprobs", "advantages", "rewards"):
        assert batch[key].grad_fn is None and not batch[key].requires_grad, key
    assert not any(p.requires_grad for p in reference.parameters()) and not reference.training
    # group-relative: each group's advantages sum to zero
    assert torch.allclose(batch["advantages"].view(3, 4).sum(1), torch.zeros(3), atol=1e-4)


def test_in_the_first_pass_the_ratio_is_one_and_its_gradient_is_the_policy_gradient():
    """exp(logp - old) with old == logp.detach() in value: the loss is the plain policy-gradient
    loss, value and gradient alike (beta=0)."""
    policy, prompts, targets = tiny()
    batch = grpo.rollout(policy, grpo.make_reference(policy), prompts, 4, 8, targets)
    logp = grpo.completion_logprobs(policy, batch["seq"], 4)
    loss, clipped = grpo.grpo_loss(logp, batch["old_logprobs"], batch["ref_logprobs"],
                                   batch["advantages"], 0.2, 0.0)
    ours = torch.autograd.grad(loss, list(policy.parameters()), retain_graph=True)
    plain = -(logp * batch["advantages"][:, None]).mean(1).mean()
    reinforce = torch.autograd.grad(plain, list(policy.parameters()))
    assert float(clipped) == 0.0
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(ours, reinforce))


def test_old_logprobs_with_grad_gives_the_policy_no_gradient_so_it_never_moves():
    policy, prompts, targets = tiny()
    batch = grpo.rollout(policy, grpo.make_reference(policy), prompts, 4, 8, targets)
    before = state_hash(policy)
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-2)
    grpo.grpo_update_old_logprobs_with_grad(policy, optimizer, batch, 0.2, 0.0, 3, 4)
    assert state_hash(policy) == before  # zero gradient, zero Adam step
    grpo.grpo_update(policy, optimizer, batch, 0.2, 0.0, 3, 4)
    assert state_hash(policy) != before


def test_old_logprobs_recomputed_never_clips_while_the_pattern_does_in_later_passes():
    policy, prompts, targets = tiny()
    batch = grpo.rollout(policy, grpo.make_reference(policy), prompts, 4, 8, targets)
    twin = lm.CharTransformer(10, 16, 1, 2, 12)
    twin.load_state_dict(policy.state_dict())
    _, pattern = grpo.grpo_update(policy, torch.optim.Adam(policy.parameters(), lr=3e-2), batch,
                                  0.2, 0.0, 4, 4)
    _, recomputed = grpo.grpo_update_old_logprobs_recomputed(
        twin, torch.optim.Adam(twin.parameters(), lr=3e-2), batch, 0.2, 0.0, 4, 4)
    assert float(pattern[0]) == 0.0 and float(pattern[-1]) > 0.0
    assert [float(c) for c in recomputed] == [0.0] * 4


def test_reference_with_grad_collects_grad_with_one_pass_and_raises_with_two():
    steps = grpo.BY_MISTAKE["reference_with_grad"]
    policy, prompts, targets = tiny()
    reference = steps.make_reference(policy)
    batch = steps.rollout(policy, reference, prompts, 4, 8, targets)
    optimizer = torch.optim.Adam(policy.parameters())
    grpo.grpo_update(policy, optimizer, batch, 0.2, 0.1, 1, 4)
    assert any(p.grad is not None for p in reference.parameters())
    batch = steps.rollout(policy, reference, prompts, 4, 8, targets)
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        grpo.grpo_update(policy, optimizer, batch, 0.2, 0.1, 2, 4)


def test_the_k1_loss_gradient_is_zero_in_expectation_and_k3_pulls_toward_the_reference():
    """On one categorical distribution against another, averaged over many samples: the k1
    loss's gradient is about zero; the k3 loss's is the gradient of the exact KL(ref || policy),
    which points the same way as that of KL(policy || ref) and vanishes only at the reference."""
    torch.manual_seed(0)
    logits, ref = torch.randn(6, requires_grad=True), torch.log_softmax(torch.randn(6), 0)
    logp_all = torch.log_softmax(logits, 0)
    samples = torch.multinomial(logp_all.exp().detach(), 200_000, replacement=True)
    logp = logp_all[samples]
    (k1,) = torch.autograd.grad((logp - ref[samples]).mean(), logits, retain_graph=True)
    r = ref[samples] - logp
    (k3,) = torch.autograd.grad((torch.exp(r) - r - 1).mean(), logits, retain_graph=True)
    (reverse,) = torch.autograd.grad((ref.exp() * (ref - logp_all)).sum(), logits,
                                     retain_graph=True)
    (forward,) = torch.autograd.grad((logp_all.exp() * (logp_all - ref)).sum(), logits)
    assert k1.abs().max() < 0.02 < forward.abs().max()
    assert torch.allclose(k3, reverse, atol=0.02)
    assert float(k3 @ forward) > 0


def test_a_short_run_learns_and_reports(tmp_path):
    s = grpo.train(compose("grpo", [*SMOKE, f"out_dir={tmp_path}"]))
    assert grpo.EXAMPLE.check(s) is None
    assert len(s["clip_fraction_per_pass"]) == 4 and s["exact_kl"] >= 0.0
    assert (tmp_path / "reward_and_kl.png").is_file()


def test_the_pretrained_model_is_cached_per_seed(tmp_path):
    overrides = [*SMOKE, f"pretrain_dir={tmp_path}/cache"]
    grpo.train(compose("grpo", [*overrides, f"out_dir={tmp_path}/a"]))
    cached = list((tmp_path / "cache").glob("seed0-*/last.pt"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    grpo.train(compose("grpo", [*overrides, f"out_dir={tmp_path}/b"]))
    assert cached[0].stat().st_mtime_ns == stamp  # read, not trained again


def test_a_mistake_that_raises_is_one_line_exit_2_and_keeps_nothing(tmp_path):
    """On the command line: the explanation, exit 2, no folder left; the next run goes there."""
    ran = run_here("gallery.grpo", *SMOKE, "mistake=reference_with_grad", "passes=2",
                   f"out_dir={tmp_path}/run")
    assert ran.returncode == 2 and "mistake=reference_with_grad" in ran.stderr, ran.stderr
    assert ran.stderr.strip().endswith("nothing was kept")
    assert len(ran.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()
    assert run_here("gallery.grpo", *SMOKE, f"out_dir={tmp_path}/run").returncode == 0


def test_reference_with_grad_and_several_passes_is_explained(tmp_path):
    with pytest.raises(ExplainedMistake, match="mistake=reference_with_grad"):
        grpo.train(compose("grpo", [*SMOKE, "mistake=reference_with_grad", "passes=2",
                                    f"out_dir={tmp_path}"]))


@pytest.mark.parametrize("override,message", [
    ("heads=3", "d_model=64 must be a multiple of heads=3"),
    ("completion_len=500000", "prompt_len + completion_len = 500008 must be shorter than the text"),
    ("target_chars='\u2603'", "no character of it is in the text"),
    ("target_chars=\u2603", "quote it: target_chars='\u2603'"),
])
def test_keys_the_model_or_the_text_cannot_take_are_one_line_and_exit_2(tmp_path, override,
                                                                         message):
    ran = run_here("gallery.grpo", *SMOKE, override, f"out_dir={tmp_path}/run")
    assert ran.returncode == 2 and message in ran.stderr, ran.stderr
    assert len(ran.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def test_no_pretraining_keeps_the_untrained_model(tmp_path):
    s = grpo.train(compose("grpo", [*SMOKE, "pretrain_steps=0", f"pretrain_dir={tmp_path}/cache",
                                    f"out_dir={tmp_path}/run"]))
    assert s["reward_at_start"] >= 0 and s["exact_kl"] >= 0  # it ran, from the untrained model
    assert list((tmp_path / "cache").glob("seed0-*/last.pt"))


def test_the_command_line_runs_the_pattern(tmp_path):
    proc = run_module("gallery.grpo", *SMOKE, f"out_dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "exact_kl" in proc.stdout


# --- this example's row of the check table (tests/test_check.py) ---

def check_step(mistake: str) -> None:
    """This example's step under gallery.check: the pattern passes every check; each mistake fails
    with its `caught` sentence."""
    steps = grpo.BY_MISTAKE[mistake]
    policy, prompts, targets = tiny()
    reference = steps.make_reference(policy)
    disjoint(policy=policy, reference=reference)
    batch = steps.rollout(policy, reference, prompts, 4, 8, targets)
    constant(ref_logprobs=batch["ref_logprobs"], advantages=batch["advantages"])
    seen = []

    def watched(loss):  # what each pass hands its loss as the old log-probs
        def loss_with_its_inputs_seen(logp, old, *args):
            seen.append(old)
            return loss(logp, old, *args)
        return loss_with_its_inputs_seen

    with mock.patch.object(grpo, "grpo_loss", watched(grpo.grpo_loss)), \
            mock.patch.object(grpo, "grpo_loss_k1_kl_loss", watched(grpo.grpo_loss_k1_kl_loss)):
        steps.update(policy, torch.optim.Adam(policy.parameters()), batch, 0.2, 0.1, 2, 4)
    constant(old_logprobs=seen)


# --- against TRL (a peer, installed by scripts/test.sh --peers, never a dependency) ------------

def _trl():
    """The trl package from its peer folder (scripts/test.sh --peers installs it there)."""
    import sys

    from scripts.measure.peers import installed

    folder = installed("trl")
    assert folder is not None, "TRL is not installed: scripts/test.sh --peers installs it first"
    sys.path.insert(0, str(folder))
    import trl

    return trl


class _OneProcess:
    """What TRL's loss asks of its accelerator, for one process: every reduction is the identity."""

    def gather(self, tensor):
        return tensor

    def reduce(self, tensor, reduction="sum"):
        return tensor

    gather_for_metrics = gather


@pytest.mark.peer
def test_our_grpo_loss_is_trls_in_value_and_gradient():
    """TRL's GRPOTrainer._compute_loss (loss_type="grpo", token-level ratios, beta > 0), called on
    the same log-probs, old log-probs, reference log-probs, advantages and completion masks (of
    unequal lengths) as `grpo_loss`: the clipped ratio, the k3 KL and the mean over each
    completion's own characters agree in value and in gradient."""
    from collections import defaultdict
    from types import SimpleNamespace

    GRPOTrainer = _trl().GRPOTrainer  # noqa: N806 (TRL's class)

    torch.manual_seed(0)
    n, t, clip, beta = 12, 9, 0.2, 0.3
    logp_leaf = (torch.randn(n, t) * 0.5 - 2.0).requires_grad_(True)
    old = (logp_leaf + 0.3 * torch.randn(n, t)).detach()  # ratios on both sides of the clip
    ref, advantages = (logp_leaf + 0.5 * torch.randn(n, t)).detach(), torch.randn(n)
    lengths = torch.tensor([9, 3, 5, 9, 1, 7, 9, 2, 8, 9, 4, 6])  # completions end at their stop
    mask = (torch.arange(t)[None] < lengths[:, None]).long()
    ours, _ = grpo.grpo_loss(logp_leaf, old, ref, advantages, clip, beta, mask)
    (our_grad,) = torch.autograd.grad(ours, logp_leaf)

    trainer = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (logp_leaf, torch.zeros(n, t), None),
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level="token",
        beta=beta, args=SimpleNamespace(use_bias_correction_kl=False, delta=None),
        loss_type="grpo", epsilon_low=clip, epsilon_high=clip, use_vllm=False,
        vllm_importance_sampling_correction=False, model=SimpleNamespace(training=True),
        current_gradient_accumulation_steps=1, _entropy_bonus_enabled=False,
        aux_loss_enabled=False, _metrics=defaultdict(lambda: defaultdict(list)),
        accelerator=_OneProcess())
    inputs = {"prompt_ids": torch.zeros(n, 3, dtype=torch.long),
              "prompt_mask": torch.ones(n, 3, dtype=torch.long),
              "completion_ids": torch.zeros(n, t, dtype=torch.long),
              "completion_mask": mask,
              "advantages": advantages, "old_per_token_logps": old, "ref_per_token_logps": ref}
    theirs = GRPOTrainer._compute_loss(trainer, None, inputs)
    (their_grad,) = torch.autograd.grad(theirs, logp_leaf)
    assert float((ratio := torch.exp(logp_leaf - old)).min()) < 1 - clip < 1 + clip < float(
        ratio.max())  # the clip is active on both sides
    assert torch.allclose(ours, theirs, atol=1e-6)
    assert torch.allclose(our_grad, their_grad, atol=1e-7)
    # and neither the k1 mistake nor the padding counted is TRL's loss
    k1, _ = grpo.grpo_loss_k1_kl_loss(logp_leaf, old, ref, advantages, clip, beta, mask)
    unmasked, _ = grpo.grpo_loss(logp_leaf, old, ref, advantages, clip, beta)
    assert not torch.allclose(unmasked, theirs, atol=1e-3)
    assert not torch.allclose(k1, theirs, atol=1e-3)
