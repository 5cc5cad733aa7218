#!/usr/bin/env bash
# make demo: the local rig, kaon's CRDs, the operator, the rig's members, a few TrainingJobs
# watched until they settle, and an InferenceService of a freshly trained model answering V2. Everything runs on this machine; nothing is installed by hand.
set -euo pipefail
cd "$(dirname "$0")/.."
KAON=.venv/bin/kaon
source <("$KAON" rig env)

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "CRDs on the hub (generated from kaon.api)"
kubectl apply -f crds/
kubectl wait --for condition=established crd/trainingjobs.kaon.dev crd/computeclusters.kaon.dev \
  crd/inferenceservices.kaon.dev --timeout=60s

step "kaon's Helm chart on the hub: RBAC, metrics Service (kwok nodes run no containers: operator.replicas=0)"
helm upgrade --install kaon charts/kaon --namespace kaon-system --create-namespace --set operator.replicas=0

step "the operator: kaon run under the chart's ServiceAccount (log in $KAON_RIG_DIR/operator.log)"
pkill -f "kaon run" 2>/dev/null || true
OPERATOR_KUBECONFIG=$("$KAON" rig operator-kubeconfig)
KUBECONFIG="$OPERATOR_KUBECONFIG" "$KAON" run >"$KAON_RIG_DIR/operator.log" 2>&1 &
OPERATOR=$!
trap 'kill $OPERATOR 2>/dev/null || true' EXIT

step "member clusters east and west (kwok) and west-local (real processes), from examples/clusters"
kubectl apply -f examples/clusters/
kubectl wait --for condition=Ready computecluster/east computecluster/west computecluster/west-local --timeout=60s
kubectl get computeclusters -o wide

step "TrainingJobs from examples/trainingjobs: kwok workers end as their annotations say; cnn-digits and lstm-digits really train"
kubectl delete -f examples/trainingjobs/ --ignore-not-found --wait >/dev/null
kubectl apply -f examples/trainingjobs/
for _ in $(seq 1 90); do
  sleep 2
  clear 2>/dev/null || true
  date +%T
  kubectl get tj -o wide
  pending=$(kubectl get tj -o jsonpath='{range .items[*]}{.status.state}{"\n"}{end}' | grep -cvE '^(Succeeded|Failed)$' || true)
  [ "$pending" = 0 ] && break
done

step "what the real jobs learned (test split of the digits set)"
kubectl get tj cnn-digits lstm-digits -o custom-columns='NAME:.metadata.name,ACCURACY:.status.metrics.accuracy,F1:.status.metrics.f1,STEPS:.status.progress.step,ARTIFACT:.status.artifact'

step "serving: examples/inferenceservices/digits.yaml trains a CNN onto claim 'models' in west, then serves it"
WEST=$("$KAON" rig kubeconfig west)
mkdir -p "$KAON_RIG_DIR/models"
kubectl --kubeconfig "$WEST" apply -f - <<PV
apiVersion: v1
kind: PersistentVolume
metadata: {name: demo-models}
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteMany]
  storageClassName: ""
  hostPath: {path: "$KAON_RIG_DIR/models"}
  claimRef: {namespace: default, name: models}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: models, namespace: default}
spec:
  accessModes: [ReadWriteMany]
  storageClassName: ""
  volumeName: demo-models
  resources: {requests: {storage: 1Gi}}
PV
kubectl delete -f examples/inferenceservices/ --ignore-not-found --wait >/dev/null
kubectl apply -f examples/inferenceservices/
for _ in $(seq 1 120); do
  sleep 2
  clear 2>/dev/null || true
  date +%T
  kubectl get tj digits-model
  kubectl get isvc digits -o wide
  [ "$(kubectl get isvc digits -o jsonpath='{.status.state}')" = Ready ] && break
done
kubectl get isvc digits -o jsonpath='{.status.conditions}' | .venv/bin/python -m json.tool

step "a V2 request to a replica of 'digits' (the rig has no kube-proxy: its endpoint IP, from west)"
ENDPOINT=$(kubectl --kubeconfig "$WEST" get endpointslices -l kubernetes.io/service-name=digits \
  -o jsonpath='{.items[0].endpoints[0].addresses[0]}:{.items[0].ports[0].port}')
echo "curl http://$ENDPOINT/v2/models/digits"
curl -s "http://$ENDPOINT/v2/models/digits"; echo
.venv/bin/python hack/ask_digits.py "$ENDPOINT" digits 200

step "kaon status: clusters, pools, jobs and services at a glance"
"$KAON" status

step "why a job waited, and what happened to the flaky one"
kubectl get events --field-selector involvedObject.kind=TrainingJob --sort-by=.lastTimestamp | tail -15

cat <<'NEXT'

Try next (the rig stays up; the operator stops with this script):
  source <(.venv/bin/kaon rig env)       # kubectl and helm of the rig, KUBECONFIG at the hub
  KUBECONFIG=$(.venv/bin/kaon rig operator-kubeconfig) .venv/bin/kaon run &   # the operator again, least privilege
  kubectl get tj -w                      # watch jobs
  kubectl get isvc -o wide               # the served model
  .venv/bin/kaon status -w 2             # everything at a glance, redrawn every 2 s
  curl -s localhost:8081/metrics | grep ^kaon_   # the operator's metrics (while it runs)
  kubectl explain trainingjob.spec.placement
  make rig-down                          # remove the rig
NEXT
