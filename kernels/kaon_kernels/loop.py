"""The training loop behind `kaon_kernels.train`: DDP, checkpoint/resume, progress, evaluation.

Reproducibility: every rank starts from the same seeded weights, the data order of each epoch is
DistributedSampler's (seeded by `training.seed` and the epoch), and the random stream used by
dropout is reseeded before every step from (seed, rank, step). A run resumed from any checkpoint
therefore continues exactly as the uninterrupted run would have, on every rank, without having to
gather each rank's generator state into the checkpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import signal
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler, TensorDataset

from kaon_kernels import distributed, reference
from kaon_kernels.artifact import save_artifact
from kaon_kernels.config import TrainingConfig
from kaon_kernels.data import Split, load_data
from kaon_kernels.distributed import World
from kaon_kernels.jobspec import Job
from kaon_kernels.metrics import classification_metrics, confusion_matrix
from kaon_kernels.models import build_model
from kaon_kernels.podreport import PodAnnotator
from kaon_kernels.progress import ProgressReporter, ProgressSink
from kaon_kernels.store import store_for

CHECKPOINT_FORMAT = "kaon-checkpoint/v1"
EVAL_BATCH = 1024
EXIT_TERMINATED = 143


class BadInputError(Exception):
    """Bad data or environment: the run cannot start (exit code 2)."""


class StopFlag:
    """Set by SIGTERM; the loop checks it between steps and stops at a step boundary."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True


def make_optimizer(cfg: TrainingConfig, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.learning_rate, momentum=0.9)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.learning_rate)
    return torch.optim.Adam(params, lr=cfg.learning_rate)


def step_seed(seed: int, rank: int, step: int) -> int:
    return (seed * 1_000_003 + rank * 7_919 + step) % (2**63)


def parameter_digest(model: nn.Module) -> str:
    """sha256 over every parameter and buffer: equal on all ranks after a correct DDP run."""
    h = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@dataclass
