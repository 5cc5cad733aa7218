"""The `kaon` command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

import kopf

from kaon.api import render
from kaon.handlers import operator as _handlers  # noqa: F401  (registers kopf handlers)
from kaon.rig import agent, build, paths, rig
from kaon.rig.config import RigConfig, load_config


def _rig_config(args: argparse.Namespace) -> RigConfig:
    return load_config(Path(args.config) if args.config else None)


def _rig_build(args: argparse.Namespace) -> int:
    build.build_all()
    return 0


def _rig_up(args: argparse.Namespace) -> int:
    rig.up(_rig_config(args), Path(args.config) if args.config else None)
    return _rig_status(args)


def _rig_agent(args: argparse.Namespace) -> int:
    cluster = _rig_config(args).cluster(args.cluster)
    pool = next(
        (
            p
            for p in cluster.pools
            if p.agent and args.node in {p.node_name(cluster.name, i) for i in range(p.nodes)}
        ),
        None,
    )
    if pool is None:
        print(
            f"kaon: no agent pool of cluster {cluster.name} has a node {args.node}", file=sys.stderr
        )
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    work = paths.agent_dir(args.node)
    asyncio.run(agent.serve(paths.kubeconfig_path(cluster.name), args.node, pool, work))
    return 0


def _rig_down(args: argparse.Namespace) -> int:
    removed = rig.down()
    print(f"removed clusters: {', '.join(removed) or 'none'}")
    return 0


def _rig_status(args: argparse.Namespace) -> int:
    statuses = rig.status(_rig_config(args))
    print(
        f"{'CLUSTER':<8} {'STATE':<12} {'POOL':<10} {'NODES':>5} {'READY':>5} {'CPU':>5} {'GPU':>4}"
    )
    for c in statuses:
        if not c.pools:
            print(f"{c.name:<8} {c.state:<12} {'-':<10}")
        for p in c.pools:
            print(
                f"{c.name:<8} {c.state:<12} {p.name:<10} {p.nodes:>5} {p.ready:>5} "
                f"{p.cpu:>5} {p.gpus:>4}"
            )
    return 0 if all(c.state == "running" for c in statuses) else 1


def _rig_kubeconfig(args: argparse.Namespace) -> int:
    try:
        _rig_config(args).cluster(args.name)
    except KeyError as exc:
        print(f"kaon: {exc.args[0]}", file=sys.stderr)
        return 2
    path = paths.kubeconfig_path(args.name)
    if not path.exists():
        print(f"kaon: cluster {args.name!r} is not up; run 'make rig-up'", file=sys.stderr)
        return 1
    print(path)
    return 0


def _rig_env(args: argparse.Namespace) -> int:
    bins = [paths.kube_bin_dir(), paths.helm_binary().parent, paths.kwok_bin_dir()]
    path = ":".join(shlex.quote(str(b)) for b in bins)
    print(f'export PATH={path}:"$PATH"')
    print(f"export KUBECONFIG={shlex.quote(str(paths.kubeconfig_path('hub')))}")
    print(f"export KAON_RIG_DIR={shlex.quote(str(paths.rig_dir()))}")
    return 0


def _crds(args: argparse.Namespace) -> int:
    dirs = [Path(d) for d in args.dirs]
    if args.check:
        bad = {str(d): names for d in dirs if (names := render.stale(d))}
        for where, names in bad.items():
            print(f"kaon: {where}: out of date with kaon.api: {', '.join(names)}", file=sys.stderr)
        if bad:
            print("kaon: run 'make crds' and commit the result", file=sys.stderr)
        return 1 if bad else 0
    for d in dirs:
        for path in render.write(d):
            print(path)
    return 0


def _run(args: argparse.Namespace) -> int:
    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig
    kopf.configure(verbose=args.verbose)
    if not args.verbose:  # one line per handled event is noise at thousands of jobs
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    asyncio.run(
        kopf.operator(
            clusterwide=True,
            standalone=not args.peering,
            peering_name=args.peering,
            liveness_endpoint=args.liveness,
        )
    )
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kaon", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run_p = sub.add_parser("run", help="run the operator against the hub")
    run_p.add_argument("--kubeconfig", help="the hub's kubeconfig (default: $KUBECONFIG)")
    run_p.add_argument("--peering", help="kopf peering name for an active/standby pair")
    run_p.add_argument("--liveness", help="health endpoint, e.g. http://0.0.0.0:8080/healthz")
    run_p.add_argument("-v", "--verbose", action="store_true")
    run_p.set_defaults(func=_run)

    crds_p = sub.add_parser("crds", help="write the CRDs generated from kaon.api")
    crds_p.add_argument("dirs", nargs="*", default=["crds"], help="output directories")
    crds_p.add_argument("--check", action="store_true", help="fail if the files differ")
    crds_p.set_defaults(func=_crds)

    rig_p = sub.add_parser("rig", help="the local multi-cluster Kubernetes rig (kwokctl)")
    rig_p.add_argument("--config", help="rig description (default: the packaged pools.yaml)")
    rig_sub = rig_p.add_subparsers(dest="rig_command", required=True)
    rig_sub.add_parser("build", help="build or reuse the cached binaries").set_defaults(
        func=_rig_build
    )
    rig_sub.add_parser("up", help="start (or reuse) the hub and member clusters").set_defaults(
        func=_rig_up
    )
    rig_sub.add_parser("down", help="delete every rig cluster and its state").set_defaults(
        func=_rig_down
    )
    rig_sub.add_parser("status", help="clusters, pools and health").set_defaults(func=_rig_status)
    kc = rig_sub.add_parser("kubeconfig", help="print the path of a cluster's kubeconfig")
    kc.add_argument("name")
    kc.set_defaults(func=_rig_kubeconfig)
    rig_sub.add_parser("env", help="shell exports to use the rig by hand").set_defaults(
        func=_rig_env
    )
    ag = rig_sub.add_parser(
        "agent", help="serve an agent pool's node: run its pods as local processes (dev tool)"
    )
    ag.add_argument("--cluster", required=True)
    ag.add_argument("--node", required=True)
    ag.set_defaults(func=_rig_agent)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except (build.BuildError, rig.RigError) as exc:
        print(f"kaon: {exc}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
