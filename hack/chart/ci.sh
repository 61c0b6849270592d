#!/usr/bin/env bash
# The chart's CI checks, in order of cost:
#   1. the chart's copies of the CRD and built-in profiles equal the canonical files (hack/chart/sync.sh --check)
#   2. the README's values table is generated from values.yaml (hack/chart/values_table.py --check)
#   3. helm lint --strict with the default values and each ci/*-values.yaml (all toggles on, namespaced RBAC)
#   4. the chart's unit tests (RBAC, schema, rendering, promtool check/test rules, docs)
#   5. unless --no-e2e: every rendered manifest validated by a real kube-apiserver, a real install, and the
#      admission policy refusing forged writes of the operator's ServiceAccount (tests/e2e/test_admission_policy.py)
#
# helm: $PODGRACE_HELM, else the newest $HOME/.cache/podgrace/bin/*/helm (tests/cluster/build.sh), else PATH.
set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CHART="$ROOT/charts/podgrace"
cd "$ROOT"

e2e=1
case "${1:-}" in
  --no-e2e) e2e=0 ;;
  "") ;;
  *) echo "usage: $0 [--no-e2e]" >&2; exit 2 ;;
esac

HELM=$(python3 -c 'import sys; sys.path.insert(0, "hack/chart"); import helmchart; print(helmchart.find_helm() or "")')
[[ -n "$HELM" ]] || { echo "ci.sh: no helm (set PODGRACE_HELM or run tests/cluster/build.sh)" >&2; exit 1; }
command -v promtool >/dev/null || { echo "ci.sh: no promtool (apt-get install -y prometheus)" >&2; exit 1; }
export PODGRACE_HELM="$HELM"
HOME_DIR=$(mktemp -d)
trap 'rm -rf "$HOME_DIR"' EXIT
export HELM_CACHE_HOME="$HOME_DIR/cache" HELM_CONFIG_HOME="$HOME_DIR/config" HELM_DATA_HOME="$HOME_DIR/data"

echo "--- sync check"
hack/chart/sync.sh --check
echo "--- values table check"
python3 hack/chart/values_table.py --check
echo "--- helm lint --strict ($("$HELM" version --short))"
"$HELM" lint --strict "$CHART"
for values in "$CHART"/ci/*-values.yaml; do
  "$HELM" lint --strict "$CHART" --values "$values"
done
echo "--- unit tests"
python3 -m pytest -q tests/chart/test_chart_*.py
if ((e2e)); then
  echo "--- e2e: server-side validation, a real install, the admission policy at work"
  python3 -m pytest -q tests/e2e/test_chart_schema.py tests/e2e/test_admission_policy.py
fi
echo "--- chart CI passed"
