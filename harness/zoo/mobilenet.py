"""MobileNetV2-style reference network with seeded, calibrated (not pretrained) weights.

Also home of the initialisation and calibration every seeded ImageNet-style zoo model goes through. A
freshly initialised network in eval mode has BatchNorm statistics of (0, 1) that fit none of its layers:
activations blow up or collapse and every input lands on the same class, which would make INT8-vs-FP32
agreement a meaningless 100%. Plain random weights fail the other way too: they amplify quantisation
noise until INT8 agreement is chance. So the initialisation borrows two traits of trained networks
(blob-like depthwise kernels, damped residual branches), calibration fixes the BatchNorm statistics from
seeded images and centres the classifier, and different inputs then give different, finite, moderately
scaled logits that survive INT8 about as well as a trained network's do.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import torch
from torch import nn

from harness.errors import ConfigError
from harness.zoo.datasets import load_dataset
from harness.zoo.digits import deterministic_torch

# The catalog normalises these models' [0, 1] pixels with the usual ImageNet statistics; calibration
# feeds the same normalised pixels so the statistics it records are the ones inference will see.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# (expansion t, output channels c, repeats n, first stride s), from the MobileNetV2 paper, table 2.
INVERTED_RESIDUAL_SETTING: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)

# Calibration budget: enough images for stable per-channel statistics, few enough to build a model in
# about two seconds on one core. At the native 224x224 because activation statistics change with input
# size: outputs stay informative (many distinct top-1 classes) from about 96x96 up.
CALIBRATION_IMAGES = 16
CALIBRATION_BATCH = 8
CALIBRATION_SIZE = 224
# Standard deviation of the calibrated logits; a trained ImageNet classifier's logits spread similarly.
LOGIT_SCALE = 3.0
# BatchNorm gamma of the last layer of every residual branch. Trained residual networks learn small
# values there (zero-init-residual recipes start at 0); at 1 a random network is chaotic and INT8 noise
# grows block by block. ONNX Runtime static INT8 (per-channel, QDQ), 160 random-smooth images, 224x224,
# cosine of INT8 to FP32 logits with gamma 0.5 -> 0.25: MobileNetV2 0.976 -> 0.986, ResNet-18
# 0.992 -> 0.995; top-1 agreement about 0.75 for both (1000 random classes leave small top-1 margins).
RESIDUAL_BRANCH_GAMMA = 0.25
# Keeps calibration images apart from the seed-0 random-smooth images tests and suites evaluate on.
_CALIBRATION_SEED_OFFSET = 1_000_003


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of ``divisor`` without losing more than 10% of it."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class ConvBNReLU6(nn.Sequential):
    """Conv (no bias), BatchNorm, ReLU6: MobileNetV2's basic unit."""

    def __init__(self, inp: int, oup: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(inp, oup, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(oup),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """Expand 1x1, depthwise 3x3, project 1x1 with no activation (the linear bottleneck)."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = round(inp * expand_ratio)
        self.use_residual = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU6(inp, hidden, kernel=1))
        layers += [
            ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, oup, 1, bias=False),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    """MobileNetV2 (Sandler et al. 2018); adaptive pooling lets any input of 32x32 or more through."""

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0) -> None:
        super().__init__()
        channels = make_divisible(32 * width_mult)
        self.last_channel = make_divisible(1280 * max(1.0, width_mult))
        layers: list[nn.Module] = [ConvBNReLU6(3, channels, stride=2)]
        for t, c, n, s in INVERTED_RESIDUAL_SETTING:
            out = make_divisible(c * width_mult)
            for i in range(n):
                layers.append(InvertedResidual(channels, out, s if i == 0 else 1, t))
                channels = out
        layers.append(ConvBNReLU6(channels, self.last_channel, kernel=1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(self.last_channel, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.classifier(torch.flatten(self.pool(self.features(x)), 1))
        return out

    def residual_branch_norms(self) -> Iterator[nn.BatchNorm2d]:
        """The BatchNorm closing each block that has an identity shortcut."""
        for block in self.features:
            if isinstance(block, InvertedResidual) and block.use_residual:
                norm = block.conv[-1]
                assert isinstance(norm, nn.BatchNorm2d)
                yield norm


@torch.no_grad()
def init_weights(model: nn.Module, residual_branch_norms: Iterable[nn.BatchNorm2d] = ()) -> None:
    """ImageNet-model initialisation: He (fan-out) convs, unit BN, small normal classifier.

    ``residual_branch_norms`` are the BatchNorms closing residual branches; they start at
    RESIDUAL_BRANCH_GAMMA.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.groups > 1 and module.groups == module.in_channels:
                # Depthwise kernels get a positive mean (one standard deviation), like the blob-shaped
                # filters trained MobileNets learn. Zero-mean random 3x3 kernels are high-pass filters
                # with no channel mixing to recover the signal: stacked, they amplify white
                # quantisation noise over image content and INT8 top-1 agreement falls to chance.
                fan_out = module.weight.shape[0] * module.weight[0].numel()
                module.weight.add_(math.sqrt(2.0 / fan_out))
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, 0.01)
            nn.init.zeros_(module.bias)
    for norm in residual_branch_norms:
        nn.init.constant_(norm.weight, RESIDUAL_BRANCH_GAMMA)


def check_classes(num_classes: int, factory: str) -> None:
    """Reject a class count no classifier can have, naming the factory and the value."""
    if num_classes < 1:
        raise ConfigError(
            f"{factory}: num_classes must be >= 1, got {num_classes}", key="num_classes", fix="e.g. 1000"
        )


def _calibration_batches(seed: int) -> list[torch.Tensor]:
    pixels = load_dataset(
        "random-smooth",
        count=CALIBRATION_IMAGES,
        seed=_CALIBRATION_SEED_OFFSET + seed,
        shape=(3, CALIBRATION_SIZE, CALIBRATION_SIZE),
    ).images
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    x = (torch.from_numpy(pixels) - mean) / std
    return list(torch.split(x, CALIBRATION_BATCH))


@torch.no_grad()
def calibrate_for_inference(model: nn.Module, classifier: nn.Linear, *, seed: int) -> nn.Module:
    """Estimate BatchNorm statistics from seeded smooth images, centre and scale ``classifier``; eval().

    The classifier bias is set to cancel the mean logit of the calibration images and the weights are
    scaled to give logits a standard deviation of LOGIT_SCALE: what is left is each input's own
    deviation from the average image, which is what spreads the top-1 over many classes.
    """
    batches = _calibration_batches(seed)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        # momentum=None keeps an exact running average over all calibration batches.
        m.momentum = None
    model.train()
    for batch in batches:
        model(batch)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    model.eval()

    features: list[torch.Tensor] = []
    handle = classifier.register_forward_pre_hook(lambda _m, args: features.append(args[0].detach()))
    try:
        for batch in batches:
            model(batch)
    finally:
        handle.remove()
    pooled = torch.cat(features)
    logits = pooled @ classifier.weight.T
    centred_std = (logits - logits.mean(0)).std()
    scale = LOGIT_SCALE / float(centred_std) if float(centred_std) > 0 else 1.0
    classifier.weight.mul_(scale)
    classifier.bias.copy_(-scale * logits.mean(0))
    return model


def mobilenet_v2_style(num_classes: int = 1000, width_mult: float = 1.0, seed: int = 0) -> nn.Module:
    """MobileNetV2 in eval mode with seeded, BN-calibrated random weights: NOT pretrained.

    Deterministic for its arguments, bit for bit; for latency and INT8-parity work, not for accuracy.
    """
    check_classes(num_classes, "mobilenet_v2_style")
    if not width_mult > 0:
        raise ConfigError(
            f"mobilenet_v2_style: width_mult must be > 0, got {width_mult}",
            key="width_mult",
            fix="use a multiplier such as 0.35, 0.5, 0.75, 1.0 or 1.4",
        )
    with deterministic_torch(seed):
        model = MobileNetV2(num_classes=num_classes, width_mult=width_mult)
        init_weights(model, model.residual_branch_norms())
        head = model.classifier[-1]
        assert isinstance(head, nn.Linear)
        calibrate_for_inference(model, head, seed=seed)
    return model
