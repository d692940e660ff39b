"""`scripts/bench.py evaluate`: what an evaluation costs, side by side in one process, on the
example's own model (trained for 300 steps) and validation set.

- no_grad (the pattern's `evaluating`) against inference_mode, and against no no_grad at all
  (eval_with_grad): milliseconds per pass over the validation set, in alternating blocks;
- the pattern's `evaluate` against Lightning's `Trainer.validate` (installed with pip --target
  --no-deps, never a dependency), which does the same for its users (eval mode, inference_mode,
  every mode back): validation batches per second, one thread, in alternating blocks."""

from __future__ import annotations

import contextlib
import sys
import warnings

import torch
import torch.nn.functional as F

from gallery import evaluate
from gallery.data import images
from scripts.measure.peers import peer_path
from scripts.measure.timing import alternate

LIGHTNING = ("lightning==2.6.6", "lightning-utilities", "torchmetrics")


def trained_model(seed: int = 0):
    torch.manual_seed(seed)
    x, y = images.load_digits_tensors()
    xt, yt, xv, yv = images.stratified_split(x, y, 0.3, 0, 20)
    model = evaluate.classifier(64, 128, 10, 0.3)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for i in range(300):
        batch = torch.randint(len(yt), (64,), generator=torch.Generator().manual_seed(i))
        evaluate.train_step(model, optimizer, xt[batch], yt[batch])
    return model, xv, yv


def evaluate_inference_mode(model, batches):
    """The pattern's evaluate with inference_mode in place of no_grad (fine for metrics that are
    only read)."""
    total_loss, correct, count = 0.0, 0, 0
    with evaluate.evaluating(model), torch.inference_mode():
        for x, y in batches:
            logits = model(x)
            total_loss += F.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
            count += len(y)
    return {"loss": total_loss / count, "accuracy": correct / count}


def lightning_validate(model, loader):
    """`Trainer.validate` on the same model: a LightningModule whose validation_step sums the
    same loss and accuracy."""
    import lightning as L

    class Validated(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = model

        def validation_step(self, batch, _):
            x, y = batch
            logits = self.model(x)
            self.log("loss", F.cross_entropy(logits, y), reduce_fx="mean", prog_bar=False)
            self.log("accuracy", (logits.argmax(1) == y).float().mean(), prog_bar=False)

    module = Validated()
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_checkpointing=False, enable_model_summary=False)
    return lambda: trainer.validate(module, loader, verbose=False)


def bench_evaluate(device: torch.device, tile: int = 20, batch_size: int = 128) -> list[dict]:
    torch.set_num_threads(1)
    model, xv, yv = trained_model()
    batches = evaluate.in_batches(xv, yv, batch_size)
    modes = alternate({"no_grad": lambda: evaluate.evaluate(model, batches),
                       "inference_mode": lambda: evaluate_inference_mode(model, batches),
                       "with_grad": lambda: evaluate.evaluate_with_grad(model, batches)},
                      rounds=15, per_round=20, device=device)
    rows = [{"setting": f"evaluate: digits validation set ({len(yv)} images, batch "
                        f"{batch_size}), the example's MLP, 1 thread, ms per pass (medians of "
                        "alternating blocks)",
             "no_grad_ms": 1000 * modes["no_grad"],
             "inference_mode_ms": 1000 * modes["inference_mode"],
             "with_grad_ms": 1000 * modes["with_grad"],
             "inference_mode_speedup": modes["no_grad"] / modes["inference_mode"],
             "with_grad_slowdown": modes["with_grad"] / modes["no_grad"]}]
    deps = peer_path("lightning", LIGHTNING)
    if deps is None:
        return [*rows, {"setting": "evaluate: Lightning", "skipped": "lightning would not "
                                                                     "install"}]
    sys.path.insert(0, str(deps))
    import logging

    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    # enough batches that a pass is not all set-up
    x, y = xv.repeat(tile, *[1] * (xv.dim() - 1)), yv.repeat(tile)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y),
                                         batch_size=batch_size)
    with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
        warnings.simplefilter("ignore")
        validate = lightning_validate(model, loader)
        peer = alternate({"gallery": lambda: evaluate.evaluate(model, loader),
                          "lightning": validate}, rounds=7, per_round=3, device=device)
    n = len(loader)
    import lightning

    rows.append({"setting": f"evaluate: {len(y):,} images ({tile}x the digits validation set), "
                            f"batch {batch_size}, {n} batches, the same model and DataLoader, 1 "
                            "thread, medians of alternating blocks",
                 "peer": f"Lightning {lightning.__version__} Trainer.validate (eval mode, "
                         "inference_mode, modes restored)",
                 "gallery_batches_per_sec": n / peer["gallery"],
                 "lightning_batches_per_sec": n / peer["lightning"],
                 "speed_gallery_over_lightning": peer["lightning"] / peer["gallery"]})
    return rows
