"""Fine-tuning with a frozen backbone: only the head trains, and the backbone stays bit-for-bit unchanged.

    backbone.requires_grad_(False)                     # no grads, so no optimizer state either
    backbone.eval()                                    # BatchNorm uses, and keeps, its running stats
    optimizer = Adam(p for p in model.parameters() if p.requires_grad)
    with torch.no_grad():                              # no graph through the backbone at all
        features = backbone(x)
    loss = ce(head(features), y)

`FrozenBackboneClassifier.train()` puts the backbone back in eval mode, so a training loop that
calls `model.train()` cannot wake BatchNorm up. The mistakes (`mistake=`), and what they cost:

- no_freeze: the whole network trains: more time and bytes saved for backward per step
  (scripts/bench.py finetune), and on few-shot data it can forget what pretraining taught.
- bn_train: params frozen, backbone left in train mode: BatchNorm's running stats drift with
  every batch, so the "frozen" backbone changes (its state hash does) and eval accuracy can drop.

Run: python -m gallery.finetune seed=0 out_dir=/tmp/ft          (stage=pretrain builds the backbone;
     the default stage builds it on first use)
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import hydra
import torch
import torch.nn.functional as F
from omegaconf import MISSING
from torch import nn

from gallery.core.checkpoint import load_checkpoint, save_checkpoint
from gallery.core.config import (
    BaseConfig,
    print_help_if_asked,
    register_schema,
    require_choice,
    require_non_negative,
    require_positive,
    require_range,
    run_cli,
    to_schema,
    validate_base,
)
from gallery.core.device import autocast, resolve_device
from gallery.core.errors import ConfigError, DataError
from gallery.core.probes import SavedTensorMeter, state_hash
from gallery.core.registry import Example, Mistake
from gallery.core.run import Run, progress, resolve_out_dir
from gallery.core.seeding import seed_everything
from gallery.data import images

EXAMPLE = Example(
    name="finetune",
    pattern="frozen backbone: requires_grad_(False), kept in eval mode, features under no_grad, head-only optimizer",
    mistakes={
        "no_freeze": Mistake(
            "the whole network trains",
            "more time and bytes saved for backward per step; the pretraining task is no longer preserved",
        ),
        "bn_train": Mistake(
            "params frozen but the backbone left in train mode",
            "BatchNorm running stats drift: the 'frozen' backbone's state hash changes",
        ),
    },
)
PRETRAIN_CLASSES, FINETUNE_CLASSES = [0, 1, 2, 3, 4], [5, 6, 7, 8, 9]


# --- config schema -----------------------------------------------------------------------------

@dataclass
class BackboneConfig:
    name: str = MISSING  # digits_cnn | resnet18
    checkpoint_dir: str = "data_cache/digits_cnn"  # digits_cnn: built by stage=pretrain, or on first use
    weights: str = "imagenet"  # resnet18: imagenet | random
    weights_path: str | None = None  # resnet18: a local .pth state dict instead of the download
    pretrain_steps: int = 600
    pretrain_seed: int = 0


@dataclass
class FinetuneData:
    name: str = MISSING  # digits | cifar10 | imagefolder
    root: str = "data_cache"
    labels_per_class: int | None = None  # few-shot: keep this many training images per class
    val_fraction: float = 0.3
    split_seed: int = 0
    image_size: int | None = None  # None: 8 for digits_cnn, 224 for resnet18


@dataclass
class FinetuneConfig(BaseConfig):
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    data: FinetuneData = field(default_factory=FinetuneData)
    stage: str = "finetune"  # pretrain | finetune
    steps: int = 300
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    head_hidden: int = 128  # 0: a linear probe
    unfreeze_last: int = 0  # gradual unfreezing: train the last N backbone blocks too
    layer_lr_decay: float = 0.3  # each unfrozen block deeper in gets lr * decay**depth
    cache_features: bool = False  # compute frozen features once per dataset
    eval_every: int = 100
    log_every: int = 50


register_schema("finetune", FinetuneConfig)


def validate(cfg: FinetuneConfig) -> None:
    validate_base(cfg, EXAMPLE.mistakes)
    require_choice(cfg, "stage", ["pretrain", "finetune"])
    require_choice(cfg, "backbone.name", ["digits_cnn", "resnet18"])
    require_choice(cfg, "data.name", ["digits", "cifar10", "imagefolder"])
    require_positive(cfg, "batch_size", "lr", "backbone.pretrain_steps")
    require_non_negative(cfg, "unfreeze_last", "head_hidden", "weight_decay")
    require_range(cfg, "data.val_fraction", 0.05, 0.9)
    if cfg.data.labels_per_class is not None:
        require_positive(cfg, "data.labels_per_class")
    if cfg.resume:
        raise ConfigError("resume=true: finetune runs are short and restart from the pretrained backbone")
    if cfg.cache_features and (cfg.unfreeze_last or cfg.mistake != "none"):
        raise ConfigError("cache_features=true needs a fully frozen backbone (unfreeze_last=0, mistake=none)")


# --- models --------------------------------------------------------------------------------------

def conv_block(a: int, b: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(a, b, 3, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU())


def digits_cnn() -> nn.Sequential:
    """A small CNN for 8x8 digits; each child is one block, so `unfreeze_last` can count them."""
    return nn.Sequential(
        conv_block(1, 32),
        nn.Sequential(conv_block(32, 64), nn.MaxPool2d(2)),
        conv_block(64, 128),
        nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()),
    )


def resnet18_backbone(cfg: BackboneConfig) -> nn.Sequential:
    from torchvision.models import ResNet18_Weights, resnet18

    net = resnet18(weights=None)
    if cfg.weights_path:
        path = Path(cfg.weights_path)
        if not path.is_file():
            raise DataError(f"backbone.weights_path={path} does not exist")
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    elif cfg.weights == "imagenet":
        weights = ResNet18_Weights.IMAGENET1K_V1
        try:  # torch.hub checks the file's hash prefix on download
            net.load_state_dict(weights.get_state_dict(progress=False))
        except Exception as err:
            cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
            raise DataError(
                f"ResNet-18 ImageNet weights are missing: {cache} does not exist and {weights.url} "
                f"could not be downloaded ({type(err).__name__}). Put the file there, pass "
                "backbone.weights_path=/path/to/resnet18.pth, or use backbone.weights=random"
            ) from err
    return nn.Sequential(
        nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool),
        net.layer1, net.layer2, net.layer3, net.layer4,
        nn.Sequential(net.avgpool, nn.Flatten()),
    )


def feature_dim(backbone: nn.Module, sample: torch.Tensor) -> int:
    was_training = backbone.training
    backbone.eval()
    with torch.no_grad():
        dim = backbone(sample[:1]).shape[1]
    backbone.train(was_training)
    return dim


def make_head(n_in: int, n_classes: int, hidden: int) -> nn.Module:
    if hidden == 0:
        return nn.Linear(n_in, n_classes)
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Dropout(0.2), nn.Linear(hidden, n_classes))


# --- the pattern --------------------------------------------------------------------------------

def freeze(blocks: nn.Module) -> None:
    """PATTERN: no grads, and BatchNorm/Dropout in eval mode."""
    blocks.requires_grad_(False)
    blocks.eval()


class FrozenBackboneClassifier(nn.Module):
    """The first `len(blocks) - unfreeze_last` backbone blocks are frozen; the rest and the head train."""

    def __init__(self, backbone: nn.Sequential, head: nn.Module, unfreeze_last: int, mistake: str = "none"):
        super().__init__()
        self.backbone, self.head, self.mistake = backbone, head, mistake
        n_frozen = len(backbone) - unfreeze_last
        self.frozen, self.trainable = backbone[:n_frozen], backbone[n_frozen:]
        if mistake != "no_freeze":
            freeze(self.frozen)
        # else MISTAKE: nothing is frozen; every backbone weight and BatchNorm stat trains.

    def train(self, mode: bool = True) -> FrozenBackboneClassifier:
        super().train(mode)
        if self.mistake == "none":
            self.frozen.eval()  # PATTERN: model.train() must not put frozen BatchNorm back in train mode
        # MISTAKE (bn_train): frozen blocks follow model.train(); BatchNorm updates its running stats.
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if self.mistake == "no_freeze":
            return self.frozen(x)  # MISTAKE: a graph (and saved activations) through the whole backbone
        with torch.no_grad():  # PATTERN: no graph through the frozen blocks
            return self.frozen(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trainable(self.features(x)))


def param_groups(model: FrozenBackboneClassifier, lr: float, layer_lr_decay: float) -> list[dict]:
    """PATTERN: only trainable params reach the optimizer; each unfrozen block gets its own lr,
    smaller the deeper it sits (discriminative fine-tuning)."""
    groups = [{"params": list(model.head.parameters()), "lr": lr}]
    blocks = list(model.trainable) if model.mistake != "no_freeze" else list(model.backbone)
    with_params = [[p for p in b.parameters() if p.requires_grad] for b in reversed(blocks)]
    for depth, params in enumerate((ps for ps in with_params if ps), start=1):
        groups.append({"params": params, "lr": lr * layer_lr_decay**depth})
    return groups


@torch.no_grad()
def cache_features(model: FrozenBackboneClassifier, x: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """Frozen features, once per dataset. Plain no_grad, not inference_mode: inference tensors can
    never join an autograd graph later, and the head's backward saves its input."""
    model.frozen.eval()
    return torch.cat([model.frozen(x[i : i + batch]) for i in range(0, len(x), batch)])


