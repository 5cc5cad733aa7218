"""Runtime benchmark: the training loop and each custom kernel against plain PyTorch.

- Training loop: samples/s of `kaon_kernels`' loop (Trainer.fit: sampler, per-step seeding,
  progress, checkpoint checks) against a hand-written plain PyTorch loop training the same model
  on the same tensors, batch size and thread count. Ratio > 1: the runtime is faster.
- Kernels: samples/s of each custom kernel against torch's own module, forward and
  forward+backward (forward only for the inference-only folded conv). Ratio > 1: ours is faster.

Both sides run alternately several times and each keeps its best figure, the run least
disturbed by other load on a shared machine. Run: `.venv/bin/python tests/bench/kernels.py
[--threads N] [--quick] [--device cuda] [--only GROUP ...]`; every figure is merged into
.bench/results.json with its same-run baseline.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from results import record, table
from torch import Tensor, nn
from torch.utils import benchmark

from kaon_kernels.config import ModelConfig
from kaon_kernels.data import Split, load_data
from kaon_kernels.distributed import World
from kaon_kernels.jobspec import Job, parse_spec
from kaon_kernels.loop import StopFlag, Trainer, make_optimizer
from kaon_kernels.models import build_model, fuse_for_inference
from kaon_kernels.ops import FusedConvBNReLU, FusedLSTM, fused_lstm_cell

Entries = dict[str, dict[str, Any]]
ROUNDS = 3  # each side measured this often, alternating; the best run is the least disturbed


def job_for(family: str, epochs: int, out: Path) -> Job:
    spec = parse_spec(
        {
            "model": {"family": family},
            "training": {"epochs": epochs, "batchSize": 64},
            "checkpoint": {"enabled": False},
        }
    )
    return Job(spec, "bench", out, out / "checkpoints", None)


def figure(name: str, device: torch.device) -> str:
    """The figure's name in results.json: CPU figures unmarked, others tagged by device."""
    return f"kernels.{name}" if device.type == "cpu" else f"kernels.{device.type}.{name}"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def runtime_loop(job: Job, data: Split, device: torch.device) -> tuple[int, float]:
    """(samples, seconds) of one Trainer.fit with the runtime's defaults."""
    trainer = Trainer(job, World(), device, data)
    with contextlib.redirect_stdout(io.StringIO()):  # progress lines
        start = time.perf_counter()
        trainer.fit(StopFlag())
        synchronize(device)
        seconds = time.perf_counter() - start
    return job.spec.training.epochs * data.train_x.shape[0], seconds


def plain_loop(job: Job, data: Split, device: torch.device) -> tuple[int, float]:
    """(samples, seconds) of the textbook loop: shuffle, slice, forward, backward, step."""
    cfg = job.spec.training
    torch.manual_seed(cfg.seed)
    model = build_model(job.spec.model, data.in_shape, data.num_classes).to(device)
    optimizer = make_optimizer(cfg, model.parameters())
    x, y = data.train_x.to(device), data.train_y.to(device)
    model.train()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(cfg.epochs):
        order = torch.randperm(x.shape[0], device=device)
        for i in range(0, x.shape[0], cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            torch.autograd.backward(loss)
            optimizer.step()
    synchronize(device)
    return cfg.epochs * x.shape[0], time.perf_counter() - start


def bench_training(entries: Entries, epochs: int, repeats: int, device: torch.device) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for family in ("cnn", "rnn"):
            job = job_for(family, epochs, Path(tmp))
            data = load_data(job.spec.data, job.spec.model.family, seed=0)
            runtime_loop(job_for(family, 1, Path(tmp)), data, device)  # warm-up
            plain_loop(job_for(family, 1, Path(tmp)), data, device)
            ours: list[float] = []
            base: list[float] = []
            for i in range(repeats):  # interleaved, alternating, so drifting load hits both alike
                for loop, into in ((runtime_loop, ours), (plain_loop, base))[:: 1 - 2 * (i % 2)]:
                    n, s = loop(job, data, device)
                    into.append(n / s)
            name = figure(f"train.{family}.samples_per_s", device)
            value, baseline = max(ours), max(base)
            entries[name] = record(name, value, "samples/s", baseline)


def fwd_bwd(fn: Callable[[], tuple[Tensor, ...] | Tensor]) -> Callable[[], None]:
    def run() -> None:
        out = fn()
        outs = out if isinstance(out, tuple) else (out,)
        torch.autograd.backward([o.sum() for o in outs])

    return run


@dataclass
class KernelBench:
    """Times a kernel against torch's module (same inputs, threads) and records the pair."""

    entries: Entries
    threads: int
    min_time: float
    device: torch.device

    def samples_per_s(self, fn: Callable[[], object], batch: int) -> float:
        timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=self.threads)
        return batch / min(timer.blocked_autorange(min_run_time=self.min_time).times)

    def compare(
        self, name: str, ours: Callable[[], object], theirs: Callable[[], object], batch: int
    ) -> None:
        value = baseline = 0.0
        for _ in range(ROUNDS):  # alternate, keep the best of each
            value = max(value, self.samples_per_s(ours, batch))
            baseline = max(baseline, self.samples_per_s(theirs, batch))
        name = figure(name, self.device)
        self.entries[name] = record(name, value, "samples/s", baseline)


