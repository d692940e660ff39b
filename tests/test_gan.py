import json
import math

import pytest
import torch
from torch import nn

from gallery import gan, nets
from gallery.check import has_graph, no_grad_reaches
from gallery.core.cli import compose
from gallery.core.errors import ExplainedMistake, GalleryError
from gallery.core.probes import (
    grad_snapshot,
    grad_written_norm,
    grads_absent,
    reached_parameters,
    recording,
)
from tests.conftest import ROOT, results_of


def _setup(seed=0):
    torch.manual_seed(seed)
    g = nets.mlp(4, 2, 32, 2, sn=False)
    d = nets.mlp(2, 1, 32, 2, sn=False)
    opt_g = torch.optim.Adam(g.parameters(), lr=1e-3)
    opt_d = torch.optim.Adam(d.parameters(), lr=1e-3)
    real = torch.randn(16, 2)
    z = torch.randn(16, 4)
    return g, d, opt_g, opt_d, real, z


# --- the pattern's contract ---------------------------------------------------------------------

def test_d_step_writes_no_grad_into_g_and_its_graph_reaches_no_g_parameter():
    g, d, opt_g, opt_d, real, z = _setup()
    fake = g(z)
    with recording(gan, "d_loss_fn") as built:  # the loss the step built; it returns it detached
        d_loss = gan.discriminator_step(d, opt_d, real, fake)
    assert grads_absent(g)
    assert all(p.grad is None for p in g.parameters())
    assert d_loss.grad_fn is None and d_loss.requires_grad is False
    graph = built[0][0]
    assert reached_parameters(graph, g) == set()
    assert reached_parameters(graph, d) == {name for name, _ in d.named_parameters()}


def test_g_step_reuses_the_same_fake_and_gives_g_nonzero_grads():
    g, d, opt_g, opt_d, real, z = _setup()
    fake = g(z)
    gan.discriminator_step(d, opt_d, real, fake)
    before = [p.detach().clone() for p in g.parameters()]
    gan.generator_step(d, opt_g, fake)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in g.parameters())
    assert all(not torch.equal(a, p) for a, p in zip(before, g.parameters()))


def test_r1_penalty_keeps_the_d_step_off_g():
    g, d, opt_g, opt_d, real, z = _setup()
    with recording(gan, "d_loss_fn") as built:
        gan.discriminator_step(d, opt_d, real, g(z), r1_gamma=1.0)
    assert reached_parameters(built[0][0], g) == set() and grads_absent(g)


# --- the mistakes' consequences --------------------------------------------------------------

def _g_grads_after(mistake):
    """(grad the D step wrote into G, whether D's graph reached G, the grads G's update used)."""
    g, d, opt_g, opt_d, real, z = _setup()
    fake = g(z)
    snap = grad_snapshot(g)
    d_step = {"none": gan.discriminator_step, "retain_graph": gan.discriminator_step_retain_graph}
    with recording(gan, "d_loss_fn") as built:
        d_step[mistake.removesuffix("_shared_zero_grad")](d, opt_d, real, fake)
    written = grad_written_norm(g, snap)
    reaches = reached_parameters(built[0][0], g)
    opt_g.step = lambda: None  # keep the grads G's step would use, without applying them
    shared = mistake.endswith("shared_zero_grad")
    g_step = gan.generator_step_shared_zero_grad if shared else gan.generator_step
    g_step(d, opt_g, fake)
    return written, reaches, [p.grad.clone() for p in g.parameters()]


def test_retain_graph_writes_into_g_during_the_d_step_but_trains_correctly():
    _, _, pattern_grads = _g_grads_after("none")
    written, reaches, grads = _g_grads_after("retain_graph")
    assert written > 0 and reaches  # the wasted backward through G
    for a, b in zip(pattern_grads, grads):  # ... then cleared: same G update as the pattern
        torch.testing.assert_close(a, b)


def _tiny(tmp_path, *overrides):
    return compose("gan", [f"out_dir={tmp_path}", "device=cpu", "steps=4", "log_every=2",
                                  "eval_every=4", "hidden=16", "batch_size=32", "eval_samples=64",
                           *overrides])


def test_no_detach_raises_and_explains_the_fix(tmp_path):
    with pytest.raises(ExplainedMistake) as info:
        gan.train(_tiny(tmp_path, "mistake=no_detach"))
    text = str(info.value)
    assert "fake.detach()" in text and "freed G's graph" in text
    assert "backward through the graph a second time" in str(info.value.__cause__)


def test_reuse_d_output_raises_inplace_error_and_explains(tmp_path):
    with pytest.raises(ExplainedMistake) as info:
        gan.train(_tiny(tmp_path, "mistake=reuse_d_output"))
    assert "opt_d.step()" in str(info.value)
    assert "modified by an inplace operation" in str(info.value.__cause__)


