"""Fine-tuning with a frozen backbone: only the head trains, and the backbone stays bit-for-bit
unchanged.

    backbone.requires_grad_(False)                     # no grads, so no optimizer state either
    backbone.eval()                                    # BatchNorm uses, and keeps, its stats
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
- checkpoint_reentrant: checkpoint=true (gradient checkpointing of the blocks that train) with
  use_reentrant=True: their input comes out of the frozen blocks needing no grad, so they get no
  gradient at all, and torch only warns.

Run: python -m gallery.finetune seed=0 out_dir=/tmp/ft          (stage=pretrain builds the backbone;
     the default stage builds it on first use)
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from omegaconf import MISSING
from torch import nn

from gallery.backbones import (
    FINETUNE_CLASSES,
    Frozen,
    accuracy,
    build_backbone,
    feature_dim,
    load_data,
    old_task_accuracy,
    pretrain,
)
from gallery.core import dist, plots
from gallery.core.checkpoint import load_checkpoint
from gallery.core.cli import command_line
from gallery.core.config import (
    BaseConfig,
    register_schema,
    require_choice,
    require_non_negative,
    require_positive,
    require_range,
    validate_base,
)
from gallery.core.device import amp_forward, compile_modules
from gallery.core.errors import ConfigError
from gallery.core.loop import Loop
from gallery.core.probes import Probe, state_hash
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
    span,
    tour_budgets,
)
from gallery.core.seeding import seed_everything
from gallery.core.setup import prepare
from gallery.data import images

# --- config schema -----------------------------------------------------------------------------

@dataclass
class BackboneConfig:
    name: str = MISSING  # digits_cnn | resnet18
    checkpoint_dir: str = "${cache_dir:digits_cnn}"  # built by stage=pretrain, or first use
    weights: str = "imagenet"  # resnet18: imagenet | random
    weights_path: str | None = None  # resnet18: a local .pth state dict instead of the download
    pretrain_steps: int = 600
    pretrain_seed: int = 0


@dataclass
class FinetuneData:
    name: str = MISSING  # digits | cifar10 | imagefolder
    root: str = "${cache_dir:}"
    labels_per_class: int | None = None  # few-shot: keep this many training images per class
    val_fraction: float = 0.3
    split_seed: int = 0
    image_size: int | None = None  # None: 8 for digits_cnn, 224 for resnet18


@register_schema("finetune")
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
    checkpoint: bool = False  # recompute the training blocks' activations
    eval_every: int = 100
    ckpt_every: int = 100
    log_every: int = 50



def validate(cfg: FinetuneConfig) -> None:
    validate_base(cfg, BY_MISTAKE)
    require_choice(cfg, "stage", ["pretrain", "finetune"])
    require_choice(cfg, "backbone.name", ["digits_cnn", "resnet18"])
    require_choice(cfg, "data.name", ["digits", "cifar10", "imagefolder"])
    require_positive(cfg, "batch_size", "lr", "backbone.pretrain_steps")
    require_non_negative(cfg, "unfreeze_last", "head_hidden", "weight_decay")
    require_range(cfg, "data.val_fraction", 0.05, 0.9)
    if cfg.data.labels_per_class is not None:
        require_positive(cfg, "data.labels_per_class")
    if cfg.cache_features and (cfg.unfreeze_last or cfg.mistake != "none"):
        raise ConfigError("cache_features=true needs a fully frozen backbone (unfreeze_last=0, "
                          "mistake=none)")
    if cfg.stage == "pretrain" and (cfg.backbone.name != "digits_cnn" or cfg.data.name != "digits"):
        raise ConfigError("stage=pretrain builds backbone=digits_cnn on data=digits")
    if cfg.mistake == "checkpoint_reentrant" and not (cfg.checkpoint and cfg.unfreeze_last):
        raise ConfigError("mistake=checkpoint_reentrant needs checkpoint=true and unfreeze_last >= "
                          "1")


# --- models --------------------------------------------------------------------------------------

def make_head(n_in: int, n_classes: int, hidden: int) -> nn.Module:
    if hidden == 0:
        return nn.Linear(n_in, n_classes)
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Dropout(0.2),
                         nn.Linear(hidden, n_classes))


# --- the pattern --------------------------------------------------------------------------------

def freeze(blocks):
    """No grads, and BatchNorm/Dropout in eval mode: the blocks compute exactly as they were
    trained."""
    blocks.requires_grad_(False)  # PATTERN: no grads, so no optimizer state either
    blocks.eval()  # PATTERN: BatchNorm uses, and keeps, its running statistics


class FrozenBackboneClassifier(nn.Module):
    """The first `len(backbone) - unfreeze_last` backbone blocks are frozen; the rest and the head
    train."""

    def __init__(self, backbone, head, unfreeze_last=0):
        super().__init__()
        n_frozen = len(backbone) - unfreeze_last
        self.backbone, self.head = backbone, head
        self.frozen, self.trainable = backbone[:n_frozen], backbone[n_frozen:]
        freeze(self.frozen)

    def train(self, mode=True):
        super().train(mode)
        self.frozen.eval()  # PATTERN: model.train() leaves frozen BatchNorm be
        return self

    def forward(self, x):
        with torch.no_grad():  # PATTERN: no graph through the frozen blocks
            features = self.frozen(x)
        return self.head(self.trainable(features))


def param_groups(model, lr, layer_lr_decay=0.3):
    """Only trainable params reach the optimizer; each trainable backbone block gets its own lr,
    smaller the deeper it sits (discriminative fine-tuning)."""
    groups = [{"params": list(model.head.parameters()), "lr": lr}]
    blocks = [[p for p in block.parameters() if p.requires_grad]
              for block in reversed(model.backbone)]
    for depth, params in enumerate((ps for ps in blocks if ps), start=1):  # PATTERN: frozen: none
        groups.append({"params": params, "lr": lr * layer_lr_decay**depth})
    return groups


@contextlib.contextmanager
def buffers_kept(block):
    """Around a recomputation: BatchNorm must not fold the same batch into its running stats
    twice."""
    saved = [b.clone() for b in block.buffers()]
    try:
        yield
    finally:  # also when torch stops the recomputation early, once it has what backward needs
        with torch.no_grad():
            for buffer, value in zip(block.buffers(), saved):
                buffer.copy_(value)


class Checkpointed(nn.Module):
    """Gradient checkpointing: each block keeps no activations, and backward recomputes its forward.
    For the blocks that train, whose input comes out of the frozen blocks without requiring grad."""

    def __init__(self, blocks):
        super().__init__()
        self.blocks = blocks

    def forward(self, x):
        for block in self.blocks:
            x = torch.utils.checkpoint.checkpoint(
                block, x, use_reentrant=False,  # PATTERN: grads reach the block though x needs none
                # PATTERN: the recomputation leaves BatchNorm's statistics as the forward did
                context_fn=lambda b=block: (contextlib.nullcontext(), buffers_kept(b)))
        return x


# --- the mistakes -------------------------------------------------------------------------------

class FrozenBackboneClassifierNoFreeze(nn.Module):
    def __init__(self, backbone, head, unfreeze_last=0):
        super().__init__()
        n_frozen = len(backbone) - unfreeze_last
        self.backbone, self.head = backbone, head
        self.frozen, self.trainable = backbone[:n_frozen], backbone[n_frozen:]  # MISTAKE: none

    def train(self, mode=True):
        super().train(mode)
        return self

    def forward(self, x):
        features = self.frozen(x)  # MISTAKE: a graph through the whole backbone
        return self.head(self.trainable(features))


class FrozenBackboneClassifierBnTrain(nn.Module):
    def __init__(self, backbone, head, unfreeze_last=0):
        super().__init__()
        n_frozen = len(backbone) - unfreeze_last
        self.backbone, self.head = backbone, head
        self.frozen, self.trainable = backbone[:n_frozen], backbone[n_frozen:]
        freeze(self.frozen)

    def train(self, mode=True):
        super().train(mode)  # MISTAKE: frozen BatchNorm trains along
        return self

    def forward(self, x):
        with torch.no_grad():
            features = self.frozen(x)
        return self.head(self.trainable(features))


class CheckpointedReentrant(nn.Module):
    def __init__(self, blocks):
        super().__init__()
        self.blocks = blocks

    def forward(self, x):
        for block in self.blocks:
            # MISTAKE: x needs no grad, so neither does the output: the blocks get no grads, and
            # torch only warns
            x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=True)
        return x


BY_MISTAKE = {"none": FrozenBackboneClassifier, "no_freeze": FrozenBackboneClassifierNoFreeze,
              "bn_train": FrozenBackboneClassifierBnTrain,
              "checkpoint_reentrant": FrozenBackboneClassifier}
# checkpoint=true: how each mistake wraps the blocks that train
CHECKPOINTED = {"checkpoint_reentrant": CheckpointedReentrant}


def checkpoint_trainable(model, wrap=Checkpointed):
    """checkpoint=true: wrap each part of the model whose parameters train (no_freeze: the "frozen"
    part too)."""
    for part in ("frozen", "trainable"):
        if any(p.requires_grad for p in getattr(model, part).parameters()):
            setattr(model, part, wrap(getattr(model, part)))
    return model


@torch.no_grad()
def cache_features(model: FrozenBackboneClassifier, x: torch.Tensor,
                   batch: int = 512) -> torch.Tensor:
    """Frozen features, once per dataset. Plain no_grad, not inference_mode: inference tensors can
    never join an autograd graph later, and the head's backward saves its input."""
    model.frozen.eval()
    return torch.cat([model.frozen(x[i : i + batch]) for i in range(0, len(x), batch)])


