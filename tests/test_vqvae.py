"""vqvae: the straight-through estimator's contract, each mistake's consequence, a smoke run and one
real process."""

import json

import pytest
import torch
import torch.nn.functional as F

from gallery import vqvae as vq
from gallery.check import gets_grad, no_grad_reaches, unchanged
from gallery.core.cli import compose
from gallery.core.probes import reached_parameters
from gallery.data import images


def _model(seed=0):
    torch.manual_seed(seed)
    model = vq.VQVAE(1, 8, 4, 16, stages=1)
    return model, images.load_digits_tensors()[0][:32]


# --- the pattern's contract ---------------------------------------------------------------------

def test_the_straight_through_output_has_the_codes_value_and_the_identitys_gradient():
    model, x = _model()
    z = model.encoder(x)
    z_q, codes, _, _ = vq.quantize(z, model.codebook)
    e = model.codebook[codes].permute(0, 3, 1, 2)
    assert torch.allclose(z_q, e, atol=1e-6)  # forward: the code
    (grad,) = torch.autograd.grad(z_q.sum(), z)
    assert torch.equal(grad, torch.ones_like(z))  # backward: the identity
    assert reached_parameters(z_q.sum(), {"codebook": model.codebook}) == set()


def test_each_stop_gradient_loss_trains_only_its_own_side():
    model, x = _model()
    _, _, codebook_loss, commitment_loss = vq.quantize(model.encoder(x), model.codebook)
    encoder = dict(model.encoder.named_parameters())
    assert reached_parameters(codebook_loss, {"codebook": model.codebook}) == {"codebook"}
    assert reached_parameters(codebook_loss, encoder) == set()  # sg[z]
    assert reached_parameters(commitment_loss, {"codebook": model.codebook}) == set()  # sg[e]
    assert reached_parameters(commitment_loss, encoder) == set(encoder)


def step(model, optimizer, x, quantize=vq.quantize, beta=0.25):
    """One training step as vqvae's loop composes it: the quantizer, then vq_step on its outputs;
    the reconstruction error and the codes."""
    z_q, codes, codebook_loss, commitment_loss = quantize(model.encoder(x), model.codebook)
    return vq.vq_step(model, optimizer, x, z_q, codebook_loss, commitment_loss, beta), codes


def test_a_pattern_step_trains_the_encoder_the_decoder_and_the_codebook():
    model, x = _model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    with gets_grad(encoder=model.encoder, decoder=model.decoder):
        step(model, optimizer, x)
    assert model.codebook.grad is not None and bool(model.codebook.grad.ne(0).any())


def test_code_usage_reads_k_for_uniform_codes_and_one_for_a_single_code():
    perplexity, used = vq.code_usage(torch.arange(16).repeat(10), 16)
    assert abs(perplexity - 16) < 1e-4 and used == 1.0
    perplexity, used = vq.code_usage(torch.zeros(50, dtype=torch.long), 16)
    assert abs(perplexity - 1) < 1e-6 and used == 1 / 16


# --- the mistakes' consequences ------------------------------------------------------------------

def test_codebook_on_st_leaves_the_codebook_unchanged_while_reconstruction_still_falls():
    model, x = _model()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    with unchanged(codebook_holder=_Holder(model.codebook)):
        for _ in range(60):
            recon, _ = step(model, optimizer, x, vq.quantize_codebook_on_st)
            first = float(recon) if first is None else first
    assert model.codebook.grad is None  # exactly zero: no graph ever reached it
    assert float(recon) < 0.8 * first  # the trap: the reconstruction loss still falls


def test_no_straight_through_gives_the_encoder_no_gradient_from_the_reconstruction():
    model, x = _model()
    z_q, _, _, _ = vq.quantize_no_straight_through(model.encoder(x), model.codebook)
    reconstruction = F.mse_loss(model.decoder(z_q), x)
    assert reached_parameters(reconstruction, model.encoder) == set()
    assert reached_parameters(reconstruction, {"codebook": model.codebook}) == {"codebook"}


