"""A fused LSTM cell and a stacked LSTM layer built on the same gate math.

`fused_lstm_cell` does one matmul over the concatenated input and hidden state (instead of the
two that `torch.nn.LSTMCell` does) and computes the gate activations, the new cell state and
the new hidden state in one autograd node with a hand-written backward, so autograd keeps a few
saved tensors per step instead of a graph of a dozen element-wise ops.

`FusedLSTM` runs a whole sequence per direction as one autograd node with the same gate math:
the input half of every step's matmul is done for all steps in one matmul up front (only
`h @ w_hh` stays inside the recurrence), and the backward pass through time accumulates the
weight gradient in one matmul over all steps instead of one per step.

`reference_lstm_cell` is the plain-torch reference with `torch.nn.LSTMCell` semantics
(gate order i, f, g, o); tests compare forward and backward against it and against torch's
`nn.LSTMCell` and `nn.LSTM`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx


def _step_forward(gates: Tensor, c: Tensor, c_out: Tensor, tanh_out: Tensor, h_out: Tensor) -> None:
    """Activate pre-activations `gates` (N, 4H) in place; write c', tanh(c') and h'."""
    hidden = c.shape[1]
    gates[:, : 2 * hidden].sigmoid_()  # i, f
    gates[:, 2 * hidden : 3 * hidden].tanh_()  # g
    gates[:, 3 * hidden :].sigmoid_()  # o
    i, f, g, o = gates.chunk(4, dim=1)
    torch.mul(f, c, out=c_out).addcmul_(i, g)
    torch.tanh(c_out, out=tanh_out)
    torch.mul(o, tanh_out, out=h_out)


def _step_backward(
    grad_h: Tensor, grad_c: Tensor, c: Tensor, gates: Tensor, tanh_c: Tensor, d_gates: Tensor
) -> Tensor:
    """Write the pre-activations' gradient into `d_gates`; return the gradient of `c`.

    Python-number operands cost a conversion per call on the CPU, hence s' = s - s*s via
    addcmul and a 0-dim tensor for the 1 in tanh' = 1 - g*g.
    """
    hidden = c.shape[1]
    i, f, g, o = gates.chunk(4, dim=1)
    grad_ho = grad_h * o
    dc = (grad_c + grad_ho).addcmul_(grad_ho * tanh_c, tanh_c, value=-1)
    d_i, d_f, d_g, d_o = d_gates.chunk(4, dim=1)
    torch.mul(dc, g, out=d_i)
    torch.mul(dc, c, out=d_f)
    torch.mul(dc, i, out=d_g)
    torch.mul(grad_h, tanh_c, out=d_o)
    slope = torch.addcmul(gates, gates, gates, value=-1)  # s - s^2; g - g^2 for the tanh part
    slope[:, 2 * hidden : 3 * hidden].sub_(g).add_(gates.new_ones(()))  # 1 - g^2
    d_gates.mul_(slope)
    return dc * f