def build(cfg, device: torch.device) -> tuple[nn.Module, nn.Module | None, list[torch.Tensor]]:
    """The classifier (the backbone, pretrained on first use, and a new head), the pretraining
    task's head (digits) and this task's data: train x, y and validation x, y."""
    with dist.main_first():  # torchrun: rank 0 pretrains (or downloads) into the cache
        backbone, old_head = build_backbone(cfg, device)
    seed_everything(cfg.seed, cfg.deterministic)
    x, y, xv, yv = (t.to(device) for t in load_data(cfg, FINETUNE_CLASSES))
    x, y = dist.shard(x), dist.shard(y)  # torchrun: this rank's shard of the training set
    if cfg.unfreeze_last > len(backbone) - 1:
        raise ConfigError(f"unfreeze_last={cfg.unfreeze_last}: the backbone has {len(backbone)} "
                          f"blocks; use at most {len(backbone) - 1} (or mistake=no_freeze to train "
                          "them all)")
    head = make_head(feature_dim(backbone, x), int(y.max()) + 1, cfg.head_hidden)
    model = BY_MISTAKE[cfg.mistake](backbone, head, cfg.unfreeze_last).to(device)
    if cfg.checkpoint:
        checkpoint_trainable(model, CHECKPOINTED.get(cfg.mistake, Checkpointed))
    model = amp_forward(model, device, cfg.amp)
    compile_modules(cfg.compile, model)
    return model, old_head, [x, y, xv, yv]


