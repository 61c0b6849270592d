#!/usr/bin/env bash
# Build (and cache) the binaries of a real test node: kubelet, containerd v2 (+ runc shim, ctr)
# and a static pause binary. runc and the CNI plugins come from Debian (see --apt).
#
#   tests/cluster/build-node.sh              build what is missing, print the bin dir on the last line
#   tests/cluster/build-node.sh --print-dir  only print the bin dir (no build, no network)
#   tests/cluster/build-node.sh --check      exit 0 if the bin dir is complete, 1 otherwise
#   tests/cluster/build-node.sh --apt        apt-get install the Debian packages a node needs, then build
#   tests/cluster/build-node.sh --apt-only   only the apt-get install (.ci/run: apt before its parallel builds)
#
# kubelet comes from k8s.io/kubernetes at the control plane's version (read from build.sh, so the
# two never drift apart) in a scratch module of its own; it shares build.sh's Go module and build
# caches, so with a warm control-plane build it mostly links (~35 s). containerd is built from the
# Go module proxy like everything else (Debian's containerd 1.6 ignores lifecycle.stopSignal).
# The cache key is separate from build.sh's: building a node never invalidates the control plane.
#
# Environment: PODGRACE_CACHE (default $HOME/.cache/podgrace), PODGRACE_GOCACHE (Go build cache).
set -Eeuo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
# ---- pinned versions --------------------------------------------------------------------------
KUBE_VERSION=$(sed -nE 's/^KUBE_VERSION=(v[0-9.]+).*/\1/p' "$HERE/build.sh")
CONTAINERD_VERSION=v2.4.2  # github.com/containerd/containerd/v2: containerd, containerd-shim-runc-v2, ctr
RECIPE=1                   # bump when this script's recipe changes in a way that matters
# Debian packages (installed by --apt, checked always): runc, CNI plugins, a C toolchain for pause,
# mmdebstrap for the images (tests/cluster/images.py), iproute2 for the bridge.
APT_PACKAGES=(runc containernetworking-plugins mmdebstrap gcc libc6-dev iproute2 util-linux)
# -----------------------------------------------------------------------------------------------

BINARIES=(kubelet containerd containerd-shim-runc-v2 ctr pause)
KEY="node_k8s-${KUBE_VERSION}_containerd-${CONTAINERD_VERSION}_r${RECIPE}"
CACHE="${PODGRACE_CACHE:-$HOME/.cache/podgrace}"
BIN_DIR="$CACHE/bin/$KEY"
STAMP="$BIN_DIR/.complete"

die() { echo "build-node.sh: ERROR: $*" >&2; exit 1; }
CURRENT_STEP=setup
trap 'die "step [$CURRENT_STEP] failed (exit $?) at line $LINENO: $BASH_COMMAND"' ERR
[[ -n "$KUBE_VERSION" ]] || die "could not read KUBE_VERSION from $HERE/build.sh"

is_complete() {
  [[ -f "$STAMP" ]] || return 1
  local b
  for b in "${BINARIES[@]}"; do [[ -x "$BIN_DIR/$b" ]] || return 1; done
}

apt_install() {
  local missing=() p
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  echo "build-node.sh: apt-get install ${missing[*]}"
  apt-get update -qq || true
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

case "${1:-}" in
  --print-dir) echo "$BIN_DIR"; exit 0 ;;
  --check) if is_complete; then exit 0; else exit 1; fi ;;
  --apt) apt_install ;;
  --apt-only) apt_install; exit 0 ;;
  "") ;;
  *) die "unknown argument: $1 (use --print-dir, --check, --apt or --apt-only)" ;;
esac

if is_complete; then
  echo "build-node.sh: cached, nothing to build: $BIN_DIR"
  echo "$BIN_DIR"
  exit 0
fi

command -v go >/dev/null || die "'go' is not on PATH (need Go >= 1.26)"
command -v gcc >/dev/null || die "'gcc' is needed for the static pause binary (run with --apt)"
command -v flock >/dev/null || die "'flock' (util-linux) is needed"

mkdir -p "$CACHE"
exec 9>"$CACHE/build-node.lock"
echo "build-node.sh: waiting for the build lock $CACHE/build-node.lock ..."
flock 9
if is_complete; then
  echo "build-node.sh: built concurrently by another process: $BIN_DIR"
  echo "$BIN_DIR"
  exit 0
fi

export GOTOOLCHAIN=local CGO_ENABLED=0 GOWORK=off
export GOFLAGS="-buildvcs=false -modcacherw -trimpath"
export GOMODCACHE="$CACHE/go/mod"
export GOCACHE="${PODGRACE_GOCACHE:-$CACHE/go/build}"
export GOPROXY="${GOPROXY:-https://proxy.golang.org,direct}"

SRC="$CACHE/src"
STAGE="$BIN_DIR.partial"
rm -rf "$STAGE"
mkdir -p "$STAGE" "$SRC"

T_ALL=$SECONDS
step() {
  CURRENT_STEP=$1; shift
  local t0=$SECONDS
  echo "build-node.sh: >>> $CURRENT_STEP"
  "$@"
  echo "build-node.sh: <<< $CURRENT_STEP took $((SECONDS - t0))s"
  CURRENT_STEP=finish
}

