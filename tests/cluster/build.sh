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
CACHE="${PODGRACE_CACHE:-$HOME/.cache/podgrace}"
BIN_DIR="$CACHE/bin/$KEY"
STAMP="$BIN_DIR/.complete"

die() { echo "build.sh: ERROR: $*" >&2; exit 1; }
CURRENT_STEP=setup
trap 'die "step [$CURRENT_STEP] failed (exit $?) at line $LINENO: $BASH_COMMAND"' ERR

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

if is_complete; then
  echo "build.sh: cached, nothing to build: $BIN_DIR"
  echo "$BIN_DIR"
  exit 0
fi

command -v go >/dev/null || die "'go' is not on PATH (need Go >= 1.26 to build Kubernetes ${KUBE_VERSION})"
command -v python3 >/dev/null || die "'python3' is needed to read go.mod JSON"
command -v flock >/dev/null || die "'flock' (util-linux) is needed"

mkdir -p "$CACHE"
exec 9>"$CACHE/build.lock"
echo "build.sh: waiting for the build lock $CACHE/build.lock ..."
flock 9
if is_complete; then  # somebody else built it while we waited
  echo "build.sh: built concurrently by another process: $BIN_DIR"
  echo "$BIN_DIR"
  exit 0
fi

export GOTOOLCHAIN=local CGO_ENABLED=0 GOWORK=off
export GOFLAGS="-buildvcs=false -modcacherw -trimpath"
export GOMODCACHE="$CACHE/go/mod"
export GOCACHE="${PODGRACE_GOCACHE:-$CACHE/go/build}"
export GOPROXY="${GOPROXY:-https://proxy.golang.org,direct}"
go_minor=$(go env GOVERSION | sed -E 's/^go1\.([0-9]+).*/\1/')
[[ "$go_minor" =~ ^[0-9]+$ && "$go_minor" -ge 26 ]] \
  || die "Go $(go env GOVERSION) is too old; Kubernetes ${KUBE_VERSION} needs go >= 1.26 (GOTOOLCHAIN=local)"

SRC="$CACHE/src"
STAGE="$BIN_DIR.partial"
rm -rf "$STAGE"
mkdir -p "$STAGE" "$SRC"

T_ALL=$SECONDS
step() {  # step NAME CMD... : run and print the elapsed time (errexit + the ERR trap stop on failure)
  CURRENT_STEP=$1; shift
  local t0=$SECONDS
  echo "build.sh: >>> $CURRENT_STEP"
  "$@"
  echo "build.sh: <<< $CURRENT_STEP took $((SECONDS - t0))s"
  CURRENT_STEP=finish
}

# quiet LOG CMD...: keep the go tool's download chatter in a log; show its tail on failure
quiet() {
  local log=$1; shift
  if ! "$@" >"$log" 2>&1; then
    echo "build.sh: '$*' failed; last lines of $log:" >&2
    tail -n 60 "$log" >&2
    return 1
  fi
}

# new_module DIR: an empty scratch module to build a dependency's main packages from
new_module() {
  rm -rf "$1"
  mkdir -p "$1"
  printf 'module podgrace.local/clusterbuild\n\ngo 1.26\n' >"$1/go.mod"
}

kube_module() {
  local dir="$SRC/kubernetes-$KUBE_VERSION" gomod staging
  new_module "$dir"
  gomod=$(go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" \
    | python3 -c 'import json,sys; d=json.load(sys.stdin); sys.exit(d["Error"]) if d.get("Error") else print(d["GoMod"])')
  # k8s.io/kubernetes replaces its staging modules (k8s.io/api => ./staging/src/k8s.io/api, ...),
  # and replace directives of a dependency are ignored: pin each of them to the published v0.X.Y.
  staging=$(go mod edit -json "$gomod" | python3 -c '
import json, sys
mod = json.load(sys.stdin)
ver = "v0." + sys.argv[1].lstrip("v").split(".", 1)[1]
required = {r["Path"] for r in mod.get("Require") or []}
for r in mod.get("Replace") or []:
    new = r["New"]
    if new["Path"].startswith("./staging/") and r["Old"]["Path"] in required:
        print(r["Old"]["Path"] + "=" + r["Old"]["Path"] + "@" + ver)
' "$KUBE_VERSION")
  [[ -n "$staging" ]] || die "found no staging replace directives in $gomod"
  echo "build.sh: pinning $(wc -l <<<"$staging") k8s.io staging modules to v0.${KUBE_VERSION#v1.}"
  local args=() r
  for r in $staging; do args+=("-replace=$r"); done
  (cd "$dir" && go mod edit "${args[@]}")
  (cd "$dir" && quiet "$dir/go-get.log" go get "${KUBE_PKGS[@]/%/@$KUBE_VERSION}")
}

kube_build() {
  local dir="$SRC/kubernetes-$KUBE_VERSION" minor=${KUBE_VERSION#v1.} x ld="-s -w"
  minor=${minor%%.*}
  for x in client-go/pkg/version component-base/version; do
    ld+=" -X k8s.io/$x.gitVersion=$KUBE_VERSION -X k8s.io/$x.gitMajor=1 -X k8s.io/$x.gitMinor=$minor"
    ld+=" -X k8s.io/$x.gitTreeState=clean -X k8s.io/$x.buildDate=1970-01-01T00:00:00Z"
  done
  (cd "$dir" && quiet "$dir/go-build.log" go build -ldflags "$ld" -o "$STAGE/" "${KUBE_PKGS[@]}")
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

echo "build.sh: building into $BIN_DIR with $(go env GOVERSION), GOMODCACHE=$GOMODCACHE GOCACHE=$GOCACHE"
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

printf 'key=%s\nbuilt=%s\ngo=%s\nseconds=%s\n' "$KEY" "$(date -u +%FT%TZ)" "$(go env GOVERSION)" \
  "$((SECONDS - T_ALL))" >"$STAGE/.complete.tmp"
rm -rf "$BIN_DIR"
mv "$STAGE" "$BIN_DIR"
mv "$BIN_DIR/.complete.tmp" "$STAMP"
echo "build.sh: done in $((SECONDS - T_ALL))s: $BIN_DIR"
echo "$BIN_DIR"
