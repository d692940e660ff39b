"""Truncated BPTT: carry the hidden state across chunks, and detach it at every chunk boundary.

    state = detach_state(state)              # keep the values, drop the graph behind them
    logits, state = model(chunk, state)      # this chunk's graph starts here
    loss.backward()                          # ... so backward covers bptt_len steps, no more

The corpus is read as `batch_size` parallel streams in chunks of `bptt_len` characters. The
mistakes (`mistake=`), and what they cost:

- no_detach: the second chunk's backward runs into the first chunk's graph, already freed:
  "Trying to backward through the graph a second time".
- retain_graph: the usual wrong fix: every backward walks the whole stream so far, so time and
  bytes held for backward grow with every chunk (full BPTT). Stepping the optimizer between chunks
  would then fail with "modified by an inplace operation", so this mode accumulates gradients
  and steps once per window of `retain_graph_max_chunks` chunks, after which it must detach anyway.

TBPTT(k1, k2) (`k2=`): update every k1 = bptt_len characters, backpropagate k2 >= k1 characters.

Run: python -m gallery.tbptt seed=0 out_dir=/tmp/tbptt        (data=file data.path=notes.txt)
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import hydra
import torch
import torch.nn.functional as F
from omegaconf import MISSING
from torch import nn

from gallery.core import plots
from gallery.core.checkpoint import load_checkpoint, save_checkpoint
from gallery.core.config import (
    BaseConfig,
    print_help_if_asked,
    register_schema,
    require_choice,
    require_positive,
    require_range,
    run_cli,
    to_schema,
    validate_base,
)
from gallery.core.device import autocast, resolve_device
from gallery.core.errors import ConfigError, reraise_explained
from gallery.core.probes import SavedTensorMeter
from gallery.core.registry import Example, Mistake
from gallery.core.run import Run, progress, resolve_out_dir
from gallery.core.schedule import SCHEDULES, lr_schedule
from gallery.core.seeding import rng_state, seed_everything, set_rng_state
from gallery.data.text import CharVocab, load_text

EXAMPLE = Example(
    name="tbptt",
    pattern="hidden state carried across chunks and detached at every chunk boundary",
    mistakes={
        "no_detach": Mistake(
            "the state is carried without detach",
            "the second chunk raises 'Trying to backward through the graph a second time'",
        ),
        "retain_graph": Mistake(
            "no detach, patched with backward(retain_graph=True): full BPTT over the stream",
            "time and bytes held for backward grow with every chunk",
        ),
    },
)


# --- config schema -----------------------------------------------------------------------------

@dataclass
class TextData:
    name: str = MISSING  # pydoc | file | tiny_shakespeare | wikitext2
    path: str | None = None  # data=file: any UTF-8 text file
    root: str = "data_cache"  # where online corpora are downloaded
    val_fraction: float = 0.1


@dataclass
class TbpttConfig(BaseConfig):
    data: TextData = field(default_factory=TextData)
    cell: str = "lstm"  # lstm | gru
    embed: int = 64
    hidden: int = 256
    layers: int = 1
    dropout: float = 0.2  # on the embeddings and the RNN output
    batch_size: int = 32  # parallel streams
    bptt_len: int = 64  # k1: characters per chunk (one update per chunk)
    k2: int | None = None  # TBPTT(k1, k2): backpropagate k2 characters (a multiple of bptt_len); None: k2 = bptt_len
    steps: int = 1500  # chunks (= optimizer updates)
    lr: float = 3e-3
    lr_schedule: str = "linear"  # constant | linear (decay to 0 by the last step)
    max_grad_norm: float = 1.0
    eval_every: int = 500
    eval_streams: int = 16  # the validation text is read as this many carried streams
    sample_len: int = 300
    retain_graph_max_chunks: int = 30  # mistake=retain_graph: the cap that lets it finish
    log_every: int = 50


register_schema("tbptt", TbpttConfig)


def validate(cfg: TbpttConfig) -> None:
    validate_base(cfg, EXAMPLE.mistakes)
    require_choice(cfg, "data.name", ["pydoc", "file", "tiny_shakespeare", "wikitext2"])
    require_choice(cfg, "cell", ["lstm", "gru"])
    require_choice(cfg, "lr_schedule", SCHEDULES)
    require_range(cfg, "dropout", 0.0, 0.9)
    require_positive(cfg, "embed", "hidden", "layers", "batch_size", "bptt_len", "lr", "eval_streams",
                     "retain_graph_max_chunks", "max_grad_norm")
    require_range(cfg, "data.val_fraction", 0.01, 0.5)
    if cfg.k2 is not None and (cfg.k2 < cfg.bptt_len or cfg.k2 % cfg.bptt_len):
        raise ConfigError(f"k2={cfg.k2} must be a multiple of bptt_len={cfg.bptt_len} and >= it "
                          "(TBPTT(k1, k2) with k1 = bptt_len)")
    if cfg.k2 is not None and cfg.mistake != "none":
        raise ConfigError("k2 is a variant of the pattern; use it with mistake=none")


# --- model ---------------------------------------------------------------------------------------

class CharRNN(nn.Module):
    def __init__(self, vocab: int, embed: int, hidden: int, layers: int, cell: str, dropout: float = 0.0):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        rnn = nn.LSTM if cell == "lstm" else nn.GRU
        self.rnn = rnn(embed, hidden, layers, batch_first=True, dropout=dropout if layers > 1 else 0.0)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, vocab)

    def forward(self, x: torch.Tensor, state=None):
        h, state = self.rnn(self.drop(self.embed(x)), state)
        return self.out(self.drop(h)), state


# --- the pattern --------------------------------------------------------------------------------

def detach_state(state):
    """PATTERN: new tensors with the same values and no graph; a tensor or a (nested) tuple of them."""
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return state.detach()
    return tuple(detach_state(s) for s in state)


def stream_batches(data: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Cut the corpus into `batch_size` contiguous streams: row b continues where it left off."""
    n = (len(data) - 1) // batch_size
    if n < 2:
        raise ConfigError(f"batch_size={batch_size} leaves fewer than 2 characters per stream")
    return data[: n * batch_size + 1], n


