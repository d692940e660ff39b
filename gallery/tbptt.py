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
  would then fail with "modified by an inplace operation", so this mode never steps: each chunk
  clears the grads, runs its backward through the whole graph and measures what that holds. The run
  is capped at `retain_graph_max_chunks` chunks, because the graph only ever grows.

TBPTT(k1, k2) (`k2=`): update every k1 = bptt_len characters, backpropagate k2 >= k1 characters.

Run: python -m gallery.tbptt seed=0 out_dir=/tmp/tbptt        (data=file data.path=notes.txt)
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from gallery.core import dist, plots
from gallery.core.cli import command_line
from gallery.core.config import (
    BaseConfig,
    register_schema,
    require_choice,
    require_positive,
    require_range,
    validate_base,
)
from gallery.core.device import amp_forward, compile_modules
from gallery.core.errors import ConfigError
from gallery.core.loop import Counters, Loop
from gallery.core.probes import Probe, graph_saved_bytes
from gallery.core.registry import (
    Cost,
    Criterion,
    Example,
    Gate,
    Measured,
    Mistake,
    Panel,
    Runs,
    each,
)
from gallery.core.schedule import SCHEDULES, lr_schedule
from gallery.core.setup import prepare
from gallery.data.text import CharVocab, TextSource, load_text

# --- config schema -----------------------------------------------------------------------------

@dataclass
class TextData(TextSource):
    val_fraction: float = 0.1


@register_schema("tbptt")
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
    k2: int | None = None  # TBPTT(k1, k2): backprop k2 chars, a multiple of bptt_len (None: k1)
    steps: int = 1500  # chunks (= optimizer updates)
    lr: float = 3e-3
    lr_schedule: str = "linear"  # constant | linear (decay to 0 by the last step)
    max_grad_norm: float = 1.0
    eval_every: int = 500
    ckpt_every: int = 500  # chunks
    eval_streams: int = 16  # the validation text is read as this many carried streams
    sample_len: int = 300
    retain_graph_max_chunks: int = 30  # mistake=retain_graph: the cap that lets it finish
    log_every: int = 50
    probe_every: int = 10  # chunks between measures of the bytes held (and chunk 1)



def validate(cfg: TbpttConfig) -> None:
    validate_base(cfg, BY_MISTAKE)
    require_choice(cfg, "data.name", ["pydoc", "file", "tiny_shakespeare", "wikitext2"])
    require_choice(cfg, "cell", ["lstm", "gru"])
    require_choice(cfg, "lr_schedule", SCHEDULES)
    require_range(cfg, "dropout", 0.0, 0.9)
    require_positive(cfg, "embed", "hidden", "layers", "batch_size", "bptt_len", "lr",
                     "eval_streams", "retain_graph_max_chunks", "max_grad_norm", "probe_every")
    require_range(cfg, "data.val_fraction", 0.01, 0.5)
    if cfg.k2 is not None and (cfg.k2 < cfg.bptt_len or cfg.k2 % cfg.bptt_len):
        raise ConfigError(f"k2={cfg.k2} must be a multiple of bptt_len={cfg.bptt_len} and >= it "
                          "(TBPTT(k1, k2) with k1 = bptt_len)")
    if cfg.k2 is not None and cfg.mistake != "none":
        raise ConfigError("k2 is a variant of the pattern; use it with mistake=none")


def check_length(cfg: TbpttConfig, total: int, train: int, val: int) -> None:
    """A text too short for one chunk of every stream is a one-line error naming the length it
    needs."""
    need_train, need_val = cfg.batch_size * (cfg.bptt_len + 1) + 1, 2 * cfg.eval_streams + 1
    if train < need_train or val < need_val:
        need = max(need_train / (1 - cfg.data.val_fraction), need_val / cfg.data.val_fraction)
        file = cfg.data.name == "file"
        source = f"data.path={cfg.data.path}" if file else f"data={cfg.data.name}"
        raise ConfigError(f"{source} has {total:,} characters; batch_size={cfg.batch_size} streams "
                          f"of bptt_len={cfg.bptt_len} (and eval_streams={cfg.eval_streams} for "
                          f"validation) need at least {int(need) + 1:,}: use a longer text, or "
                          f"smaller batch_size / bptt_len / eval_streams")


def chunks_to_run(cfg: TbpttConfig) -> int:
    """mistake=retain_graph keeps every chunk's graph, so its run is capped at
    retain_graph_max_chunks."""
    if cfg.mistake != "retain_graph" or cfg.steps <= cfg.retain_graph_max_chunks:
        return cfg.steps
    print(f"mistake=retain_graph: running {cfg.retain_graph_max_chunks} chunks, not "
          f"steps={cfg.steps} "
          "(retain_graph_max_chunks): every chunk keeps its graph, so memory grows without bound. "
          "This variant never steps the optimizer, so its val_bpc is the untrained model's.",
          file=sys.stderr)
    return cfg.retain_graph_max_chunks


