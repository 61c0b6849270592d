"""charts/podgrace/README.md stays true to the chart: the values table is generated from values.yaml (and
documents every value), the CRD upgrade path is the one NOTES prints, and every dashboard row is described.
"""

from __future__ import annotations

import json

import yaml
from hack.chart import values_table

CHART = values_table.CHART
README = (CHART / "README.md").read_text()
UPGRADE = "kubectl apply --server-side --force-conflicts --field-manager=podgrace-crds -f -"


def test_every_value_is_documented_in_values_yaml() -> None:
    text = (CHART / "values.yaml").read_text()
    missing = values_table.undocumented_leaves(yaml.safe_load(text), values_table.documented_keys(text))
    assert not missing, f"values without a `# --` comment in values.yaml: {missing}"


def test_readme_values_table_is_up_to_date() -> None:
    assert values_table.readme_table(README) == values_table.table(), (
        "the README's values table is out of date: run python hack/chart/values_table.py --write"
    )


def test_every_schema_property_has_a_row_or_a_documented_parent() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    rows = {".".join(p) for p in values_table.documented_keys((CHART / "values.yaml").read_text())}

    def walk(node: dict[str, object], path: tuple[str, ...]) -> list[str]:
        name = ".".join(path)
        if name in rows:
            return []
        props = node.get("properties")
        if isinstance(props, dict) and props:
            return [m for k, v in props.items() for m in walk(v, (*path, k))]
        return [name]

    missing = [m for m in walk(schema, ()) if m != "global"]
    assert not missing, f"schema properties missing from the README table: {missing}"


def test_readme_documents_the_crd_upgrade_path() -> None:
    assert f"helm show crds CHART --version X.Y.Z \\\n  | {UPGRADE}" in README
    assert "helm upgrade podgrace" in README
    notes = (CHART / "templates" / "NOTES.txt").read_text()
    assert UPGRADE.replace(" -f -", "") in notes


def test_readme_describes_every_dashboard_row() -> None:
    dashboard = json.loads((CHART / "files" / "dashboard.json").read_text())
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    for title in rows:
        assert f"- **{title}** — " in README, f"dashboard row {title!r} is not described in the README"


def test_readme_lists_every_alert() -> None:
    rules = (CHART / "templates" / "prometheusrule.yaml").read_text()
    alerts = [
        line.split("alert:")[1].strip() for line in rules.splitlines() if line.strip().startswith("- alert:")
    ]
    assert alerts
    for alert in alerts:
        assert f"`{alert}`" in README, alert