def bench_lstm_cell(kb: KernelBench, n: int, i: int, h: int) -> None:
    torch.manual_seed(0)
    d = kb.device
    cell = nn.LSTMCell(i, h).to(d)
    x, hx, cx = (torch.randn(n, k, device=d) for k in (i, h, h))
    b = (cell.bias_ih + cell.bias_hh).detach().requires_grad_()

    def ours() -> tuple[Tensor, Tensor]:
        return fused_lstm_cell(x, hx, cx, cell.weight_ih, cell.weight_hh, b)

    def theirs() -> tuple[Tensor, Tensor]:
        h_new, c_new = cell(x, (hx, cx))
        return h_new, c_new

    tag = f"lstm_cell.n{n}_i{i}_h{h}"
    with torch.no_grad():
        kb.compare(f"{tag}.fwd", ours, theirs, n)
    kb.compare(f"{tag}.fwd_bwd", fwd_bwd(ours), fwd_bwd(theirs), n)


def bench_lstm_layer(kb: KernelBench, n: int, h: int) -> None:
    """The layer as the digits models run it: 8 steps of 8 features (hidden 128 by default,
    64 in examples/trainingjobs/lstm-cpu.yaml)."""
    torch.manual_seed(0)
    ref = nn.LSTM(8, h, batch_first=True).to(kb.device)
    fused = FusedLSTM(8, h).to(kb.device)
    fused.load_state_dict(ref.state_dict())
    seq = torch.randn(n, 8, 8, device=kb.device)

    def ours() -> Tensor:
        out: Tensor = fused(seq)[0]
        return out

    def theirs() -> Tensor:
        out: Tensor = ref(seq)[0]
        return out

    tag = f"lstm_layer.n{n}_t8_h{h}"
    with torch.no_grad():
        kb.compare(f"{tag}.fwd", ours, theirs, n)
    kb.compare(f"{tag}.fwd_bwd", fwd_bwd(ours), fwd_bwd(theirs), n)


def bench_conv_block(kb: KernelBench, cin: int, cout: int, size: int) -> None:
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout)
    with torch.no_grad():
        assert bn.running_var is not None
        bn.running_var.uniform_(0.5, 2.0)
    unfolded = nn.Sequential(conv, bn, nn.ReLU(inplace=True)).eval().to(kb.device)
    folded = FusedConvBNReLU(conv, bn)
    x = torch.randn(256, cin, size, size, device=kb.device)
    with torch.no_grad():
        kb.compare(
            f"conv_bn_relu.c{cin}_{cout}_s{size}.fwd",
            lambda: folded(x),
            lambda: unfolded(x),
            256,
        )


def bench_cnn_inference(kb: KernelBench) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(family="cnn"), (1, 8, 8), 10).eval().to(kb.device)
    fused = fuse_for_inference(copy.deepcopy(model))
    images = torch.randn(256, 1, 8, 8, device=kb.device)
    with torch.no_grad():
        kb.compare("cnn_inference.folded.fwd", lambda: fused(images), lambda: model(images), 256)


def bench_kernels(kb: KernelBench, group: str) -> None:
    """One group of kernel figures, at the shapes the models here use."""
    if group == "lstm_cell":
        for n, i, h in ((64, 8, 128), (256, 256, 256)):
            bench_lstm_cell(kb, n, i, h)
    elif group == "lstm_layer":
        for n, h in ((64, 128), (64, 64)):
            bench_lstm_layer(kb, n, h)
    elif group == "conv_bn_relu":
        for cin, cout, size in ((1, 32, 8), (32, 64, 4)):
            bench_conv_block(kb, cin, cout, size)
    else:
        bench_cnn_inference(kb)


GROUPS = ("lstm_cell", "lstm_layer", "conv_bn_relu", "cnn_inference", "train")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both sides")
    parser.add_argument("--quick", action="store_true", help="shorter runs, noisier figures")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (figures named .cuda)")
    parser.add_argument(
        "--only", action="append", choices=GROUPS, help="run only this group (repeatable)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    entries: Entries = {}
    device = torch.device(args.device)
    kb = KernelBench(entries, args.threads, 0.2 if args.quick else 0.5, device)
    for group in args.only or GROUPS:
        if group == "train":
            bench_training(entries, 1 if args.quick else 3, 2 if args.quick else 3, device)
        else:
            bench_kernels(kb, group)
    print(f"{device}, {args.threads} thread(s); ratio = kaon / plain torch, higher: kaon faster")
    print(table(entries))


if __name__ == "__main__":
    main()
