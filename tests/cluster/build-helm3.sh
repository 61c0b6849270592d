#!/usr/bin/env bash
# Build (and cache) Helm 3 from the Go module helm.sh/helm/v3, beside build.sh's Helm 4.
#
#   tests/cluster/build-helm3.sh              build if missing, print the binary's path on the last line
#   tests/cluster/build-helm3.sh --print-path only print the binary's path (no build, no network)
#   tests/cluster/build-helm3.sh --check      exit 0 if the binary is built
#
# Helm 3 is a co-owner podgrace must coexist with: it writes with a three-way merge (Update/patch without
# server-side apply) and sets its chart's values back on every upgrade. It has its own cache key so that a
# Helm 3 version bump never rebuilds the control plane (build.sh's key stays as it is).
#
# Shared Go build cache: Helm 3 is built in a scratch module that requires both helm.sh/helm/v3/cmd/helm and
# build.sh's helm.sh/helm/v4/cmd/helm (its version read from build.sh), so that MVS gives Helm 3 the dependency
# versions Helm 4 was just built with and Helm 3 mostly compiles its own packages (after a cold build.sh:
# 50 of 728 packages to compile instead of 504, 23 s instead of 132 s; Helm 4's versions do not move). gomod_drift.py prints what moved and stops the build if a k8s.io module would
# move by more than a patch release. For v3.22.0 beside v4.3.1, against Helm 3's go.mod (old -> new):
#   k8s.io/{api,apiextensions-apiserver,apimachinery,apiserver,cli-runtime,client-go,component-base,kubectl}
#     v0.37.0 -> v0.37.1; sigs.k8s.io/kustomize/kyaml v0.21.1 -> v0.21.2;
#   golang.org/x/crypto v0.55.0 -> v0.58.0, x/net v0.57.0 -> v0.60.0, x/sync v0.22.0 -> v0.24.0,
#     x/sys v0.47.0 -> v0.49.0, x/term v0.45.0 -> v0.47.0, x/text v0.41.0 -> v0.43.0;
#   google.golang.org/protobuf v1.36.12-0.20260120151049-f2248ac996af -> v1.36.12;
#   github.com/fatih/color v1.13.0 -> v1.19.0, github.com/mattn/go-colorable v0.1.13 -> v0.1.14,
#     github.com/go-errors/errors v1.4.2 -> v1.5.1, github.com/go-logr/logr v1.4.3 -> v1.4.4,
#     github.com/google/gnostic-models v0.7.0 -> v0.7.1.
# All upgrades, none of a k8s.io module beyond a patch; `helm version` still reports v3.22.0.
#
# Environment: PODGRACE_CACHE (default $HOME/.cache/podgrace), PODGRACE_GOCACHE (default $PODGRACE_CACHE/go/build)
set -Eeuo pipefail

# ---- pinned version: the newest v3.x tag the Go module proxy served on 2026-11-30 ----------------
HELM3_VERSION=v3.22.0    # helm.sh/helm/v3 (`go list -m -versions helm.sh/helm/v3`)
# 2: the binary is named helm (Helm 3's field manager is its argv[0]'s base name)
# 3: built beside Helm 4's dependency versions (a shared scratch module), see above
RECIPE=3
# -----------------------------------------------------------------------------------------------
HERE=$(cd "$(dirname "$0")" && pwd)
HELM4_VERSION=$(sed -nE 's/^HELM_VERSION=(v[0-9.]+).*/\1/p' "$HERE/build.sh")

KEY="helm3-${HELM3_VERSION}_helm4-${HELM4_VERSION}_r${RECIPE}"
NAME=build-helm3.sh
# shellcheck source=tests/cluster/buildlib.sh
source "$HERE/buildlib.sh"
BIN="$BIN_DIR/helm"  # named helm: Helm 3 writes with the field manager basename(argv[0])
[[ -n "$HELM4_VERSION" ]] || die "could not read HELM_VERSION from $HERE/build.sh"

is_complete() { [[ -f "$STAMP" && -x "$BIN" ]]; }

case "${1:-}" in
  --print-path) echo "$BIN"; exit 0 ;;
  --check) if is_complete; then exit 0; else exit 1; fi ;;
  "") ;;
  *) die "unknown argument: $1 (use --print-path or --check)" ;;
esac

exit_if_cached "$BIN"
begin_build build-helm3.lock "$BIN"  # its own lock: does not wait for a control plane build

log="$STAGE/go-build.log"
dir="$SRC/helm3-$HELM3_VERSION"  # the scratch module: Helm 3 and Helm 4, resolved together
new_module "$dir"
echo "build-helm3.sh: building helm.sh/helm/v3@$HELM3_VERSION (beside helm/v4@$HELM4_VERSION's versions) ..."
if ! (cd "$dir" && go get "helm.sh/helm/v3/cmd/helm@$HELM3_VERSION" "helm.sh/helm/v4/cmd/helm@$HELM4_VERSION" \
  && python3 "$HERE/gomod_drift.py" helm.sh/helm/v3/cmd/helm \
  && go build -o "$STAGE/helm" \
    -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM3_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean" \
    helm.sh/helm/v3/cmd/helm) >"$log" 2>&1; then
  tail -n 60 "$log" >&2
  die "building helm.sh/helm/v3/cmd/helm@$HELM3_VERSION in $dir failed"
fi
grep '^gomod_drift:' "$log" || true
"$STAGE/helm" version --short
finish_build "$BIN"
