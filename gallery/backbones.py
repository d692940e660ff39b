"""What the fine-tuning example starts from: its data (digits split by class, or a torchvision set),
and its backbones (digits_cnn pretrained here on digits 0-4, built on first use; or ResNet-18).
And what it measures at the end: that the frozen blocks did not change, and the pretraining task."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from gallery.core.checkpoint import load_checkpoint, save_checkpoint
from gallery.core.probes import drift, float_state, state_hash
from gallery.core.run import progress
from gallery.core.seeding import seed_everything
from gallery.data import images
from gallery.nets import digits_cnn, eval_mode, resnet18_backbone

PRETRAIN_CLASSES, FINETUNE_CLASSES = [0, 1, 2, 3, 4], [5, 6, 7, 8, 9]


@torch.no_grad()
def feature_dim(backbone: nn.Module, sample: torch.Tensor) -> int:
    with eval_mode(backbone):
        return backbone(sample[:1]).shape[1]


def load_data(cfg, classes: list[int]):
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
    return images.stratified_split(x, y, d.val_fraction, d.split_seed, d.labels_per_class,
                                   key="data.labels_per_class")


@torch.no_grad()
def accuracy(predict, x: torch.Tensor, y: torch.Tensor, batch: int = 512) -> float:
    correct = sum(int((predict(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum())
                  for i in range(0, len(x), batch))
    return correct / len(x)


def pretrain(cfg, device: torch.device) -> Path:
    """Train digits_cnn on classes 0-4 and save it; the fine-tune stage uses its backbone."""
    seed_everything(cfg.backbone.pretrain_seed)
    x, y, xv, yv = (t.to(device) for t in load_data(cfg, PRETRAIN_CLASSES))
    backbone = digits_cnn().to(device)
    head = nn.Linear(feature_dim(backbone, x), len(PRETRAIN_CLASSES))
    model = nn.Sequential(backbone, head).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    batches = images.IndexBatches(len(x), cfg.batch_size,
                                  torch.Generator().manual_seed(cfg.backbone.pretrain_seed))
    model.train()
    bar = progress(cfg.backbone.pretrain_steps, "pretrain digits_cnn on 0-4", cfg.progress)
    for idx in (next(batches) for _ in range(cfg.backbone.pretrain_steps)):
        loss = F.cross_entropy(model(x[idx.to(device)]), y[idx.to(device)])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.update(1)
    bar.close()
    model.eval()
    val_acc = accuracy(model, xv, yv)
    path = save_checkpoint(cfg.backbone.checkpoint_dir, {
        "backbone": backbone.state_dict(), "head": model[1].state_dict(),
        "classes": PRETRAIN_CLASSES, "val_acc": val_acc,
        "seed": cfg.backbone.pretrain_seed})
    print(f"pretrained digits_cnn on classes 0-4: val_acc={val_acc:.3f}, saved {path}")
    return path


def build_backbone(cfg, device: torch.device) -> tuple[nn.Sequential, nn.Module | None]:
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


# --- what a fine-tuning run measures at its end ------------------------------------------------

class Frozen:
    """What the frozen blocks are before training, to show afterwards that they did not change."""

    def __init__(self, model: nn.Module):
        self.frozen_hash, self.frozen_start = state_hash(model.frozen), float_state(model.frozen)
        self.unfrozen_hash = state_hash(model.trainable, buffers=False)

    def changes(self, model: nn.Module, cfg) -> dict:
        unfrozen = state_hash(model.trainable, buffers=False) != self.unfrozen_hash
        return {"unfrozen_blocks_changed": unfrozen if cfg.unfreeze_last else None,
                "frozen_state_drift": drift(self.frozen_start, float_state(model.frozen)),
                "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
                "frozen_params": sum(p.numel() for p in model.parameters() if not p.requires_grad)}


def old_task_accuracy(cfg, model: nn.Module, old_head: nn.Module | None, device) -> float | None:
    """Forgetting: the pretraining task (digits 0-4) through today's backbone and its own head."""
    if old_head is None or cfg.data.name != "digits":
        return None
    *_, xo, yo = (t.to(device) for t in load_data(cfg, PRETRAIN_CLASSES))
    model.eval()
    return accuracy(nn.Sequential(model.backbone, old_head), xo, yo)
