"""What every chaos scenario must leave true, checked in one place.

A PodSampler lists the members' worker pods over and over while the chaos runs and notes what
must never be seen at any moment (two live attempts of one job, more pods than the gang, one
attempt in two clusters, a second succeeded gang); `check_load` then waits for every job to
end and checks what must hold at the end (none lost, each ended as its load said, failovers
counted, no pods left beyond the current attempt's gang).

One overlap is by design (docs/architecture.md, "what fences it"): a member that was lost past
the grace comes back still holding the old attempt's pods, Running as it last knew them, while
the new attempt runs elsewhere. Those are fenced off (an old attempt cannot commit a
checkpoint) and swept once the member answers: the sampler lets them be seen for SWEEP_WITHIN_S
after the member's return, and no longer.
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client, config

from kaon.api.names import ATTEMPT_LABEL, JOB_LABEL, RANK_LABEL

from chaos.load import Expect, Load
from kaonrig import GROUP, VERSION, OperatorProcess, Rig, condition, state

MEMBERS = ("east", "west")
SELECTOR = f"app.kubernetes.io/managed-by=kaon,{JOB_LABEL}"
TERMINAL = ("Succeeded", "Failed")
SWEEP_WITHIN_S = 15.0  # a returned member's fenced-off pods are gone this long after its return
SETTLE_S = 45.0  # after the last job ended: fenced-off and finished attempts' pods removed


@dataclass(frozen=True)
class Seen:
    """One worker pod as one sample saw it."""

    cluster: str
    name: str
    job: str
    attempt: int
    rank: int
    phase: str
    deleting: bool

    @property
    def live(self) -> bool:
        """Running, or not yet known to have stopped (deleted but not gone)."""
        return self.phase == "Running"


def _seen(cluster: str, pod: dict[str, Any]) -> Seen:
    meta = pod["metadata"]
    labels = meta.get("labels") or {}
    return Seen(
        cluster=cluster,
        name=meta["name"],
        job=labels[JOB_LABEL],
        attempt=int(labels[ATTEMPT_LABEL]),
        rank=int(labels[RANK_LABEL]),
        phase=(pod.get("status") or {}).get("phase", "Pending"),
        deleting=bool(meta.get("deletionTimestamp")),
    )


def list_pods(api: client.CoreV1Api, cluster: str, namespace: str) -> list[Seen]:
    answer: Any = api.list_namespaced_pod(
        namespace, label_selector=SELECTOR, _preload_content=False, _request_timeout=(2, 5)
    )
    return [_seen(cluster, p) for p in json.loads(answer.data)["items"]]


@dataclass
class PodSampler:
    """Samples the members' worker pods of one namespace in a thread, checking each sample."""

    kaon_rig: Rig
    namespace: str
    workers: dict[str, int]  # gang size per job name (filled in as the load is created)
    interval_s: float = 0.5
    samples: int = 0
    unreachable: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MEMBERS, 0))
    violations: dict[tuple[Any, ...], str] = field(default_factory=dict)  # first of each kind
    succeeded: dict[str, dict[tuple[str, int], set[int]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(set))
    )  # job -> (cluster, attempt) -> ranks seen Succeeded
    last_unreachable: dict[str, float] = field(default_factory=dict)  # cluster -> t
    fenced_for_s: float = 0.0  # longest a fenced-off attempt was seen live after its return

    def __post_init__(self) -> None:
        self._apis = {c: client.CoreV1Api(self._client(c)) for c in MEMBERS}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pod-sampler", daemon=True)
        self.started = time.monotonic()

    def _client(self, cluster: str) -> client.ApiClient:
        """A client that fails at once on a stopped member (no urllib3 retries)."""
        conf = client.Configuration()
        path = str(self.kaon_rig.kubeconfig(cluster))
        config.load_kube_config(config_file=path, client_configuration=conf)  # type: ignore[no-untyped-call]
        conf.retries = 0
        return client.ApiClient(conf)

    def start(self) -> PodSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(30)
        for api in self._apis.values():
            api.api_client.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)

    def sample(self) -> list[Seen]:
        pods: list[Seen] = []
        for cluster, api in self._apis.items():
            try:
                pods += list_pods(api, cluster, self.namespace)
            except Exception:  # a member stopped on purpose: nothing to see there now
                self.unreachable[cluster] += 1
                self.last_unreachable[cluster] = time.monotonic() - self.started
        self.check(pods, time.monotonic() - self.started)
        self.samples += 1
        return pods

    def note(self, key: tuple[Any, ...], message: str) -> None:
        self.violations.setdefault(key, message)

    def check(self, pods: Iterable[Seen], at: float) -> None:
        by_job: dict[str, list[Seen]] = defaultdict(list)
        for p in pods:
            by_job[p.job].append(p)
            if p.phase == "Succeeded":
                self.succeeded[p.job][(p.cluster, p.attempt)].add(p.rank)
        for job, seen in by_job.items():
            live = sorted({p.attempt for p in seen if p.live})
            if len(live) > 1 and not self._fenced(seen, live[-1], at):
                names = sorted(f"{p.cluster}/{p.name}{' (deleting)' * p.deleting}" for p in seen)
                self.note(
                    ("two live attempts", job, tuple(live)),
                    f"t={at:.1f}s {job}: attempts {live} Running at once: {names}",
                )
            for attempt in {p.attempt for p in seen}:
                mine = [p for p in seen if p.attempt == attempt and not p.deleting]
                gang = self.workers.get(job)
                if gang is not None and len(mine) > gang:
                    names = sorted(f"{p.cluster}/{p.name}" for p in mine)
                    self.note(
                        ("beyond the gang", job, attempt),
                        f"t={at:.1f}s {job}: {len(mine)} pods of attempt {attempt}, gang of "
                        f"{gang}: {names}",
                    )
                clusters = sorted({p.cluster for p in mine})
                if len(clusters) > 1:
                    self.note(
                        ("two clusters", job, attempt),
                        f"t={at:.1f}s {job}: attempt {attempt} has pods in {clusters}",
                    )
            gangs = self.succeeded_gangs(job)
            if len(gangs) > 1:
                self.note(
                    ("succeeded twice", job),
                    f"t={at:.1f}s {job}: succeeded gangs (cluster, attempt) {gangs}",
                )

    def _fenced(self, seen: list[Seen], newest: int, at: float) -> bool:
        """Whether every live pod of an older attempt is in a member back from a loss within
        SWEEP_WITHIN_S, one the newest attempt does not run in (noting how long that lasted)."""
        now_in = {p.cluster for p in seen if p.live and p.attempt == newest}
        older = {p.cluster for p in seen if p.live and p.attempt != newest}
        back_for = [at - self.last_unreachable.get(c, float("-inf")) for c in older]
        if older & now_in or max(back_for) > SWEEP_WITHIN_S:
            return False
        self.fenced_for_s = max(self.fenced_for_s, *back_for)
        return True

    def succeeded_gangs(self, job: str) -> list[tuple[str, int]]:
        """(cluster, attempt) of every attempt whose whole gang was seen Succeeded. Single
        Succeeded ranks of an attempt restarted because another rank failed are no gang."""
        gang = self.workers.get(job, 0)
        ranks = self.succeeded.get(job, {})
        return sorted(where for where, seen in ranks.items() if gang and len(seen) >= gang)


