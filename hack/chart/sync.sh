#!/usr/bin/env bash
# Copy the canonical CRD and built-in ShutdownProfiles into the Helm chart.
#
#   hack/chart/sync.sh          copy crds/*.yaml -> charts/podgrace/crds/ and
#                               operator/podgrace/core/builtin/profiles.yaml -> charts/podgrace/files/builtin-profiles.yaml
#   hack/chart/sync.sh --check  copy nothing; exit 1 (and list them) if a copy differs from its source
#
# The top-level files are the source of truth; tests/chart/test_chart_sync.py fails when the copies drift.
set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CHART="$ROOT/charts/podgrace"

PAIRS=("$ROOT/operator/podgrace/core/builtin/profiles.yaml=$CHART/files/builtin-profiles.yaml")
for crd in "$ROOT"/crds/*.yaml; do
  PAIRS+=("$crd=$CHART/crds/$(basename "$crd")")
done

check=0
case "${1:-}" in
  --check) check=1 ;;
  "") ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

# A CRD that no longer exists at the top level must not linger in the chart.
stale=()
for copy in "$CHART"/crds/*.yaml; do
  [[ -e "$copy" ]] || continue
  [[ -e "$ROOT/crds/$(basename "$copy")" ]] || stale+=("$copy")
done

drift=0
for pair in "${PAIRS[@]}"; do
  src=${pair%%=*} dst=${pair#*=}
  if cmp -s "$src" "$dst"; then
    continue
  fi
  if ((check)); then
    echo "out of sync: ${dst#"$ROOT"/} (source: ${src#"$ROOT"/})"
    drift=1
  else
    mkdir -p "$(dirname "$dst")"
    cp "$src" "$dst"
    echo "copied ${src#"$ROOT"/} -> ${dst#"$ROOT"/}"
  fi
done
for copy in "${stale[@]}"; do
  if ((check)); then
    echo "stale: ${copy#"$ROOT"/} has no source in crds/"
    drift=1
  else
    rm -f "$copy"
    echo "removed stale ${copy#"$ROOT"/}"
  fi
done
if ((check && drift)); then
  echo "run hack/chart/sync.sh to update the chart's copies" >&2
  exit 1
fi
