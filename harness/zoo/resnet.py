"""ResNet-18-style reference network with seeded, calibrated (not pretrained) weights."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from harness.zoo.digits import deterministic_torch
from harness.zoo.mobilenet import calibrate_for_inference, check_classes, init_weights

# BasicBlocks per stage for ResNet-18 (He et al. 2016, table 1).
RESNET18_LAYERS = (2, 2, 2, 2)


class BasicBlock(nn.Module):
    """Two 3x3 conv/BN layers and an identity (or 1x1 projection) shortcut."""

    def __init__(self, inp: int, oup: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inp, oup, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(oup)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(oup, oup, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(oup)
        self.downsample: nn.Module | None = None
        if stride != 1 or inp != oup:
            self.downsample = nn.Sequential(nn.Conv2d(inp, oup, 1, stride, bias=False), nn.BatchNorm2d(oup))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        result: torch.Tensor = self.relu(out + identity)
        return result


class ResNet(nn.Module):
    """ResNet with BasicBlocks; adaptive pooling lets any input of 32x32 or more through."""

    def __init__(self, layers: tuple[int, int, int, int] = RESNET18_LAYERS, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages: list[nn.Module] = []
        channels = 64
        for i, blocks in enumerate(layers):
            width = 64 * 2**i
            stride = 1 if i == 0 else 2
            stage = [BasicBlock(channels, width, stride)]
            stage += [BasicBlock(width, width) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*stage))
            channels = width
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        out: torch.Tensor = self.fc(torch.flatten(self.avgpool(x), 1))
        return out

    def residual_branch_norms(self) -> Iterator[nn.BatchNorm2d]:
        """The second BatchNorm of every block: the end of the branch added to the shortcut."""
        for module in self.modules():
            if isinstance(module, BasicBlock):
                yield module.bn2


def resnet18_style(num_classes: int = 1000, seed: int = 0) -> nn.Module:
    """ResNet-18 in eval mode with seeded, BN-calibrated random weights: NOT pretrained.

    Deterministic for its arguments, bit for bit; for latency and INT8-parity work, not for accuracy.
    """
    check_classes(num_classes, "resnet18_style")
    with deterministic_torch(seed):
        model = ResNet(RESNET18_LAYERS, num_classes=num_classes)
        init_weights(model, model.residual_branch_norms())
        calibrate_for_inference(model, model.fc, seed=seed)
    return model
