"""The character language model grpo and dpo train: the model, its sampling, the log-probs of a
completion, and its pretraining on the text, cached per seed and shape. Library code: the lessons
(what is data, what is frozen, what runs under no_grad) stay in the examples that import it."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from gallery.core.checkpoint import cache_folder, trained_once
from gallery.core.run import progress
from gallery.data.text import CharVocab, text_windows


class CharTransformer(nn.Module):
    """A causal character-level transformer: a few pre-norm layers, learned positions."""

    def __init__(self, vocab: int, d_model: int, layers: int, heads: int, context: int,
                 dropout: float = 0.0):
        super().__init__()
        self.embed, self.position = nn.Embedding(vocab, d_model), nn.Embedding(context, d_model)
        layer = nn.TransformerEncoderLayer(d_model, heads, 2 * d_model, dropout=dropout,
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm, self.head = nn.LayerNorm(d_model), nn.Linear(d_model, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # (N, T) -> logits (N, T, vocab)
        t = ids.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(t, device=ids.device)
        h = self.embed(ids) + self.position(torch.arange(t, device=ids.device))
        return self.head(self.norm(self.blocks(h, mask=mask, is_causal=True)))


def sample(model, seq, length):
    """`seq` (N, T) continued by `length` characters, each drawn from the model's next-character
    distribution. The caller decides whether a graph is built (grpo's and dpo's sampling run under
    no_grad)."""
    for _ in range(length):
        probs = F.softmax(model(seq)[:, -1], dim=-1)
        seq = torch.cat([seq, torch.multinomial(probs, 1)], 1)
    return seq


def completion_logprobs(model, seq, prompt_len):
    """log pi(character | prefix) of every completion character: (N, completion length)."""
    logits = model(seq[:, :-1])[:, prompt_len - 1:]
    return torch.log_softmax(logits, -1).gather(-1, seq[:, prompt_len:, None]).squeeze(-1)


def pretrained(cfg, vocab: CharVocab, ids: torch.Tensor, device, dropout: float = 0.0
               ) -> CharTransformer:
    """The model of `cfg`'s shape (d_model, layers, heads, prompt_len + completion_len), trained
    to predict the next character of the text for `cfg.pretrain_steps` batches of 64 random
    windows: once per seed and shape, then read from cfg.pretrain_dir."""
    context = cfg.prompt_len + cfg.completion_len
    model = CharTransformer(len(vocab), cfg.d_model, cfg.layers, cfg.heads, context,
                            dropout).to(device)
    shape = (vocab.chars, cfg.d_model, cfg.layers, cfg.heads, context, cfg.pretrain_steps,
             *([dropout] if dropout else []))
    folder = cache_folder(Path(cfg.pretrain_dir), cfg.seed, shape)

    def train() -> dict:
        return pretrain(model, ids, context, cfg.pretrain_steps, cfg.seed, folder, cfg.progress)

    trained_once(folder, {"model": model}, train, device)
    return model


def pretrain(model: nn.Module, ids: torch.Tensor, context: int, steps: int, seed: int,
             folder: Path, show: bool) -> dict:
    """Next-character prediction on random windows of the text; the last loss."""
    device = next(model.parameters()).device
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    bar = progress(steps, "pretrain the character model", show)
    if bar.disable and steps:  # no bar (stderr is not a terminal): one line says what the wait is
        print(f"pretraining the character model: {steps} steps, once per seed and shape "
              f"(cached in {folder})", flush=True)
    loss = torch.tensor(float("nan"))  # pretrain_steps=0: the untrained model, kept as it is
    # dropout draws from the global RNG: a run that pretrains first and one that reads the cache
    # must go on from the same RNG state
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for _ in range(steps):
            batch = text_windows(ids, 64, context + 1, generator).to(device)
            logits = model(batch[:, :-1])
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                   batch[:, 1:].reshape(-1))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            bar.update(1)
    bar.close()
    return {"loss": loss.item(), "steps": steps}
