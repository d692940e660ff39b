import math
from pathlib import Path

import pytest
import torch
from torch import nn

from gallery import simsiam as ss
from gallery.check import constant, gets_grad
from gallery.core.cli import compose
from gallery.core.probes import reached_parameters
from gallery.data import images
from tests.conftest import arguments_of


def _nets(seed=0, dim=16):
    torch.manual_seed(seed)
    encoder = ss.make_encoder(1, 8, 32, dim, projector_bn=False)
    predictor = ss.make_predictor(dim, dim // 4)
    x = images.load_digits_tensors()[0][:32]
    return encoder, predictor, images.random_views(x), images.random_views(x)


# --- the pattern's contract ---------------------------------------------------------------------

def test_the_encoders_gradient_comes_only_through_the_predictions():
    encoder, predictor, x1, x2 = _nets()
    assert ss.target_branch_grad_share(ss.simsiam_loss, encoder, predictor, x1, x2) < 1e-6
    loss = ss.simsiam_loss(encoder, predictor, x1, x2)
    assert reached_parameters(loss, predictor) == {n for n, _ in predictor.named_parameters()}


def test_no_stop_grad_sends_a_large_share_of_the_gradient_through_the_targets():
    encoder, predictor, x1, x2 = _nets()
    share = ss.target_branch_grad_share(ss.simsiam_loss_no_stop_grad, encoder, predictor, x1, x2)
    assert share > 0.1


def test_no_predictor_keeps_the_stop_gradient_but_the_predictor_never_trains():
    encoder, predictor, x1, x2 = _nets()
    assert ss.target_branch_grad_share(ss.simsiam_loss_no_predictor, encoder, predictor, x1,
                                       x2) < 1e-6
    loss = ss.simsiam_loss_no_predictor(encoder, predictor, x1, x2)
    assert reached_parameters(loss, predictor) == set()
    loss.backward()
    assert all(p.grad is None for p in predictor.parameters())


def test_the_probe_leaves_batchnorm_statistics_and_modes_alone():
    encoder, predictor, x1, x2 = _nets()
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    ss.target_branch_grad_share(ss.simsiam_loss, encoder, predictor, x1, x2)
    assert encoder.training and predictor.training
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())
    assert all(p.grad is None for p in encoder.parameters())


def test_output_std_reads_about_one_over_sqrt_d_when_spread_and_zero_when_collapsed():
    torch.manual_seed(0)
    d = 64
    spread = ss.output_std(torch.randn(4000, d))
    collapsed = ss.output_std(torch.ones(4000, d) + 1e-4 * torch.randn(4000, d))
    assert abs(float(spread) * math.sqrt(d) - 1) < 0.02
    assert float(collapsed) * math.sqrt(d) < 1e-3


def test_knn_accuracy_is_one_on_separate_clusters_and_near_chance_on_shuffled_labels():
    torch.manual_seed(0)
    centers = torch.randn(5, 32) * 5
    labels = torch.arange(5).repeat_interleave(40)
    bank = centers[labels] + torch.randn(200, 32)
    queries = centers[labels] + torch.randn(200, 32)
    assert ss.knn_accuracy(bank, labels, queries, labels, k=20) == 1.0
    shuffled = labels[torch.randperm(200)]
    assert ss.knn_accuracy(bank, shuffled, queries, labels, k=20) < 0.45


def test_random_views_differ_keep_the_shape_and_follow_the_seed():
    x = images.load_digits_tensors()[0][:16]
    torch.manual_seed(3)
    a, b = images.random_views(x), images.random_views(x, flip=True)
    torch.manual_seed(3)
    assert torch.equal(a, images.random_views(x))
    assert a.shape == x.shape and torch.isfinite(a).all() and torch.isfinite(b).all()
    assert (a - b).abs().mean() > 0.1 and (a - x).abs().mean() > 0.05
    still = images.random_views(x, crop_scale=1.0, rotate=0.0, jitter=0.0, noise=0.0, aspect=0.0)
    assert torch.allclose(still, x, atol=1e-5)  # no augmentation: the image itself


# --- runs ---------------------------------------------------------------------------------------

SHORT = ["device=cpu", "seed=0", "steps=100", "eval_every=50", "log_every=50"]


@pytest.fixture(scope="module")
def short_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("simsiam")
    return {m: ss.train(compose("simsiam", [*SHORT, f"mistake={m}", f"out_dir={out}/{m}"]))
            for m in ss.BY_MISTAKE}


def test_a_run_measures_the_baselines_and_draws_its_curves(short_runs):
    s = short_runs["none"]
    assert [c["step"] for c in s["curve"]] == [0, 50, 100]
    assert s["knn_random_encoder"] == s["curve"][0]["knn_acc"] and s["curve"][0]["loss"] is None
    assert 0.9 < s["knn_raw_pixels"] <= 1.0
    assert s["target_branch_grad_share"] < 1e-6
    out = Path(s["out_dir"])
    assert (out / "curves.png").is_file() and (out / "checkpoints" / "last.pt").is_file()


def test_no_stop_grad_collapses_while_its_loss_looks_better_than_the_patterns(short_runs):
    """The consequence, in 100 steps: loss near its minimum of -1, output std near 0, kNN down."""
    pattern, mistake = short_runs["none"], short_runs["no_stop_grad"]
    assert mistake["loss"] < -0.99 and mistake["loss"] < pattern["loss"]
    assert mistake["output_std_sqrt_d"] < 0.1 < 0.3 < pattern["output_std_sqrt_d"]
    assert mistake["knn_acc"] < pattern["knn_acc"]
    assert mistake["target_branch_grad_share"] > 0.1


def test_no_predictor_keeps_the_stop_gradient(short_runs):
    assert short_runs["no_predictor"]["target_branch_grad_share"] < 1e-6


def test_cifar10_offline_names_the_dataset_and_an_embedded_alternative(tmp_path, monkeypatch):
    import torchvision

    from gallery.core.errors import DataError

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(DataError, match="could not download or verify cifar10.*data=digits"):
        ss.train(compose("simsiam", ["data=cifar10", f"data.root={tmp_path}",
                                     f"out_dir={tmp_path / 'run'}", "device=cpu"]))
    assert not (tmp_path / "run").exists()


@pytest.mark.gpu
def test_gpu_smoke(tmp_path):
    s = ss.train(compose("simsiam", ["device=cuda", "steps=4", "eval_every=2", "log_every=2",
                                     "batch_size=32", f"out_dir={tmp_path}"]))
    assert s["device"].startswith("cuda") and s["target_branch_grad_share"] < 1e-2


# --- this example's row of the check table (tests/test_check.py) ---

def check_step(mistake: str) -> None:
    """This example's step under gallery.check, for the check table in tests/test_check.py: the
    pattern passes every check; each mistake fails with its `caught` sentence."""
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8), nn.ReLU(),
                            nn.Linear(8, 4))
    predictor = ss.make_predictor(4, 8)
    optimizer = torch.optim.SGD([*encoder.parameters(), *predictor.parameters()], lr=0.1)
    x1, x2 = torch.randn(8, 1, 4, 4), torch.randn(8, 1, 4, 4)
    with arguments_of(ss, "negative_cosine") as calls, gets_grad(predictor=predictor):
        loss = ss.BY_MISTAKE[mistake](encoder, predictor, x1, x2)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    constant(targets=[z for _, z in calls])
