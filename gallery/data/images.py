"""Image data for the GAN, fine-tuning, SimSiam, EMA and evaluation examples, scaled to [-1, 1], and
random views for SimSiam.

`digits` (scikit-learn's bundled 8x8 digits) works offline. The torchvision datasets download
on first use and check their archives' MD5 sums (torchvision does this); offline they fail with a
message that names the dataset, the directory and an embedded alternative.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import MISSING

from gallery.core.config import cache_root
from gallery.core.errors import DataError
from gallery.core.io import download_timeout

ONLINE = ("mnist", "fashion_mnist", "cifar10")


def load_digits_tensors(classes: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's digits as (N, 1, 8, 8) floats in [-1, 1] and int64 labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0 * 2 - 1
    labels = torch.tensor(bunch.target, dtype=torch.int64)
    if classes is not None:
        keep = torch.isin(labels, torch.tensor(classes))
        images, labels = images[keep], labels[keep]
    return images, labels


@dataclass
class LabelledImages:
    """The data group of a classifier trained on labelled images (ema, evaluate): digits offline,
    or CIFAR-10 or an image folder. Each example extends it with how many images per class it
    keeps."""
    name: str = MISSING  # digits | cifar10 | imagefolder
    root: str = "${cache_dir:}"  # where torchvision downloads, or the imagefolder root
    image_size: int | None = None  # None: 8 for digits, 32 otherwise
    limit: int = 10000  # online data: at most this many images
    val_fraction: float = 0.2  # held out: accuracy is measured there
    split_seed: int = 0


LABELLED = ["digits", "cifar10", "imagefolder"]


def labelled_tensors(d: LabelledImages) -> tuple[torch.Tensor, torch.Tensor]:
    """All the images of `d` and their labels, in memory."""
    if d.name == "digits":
        if d.image_size:
            print(f"note: data.image_size={d.image_size} is ignored on digits: its images are 8x8",
                  file=sys.stderr)
        return load_digits_tensors()
    return dataset_to_tensors(torchvision_dataset(d.name, d.root, d.image_size or 32),
                              limit=d.limit)


def torchvision_dataset(name: str, root: str, image_size: int | None, train: bool = True,
                        channels: int | None = None):
    """MNIST, Fashion-MNIST, CIFAR-10, an ImageFolder or FakeData, as a torchvision Dataset in [-1,
    1]."""
    from torchvision import datasets, transforms

    steps = []
    if channels == 1:
        steps.append(transforms.Grayscale(1))
    elif channels == 3:
        steps.append(transforms.Lambda(lambda im: im.convert("RGB")))
    if image_size:
        steps += [transforms.Resize(image_size), transforms.CenterCrop(image_size)]
    steps += [transforms.ToTensor(), transforms.Normalize([0.5], [0.5])]
    tf = transforms.Compose(steps)
    if name == "fake":
        size = image_size or 32
        return datasets.FakeData(size=512, image_size=(channels or 3, size, size), num_classes=10,
                                 transform=tf, random_offset=0)
    if name == "imagefolder":
        if root and Path(root).resolve() == cache_root().resolve():  # the default: not images
            raise DataError(f"data=imagefolder needs data.root=/path/to/images/<class>/*.png; "
                            f"data.root is now the gallery's download cache, {root}")
        if not root or not Path(root).is_dir():
            raise DataError(f"data.root={root!r} is not a directory; imagefolder needs "
                            f"data.root=/path/to/images/<class>/*.png")
        try:
            return datasets.ImageFolder(root, transform=tf)
        except (FileNotFoundError, RuntimeError) as err:
            raise DataError(f"data.root={root}: {err}") from err
    classes = {"mnist": datasets.MNIST, "fashion_mnist": datasets.FashionMNIST,
               "cifar10": datasets.CIFAR10}
    if name not in classes:
        raise DataError(f"unknown image dataset {name!r}")
    try:
        with download_timeout():
            return classes[name](root, train=train, download=True, transform=tf)
    # URLError, HTTPError, socket errors, a bad MD5: all mean "not available"
    except Exception as err:
        # a failed download leaves nothing behind
        _remove_empty_dirs(Path(root) / classes[name].__name__)
        detail = " ".join(str(err).split())
        raise DataError(
            f"could not download or verify {name} into {Path(root).resolve()} "
            f"({type(err).__name__}: {detail}). "
            "Offline? Put the files there yourself, or use an embedded dataset: data=digits"
        ) from err


def _remove_empty_dirs(top: Path) -> None:
    if not top.is_dir():
        return
    for path in sorted(top.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()
    if not any(top.iterdir()):
        top.rmdir()


def dataset_to_tensors(dataset, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    n = len(dataset) if limit is None else min(limit, len(dataset))
    xs, ys = zip(*(dataset[i] for i in range(n)))
    return torch.stack(xs), torch.tensor(ys, dtype=torch.int64)


class ImageBatches:
    """Endless batches drawn with replacement from an in-memory image tensor, on `device`."""

    def __init__(self, images: torch.Tensor, batch_size: int, device: torch.device, seed: int):
        self.images = images.to(device)
        self.batch_size = min(batch_size, len(images))
        self.generator = torch.Generator().manual_seed(seed)

    def sample(self, n: int) -> torch.Tensor:
        idx = torch.randint(len(self.images), (n,), generator=self.generator)
        return self.images[idx.to(self.images.device)]


def stratified_split(x: torch.Tensor, y: torch.Tensor, val_fraction: float, seed: int,
                     per_class: int | None, key: str = "per_class"):
    """Stratified and deterministic: the same split for every run seed. Asked for more images per
    class (`key`) than a class holds, each class keeps all it has, and one line says so."""
    g = torch.Generator().manual_seed(seed)
    train_idx, val_idx, short = [], [], []
    for c in y.unique():
        idx = (y == c).nonzero().squeeze(1)
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_val = int(round(len(idx) * val_fraction))
        val_idx.append(idx[:n_val])
        train_idx.append(idx[n_val:][:per_class] if per_class else idx[n_val:])
        short += [len(idx) - n_val] if per_class and len(idx) - n_val < per_class else []
    if short:
        print(f"note: {key}={per_class} is more than {len(short)} classes hold after the "
              f"held-out split (the smallest: {min(short)}); each class keeps all it has",
              file=sys.stderr)
    tr, va = torch.cat(train_idx), torch.cat(val_idx)
    return x[tr], y[tr], x[va], y[va]


class IndexBatches:
    """Index batches over `n` items, reshuffled every pass: the same order a plain loop over
    `torch.randperm(n, generator=generator).split(batch_size)` gives. Checkpointable: its state is
    the generator's state before the current pass and how many batches were handed out, so a resumed
    run gets exactly the batches the uninterrupted one would have."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator):
        self.n, self.batch_size, self.generator = n, batch_size, generator
        self.done, self._pass_state, self._pass, self._at = 0, None, [], 0

    def __next__(self) -> torch.Tensor:
        if self._at == len(self._pass):
            self._pass_state = self.generator.get_state()
            order = torch.randperm(self.n, generator=self.generator)
            self._pass, self._at = order.split(self.batch_size), 0
        self._at, self.done = self._at + 1, self.done + 1
        return self._pass[self._at - 1]

    def __iter__(self):
        return self

    def state_dict(self) -> dict:
        return {"pass_state": self._pass_state, "at": self._at, "done": self.done}

    def load_state_dict(self, state: dict) -> None:
        self.done, self._pass, self._at = state["done"], [], 0
        if state["pass_state"] is not None:
            self.generator.set_state(state["pass_state"])
            self._pass_state = state["pass_state"]
            self._pass = torch.randperm(self.n, generator=self.generator).split(self.batch_size)
            self._at = state["at"]


