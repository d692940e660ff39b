import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gallery import finetune as ft
from gallery.check import gets_grad, unchanged
from gallery.core.cli import compose
from gallery.core.errors import DataError
from gallery.core.probes import SavedTensorMeter, reached_parameters, state_hash
from gallery.nets import digits_cnn


def _model(mistake="none", unfreeze_last=0, seed=0):
    torch.manual_seed(seed)
    backbone = digits_cnn()
    x = torch.randn(32, 1, 8, 8)
    head = ft.make_head(ft.feature_dim(backbone, x), 5, 16)
    model = ft.BY_MISTAKE[mistake](backbone, head, unfreeze_last)
    return model, x, torch.randint(5, (32,))


def _steps(model, x, y, n=3, lr=1e-2):
    opt = torch.optim.SGD(ft.param_groups(model, lr, 0.3), lr=lr)
    for _ in range(n):
        model.train()  # the loop wakes the model every step
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return opt, loss


# --- the pattern's contract ---------------------------------------------------------------------

def test_no_frozen_param_is_in_the_optimizer():
    model, x, y = _model()
    opt, _ = _steps(model, x, y, n=1)
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert not in_opt & {id(p) for p in model.frozen.parameters()}
    assert {id(p) for p in model.head.parameters()} <= in_opt


def test_backbone_hash_unchanged_after_steps_despite_model_train():
    model, x, y = _model()
    before = state_hash(model.backbone)
    _steps(model, x, y, n=5)
    assert not model.frozen.training and model.head.training
    assert state_hash(model.backbone) == before


def test_head_has_grads_and_backbone_params_have_none():
    model, x, y = _model()
    _steps(model, x, y, n=1)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.head.parameters())
    assert all(p.grad is None for p in model.backbone.parameters())


def test_loss_graph_reaches_only_the_head():
    model, x, y = _model()
    model.train()
    loss = F.cross_entropy(model(x), y)
    assert reached_parameters(loss, model.backbone) == set()
    assert reached_parameters(loss, model.head) == {n for n, _ in model.head.named_parameters()}


def test_cached_features_equal_a_fresh_eval_forward():
    model, x, _ = _model()
    model.train()
    cached = ft.cache_features(model, x, batch=7)
    fresh_model, _, _ = _model()
    fresh_model.eval()
    with torch.no_grad():
        fresh = fresh_model.frozen(x)
    torch.testing.assert_close(cached, fresh)
    assert cached.grad_fn is None and not cached.is_inference()


def test_unfreeze_last_trains_those_blocks_with_smaller_lr():
    model, x, y = _model(unfreeze_last=3)  # the pooling block has no params, then two conv blocks
    groups = ft.param_groups(model, 1.0, 0.5)
    assert [g["lr"] for g in groups] == [1.0, 0.5, 0.25]
    frozen_before = state_hash(model.frozen)
    _steps(model, x, y, n=2)
    assert state_hash(model.frozen) == frozen_before


def _grads_and_buffers(model, x, y):
    torch.manual_seed(0)  # the head's dropout draws the same masks
    model.train()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    return grads, [b.clone() for b in model.buffers()]


@pytest.mark.parametrize("mistake, unfreeze_last", [("none", 2), ("no_freeze", 0)])
def test_checkpointing_gives_the_same_grads_and_buffers_and_saves_fewer_bytes(
        mistake, unfreeze_last):
    plain, x, y = _model(mistake, unfreeze_last)
    checkpointed, _, _ = _model(mistake, unfreeze_last)
    ft.checkpoint_trainable(checkpointed)
    wrapped = {part for part in ("frozen", "trainable") if isinstance(
        getattr(checkpointed, part), ft.Checkpointed)}
    # the part that trains
    assert wrapped == ({"frozen"} if mistake == "no_freeze" else {"trainable"})
    with SavedTensorMeter() as plain_meter:
        grads, buffers = _grads_and_buffers(plain, x, y)
    with SavedTensorMeter() as checkpointed_meter:
        grads_c, buffers_c = _grads_and_buffers(checkpointed, x, y)
    assert len(grads) == len(grads_c) > 2
    for a, b in zip(grads, grads_c):
        torch.testing.assert_close(a, b)
    for a, b in zip(buffers, buffers_c):  # BatchNorm folded each batch into its running stats once
        assert torch.equal(a, b)
    assert checkpointed_meter.total < 0.6 * plain_meter.total