def chunk_at(streams: torch.Tensor, n: int, batch_size: int, start: int, length: int):
    """Inputs and next-char targets for positions [start, start + length) of every stream."""
    idx = torch.arange(batch_size).unsqueeze(1) * n + torch.arange(start, start + length).unsqueeze(0)
    return streams[idx], streams[idx + 1]


def tbptt_update(model, optimizer, window: list, start_state, max_grad_norm: float):
    """One update of TBPTT(k1, k2) with k2 = len(window) * k1.

    `window` holds the last chunks (oldest first) as (inputs, targets). The forward re-runs them
    from the detached `start_state` with the current weights; the loss counts only the newest
    chunk, and its gradient flows back through every chunk in the window, no further. With one
    chunk in the window this is plain truncated BPTT. Returns (loss, the detached state after the
    window's first chunk: where the next full window starts)."""
    state = detach_state(start_state)  # PATTERN: the graph starts at the window's first character
    after_first = None
    for i, (x, _) in enumerate(window):
        logits, state = model(x, state)
        if i == 0:
            after_first = detach_state(state)  # PATTERN: carry values, never the graph
    targets = window[-1][1]
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    return loss.detach(), after_first


KNOWN_ERRORS = {
    "no_detach": (
        "backward through the graph a second time",
        "mistake=no_detach: the hidden state was carried into the next chunk without detach, so this "
        "chunk's backward ran on into the previous chunk's graph, which that chunk's backward had already "
        "freed. Fix: state = detach_state(state) at every chunk boundary.",
    ),
}


# --- evaluation --------------------------------------------------------------------------------

