"""gallery/lm.py, the character language model grpo and dpo share: its cached sampler draws what
the uncached one draws, its incremental log-probs are the full forward's, and a checkpoint of the
old layout (nn.TransformerEncoder's) loads into it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gallery import lm


def sample_uncached(model, seq, length):
    """lm.sample without its cache: the whole prefix through the model for every new character,
    the reference the cached sampler must match."""
    for _ in range(length):
        seq = torch.cat([seq, lm.draw(model(seq)[:, -1])[0]], 1)
    return seq


def model(dropout: float = 0.0, seed: int = 0) -> lm.CharTransformer:
    torch.manual_seed(seed)
    return lm.CharTransformer(30, 32, 2, 4, 40, dropout)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_cached_sampler_draws_exactly_what_the_uncached_one_draws(seed):
    policy, prompts = model(seed=seed), torch.randint(30, (16, 8))
    with torch.no_grad():
        torch.manual_seed(seed)
        cached = lm.sample(policy, prompts, 32)
        torch.manual_seed(seed)
        uncached = sample_uncached(policy, prompts, 32)
    assert torch.equal(cached, uncached)


def test_the_sampler_gives_the_log_probs_the_full_forward_gives_its_characters():
    """grpo's old log-probs are the ones each character was drawn with: they must be the ones the
    policy's full forward (completion_logprobs) gives the same sequence."""
    policy, prompts = model(seed=3), torch.randint(30, (16, 8))
    with torch.no_grad():
        seq, drawn = lm.sample_with_logprobs(policy, prompts, 32)
        full = lm.completion_logprobs(policy, seq, 8)
    assert drawn.shape == full.shape == (16, 32)
    assert (drawn - full).abs().max() < 1e-5


def test_a_draw_follows_the_softmax_and_never_picks_a_character_of_probability_zero():
    probs = torch.tensor([0.5, 0.0, 0.3, 0.15, 0.05, 0.0])
    logits = probs.log().expand(100_000, -1)
    torch.manual_seed(0)
    chosen, logp = lm.draw(logits)
    counts = torch.bincount(chosen.view(-1), minlength=6) / len(chosen)
    assert counts[1] == counts[5] == 0
    assert (counts - probs).abs().max() < 0.005  # 100,000 draws: about 3 standard errors
    assert torch.allclose(logp.view(-1), probs.log()[chosen.view(-1)])


def test_the_cached_forward_gives_the_full_forwards_log_probs():
    policy = model()
    seq = torch.randint(30, (8, 40))
    with torch.no_grad():
        full = F.log_softmax(policy(seq), -1)
        cache = policy.new_cache()
        steps = [policy(seq[:, :8], cache), *(policy(seq[:, i:i + 1], cache)
                                              for i in range(8, seq.shape[1]))]
        incremental = F.log_softmax(torch.cat(steps, 1), -1)
    assert (full - incremental).abs().max() < 1e-5


def test_a_checkpoint_of_the_old_layout_loads_and_computes_the_same():
    """The model was nn.TransformerEncoder's layers: its parameters keep their names and their
    initialisation, so an old checkpoint loads, and in train mode the forward is the same."""
    torch.manual_seed(0)
    embed, position = nn.Embedding(30, 32), nn.Embedding(40, 32)
    layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True, norm_first=True)
    blocks = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    norm, head = nn.LayerNorm(32), nn.Linear(32, 30)
    old = {**{f"embed.{k}": v for k, v in embed.state_dict().items()},
           **{f"position.{k}": v for k, v in position.state_dict().items()},
           **{f"blocks.{k}": v for k, v in blocks.state_dict().items()},
           **{f"norm.{k}": v for k, v in norm.state_dict().items()},
           **{f"head.{k}": v for k, v in head.state_dict().items()}}
    new = model()  # the same seed: the same initial weights, name by name
    assert all(torch.equal(old[k], v) for k, v in new.state_dict().items())
    new.load_state_dict(old)
    ids = torch.randint(30, (4, 12))
    mask = nn.Transformer.generate_square_subsequent_mask(12)
    h = embed(ids) + position(torch.arange(12))
    expected = head(norm(blocks(h, mask=mask, is_causal=True)))
    assert torch.allclose(new(ids), expected, atol=1e-6)


def test_a_cached_forward_takes_one_new_character_at_a_time():
    policy = model()
    cache = policy.new_cache()
    policy(torch.randint(30, (2, 4)), cache)
    with pytest.raises(ValueError, match="one new character at a time"):
        policy(torch.randint(30, (2, 3)), cache)
