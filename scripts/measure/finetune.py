"""`scripts/bench.py finetune`: a frozen backbone against no_freeze, and gradient checkpointing
against none."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gallery.core.probes import SavedTensorMeter
from scripts.measure.timing import alternate


def finetune_step(make_backbone, x, y, mistake: str, unfreeze_last: int, checkpointing: bool,
                  device: torch.device):
    """One fine-tuning training step as a closure, and the bytes its first call saved for
    backward."""
    from gallery import finetune as ft

    torch.manual_seed(0)
    backbone = make_backbone().to(device)
    head = ft.make_head(ft.feature_dim(backbone, x), 5, 128)
    model = ft.BY_MISTAKE[mistake](backbone, head, unfreeze_last).to(device)
    if checkpointing:
        ft.checkpoint_trainable(model)
    opt = torch.optim.AdamW(ft.param_groups(model, 1e-3, 0.3))

    def step():
        model.train()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    with SavedTensorMeter() as meter:
        step()
    return step, meter.total


def bench_finetune(device: torch.device) -> list[dict]:
    from gallery import finetune as ft
    from gallery.nets import digits_cnn, resnet18_backbone

    rows = []
    setups = {
        "digits_cnn 8px, batch 64": (digits_cnn, torch.randn(64, 1, 8, 8), 7, 20),
        "resnet18 224px random weights, batch 8": (
            lambda: resnet18_backbone(ft.BackboneConfig(name="resnet18", weights="random")),
            torch.randn(8, 3, 224, 224), 3, 2),
    }
    for name, (make_backbone, x, rounds, per_round) in setups.items():
        x, y = x.to(device), torch.randint(5, (len(x),), device=device)
        steps, saved = {}, {}
        for mistake in ("none", "no_freeze"):
            steps[mistake], saved[mistake] = finetune_step(
                make_backbone, x, y, mistake, 0, False, device)
        secs = alternate(steps, rounds=rounds, per_round=per_round, device=device, warmup=1)
        rows.append({
            "setup": name, "frozen_ms_per_step": secs["none"] * 1e3,
            "full_ms_per_step": secs["no_freeze"] * 1e3,
            "time_ratio_frozen_over_full": secs["none"] / secs["no_freeze"],
            "frozen_saved_bytes": saved["none"], "full_saved_bytes": saved["no_freeze"],
            "bytes_ratio_frozen_over_full": saved["none"] / saved["no_freeze"],
        })
    return rows + bench_checkpointing(device)


def bench_checkpointing(device: torch.device) -> list[dict]:
    """finetune checkpoint=true: ResNet-18 at 224 px (random weights, batch 8) with its last 2
    blocks and with every block training, each with and without gradient checkpointing of the blocks
    that train."""
    from gallery import finetune as ft
    from gallery.nets import resnet18_backbone

    x = torch.randn(8, 3, 224, 224, device=device)
    y = torch.randint(5, (8,), device=device)
    def make_backbone():
        return resnet18_backbone(ft.BackboneConfig(name="resnet18", weights="random"))

    rows = []
    for label, mistake, unfreeze_last in (("last 2 blocks train", "none", 2),
                                          ("every block trains", "no_freeze", 0)):
        steps, saved = {}, {}
        for checkpointing in (False, True):
            steps[checkpointing], saved[checkpointing] = finetune_step(
                make_backbone, x, y, mistake, unfreeze_last, checkpointing, device)
        secs = alternate(steps, rounds=3, per_round=1, device=device, warmup=1)
        rows.append({
            "setup": f"resnet18 224px random weights, batch 8, {label}: checkpoint=true against "
                     f"false",
            "plain_ms_per_step": secs[False] * 1e3, "checkpointed_ms_per_step": secs[True] * 1e3,
            "time_ratio_checkpointed_over_plain": secs[True] / secs[False],
            "plain_saved_bytes": saved[False], "checkpointed_saved_bytes": saved[True],
            "bytes_ratio_checkpointed_over_plain": saved[True] / saved[False],
        })
    return rows
