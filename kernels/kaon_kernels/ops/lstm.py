"""A fused LSTM cell and a stacked LSTM layer built on the same gate math.

Both run as autograd Functions with a hand-written backward, so autograd keeps a few saved
tensors instead of a graph of a dozen element-wise ops per step. On the CPU they are faster than
torch's `nn.LSTMCell` and `nn.LSTM` (oneDNN) at the shapes the models here use (8 steps of 8
features, batch 64, hidden 128 or 64; see tests/bench/kernels.py). What makes them fast:

- tanh as `tanh(a) = 2 sigmoid(2a) - 1`: ATen's CPU tanh costs about four times a sigmoid, so
  one `sigmoid_` over all four gates (g's pre-activations doubled, an exact scaling) and one
  affine op replace it. The layer keeps the cell state as `-2c`, so that
  `o tanh(c) = o - 2 o sigmoid(-2c)` is a sigmoid and one `addcmul`. This differs from
  `torch.tanh` by the sigmoid's rounding (about 1e-7 absolute in float32), well inside
  `torch.testing.assert_close`'s default tolerances.
- `FusedLSTM` runs a whole sequence of one direction as one autograd node, time-major, in
  buffers allocated once: the input half of every step's matmul is one matmul for all steps,
  each step adds `h @ w_hh.T` in place, the first step (from zero state) has no recurrent matmul
  at all, and the Python loop only calls ops (six plus the matmul per step forward, four plus
  the matmul backward) on views taken up front with `unbind`. Without autograd (inference) the
  cell state lives in one buffer updated in place instead of one per step.
- The backward pass computes every gate's local derivative for all steps at once (they do not
  depend on the recurrence), turns them into the pre-activation gradients in place, and gets
  each weight gradient from one matmul over all steps, in the orientation MKL is fastest at.
- The loops dispatch below autograd's bookkeeping (they only touch buffers they allocated),
  which cuts the per-op overhead that dominates at these sizes by about a quarter.

The margin is smallest where per-op dispatch dominates: with hidden 64 a step costs about as
much in Python-level op calls (~2 us each) as in arithmetic, against oneDNN's single fused
primitive, so the layer wins by 5-15% in best-of runs there and is about even in the median
of paired runs on a heavily loaded machine. On CUDA, cuDNN's fused LSTM is several times faster
(about 5-6x forward, 2x forward+backward at these shapes): every op here is a kernel launch.

`reference_lstm_cell` is the plain-torch reference with `torch.nn.LSTMCell` semantics (gate
order i, f, g, o, also the layout of every weight here); tests compare forward and backward
against it and against torch's `nn.LSTMCell` and `nn.LSTM`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx, once_differentiable

# The loops below run dozens of small ops on buffers they allocate themselves, where autograd and
# its view/version tracking have nothing to do: dispatching below them cuts the per-op overhead
# by about a quarter. (A private guard; without it the code is merely slower.)
_untracked = getattr(torch._C, "_AutoDispatchBelowADInplaceOrView", contextlib.nullcontext)


def _gates(t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The i, f, g, o views of the last dimension (4H) of `t`."""
    i, f, g, o = t.chunk(4, dim=-1)
    return i, f, g, o


