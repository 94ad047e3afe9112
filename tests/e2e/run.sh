#!/usr/bin/env bash
# End-to-end on a real Kubernetes cluster (kind or k3d): build and load the image, install the
# chart, apply the minimal example, wait for Available, write and read through the client
# Service, scale 3 -> 5 -> 3, delete the leader's pod and check that the status names a leader
# in a higher term; then a TLS cluster (examples/tls.yaml) used through its client Secret, and a
# cluster with auth (examples/auth.yaml) used as root with the password of its Secret.
#
#   kind create cluster --name kuberaft
#   KUBERAFT_E2E_CONTEXT=kind-kuberaft tests/e2e/run.sh
#
# Needs docker, kubectl, helm, and kind or k3d on the PATH. scripts/test runs it only when
# KUBERAFT_E2E_CONTEXT is set, and otherwise says NOT RUN and why (the one step exempt from
# the rule that under CI=true what cannot run fails: no real cluster can exist on CI machines).
set -euo pipefail
cd "$(dirname "$0")/../.."

CONTEXT="${KUBERAFT_E2E_CONTEXT:?set KUBERAFT_E2E_CONTEXT to the kubectl context of a kind or k3d cluster}"
IMAGE="${KUBERAFT_E2E_IMAGE:-kuberaft:e2e}"
NS="kuberaft-e2e-$$"
OPERATOR_NS="kuberaft-system-e2e-$$"
TIMEOUT="${KUBERAFT_E2E_TIMEOUT:-300}"
k() { kubectl --context "$CONTEXT" "$@"; }

for tool in docker kubectl helm; do
  command -v "$tool" >/dev/null || { echo "error: $tool is needed" >&2; exit 1; }
done

cleanup() {
  echo "== cleanup"
  k delete namespace "$NS" --wait=false >/dev/null 2>&1 || true
  helm --kube-context "$CONTEXT" uninstall kuberaft -n "$OPERATOR_NS" >/dev/null 2>&1 || true
  k delete namespace "$OPERATOR_NS" --wait=false >/dev/null 2>&1 || true
}
trap cleanup EXIT

echo "== build and load $IMAGE"
docker build -t "$IMAGE" .
case "$CONTEXT" in
  kind-*) kind load docker-image "$IMAGE" --name "${CONTEXT#kind-}" ;;
  k3d-*) k3d image import "$IMAGE" --cluster "${CONTEXT#k3d-}" ;;
  *) echo "note: context $CONTEXT is neither kind-* nor k3d-*; $IMAGE must be pullable by its nodes" ;;
esac

echo "== install the chart"
helm --kube-context "$CONTEXT" install kuberaft charts/kuberaft -n "$OPERATOR_NS" --create-namespace \
  --set image.repository="${IMAGE%:*}" --set image.tag="${IMAGE##*:}" --set image.pullPolicy=IfNotPresent \
  --wait --timeout "${TIMEOUT}s"

echo "== apply examples/minimal.yaml"
k create namespace "$NS"
sed "s|^spec:|spec:\n  image: $IMAGE|" examples/minimal.yaml | k apply -n "$NS" -f -

status() { k get raftcluster etcd -n "$NS" -o jsonpath="$1"; }

# wait_for DESCRIPTION CONDITION-COMMAND: polls every 2 s, at most TIMEOUT seconds.
wait_for() {
  local what="$1"; shift
  local deadline=$((SECONDS + TIMEOUT))
  until "$@"; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "error: timed out waiting for $what" >&2
      k get raftcluster,statefulset,pods -n "$NS" -o wide >&2 || true
      k get raftcluster etcd -n "$NS" -o yaml >&2 || true
      exit 1
    fi
    sleep 2
  done
  echo "ok: $what"
}

running_with() {
  [ "$(status '{.status.phase}')" = "Running" ] \
    && [ "$(status '{.status.readyReplicas}')" = "$1" ] \
    && [ "$(status '{range .status.members[*]}{.role}{"\n"}{end}' | grep -cE 'leader|follower')" = "$1" ] \
    && [ "$(status '{.status.conditions[?(@.type=="MembershipConsistent")].status}')" = "True" ]
}

wait_for "Available" k wait raftcluster/etcd -n "$NS" --for=condition=Available --timeout=5s
wait_for "3 members running" running_with 3
k get raftclusters -n "$NS"

kv() {
  k run "kv-$RANDOM" -n "$NS" --image="$IMAGE" --image-pull-policy=IfNotPresent --restart=Never --rm -i --quiet \
    --command -- kuberaft kv "$@" --endpoints "http://etcd-client.$NS.svc:2379"
}
echo "== write and read through the client Service"
kv put e2e-key e2e-value
[ "$(kv get e2e-key)" = "e2e-value" ] || { echo "error: read back a different value" >&2; exit 1; }

echo "== scale 3 -> 5"
k scale raftcluster etcd -n "$NS" --replicas 5
wait_for "5 members running" running_with 5
echo "== scale 5 -> 3"
k scale raftcluster etcd -n "$NS" --replicas 3
wait_for "3 members running" running_with 3
[ "$(kv get e2e-key)" = "e2e-value" ] || { echo "error: the key was lost" >&2; exit 1; }

