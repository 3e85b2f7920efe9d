"""MobileNetV2-style reference network with seeded, calibrated (not pretrained) weights.

Also home of the calibration every seeded ImageNet-style zoo model goes through: a freshly initialised
network in eval mode has BatchNorm statistics of (0, 1) that fit none of its layers, so activations blow
up or collapse and every input lands on the same class. That would make INT8-vs-FP32 agreement a
meaningless 100%. Calibration fixes the statistics from data and centres the classifier, so that
different inputs give different, finite, moderately scaled logits.
"""

from __future__ import annotations

import math

import torch
from torch import nn

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

# Calibration budget: enough images for stable per-channel statistics, few enough to build in about a
# second. At the native 224x224 because smooth images' statistics change with resolution.
CALIBRATION_IMAGES = 16
CALIBRATION_BATCH = 8
CALIBRATION_SIZE = 224
# Standard deviation of the calibrated logits; a trained ImageNet classifier's logits spread similarly.
LOGIT_SCALE = 3.0
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
        if self.use_residual:
            return x + self.conv(x)
        out: torch.Tensor = self.conv(x)
        return out


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
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


@torch.no_grad()
def init_weights(model: nn.Module) -> None:
    """ImageNet-model initialisation: He (fan-out) convs, unit BN, small normal classifier."""
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
        elif isinstance(module, nn.BatchNorm2d | nn.GroupNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, 0.01)
            nn.init.zeros_(module.bias)


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
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
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
    with deterministic_torch(seed):
        model = MobileNetV2(num_classes=num_classes, width_mult=width_mult)
        init_weights(model)
        head = model.classifier[-1]
        assert isinstance(head, nn.Linear)
        calibrate_for_inference(model, head, seed=seed)
    return model
