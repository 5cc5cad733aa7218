"""Build the rig's binaries from the Go module proxy into the cache, once per version.

Kubernetes cannot be `go install`ed (its go.mod has replace directives), so a throwaway wrapper
module requires k8s.io/kubernetes and replaces each staging module with its published v0.X.Y tag.
A binary is moved into place only when its build succeeded, so its presence means "done".
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from kaon_rig import paths
from kaon_rig.versions import KUBE_BINARIES, VERSIONS, RigVersions


class BuildError(RuntimeError):
    pass


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(GOTOOLCHAIN="local", GOWORK="off", CGO_ENABLED="0", GOFLAGS="-buildvcs=false")
    return env


def _log(msg: str) -> None:
    print(f"[kaon rig build] {msg}", file=sys.stderr, flush=True)


def _go(args: Sequence[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    if shutil.which("go") is None:
        raise BuildError("the Go toolchain ('go') is not on PATH; it is needed to build the rig")
    proc = subprocess.run(
        ["go", *args], check=False, cwd=cwd, env=env or _go_env(), capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise BuildError(f"go {' '.join(args)} failed in {cwd}:\n{proc.stderr[-4000:]}")
    return proc.stdout


def _version_ldflags(v: RigVersions) -> str:
    flags = ["-s", "-w"]
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {pkg}.gitVersion=v{v.kubernetes}",
            f"-X {pkg}.gitMajor=1",
            f"-X {pkg}.gitMinor={v.kubernetes_minor}",
            f"-X {pkg}.gitTreeState=clean",
        ]
    return " ".join(flags)


def _install_atomically(built: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(built, dest)


def _wrapper(name: str) -> Path:
    w = paths.cache_dir() / "src" / name
    w.mkdir(parents=True, exist_ok=True)
    if not (w / "go.mod").exists():
        _go(["mod", "init", f"local/{name}"], w)
    return w


def _staging_modules(w: Path, v: RigVersions) -> list[str]:
    info = json.loads(_go(["mod", "download", "-json", f"k8s.io/kubernetes@v{v.kubernetes}"], w))
    gomod = Path(info["GoMod"]).read_text()
    return sorted(set(re.findall(r"^\s*(k8s\.io/[a-z0-9-]+) => \./staging/src/", gomod, re.M)))


def build_kubernetes(v: RigVersions = VERSIONS) -> None:
    out = paths.kube_bin_dir(v)
    missing = [b for b in KUBE_BINARIES if not (out / b).exists()]
    if not missing:
        return
    w = _wrapper(f"k8s-wrapper-v{v.kubernetes}")
    if not (w / ".prepared").exists():
        _log(f"resolving k8s.io/kubernetes v{v.kubernetes} and its staging modules")
        for mod in _staging_modules(w, v):
            _go(["mod", "edit", f"-replace={mod}={mod}@{v.staging}"], w)
        for b in KUBE_BINARIES:
            _go(["get", "-tool", f"k8s.io/kubernetes/cmd/{b}@v{v.kubernetes}"], w)
        _go(["mod", "tidy"], w)
        (w / ".prepared").touch()
    for b in missing:
        _log(f"building {b} v{v.kubernetes} (minutes when cold)")
        t0 = time.monotonic()
        tmp = w / f"{b}.tmp"
        _go(
            [
                "build",
                "-trimpath",
                "-tags",
                "selinux,notest,grpcnotrace",
                "-ldflags",
                _version_ldflags(v),
                "-o",
                str(tmp),
                f"k8s.io/kubernetes/cmd/{b}",
            ],
            w,
        )
        _install_atomically(tmp, out / b)
        _log(f"built {b} in {time.monotonic() - t0:.0f}s")


def build_etcd(v: RigVersions = VERSIONS) -> None:
    dest = paths.etcd_binary(v)
    if dest.exists():
        return
    w = _wrapper(f"etcd-wrapper-v{v.etcd}")
    _log(f"building etcd v{v.etcd}")
    _go(["get", "-tool", f"go.etcd.io/etcd/server/v3@v{v.etcd}"], w)
    _go(["mod", "tidy"], w)
    tmp = w / "etcd.tmp"
    _go(["build", "-trimpath", "-ldflags", "-s -w", "-o", str(tmp), "go.etcd.io/etcd/server/v3"], w)
    _install_atomically(tmp, dest)


def _go_install(pkg: str, version: str, dest: Path, ldflags: str = "-s -w") -> None:
    if dest.exists():
        return
    _log(f"building {pkg}@v{version}")
    gobin = dest.parent / ".gobin"
    env = _go_env() | {"GOBIN": str(gobin)}
    _go(["install", "-trimpath", "-ldflags", ldflags, f"{pkg}@v{version}"], Path.cwd(), env)
    _install_atomically(gobin / dest.name, dest)
    shutil.rmtree(gobin, ignore_errors=True)


def build_kwok(v: RigVersions = VERSIONS) -> None:
    for b in ("kwok", "kwokctl"):
        _go_install(f"sigs.k8s.io/kwok/cmd/{b}", v.kwok, paths.kwok_bin_dir(v) / b)


def build_helm(v: RigVersions = VERSIONS) -> None:
    ldflags = " ".join(
        [
            "-s -w",
            f"-X helm.sh/helm/v3/internal/version.version=v{v.helm}",
            "-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1",
            f"-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor={v.kubernetes_minor}",
        ]
    )
    _go_install("helm.sh/helm/v3/cmd/helm", v.helm, paths.helm_binary(v), ldflags)


SEAWEEDFS_MODULE = "github.com/seaweedfs/seaweedfs"
# SeaweedFS's own go.mod replaces this module; a replace applies only in the main module.
_BIP39 = "github.com/tyler-smith/go-bip39=github.com/cosmos/go-bip39@v1.0.0"


def build_seaweedfs(v: RigVersions = VERSIONS) -> None:
    """The rig's S3 server. Its go.mod has a replace directive (refused by `go install`), which
    the wrapper module repeats."""
    dest = paths.seaweedfs_binary(v)
    if dest.exists():
        return
    w = _wrapper(f"seaweedfs-wrapper-{v.seaweedfs}")
    if not (w / ".prepared").exists():
        _log(f"resolving {SEAWEEDFS_MODULE} {v.seaweedfs}")
        _go(["mod", "edit", f"-replace={_BIP39}"], w)
        _go(["get", "-tool", f"{SEAWEEDFS_MODULE}/weed@{v.seaweedfs}"], w)
        _go(["mod", "tidy"], w)
        (w / ".prepared").touch()
    _log(f"building weed {v.seaweedfs} (10-20 minutes when cold)")
    t0 = time.monotonic()
    tmp = w / "weed.tmp"
    _go(["build", "-trimpath", "-ldflags", "-s -w", "-o", str(tmp), f"{SEAWEEDFS_MODULE}/weed"], w)
    _install_atomically(tmp, dest)
    _log(f"built weed in {time.monotonic() - t0:.0f}s")


TRAINING_OPERATOR_MODULE = "github.com/kubeflow/training-operator"


def build_training_operator(v: RigVersions = VERSIONS) -> None:
    """Kubeflow training-operator, the control-plane bench's baseline: built on demand (by the
    bench, or `kaon rig build --with training-operator`), never by `build_all`."""
    module = f"{TRAINING_OPERATOR_MODULE}/cmd/training-operator.v1"
    _go_install(module, v.training_operator, paths.training_operator_binary(v))


def training_operator_source(v: RigVersions = VERSIONS) -> Path:
    """The training-operator module's files in the Go module cache (fetched there if missing):
    its CRDs are under manifests/base/crds."""
    cwd = paths.cache_dir()
    cwd.mkdir(parents=True, exist_ok=True)
    modcache = Path(_go(["env", "GOMODCACHE"], cwd).strip())
    source = modcache / f"{TRAINING_OPERATOR_MODULE}@v{v.training_operator}"
    if not source.is_dir():
        _go(["mod", "download", f"{TRAINING_OPERATOR_MODULE}@v{v.training_operator}"], cwd)
    return source


OPTIONAL = {"training-operator": build_training_operator}


def build_all(v: RigVersions = VERSIONS) -> None:
    t0 = time.monotonic()
    build_kwok(v)
    build_etcd(v)
    build_helm(v)
    build_kubernetes(v)
    build_seaweedfs(v)
    _log(f"all rig binaries ready under {paths.cache_dir() / 'bin'} ({time.monotonic() - t0:.0f}s)")
