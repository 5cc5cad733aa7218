"""The `kaon` command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kaon import statusview
from kaon.api import render
from kaon.api.common import GROUP, VERSION
from kaon.rig import paths
from kaon.rig.config import RigConfig, load_config


def _rig_config(args: argparse.Namespace) -> RigConfig:
    return load_config(Path(args.config) if args.config else None)


def _rig_build(args: argparse.Namespace) -> int:
    from kaon.rig import build  # noqa: PLC0415

    build.build_all()
    return 0


def _rig_up(args: argparse.Namespace) -> int:
    from kaon.rig import rig  # noqa: PLC0415

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
    from kaon.rig import agent  # noqa: PLC0415

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    work = paths.agent_dir(args.node)
    asyncio.run(agent.serve(paths.kubeconfig_path(cluster.name), args.node, pool, work))
    return 0


def _rig_down(args: argparse.Namespace) -> int:
    from kaon.rig import rig  # noqa: PLC0415

    removed = rig.down()
    print(f"removed clusters: {', '.join(removed) or 'none'}")
    return 0


def _rig_status(args: argparse.Namespace) -> int:
    from kaon.rig import rig  # noqa: PLC0415

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


def _rig_operator_kubeconfig(args: argparse.Namespace) -> int:
    from kubernetes.client.exceptions import ApiException  # noqa: PLC0415

    from kaon.rig import identity  # noqa: PLC0415

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


def _priority(args: argparse.Namespace) -> int | None:
    """Replicas of one Deployment get distinct priorities, so one works and the others stand
    by (kopf pauses every peer when two share the highest priority)."""
    if args.priority is not None or not args.peering:
        return args.priority  # type: ignore[no-any-return]
    return random.SystemRandom().randrange(1, 2**31)


def _run(args: argparse.Namespace) -> int:
    # kopf logs in through the kubernetes client package when it can import it. Without it,
    # kopf's own kubeconfig login left the operator ~20 MiB larger at 1000 jobs (measured with
    # tests/bench/controlplane.py), so the package stays importable here.
    import kopf  # noqa: PLC0415

    from kaon.handlers import operator  # noqa: F401, PLC0415  (registers the kopf handlers)

    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig
    kopf.configure(verbose=args.verbose)
    if not args.verbose:  # one line per handled event is noise at thousands of jobs
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    priority = _priority(args)
    if args.peering:
        logging.getLogger("kaon").info("peering %s with priority %s", args.peering, priority)
    asyncio.run(
        kopf.operator(
            clusterwide=True,
            standalone=not args.peering,
            peering_name=args.peering,
            priority=priority,
            liveness_endpoint=args.liveness,
        )
    )
    return 0


def _status_screen(api: Any, args: argparse.Namespace) -> str:
    def items(plural: str, namespace: str | None) -> list[Any]:
        if namespace:
            answer = api.list_namespaced_custom_object(GROUP, VERSION, namespace, plural)
        else:
            answer = api.list_cluster_custom_object(GROUP, VERSION, plural)
        return list(answer.get("items") or [])

    clusters = items("computeclusters", None)
    jobs = items("trainingjobs", args.namespace)
    services = items("inferenceservices", args.namespace)
    return statusview.render(clusters, jobs, services, limit=args.limit)


def _status(args: argparse.Namespace) -> int:
    from kubernetes import client, config  # noqa: PLC0415
    from kubernetes.client.exceptions import ApiException  # noqa: PLC0415

    try:
        api = client.CustomObjectsApi(config.new_client_from_config(args.kubeconfig))  # type: ignore[no-untyped-call]
    except config.ConfigException as exc:
        print(f"kaon: no kubeconfig for the hub: {exc}", file=sys.stderr)
        return 1
    try:
        while True:
            screen = _status_screen(api, args)
            if not args.watch:
                print(screen)
                return 0
            print("\033[H\033[2J" + screen, flush=True)  # clear the terminal, then draw
            time.sleep(args.watch)
    except ApiException as exc:
        hint = " (are kaon's CRDs installed?)" if exc.status == 404 else ""
        print(f"kaon: {exc.status} {exc.reason}{hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kaon", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run_p = sub.add_parser("run", help="run the operator against the hub")
    run_p.add_argument("--kubeconfig", help="the hub's kubeconfig (default: $KUBECONFIG)")
    run_p.add_argument("--peering", help="kopf peering name for an active/standby pair")
    run_p.add_argument(
        "--priority",
        type=int,
        help="kopf peering priority (default with --peering: random, so replicas differ)",
    )
    run_p.add_argument("--liveness", help="health endpoint, e.g. http://0.0.0.0:8080/healthz")
    run_p.add_argument("-v", "--verbose", action="store_true")
    run_p.set_defaults(func=_run)

    st = sub.add_parser("status", help="clusters, pools, jobs and services on the hub")
    st.add_argument("--kubeconfig", help="the hub's kubeconfig (default: $KUBECONFIG)")
    st.add_argument("-n", "--namespace", help="jobs and services of one namespace only")
    st.add_argument("--limit", type=int, default=20, help="rows per section (default 20)")
    st.add_argument("-w", "--watch", type=float, metavar="SECONDS", help="redraw every SECONDS")
    st.set_defaults(func=_status)

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
    ok = rig_sub.add_parser(
        "operator-kubeconfig",
        help="write a kubeconfig of the chart's ServiceAccount (a TokenRequest token); its path",
    )
    ok.add_argument("--cluster", default="hub", help="rig cluster (default: hub)")
    ok.add_argument("--namespace", help="the release namespace (default: kaon-system)")
    ok.add_argument("--service-account", help="its name (default: kaon)")
    ok.add_argument("--duration", type=int, help="token lifetime in seconds (default: a day)")
    ok.set_defaults(func=_rig_operator_kubeconfig)
    ag = rig_sub.add_parser(
        "agent", help="serve an agent pool's node: run its pods as local processes (dev tool)"
    )
    ag.add_argument("--cluster", required=True)
    ag.add_argument("--node", required=True)
    ag.set_defaults(func=_rig_agent)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "run":
        return _run(args)
    from kaon.rig import build, rig  # noqa: PLC0415  (they load the kubernetes client)

    try:
        code: int = args.func(args)
    except (build.BuildError, rig.RigError) as exc:
        print(f"kaon: {exc}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