class _FusedLSTMCell(torch.autograd.Function):
    """One LSTM step on `xh = [x, h]` with a pre-concatenated weight `w = [w_ih | w_hh]`."""

    @staticmethod
    def forward(
        ctx: FunctionCtx, xh: Tensor, c: Tensor, w: Tensor, b: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        gates = xh @ w.t() if b is None else torch.addmm(b, xh, w.t())
        h_new, c_new, tanh_c = torch.empty_like(c), torch.empty_like(c), torch.empty_like(c)
        _step_forward(gates, c, c_new, tanh_c, h_new)
        ctx.save_for_backward(xh, c, w, gates, tanh_c)
        ctx.has_bias = b is not None  # type: ignore[attr-defined]
        return h_new, c_new

    @staticmethod
    def backward(ctx: Any, grad_h: Tensor, grad_c: Tensor) -> tuple[Tensor | None, ...]:
        xh, c, w, gates, tanh_c = ctx.saved_tensors
        d_gates = torch.empty_like(gates)
        grad_c_prev = _step_backward(grad_h, grad_c, c, gates, tanh_c, d_gates)
        need = ctx.needs_input_grad
        return (
            d_gates @ w if need[0] else None,
            grad_c_prev if need[1] else None,
            d_gates.t() @ xh if need[2] else None,
            d_gates.sum(0) if ctx.has_bias and need[3] else None,
        )


class _FusedLSTMSequence(torch.autograd.Function):
    """A whole sequence of one direction, from zero state, as one autograd node.

    `projected` (T, N, 4H) is `x_t @ w_ih.T + bias` for every step; returns the hidden states
    (T, N, H). Time-major, so each step's slices are contiguous and written in place.
    """

    @staticmethod
    def forward(ctx: FunctionCtx, projected: Tensor, w_hh: Tensor, reverse: bool) -> Tensor:
        steps, n, four_h = projected.shape
        hidden = four_h // 4
        hs, cs, tanh_cs = (projected.new_empty(steps, n, hidden) for _ in range(3))
        acts = projected.new_empty(steps, n, four_h)
        h = c = projected.new_zeros(n, hidden)
        w_t = w_hh.t()
        for t in range(steps - 1, -1, -1) if reverse else range(steps):
            torch.addmm(projected[t], h, w_t, out=acts[t])
            _step_forward(acts[t], c, cs[t], tanh_cs[t], hs[t])
            h, c = hs[t], cs[t]
        ctx.save_for_backward(w_hh, hs, cs, acts, tanh_cs)
        ctx.reverse = reverse  # type: ignore[attr-defined]
        return hs

    @staticmethod
    def backward(ctx: Any, grad_hs: Tensor) -> tuple[Tensor | None, ...]:
        w_hh, hs, cs, acts, tanh_cs = ctx.saved_tensors
        steps, n, hidden = hs.shape
        reverse: bool = ctx.reverse
        d_gates = torch.empty_like(acts)
        zeros = hs.new_zeros(n, hidden)
        grad_h = grad_c = zeros
        for t in range(steps) if reverse else range(steps - 1, -1, -1):
            prev = t + 1 if reverse else t - 1
            c_prev = cs[prev] if 0 <= prev < steps else zeros
            grad_c = _step_backward(
                grad_hs[t] + grad_h, grad_c, c_prev, acts[t], tanh_cs[t], d_gates[t]
            )
            grad_h = d_gates[t] @ w_hh
        # Weight gradient over all steps in one matmul; the first step's h_prev is zero.
        later, earlier = (d_gates[:-1], hs[1:]) if reverse else (d_gates[1:], hs[:-1])
        grad_w_hh = later.reshape(-1, 4 * hidden).t() @ earlier.reshape(-1, hidden)
        return d_gates, grad_w_hh, None


def fused_lstm_step(
    x: Tensor, h: Tensor, c: Tensor, w: Tensor, b: Tensor | None
) -> tuple[Tensor, Tensor]:
    """One step with `w` already concatenated as `[w_ih | w_hh]` (shape 4H x (I+H))."""
    out: tuple[Tensor, Tensor] = _FusedLSTMCell.apply(torch.cat((x, h), dim=1), c, w, b)
    return out


def fused_lstm_cell(
    x: Tensor, h: Tensor, c: Tensor, w_ih: Tensor, w_hh: Tensor, b: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """One LSTM step: `(h', c')` from input `x` (N, I), state `h`, `c` (N, H).

    `w_ih` (4H, I) and `w_hh` (4H, H) are `nn.LSTMCell`'s weights, `b` (4H) is
    `bias_ih + bias_hh` (or None). Gate order i, f, g, o as in torch.
    """
    return fused_lstm_step(x, h, c, torch.cat((w_ih, w_hh), dim=1), b)


def fused_lstm_sequence(x: Tensor, w_ih: Tensor, w_hh: Tensor, b: Tensor, reverse: bool) -> Tensor:
    """All hidden states (N, T, H) of one LSTM direction over `x` (N, T, I), from zero state."""
    n, steps, features = x.shape
    time_major = x.transpose(0, 1).reshape(steps * n, features)
    projected = torch.addmm(b, time_major, w_ih.t()).view(steps, n, -1)
    hs: Tensor = _FusedLSTMSequence.apply(projected, w_hh, reverse)
    return hs.transpose(0, 1)


def reference_lstm_cell(
    x: Tensor, h: Tensor, c: Tensor, w_ih: Tensor, w_hh: Tensor, b: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Plain-torch LSTM step with `torch.nn.LSTMCell` semantics (the reference)."""
    gates = x @ w_ih.t() + h @ w_hh.t()
    if b is not None:
        gates = gates + b
    i, f, g, o = gates.chunk(4, dim=1)
    c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h_new = torch.sigmoid(o) * torch.tanh(c_new)
    return h_new, c_new


class FusedLSTM(nn.Module):
    """A batch-first stacked (optionally bidirectional) LSTM running the fused gate math.

    Parameters are named and shaped like `torch.nn.LSTM`'s (`weight_ih_l0`, `bias_hh_l0_reverse`,
    ...), so `load_state_dict` works in both directions. Returns the output sequence
    (N, T, H * directions) and the final hidden state of the last layer per direction
    (directions, N, H). Sequences start from zero state, as in the models here.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.directions = 2 if bidirectional else 1
        self.dropout = dropout
        self.suffixes = ["", "_reverse"][: self.directions]
        for layer in range(num_layers):
            layer_in = input_size if layer == 0 else hidden_size * self.directions
            for suffix in self.suffixes:
                shapes = {
                    "weight_ih": (4 * hidden_size, layer_in),
                    "weight_hh": (4 * hidden_size, hidden_size),
                    "bias_ih": (4 * hidden_size,),
                    "bias_hh": (4 * hidden_size,),
                }
                for kind, shape in shapes.items():
                    param = nn.Parameter(torch.empty(shape))
                    self.register_parameter(f"{kind}_l{layer}{suffix}", param)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torch.nn.LSTM's initialisation: uniform in +-1/sqrt(hidden_size)."""
        bound = self.hidden_size**-0.5
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def _param(self, kind: str, name: str) -> Tensor:
        p: Tensor = getattr(self, f"{kind}_{name}")
        return p

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        finals: list[Tensor] = []
        for layer in range(self.num_layers):
            if layer > 0 and self.dropout > 0 and self.training:
                x = nn.functional.dropout(x, self.dropout, training=True)
            outs: list[Tensor] = []
            finals = []
            for suffix in self.suffixes:
                name = f"l{layer}{suffix}"
                reverse = suffix == "_reverse"
                bias = self._param("bias_ih", name) + self._param("bias_hh", name)
                w_ih, w_hh = self._param("weight_ih", name), self._param("weight_hh", name)
                out = fused_lstm_sequence(x, w_ih, w_hh, bias, reverse)
                outs.append(out)
                finals.append(out[:, 0] if reverse else out[:, -1])
            x = outs[0] if self.directions == 1 else torch.cat(outs, dim=2)
        return x, torch.stack(finals, dim=0)
