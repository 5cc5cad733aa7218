#!/usr/bin/env bash
# make demo-queues: two teams share the fleet through queues of one cohort. team-a borrows
# team-b's idle A100s; team-b takes them back by preempting team-a's gang. Then the same with
# jobs that really train on the process agents: the preempted job saves a checkpoint on
# SIGTERM, waits, and resumes from it when the quota is back, finishing with its accuracy bar.
set -euo pipefail
cd "$(dirname "$0")/.."
KAON=.venv/bin/kaon
source <("$KAON" rig env)

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
field() { kubectl get tj -n "$1" "$2" -o jsonpath="$3" 2>/dev/null || true; }
wait_until() {  # namespace name jsonpath value seconds
  for _ in $(seq 1 "$5"); do
    [ "$(field "$1" "$2" "$3")" = "$4" ] && return 0
    sleep 1
  done
  echo "timed out: $1/$2 $3 != $4" >&2
  return 1
}
show() {
  sleep 3  # a Queue's status is written every 2 s
  kubectl get queues
  kubectl get tj -A -o wide
}

step "CRDs, the chart's RBAC and the operator (kaon run)"
source hack/operator.sh queues
kubectl apply -f examples/clusters/ >/dev/null
kubectl wait --for condition=Ready computecluster/east computecluster/east-local computecluster/west-local --timeout=90s
kubectl delete tj -n team-a --all --wait >/dev/null 2>&1 || true
kubectl delete tj -n team-b --all --wait >/dev/null 2>&1 || true

step "queues team-a and team-b (8 A100s each, cohort research); namespaces team-a and team-b"
kubectl apply -f examples/queues/teams.yaml

step "team-a's a-big asks for 16 A100s: its 8 and team-b's idle 8 (borrowed)"
kubectl apply -f examples/queues/jobs.yaml
wait_until team-a a-big '{.status.state}' Running 60
show

step "team-b's b-small (4 A100s, within its nominal) reclaims: a-big is preempted and waits"
kubectl apply -f examples/queues/reclaim.yaml
wait_until team-b b-small '{.status.state}' Running 60
show
kubectl get tj -n team-a a-big -o jsonpath='{.status.conditions[?(@.type=="Preempted")].message}'; echo
kubectl get events -n team-a --field-selector involvedObject.name=a-big --sort-by=.lastTimestamp | tail -6
kubectl get events -n team-b --field-selector involvedObject.name=b-small --sort-by=.lastTimestamp | tail -6

step "b-small done (30 s): a-big is placed again, as attempt 1"
wait_until team-b b-small '{.status.state}' Succeeded 90
wait_until team-a a-big '{.status.state}' Running 60
show
kubectl delete tj -n team-a a-big --wait >/dev/null

step "with real training: queues digits-a and digits-b (1 core each, cohort digits)"
kubectl get secret -n default kaon-s3 -o json \
  | python3 -c 'import json,sys; s=json.load(sys.stdin); m=s["metadata"]; s["metadata"]={"name":m["name"],"namespace":"team-a"}; print(json.dumps(s))' \
  | kubectl apply -f - >/dev/null
kubectl apply -f examples/queues/digits.yaml
wait_until team-a a-digits '{.status.state}' Running 120
for _ in $(seq 1 120); do
  sleep 1
  [ "$(field team-a a-digits '{.status.progress.step}')" -ge 200 ] 2>/dev/null && break
done
show

step "b-digits reclaims team-b's core: a-digits' workers save a checkpoint on SIGTERM and stop"
kubectl apply -f examples/queues/digits-reclaim.yaml
wait_until team-a a-digits '{.status.preemptions}' 1 120
show
kubectl get events -n team-a --field-selector involvedObject.name=a-digits --sort-by=.lastTimestamp | tail -5

step "b-digits done: a-digits resumes from its checkpoint and finishes"
wait_until team-b b-digits '{.status.state}' Succeeded 600
for _ in $(seq 1 600); do
  sleep 2
  case "$(field team-a a-digits '{.status.state}')" in Succeeded|Failed) break ;; esac
done
kubectl get tj -n team-a a-digits -o custom-columns='NAME:.metadata.name,STATE:.status.state,ATTEMPT:.status.attempt,PREEMPTIONS:.status.preemptions,RESTARTS:.status.restarts,RESUMED:.status.progress.resumedFromStep,ACCURACY:.status.metrics.accuracy'
kubectl get tj -n team-b b-digits -o custom-columns='NAME:.metadata.name,STATE:.status.state,ACCURACY:.status.metrics.accuracy'
[ "$(field team-a a-digits '{.status.state}')" = Succeeded ]
[ "$(field team-a a-digits '{.status.progress.resumedFromStep}')" -gt 0 ]
