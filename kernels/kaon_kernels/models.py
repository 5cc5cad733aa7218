"""The model families: a CNN for images (N, C, H, W) and an RNN for sequences (N, T, F).

`build_model(cfg, in_shape, num_classes)` builds either from `ModelConfig`; `in_shape` is one
sample's shape without the batch dimension, e.g. (1, 8, 8) for a CNN on digits or (8, 8) (8 steps
of 8 features) for an RNN. The LSTM cell runs the fused kernel of `kaon_kernels.ops`; GRU and
plain RNN cells use torch's modules.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from kaon_kernels.config import CNNConfig, ModelConfig, RNNConfig
from kaon_kernels.ops import FusedConvBNReLU, FusedLSTM

DEFAULT_KERNEL = 3  # CNNConfig.kernelSizes: 3 for every block when omitted


class ConvBlock(nn.Module):
    """Conv, optional batch norm, ReLU, optional 2x2 pooling."""

    def __init__(
        self, in_ch: int, out_ch: int, kernel: int, batch_norm: bool, pool: str | None
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=not batch_norm)
        self.bn: nn.BatchNorm2d | None = nn.BatchNorm2d(out_ch) if batch_norm else None
        self.act: nn.Module = nn.ReLU(inplace=True)
        pools: dict[str | None, nn.Module] = {"max": nn.MaxPool2d(2), "avg": nn.AvgPool2d(2)}
        self.pool: nn.Module = pools.get(pool, nn.Identity())
        self.fused: FusedConvBNReLU | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self.fused is not None:
            out: Tensor = self.pool(self.fused(x))
            return out
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        pooled: Tensor = self.pool(self.act(x))
        return pooled

    def fuse_for_inference(self) -> None:
        """Run conv, batch norm and ReLU as one folded `FusedConvBNReLU` from now on (eval only).

        The folded weights are a snapshot: call again after loading new weights.
        """
        self.fused = FusedConvBNReLU(self.conv, self.bn)


class CNN(nn.Module):
    """Conv blocks, then flatten, dropout, a hidden layer and the classifier."""

    def __init__(self, cfg: CNNConfig, in_shape: Sequence[int], num_classes: int) -> None:
        super().__init__()
        if len(in_shape) != 3:
            raise ValueError(f"a cnn takes (channels, height, width) samples, got {in_shape}")
        kernels = cfg.kernel_sizes or [DEFAULT_KERNEL] * len(cfg.channels)
        if len(kernels) != len(cfg.channels):
            raise ValueError("model.cnn.kernelSizes: give one size per entry of channels")
        in_ch, height, width = in_shape
        blocks: list[nn.Module] = []
        for out_ch, kernel in zip(cfg.channels, kernels, strict=True):
            # Pool only while both sides are at least 2, so deep stacks on small inputs still fit.
            pool = cfg.pooling if cfg.pooling != "none" and min(height, width) >= 2 else None
            blocks.append(ConvBlock(in_ch, out_ch, kernel, cfg.batch_norm, pool))
            in_ch = out_ch
            if pool:
                height, width = height // 2, width // 2
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(cfg.dropout),
            nn.Linear(in_ch * height * width, cfg.hidden_units),
            nn.ReLU(inplace=True),
            nn.Linear(cfg.hidden_units, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.head(self.features(x))
        return out


class RNN(nn.Module):
    """A recurrent stack reading the whole sequence; classifies from the final hidden state."""

    def __init__(self, cfg: RNNConfig, in_shape: Sequence[int], num_classes: int) -> None:
        super().__init__()
        if len(in_shape) != 2:
            raise ValueError(f"an rnn takes (steps, features) samples, got {in_shape}")
        features = in_shape[1]
        dropout = cfg.dropout if cfg.layers > 1 else 0.0
        self.cell = cfg.cell
        self.recurrent: nn.Module
        if cfg.cell == "lstm":
            self.recurrent = FusedLSTM(
                features, cfg.hidden_size, cfg.layers, cfg.bidirectional, dropout
            )
        else:
            rnn_cls = nn.GRU if cfg.cell == "gru" else nn.RNN
            self.recurrent = rnn_cls(
                features,
                cfg.hidden_size,
                cfg.layers,
                batch_first=True,
                dropout=dropout,
                bidirectional=cfg.bidirectional,
            )
        self.directions = 2 if cfg.bidirectional else 1
        self.head = nn.Linear(cfg.hidden_size * self.directions, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        _, h_n = self.recurrent(x)
        # The last layer's final state of each direction, side by side: (N, H * directions).
        last = h_n[-self.directions :]
        out: Tensor = self.head(torch.cat(list(last.unbind(0)), dim=1))
        return out


def build_model(cfg: ModelConfig, in_shape: Sequence[int], num_classes: int) -> nn.Module:
    """The network `cfg` describes, for samples of `in_shape` and `num_classes` classes."""
    if num_classes < 2:
        raise ValueError(f"need at least 2 classes, got {num_classes}")
    if cfg.family == "cnn":
        return CNN(cfg.cnn_or_default(), tuple(in_shape), num_classes)
    return RNN(cfg.rnn_or_default(), tuple(in_shape), num_classes)


def fuse_for_inference(model: nn.Module) -> nn.Module:
    """Fold every conv block's batch norm and ReLU into its conv; puts the model in eval mode."""
    model.eval()
    for module in model.modules():
        if isinstance(module, ConvBlock):
            module.fuse_for_inference()
    return model
