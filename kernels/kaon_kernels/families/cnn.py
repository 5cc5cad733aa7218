"""The cnn family: conv blocks and a small classifier, for image samples (channels, height, width).

Digits are read as one-channel 8x8 images (1, 8, 8). Every conv block can run as one folded
conv + batch norm + ReLU kernel (`FusedConvBNReLU`) once the model serves.
"""

from __future__ import annotations

from torch import Tensor, nn

from kaon_kernels.config import CNNConfig
from kaon_kernels.families.base import Family
from kaon_kernels.ops import FusedConvBNReLU

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

    def __init__(self, cfg: CNNConfig, in_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
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


def images(x: Tensor) -> Tensor:
    """(N, C, H, W) as given; (N, H, W), such as the digits, as one channel."""
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() != 4:
        raise ValueError('a cnn needs "x" of (N, C, H, W) or (N, H, W)')
    return x


def spelled_out(cfg: CNNConfig) -> CNNConfig:
    return cfg.model_copy(
        update={"kernel_sizes": cfg.kernel_sizes or [DEFAULT_KERNEL] * len(cfg.channels)}
    )


FAMILY = Family(
    name="cnn",
    settings_type=CNNConfig,
    sample_dims=("channels", "height", "width"),
    build=CNN,
    view=images,
    resolve=spelled_out,
)
