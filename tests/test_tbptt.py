import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gallery import tbptt
from gallery.check import constant
from gallery.core.cli import compose
from gallery.core.errors import ExplainedMistake, GalleryError
from gallery.core.probes import graph_stats
from gallery.data.text import CharVocab, load_text


def _tiny(tmp_path, *overrides):
    return compose("tbptt", [f"out_dir={tmp_path}", "device=cpu", "steps=6", "eval_every=3",
                                    "log_every=3", "hidden=16", "embed=8", "batch_size=4",
                             "bptt_len=8",
                                    "sample_len=10", "eval_streams=64", *overrides])


# --- the pattern's contract ---------------------------------------------------------------------

def test_detach_state_handles_tensors_and_tuples_and_returns_new_tensors():
    h = torch.randn(2, 3, requires_grad=True) * 2
    c = torch.randn(2, 3, requires_grad=True) * 2
    dh = tbptt.detach_state(h)
    dh2, (dc,) = tbptt.detach_state((h, (c,)))
    assert dh.grad_fn is None and dh2.grad_fn is None and dc.grad_fn is None
    assert h.grad_fn is not None and c.grad_fn is not None  # not in place
    assert torch.equal(dh, h) and dh is not h
    assert tbptt.detach_state(None) is None


def test_state_has_no_grad_fn_at_the_start_of_every_chunk(tmp_path, monkeypatch):
    seen = []
    forward = tbptt.CharRNN.forward

    def spy(self, x, state=None):
        if torch.is_grad_enabled():  # training chunks, not evaluation
            seen.append(state)
        return forward(self, x, state)

    monkeypatch.setattr(tbptt.CharRNN, "forward", spy)
    tbptt.train(_tiny(tmp_path, "cell=lstm"))
    assert len(seen) == 6 and seen[0] is None
    for state in seen[1:]:
        assert all(t.grad_fn is None and not t.requires_grad for t in state)


def _chunk_depths(detach: bool, chunks=20):
    torch.manual_seed(0)
    model = tbptt.CharRNN(10, 4, 8, 1, "gru")
    data = torch.randint(10, (2, chunks * 5 + 1))
    state, depths = None, []
    for i in range(chunks):
        if detach:
            state = tbptt.detach_state(state)
        logits, state = model(data[:, i * 5 : i * 5 + 5], state)
        loss = F.cross_entropy(logits.reshape(-1, 10), data[:, i * 5 + 1 : i * 5 + 6].reshape(-1))
        depths.append(graph_stats(loss).depth)
    return depths


def test_chunk_graph_depth_is_bounded_and_the_same_for_chunk_2_and_20():
    depths = _chunk_depths(detach=True)
    assert depths[1] == depths[19]
    assert depths[19] < 100  # a few nodes per step of a 5-step chunk


def test_without_detach_the_chunk_graph_keeps_growing():
    depths = _chunk_depths(detach=False)
    assert depths[19] > depths[1] * 5


