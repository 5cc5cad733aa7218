"""`kaon rig ...` reaches the rig; every other command of `kaon` runs without importing it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kaon import cli

REPO = Path(__file__).resolve().parents[2]


def rig_modules_after(code: str) -> list[str]:
    report = "print(json.dumps([m for m in sys.modules if m.startswith('kaon_rig')]))"
    probe = f"{code}\nimport json, sys\n{report}"
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True
    )
    return list(json.loads(done.stdout.strip().splitlines()[-1]))


def test_importing_the_cli_loads_no_rig_module() -> None:
    assert rig_modules_after("import kaon.cli") == []


def test_kaon_crds_check_runs_without_the_rig() -> None:
    dirs = "'crds', 'charts/kaon/crds'"
    code = f"import kaon.cli\nassert kaon.cli.main(['crds', '--check', {dirs}]) == 0"
    assert rig_modules_after(code) == []


def test_kaon_rig_hands_its_arguments_to_the_rigs_own_parser(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["rig", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: kaon rig ")
    assert "operator-kubeconfig" in out and "agent" in out


def test_kaon_help_lists_rig_beside_the_product_commands(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "{run,router,status,crds,rig}" in capsys.readouterr().out


def test_kaon_rig_kubeconfig_of_an_unknown_cluster_names_the_known_ones(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["rig", "kubeconfig", "nowhere"]) == 2
    assert "known: hub, east, west" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["stop", "start"])
def test_kaon_rig_stop_and_start_refuse_an_unknown_cluster(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["rig", command, "nowhere"]) == 2
    assert "known: hub, east, west" in capsys.readouterr().err


def test_kaon_rig_stop_offers_a_blip_beside_a_loss(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["rig", "stop", "--help"])
    assert "--api-only" in capsys.readouterr().out