# --- data ----------------------------------------------------------------------------------------

def split(x: torch.Tensor, y: torch.Tensor, val_fraction: float, seed: int, per_class: int | None):
    """Stratified and deterministic: the same split for every run seed."""
    g = torch.Generator().manual_seed(seed)
    train_idx, val_idx = [], []
    for c in y.unique():
        idx = (y == c).nonzero().squeeze(1)
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_val = int(round(len(idx) * val_fraction))
        val_idx.append(idx[:n_val])
        train_idx.append(idx[n_val:][:per_class] if per_class else idx[n_val:])
    tr, va = torch.cat(train_idx), torch.cat(val_idx)
    return x[tr], y[tr], x[va], y[va]


def load_data(cfg: FinetuneConfig, classes: list[int]):
    d = cfg.data
    if d.name == "digits":
        x, y = images.load_digits_tensors(classes)
        y = y - min(classes)  # 5..9 -> 0..4
        if cfg.backbone.name == "resnet18":
            x = F.interpolate(x.repeat(1, 3, 1, 1), size=d.image_size or 32, mode="bilinear")
    else:
        size = d.image_size or 224
        ds = images.torchvision_dataset(d.name, d.root, size, channels=3)
        x, y = images.dataset_to_tensors(ds, limit=10000)
    return split(x, y, d.val_fraction, d.split_seed, d.labels_per_class)