class ScalarRNN(nn.Module):
    """h_t = tanh(w h_{t-1} + u[x_t]); logits_t = (a h_t, -a h_t). Small enough to check by hand."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(0.8, dtype=torch.float64))
        self.u = nn.Parameter(torch.tensor([0.3, -0.5], dtype=torch.float64))
        self.a = nn.Parameter(torch.tensor(1.5, dtype=torch.float64))

    def forward(self, x, state=None):
        h = torch.zeros(x.shape[0], dtype=torch.float64) if state is None else state
        outs = []
        for t in range(x.shape[1]):
            h = torch.tanh(self.w * h + self.u[x[:, t]])
            outs.append(torch.stack([self.a * h, -self.a * h], dim=-1))
        return torch.stack(outs, dim=1), h


def _reference_loss(w, u, a, window, h0):
    """The TBPTT(k1, k2) objective written out: run the window from the constant h0, score the
    newest chunk only. Plain Python floats, no autograd."""
    import math

    h = [float(v) for v in h0]
    total, count = 0.0, 0
    for i, (x, y) in enumerate(window):
        for t in range(x.shape[1]):
            for b in range(x.shape[0]):
                h[b] = math.tanh(w * h[b] + u[int(x[b, t])])
                if i == len(window) - 1:
                    z = a * h[b]
                    logit = (z, -z)
                    lse = math.log(math.exp(logit[0]) + math.exp(logit[1]))
                    total += lse - logit[int(y[b, t])]
                    count += 1
    return total / count


def _finite_difference_grads(window, h0, model):
    w, u, a = model.w.item(), model.u.tolist(), model.a.item()
    eps = 1e-6

    def f(w=w, u=u, a=a):
        return _reference_loss(w, u, a, window, h0)

    gw = (f(w=w + eps) - f(w=w - eps)) / (2 * eps)
    gu = [(f(u=[u[0] + eps, u[1]]) - f(u=[u[0] - eps, u[1]])) / (2 * eps),
          (f(u=[u[0], u[1] + eps]) - f(u=[u[0], u[1] - eps])) / (2 * eps)]
    ga = (f(a=a + eps) - f(a=a - eps)) / (2 * eps)
    return torch.tensor([gw, *gu, ga], dtype=torch.float64)


@pytest.mark.parametrize("chunks_in_window", [1, 2, 3])
def test_tbptt_k1_k2_gradients_match_a_hand_computed_reference(chunks_in_window):
    g = torch.Generator().manual_seed(0)
    k1 = 4
    window = [(torch.randint(2, (3, k1), generator=g), torch.randint(2, (3, k1), generator=g))
              for _ in range(chunks_in_window)]
    h0 = torch.tensor([0.2, -0.4, 0.7], dtype=torch.float64)
    model = ScalarRNN()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # keep the weights; read the grads
    loss, after_first = tbptt.tbptt_update(model, optimizer, window, h0, max_grad_norm=1e9)
    grads = torch.cat([model.w.grad.view(1), model.u.grad, model.a.grad.view(1)])
    torch.testing.assert_close(grads, _finite_difference_grads(window, h0, model), rtol=1e-6,
                               atol=1e-8)
    assert loss.item() == pytest.approx(_reference_loss(model.w.item(), model.u.tolist(),
                                                        model.a.item(), window, h0))
    assert after_first.grad_fn is None


def test_longer_k2_changes_the_gradient():
    g = torch.Generator().manual_seed(1)
    window = [(torch.randint(2, (3, 4), generator=g),
               torch.randint(2, (3, 4), generator=g)) for _ in range(2)]
    grads = []
    for win in (window[-1:], window):
        model = ScalarRNN()
        h0 = torch.zeros(3, dtype=torch.float64)
        start = h0 if len(win) == 2 else model(window[0][0], h0)[1].detach()
        tbptt.tbptt_update(model, torch.optim.SGD(model.parameters(), lr=0.0), win, start, 1e9)
        grads.append(model.w.grad.clone())
    assert not torch.allclose(grads[0], grads[1])  # the extra chunk of look-back adds gradient


# --- the mistakes' consequences --------------------------------------------------------------

def test_no_detach_raises_and_explains_the_fix(tmp_path):
    with pytest.raises(ExplainedMistake) as info:
        tbptt.train(_tiny(tmp_path, "mistake=no_detach"))
    assert "detach_state(state)" in str(info.value)
    assert "backward through the graph a second time" in str(info.value.__cause__)


def test_naive_retain_graph_with_optimizer_steps_hits_the_inplace_error():
    """Why mistake=retain_graph defers its optimizer step: the naive loop fails at chunk 2."""
    torch.manual_seed(0)
    model = tbptt.CharRNN(10, 4, 8, 1, "lstm")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    data = torch.randint(10, (2, 11))
    state = None
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        for i in range(2):
            logits, state = model(data[:, i * 5 : i * 5 + 5], state)
            loss = F.cross_entropy(logits.reshape(-1, 10),
                                   data[:, i * 5 + 1 : i * 5 + 6].reshape(-1))
            opt.zero_grad()
            loss.backward(retain_graph=True)
            opt.step()


def test_retain_graph_bytes_grow_at_least_linearly_over_20_chunks(tmp_path):
    summary = tbptt.train(_tiny(tmp_path, "mistake=retain_graph", "steps=20",
                                "retain_graph_max_chunks=20", "probe_every=2"))
    chunks, saved = zip(*summary["saved_bytes_per_chunk"])
    assert chunks == (1, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20) and saved[0] > 0
    step = saved[1] - saved[0]  # one more chunk of recurrent graph kept alive
    assert step > 0
    for (c0, before), (c1, after) in zip(summary["saved_bytes_per_chunk"],
                                         summary["saved_bytes_per_chunk"][1:]):
        # every chunk adds at least as much: at least linear
        assert after - before >= step * (c1 - c0)
    assert saved[-1] > 10 * saved[0]
    assert (tmp_path / "saved_bytes_per_chunk.png").is_file()


def test_pattern_bytes_are_flat_chunk_50_vs_chunk_5(tmp_path):
    summary = tbptt.train(_tiny(tmp_path, "steps=50", "eval_every=50", "probe_every=5"))
    saved = dict(summary["saved_bytes_per_chunk"])
    assert sorted(saved) == [1, *range(5, 51, 5)]  # sampled chunks only
    assert saved[50] == saved[5] > 0


def test_tbptt_k2_run_holds_k2_over_k1_times_the_bytes(tmp_path):
    plain = tbptt.train(_tiny(tmp_path / "a", "probe_every=1"))["saved_bytes_per_chunk"]
    longer = tbptt.train(_tiny(tmp_path / "b", "k2=24", "probe_every=1"))["saved_bytes_per_chunk"]
    plain, longer = [b for _, b in plain], [b for _, b in longer]
    assert longer[0] == plain[0]  # the window fills up: one chunk, two, then three (k2 = 3 k1) ...
    assert longer[0] < longer[1] < longer[2] == longer[3] == longer[-1]  # ... and stays flat
    assert longer[-1] > 2 * plain[-1]


def test_compile_true_keeps_the_pattern_and_the_checkpoint_keys(tmp_path):
    """compile=true (nn.Module.compile, in place): the bytes held per chunk stay flat, and the
    checkpoint holds the same keys as an eager run's, so either can resume the other."""
    from gallery.core.checkpoint import load_checkpoint

    compiled = tbptt.train(_tiny(tmp_path / "c", "compile=true", "steps=12", "eval_every=12",
                                 "probe_every=4"))
    eager = tbptt.train(_tiny(tmp_path / "e", "steps=12", "eval_every=12", "probe_every=4"))
    held = [b for _, b in compiled["saved_bytes_per_chunk"]]
    # flat: no graph carried across chunks
    assert len(held) == 4 and held[1] == held[2] == held[3] > 0
    assert compiled["steps"] == eager["steps"] == 12
    keys = [set(load_checkpoint(tmp_path / run / "checkpoints" / "last.pt")["model"])
            for run in ("c", "e")]
    assert keys[0] == keys[1] and not any("_orig_mod" in k for k in keys[0])