def test_penalty_no_create_graph_leaves_ds_gradient_exactly_as_without_the_penalty():
    """The penalty's gradient term is a constant without create_graph=True: D's grads match the
    penalty-free loss's bit for bit, while the pattern's differ."""
    g, d, _, _, real, z = _setup()
    fake = g(z).detach()

    def d_grads(loss_fn, gamma):
        d.zero_grad(set_to_none=True)
        loss, _ = loss_fn(d, real, fake, gamma)
        loss.backward()
        return torch.cat([p.grad.flatten() for p in d.parameters()])

    without = d_grads(gan.d_loss_fn, 0.0)
    assert torch.equal(d_grads(gan.d_loss_fn_penalty_no_create_graph, 10.0), without)
    assert not torch.allclose(d_grads(gan.d_loss_fn, 10.0), without)
    # the penalty is there in the loss's value: only its gradient is missing
    mistake_value, _ = gan.d_loss_fn_penalty_no_create_graph(d, real, fake, 10.0)
    assert float(mistake_value.detach()) > float(gan.d_loss_fn(d, real, fake, 0.0)[0].detach())


def test_each_iteration_variant_trains_like_its_step_functions():
    """gan_step_* are the loop's unit; with the shared zero_grad G's update carries D's gradient."""
    grads = {}
    for mistake in ("none", "retain_graph", "retain_graph_shared_zero_grad"):
        g, d, opt_g, opt_d, real, z = _setup()
        opt_g.step = lambda: None
        gan.BY_MISTAKE[mistake](d, opt_d, opt_g, real, g(z))
        grads[mistake] = torch.cat([p.grad.flatten() for p in g.parameters()])
    torch.testing.assert_close(grads["none"], grads["retain_graph"])
    assert not torch.allclose(grads["none"], grads["retain_graph_shared_zero_grad"])


def test_retain_graph_costs_saved_bytes_in_the_d_step(tmp_path):
    """Also the smoke train of the default data (ring8): the pattern's run is checked as the others
    below."""
    pattern = gan.train(_tiny(tmp_path / "p"))
    check_smoke_run(tmp_path / "p", pattern, "ring8")
    mistake = gan.train(_tiny(tmp_path / "m", "mistake=retain_graph"))
    assert pattern["g_grad_norm_after_d_step"] == 0.0
    assert mistake["g_grad_norm_after_d_step"] > 0
    assert mistake["d_step_saved_bytes"] > pattern["d_step_saved_bytes"]
    assert mistake["iter_peak_saved_bytes"] > pattern["iter_peak_saved_bytes"]


# --- smoke runs --------------------------------------------------------------------------------

# ring8: in the retain_graph test above
@pytest.mark.parametrize("data", ["grid25", "digits", "fake"])
def test_smoke_train_through_compose(tmp_path, data):
    check_smoke_run(tmp_path, gan.train(_tiny(tmp_path, f"data={data}")), data)


def check_smoke_run(tmp_path, summary: dict, data: str) -> None:
    assert summary["data"] == data
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved == summary and summary["steps"] == 4
    assert summary["g_grad_norm_after_d_step"] == 0.0
    assert list(tmp_path.glob("samples_step000004.png"))
    assert (tmp_path / "checkpoints" / "last.pt").is_file()
    if data in ("ring8", "grid25"):
        assert 0 <= summary["modes_covered"] <= (8 if data == "ring8" else 25)
        assert 0.0 <= summary["high_quality_frac"] <= 1.0


def test_resume_continues_from_the_checkpoint(tmp_path):
    gan.train(_tiny(tmp_path, "steps=4"))
    resumed = gan.train(_tiny(tmp_path, "steps=6", "resume=true"))
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert resumed["steps"] == 6
    # the first run logged steps 2 and 4; the resumed one starts at 5, so step 2 is logged once
    assert [r["step"] for r in rows if "d_loss" in r] == [2, 4, 6]


def test_offline_dataset_gives_a_clear_error(tmp_path, monkeypatch):
    import torchvision

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    with pytest.raises(GalleryError, match="could not download or verify mnist.*data=digits"):
        gan.train(_tiny(tmp_path, "data=mnist"))


@pytest.mark.gpu
def test_gpu_smoke(tmp_path):
    summary = gan.train(_tiny(tmp_path, "device=cuda", "data=digits"))
    assert summary["device"].startswith("cuda") and summary["g_grad_norm_after_d_step"] == 0.0


