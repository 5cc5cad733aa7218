"""Custom kernels against their plain-torch references: forward and backward, odd shapes."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from kaon_kernels.config import CNNConfig
from kaon_kernels.families.cnn import CNN
from kaon_kernels.models import fuse_for_inference
from kaon_kernels.ops import (
    FusedConvBNReLU,
    FusedLSTM,
    fold_conv_bn,
    fused_lstm_cell,
    fused_lstm_step,
    reference_conv_bn_relu,
    reference_lstm_cell,
)

N, INPUT, HIDDEN = 3, 5, 7  # odd on purpose: no shape lines up with a vector width
DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


def _lstm_inputs(dtype: torch.dtype, device: str = "cpu") -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    shapes: list[tuple[int, ...]] = [(N, INPUT), (N, HIDDEN), (N, HIDDEN)]
    shapes += [(4 * HIDDEN, INPUT), (4 * HIDDEN, HIDDEN), (4 * HIDDEN,)]
    return [torch.randn(s, generator=g, dtype=dtype).to(device).requires_grad_() for s in shapes]


def _run_cell(fn: object, inputs: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    assert callable(fn)
    h, c = fn(*inputs)
    g = torch.Generator().manual_seed(2)
    # Weight both outputs differently so that every gate's gradient path is exercised.
    w_h = torch.randn(h.shape, generator=g, dtype=h.dtype).to(h.device)
    w_c = torch.randn(c.shape, generator=g, dtype=c.dtype).to(c.device)
    loss = (h * w_h).sum() + (c * w_c).sum()
    grads = torch.autograd.grad(loss, inputs)
    return (h, c, *grads)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_lstm_cell_matches_reference_forward_and_backward(
    dtype: torch.dtype, device: str
) -> None:
    fused = _run_cell(fused_lstm_cell, _lstm_inputs(dtype, device))
    reference = _run_cell(reference_lstm_cell, _lstm_inputs(dtype, device))
    for got, want in zip(fused, reference, strict=True):
        assert_close(got, want)


def test_fused_lstm_cell_without_bias_matches_reference() -> None:
    inputs = _lstm_inputs(torch.float32)[:5]
    fused = _run_cell(fused_lstm_cell, inputs)
    reference = _run_cell(reference_lstm_cell, _lstm_inputs(torch.float32)[:5])
    for got, want in zip(fused, reference, strict=True):
        assert_close(got, want)


def test_fused_lstm_cell_without_grad_matches_with_grad() -> None:
    inputs = _lstm_inputs(torch.float32)
    with_grad = fused_lstm_cell(*inputs)
    with torch.no_grad():
        without = fused_lstm_cell(*inputs)
    for got, want in zip(without, with_grad, strict=True):
        assert not got.requires_grad
        assert_close(got, want)


def test_fused_lstm_step_takes_the_concatenated_weight() -> None:
    x, h, c, w_ih, w_hh, b = _lstm_inputs(torch.float64)
    got = fused_lstm_step(x, h, c, torch.cat((w_ih, w_hh), dim=1), b)
    for out, want in zip(got, reference_lstm_cell(x, h, c, w_ih, w_hh, b), strict=True):
        assert_close(out, want)


def test_fused_lstm_cell_matches_torch_lstmcell() -> None:
    x, h, c, w_ih, w_hh, b = (t.detach() for t in _lstm_inputs(torch.float32))
    cell = nn.LSTMCell(INPUT, HIDDEN)
    with torch.no_grad():
        cell.weight_ih.copy_(w_ih)
        cell.weight_hh.copy_(w_hh)
        cell.bias_ih.copy_(b * 0.25)
        cell.bias_hh.copy_(b * 0.75)
    want_h, want_c = cell(x, (h, c))
    got_h, got_c = fused_lstm_cell(x, h, c, w_ih, w_hh, b)
    assert_close(got_h, want_h)
    assert_close(got_c, want_c)


def _lstm_pair(
    layers: int, bidirectional: bool, device: str, dtype: torch.dtype
) -> tuple[nn.LSTM, FusedLSTM]:
    torch.manual_seed(3)
    reference = nn.LSTM(INPUT, HIDDEN, layers, batch_first=True, bidirectional=bidirectional)
    fused = FusedLSTM(INPUT, HIDDEN, layers, bidirectional)
    fused.load_state_dict(reference.state_dict())
    return reference.to(device, dtype), fused.to(device, dtype)


LAYER_CASES = [  # (layers, bidirectional, steps): 1 step has no recurrent matmul at all
    (2, True, 4),
    (1, False, 6),
    (1, True, 1),
    (3, False, 2),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("layers", "bidirectional", "steps"), LAYER_CASES)
def test_fused_lstm_layer_matches_torch_lstm_forward_and_backward(
    layers: int, bidirectional: bool, steps: int, device: str
) -> None:
    # cuDNN's LSTM may compute in TF32 on GPUs: compare in float64 there, exactly.
    dtype = torch.float64 if device == "cuda" else torch.float32
    reference, fused = _lstm_pair(layers, bidirectional, device, dtype)
    directions = 2 if bidirectional else 1
    x = torch.randn(N, steps, INPUT, device=device, dtype=dtype)
    x_ref, x_fused = x.clone().requires_grad_(), x.clone().requires_grad_()

    out_ref, (h_ref, _) = reference(x_ref)
    out_fused, h_fused = fused(x_fused)
    assert_close(out_fused, out_ref)
    assert_close(h_fused, h_ref[-directions:])  # the last layer, every direction

    (out_ref.square().sum() + h_ref[-directions:].sum()).backward()
    (out_fused.square().sum() + h_fused.sum()).backward()
    assert x_ref.grad is not None and x_fused.grad is not None
    assert_close(x_fused.grad, x_ref.grad)
    ref_params = dict(reference.named_parameters())
    for name, p in fused.named_parameters():
        assert p.grad is not None, name
        assert_close(p.grad, ref_params[name].grad, msg=name)


def test_fused_lstm_layer_float64_and_without_grad() -> None:
    reference, fused = _lstm_pair(2, True, "cpu", torch.float64)
    x = torch.randn(N, 5, INPUT, dtype=torch.float64)
    with torch.no_grad():
        out, h_n = fused(x)
        want, (h_want, _) = reference(x)
    assert not out.requires_grad
    assert_close(out, want)
    assert_close(h_n, h_want[-2:])


def test_fused_lstm_layer_backward_twice_with_retained_graph() -> None:
    _, fused = _lstm_pair(1, True, "cpu", torch.float32)
    out, _ = fused(torch.randn(N, 3, INPUT))
    loss = out.square().sum()
    first = torch.autograd.grad(loss, list(fused.parameters()), retain_graph=True)
    second = torch.autograd.grad(loss, list(fused.parameters()))
    for a, b in zip(first, second, strict=True):
        assert_close(a, b)


def _conv_bn(bias: bool) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    torch.manual_seed(4)
    conv = nn.Conv2d(3, 5, kernel_size=(3, 5), stride=2, padding=(1, 2), bias=bias)
    bn = nn.BatchNorm2d(5, eps=1e-3)
    with torch.no_grad():
        assert bn.running_mean is not None and bn.running_var is not None
        bn.running_mean.copy_(torch.randn(5))
        bn.running_var.copy_(torch.rand(5) + 0.5)
        bn.weight.copy_(torch.randn(5))
        bn.bias.copy_(torch.randn(5))
    bn.eval()
    return conv, bn


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bias", [True, False])
def test_folded_conv_bn_relu_matches_reference(bias: bool, device: str) -> None:
    conv, bn = _conv_bn(bias)
    conv.to(device)
    bn.to(device)
    x = torch.randn(2, 3, 7, 9, device=device)
    with torch.no_grad(), torch.backends.cudnn.flags(allow_tf32=False):  # exact fp32 on GPUs
        want = reference_conv_bn_relu(conv, bn, x)
        assert_close(FusedConvBNReLU(conv, bn)(x), want)
        assert_close(torch.relu(fold_conv_bn(conv, bn)(x)), want)
        assert_close(torch.relu(bn(conv(x))), want)  # the reference is torch's modules


def test_fold_refuses_mismatched_channels() -> None:
    with pytest.raises(ValueError, match="features"):
        fold_conv_bn(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(3))


def test_fuse_for_inference_keeps_the_cnn_output() -> None:
    torch.manual_seed(5)
    model = CNN(CNNConfig(channels=[4, 6, 8], kernel_sizes=[3, 5, 1]), (1, 8, 8), 10)
    model.train()
    with torch.no_grad():
        for _ in range(3):  # non-trivial running statistics
            model(torch.randn(16, 1, 8, 8) * 2 + 1)
    model.eval()
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        want = model(x)
        got = fuse_for_inference(model)(x)
    assert_close(got, want)