echo "== delete the leader's pod"
leader="$(status '{.status.leader}')"
term="$(status '{.status.term}')"
k delete pod "$leader" -n "$NS" --wait=false
new_term() { [ "$(status '{.status.term}')" -gt "$term" ] && [ -n "$(status '{.status.leader}')" ]; }
wait_for "a leader in a term above $term" new_term
wait_for "3 members running again" running_with 3
echo "leader was $leader in term $term; now $(status '{.status.leader}') in term $(status '{.status.term}')"
k get raftclusters -n "$NS"

echo "== a rolling restart, the leader last: kuberaft.io/restart"
term="$(status '{.status.term}')"
k annotate raftcluster etcd -n "$NS" kuberaft.io/restart=e2e-1 --overwrite
restarted() {
  [ "$(k get pods -n "$NS" -l app.kubernetes.io/instance=etcd \
        -o jsonpath='{range .items[*]}{.metadata.annotations.kuberaft\.io/restart}{"\n"}{end}' | grep -c '^e2e-1$')" = 3 ] \
    && running_with 3
}
wait_for "every member restarted from the new template" restarted
[ "$(status '{.status.term}')" = "$((term + 1))" ] || { echo "error: expected one new term (a handover), got $(status '{.status.term}') after $term" >&2; exit 1; }
[ "$(kv get e2e-key)" = "e2e-value" ] || { echo "error: the key was lost in the restart" >&2; exit 1; }

echo "== a quorum-loss recovery asked for while the cluster is healthy: refused, nothing changes"
term="$(status '{.status.term}')"
k annotate raftcluster etcd -n "$NS" kuberaft.io/recover-quorum=e2e-1 --overwrite
refused() { [ "$(status '{.status.recovery.phase}')" = "Refused" ]; }
wait_for "the request refused" refused
status '{.status.recovery.message}'; echo
[ "$(status '{.status.term}')" = "$term" ] || { echo "error: the term moved after a refused recovery" >&2; exit 1; }
k get events -n "$NS" --field-selector reason=QuorumRecoveryRefused -o name | grep -q . \
  || { echo "error: no QuorumRecoveryRefused event" >&2; exit 1; }

echo "== examples/tls.yaml: TLS from the operator's CA, used through the client Secret"
sed "s|^spec:|spec:\n  image: $IMAGE|; s|name: etcd$|name: etcd-tls|" examples/tls.yaml | k apply -n "$NS" -f -
wait_for "the TLS cluster Available" k wait raftcluster/etcd-tls -n "$NS" --for=condition=Available --timeout=5s
secret="$(k get raftcluster etcd-tls -n "$NS" -o jsonpath='{.status.clientSecret}')"
[ "$secret" = "etcd-tls-client-tls" ] || { echo "error: status.clientSecret is '$secret'" >&2; exit 1; }
tls_kv() {
  local overrides
  overrides="$(printf '{"spec":{"containers":[{"name":"kv","image":"%s","imagePullPolicy":"IfNotPresent","command":["kuberaft","kv"%s,"--endpoints","https://etcd-tls-client.%s.svc:2379","--cacert","/tls/ca.crt","--cert","/tls/tls.crt","--key","/tls/tls.key"],"volumeMounts":[{"name":"tls","mountPath":"/tls","readOnly":true}]}],"volumes":[{"name":"tls","secret":{"secretName":"%s"}}]}}' \
    "$IMAGE" "$(printf ',"%s"' "$@")" "$NS" "$secret")"
  k run "tls-kv-$RANDOM" -n "$NS" --image="$IMAGE" --restart=Never --rm -i --quiet --overrides="$overrides"
}
tls_kv put tls-key tls-value
[ "$(tls_kv get tls-key)" = "tls-value" ] || { echo "error: the TLS cluster read back a different value" >&2; exit 1; }

echo "== examples/auth.yaml: auth on, root's password from a Secret the operator generates"
sed "s|^spec:|spec:\n  image: $IMAGE|; s|name: etcd$|name: etcd-auth|" examples/auth.yaml | k apply -n "$NS" -f -
auth_on() { [ "$(k get raftcluster etcd-auth -n "$NS" -o jsonpath='{.status.auth.enabled}')" = "true" ]; }
wait_for "auth on in the auth cluster" auth_on
auth_kv() {
  local overrides
  overrides="$(printf '{"spec":{"containers":[{"name":"kv","image":"%s","imagePullPolicy":"IfNotPresent","command":["kuberaft","kv"%s,"--endpoints","http://etcd-auth-client.%s.svc:2379"],"env":[{"name":"ROOT_PASSWORD","valueFrom":{"secretKeyRef":{"name":"etcd-root","key":"password"}}}]}]}}' \
    "$IMAGE" "$(printf ',"%s"' "$@")" "$NS")"
  k run "auth-kv-$RANDOM" -n "$NS" --image="$IMAGE" --restart=Never --rm -i --quiet --overrides="$overrides"
}
auth_kv put auth-key auth-value --user root --password '$(ROOT_PASSWORD)'
[ "$(auth_kv get auth-key --user root --password '$(ROOT_PASSWORD)')" = "auth-value" ] \
  || { echo "error: the auth cluster read back a different value" >&2; exit 1; }
if auth_kv put anonymous x 2>/dev/null; then echo "error: a write without a user was accepted" >&2; exit 1; fi
echo "PASSED"