def train(cfg) -> dict:
    cfg, device = prepare(cfg, validate, single_thread=lambda c: c.backbone.name == "digits_cnn")
    if cfg.stage == "pretrain":
        path = pretrain(cfg, device)
        return {"stage": "pretrain", "checkpoint": str(path), "out_dir": str(path.parent),
                **{k: v for k, v in load_checkpoint(path).items() if k in ("val_acc", "seed")}}
    model, old_head, (x, y, xv, yv) = build(cfg, device)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.lr, cfg.layer_lr_decay),
                                  weight_decay=cfg.weight_decay)
    before = Frozen(model)  # the frozen blocks' hash and values, the unfrozen blocks' hash
    inputs = cache_features(model, x) if cfg.cache_features else x
    # torchrun: DDP registers what requires grad *when built*: wrap after freezing.
    step_fn = dist.wrap(model.head if cfg.cache_features else model, device)
    batches = images.IndexBatches(len(x), cfg.batch_size, torch.Generator().manual_seed(cfg.seed))
    stateful = {"model": model, "optimizer": optimizer, "batches": batches}
    probe = Probe(device, "saved_bytes_per_step")
    with Loop(cfg, EXAMPLE.name, stateful, device, cfg.backbone.name) as loop:
        if loop.finished_summary:
            return loop.finished_summary
        for _ in loop:
            # what every training loop does; the pattern keeps the frozen blocks in eval
            model.train()
            idx = next(batches).to(device)
            with probe.step(sampled=loop.sampled(cfg.log_every)):
                loss = F.cross_entropy(step_fn(inputs[idx]), y[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            if loop.due(cfg.log_every):
                loop.log(losses={"loss": loss.detach()}, **probe.record)
            if loop.due(cfg.eval_every, final=True):
                model.eval()
                loop.evaluated(val_acc=accuracy(model, xv, yv))
        plots.figure(loop.run.path("val_acc.png"), draw_val_curve, loop.evals,
                     f"mistake={cfg.mistake}")
        unchanged = state_hash(model.frozen) == before.frozen_hash  # params and buffers
        return loop.summary(
            stage="finetune", backbone=cfg.backbone.name, data=cfg.data.name, steps=cfg.steps,
            val_acc=loop.evals[-1]["val_acc"] if loop.evals else 0.0, backbone_unchanged=unchanged,
            **before.changes(model, cfg), **probe.record, sec_per_step=probe.sec_per_step,
            old_task_acc=old_task_accuracy(cfg, model, old_head, device), train_size=len(x),
            val_size=len(xv), curve=loop.evals,
            **dist.ddp_report({"model": model}, {**probe.record, "backbone_unchanged": unchanged},
                              reducer=dist.reducer_size(step_fn)))


def draw_val_curve(ax, curve: list[dict], label: str) -> None:
    """Validation accuracy against steps. The run's own figure and the tour's comparison both draw
    with this."""
    ax.plot([c["step"] for c in curve], [c["val_acc"] for c in curve], marker="o", ms=3,
            label=label)
    ax.set(xlabel="step", ylabel="val accuracy (new task)")
    ax.legend(fontsize=8)


# --- what the tour and `python -m gallery show finetune` read -------------------------------

def headline(s: dict) -> str:
    old = "n/a" if s["old_task_acc"] is None else f"{s['old_task_acc']:.3f}"
    return (f"val_acc {s['val_acc']:.3f}, pretraining-task acc {old}, backbone unchanged: "
            f"{s['backbone_unchanged']} (drift {s['frozen_state_drift']:.3g}), saved bytes/step "
            f"{s['saved_bytes_per_step']:,}")


def tour_figure(runs: dict, fig) -> None:
    names = [m for m in BY_MISTAKE if m in runs and "val_acc" in runs[m]]
    labels = ["frozen" if m == "none" else m for m in names]
    axes = fig.subplots(1, 4)
    axes[0].bar(labels, [runs[m]["sec_per_step"] * 1e3 for m in names], color="C0")
    axes[0].set(ylabel="ms per step")
    axes[1].bar(labels, [runs[m]["saved_bytes_per_step"] / 2**10 for m in names], color="C1")
    axes[1].set(ylabel="KiB saved for backward per step")
    axes[2].bar(labels, [runs[m]["frozen_state_drift"] for m in names], color="C2")
    axes[2].set(ylabel="drift of the 'frozen' blocks (L2)")  # bn_train: the running stats moved
    for m, label in zip(names, labels):
        draw_val_curve(axes[3], runs[m]["curve"], label)
    for ax in axes[:3]:
        ax.tick_params(axis="x", labelsize=8)


def measured(gate: dict, bench: dict) -> Measured:
    digits = next(r for r in bench["finetune"] if r["setup"].startswith("digits_cnn"))
    slower, heavier = (1 / digits[f"{m}_ratio_frozen_over_full"] for m in ("time", "bytes"))
    return Measured(
        (f"val acc {span([r['val_acc'] for r in gate['runs']['none']], '{:.3f}')}, backbone "
         "hash unchanged",
         f"no_freeze: {slower:.1f}x the time, {heavier:.0f}x the bytes saved for backward"),
        Panel("bytes saved for backward", digits["frozen_saved_bytes"],
              digits["full_saved_bytes"], "no_freeze"),
        Cost("no_freeze", slower, heavier, "scripts/bench.py finetune (digits)"))


QUICK = ["steps=20", "eval_every=10", "log_every=10", "backbone.pretrain_steps=40"]
CHECKPOINTING = ["checkpoint=true", "unfreeze_last=2"]  # the last conv block and the pooling train
EXAMPLE = Example(
    name="finetune",
    pattern="frozen backbone: requires_grad_(False), kept in eval mode, features under no_grad, "
            "head-only optimizer",
    pattern_functions=("freeze", "FrozenBackboneClassifier", "param_groups", "buffers_kept",
                       "Checkpointed"),
    mistakes={
        "no_freeze": Mistake(
            "the whole network trains",
            "more time and bytes saved for backward per step; the pretraining task is no longer "
            "preserved",
            ("FrozenBackboneClassifierNoFreeze",),
            caught="unchanged: the block changed frozen_blocks",
        ),
        "bn_train": Mistake(
            "params frozen but the backbone left in train mode",
            "BatchNorm running stats drift: the 'frozen' backbone's state hash changes",
            ("FrozenBackboneClassifierBnTrain",),
            caught="unchanged: the block changed frozen_blocks (0.1.num_batches_tracked",
        ),
        "checkpoint_reentrant": Mistake(
            "gradient checkpointing with use_reentrant=True on blocks whose input needs no grad",
            "the checkpointed blocks silently get no gradient: their params never change (torch "
            "only warns)",
            ("CheckpointedReentrant",),
            caught=("gets_grad: no backward inside the block wrote a non-zero "
                    "grad into trainable_blocks"),
        ),
    },
    budgets=tour_budgets(BY_MISTAKE, QUICK, checkpoint_reentrant=CHECKPOINTING),
    headline=headline,
    figure=tour_figure,
    figure_size=(12, 3.6),
    check=lambda s: None if s["backbone_unchanged"] else "the frozen backbone's hash changed",
    smoke=("steps=4", "eval_every=4", "log_every=2", "backbone.pretrain_steps=20",
           "backbone.checkpoint_dir={tmp}/bb"),
    report=("val_acc", "old_task_acc", "backbone_unchanged", "frozen_state_drift",
            "unfrozen_blocks_changed", "trainable_params", "frozen_params", "sec_per_step",
            "saved_bytes_per_step", "stage"),
    order=4,
    gate=Gate(
        "digits, a backbone pretrained on classes 0-4 and a new head on 5-9, seeds 0-2",
        runs={"none": Runs(overrides=("backbone.checkpoint_dir={tmp}/digits_cnn",))},
        keys=("val_acc", "backbone_unchanged"),
        criteria=(
            Criterion("val acc >= 0.95 with the backbone hash unchanged", ("none",),
                      each(lambda r: r["val_acc"] >= 0.95 and r["backbone_unchanged"])),
            Criterion("seed 0 pretrains the backbone first, in under 60 s all told", ("none",),
                      lambda rows: rows[0]["wall_seconds"] < 60, timed=True))),
    measured=measured,
)


if __name__ == "__main__":
    command_line(EXAMPLE, train)
