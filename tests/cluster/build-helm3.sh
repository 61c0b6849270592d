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
# Environment: PODGRACE_CACHE (default $HOME/.cache/podgrace), PODGRACE_GOCACHE (default $PODGRACE_CACHE/go/build)
set -Eeuo pipefail

# ---- pinned version: the newest v3.x tag the Go module proxy served on 2026-11-30 ----------------
HELM3_VERSION=v3.22.0    # helm.sh/helm/v3 (`go list -m -versions helm.sh/helm/v3`)
RECIPE=2                 # 2: the binary is named helm (Helm 3's field manager is its argv[0]'s base name)
# -----------------------------------------------------------------------------------------------

KEY="helm3-${HELM3_VERSION}_r${RECIPE}"
CACHE="${PODGRACE_CACHE:-$HOME/.cache/podgrace}"
BIN_DIR="$CACHE/bin/$KEY"
BIN="$BIN_DIR/helm"  # named helm: Helm 3 writes with the field manager basename(argv[0])
STAMP="$BIN_DIR/.complete"

die() { echo "build-helm3.sh: ERROR: $*" >&2; exit 1; }

is_complete() { [[ -f "$STAMP" && -x "$BIN" ]]; }

case "${1:-}" in
  --print-path) echo "$BIN"; exit 0 ;;
  --check) if is_complete; then exit 0; else exit 1; fi ;;
  "") ;;
  *) die "unknown argument: $1 (use --print-path or --check)" ;;
esac

if is_complete; then
  echo "build-helm3.sh: cached, nothing to build: $BIN"
  echo "$BIN"
  exit 0
fi

command -v go >/dev/null || die "'go' is not on PATH (Helm ${HELM3_VERSION} needs go >= 1.26)"
command -v flock >/dev/null || die "'flock' (util-linux) is needed"
mkdir -p "$CACHE"
exec 9>"$CACHE/build-helm3.lock"  # its own lock: does not wait for a control plane build
flock 9
if is_complete; then
  echo "build-helm3.sh: built concurrently by another process: $BIN"
  echo "$BIN"
  exit 0
fi

export GOTOOLCHAIN=local CGO_ENABLED=0 GOWORK=off
export GOFLAGS="-buildvcs=false -modcacherw -trimpath"
export GOMODCACHE="$CACHE/go/mod"
export GOCACHE="${PODGRACE_GOCACHE:-$CACHE/go/build}"
export GOPROXY="${GOPROXY:-https://proxy.golang.org,direct}"

t0=$SECONDS
STAGE="$BIN_DIR.partial"
rm -rf "$STAGE"
mkdir -p "$STAGE"
log="$STAGE/go-install.log"
echo "build-helm3.sh: building helm.sh/helm/v3@$HELM3_VERSION with $(go env GOVERSION) ..."
if ! env GOBIN="$STAGE" go install \
  -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM3_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean" \
  "helm.sh/helm/v3/cmd/helm@$HELM3_VERSION" >"$log" 2>&1; then
  tail -n 60 "$log" >&2
  die "go install helm.sh/helm/v3/cmd/helm@$HELM3_VERSION failed"
fi
"$STAGE/helm" version --short
printf 'key=%s\nbuilt=%s\ngo=%s\nseconds=%s\n' "$KEY" "$(date -u +%FT%TZ)" "$(go env GOVERSION)" \
  "$((SECONDS - t0))" >"$STAGE/.complete.tmp"
rm -rf "$BIN_DIR"
mv "$STAGE" "$BIN_DIR"
mv "$BIN_DIR/.complete.tmp" "$STAMP"
echo "build-helm3.sh: done in $((SECONDS - t0))s: $BIN"
echo "$BIN"
