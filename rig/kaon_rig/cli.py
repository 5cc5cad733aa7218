"""`kaon rig …`: the local rig's command line (`kaon.cli` hands every `rig` argument to `main`)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from kaon_rig import paths
from kaon_rig.config import RigConfig, load_config

PROG = "kaon rig"
DESCRIPTION = "the local multi-cluster Kubernetes rig (kwokctl)"


def _config_path(args: argparse.Namespace) -> Path | None:
    return Path(args.config) if args.config else None


def _config(args: argparse.Namespace) -> RigConfig:
    return load_config(_config_path(args))


def _build(args: argparse.Namespace) -> int:
    from kaon_rig import build  # noqa: PLC0415

    build.build_all()
    for name in args.with_ or ():
        build.OPTIONAL[name]()
    return 0


def _up(args: argparse.Namespace) -> int:
    from kaon_rig import rig  # noqa: PLC0415

    rig.up(_config(args), _config_path(args))
    return _status(args)


def _agent(args: argparse.Namespace) -> int:
    cluster = _config(args).cluster(args.cluster)
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
    from kaon_rig import agent  # noqa: PLC0415

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    work = paths.agent_dir(args.node)
    asyncio.run(agent.serve(paths.kubeconfig_path(cluster.name), args.node, pool, work))
    return 0


def _down(args: argparse.Namespace) -> int:
    from kaon_rig import rig  # noqa: PLC0415

    removed = rig.down()
    print(f"removed clusters: {', '.join(removed) or 'none'}")
    return 0


def _stop_or_start(args: argparse.Namespace) -> int:
    from kaon_rig import agents, rig  # noqa: PLC0415

    config, name = _config(args), args.name
    if code := _not_up(config, name):
        return code
    if args.rig_command == "start":
        rig.start_cluster(name)
        started = agents.start(config, _config_path(args))
        print(f"{name}: running; agents started: {', '.join(started) or 'none'}")
    elif args.api_only:
        rig.stop_cluster(name)
        print(f"{name}: API server stopped; its pods' processes run on")
    else:
        rig.lose_cluster(name, config)
        print(f"{name}: lost, its API server stopped and its process agents killed")
    return 0


def _not_up(config: RigConfig, name: str) -> int:
    """0 when the rig has this cluster up; else the exit code, with the reason printed."""
    try:
        config.cluster(name)
    except KeyError as exc:
        print(f"kaon: {exc.args[0]}", file=sys.stderr)
        return 2
    if not paths.kubeconfig_path(name).exists():
        print(f"kaon: cluster {name!r} is not up; run 'make rig-up'", file=sys.stderr)
        return 1
    return 0


def _status(args: argparse.Namespace) -> int:
    from kaon_rig import rig, s3  # noqa: PLC0415

    statuses = rig.status(_config(args))
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
    s3_up = s3.is_ready()
    print(f"S3 {s3.ENDPOINT} bucket {s3.BUCKET}: {'up' if s3_up else 'down'}")
    return 0 if s3_up and all(c.state == "running" for c in statuses) else 1


def _kubeconfig(args: argparse.Namespace) -> int:
    if code := _not_up(_config(args), args.name):
        return code
    print(paths.kubeconfig_path(args.name))
    return 0


def _operator_kubeconfig(args: argparse.Namespace) -> int:
    from kubernetes.client.exceptions import ApiException  # noqa: PLC0415

    from kaon_rig import identity  # noqa: PLC0415

    if not paths.kubeconfig_path(args.cluster).exists():
        print(f"kaon: cluster {args.cluster!r} is not up; run 'make rig-up'", file=sys.stderr)
        return 1
    namespace = args.namespace or identity.DEFAULT_NAMESPACE
    account = args.service_account or identity.DEFAULT_SERVICE_ACCOUNT
    try:
        duration = args.duration or identity.DEFAULT_DURATION_S
        path = identity.write_kubeconfig(args.cluster, namespace, account, duration)
    except ApiException as exc:
        print(
            f"kaon: no token for ServiceAccount {namespace}/{account} "
            f"(is the chart installed?): {exc.status} {exc.reason}",
            file=sys.stderr,
        )
        return 1
    print(path)
    return 0


def _env(args: argparse.Namespace) -> int:
    bins = [paths.kube_bin_dir(), paths.helm_binary().parent, paths.kwok_bin_dir()]
    path = ":".join(shlex.quote(str(b)) for b in bins)
    print(f'export PATH={path}:"$PATH"')
    print(f"export KUBECONFIG={shlex.quote(str(paths.kubeconfig_path('hub')))}")
    print(f"export KAON_RIG_DIR={shlex.quote(str(paths.rig_dir()))}")
    from kaon_rig import s3  # noqa: PLC0415

    creds = s3.saved_credentials()
    if creds is not None:
        print(f"export AWS_ENDPOINT_URL_S3={s3.ENDPOINT}")
        print(f"export AWS_REGION={s3.REGION}")
        print(f"export AWS_ACCESS_KEY_ID={shlex.quote(creds.access_key_id)}")
        print(f"export AWS_SECRET_ACCESS_KEY={shlex.quote(creds.secret_access_key)}")
    return 0


def parser() -> argparse.ArgumentParser:
    rig_p = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION)
    rig_p.add_argument("--config", help="rig description (default: the packaged pools.yaml)")
    rig_sub = rig_p.add_subparsers(dest="rig_command", required=True)
    bld = rig_sub.add_parser("build", help="build or reuse the cached binaries")
    bld.add_argument(
        "--with",
        dest="with_",
        action="append",
        choices=("training-operator",),
        help="also an optional binary (training-operator: the control-plane bench's baseline)",
    )
    bld.set_defaults(func=_build)
    rig_sub.add_parser("up", help="start (or reuse) the hub and member clusters").set_defaults(
        func=_up
    )
    rig_sub.add_parser("down", help="delete every rig cluster and its state").set_defaults(
        func=_down
    )
    rig_sub.add_parser("status", help="clusters, pools and health").set_defaults(func=_status)
    stop = rig_sub.add_parser(
        "stop", help="lose a cluster, keeping its state: its API server and its process agents"
    )
    stop.add_argument("name")
    stop.add_argument(
        "--api-only",
        action="store_true",
        help="stop only the API server (a blip): the pods' processes keep running",
    )
    stop.set_defaults(func=_stop_or_start)
    start = rig_sub.add_parser("start", help="start a stopped cluster and its process agents")
    start.add_argument("name")
    start.set_defaults(func=_stop_or_start)
    kc = rig_sub.add_parser("kubeconfig", help="print the path of a cluster's kubeconfig")
    kc.add_argument("name")
    kc.set_defaults(func=_kubeconfig)
    rig_sub.add_parser("env", help="shell exports to use the rig by hand").set_defaults(func=_env)
    ok = rig_sub.add_parser(
        "operator-kubeconfig",
        help="write a kubeconfig of the chart's ServiceAccount (a TokenRequest token); its path",
    )
    ok.add_argument("--cluster", default="hub", help="rig cluster (default: hub)")
    ok.add_argument("--namespace", help="the release namespace (default: kaon-system)")
    ok.add_argument("--service-account", help="its name (default: kaon)")
    ok.add_argument("--duration", type=int, help="token lifetime in seconds (default: a day)")
    ok.set_defaults(func=_operator_kubeconfig)
    ag = rig_sub.add_parser(
        "agent", help="serve an agent pool's node: run its pods as local processes (dev tool)"
    )
    ag.add_argument("--cluster", required=True)
    ag.add_argument("--node", required=True)
    ag.set_defaults(func=_agent)
    return rig_p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from kaon_rig import build, rig  # noqa: PLC0415  (they load the kubernetes client)

    try:
        code: int = args.func(args)
    except (build.BuildError, rig.RigError) as exc:
        print(f"kaon: {exc}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