def _needs_graph(*tensors: Tensor | None) -> bool:
    """Whether autograd has to see this call (else the Function's bookkeeping is skipped)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _g_doubler(w: Tensor) -> Tensor:
    """A (4H, 1) column of ones with 2 in the rows of the g gate, for `w` (4H, ...)."""
    hidden = w.shape[0] // 4
    scale = w.new_ones(4 * hidden, 1)
    scale[2 * hidden : 3 * hidden] = 2.0
    return scale


def _slopes(acts: Tensor, c_prev: Tensor, sig_c: Tensor, c_scale: float) -> tuple[Tensor, Tensor]:
    """The local derivatives of one or all steps, which do not depend on the recurrence.

    `acts` holds the activations i, f, g, o, `c_prev` the previous cell state times `c_scale` and
    `sig_c` sigmoid(-2c), so that tanh(c) = 1 - 2 sig_c. Returns `k` (..., 4H), the
    pre-activations' gradient per unit of dc (i, f, g) or of dh (o), and `a` (..., H) = dc/dh
    through h = o tanh(c).
    """
    i, _, g, o = _gates(acts)
    one, zero = acts.new_ones(()), acts.new_zeros(())
    k = torch.addcmul(acts, acts, acts, value=-1)  # sigmoid' = s - s^2
    k_i, k_f, k_g, k_o = _gates(k)
    torch.addcmul(one, g, g, value=-1, out=k_g).mul_(i)  # tanh' = 1 - g^2
    k_i.mul_(g)
    torch.addcmul(zero, k_f, c_prev, value=1 / c_scale, out=k_f)
    torch.addcmul(k_o, k_o, sig_c, value=-2, out=k_o)  # times tanh(c)
    a = torch.addcmul(sig_c, sig_c, sig_c, value=-1)  # 1 - tanh(c)^2 = 4 (s - s^2)
    torch.addcmul(zero, a, o, value=4, out=a)
    return k, a


def _weight_grad(d_gates: Tensor, inputs: Tensor) -> Tensor:
    """`d_gates.T @ inputs`, contiguous, for (M, 4H) and (M, K). With narrow inputs (K far below
    4H, such as 8 features) MKL is several times faster at the transposed product."""
    if inputs.shape[1] * 16 <= d_gates.shape[1]:
        return torch.mm(inputs.t(), d_gates).t().contiguous()
    return d_gates.t() @ inputs


def _cell_forward(
    x: Tensor, h: Tensor, c: Tensor, w_ih: Tensor, w_hh: Tensor, b: Tensor | None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One step: `(h', c')`, the activations i, f, g, o and sigmoid(-2c')."""
    with _untracked():
        gates = x @ w_ih.t() if b is None else torch.addmm(b, x, w_ih.t())
        gates.addmm_(h, w_hh.t())
        i, f, g, o = _gates(gates)
        g.mul_(gates.new_full((), 2.0))
        gates.sigmoid_()
        torch.add(gates.new_full((), -1.0), g, alpha=2, out=g)  # tanh(a) = 2 sigmoid(2a) - 1
        c_new = torch.mul(f, c).addcmul_(i, g)
        sig_c = torch.mul(c_new, gates.new_full((), -2.0)).sigmoid_()
        h_new = torch.addcmul(o, o, sig_c, value=-2)  # o tanh(c') = o (1 - 2 sigmoid(-2c'))
    return h_new, c_new, gates, sig_c


class _FusedLSTMCell(torch.autograd.Function):
    """One LSTM step; two matmuls into one buffer instead of concatenating the weights."""

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        x: Tensor,
        h: Tensor,
        c: Tensor,
        w_ih: Tensor,
        w_hh: Tensor,
        b: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        h_new, c_new, gates, sig_c = _cell_forward(x, h, c, w_ih, w_hh, b)
        ctx.save_for_backward(x, h, c, w_ih, w_hh, gates, sig_c)
        ctx.has_bias = b is not None  # type: ignore[attr-defined]
        return h_new, c_new

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_h: Tensor, grad_c: Tensor) -> tuple[Tensor | None, ...]:
        x, h, c, w_ih, w_hh, gates, sig_c = ctx.saved_tensors
        need = ctx.needs_input_grad
        with _untracked():
            d_gates, a = _slopes(gates, c, sig_c, 1.0)
            dc = torch.addcmul(grad_c, grad_h, a)
            _gates(d_gates)[3].mul_(grad_h)
            d_gates.view(-1, 4, h.shape[1])[:, :3].mul_(dc.unsqueeze(1))
            return (
                d_gates @ w_ih if need[0] else None,
                d_gates @ w_hh if need[1] else None,
                dc * _gates(gates)[1] if need[2] else None,
                _weight_grad(d_gates, x) if need[3] else None,
                _weight_grad(d_gates, h) if need[4] else None,
                d_gates.sum(0) if ctx.has_bias and need[5] else None,
            )


def _order(steps: int, reverse: bool) -> tuple[range, int]:
    """The steps in the order the forward pass takes them, and the offset of each one's
    predecessor (whose state it reads)."""
    return (range(steps - 1, -1, -1), 1) if reverse else (range(steps), -1)


