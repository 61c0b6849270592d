"""Upgrading podgrace on the real API server: a hook an earlier podgrace wrote, in a form this one no longer
writes, is rewritten once (one write, one rollout, no Warning), and then left alone.

The case: podgrace before b68a399 gave Apache a graceful-stop hook (SIGWINCH to the parent); it now writes
a graceful restart (SIGUSR1, README "the fallback hooks" says why). The earlier write is made here the way
that podgrace made it: a strategic-merge patch under field manager `podgrace` (operation Update), on a
Deployment a GitOps owner applies with server-side apply."""

from __future__ import annotations

import json
import time
from typing import Any

from tests.support.accepted_writes import accepted_writes
from tests.support.podgrace_env import deployment, running_operator, wait_until

NS = "upgrade-e2e"
NAME = "legacy-apache"
# The hook of podgrace before b68a399 for Apache with the `apache` profile's timings (5 s, then up to 33 s).
WINCH_HOOK = (
    "# podgrace graceful stop\nsleep 5\nm=1\nfor d in /proc/[0-9]*; do\n"
    '  read -r c <"$d/comm" || continue\n'
    '  case $c in apache2|httpd) ;; *) continue ;; esac\n  read -r s <"$d/stat" || continue\n'
    '  set -- ${s##*) }\n  c=; read -r c <"/proc/$2/comm"\n'
    "  case $c in apache2|httpd) ;; *) m=${d#/proc/}; break ;; esac\ndone 2>/dev/null\n"
    'kill -WINCH "$m"\ni=0\nwhile kill -0 "$m" 2>/dev/null && [ "$i" -lt 33 ]; do\n  k=\n'
    '  for d in /proc/[0-9]*; do\n    read -r s <"$d/stat" || continue\n    set -- ${s##*) }\n'
    '    [ "$1" != Z ] && [ "$2" = "$m" ] && k=1 && break\n  done 2>/dev/null\n'
    '  [ -n "$k" ] || break\n  sleep 1; i=$((i+1))\ndone'
)


def _get(cluster: Any) -> dict[str, Any]:
    obj: dict[str, Any] = cluster.kubectl_json("get", "deployment", NAME, "-n", NS, "--show-managed-fields")
    return obj


def _hook(obj: dict[str, Any]) -> str:
    command: list[str] = obj["spec"]["template"]["spec"]["containers"][0]["lifecycle"]["preStop"]["exec"][
        "command"
    ]
    return command[2]


def _replica_sets(cluster: Any) -> int:
    return len(cluster.kubectl_json("get", "replicasets", "-n", NS, "-l", f"app={NAME}")["items"])


def test_an_earlier_podgraces_apache_hook_is_rewritten_once(cluster: Any) -> None:
    cluster.kubectl("create", "namespace", NS)
    obj = deployment(
        NAME, NS, {"podgrace.dev/profile": "apache"}, containers=[{"name": "apache", "image": "httpd:2.4"}]
    )
    cluster.kubectl(
        "apply", "--server-side", "--field-manager=gitops", "-f", "-", input=json.dumps(obj)
    )  # fmt: skip
    earlier = {
        "spec": {
            "template": {
                "spec": {
                    "terminationGracePeriodSeconds": 40,
                    "containers": [
                        {
                            "name": "apache",
                            "lifecycle": {"preStop": {"exec": {"command": ["/bin/sh", "-c", WINCH_HOOK]}}},
                        }
                    ],
                }
            }
        }
    }
    cluster.kubectl(
        "patch", "deployment", NAME, "-n", NS, "--type=strategic", "--field-manager=podgrace",
        "-p", json.dumps(earlier),
    )  # fmt: skip
    wait_until("the earlier podgrace's rollout", lambda: _replica_sets(cluster) == 2)
    assert "kill -WINCH" in _hook(_get(cluster))

    t0 = time.time()
    with running_operator(cluster, "--namespace", NS):
        upgraded = wait_until("the hook rewritten", lambda: "kill -USR1" in _hook(_get(cluster)), timeout=60)
        wait_until("the upgrade's rollout", lambda: _replica_sets(cluster) == 3)
        time.sleep(5)  # a second write or a rollout storm would show by now
        obj = _get(cluster)
        assert [(w.verb, w.name) for w in accepted_writes(cluster, t0, namespace=NS)] == [("patch", NAME)]
        assert _replica_sets(cluster) == 3
        assert obj["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 40
        assert "kill -WINCH" not in _hook(obj)
        fields = obj["metadata"]["managedFields"]
        assert [(m["operation"], m.get("subresource")) for m in fields if m["manager"] == "podgrace"] == [
            ("Update", None)
        ]
        about = f"involvedObject.name={NAME}"
        events = cluster.kubectl_json("get", "events", "-n", NS, "--field-selector", about)
        warnings = [(e["reason"], e["message"]) for e in events["items"] if e["type"] == "Warning"]
        assert warnings == []
    assert upgraded
