"""End-to-end runs of `kaon_kernels.train` on the digits set, small enough for two CPU cores.

Single-process runs call `main()` in this process (no second torch import); the SIGTERM and the
two-process DDP runs start real processes.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from kaon_kernels.train import main

TORCH_ENV = (
    "KAON_SPEC",
    "KAON_JOB_NAME",
    "KAON_OUTPUT_DIR",
    "KAON_CHECKPOINT_DIR",
    "WORLD_SIZE",
    "RANK",
    "LOCAL_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
)


def tiny_spec(epochs: int = 2, interval: int = 100, **training: Any) -> dict[str, Any]:
    return {
        "model": {"family": "cnn", "cnn": {"channels": [8, 16], "hiddenUnits": 32}},
        "training": {"epochs": epochs, "batchSize": 64, "learningRate": 0.003, **training},
        "checkpoint": {"enabled": True, "intervalSteps": interval},
        "resources": {"cpu": 1},  # control-plane keys are ignored by the runtime
    }


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in TORCH_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KAON_TERMINATION_LOG", str(tmp_path / "termination-log"))


def write_manifest(path: Path, spec: dict[str, Any], name: str = "tiny") -> Path:
    doc = {
        "apiVersion": "kaon.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": spec,
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def progress_lines(text: str) -> list[dict[str, Any]]:
    prefix = "KAON_PROGRESS "
    return [
        json.loads(line[len(prefix) :]) for line in text.splitlines() if line.startswith(prefix)
    ]


def run_main(spec_file: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["--spec", str(spec_file), "--output", str(out)])
    return code, capsys.readouterr().out


def test_short_run_trains_and_writes_artifact_metrics_and_progress(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code, stdout = run_main(write_manifest(tmp_path / "job.yaml", tiny_spec(4)), out, capsys)
    assert code == 0

    report = json.loads((out / "metrics.json").read_text())
    assert report["steps"] == 92  # 4 epochs of ceil(1438 / 64)
    assert report["metrics"]["accuracy"] >= 0.9
    assert set(report["metrics"]) == {"accuracy", "precision", "recall", "f1", "loss"}
    assert Path(report["artifact"]) == out.resolve()
    assert json.loads((tmp_path / "termination-log").read_text()) == report

    assert json.loads((out / "model.json").read_text()) == {
        "name": "tiny",
        "family": "cnn",
        "inputShape": [1, 8, 8],
        "numClasses": 10,
    }
    saved = torch.load(out / "model.pt", weights_only=True)
    assert saved["normalization"]["std"] > 0 and "state_dict" in saved

    lines = progress_lines(stdout)
    assert lines and lines[-1]["step"] == 92 and lines[-1]["percent"] == 100
    assert lines[-1]["loss"] < lines[0]["loss"]
    keys = {"epoch", "step", "totalSteps", "percent", "loss", "etaSeconds", "resumedFromStep"}
    assert keys == set(lines[0]) and lines[0]["resumedFromStep"] == 0
    assert json.loads((out / "progress.json").read_text()) == lines[-1]


def test_resume_continues_the_step_counter_and_matches_an_uninterrupted_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "resumed"
    assert run_main(write_manifest(tmp_path / "a.yaml", tiny_spec(1, 5)), out, capsys)[0] == 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "step-000000020.pt",
        "step-000000023.pt",
    ]
    code, stdout = run_main(write_manifest(tmp_path / "b.yaml", tiny_spec(2, 5)), out, capsys)
    assert code == 0
    lines = progress_lines(stdout)
    steps = [line["step"] for line in lines]
    # The first line says at once where training resumed; the ones after count on from there.
    assert steps[0] == 23 and lines[0]["loss"] is None
    assert steps[1] > 23 and steps[-1] == 46
    assert {line["resumedFromStep"] for line in lines} == {23}

    # Same spec in one go: resuming is exact (seeded data order and per-step dropout seeds).
    whole = tmp_path / "whole"
    assert run_main(write_manifest(tmp_path / "c.yaml", tiny_spec(2, 5)), whole, capsys)[0] == 0
    resumed_state = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    whole_state = torch.load(whole / "model.pt", weights_only=True)["state_dict"]
    for name, value in whole_state.items():
        assert torch.equal(resumed_state[name], value), name


def test_bad_spec_exits_2_naming_the_field(tmp_path: Path) -> None:
    spec = {**tiny_spec(), "training": {"batchSize": 0}}
    env = {**os.environ, "KAON_SPEC": json.dumps(spec)}
    proc = subprocess.run(
        [sys.executable, "-m", "kaon_kernels.train", "--output", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1
    assert "training.batchSize" in proc.stderr


def test_bad_data_exits_2_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.save({"x": torch.zeros(4, 8, 8)}, tmp_path / "data.pt")
    spec = {**tiny_spec(), "data": {"source": "file", "path": str(tmp_path / "data.pt")}}
    code = main(["--spec", str(write_manifest(tmp_path / "j.yaml", spec)), "--output", "o"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("kaon: bad data: data.path") and '"y"' in err


def test_sigterm_writes_a_checkpoint_and_exits_143(tmp_path: Path) -> None:
    spec_file = write_manifest(tmp_path / "long.yaml", tiny_spec(epochs=1000, interval=100000))
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kaon_kernels.train",
            "--spec",
            str(spec_file),
            "--output",
            str(out),
        ],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if progress_lines(line) and progress_lines(line)[0]["step"] >= 3:
                break
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, stderr
    stopped_at = int(re.findall(r"stopped at step (\d+)", stderr)[0])
    assert [p.name for p in (out / "checkpoints").iterdir()] == [f"step-{stopped_at:09d}.pt"]
    assert not (out / "metrics.json").exists()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_two_process_ddp_run_agrees_on_the_final_parameters(tmp_path: Path) -> None:
    spec = {**tiny_spec(epochs=4, interval=10), "workers": 2}
    base = {
        **os.environ,
        "KAON_SPEC": json.dumps(spec),
        "KAON_JOB_NAME": "ddp",
        "KAON_OUTPUT_DIR": str(tmp_path / "out"),
        "KAON_CHECKPOINT_DIR": str(tmp_path / "ckpt"),
        "WORLD_SIZE": "2",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "LOCAL_RANK": "0",
        "OMP_NUM_THREADS": "1",
        "GLOO_SOCKET_IFNAME": "lo",
        "KAON_DEVICE": "cpu",  # gloo on CPU: two ranks cannot share one GPU under NCCL
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "kaon_kernels.train"],
            env={**base, "RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    results = []
    try:
        results = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err
    digests = [re.findall(r"final parameters sha256 (\w+)", err) for _, err in results]
    assert len(digests[0]) == 1 and digests[0] == digests[1]

    report = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert report["steps"] == 48  # 4 epochs of ceil(719 / 64) per rank
    assert report["metrics"]["accuracy"] >= 0.85
    assert progress_lines(results[0][0]) and not progress_lines(results[1][0])
    assert (tmp_path / "ckpt" / "step-000000048.pt").exists()
