"""Custom kernels of the runtime, each with a plain-torch reference beside it."""

from kaon_kernels.ops.conv_bn import FusedConvBNReLU, fold_conv_bn, reference_conv_bn_relu
from kaon_kernels.ops.lstm import (
    FusedLSTM,
    fused_lstm_cell,
    fused_lstm_step,
    reference_lstm_cell,
)

__all__ = [
    "FusedConvBNReLU",
    "FusedLSTM",
    "fold_conv_bn",
    "fused_lstm_cell",
    "fused_lstm_step",
    "reference_conv_bn_relu",
    "reference_lstm_cell",
]