# --- model ---------------------------------------------------------------------------------------

class CharRNN(nn.Module):
    def __init__(self, vocab: int, embed: int, hidden: int, layers: int, cell: str,
                 dropout: float = 0.0):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        rnn = nn.LSTM if cell == "lstm" else nn.GRU
        self.rnn = rnn(embed, hidden, layers, batch_first=True,
                       dropout=dropout if layers > 1 else 0.0)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, vocab)

    def forward(self, x: torch.Tensor, state=None):
        h, state = self.rnn(self.drop(self.embed(x)), state)
        return self.out(self.drop(h)), state


# --- the pattern --------------------------------------------------------------------------------

def detach_state(state):
    """New tensors with the same values and no graph: a tensor, a (nested) tuple of them, or
    None."""
    if state is None:  # the natural start: `state = None`
        return None
    if isinstance(state, torch.Tensor):
        return state.detach()  # PATTERN: keep the values, drop the graph behind them
    return tuple(detach_state(s) for s in state)


def stream_batches(data: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Cut the corpus into `batch_size` contiguous streams: row b continues where it left off."""
    n = (len(data) - 1) // batch_size
    if n < 2:
        raise ConfigError(f"batch_size={batch_size} leaves fewer than 2 characters per stream")
    return data[: n * batch_size + 1], n


def chunk_at(streams: torch.Tensor, n: int, batch_size: int, start: int, length: int):
    """Inputs and next-char targets for positions [start, start + length) of every stream."""
    idx = torch.arange(batch_size).unsqueeze(1) * n + torch.arange(
        start, start + length).unsqueeze(0)
    return streams[idx], streams[idx + 1]


def tbptt_update(model, optimizer, window, start_state, max_grad_norm=1.0):
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


# --- the mistakes -------------------------------------------------------------------------------

def tbptt_update_no_detach(model, optimizer, window, start_state, max_grad_norm=1.0):
    state = start_state  # MISTAKE: the state still carries the previous chunk's graph
    after_first = None
    for i, (x, _) in enumerate(window):
        logits, state = model(x, state)
        if i == 0:
            after_first = state  # MISTAKE: carried on with its graph
    targets = window[-1][1]
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    return loss.detach(), after_first


def tbptt_update_retain_graph(model, optimizer, window, start_state, max_grad_norm=1.0):
    state = start_state  # MISTAKE: the state still carries the previous chunks' graph
    after_first = None
    for i, (x, _) in enumerate(window):
        logits, state = model(x, state)
        if i == 0:
            after_first = state  # MISTAKE: carried on with its graph
    targets = window[-1][1]
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    optimizer.zero_grad(set_to_none=True)
    # MISTAKE: each backward walks the whole stream so far (and no optimizer.step() below: the
    loss.backward(retain_graph=True)  # next backward would fail: "modified by an inplace op")
    nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    return loss.detach(), after_first


BY_MISTAKE = {"none": tbptt_update, "no_detach": tbptt_update_no_detach,
              "retain_graph": tbptt_update_retain_graph}

KNOWN_ERRORS = {
    "no_detach": (
        "backward through the graph a second time",
        "mistake=no_detach: the hidden state was carried into the next chunk without detach, so "
        "this chunk's backward ran on into the previous chunk's graph, which that chunk's backward "
        "had already freed. Fix: state = detach_state(state) at every chunk boundary.",
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
        total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                       y.to(device).reshape(-1), reduction="sum"))
        count += y.numel()
    model.train()
    return total / count / math.log(2)


@torch.no_grad()
def sample_text(model: CharRNN, vocab: CharVocab, length: int, prime: str, device,
                seed: int) -> str:
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


def write_sample(run, model: CharRNN, vocab: CharVocab, cfg: TbpttConfig, device, step: int,
                 val_bpc: float) -> None:
    """Append a sample of the model's text, headed by the step and val_bpc, to samples.txt."""
    text = sample_text(model, vocab, cfg.sample_len, "The ", device, cfg.seed)
    run.append_text("samples.txt", f"--- step {step}, val_bpc {val_bpc:.3f}\n{text}\n")


def draw_held_bytes(ax, points: list, label: str) -> None:
    """Bytes held for backward at sampled chunks ([chunk, bytes] pairs). The run's own figure and
    the tour's comparison both draw with this."""
    ax.plot([c for c, _ in points], [b / 2**20 for _, b in points], marker=".", ms=4, label=label)
    ax.set_autoscaley_on(True)  # a second curve may reach higher than the first
    ax.relim()
    ax.autoscale_view()
    ax.set(xlabel="chunk", ylabel="MiB held for backward", ylim=(0, None))
    ax.legend(fontsize=8)


def state_tensors(state) -> list[torch.Tensor]:
    if state is None:
        return []
    if isinstance(state, torch.Tensor):
        return [state]
    return [t for s in state for t in state_tensors(s)]


# --- training loop ------------------------------------------------------------------------------

def build_model(cfg: TbpttConfig, n_chars: int, device: torch.device) -> nn.Module:
    """The char-RNN on the device, with AMP and torch.compile as configured."""
    model = CharRNN(n_chars, cfg.embed, cfg.hidden, cfg.layers, cfg.cell, cfg.dropout).to(device)
    model = amp_forward(model, device, cfg.amp)
    compile_modules(cfg.compile, model)
    return model


def text_data(cfg: TbpttConfig):
    """The vocabulary (of the training split), this rank's training streams and their length, the
    validation ids, and the sizes the summary reports."""
    text = load_text(cfg.data.name, cfg.data.path, cfg.data.root)
    split_at = int(len(text) * (1 - cfg.data.val_fraction))
    vocab = CharVocab.build(text[:split_at])
    train_ids, val_ids = vocab.encode(text[:split_at]), vocab.encode(text[split_at:])
    check_length(cfg, len(text), len(train_ids), len(val_ids))
    train_ids = dist.shard(train_ids, contiguous=True)  # torchrun: each rank its own streams
    sizes = {"vocab_size": len(vocab), "train_chars": split_at, "val_chars": len(text) - split_at}
    return vocab, stream_batches(train_ids, cfg.batch_size), val_ids, sizes


def train(cfg) -> dict:
    cfg, device = prepare(cfg, validate, single_thread=lambda c: c.hidden * c.batch_size <= 4096)
    vocab, (streams, n), val_ids, sizes = text_data(cfg)
    k1, k2 = cfg.bptt_len, cfg.k2 or cfg.bptt_len
    model = build_model(cfg, len(vocab), device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    schedule = lr_schedule(optimizer, cfg.lr_schedule, cfg.steps)
    ddp_model = dist.wrap(model, device)  # torchrun: the state is returned, never a DDP buffer
    update_fn = BY_MISTAKE[cfg.mistake]
    tally = Counters(position=0, state=None, window=[], held=[])  # a resume goes on mid-stream
    stateful = {"model": model, "optimizer": optimizer, "schedule": schedule, "tally": tally,
                "vocab": vocab}  # a resume checks it reads the same vocabulary
    probe, t_start = Probe(device), time.perf_counter()
    with Loop(cfg, EXAMPLE.name, stateful, device, cfg.data.name, total=chunks_to_run(cfg),
              known_errors=KNOWN_ERRORS) as loop, warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step")  # retain_graph
        if loop.finished_summary:
            return loop.finished_summary
        for _ in loop:
            if tally.position + k1 + 1 > n:  # end of the streams: start over, from a fresh state
                tally.position, tally.state, tally.window = 0, None, []
            x, y = (t.to(device) for t in chunk_at(streams, n, cfg.batch_size, tally.position, k1))
            tally.window = [*tally.window, (x, y)][-(k2 // k1):]  # the chunks one backward spans
            sampled = loop.step == 1 or loop.due(cfg.probe_every)  # the first chunk, and every n
            with probe.step(sampled, units=k1 * cfg.batch_size) as meter:
                loss, after_first = update_fn(ddp_model, optimizer, tally.window, tally.state,
                                              cfg.max_grad_norm)
            if sampled:  # held during this chunk: the graph the state carried in, and its own
                carried_in = graph_saved_bytes(*state_tensors(tally.state))
                tally.held.append([loop.step, carried_in + meter.peak])
            if len(tally.window) == k2 // k1:
                tally.state = after_first  # the next window starts one chunk later
            schedule.step()
            tally.position += k1
            if loop.due(cfg.log_every, final=True):  # saved_bytes: this chunk's, if it was measured
                loop.log(losses={"loss": loss}, bpc=float(loss) / math.log(2),
                         chars_per_sec=probe.units_per_sec,
                         **({"saved_bytes": tally.held[-1][1]} if sampled else {}))
            if loop.due(cfg.eval_every, final=True):
                val_bpc = validation_bpc(model, val_ids, cfg.eval_streams, 256, device)
                loop.evaluated(val_bpc=val_bpc, seconds=time.perf_counter() - t_start)
                write_sample(loop.run, model, vocab, cfg, device, loop.step, val_bpc)
        plots.figure(loop.run.path("saved_bytes_per_chunk.png"), draw_held_bytes, tally.held,
                     f"mistake={cfg.mistake}")
        return loop.summary(
            data=cfg.data.name, steps=loop.total, k1=k1, k2=k2, val_bpc=loop.evals[-1]["val_bpc"],
            chars_per_sec=probe.units_per_sec, saved_bytes_per_chunk=tally.held, curve=loop.evals,
            **sizes, **dist.ddp_report({"model": model}, {"state_grad_fn": any(
                t.grad_fn is not None for t in state_tensors(tally.state))}))


# --- what the tour and `python -m gallery show tbptt` read ----------------------------------

def headline(s: dict) -> str:
    held = s["saved_bytes_per_chunk"]
    bpc = "" if s["val_bpc"] is None else f"val BPC {s['val_bpc']:.3f}, "
    return (f"{bpc}bytes held for backward: chunk {held[0][0]} {held[0][1]:,}, "
            f"chunk {held[-1][0]} {held[-1][1]:,}")


def tour_figure(runs: dict, fig) -> None:
    ax = fig.add_subplot(1, 1, 1)
    last = max((c for c, _ in runs.get("retain_graph", {}).get("saved_bytes_per_chunk") or []),
               default=None)
    for mistake, label in (("none", "detach each chunk (pattern)"),
                           ("retain_graph", "retain_graph (full BPTT)")):
        points = runs.get(mistake, {}).get("saved_bytes_per_chunk") or []
        if last is not None:  # show the pattern over the chunks the capped mistake ran
            points = [p for p in points if p[0] <= last * 1.25]
        if points:
            draw_held_bytes(ax, points, label)


def measured(gate: dict, bench: dict) -> Measured:
    row = bench["tbptt"][0]
    memory, time = (row[f"{m}_ratio_untruncated_over_truncated"] for m in ("memory", "time"))
    return Measured(
        (f"val {gate['runs']['default'][0]['val_bpc']:.2f} bits/char, bytes per chunk flat",
         f"retain_graph: {memory:.1f}x the memory, {time:.2f}x the time (untruncated)"),
        Panel("peak bytes over 16 chunks", row["truncated_peak_bytes"],
              row["untruncated_peak_bytes"], "retain_graph (untruncated)"),
        Cost("retain_graph", time, memory, "scripts/bench.py tbptt"))


QUICK = ["steps=12", "eval_every=12", "log_every=6", "hidden=32", "retain_graph_max_chunks=12",
         "probe_every=2"]
EXAMPLE = Example(
    name="tbptt",
    pattern="hidden state carried across chunks and detached at every chunk boundary",
    pattern_functions=("detach_state", "tbptt_update"),
    mistakes={
        "no_detach": Mistake(
            "the state is carried without detach",
            "the second chunk raises 'Trying to backward through the graph a second time'",
            ("tbptt_update_no_detach",),
            caught="constant: chunk_start_state[0] (grad_fn=",
        ),
        "retain_graph": Mistake(
            "no detach, patched with backward(retain_graph=True): full BPTT over the stream",
            "time and bytes held for backward grow with every chunk (this variant never steps the "
            "optimizer: a step would make the next backward fail, so its val BPC is the untrained "
            "model's)",
            ("tbptt_update_retain_graph",),
            caught="constant: chunk_start_state[0] (grad_fn=",
        ),
    },
    budgets={"full": {"none": ["probe_every=5"], "no_detach": ["steps=5"],
                      "retain_graph": ["retain_graph_max_chunks=40", "probe_every=2"]},
             "quick": {m: QUICK for m in BY_MISTAKE}},
    headline=headline,
    figure=tour_figure,
    check=lambda s: None if len({b for _, b in s["saved_bytes_per_chunk"]}) == 1 else (
        "bytes held for backward changed from chunk to chunk: the state carried a graph across "
        "chunks"),
    smoke=("steps=6", "eval_every=6", "log_every=3", "hidden=16", "embed=8", "batch_size=4",
           "bptt_len=8", "probe_every=2", "eval_streams=64", "sample_len=10"),
    report=("val_bpc", "chars_per_sec", "steps"),
    order=5,
    gate=Gate(
        "pydoc text, seed 0: the default config, and a 10,000-step run evaluated every 500",
        runs={"default": Runs(seeds=(0,))}, keys=("val_bpc",),
        criteria=(
            Criterion("the default config ends at <= 2.0 validation bits per char", ("default",),
                      each(lambda r: r["val_bpc"] <= 2.0)),
            Criterion("validation bits per char <= 2.3 within 180 s of training, read off the "
                      "longer run's curve", ("10k steps",),
                      each(lambda r: r["val_bpc_within_180_s"] is not None
                           and r["val_bpc_within_180_s"] <= 2.3), timed=True)),
        measure="tbptt_gate:curve"),
    measured=measured,
)


if __name__ == "__main__":
    command_line(EXAMPLE, train)
