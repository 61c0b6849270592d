#!/usr/bin/env bash
# Build (and cache) the binaries of the local test control plane from Go modules.
#
#   tests/cluster/build.sh              build what is missing, print the bin dir on the last line
#   tests/cluster/build.sh --print-dir  only print the bin dir (no build, no network)
#   tests/cluster/build.sh --check      exit 0 if the bin dir is complete, 1 otherwise
#
# Everything is built from source fetched through the Go module proxy; nothing is downloaded
# from release pages. A warm run (stamp + all binaries present) builds nothing.
#
# Environment:
#   PODGRACE_CACHE   cache root (default: $HOME/.cache/podgrace)
#   PODGRACE_GOCACHE Go build cache (default: $PODGRACE_CACHE/go/build)
set -Eeuo pipefail

# ---- pinned versions: the one place to change them --------------------------------------------
KUBE_VERSION=v1.36.3     # k8s.io/kubernetes: kube-apiserver, kube-controller-manager, kube-scheduler, kubectl
ETCD_VERSION=v3.6.16     # go.etcd.io/etcd/server/v3: etcd
KWOK_VERSION=v0.8.0      # sigs.k8s.io/kwok: kwok (supports Kubernetes 1.36)
HELM_VERSION=v4.3.1      # helm.sh/helm/v4: helm
RECIPE=1                 # bump when this script's build recipe changes in a way that matters
# -----------------------------------------------------------------------------------------------

BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubectl etcd kwok helm)
KEY="k8s-${KUBE_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}_helm-${HELM_VERSION}_r${RECIPE}"
NAME=build.sh
# shellcheck source=tests/cluster/buildlib.sh
source "$(cd "$(dirname "$0")" && pwd)/buildlib.sh"

is_complete() {
  [[ -f "$STAMP" ]] || return 1
  local b
  for b in "${BINARIES[@]}"; do [[ -x "$BIN_DIR/$b" ]] || return 1; done
  [[ -d "$BIN_DIR/kwok-stages" ]] || return 1
}

case "${1:-}" in
  --print-dir) echo "$BIN_DIR"; exit 0 ;;
  --check) if is_complete; then exit 0; else exit 1; fi ;;
  "") ;;
  *) die "unknown argument: $1 (use --print-dir or --check)" ;;
esac

exit_if_cached "$BIN_DIR"
begin_build build.lock "$BIN_DIR"

kube_module() {
  local dir="$SRC/kubernetes-$KUBE_VERSION"
  new_module "$dir"
  kube_scratch_module "$dir" "${KUBE_PKGS[@]}"
}

kube_build() {
  local dir="$SRC/kubernetes-$KUBE_VERSION"
  (cd "$dir" && quiet "$dir/go-build.log" go build -ldflags "$(kube_ldflags)" -o "$STAGE/" "${KUBE_PKGS[@]}")
}

etcd_build() {
  local dir="$SRC/etcd-$ETCD_VERSION"
  new_module "$dir"
  (cd "$dir" && quiet "$dir/go-get.log" go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION")
  (cd "$dir" && quiet "$dir/go-build.log" go build -ldflags "-s -w" -o "$STAGE/etcd" go.etcd.io/etcd/server/v3)
}

kwok_build() {
  # Not built on the control plane's dependency versions (measured 2026-11-30, issue 14): raising its
  # k8s.io modules v0.36.1 -> v0.36.3 left 523 of 741 packages to compile (585 as is) and saved nothing,
  # because kwok needs newer golang.org/x/*, otel and grpc than Kubernetes v1.36.3; a build-cache entry is
  # keyed by the version MVS selects, so a replace down to the control plane's versions would not match.
  local ld="-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v}"
  ld+=" -X sigs.k8s.io/kwok/pkg/consts.KubeVersion=${KUBE_VERSION#v}"
  quiet "$SRC/kwok-install.log" env GOBIN="$STAGE" go install -ldflags "$ld" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
  # kwok's own stage definitions ship inside its module zip: copy the ones the cluster uses.
  local dir
  dir=$(go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  mkdir -p "$STAGE/kwok-stages"
  local f
  for f in pod/general/pod-create.yaml pod/general/pod-init-container-running.yaml \
    pod/general/pod-init-container-completed.yaml pod/general/pod-ready.yaml \
    pod/general/pod-complete.yaml pod/general/pod-delete.yaml \
    node/fast/node-initialize.yaml node/heartbeat/node-heartbeat.yaml; do
    [[ -f "$dir/kustomize/stage/$f" ]] || die "kwok $KWOK_VERSION has no kustomize/stage/$f"
    cp "$dir/kustomize/stage/$f" "$STAGE/kwok-stages/"
  done
  chmod -R u+w "$STAGE/kwok-stages"
}

helm_build() {
  quiet "$SRC/helm-install.log" env GOBIN="$STAGE" go install \
    -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=$HELM_VERSION -X helm.sh/helm/v4/internal/version.gitTreeState=clean" \
    "helm.sh/helm/v4/cmd/helm@$HELM_VERSION"
}

KUBE_PKGS=(k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager
  k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl)

step "kubernetes $KUBE_VERSION: resolve scratch module" kube_module
step "kubernetes $KUBE_VERSION: build ${KUBE_PKGS[*]##*/}" kube_build
step "etcd $ETCD_VERSION" etcd_build
step "kwok $KWOK_VERSION" kwok_build
step "helm $HELM_VERSION" helm_build

for b in "${BINARIES[@]}"; do [[ -x "$STAGE/$b" ]] || die "binary $b was not produced"; done
"$STAGE/kube-apiserver" --version
"$STAGE/etcd" --version | head -1
"$STAGE/kwok" --version
"$STAGE/helm" version --short

finish_build "$BIN_DIR"