# --- loops ----------------------------------------------------------------------------------------

def batches(n: int, batch_size: int, steps: int, generator: torch.Generator):
    """`steps` index batches, reshuffling every pass over the data."""
    done = 0
    while done < steps:
        for idx in torch.randperm(n, generator=generator).split(batch_size):
            if done == steps:
                return
            yield idx
            done += 1


@torch.no_grad()
def accuracy(predict, x: torch.Tensor, y: torch.Tensor, batch: int = 512) -> float:
    correct = sum(int((predict(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum()) for i in range(0, len(x), batch))
    return correct / len(x)


def pretrain(cfg: FinetuneConfig, device: torch.device) -> Path:
    """Train digits_cnn on classes 0-4 and save it; the fine-tune stage uses its backbone."""
    seed_everything(cfg.backbone.pretrain_seed)
    x, y, xv, yv = (t.to(device) for t in load_data(cfg, PRETRAIN_CLASSES))
    backbone = digits_cnn().to(device)
    model = nn.Sequential(backbone, nn.Linear(feature_dim(backbone, x), len(PRETRAIN_CLASSES))).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(cfg.backbone.pretrain_seed)
    model.train()
    bar = progress(cfg.backbone.pretrain_steps, "pretrain digits_cnn on 0-4", cfg.progress)
    for idx in batches(len(x), cfg.batch_size, cfg.backbone.pretrain_steps, g):
        loss = F.cross_entropy(model(x[idx.to(device)]), y[idx.to(device)])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.update(1)
    bar.close()
    model.eval()
    val_acc = accuracy(model, xv, yv)
    path = save_checkpoint(cfg.backbone.checkpoint_dir, {
        "backbone": backbone.state_dict(), "head": model[1].state_dict(), "classes": PRETRAIN_CLASSES,
        "val_acc": val_acc,
        "seed": cfg.backbone.pretrain_seed})
    print(f"pretrained digits_cnn on classes 0-4: val_acc={val_acc:.3f}, saved {path}")
    return path


def build_backbone(cfg: FinetuneConfig, device: torch.device) -> tuple[nn.Sequential, nn.Module | None]:
    """The backbone, and the pretraining task's head when there is one (to measure forgetting)."""
    if cfg.backbone.name == "resnet18":
        return resnet18_backbone(cfg.backbone).to(device), None
    path = Path(cfg.backbone.checkpoint_dir) / "last.pt"
    if not path.is_file():
        print(f"{path} is missing: pretraining digits_cnn on classes 0-4 first")
        pretrain(cfg, device)
    state = load_checkpoint(path, map_location=device)
    backbone = digits_cnn().to(device)
    backbone.load_state_dict(state["backbone"])
    old_head = nn.Linear(state["head"]["weight"].shape[1], len(PRETRAIN_CLASSES)).to(device)
    old_head.load_state_dict(state["head"])
    return backbone, old_head


def train(cfg) -> dict:
    cfg: FinetuneConfig = to_schema(cfg)
    validate(cfg)
    device = resolve_device(cfg.device)
    if cfg.stage == "pretrain":
        if cfg.backbone.name != "digits_cnn" or cfg.data.name != "digits":
            raise ConfigError("stage=pretrain builds backbone=digits_cnn on data=digits")
        path = pretrain(cfg, device)
        return {"stage": "pretrain", "checkpoint": str(path), **{k: v for k, v in load_checkpoint(path).items()
                                                                 if k in ("val_acc", "seed")}}
    backbone, old_head = build_backbone(cfg, device)
    seed_everything(cfg.seed, cfg.deterministic)
    x, y, xv, yv = (t.to(device) for t in load_data(cfg, FINETUNE_CLASSES))
    if cfg.unfreeze_last > len(backbone) - 1:
        raise ConfigError(f"unfreeze_last={cfg.unfreeze_last}: the backbone has {len(backbone)} blocks; "
                          f"use at most {len(backbone) - 1} (or mistake=no_freeze to train them all)")
    n_classes = int(y.max()) + 1
    head = make_head(feature_dim(backbone, x), n_classes, cfg.head_hidden)
    model = FrozenBackboneClassifier(backbone, head, cfg.unfreeze_last, cfg.mistake).to(device)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.lr, cfg.layer_lr_decay), weight_decay=cfg.weight_decay)
    frozen_hash = state_hash(model.frozen)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    cached = cache_features(model, x) if cfg.cache_features else None
    inputs = cached if cached is not None else x
    step_fn = model.head if cached is not None else model

    run = Run(resolve_out_dir(cfg.out_dir, "finetune"), config=cfg, tensorboard=cfg.tensorboard)
    g = torch.Generator().manual_seed(cfg.seed)
    timed_steps, timed_seconds, saved_bytes, val_acc, curve = 0, 0.0, None, 0.0, []
    bar = progress(cfg.steps, f"finetune {cfg.backbone.name} mistake={cfg.mistake}", cfg.progress)
    try:
        for step, idx in enumerate(batches(len(x), cfg.batch_size, cfg.steps, g), start=1):
            model.train()  # what every training loop does; the pattern keeps the frozen blocks in eval
            idx = idx.to(device)
            probe = step == 1 or step % cfg.log_every == 0
            t0 = time.perf_counter()
            with SavedTensorMeter() if probe else contextlib.nullcontext() as meter:
                with autocast(device, cfg.amp):
                    loss = F.cross_entropy(step_fn(inputs[idx]), y[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if probe:
                saved_bytes = meter.total
            else:
                timed_steps, timed_seconds = timed_steps + 1, timed_seconds + time.perf_counter() - t0
            bar.update(1)
            if step % cfg.log_every == 0:
                run.log(step, loss=float(loss.detach()), saved_bytes_per_step=saved_bytes)
            if step % cfg.eval_every == 0 or step == cfg.steps:
                model.eval()
                val_acc = accuracy(model, xv, yv)
                curve.append({"step": step, "val_acc": val_acc})
                run.log(step, val_acc=val_acc)
                bar.set_postfix(val_acc=f"{val_acc:.3f}")
    finally:
        bar.close()
        run.close()
    save_checkpoint(run.checkpoint_dir, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                         "step": cfg.steps})
    old_task_acc = None
    if old_head is not None and cfg.data.name == "digits":
        # Forgetting: the pretraining task (digits 0-4) through today's backbone and its own head.
        *_, xo, yo = (t.to(device) for t in load_data(cfg, PRETRAIN_CLASSES))
        model.eval()
        old_task_acc = accuracy(nn.Sequential(model.backbone, old_head), xo, yo)
    summary = {
        "example": "finetune", "backbone": cfg.backbone.name, "data": cfg.data.name, "mistake": cfg.mistake,
        "seed": cfg.seed, "device": str(device), "steps": cfg.steps, "val_acc": val_acc,
        "backbone_unchanged": state_hash(model.frozen) == frozen_hash,
        "trainable_params": trainable, "frozen_params": frozen,
        "sec_per_step": timed_seconds / max(timed_steps, 1), "saved_bytes_per_step": saved_bytes,
        "old_task_acc": old_task_acc, "train_size": len(x), "val_size": len(xv), "curve": curve,
    }
    return run.write_summary(summary)


@hydra.main(version_base="1.3", config_path="../configs", config_name="finetune")
def main(cfg) -> None:
    summary = run_cli(train, cfg)
    print(" ".join(f"{k}={v}" for k, v in summary.items() if not isinstance(v, (list, dict))))


if __name__ == "__main__":
    print_help_if_asked(EXAMPLE)
    main()
