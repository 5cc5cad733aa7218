"""Conv + batch-norm + ReLU folded into one convolution for inference.

In eval mode batch norm is an affine map per output channel,
`y = (conv(x) - mean) * gamma / sqrt(var + eps) + beta`, so it can be folded into the conv's
weight and bias once: `w' = w * s`, `b' = (b - mean) * s + beta` with `s = gamma / sqrt(var + eps)`.
The folded block runs one conv and an in-place ReLU instead of conv, batch norm and ReLU.
Training still needs the unfolded block (batch statistics); this is for serving.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn


@torch.no_grad()
def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new conv equal to `bn(conv(x))` with `bn` in eval mode (running statistics)."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("fold_conv_bn needs batch norm with running statistics")
    if bn.num_features != conv.out_channels:
        raise ValueError(
            f"batch norm has {bn.num_features} features, conv {conv.out_channels} channels"
        )
    folded = copy.deepcopy(conv)
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    new_bias = (bias - bn.running_mean) * scale
    if bn.bias is not None:
        new_bias = new_bias + bn.bias
    folded.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
    folded.bias = nn.Parameter(new_bias.to(conv.weight.dtype))
    return folded


class FusedConvBNReLU(nn.Module):
    """Inference-only `relu(bn(conv(x)))` as a single folded conv and an in-place ReLU."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d | None = None) -> None:
        super().__init__()
        self.conv = fold_conv_bn(conv, bn) if bn is not None else copy.deepcopy(conv)
        self.conv.requires_grad_(False)
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu_(self.conv(x))


def reference_conv_bn_relu(conv: nn.Conv2d, bn: nn.BatchNorm2d, x: Tensor) -> Tensor:
    """The unfolded reference: conv, batch norm with running statistics, ReLU."""
    y = conv(x)
    y = nn.functional.batch_norm(
        y, bn.running_mean, bn.running_var, bn.weight, bn.bias, training=False, eps=bn.eps
    )
    return torch.relu(y)
