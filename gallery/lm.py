"""The character language model grpo and dpo train: the model, its sampling, the log-probs of a
completion, and its pretraining on the text, cached per seed and shape. Library code: the lessons
(what is data, what is frozen, what runs under no_grad) stay in the examples that import it."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from gallery.core.checkpoint import cache_folder, trained_once
from gallery.core.run import progress
from gallery.data.text import CharVocab, text_windows


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention that can keep each layer's keys and values (`cache`), so
    that sampling runs only the new character through the model. Its parameters are named and
    initialised as nn.MultiheadAttention's, so a checkpoint of either loads into the other."""

    def __init__(self, d_model: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * d_model, d_model))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * d_model))
        self.out_proj = nn.Linear(d_model, d_model)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        n, t, d = x.shape
        q, k, v = (part.view(n, t, self.heads, d // self.heads).transpose(1, 2) for part in
                   F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1))
        start = cache["length"] if cache is not None else 0
        if cache is not None:  # the keys and values of every earlier position, then these
            if start and t > 1:
                raise ValueError("a cached forward takes one new character at a time")
            if "k" not in cache:  # room for the whole context, written in place as it grows
                cache["k"], cache["v"] = (k.new_empty(n, self.heads, cache["size"], d // self.heads)
                                          for _ in range(2))
            cache["k"][:, :, start:start + t], cache["v"][:, :, start:start + t] = k, v
            cache["length"] = start + t
            k, v = cache["k"][:, :, :start + t], cache["v"][:, :, :start + t]
        if t == 1 and not (self.training and self.dropout):  # one new character: plain matmuls,
            # a tenth faster on the CPU than the fused kernel for a single query
            y = torch.softmax(q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5, -1) @ v
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=start == 0 and t > 1,
                                               dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(y.transpose(1, 2).reshape(n, t, d))


class Block(nn.Module):
    """A pre-norm transformer layer, named as nn.TransformerEncoderLayer(norm_first=True)."""

    def __init__(self, d_model: int, heads: int, dropout: float):
        super().__init__()
        self.self_attn = CausalSelfAttention(d_model, heads, dropout)
        self.linear1, self.linear2 = nn.Linear(d_model, 2 * d_model), nn.Linear(2 * d_model,
                                                                                 d_model)
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.dropout, self.dropout1, self.dropout2 = (nn.Dropout(dropout) for _ in range(3))

    def forward(self, x: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        x = x + self.dropout1(self.self_attn(self.norm1(x), cache))
        return x + self.dropout2(self.linear2(self.dropout(F.relu(self.linear1(self.norm2(x))))))


class CharTransformer(nn.Module):
    """A causal character-level transformer: a few pre-norm layers, learned positions. Given a
    `cache` (a list with a dict per layer, `new_cache()`), a forward takes only the characters
    after those it has seen and keeps their keys and values."""

    def __init__(self, vocab: int, d_model: int, layers: int, heads: int, context: int,
                 dropout: float = 0.0):
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model={d_model} must be a multiple of heads={heads}")
        self.embed, self.position = nn.Embedding(vocab, d_model), nn.Embedding(context, d_model)
        block = Block(d_model, heads, dropout)  # the layers start equal, as TransformerEncoder's
        self.blocks = nn.ModuleDict({"layers": nn.ModuleList(
            [copy.deepcopy(block) for _ in range(layers)])})
        self.norm, self.head = nn.LayerNorm(d_model), nn.Linear(d_model, vocab)

    def new_cache(self) -> list[dict]:
        return [{"length": 0, "size": self.position.num_embeddings} for _ in self.blocks["layers"]]

    def forward(self, ids: torch.Tensor, cache: list[dict] | None = None) -> torch.Tensor:
        """(N, T) -> logits (N, T, vocab); with a cache, T new characters after those it holds."""
        start = cache[0]["length"] if cache else 0
        h = self.embed(ids) + self.position(torch.arange(start, start + ids.shape[1],
                                                         device=ids.device))
        for layer, kept in zip(self.blocks["layers"], cache or [None] * len(self.blocks["layers"])):
            h = layer(h, kept)
        return self.head(self.norm(h))


def draw(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One character per row of `logits` (N, vocab), drawn from its softmax, and its log-prob:
    both (N, 1). The draw inverts the cumulative distribution at a uniform number, which on the CPU
    costs a seventh of torch.multinomial; a character of probability 0 is never drawn."""
    logp = torch.log_softmax(logits, -1)
    cdf = logp.exp().cumsum(-1)
    u = torch.rand(len(cdf), 1, device=cdf.device) * cdf[:, -1:]
    chosen = torch.searchsorted(cdf, u, right=True).clamp_(max=cdf.shape[-1] - 1)
    return chosen, logp.gather(-1, chosen)


def sample_with_logprobs(model, seq, length):
    """`seq` (N, T) continued by `length` characters, each drawn from the model's next-character
    distribution, and the log-prob of each drawn character (N, length). The keys and values of the
    characters so far are kept, so each new character costs one position's forward, not the whole
    prefix's. The caller decides whether a graph is built (grpo's and dpo's sampling run under
    no_grad)."""
    n, start = seq.shape
    out = seq.new_empty(n, start + length)
    out[:, :start] = seq
    logprobs = []
    cache = model.new_cache()
    logits = model(seq, cache)
    for i in range(length):
        chosen, logp = draw(logits[:, -1])
        out[:, start + i:start + i + 1] = chosen
        logprobs.append(logp)
        if i + 1 < length:
            logits = model(chosen, cache)
    return out, torch.cat(logprobs, 1) if logprobs else out.new_empty(n, 0, dtype=torch.float)


def sample(model, seq, length):
    """`seq` (N, T) continued by `length` characters drawn from the model (sample_with_logprobs)."""
    return sample_with_logprobs(model, seq, length)[0]


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
