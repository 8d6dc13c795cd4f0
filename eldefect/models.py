"""Model architectures: the seed's ELDefectCNN and a 1-channel ResNet-18, chosen by config."""

from __future__ import annotations

import itertools

import torch
from torch import nn
from torchvision.models import resnet18

from eldefect.config import ModelConfig


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class ELDefectCNN(nn.Module):
    """Stem conv 1->width, then `depth` conv-BN-ReLU-maxpool blocks doubling the channels,
    global average pooling and a linear head (width 32, depth 3 ends at 256 channels)."""

    def __init__(self, num_classes: int, width: int = 32, depth: int = 3, dropout: float = 0.0):
        super().__init__()
        channels = [width * 2**i for i in range(depth + 1)]
        self.features = nn.Sequential(
            _conv_block(1, channels[0]),
            *(_conv_block(a, b) for a, b in itertools.pairwise(channels)),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(channels[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, H, W) -> (B, C) logits
        x = self.pool(self.features(x)).flatten(1)  # (B, channels[-1])
        return self.head(self.dropout(x))


def _resnet18_gray(num_classes: int, dropout: float, stem_stride: int) -> nn.Module:
    model = resnet18(weights=None, num_classes=num_classes)  # from scratch: no downloads
    model.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=stem_stride, padding=3, bias=False)
    if dropout:
        model.fc = nn.Sequential(nn.Dropout(dropout), model.fc)
    return model


def build_model(config: ModelConfig, num_classes: int) -> nn.Module:
    if config.arch == "cnn":
        return ELDefectCNN(num_classes, config.width, config.depth, config.dropout)
    if config.arch == "resnet18":
        return _resnet18_gray(num_classes, config.dropout, config.stem_stride)
    raise ValueError(f"unknown architecture {config.arch!r}")
