# Sourced by the demo scripts: CRDs, the chart's RBAC (no operator Deployment) and one
# operator process started with `kaon run` as the chart's identity, logging to
# $KAON_RIG_DIR/operator-$1.log and stopped when the script exits.
kubectl apply -f crds/ >/dev/null
kubectl wait --for condition=established crd/trainingjobs.kaon.dev crd/computeclusters.kaon.dev crd/queues.kaon.dev --timeout=60s
helm upgrade --install kaon charts/kaon --namespace kaon-system --create-namespace --set operator.replicas=0 >/dev/null
pkill -f "kaon run" 2>/dev/null || true
KUBECONFIG=$("$KAON" rig operator-kubeconfig) "$KAON" run >"$KAON_RIG_DIR/operator-$1.log" 2>&1 &
OPERATOR=$!
trap 'kill $OPERATOR 2>/dev/null || true' EXIT