class Trainer:
    job: Job
    world: World
    device: torch.device
    data: Split
    env: Mapping[str, str] = field(default_factory=dict)  # the S3 store's credentials

    def __post_init__(self) -> None:
        cfg = self.job.spec.training
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        try:
            self.model = build_model(
                self.job.spec.model, self.data.in_shape, self.data.num_classes
            ).to(self.device)
        except ValueError as err:
            raise BadInputError(f"invalid spec: {err}") from None
        self.optimizer = make_optimizer(cfg, self.model.parameters())
        self.sampler: DistributedSampler[Any] = DistributedSampler(
            TensorDataset(self.data.train_y),
            num_replicas=self.world.size,
            rank=self.world.rank,
            shuffle=True,
            seed=cfg.seed,
        )
        self.steps_per_epoch = math.ceil(len(self.sampler) / cfg.batch_size)
        self.total_steps = cfg.epochs * self.steps_per_epoch
        self.step = 0
        self.saved_step = -1
        self.store = store_for(
            self.job.checkpoint_dir, self.job.checkpoint_uri, self.job.attempt, self.env
        )

    # -- checkpoints -------------------------------------------------------------------------

    def checkpoint_state(self) -> dict[str, Any]:
        rng: dict[str, Any] = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "epoch": self.step // self.steps_per_epoch,
            "steps_per_epoch": self.steps_per_epoch,
            "world_size": self.world.size,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": rng,
        }

    def save_checkpoint(self) -> None:
        """Rank 0 writes; DDP keeps weights and optimizer state identical on every rank."""
        if not (self.world.is_main and self.job.spec.checkpoint.enabled):
            return
        if self.step != self.saved_step:
            self.store.save(self.step, self.checkpoint_state())
            self.saved_step = self.step

    def resume(self) -> None:
        """Load the newest checkpoint (read by rank 0, broadcast to the others) if any."""
        if not self.job.spec.checkpoint.enabled:
            return
        state = self.store.latest() if self.world.is_main else None
        if self.world.distributed:
            box = [state]
            dist.broadcast_object_list(box, src=0)
            state = box[0]
        if state is None:
            return
        if state.get("format") != CHECKPOINT_FORMAT:
            raise BadInputError(f"checkpoint in {self.job.checkpoint_dir} has an unknown format")
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as err:
            why = str(err).splitlines()[0]
            msg = f"checkpoint does not fit the model (spec changed?): {why}"
            raise BadInputError(msg) from None
        torch.set_rng_state(state["rng"]["torch"])
        if self.device.type == "cuda" and "cuda" in state["rng"]:
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
        self.step = self.saved_step = int(state["step"])
        log(self.world, f"resuming at step {self.step} of {self.total_steps}")

    # -- training ----------------------------------------------------------------------------

    def fit(self, stop: StopFlag, sink: ProgressSink | None = None) -> bool:
        """Train up to the last step; False when stopped early by `stop`."""
        cfg = self.job.spec.training
        net: nn.Module = self.model
        if self.world.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            net = DistributedDataParallel(self.model, device_ids=ids)
        x = self.data.train_x.to(self.device)
        y = self.data.train_y.to(self.device)
        reporter = (
            ProgressReporter(
                self.job.output_dir / "progress.json", self.total_steps, self.step, sink=sink
            )
            if self.world.is_main
            else None
        )
        if reporter is not None and self.step > 0:  # resumed: say from where at once
            reporter.report(min(self.step // self.steps_per_epoch + 1, cfg.epochs), self.step, None)
        generator = (  # CUDA's generators exist once CUDA is initialised (the model is on it)
            torch.cuda.default_generators[self.device.index or 0]
            if self.device.type == "cuda"
            else torch.default_generator
        )
        loss_sum = torch.zeros((), device=self.device)
        loss_count = 0
        interval = self.job.spec.checkpoint.interval_steps
        net.train()
        while self.step < self.total_steps:
            epoch, offset = divmod(self.step, self.steps_per_epoch)
            self.sampler.set_epoch(epoch)
            order = torch.tensor(list(self.sampler), device=self.device)
            for batch in range(offset, self.steps_per_epoch):
                if stop.requested:
                    return False
                idx = order[batch * cfg.batch_size : (batch + 1) * cfg.batch_size]
                generator.manual_seed(step_seed(cfg.seed, self.world.rank, self.step))
                self.optimizer.zero_grad(set_to_none=True)
                loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
                torch.autograd.backward(loss)  # typed, unlike Tensor.backward
                self.optimizer.step()
                self.step += 1
                if reporter is not None:
                    loss_sum += loss.detach()
                    loss_count += 1
                    if reporter.due(self.step):
                        reporter.report(epoch + 1, self.step, float(loss_sum) / loss_count)
                        loss_sum.zero_()
                        loss_count = 0
                if self.step % interval == 0:
                    self.save_checkpoint()
        return True

    @torch.no_grad()
    def sync_buffers(self) -> None:
        """Take rank 0's buffers (batch-norm statistics) everywhere.

        DDP broadcasts buffers at the start of each forward, so after the last step every rank
        still holds the statistics of its own last batch; rank 0's are the ones checkpointed.
        """
        if self.world.distributed:
            for buffer in self.model.buffers():
                dist.broadcast(buffer, src=0)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Metrics on the validation split, each rank scoring a shard, summed over the gang."""
        self.model.eval()
        x = self.data.val_x[self.world.rank :: self.world.size].to(self.device)
        y = self.data.val_y[self.world.rank :: self.world.size].to(self.device)
        n = self.data.num_classes
        confusion = torch.zeros(n, n, dtype=torch.long, device=self.device)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        for start in range(0, x.shape[0], EVAL_BATCH):
            logits = self.model(x[start : start + EVAL_BATCH])
            target = y[start : start + EVAL_BATCH]
            loss_sum += nn.functional.cross_entropy(logits, target, reduction="sum").double()
            confusion += confusion_matrix(logits.argmax(1), target, n)
        if self.world.distributed:
            dist.all_reduce(confusion)
            dist.all_reduce(loss_sum)
        metrics = classification_metrics(confusion.cpu())
        metrics["loss"] = float(loss_sum) / max(1, int(confusion.sum()))
        return {k: round(v, 6) for k, v in metrics.items()}

    @torch.no_grad()
    def reference(self) -> reference.Reference:
        """Training inputs as served (raw values) and the predictions on validation samples,
        the reference the servers measure drift against."""
        self.model.eval()
        x = self.data.val_x.to(self.device)
        predicted = torch.cat(
            [
                self.model(x[start : start + EVAL_BATCH]).argmax(1).cpu()
                for start in range(0, x.shape[0], EVAL_BATCH)
            ]
        )
        raw = self.data.train_x * self.data.std + self.data.mean
        return reference.build(raw, predicted, self.data.num_classes)

    def finish(self, metrics: dict[str, float]) -> None:
        """Save the artifact and write the final report (rank 0)."""
        log(self.world, f"final parameters sha256 {parameter_digest(self.model)}", all_ranks=True)
        if not self.world.is_main:
            return
        out = self.job.output_dir
        save_artifact(
            out,
            self.model,
            self.job.spec.model,
            self.data.in_shape,
            self.data.num_classes,
            self.data.mean,
            self.data.std,
            self.job.name,
        )
        reference.save(out, self.reference())
        artifact = self.store.publish(out)
        report = {"metrics": metrics, "artifact": artifact, "steps": self.step}
        write_report(self.job, report)


def write_report(job: Job, report: dict[str, Any]) -> None:
    """metrics.json in the output directory, and the termination message when possible."""
    text = json.dumps(report)
    (job.output_dir / "metrics.json").write_text(text + "\n")
    if job.termination_log is not None:
        with contextlib.suppress(OSError):
            job.termination_log.write_text(text)


def log(world: World, message: str, all_ranks: bool = False) -> None:
    if all_ranks or world.is_main:
        print(f"kaon: rank {world.rank}: {message}", file=sys.stderr, flush=True)


def train(job: Job, env: Mapping[str, str]) -> int:
    """Run the job in this process; the exit code."""
    stop = StopFlag()
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        return _train(job, env, stop)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _train(job: Job, env: Mapping[str, str], stop: StopFlag) -> int:
    try:
        world = distributed.world_from_env(env)
        device = distributed.pick_device(world, env.get("KAON_DEVICE", ""))
    except ValueError as err:
        raise BadInputError(f"bad environment: {err}") from None
    distributed.make_deterministic()
    spec = job.spec
    if world.size != spec.workers:
        log(world, f"WORLD_SIZE={world.size} differs from spec.workers={spec.workers}")
    try:
        data = load_data(spec.data, spec.model.family, spec.training.seed)
    except ValueError as err:
        raise BadInputError(f"bad data: {err}") from None
    job.output_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(job, world, device, data, env)
    distributed.init(world, device)
    try:
        trainer.resume()
        log(world, f"{world.size} worker(s) on {device}, {trainer.total_steps} steps")
        annotator = PodAnnotator.from_env(env) if world.is_main else None
        try:
            completed = trainer.fit(stop, annotator.offer if annotator else None)
        finally:
            if annotator is not None:
                annotator.close()
        if not completed:
            trainer.save_checkpoint()
            log(world, f"SIGTERM: stopped at step {trainer.step}", all_ranks=True)
            return EXIT_TERMINATED
        trainer.sync_buffers()
        trainer.save_checkpoint()
        trainer.finish(trainer.evaluate())
        return 0
    finally:
        distributed.shutdown()
