#!/usr/bin/env bash
# make demo-failover: a CNN that really trains, with its checkpoints in the rig's S3 server,
# loses its member cluster mid-way; kaon moves the gang to the other member's processes, which
# resume from the last committed checkpoint and finish with the same accuracy.
set -euo pipefail
cd "$(dirname "$0")/.."
KAON=.venv/bin/kaon
source <("$KAON" rig env)

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
field() { kubectl get tj cnn-digits-s3 -o jsonpath="$1" 2>/dev/null || true; }

step "CRDs, the chart's RBAC and the operator (kaon run, leader election on the hub's Lease)"
source hack/operator.sh failover

step "both process-agent pools: east-local and west-local (their pods are real processes here)"
kubectl apply -f examples/clusters/local.yaml -f examples/clusters/local-east.yaml
kubectl wait --for condition=Ready computecluster/east-local computecluster/west-local --timeout=90s

step "cnn-digits-s3: checkpoints every 20 steps to s3://kaon/checkpoints (Secret kaon-s3, from kaon rig up)"
kubectl delete tj cnn-digits-s3 --ignore-not-found --wait >/dev/null
kubectl apply -f examples/trainingjobs/cnn-digits-s3.yaml
for _ in $(seq 1 120); do
  sleep 1
  [ "$(field '{.status.state}')" = Running ] && [ "$(field '{.status.progress.step}')" -ge 200 ] 2>/dev/null && break
done
kubectl get tj cnn-digits-s3 -o wide
FROM=$(field '{.status.placement.cluster}')
MEMBER=${FROM%-local}

step "losing member $MEMBER with its machine (kaon rig stop $MEMBER: API server and process agents); grace 10 s"
"$KAON" rig stop "$MEMBER"
for _ in $(seq 1 60); do
  sleep 1
  printf '%s  %-12s %-9s attempt %s  failovers %s\n' "$(date +%T)" "$(field '{.status.placement.cluster}')" \
    "$(field '{.status.state}')" "$(field '{.status.attempt}')" "$(field '{.status.failovers}')"
  [ "$(field '{.status.attempt}')" = 1 ] && [ "$(field '{.status.state}')" = Running ] && break
done
kubectl get computecluster "$FROM" -o jsonpath='{.status.conditions[?(@.type=="Ready")]}'; echo

step "member $MEMBER back (kaon rig start $MEMBER): the old attempt's pods are swept before it takes new work"
"$KAON" rig start "$MEMBER"
for _ in $(seq 1 300); do
  sleep 2
  case "$(field '{.status.state}')" in Succeeded|Failed) break ;; esac
done
kubectl get tj cnn-digits-s3 -o custom-columns='NAME:.metadata.name,STATE:.status.state,CLUSTER:.status.placement.cluster,ATTEMPT:.status.attempt,FAILOVERS:.status.failovers,RESUMED:.status.progress.resumedFromStep,ACCURACY:.status.metrics.accuracy,ARTIFACT:.status.artifact'
kubectl get events --field-selector involvedObject.name=cnn-digits-s3 --sort-by=.lastTimestamp | tail -8