def test_recomputation_without_buffers_kept_counts_the_batch_twice_in_batchnorm():
    plain, x, y = _model(unfreeze_last=2)
    checkpointed, _, _ = _model(unfreeze_last=2)

    def forward(blocks, x):  # Checkpointed.forward without its context_fn
        for block in blocks.blocks:
            x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
        return x

    checkpointed.trainable = ft.Checkpointed(checkpointed.trainable)
    checkpointed.trainable.forward = lambda x: forward(checkpointed.trainable, x)
    _, buffers = _grads_and_buffers(plain, x, y)
    _, buffers_c = _grads_and_buffers(checkpointed, x, y)
    assert any(not torch.equal(a, b) for a, b in zip(buffers, buffers_c))


def test_the_pasted_checkpointed_blocks_match_the_modules():
    import contextlib
    import inspect

    namespace = {"torch": torch, "nn": torch.nn, "F": F, "contextlib": contextlib}
    for name in ("buffers_kept", "Checkpointed"):
        exec(inspect.getsource(getattr(ft, name)), namespace)
    plain, x, y = _model(unfreeze_last=2)
    pasted, _, _ = _model(unfreeze_last=2)
    pasted.trainable = namespace["Checkpointed"](pasted.trainable)
    for a, b in zip(_grads_and_buffers(plain, x, y)[0], _grads_and_buffers(pasted, x, y)[0]):
        torch.testing.assert_close(a, b)


# --- the mistakes' consequences --------------------------------------------------------------

def test_bn_train_changes_the_frozen_backbone_hash():
    model, x, y = _model(mistake="bn_train")
    before = state_hash(model.backbone)
    _steps(model, x, y, n=2)
    assert all(p.grad is None for p in model.backbone.parameters())  # params really are frozen ...
    assert state_hash(model.backbone) != before  # ... but the BatchNorm running stats moved


def test_no_freeze_saves_more_bytes_and_changes_the_backbone():
    pattern, x, y = _model()
    full, _, _ = _model(mistake="no_freeze")
    with SavedTensorMeter() as p_meter:
        _steps(pattern, x, y, n=1)
    before = state_hash(full.backbone)
    with SavedTensorMeter() as f_meter:
        _steps(full, x, y, n=1)
    assert f_meter.total > 4 * p_meter.total
    assert state_hash(full.backbone) != before


def test_checkpoint_reentrant_gives_the_trained_blocks_no_grad_and_torch_only_warns():
    model, x, y = _model(unfreeze_last=2)
    ft.checkpoint_trainable(model, ft.CheckpointedReentrant)
    before = state_hash(model.trainable, buffers=False)
    with pytest.warns(UserWarning, match="None of the inputs have requires_grad=True. Gradients "
                                         "will be None"):
        _steps(model, x, y, n=2)
    # the checkpointed blocks learned nothing
    assert all(p.grad is None for p in model.trainable.parameters())
    # while the head trains as usual
    assert all(p.grad is not None for p in model.head.parameters())
    # (their BatchNorm stats still move)
    assert state_hash(model.trainable, buffers=False) == before


# --- runs ----------------------------------------------------------------------------------------

@pytest.fixture
def pretrained(pretrained_backbone):
    """The session's small pretrained backbone (tests/conftest.py)."""
    return pretrained_backbone


def _tiny(tmp_path, ckpt, *overrides):
    return compose("finetune", [f"out_dir={tmp_path}", f"backbone.checkpoint_dir={ckpt}",
                                "device=cpu", "steps=6", "eval_every=3", "log_every=3", *overrides])