@torch.no_grad()
def validation_bpc(model: CharRNN, data: torch.Tensor, streams: int, chunk: int, device) -> float:
    """Bits per character over the whole validation text, read as `streams` carried streams."""
    model.eval()
    vals, n = stream_batches(data, streams)
    state, total, count = None, 0.0, 0
    for start in range(0, n, chunk):
        x, y = chunk_at(vals, n, streams, start, min(chunk, n - start))
        logits, state = model(x.to(device), state)
        total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.to(device).reshape(-1),
                                       reduction="sum"))
        count += y.numel()
    model.train()
    return total / count / math.log(2)


@torch.no_grad()
def sample_text(model: CharRNN, vocab: CharVocab, length: int, prime: str, device, seed: int) -> str:
    model.eval()
    g = torch.Generator(device=device).manual_seed(seed)
    x = vocab.encode(prime).to(device).unsqueeze(0)
    logits, state = model(x)
    out = []
    for _ in range(length):
        probs = F.softmax(logits[0, -1].float(), dim=-1)
        nxt = torch.multinomial(probs, 1, generator=g)
        out.append(int(nxt))
        logits, state = model(nxt.view(1, 1), state)
    model.train()
    return prime + vocab.decode(out)


def save_bytes_figure(saved: list[int], path, title: str) -> None:
    plt = plots.pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(range(1, len(saved) + 1), [b / 2**20 for b in saved], marker=".", ms=3)
    ax.set(xlabel="chunk", ylabel="MiB held for backward", title=title, ylim=(0, None))
    plots.save(fig, path)


# --- training loop ------------------------------------------------------------------------------

