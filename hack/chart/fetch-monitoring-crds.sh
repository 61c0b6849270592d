#!/usr/bin/env bash
# Fetch the prometheus-operator CRDs the chart's optional objects need (ServiceMonitor, PrometheusRule)
# from the Go module proxy (no GitHub release downloads) and cache them.
#
#   hack/chart/fetch-monitoring-crds.sh              print the cache dir (last line) holding the CRD YAMLs
#   PROMETHEUS_OPERATOR_VERSION=v0.85.0 hack/...     pin a version (default: the proxy's latest v0.x)
#
# Environment: PODGRACE_CACHE (default $HOME/.cache/podgrace), GOPROXY, GOMODCACHE as usual for go.
set -Eeuo pipefail

CACHE="${PODGRACE_CACHE:-$HOME/.cache/podgrace}"
MODULE=github.com/prometheus-operator/prometheus-operator
APIS_MODULE=$MODULE/pkg/apis/monitoring
VERSION="${PROMETHEUS_OPERATOR_VERSION:-latest}"
CRDS=(monitoring.coreos.com_servicemonitors.yaml monitoring.coreos.com_prometheusrules.yaml)

die() { echo "fetch-monitoring-crds.sh: ERROR: $*" >&2; exit 1; }
command -v go >/dev/null || die "'go' is not on PATH"
command -v python3 >/dev/null || die "'python3' is needed to read go's JSON"
export GOTOOLCHAIN=local GOFLAGS="${GOFLAGS:--modcacherw}" GOWORK=off

# download MODULE@VERSION -> prints "<version> <dir>"
download() {
  go mod download -json "$1@$2" | python3 -c '
import json, sys
d = json.load(sys.stdin)
if d.get("Error"):
    sys.exit(d["Error"])
print(d["Version"], d["Dir"])'
}

# Resolve the version first (cheap, .info only) so a warm cache needs no module zip.
if [[ "$VERSION" == latest ]]; then
  if ! VERSION=$(go list -m -json "$MODULE@latest" 2>/dev/null \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["Version"])' 2>/dev/null); then
    # No proxy: fall back to the newest version already cached.
    VERSION=$(find "$CACHE/monitoring-crds" -mindepth 1 -maxdepth 1 -type d -name 'v0.*' ! -name '*.tmp' \
      -printf '%f\n' 2>/dev/null | sort -V | tail -1)
    [[ -n "$VERSION" ]] || die "cannot resolve $MODULE@latest and nothing is cached"
  fi
fi
[[ "$VERSION" == v0.* ]] || die "expected a v0.x prometheus-operator, got $VERSION"

OUT="$CACHE/monitoring-crds/$VERSION"
complete() { local f; for f in "${CRDS[@]}"; do [[ -s "$OUT/$f" ]] || return 1; done; }
if complete; then
  echo "$OUT"
  exit 0
fi

read -r got dir < <(download "$MODULE" "$VERSION")
echo "fetch-monitoring-crds.sh: $MODULE@$got in $dir" >&2
src=""
for cand in "$dir/example/prometheus-operator-crd" "$dir/example/prometheus-operator-crd-full"; do
  if [[ -f "$cand/${CRDS[0]}" ]]; then src=$cand; break; fi
done
if [[ -z "$src" ]]; then
  # Not in the main module zip: the API module ships generated CRDs in some versions.
  read -r _ apis < <(download "$APIS_MODULE" "$VERSION") || die "no $APIS_MODULE@$VERSION"
  src=$(find "$apis" -name "${CRDS[0]}" -printf '%h\n' | head -1)
  [[ -n "$src" ]] || die "no ${CRDS[0]} in $MODULE@$VERSION nor $APIS_MODULE@$VERSION"
fi

mkdir -p "$OUT.tmp"
for f in "${CRDS[@]}"; do
  [[ -f "$src/$f" ]] || die "$src has no $f"
  cp "$src/$f" "$OUT.tmp/$f"
done
chmod -R u+w "$OUT.tmp"
rm -rf "$OUT"
mv "$OUT.tmp" "$OUT"
echo "fetch-monitoring-crds.sh: cached ${CRDS[*]} in $OUT" >&2
echo "$OUT"