quiet() {
  local log=$1; shift
  if ! "$@" >"$log" 2>&1; then
    echo "build-node.sh: '$*' failed; last lines of $log:" >&2
    tail -n 60 "$log" >&2
    return 1
  fi
}

new_module() {
  rm -rf "$1"
  mkdir -p "$1"
  printf 'module podgrace.local/nodebuild\n\ngo 1.26\n' >"$1/go.mod"
}

kubelet_build() {
  local dir="$SRC/kubelet-$KUBE_VERSION" gomod staging minor=${KUBE_VERSION#v1.} x ld="-s -w"
  minor=${minor%%.*}
  new_module "$dir"
  gomod=$(go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" \
    | python3 -c 'import json,sys; d=json.load(sys.stdin); sys.exit(d["Error"]) if d.get("Error") else print(d["GoMod"])')
  # Same recipe as build.sh: pin k8s.io/kubernetes' staging replace directives to published v0.X.Y.
  staging=$(go mod edit -json "$gomod" | python3 -c '
import json, sys
mod = json.load(sys.stdin)
ver = "v0." + sys.argv[1].lstrip("v").split(".", 1)[1]
required = {r["Path"] for r in mod.get("Require") or []}
for r in mod.get("Replace") or []:
    if r["New"]["Path"].startswith("./staging/") and r["Old"]["Path"] in required:
        print(r["Old"]["Path"] + "=" + r["Old"]["Path"] + "@" + ver)
' "$KUBE_VERSION")
  [[ -n "$staging" ]] || die "found no staging replace directives in $gomod"
  local args=() r
  for r in $staging; do args+=("-replace=$r"); done
  (cd "$dir" && go mod edit "${args[@]}")
  (cd "$dir" && quiet "$dir/go-get.log" go get "k8s.io/kubernetes/cmd/kubelet@$KUBE_VERSION")
  for x in client-go/pkg/version component-base/version; do
    ld+=" -X k8s.io/$x.gitVersion=$KUBE_VERSION -X k8s.io/$x.gitMajor=1 -X k8s.io/$x.gitMinor=$minor"
    ld+=" -X k8s.io/$x.gitTreeState=clean -X k8s.io/$x.buildDate=1970-01-01T00:00:00Z"
  done
  (cd "$dir" && quiet "$dir/go-build.log" go build -ldflags "$ld" -o "$STAGE/kubelet" k8s.io/kubernetes/cmd/kubelet)
}

containerd_build() {
  local dir="$SRC/containerd-$CONTAINERD_VERSION" m=github.com/containerd/containerd/v2
  local pkgs=("$m/cmd/containerd" "$m/cmd/containerd-shim-runc-v2" "$m/cmd/ctr")
  new_module "$dir"
  # go get the three packages (not the bare module), or go.sum lacks their dependencies' entries
  (cd "$dir" && quiet "$dir/go-get.log" go get "${pkgs[@]/%/@$CONTAINERD_VERSION}")
  local ld="-s -w -X $m/version.Version=$CONTAINERD_VERSION -X $m/version.Revision=podgrace"
  (cd "$dir" && quiet "$dir/go-build.log" go build -tags "no_btrfs no_devmapper no_zfs no_aufs" \
    -ldflags "$ld" -o "$STAGE/" "${pkgs[@]}")
}

pause_build() {
  # The sandbox ("pause") container's only process: sleeps, reaps children, exits on SIGINT/SIGTERM.
  cat >"$STAGE/pause.c" <<'EOF'
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
static void quit(int sig) { (void)sig; _exit(0); }
static void reap(int sig) { (void)sig; while (waitpid(-1, NULL, WNOHANG) > 0) {} }
int main(void) {
  struct sigaction q = {.sa_handler = quit}, r = {.sa_handler = reap, .sa_flags = SA_NOCLDSTOP};
  sigaction(SIGINT, &q, NULL);
  sigaction(SIGTERM, &q, NULL);
  sigaction(SIGCHLD, &r, NULL);
  for (;;) pause();
  return 1;
}
EOF
  gcc -static -Os -s -o "$STAGE/pause" "$STAGE/pause.c"
  rm "$STAGE/pause.c"
}

echo "build-node.sh: building into $BIN_DIR with $(go env GOVERSION), GOMODCACHE=$GOMODCACHE GOCACHE=$GOCACHE"
step "static pause" pause_build
step "containerd $CONTAINERD_VERSION" containerd_build
step "kubelet $KUBE_VERSION" kubelet_build

for b in "${BINARIES[@]}"; do [[ -x "$STAGE/$b" ]] || die "binary $b was not produced"; done
"$STAGE/kubelet" --version
"$STAGE/containerd" --version

printf 'key=%s\nbuilt=%s\ngo=%s\nseconds=%s\n' "$KEY" "$(date -u +%FT%TZ)" "$(go env GOVERSION)" \
  "$((SECONDS - T_ALL))" >"$STAGE/.complete.tmp"
rm -rf "$BIN_DIR"
mv "$STAGE" "$BIN_DIR"
mv "$BIN_DIR/.complete.tmp" "$STAMP"
echo "build-node.sh: done in $((SECONDS - T_ALL))s: $BIN_DIR"
echo "$BIN_DIR"