def random_views(x: torch.Tensor, crop_scale: float = 0.7, rotate: float = 0.25, flip: bool = False,
                 jitter: float = 0.4, noise: float = 0.1, aspect: float = 0.29) -> torch.Tensor:
    """One random view of each image in a batch of [-1, 1] images, drawn on the batch's device from
    torch's global RNG (so a checkpoint's RNG state resumes the same views): a resized crop keeping
    `crop_scale`..1 of each side, its log aspect ratio within +-`aspect` (0.29: 3/4..4/3); a
    rotation within +-`rotate` radians; an optional horizontal flip; contrast jitter of +-`jitter`,
    brightness of +-`jitter`/2, then Gaussian noise of std `noise`."""
    n, dev = len(x), x.device

    def uniform(low, high, *shape):
        return torch.empty(n, *shape, device=dev).uniform_(low, high)

    scale, log_ratio = uniform(crop_scale, 1.0), uniform(-aspect, aspect)
    sx, sy = scale * log_ratio.exp().sqrt(), scale / log_ratio.exp().sqrt()
    if flip:
        sx = sx * torch.where(torch.rand(n, device=dev) < 0.5, -1.0, 1.0)
    angle = uniform(-rotate, rotate)
    theta = torch.stack([
        torch.stack([sx * angle.cos(), -sx * angle.sin(), (1 - sx.abs()) * uniform(-1, 1)], 1),
        torch.stack([sy * angle.sin(), sy * angle.cos(), (1 - sy) * uniform(-1, 1)], 1)], 1)
    grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    # outside the image: black (-1)
    out = torch.nn.functional.grid_sample(x + 1, grid, align_corners=False) - 1
    out = out * uniform(1 - jitter, 1 + jitter, 1, 1, 1) + uniform(-jitter / 2, jitter / 2, 1, 1, 1)
    return out + noise * torch.randn_like(out)