def test_smoke_finetune_through_compose_preserves_the_pretraining_task_exactly(
        tmp_path, pretrained):
    from gallery.core.checkpoint import load_checkpoint

    summary = ft.train(_tiny(tmp_path, pretrained))
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert summary["backbone_unchanged"] is True
    assert summary["trainable_params"] > 0
    assert summary["frozen_params"] > summary["trainable_params"]
    assert 0 <= summary["val_acc"] <= 1 and summary["saved_bytes_per_step"] > 0
    # the frozen backbone's task
    assert summary["old_task_acc"] == load_checkpoint(pretrained / "last.pt")["val_acc"]


@pytest.mark.parametrize("mistake, changed", [("none", True), ("checkpoint_reentrant", False)])
def test_checkpointed_run_trains_the_unfrozen_blocks_unless_reentrant(
        tmp_path, pretrained, mistake, changed):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = ft.train(_tiny(tmp_path, pretrained, "checkpoint=true", "unfreeze_last=2",
                                 f"mistake={mistake}"))
    assert summary["unfrozen_blocks_changed"] is changed and summary["backbone_unchanged"] is True
    warned = any("Gradients will be None" in str(w.message) for w in caught)
    assert warned is not changed  # the only sign torch gives of the reentrant mistake is a warning


def test_bn_train_run_reports_backbone_changed(tmp_path, pretrained):
    assert ft.train(_tiny(tmp_path, pretrained, "mistake=bn_train"))["backbone_unchanged"] is False


def test_cached_features_run_matches_the_pattern(tmp_path, pretrained):
    plain = ft.train(_tiny(tmp_path / "a", pretrained, "head_hidden=0"))
    cached = ft.train(_tiny(tmp_path / "b", pretrained, "head_hidden=0", "cache_features=true"))
    assert cached["val_acc"] == pytest.approx(plain["val_acc"], abs=1e-6)


def test_few_shot_split_keeps_labels_per_class(tmp_path, pretrained):
    summary = ft.train(_tiny(tmp_path, pretrained, "data.labels_per_class=3"))
    assert summary["train_size"] == 15


def test_missing_backbone_is_built_on_first_use(tmp_path):
    ckpt = tmp_path / "fresh"
    ft.train(_tiny(tmp_path / "run", ckpt, "backbone.pretrain_steps=5"))
    assert (ckpt / "last.pt").is_file()


def test_offline_resnet18_weights_name_the_missing_file(tmp_path, monkeypatch):
    from torchvision.models import ResNet18_Weights

    def offline(self, *a, **k):
        raise OSError("no network")

    monkeypatch.setattr(type(ResNet18_Weights.IMAGENET1K_V1), "get_state_dict", offline)
    with pytest.raises(DataError, match=r"resnet18-f37072fd\.pth.*backbone.weights_path"):
        ft.train(_tiny(tmp_path, tmp_path, "backbone=resnet18"))


@pytest.mark.gpu
def test_gpu_smoke(tmp_path, pretrained):
    summary = ft.train(_tiny(tmp_path, pretrained, "device=cuda"))
    assert summary["device"].startswith("cuda") and summary["backbone_unchanged"] is True


# --- this example's row of the check table (tests/test_check.py) ---

def check_step(mistake: str) -> None:
    """This example's step under gallery.check, for the check table in tests/test_check.py: the
    pattern passes every check; each mistake fails with its `caught` sentence."""
    torch.manual_seed(0)
    block = lambda c_in: nn.Sequential(nn.Conv2d(c_in, 4, 3), nn.BatchNorm2d(4), nn.ReLU())  # noqa: E731
    backbone = nn.Sequential(block(1, ), block(4), nn.Sequential(nn.AdaptiveAvgPool2d(1),
                                                                  nn.Flatten()))
    model = ft.BY_MISTAKE[mistake](backbone, nn.Linear(4, 3), 2)
    model = ft.checkpoint_trainable(
        model, ft.CHECKPOINTED.get(mistake, ft.Checkpointed))
    optimizer = torch.optim.SGD(ft.param_groups(model, 0.1), lr=0.1)
    x, y = torch.randn(8, 1, 8, 8), torch.randint(3, (8,))
    with unchanged(frozen_blocks=model.frozen), gets_grad(trainable_blocks=model.trainable):
        for _ in range(2):
            model.train()
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