def test_standardize_trains_on_unit_std_data_and_maps_samples_back_to_data_units():
    from gallery.data.mixtures import mixture, mode_metrics

    grid = mixture("grid", 25, 2.0, 0.05, torch.device("cpu"), seed=0, standardize=True)
    raw = mixture("grid", 25, 2.0, 0.05, torch.device("cpu"), seed=0)
    assert raw.unit == 1.0 and torch.allclose(grid.to_data(grid.sample(500)), raw.sample(500),
                                              atol=1e-5)
    x = grid.sample(20000)
    # what G learns to produce and D reads
    assert torch.allclose(x.std(dim=0), torch.ones(2), atol=0.03)
    # metrics in data units
    assert mode_metrics(grid.to_data(x), grid.centres, grid.std, 20)["modes_covered"] == 25
    cfg = compose("gan", ["data=grid25", "steps=2", "eval_samples=64", "hidden=16"])
    data = gan.build_data(cfg, torch.device("cpu"))
    g, _ = gan.build_models(cfg, data, torch.device("cpu"))
    z = torch.randn(64, cfg.z_dim)
    result = gan.evaluate(g, data, z, cfg)
    with torch.no_grad():
        # figures, metrics: data units
        assert torch.equal(result["samples"], (g.eval()(z) * data.unit).float())
    # grid25's spread: sqrt(8 + 0.05**2)
    assert data.unit == pytest.approx(grid.unit) and grid.unit > 2.8


def test_lazy_r1_puts_the_penalty_on_every_nth_d_step_at_n_times_gamma(tmp_path, monkeypatch):
    seen = []

    def recording_step(d, opt_d, opt_g, real, fake, r1_gamma=0.0):
        seen.append(r1_gamma)
        return gan.gan_step(d, opt_d, opt_g, real, fake, r1_gamma)

    monkeypatch.setitem(gan.BY_MISTAKE, "none", recording_step)
    gan.train(_tiny(tmp_path, "steps=8", "eval_every=8", "r1_gamma=0.1", "r1_every=4"))
    # the same penalty per 4 steps as 0.1 on each
    assert seen == pytest.approx([0, 0, 0, 0.4, 0, 0, 0, 0.4])


def test_the_mixture_configs_use_lazy_r1_and_r1_every_must_be_positive(tmp_path):
    assert compose("gan", ["data=grid25"]).r1_every == 4 and compose(
        "gan", ["data=digits"]).r1_every == 1
    with pytest.raises(GalleryError, match="r1_every"):
        gan.train(_tiny(tmp_path, "r1_every=0"))


def test_a_mixture_past_the_measured_sizes_warns_once_and_the_help_says_where_it_stops(capsys):
    for layout, largest in gan.MEASURED_MODES.items():
        side = math.isqrt(largest)
        bigger = largest * 2 if layout == "ring" else (side + 1) ** 2
        for modes, warned in ((largest, False), (bigger, True)):
            cfg = compose("gan", ["data=mixture", f"data.layout={layout}", f"data.modes={modes}"])
            gan.build_data(cfg, torch.device("cpu"))
            err = capsys.readouterr().err
            assert (f"data.modes={modes} on a {layout}" in err) is warned
            assert err.count("warning:") == int(warned)
    for named in ("ring8", "grid25"):  # the benchmarks themselves are measured
        gan.build_data(compose("gan", [f"data={named}"]), torch.device("cpu"))
    assert capsys.readouterr().err == ""
    limits = gan.EXAMPLE.describe().split("Limits of the default config:")[1]
    assert f"rings of up to {gan.MEASURED_MODES['ring']} modes" in " ".join(limits.split())


def test_the_measured_sizes_are_those_the_gate_wrote():
    gate = json.loads((ROOT / "docs" / "gates.json").read_text())["gan_sizes"]
    assert gan.MEASURED_MODES == gate["holds_up_to"]
    for name, entry in gate.items():
        if isinstance(entry, dict) and "pass" in entry:  # each size: the verdict from its means
            modes = int("".join(filter(str.isdigit, name)))
            assert entry["pass"] == (entry["mean_modes"] >= 0.9 * modes
                                     and entry["mean_high_quality"] >= 0.8
                                     and entry["wall_over_ring8"] <= 3)


# --- this example's row of the check table (tests/test_check.py) ---

def check_step(mistake: str) -> None:
    """This example's step under gallery.check, for the check table in tests/test_check.py: the
    pattern passes every check; each mistake fails with its `caught` sentence."""
    torch.manual_seed(0)
    g = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
    d = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 1))
    opt_g, opt_d = torch.optim.Adam(g.parameters()), torch.optim.Adam(d.parameters())
    with results_of(torch.autograd, "grad") as penalty_grads:
        with no_grad_reaches(generator=g, before=opt_d):  # the D step trains D only
            gan.BY_MISTAKE[mistake](d, opt_d, opt_g, torch.randn(8, 2), g(torch.randn(8, 4)),
                                    r1_gamma=1.0)
    has_graph(r1_grad=penalty_grads)  # the R1 penalty is built on a gradient with a graph