def list_jobs(kaon_rig: Rig, namespace: str) -> dict[str, dict[str, Any]]:
    api = client.CustomObjectsApi(kaon_rig.api("hub"))
    found: Any = api.list_namespaced_custom_object(GROUP, VERSION, namespace, "trainingjobs")
    return {j["metadata"]["name"]: j for j in found.get("items") or []}


def wait_all_ended(
    kaon_rig: Rig, namespace: str, names: Collection[str], timeout_s: float
) -> tuple[dict[str, dict[str, Any]], float]:
    """The jobs once all have ended (or at the timeout), and how long that took."""
    start = time.monotonic()
    while True:
        try:
            found = list_jobs(kaon_rig, namespace)
        except Exception:  # the hub restarting: ask again
            found = {}
        ended = found and all(state(found[n]) in TERMINAL for n in names if n in found)
        if (ended and all(n in found for n in names)) or time.monotonic() - start > timeout_s:
            return found, time.monotonic() - start
        time.sleep(1.0)


def _leftovers(job: dict[str, Any], pods: list[Seen]) -> list[str]:
    """Pods of the job that no current attempt owns (not being deleted)."""
    status = job.get("status") or {}
    cluster = (status.get("placement") or {}).get("cluster")
    attempt = int(status.get("attempt", 0))
    return sorted(
        f"{p.cluster}/{p.name}"
        for p in pods
        if not p.deleting and (p.cluster != cluster or p.attempt != attempt)
    )