class _Holder(torch.nn.Module):
    """A module around one parameter, so that `unchanged` can watch the codebook alone."""

    def __init__(self, parameter):
        super().__init__()
        self.codebook = parameter


# --- runs ----------------------------------------------------------------------------------------

def test_a_smoke_run_writes_its_summary_and_figures(tmp_path):
    s = vq.train(compose("vqvae", ["device=cpu", "steps=20", "eval_every=10", "log_every=10",
                                   "batch_size=32", f"out_dir={tmp_path}"]))
    assert s["steps"] == 20 and not s["codebook_unchanged"]
    assert s["recon_mse"] < s["recon_mse_at_start"]
    assert 0 < s["codes_used"] <= 1 and 1 <= s["perplexity"] <= 32
    assert (tmp_path / "curves.png").is_file() and (tmp_path / "reconstructions.png").is_file()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "recon_loss" in r] == [10, 20]


def test_revive_dead_codes_reseeds_only_codes_idle_past_patience_from_encoder_outputs():
    torch.manual_seed(0)
    model = vq.VQVAE(1, 8, 4, 16, stages=1)
    x = torch.randn(4, 1, 8, 8)
    codebook_before = model.codebook.detach().clone()
    idle = torch.zeros(16, dtype=torch.long)
    idle[:3] = 5  # codes 0-2 idle for 5 steps; the others chosen just now
    used = torch.arange(3, 16)
    assert vq.revive_dead_codes(model.codebook, idle, used, model.encoder, x, 5) == 3
    outputs = model.encoder(x).detach().permute(0, 2, 3, 1).reshape(-1, 4)
    for code in range(3):  # each revived code is one of this batch's encoder outputs
        assert (outputs == model.codebook[code].detach()).all(1).any()
    assert torch.equal(model.codebook[3:].detach(), codebook_before[3:])
    assert idle.tolist() == [0] * 16


def test_no_sg_codebook_lets_the_codebook_loss_pull_the_encoder():
    torch.manual_seed(0)
    model = vq.VQVAE(1, 8, 4, 16, stages=1)
    z = model.encoder(torch.randn(4, 1, 8, 8))
    for quantize, reaches in ((vq.quantize, False), (vq.quantize_no_sg_codebook, True)):
        _, _, codebook_loss, _ = quantize(z, model.codebook)
        grads = torch.autograd.grad(codebook_loss, [model.codebook, *model.encoder.parameters()],
                                    retain_graph=True, allow_unused=True)
        assert grads[0] is not None  # the codebook moves either way
        assert any(g is not None and g.abs().sum() > 0 for g in grads[1:]) is reaches


# --- this example's row of the check table (tests/test_check.py) ---

def check_step(mistake: str) -> None:
    """This example's step under gallery.check, for the check table in tests/test_check.py: the
    pattern passes every check; each mistake fails with its `caught` sentence."""
    torch.manual_seed(0)
    model = vq.VQVAE(1, 8, 4, 16, stages=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    # beta=0: the encoder's only teacher is then the reconstruction, through the straight-through
    with gets_grad(codebook=model.codebook, encoder=model.encoder):
        step(model, optimizer, torch.randn(16, 1, 8, 8), vq.BY_MISTAKE[mistake], beta=0.0)
    # the codebook loss alone trains the codebook alone
    z = model.encoder(torch.randn(16, 1, 8, 8))
    _, _, codebook_loss, _ = vq.BY_MISTAKE[mistake](z, model.codebook)
    with no_grad_reaches(encoder=model.encoder):
        codebook_loss.backward()


@pytest.mark.slow
def test_codebook_on_st_at_the_defaults_moves_its_codebook_only_by_revival(tmp_path):
    """What the mistake's words say of the defaults (revival on): no gradient reaches the
    codebook, so only revival moves it. A whole default run (1,000 steps: codes die only late),
    so it runs with the learning gates (marker slow)."""
    summary = vq.train(compose("vqvae", ["mistake=codebook_on_st", "seed=3", "device=cpu",
                                         f"out_dir={tmp_path}"]))
    assert summary["codes_revived"] > 0 and not summary["codebook_unchanged"]
