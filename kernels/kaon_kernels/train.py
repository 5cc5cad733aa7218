"""The training entry point: `python -m kaon_kernels.train`.

In a worker pod the job spec comes from `KAON_SPEC` (JSON), the gang from torchrun-style
`WORLD_SIZE`/`RANK`/`LOCAL_RANK`/`MASTER_ADDR`/`MASTER_PORT`, and the directories from
`KAON_CHECKPOINT_DIR` and `KAON_OUTPUT_DIR`, or `KAON_CHECKPOINT_URI` (s3://bucket/prefix, with
the standard AWS_* credentials) and `KAON_ATTEMPT`; `KAON_DEVICE=cpu` keeps a worker off its GPU
and `KAON_TERMINATION_LOG` moves the termination message. Outside a cluster:

    python -m kaon_kernels.train --spec job.yaml --output DIR

reads a TrainingJob manifest (or a bare spec, YAML or JSON) and trains in one process, with
checkpoints in DIR/checkpoints and the artifact, progress and metrics in DIR.

Exit codes: 0 done; 2 bad spec, data or environment (one line on stderr naming the field);
3 fenced off (a newer attempt of the job owns the checkpoint store: nothing was written);
143 stopped by SIGTERM after writing a checkpoint (the next start resumes from it).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from kaon_kernels.jobspec import (
    Job,
    SpecError,
    manifest_name,
    parse_spec,
    read_spec_file,
    read_spec_text,
)

EXIT_BAD_INPUT = 2
EXIT_FENCED = 3
EXIT_TERMINATED = 143
DEFAULT_TERMINATION_LOG = "/dev/termination-log"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m kaon_kernels.train", description="Train a kaon TrainingJob's model."
    )
    parser.add_argument("--spec", help="TrainingJob manifest or bare spec (YAML or JSON)")
    parser.add_argument("--output", help="output directory (artifact, metrics, checkpoints)")
    return parser.parse_args(argv)


def _termination_log(env: Mapping[str, str]) -> Path | None:
    """$KAON_TERMINATION_LOG, else the kubelet's /dev/termination-log if it is mounted."""
    if env.get("KAON_TERMINATION_LOG"):
        return Path(env["KAON_TERMINATION_LOG"])
    default = Path(DEFAULT_TERMINATION_LOG)
    return default if default.is_file() else None


def resolve_job(args: argparse.Namespace, env: Mapping[str, str]) -> Job:
    """The job from `--spec` (command line) or `KAON_SPEC` (pod); SpecError naming the field."""
    if args.spec:
        raw = read_spec_file(args.spec)
        output = Path(args.output or "kaon-output")
        checkpoints = output / "checkpoints"
    elif env.get("KAON_SPEC"):
        raw = read_spec_text(env["KAON_SPEC"], "KAON_SPEC")
        output = Path(args.output or env.get("KAON_OUTPUT_DIR") or "kaon-output")
        checkpoints = Path(env.get("KAON_CHECKPOINT_DIR") or output / "checkpoints")
    else:
        raise SpecError("spec: pass --spec FILE or set KAON_SPEC")
    spec = parse_spec(raw)
    name = env.get("KAON_JOB_NAME") or manifest_name(raw) or "model"
    uri = env.get("KAON_CHECKPOINT_URI") or None
    if uri and not uri.startswith("s3://"):
        raise SpecError(f"KAON_CHECKPOINT_URI: {uri!r} is not an s3://bucket/prefix URI")
    try:
        attempt = int(env.get("KAON_ATTEMPT") or 0)
    except ValueError:
        raise SpecError(f"KAON_ATTEMPT: {env['KAON_ATTEMPT']!r} is not a number") from None
    return Job(spec, name, output, checkpoints, _termination_log(env), uri, attempt)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        job = resolve_job(args, os.environ)
    except SpecError as err:
        print(f"kaon: invalid spec: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    # torch is imported only once the spec is known to be good: bad specs fail fast.
    from kaon_kernels.loop import BadInputError, train  # noqa: PLC0415
    from kaon_kernels.store import FencedOffError  # noqa: PLC0415

    try:
        return train(job, os.environ)
    except BadInputError as err:
        print(f"kaon: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except FencedOffError as err:
        print(f"kaon: fenced off: {err}", file=sys.stderr)
        return EXIT_FENCED


if __name__ == "__main__":
    sys.exit(main())
