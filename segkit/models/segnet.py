"""SegNet-like encoder-decoder of the Carvana seed (a U-Net with a deep 7-level encoder).

Encoder: 7 blocks of (conv3x3-BN-ReLU)x2, each followed by 2x2 max-pooling.
Center: 2 x conv3x3-BN-ReLU. Decoder: 7 blocks of 2x nearest upsampling,
concatenation with the matching encoder output taken *before* its pooling, and
(conv3x3-BN-ReLU)x3. Head: 1x1 conv to ``num_classes`` logits.

Block ``i`` (0-based) has ``base_width * 2**i`` channels (capped at ``max_width``); the
center has twice the deepest encoder width (also capped). Inputs must be multiples of
``2**7 = 128`` on both sides.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SegNet"]


def _conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def _stack(in_channels: int, out_channels: int, count: int) -> nn.Sequential:
    layers = [_conv_bn_relu(in_channels, out_channels)]
    layers += [_conv_bn_relu(out_channels, out_channels) for _ in range(count - 1)]
    return nn.Sequential(*layers)


class SegNet(nn.Module):
    """Carvana-project encoder-decoder; input ``(B, in_channels, H, W)``, output ``(B, num_classes, H, W)`` logits.

    Args:
        in_channels: image channels.
        num_classes: output channels (1 = binary logits).
        base_width: channels of the first encoder block (the Carvana project used 8 at 1024x1024).
        depth: number of encoder (and decoder) blocks; inputs must be multiples of ``2**depth``.
        max_width: cap on any block's channels.
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 1,
        base_width: int = 8,
        depth: int = 7,
        max_width: int = 1024,
    ) -> None:
        super().__init__()
        widths = [min(base_width * 2**i, max_width) for i in range(depth)]
        center_width = min(widths[-1] * 2, max_width)
        self.size_multiple = 2**depth
        self.encoders = nn.ModuleList()
        previous = in_channels
        for width in widths:
            self.encoders.append(_stack(previous, width, 2))
            previous = width
        self.pool = nn.MaxPool2d(2)
        self.center = _stack(previous, center_width, 2)
        self.decoders = nn.ModuleList()
        previous = center_width
        for width in reversed(widths):
            self.decoders.append(_stack(previous + width, width, 3))
            previous = width
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.head = nn.Conv2d(previous, num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
            x = self.pool(x)
        x = self.center(x)
        for decoder, skip in zip(self.decoders, reversed(skips)):
            x = decoder(torch.cat([self.up(x), skip], dim=1))
        return self.head(x)