def settle(kaon_rig: Rig, namespace: str, jobs: dict[str, dict[str, Any]]) -> list[Seen]:
    """The members' pods once no job has pods beyond its current attempt (or after SETTLE_S):
    a member back from a loss is swept, restarted attempts are removed."""
    apis = {c: kaon_rig.core(c) for c in MEMBERS}
    deadline = time.monotonic() + SETTLE_S
    while True:
        pods = [p for c, api in apis.items() for p in list_pods(api, c, namespace)]
        by_job: dict[str, list[Seen]] = defaultdict(list)
        for p in pods:
            by_job[p.job].append(p)
        left = any(_leftovers(jobs[j], ps) for j, ps in by_job.items() if j in jobs)
        if not left or time.monotonic() > deadline:
            return pods
        time.sleep(1.0)


@dataclass
class Report:
    jobs: dict[str, dict[str, Any]]
    ended_after_s: float
    samples: int
    fenced_for_s: float  # longest a returned member's fenced-off attempt was seen live


def check_job(exp: Expect, job: dict[str, Any] | None, pods: list[Seen]) -> list[str]:
    if job is None:
        return [f"{exp.name}: lost (no such TrainingJob on the hub)"]
    status = job.get("status") or {}
    problems = []
    if state(job) != exp.state:
        failed = condition(job, "Failed")
        why = f" ({failed.get('reason')}: {failed.get('message')})" if failed else ""
        problems.append(f"{exp.name}: {state(job) or 'no state'}{why}, expected {exp.state}")
    got = (status.get("restarts", 0), status.get("infraRestarts", 0))
    if exp.restarts is not None and got != (exp.restarts, exp.infra_restarts):
        problems.append(
            f"{exp.name}: restarts, infraRestarts {got}, expected "
            f"{(exp.restarts, exp.infra_restarts)} (attempt {status.get('attempt', 0)})"
        )
    attempt, failovers = int(status.get("attempt", 0)), int(status.get("failovers", 0))
    if failovers and (attempt < failovers or condition(job, "FailedOver").get("status") != "True"):
        problems.append(f"{exp.name}: failovers {failovers} but attempt {attempt} / no FailedOver")
    if attempt < int(status.get("restarts", 0)) + int(status.get("infraRestarts", 0)) + failovers:
        problems.append(f"{exp.name}: attempt {attempt} below its restarts and failovers")
    cluster = (status.get("placement") or {}).get("cluster")
    current = [p for p in pods if p.attempt == attempt and p.cluster == cluster and not p.deleting]
    if len(current) > exp.workers or (exp.state == "Succeeded" and len(current) != exp.workers):
        names = sorted(p.name for p in current)
        problems.append(f"{exp.name}: {names} of attempt {attempt}, gang of {exp.workers}")
    if left := _leftovers(job, pods):
        problems.append(f"{exp.name}: pods beyond attempt {attempt} in {cluster}: {left}")
    return problems


def check_load(
    kaon_rig: Rig,
    namespace: str,
    load: Load,
    sampler: PodSampler,
    *,
    timeout_s: float,
    operators: Iterable[OperatorProcess] = (),
    failed_over: Collection[str] = (),
    no_failover: bool = False,
) -> Report:
    """Wait for the load to end and check every invariant; one AssertionError naming all that
    failed (and the operators' logs to read)."""
    found, took = wait_all_ended(kaon_rig, namespace, load.expected, timeout_s)
    problems = []
    not_ended = {n: state(found[n]) for n in load.expected if n in found}
    not_ended = {n: s for n, s in not_ended.items() if s not in TERMINAL}
    if not_ended:
        problems.append(f"{len(not_ended)} jobs not ended within {timeout_s:.0f}s: {not_ended}")
    pods = settle(kaon_rig, namespace, found)
    sampler.stop()
    sampler.check(pods, time.monotonic() - sampler.started)
    by_job: dict[str, list[Seen]] = defaultdict(list)
    for p in pods:
        by_job[p.job].append(p)
    for name, exp in load.expected.items():
        problems += check_job(exp, found.get(name), by_job.get(name, []))
        failovers = int((found.get(name, {}).get("status") or {}).get("failovers", 0))
        if name in failed_over and failovers < 1:
            problems.append(f"{name}: its cluster was lost past the grace, but failovers 0")
        if no_failover and failovers:
            problems.append(f"{name}: failovers {failovers} after a loss shorter than the grace")
    problems += list(sampler.violations.values())
    if problems:
        logs = ", ".join(str(op.log_path) for op in operators)
        shown = "\n  ".join(problems[:40])
        raise AssertionError(
            f"{len(problems)} invariant violations (seed {load.seed}, {sampler.samples} "
            f"samples; operator logs: {logs}):\n  {shown}"
        )
    return Report(found, took, sampler.samples, sampler.fenced_for_s)