def _cell_buffers(
    acts: Tensor, reverse: bool, keep: bool
) -> tuple[Tensor, Tensor, Sequence[Tensor], Sequence[Tensor], Sequence[Tensor]]:
    """Where the steps read and write their cell states and sigmoid(-2c): the buffers and, per
    step, the cell state it reads, the one it writes and its sigmoid's output."""
    steps, n, four_h = acts.shape
    if not keep:  # one buffer each, overwritten in place by every step
        cell, sig_c = acts.new_empty(n, four_h // 4), acts.new_empty(n, four_h // 4)
        return cell, sig_c, (cell,) * steps, (cell,) * steps, (sig_c,) * steps
    cells, sig_cs = acts.new_empty(steps + 1, n, four_h // 4), acts.new_empty(steps, n, four_h // 4)
    # Step t reads the state of step t + prev and writes its own to c_out[t].
    c_in, c_out = (cells[1:], cells[:-1]) if reverse else (cells[:-1], cells[1:])
    return cells, sig_cs, c_in.unbind(0), c_out.unbind(0), sig_cs.unbind(0)


def _sequence_forward(
    acts: Tensor, w_hh: Tensor, reverse: bool, keep: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """Run the recurrence in place over `acts` (T, N, 4H), the input projections, with the g
    gate's pre-activations and rows of `w_hh` doubled.

    Leaves the activations i, f, g, o in `acts`; returns the hidden states (T, N, H), the cell
    states times -2 and sigmoid(-2c), so that `h = o tanh(c) = o - 2 o sigmoid(-2c)` is one op.
    With `keep` (for the backward pass) those are every step's, (T + 1, N, H) with the zero
    initial state first (last when reversed) and (T, N, H); without, only the last step's,
    from buffers that every step overwrites in place: less memory traffic for inference.
    """
    steps, n, four_h = acts.shape
    hs = acts.new_empty(steps, n, four_h // 4)
    cells, sig_cs, c_in_s, c_out_s, q_s = _cell_buffers(acts, reverse, keep)
    minus_one, w_t = acts.new_full((), -1.0), w_hh.t()
    gate, i_s, f_s, g_s, o_s = (v.unbind(0) for v in (acts, *_gates(acts)))
    h_s = hs.unbind(0)
    order, prev = _order(steps, reverse)
    for t in order:
        first = t == order[0]  # from zero state: no recurrent matmul, and c = i g
        if not first:
            gate[t].addmm_(h_s[t + prev], w_t)
        gate[t].sigmoid_()
        torch.add(minus_one, g_s[t], alpha=2, out=g_s[t])  # tanh(a) = 2 sigmoid(2a) - 1
        if first:
            c = torch.addcmul(c_in_s[t].zero_(), i_s[t], g_s[t], value=-2, out=c_out_s[t])
        else:
            c = torch.mul(f_s[t], c_in_s[t], out=c_out_s[t]).addcmul_(i_s[t], g_s[t], value=-2)
        torch.sigmoid(c, out=q_s[t])
        torch.addcmul(o_s[t], o_s[t], q_s[t], value=-2, out=h_s[t])
    return hs, cells, sig_cs


def _sequence_backward(
    grad_hs: Tensor, k: Tensor, a: Tensor, f: Tensor, w_hh: Tensor, reverse: bool
) -> Tensor:
    """Turn `k` (T, N, 4H, from `_slopes`) in place into the gradient of every step's
    pre-activations, walking back through time; returns it."""
    steps, n, hidden = a.shape
    dh_buf, dc, grad_c = (a.new_empty(n, hidden) for _ in range(3))
    dc3 = dc.unsqueeze(1)
    gh_s, a_s, f_s, d_s = grad_hs.unbind(0), a.unbind(0), f.unbind(0), k.unbind(0)
    d_o = _gates(k)[3].unbind(0)
    d3 = k.view(steps, n, 4, hidden)[:, :, :3].unbind(0)  # i, f, g: scaled by dc
    forward_order, prev = _order(steps, reverse)
    order = forward_order[::-1]
    for t in order:
        if t == order[0]:
            dh = gh_s[t]
            torch.mul(dh, a_s[t], out=dc)
        else:
            dh = torch.addmm(gh_s[t], d_s[t - prev], w_hh, out=dh_buf)
            torch.addcmul(grad_c, dh, a_s[t], out=dc)
        d_o[t].mul_(dh)
        d3[t].mul_(dc3)
        if t != order[-1]:
            torch.mul(dc, f_s[t], out=grad_c)
    return k


def _lstm_sequence(
    x: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor, reverse: bool, keep: bool
) -> tuple[Tensor, ...]:
    """The forward pass: the hidden states and, with `keep`, what the backward pass needs."""
    steps, n, features = x.shape
    x2d = x.reshape(steps * n, features)  # tracked: it may be a view of `x`, and is saved
    with _untracked():
        doubler = _g_doubler(w_hh)
        bias = torch.add(b_ih, b_hh).mul_(doubler.view(-1))
        acts = torch.addmm(bias, x2d, torch.mul(w_ih, doubler).t()).view(steps, n, -1)
        hs, cells, sig_cs = _sequence_forward(acts, w_hh * doubler, reverse, keep)
    return hs, x2d, acts, cells, sig_cs


class _FusedLSTMSequence(torch.autograd.Function):
    """A whole sequence of one direction, from zero state, as one autograd node.

    Takes `x` (T, N, I) time-major and returns the hidden states (T, N, H): each step's slices
    are contiguous and written in place.
    """

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        x: Tensor,
        w_ih: Tensor,
        w_hh: Tensor,
        b_ih: Tensor,
        b_hh: Tensor,
        reverse: bool,
    ) -> Tensor:
        hs, x2d, acts, cells, sig_cs = _lstm_sequence(x, w_ih, w_hh, b_ih, b_hh, reverse, True)
        ctx.save_for_backward(x2d, w_ih, w_hh, acts, hs, cells, sig_cs)
        ctx.reverse = reverse  # type: ignore[attr-defined]
        return hs

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_hs: Tensor) -> tuple[Tensor | None, ...]:
        x2d, w_ih, w_hh, acts, hs, cells, sig_cs = ctx.saved_tensors
        reverse: bool = ctx.reverse
        need = ctx.needs_input_grad
        steps, n, hidden = hs.shape
        with _untracked():
            c_prev = cells[1:] if reverse else cells[:steps]
            k, a = _slopes(acts, c_prev, sig_cs, -2.0)
            d_gates = _sequence_backward(grad_hs, k, a, _gates(acts)[1], w_hh, reverse)
            d2d = d_gates.view(steps * n, 4 * hidden)
            # The step from zero state has no h_prev; the others' h_prev are contiguous in `hs`.
            later, earlier = (d_gates[:-1], hs[1:]) if reverse else (d_gates[1:], hs[:-1])
            grad_b = d2d.sum(0) if need[3] or need[4] else None
            return (
                (d2d @ w_ih).view(steps, n, -1) if need[0] else None,
                _weight_grad(d2d, x2d) if need[1] else None,
                _weight_grad(later.reshape(-1, 4 * hidden), earlier.reshape(-1, hidden))
                if need[2]
                else None,
                grad_b,
                grad_b,
                None,
            )


def fused_lstm_step(
    x: Tensor, h: Tensor, c: Tensor, w: Tensor, b: Tensor | None
) -> tuple[Tensor, Tensor]:
    """One step with `w` already concatenated as `[w_ih | w_hh]` (shape 4H x (I+H))."""
    features = x.shape[1]
    return fused_lstm_cell(x, h, c, w[:, :features], w[:, features:], b)


def fused_lstm_cell(
    x: Tensor, h: Tensor, c: Tensor, w_ih: Tensor, w_hh: Tensor, b: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """One LSTM step: `(h', c')` from input `x` (N, I), state `h`, `c` (N, H).

    `w_ih` (4H, I) and `w_hh` (4H, H) are `nn.LSTMCell`'s weights, `b` (4H) is
    `bias_ih + bias_hh` (or None). Gate order i, f, g, o as in torch.
    """
    if not _needs_graph(x, h, c, w_ih, w_hh, b):
        return _cell_forward(x, h, c, w_ih, w_hh, b)[:2]
    out: tuple[Tensor, Tensor] = _FusedLSTMCell.apply(x, h, c, w_ih, w_hh, b)
    return out


def fused_lstm_sequence(
    x: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor, reverse: bool
) -> Tensor:
    """All hidden states (T, N, H) of one LSTM direction over `x` (T, N, I), from zero state."""
    if not _needs_graph(x, w_ih, w_hh, b_ih, b_hh):
        return _lstm_sequence(x, w_ih, w_hh, b_ih, b_hh, reverse, False)[0]
    hs: Tensor = _FusedLSTMSequence.apply(x, w_ih, w_hh, b_ih, b_hh, reverse)
    return hs


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
        seq = x.transpose(0, 1)  # time-major inside: every step's slice is contiguous
        finals: list[Tensor] = []
        for layer in range(self.num_layers):
            if layer > 0 and self.dropout > 0 and self.training:
                seq = nn.functional.dropout(seq, self.dropout, training=True)
            outs: list[Tensor] = []
            finals = []
            for suffix in self.suffixes:
                name = f"l{layer}{suffix}"
                reverse = suffix == "_reverse"
                w_ih, w_hh = self._param("weight_ih", name), self._param("weight_hh", name)
                b_ih, b_hh = self._param("bias_ih", name), self._param("bias_hh", name)
                out = fused_lstm_sequence(seq, w_ih, w_hh, b_ih, b_hh, reverse)
                outs.append(out)
                finals.append(out[:1] if reverse else out[-1:])
            seq = outs[0] if self.directions == 1 else torch.cat(outs, dim=2)
        h_n = finals[0] if self.directions == 1 else torch.cat(finals, dim=0)
        return seq.transpose(0, 1), h_n
