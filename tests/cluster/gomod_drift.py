"""List what a scratch module's build list changed in a dependency's own requirements (build*.sh).

    cd SCRATCH_MODULE && python3 gomod_drift.py MAIN_PACKAGE

build-helm3.sh builds Helm 3 in a scratch module whose versions are raised to another build's (Helm 4's)
so that the Go build cache is shared. This prints every module that MAIN_PACKAGE compiles in at another
version than its own module's go.mod requires (old -> new) and exits 1 when a k8s.io module moves by more
than a patch release (or downwards): a minor k8s.io bump changes APIs the binary was not built for.
"""

from __future__ import annotations

import re
import subprocess
import sys
from typing import NamedTuple

STRICT_PREFIX = "k8s.io/"  # the Kubernetes libraries: patch-level moves only
_SEMVER = re.compile(r"^v(\d+)\.(\d+)\.(\d+)")


class Change(NamedTuple):
    module: str
    old: str
    new: str


def requirements(graph: str, owner: str) -> dict[str, str]:
    """The requirements of `owner` (module@version) in `go mod graph` output."""
    reqs: dict[str, str] = {}
    for line in graph.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == owner:
            path, _, version = parts[1].partition("@")
            reqs[path] = version
    return reqs


def changes(required: dict[str, str], resolved: dict[str, str]) -> list[Change]:
    return [
        Change(m, v, resolved[m]) for m, v in sorted(required.items()) if m in resolved and resolved[m] != v
    ]


def _key(version: str) -> tuple[int, int, int] | None:
    m = _SEMVER.match(version)
    return (int(m[1]), int(m[2]), int(m[3])) if m else None


def refused(change: Change) -> bool:
    """A k8s.io module that moved to another minor (or major) release, or backwards."""
    if not change.module.startswith(STRICT_PREFIX):
        return False
    old, new = _key(change.old), _key(change.new)
    if old is None or new is None:
        return True
    return old[:2] != new[:2] or new < old


def _go(*args: str) -> str:
    return subprocess.run(["go", *args], check=True, capture_output=True, text=True).stdout


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: gomod_drift.py MAIN_PACKAGE (in the scratch module's directory)", file=sys.stderr)
        return 2
    owner = _go("list", "-f", "{{.Module.Path}}@{{.Module.Version}}", argv[0]).strip()
    # the modules whose packages the binary compiles, at the version the build uses (a replace's, if any)
    fmt = "{{with .Module}}{{.Path}} {{with .Replace}}{{.Version}}{{else}}{{.Version}}{{end}}{{end}}"
    resolved = dict(
        line.split() for line in _go("list", "-deps", "-f", fmt, argv[0]).splitlines() if " " in line
    )
    found = changes(requirements(_go("mod", "graph"), owner), resolved)
    bad = [c for c in found if refused(c)]
    for c in found:
        print(f"gomod_drift: {owner}: {c.module} {c.old} -> {c.new}{'  REFUSED' if c in bad else ''}")
    if bad:
        print(f"gomod_drift: {owner}: a k8s.io module moves by more than a patch release", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