# --- runs ----------------------------------------------------------------------------------------

def test_smoke_train_through_compose(tmp_path):
    summary = tbptt.train(_tiny(tmp_path))
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert summary["val_bpc"] > 0 and summary["chars_per_sec"] > 0 and summary["steps"] == 6
    assert "--- step 6" in (tmp_path / "samples.txt").read_text()


def test_resume_continues_the_stream(tmp_path):
    tbptt.train(_tiny(tmp_path, "steps=4", "eval_every=4"))
    ckpt = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    tally = ckpt["tally"]
    assert tally["position"] == 4 * 8 and tally["state"] is not None
    assert all(t.grad_fn is None for t in tbptt.state_tensors(tally["state"]))  # saved as data
    summary = tbptt.train(_tiny(tmp_path, "steps=6", "resume=true", "k2=null"))
    assert summary["steps"] == 6


def test_file_data_and_vocab_unknown_slot(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello world, this is a small file of text. " * 40, encoding="utf-8")
    summary = tbptt.train(_tiny(tmp_path / "run", "data=file", f"data.path={text}"))
    assert summary["data"] == "file" and summary["vocab_size"] == len(set(text.read_text())) + 1
    vocab = CharVocab.build("abc")
    assert vocab.encode("abz").tolist() == [1, 2, 0]


def test_pydoc_corpus_is_embedded():
    assert len(load_text("pydoc")) > 400_000


def test_offline_corpus_gives_a_clear_error(tmp_path, monkeypatch):
    import urllib.request

    def offline(*a, **k):
        raise OSError("no network")

    monkeypatch.setattr(urllib.request, "urlretrieve", offline)
    with pytest.raises(GalleryError, match="could not download tiny_shakespeare.*data=pydoc"):
        tbptt.train(_tiny(tmp_path, "data=tiny_shakespeare", f"data.root={tmp_path}"))
    assert not list(tmp_path.glob("*.part"))


@pytest.mark.gpu
def test_gpu_smoke(tmp_path):
    summary = tbptt.train(_tiny(tmp_path, "device=cuda"))
    assert summary["device"].startswith("cuda") and summary["val_bpc"] > 0


# --- this example's row of the check table (tests/test_check.py) ---

def check_step(mistake: str) -> None:
    """This example's step under gallery.check, for the check table in tests/test_check.py: the
    pattern passes every check; each mistake fails with its `caught` sentence."""
    torch.manual_seed(0)
    model = tbptt.CharRNN(10, 4, 8, 1, "lstm")
    optimizer = torch.optim.Adam(model.parameters())
    data, state = torch.randint(10, (2, 41)), None
    for i in range(4):
        if state is not None:
            constant(chunk_start_state=state)
        x, y = data[:, i * 10:(i + 1) * 10], data[:, i * 10 + 1:(i + 1) * 10 + 1]
        _, state = tbptt.BY_MISTAKE[mistake](model, optimizer, [(x, y)], state)
