"""torchvision's ResNet18, trained from scratch as in the CLEAR study, for any class count.

Inputs with other than 3 channels get a matching first convolution. Below 64 pixels the
ImageNet stem (7×7 stride-2 convolution and max-pool) would shrink a 32×32 image to 8×8 before
the first block, so small inputs get the CIFAR stem instead (3×3 stride-1, no pool).
"""
from __future__ import annotations

from torch import nn


def resnet18(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    if len(input_shape) != 3:
        raise ValueError(f"resnet18 needs image input C×H×W, got shape {input_shape}")
    from torchvision.models import resnet18 as tv_resnet18  # slow to import; only this model needs it

    channels, height, width = input_shape
    net = tv_resnet18(weights=None, num_classes=num_classes)
    if min(height, width) < 64:
        net.conv1 = nn.Conv2d(channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    elif channels != 3:
        net.conv1 = nn.Conv2d(channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return net
