"""The `kaon` command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kaon import statusview
from kaon.api import render
from kaon.api.common import GROUP, VERSION
from kaon.lifecycle.routing import HoldLimits
from kaon_kernels.eventloop import LoopFactory, loop_factory


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

    from kaon import handlers  # noqa: F401, PLC0415  (registers the kopf handlers)

    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig
    if args.standalone or args.peering:  # kopf's peering then decides who acts, not the Lease
        os.environ["KAON_LEADER_ELECTION"] = "false"
    kopf.configure(verbose=args.verbose)
    if not args.verbose:  # one line per handled event is noise at thousands of jobs
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    priority = _priority(args)
    if args.peering:
        logging.getLogger("kaon").info("peering %s with priority %s", args.peering, priority)
    with asyncio.Runner(loop_factory=event_loop()) as runner:
        runner.run(
            kopf.operator(
                clusterwide=True,
                standalone=not args.peering,
                peering_name=args.peering,
                priority=priority,
                liveness_endpoint=args.liveness,
            )
        )
    return 0


def event_loop() -> LoopFactory:
    """uvloop where installed, as kopf's own CLI runs operators (its TLS and callbacks cost the
    operator less CPU; docs/architecture.md); KAON_LOOP=asyncio keeps asyncio's loop."""
    return loop_factory("asyncio" if os.environ.get("KAON_LOOP") == "asyncio" else "auto")[1]


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


def _port(text: str) -> int:
    port = int(text)
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"{port} is not a port (1-65535)")
    return port


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not above 0")
    return value


def _router(args: argparse.Namespace) -> int:
    from kaon.clusters.kubeconfig import hub_kubeconfig  # noqa: PLC0415
    from kaon.router.main import RouterTLS, serve  # noqa: PLC0415

    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig
    if args.max_held_requests < 1:
        print("kaon: --max-held-requests must be at least 1", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if bool(args.tls_cert_file) != bool(args.tls_key_file):
        print("kaon: --tls-cert-file and --tls-key-file go together", file=sys.stderr)
        return 2
    for path in (args.tls_cert_file, args.tls_key_file, args.replica_ca_file):
        if path and not os.path.isfile(path):
            print(f"kaon: {path}: no such file", file=sys.stderr)
            return 2
    limits = HoldLimits(args.hold_timeout_seconds, args.max_held_requests)
    tls = RouterTLS(args.tls_cert_file, args.tls_key_file, args.replica_ca_file)
    with asyncio.Runner(loop_factory=event_loop()) as runner:
        runner.run(serve(hub_kubeconfig(), args.host, args.port, limits, tls))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kaon", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run_p = sub.add_parser("run", help="run the operator against the hub")
    run_p.add_argument("--kubeconfig", help="the hub's kubeconfig (default: $KUBECONFIG)")
    run_p.add_argument(
        "--peering",
        help="use kopf peering of this name instead of the Lease to pick the acting operator "
        "(every operator on the hub must then use it)",
    )
    run_p.add_argument(
        "--priority",
        type=int,
        help="kopf peering priority (default with --peering: random, so replicas differ)",
    )
    run_p.add_argument(
        "--standalone",
        action="store_true",
        help="act without leader election (by default one operator acts at a time: the one "
        "holding the Lease kaon-operator in $KAON_NAMESPACE on the hub; the others stand by)",
    )
    run_p.add_argument("--liveness", help="health endpoint, e.g. http://0.0.0.0:8080/healthz")
    run_p.add_argument("-v", "--verbose", action="store_true")
    run_p.set_defaults(func=_run)

    router_p = sub.add_parser(
        "router", help="serve every InferenceService at one address (splits, holds, wakes)"
    )
    router_p.add_argument("--kubeconfig", help="the hub's kubeconfig (default: $KUBECONFIG)")
    router_p.add_argument("--host", default="0.0.0.0", help="address to listen on (0.0.0.0)")
    router_p.add_argument("--port", type=_port, default=8090, help="port to listen on (8090)")
    router_p.add_argument(
        "--hold-timeout-seconds",
        type=_positive,
        default=HoldLimits.timeout_s,
        help="how long a request waits for a ready replica before its 503 (60)",
    )
    router_p.add_argument(
        "--max-held-requests",
        type=int,
        default=HoldLimits.max_held,
        help="requests held per service at most; more get 503 at once (1000)",
    )
    router_p.add_argument("--tls-cert-file", help="serve HTTPS with this certificate (PEM)")
    router_p.add_argument("--tls-key-file", help="the certificate's private key (PEM)")
    router_p.add_argument(
        "--replica-ca-file",
        help="verify the certificates of replicas that serve HTTPS (spec.tls) against this CA, "
        "as issued for NAME.NAMESPACE.svc (default: encrypted, not verified)",
    )
    router_p.set_defaults(func=_router)

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

    # Listed for --help only: main() hands `kaon rig ...` to the rig's own parser before this
    # one parses anything, so the product never imports the rig unless asked for it.
    sub.add_parser("rig", help="the local multi-cluster Kubernetes rig (kwokctl)", add_help=False)
    return parser


def _rig(argv: list[str]) -> int:
    """`kaon rig ...`: the rig is a development tool beside kaon (rig/kaon_rig), not part of it."""
    try:
        from kaon_rig import cli  # noqa: PLC0415
    except ModuleNotFoundError as exc:
        if exc.name != "kaon_rig":
            raise
        print("kaon: the rig is not installed here; it comes with the source tree", file=sys.stderr)
        return 2
    return cli.main(argv)


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    if words[:1] == ["rig"]:
        return _rig(words[1:])
    args = _parser().parse_args(words)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
