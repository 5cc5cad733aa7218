"""The rnn family: a recurrent stack over sequence samples (steps, features).

Digits are read row by row: 8 steps of 8 features. The LSTM cell runs the fused kernel of
`kaon_kernels.ops`; GRU and plain RNN cells use torch's modules.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kaon_kernels.config import RNNConfig
from kaon_kernels.families.base import Family
from kaon_kernels.ops import FusedLSTM


class RNN(nn.Module):
    """A recurrent stack reading the whole sequence; classifies from the final hidden state."""

    def __init__(self, cfg: RNNConfig, in_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
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


def sequences(x: Tensor) -> Tensor:
    """(N, steps, features) as given; the digits' image rows are the steps."""
    if x.dim() != 3:
        raise ValueError('an rnn needs "x" of (N, steps, features)')
    return x


FAMILY = Family(
    name="rnn",
    settings_type=RNNConfig,
    sample_dims=("steps", "features"),
    build=RNN,
    view=sequences,
)
