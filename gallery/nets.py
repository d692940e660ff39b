"""Networks the examples share or load: the image GAN's (DCGAN-style, PacGAN packing), the
fine-tuning backbones (digits_cnn, pretrained in-project; torchvision's ResNet-18). The 2-D
mixtures' GAN is two `mlp`s. And the two patterns more than one example copies: `sync_target` (dqn,
sac and ema: a target network, and an EMA copy) and `frozen` (sac)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import nn

from gallery.core.errors import DataError
from gallery.core.io import download_timeout


@torch.no_grad()
def sync_target(target, online, tau=1.0):
    """tau=1 is a hard copy; tau<1 is Polyak averaging, t <- t + tau * (o - t). In place and without
    a graph. Buffers (BatchNorm's running statistics) are copied either way: an average of two
    running means is not a running mean, and an integer counter cannot be averaged."""
    for t, o in zip(target.parameters(), online.parameters()):
        if tau >= 1.0:
            t.copy_(o)  # PATTERN: under no_grad, never through .data
        else:
            t.lerp_(o, tau)  # PATTERN: t <- t + tau * (o - t)
    for tb, ob in zip(target.buffers(), online.buffers()):
        tb.copy_(ob)


@contextlib.contextmanager
def frozen(module):
    """The module's parameters stop requiring grad inside the block: gradients flow through the
    module to its inputs, never into its weights. Each parameter gets its own flag back afterwards,
    even when the block raises."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)  # PATTERN: for this block only
    try:
        yield
    finally:
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)


@contextlib.contextmanager
def eval_mode(*modules):
    """The modules in eval mode inside the block (BatchNorm reads its running statistics and leaves
    them alone), every submodule back in its own mode afterwards, even when the block raises. Mode
    only: autograd records as the caller chose (simsiam's measurement takes gradients in eval
    mode). An evaluation wants no graph as well: gallery.evaluate.evaluating is both."""
    modes = {sub: sub.training for m in modules for sub in m.modules()}
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for sub, mode in modes.items():
            sub.training = mode  # each its own flag, in any order


@torch.no_grad()
def accuracy(model, x, y) -> float:
    """The share of `x` whose highest logit is the label, in eval mode and without a graph (ema's
    and distill's held-out accuracy)."""
    with eval_mode(model):
        return float((model(x).argmax(1) == y).float().mean())


class Chain(nn.Sequential):
    """nn.Sequential that calls each layer's `forward` itself: the same math and state_dict keys,
    without the hook dispatch nn.Module wraps around every call. For the RL nets, which act on a
    batch of 1-4 observations each env step: there the dispatch costs about as much as the math
    (scripts/bench.py cleanrl). Hooks on the layers inside do not fire; hooks on the whole do."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer.forward(x)
        return x


def hookless(module: nn.Module) -> nn.Module:
    """`module` with every plain nn.Sequential in it (itself included) made a `Chain` over the
    same layers: the same parameters and state_dict keys, without the per-layer hook dispatch.
    Applied where a training run builds its RL nets; the models a reader copies stay plain torch
    (scripts/bench.py chain measures what it saves)."""
    for name, child in module.named_children():
        setattr(module, name, hookless(child))
    return Chain(*module) if type(module) is nn.Sequential else module


def mlp(n_in: int, n_out: int, hidden: int, layers: int, sn: bool) -> nn.Sequential:
    wrap = nn.utils.parametrizations.spectral_norm if sn else (lambda m: m)
    dims = [n_in] + [hidden] * layers
    blocks: list[nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:]):
        blocks += [wrap(nn.Linear(a, b)), nn.LeakyReLU(0.2)]
    return nn.Sequential(*blocks, wrap(nn.Linear(dims[-1], n_out)))


def _upsamplings(size: int) -> tuple[int, int]:
    """Start at a small side (<= 7) and double up to `size`: 8 -> 4x1, 28 -> 7x2, 32 -> 4x3."""
    start, n = size, 0
    while start > 7 and start % 2 == 0:
        start, n = start // 2, n + 1
    return start, n


class Packed(nn.Module):
    """PacGAN's packing: D sees `pack` samples concatenated along the feature/channel axis."""

    def __init__(self, net: nn.Module, pack: int):
        super().__init__()
        self.net, self.pack = net, pack

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.reshape(len(x) // self.pack, self.pack * x.shape[1], *x.shape[2:]))


class ConvGenerator(nn.Module):
    """DCGAN-style: project z to a small feature map, then stride-2 transposed convs."""

    def __init__(self, z_dim: int, shape: tuple[int, int, int], base: int):
        super().__init__()
        channels, size, _ = shape
        self.start, n_up = _upsamplings(size)
        self.width = width = base * 2**n_up
        self.project = nn.Sequential(nn.Linear(z_dim, width * self.start**2),
                                     nn.BatchNorm1d(width * self.start**2), nn.ReLU())
        ups: list[nn.Module] = []
        for i in range(n_up):
            a, b = width // 2**i, width // 2 ** (i + 1)
            last = i == n_up - 1
            ups.append(nn.ConvTranspose2d(a, channels if last else b, 4, 2, 1))
            ups += [nn.Tanh()] if last else [nn.BatchNorm2d(b), nn.ReLU()]
        if not n_up:
            ups = [nn.Conv2d(width, channels, 3, 1, 1), nn.Tanh()]
        self.ups = nn.Sequential(*ups)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.ups(self.project(z).view(len(z), self.width, self.start, self.start))


def conv_discriminator(shape: tuple[int, int, int], base: int, sn: bool) -> nn.Sequential:
    wrap = nn.utils.parametrizations.spectral_norm if sn else (lambda m: m)
    channels, size, _ = shape
    start, n_down = _upsamplings(size)
    blocks: list[nn.Module] = []
    a = channels
    for i in range(n_down):
        b = base * 2**i
        blocks += [wrap(nn.Conv2d(a, b, 4, 2, 1)), nn.LeakyReLU(0.2)]
        a = b
    return nn.Sequential(*blocks, nn.Flatten(), wrap(nn.Linear(a * start * start, 1)))


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


def resnet18_backbone(cfg) -> nn.Sequential:
    """torchvision's ResNet-18 as blocks; `cfg` has `weights` (imagenet | random) and
    `weights_path`."""
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
            with download_timeout():
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