def train(cfg) -> dict:
    cfg: TbpttConfig = to_schema(cfg)
    validate(cfg)
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed, cfg.deterministic)
    text = load_text(cfg.data.name, cfg.data.path, cfg.data.root)
    split_at = int(len(text) * (1 - cfg.data.val_fraction))
    vocab = CharVocab.build(text[:split_at])
    train_ids, val_ids = vocab.encode(text[:split_at]), vocab.encode(text[split_at:])
    streams, n = stream_batches(train_ids, cfg.batch_size)
    k1, k2 = cfg.bptt_len, cfg.k2 or cfg.bptt_len
    chunks_per_window = k2 // k1
    model = CharRNN(len(vocab), cfg.embed, cfg.hidden, cfg.layers, cfg.cell, cfg.dropout).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    schedule = lr_schedule(optimizer, cfg.lr_schedule, cfg.steps)

    run = Run(resolve_out_dir(cfg.out_dir, "tbptt"), config=cfg, tensorboard=cfg.tensorboard)
    start_step, position, state, window = 0, 0, None, []
    if cfg.resume:
        ckpt = load_checkpoint(run.checkpoint_dir / "last.pt", map_location=device)
        if ckpt["vocab"] != vocab.chars:
            raise ConfigError("resume=true: the checkpoint was trained on a different vocabulary (data changed?)")
        model.load_state_dict(ckpt["model"]), optimizer.load_state_dict(ckpt["optimizer"])
        schedule.load_state_dict(ckpt["schedule"])
        start_step, position, state = ckpt["step"], ckpt["position"], ckpt["state"]
        window = [(x.to(device), y.to(device)) for x, y in ckpt["window"]]
        set_rng_state(ckpt["rng"])

    def checkpoint(step: int) -> None:
        save_checkpoint(run.checkpoint_dir, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                             "step": step, "position": position, "state": detach_state(state),
                                             "schedule": schedule.state_dict(),
                                             "window": [(x.cpu(), y.cpu()) for x, y in window],
                                             "vocab": vocab.chars, "rng": rng_state()})

    steps = min(cfg.steps, cfg.retain_graph_max_chunks) if cfg.mistake == "retain_graph" else cfg.steps
    saved_per_chunk, curve, val_bpc, chars, t_train = [], [], None, 0, 0.0
    t_start = time.perf_counter()
    bar = progress(steps, f"tbptt {cfg.data.name} mistake={cfg.mistake}", cfg.progress, initial=start_step)
    meter = SavedTensorMeter().__enter__()  # bytes held for backward, chunk by chunk
    try:
        for step in range(start_step + 1, steps + 1):
            if position + k1 + 1 > n:  # end of the streams: start over, from a fresh state
                position, state, window = 0, None, []
            x, y = chunk_at(streams, n, cfg.batch_size, position, k1)
            x, y = x.to(device), y.to(device)
            meter.reset()
            t0 = time.perf_counter()
            if cfg.mistake == "none":
                window = [*window[1 - chunks_per_window :], (x, y)] if chunks_per_window > 1 else [(x, y)]
                with autocast(device, cfg.amp):
                    loss, after_first = tbptt_update(model, optimizer, window, state, cfg.max_grad_norm)
                if len(window) == chunks_per_window:
                    state = after_first  # the next window starts one chunk later
                schedule.step()
            else:
                # MISTAKE: the state keeps its graph into the next chunk.
                with autocast(device, cfg.amp):
                    logits, state = model(x, state)
                    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
                try:
                    # MISTAKE (retain_graph): keep every graph so the next backward can walk it again.
                    loss.backward(retain_graph=cfg.mistake == "retain_graph")
                except RuntimeError as err:
                    reraise_explained(err, cfg.mistake, KNOWN_ERRORS)
                    raise
                if cfg.mistake == "no_detach" or step == steps:
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    schedule.step()
                loss = loss.detach()
            saved_per_chunk.append(meter.peak)  # backward saves nothing new, so the peak is the forward's
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t_train += time.perf_counter() - t0
            chars += k1 * cfg.batch_size
            position += k1
            bar.update(1)
            if step % cfg.log_every == 0 or step == steps:
                run.log(step, loss=float(loss), bpc=float(loss) / math.log(2), saved_bytes=saved_per_chunk[-1],
                        chars_per_sec=chars / t_train)
            if cfg.mistake == "none" and (step % cfg.eval_every == 0 or step == steps):
                val_bpc = validation_bpc(model, val_ids, cfg.eval_streams, 256, device)
                curve.append({"step": step, "val_bpc": val_bpc, "seconds": time.perf_counter() - t_start})
                run.log(step, val_bpc=val_bpc)
                bar.set_postfix(val_bpc=f"{val_bpc:.3f}")
                with open(run.path("samples.txt"), "a") as f:
                    f.write(f"--- step {step}, val_bpc {val_bpc:.3f}\n")
                    f.write(sample_text(model, vocab, cfg.sample_len, "The ", device, cfg.seed) + "\n")
            if cfg.ckpt_every and step % cfg.ckpt_every == 0:
                checkpoint(step)
        if cfg.mistake == "none":
            checkpoint(steps)
    finally:
        meter.__exit__(None, None, None)
        bar.close()
        run.close()
    save_bytes_figure(saved_per_chunk, run.path("saved_bytes_per_chunk.png"), f"mistake={cfg.mistake}")
    summary = {
        "example": "tbptt", "data": cfg.data.name, "mistake": cfg.mistake, "seed": cfg.seed, "device": str(device),
        "steps": steps, "k1": k1, "k2": k2, "val_bpc": val_bpc, "chars_per_sec": chars / max(t_train, 1e-9),
        "saved_bytes_per_chunk": saved_per_chunk, "curve": curve, "vocab_size": len(vocab),
        "train_chars": split_at, "val_chars": len(text) - split_at,
    }
    return run.write_summary(summary)


@hydra.main(version_base="1.3", config_path="../configs", config_name="tbptt")
def main(cfg) -> None:
    summary = run_cli(train, cfg)
    print(f"val_bpc={summary['val_bpc']} chars_per_sec={summary['chars_per_sec']:.0f} steps={summary['steps']}")


if __name__ == "__main__":
    print_help_if_asked(EXAMPLE)
    main()
