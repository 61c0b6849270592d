"""`podgrace audit --cluster`'s arguments and the errors it gives before reaching any server (the rest is
tested against the real control plane in tests/e2e/test_cluster_audit.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from podgrace.cli.main import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exit_:  # argparse
        code = int(exit_.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_cluster_and_file_are_mutually_exclusive(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "audit", "--cluster", "-f", "x.yaml")
    assert (code, out) == (2, "") and "not allowed with argument" in err
    code, out, err = run(capsys, "audit")
    assert (code, out) == (2, "") and "one of the arguments -f/--filename --cluster is required" in err


@pytest.mark.parametrize("flag", [["--context", "prod"], ["-n", "shop"], ["-A"]])
def test_cluster_only_flags_need_cluster(capsys: pytest.CaptureFixture[str], flag: list[str]) -> None:
    code, out, err = run(capsys, "audit", "-f", "x.yaml", *flag)
    assert (code, out) == (2, "") and "--context, -n and -A go with --cluster" in err


def test_missing_kubeconfig_is_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    absent = tmp_path / "absent"
    monkeypatch.setenv("KUBECONFIG", str(absent))
    code, out, err = run(capsys, "audit", "--cluster")
    assert (code, out) == (2, "")
    assert err.splitlines() == [
        f"podgrace audit: kubeconfig: none found at {absent} "
        "(set KUBECONFIG or pass a context from an existing kubeconfig)"
    ]


def test_unknown_context_names_the_known_ones(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "kubeconfig"
    config.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [
                    {"name": "b", "context": {"cluster": "c", "user": "u"}},
                    {"name": "a", "context": {"cluster": "c", "user": "u"}},
                ],
                "current-context": "a",
            }
        )
    )
    monkeypatch.setenv("KUBECONFIG", str(config))
    code, out, err = run(capsys, "audit", "--cluster", "--context", "prod")
    assert (code, out) == (2, "")
    assert err.splitlines() == ["podgrace audit: kubeconfig: no context named 'prod' (contexts: a, b)"]
