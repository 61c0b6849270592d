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
NAME=build-node.sh
# shellcheck source=tests/cluster/buildlib.sh
source "$HERE/buildlib.sh"
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

exit_if_cached "$BIN_DIR"
command -v gcc >/dev/null || die "'gcc' is needed for the static pause binary (run with --apt)"
begin_build build-node.lock "$BIN_DIR"

kubelet_build() {
  local dir="$SRC/kubelet-$KUBE_VERSION"
  new_module "$dir" podgrace.local/nodebuild
  # the same recipe as build.sh's control plane (buildlib.sh), in a scratch module of its own
  kube_scratch_module "$dir" k8s.io/kubernetes/cmd/kubelet
  (cd "$dir" && quiet "$dir/go-build.log" go build -ldflags "$(kube_ldflags)" -o "$STAGE/kubelet" \
    k8s.io/kubernetes/cmd/kubelet)
}

containerd_build() {
  local dir="$SRC/containerd-$CONTAINERD_VERSION" m=github.com/containerd/containerd/v2
  local pkgs=("$m/cmd/containerd" "$m/cmd/containerd-shim-runc-v2" "$m/cmd/ctr")
  new_module "$dir" podgrace.local/nodebuild
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

step "static pause" pause_build
step "containerd $CONTAINERD_VERSION" containerd_build
step "kubelet $KUBE_VERSION" kubelet_build

for b in "${BINARIES[@]}"; do [[ -x "$STAGE/$b" ]] || die "binary $b was not produced"; done
"$STAGE/kubelet" --version
"$STAGE/containerd" --version

finish_build "$BIN_DIR"
