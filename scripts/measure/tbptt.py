"""`scripts/bench.py tbptt`: truncated against untruncated backprop through time, time and peak
bytes."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gallery.core.config import to_schema
from gallery.core.probes import SavedTensorMeter
from scripts.measure.timing import alternate, config


def bench_tbptt(device: torch.device, chunks: int = 16) -> list[dict]:
    from gallery import tbptt

    cfg = to_schema(config("tbptt", f"device={device}"))
    torch.manual_seed(0)
    vocab = 100
    model = tbptt.CharRNN(vocab, cfg.embed, cfg.hidden, cfg.layers, cfg.cell).to(device)
    data = torch.randint(vocab, (cfg.batch_size, chunks * cfg.bptt_len + 1), device=device)
    x, y = data[:, :-1], data[:, 1:]

    def truncated():
        state = None
        for i in range(chunks):
            sl = slice(i * cfg.bptt_len, (i + 1) * cfg.bptt_len)
            logits, state = model(x[:, sl], tbptt.detach_state(state))
            F.cross_entropy(logits.reshape(-1, vocab), y[:, sl].reshape(-1)).backward()

    def untruncated():
        logits, _ = model(x)
        F.cross_entropy(logits.reshape(-1, vocab), y.reshape(-1)).backward()

    peaks = {}
    for name, fn in (("truncated", truncated), ("untruncated", untruncated)):
        with SavedTensorMeter() as meter:
            fn()
        peaks[name] = meter.peak
    secs = alternate({"truncated": truncated, "untruncated": untruncated}, rounds=5, per_round=1,
                     device=device, warmup=1)
    chars = chunks * cfg.bptt_len * cfg.batch_size
    return [{
        "sequence": f"{chunks} chunks x {cfg.bptt_len} chars x {cfg.batch_size} streams",
        "truncated_chars_per_sec": chars / secs["truncated"],
        "untruncated_chars_per_sec": chars / secs["untruncated"],
        "time_ratio_untruncated_over_truncated": secs["untruncated"] / secs["truncated"],
        "truncated_peak_bytes": peaks["truncated"], "untruncated_peak_bytes": peaks["untruncated"],
        "memory_ratio_untruncated_over_truncated": peaks["untruncated"] / peaks["truncated"],
    }]
