"""Upgrading podgrace on the real API server: a hook an earlier podgrace wrote, in a form this one no longer
writes, is rewritten once (one write, one rollout, no Warning), and then left alone.

The cases:
- podgrace before b68a399 gave Apache a graceful-stop hook (SIGWINCH to the parent); it now writes a
  graceful restart (SIGUSR1, README "the fallback hooks" says why);
- podgrace before 2026-11-30's fourth session gave a generic rule with `stopSignal: SIGTERM` a hook that
  sent SIGTERM to PID 1 and waited (it ended with PID 1: FailedPreStopHook); it now writes a sleep, and the
  kubelet sends that SIGTERM itself.
The earlier write is made here the way that podgrace made it: a strategic-merge patch under field manager
`podgrace` (operation Update), on a Deployment a GitOps owner applies with server-side apply."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from tests.support.accepted_writes import accepted_writes
from tests.support.podgrace_env import deployment, generic_profile, running_operator, wait_until

from podgrace.core.hook_intent import SignalAndWait, render
from podgrace.core.signals import Role, Signal

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


# The generic hook of podgrace before this change for a rule `stopSignal: SIGTERM` with 5 s of preStop sleep
# and 10 s of drain (grace 30: it waited up to 30 - 5 - 2 = 23 s). That template is unchanged (a generic rule
# with another signal still gets it), so it is rendered here rather than spelled out.
TERM_HOOK = render(SignalAndWait(5, Signal.SIGTERM, 23, Role.GENERIC))["exec"]["command"][2]
TERM_PROFILE = generic_profile("upgrade-term", "SIGTERM", {"images": ["*"]})


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    profile: str
    container: dict[str, str]
    earlier_hook: str
    grace: int
    rewritten: Callable[[dict[str, Any]], bool]  # the preStop handler this podgrace writes instead

    @property
    def namespace(self) -> str:
        return f"upgrade-{self.name}"


CASES = [
    Case(
        "legacy-apache",
        "apache",
        {"name": "apache", "image": "httpd:2.4"},
        WINCH_HOOK,
        40,
        lambda h: "kill -USR1" in h["exec"]["command"][2] and "kill -WINCH" not in h["exec"]["command"][2],
    ),
    Case(
        "generic-sigterm",
        "upgrade-term",
        {"name": "app", "image": "example/app:1"},
        TERM_HOOK,
        30,
        lambda h: h == {"sleep": {"seconds": 5}},
    ),
]


def _get(cluster: Any, case: Case) -> dict[str, Any]:
    obj: dict[str, Any] = cluster.kubectl_json(
        "get", "deployment", case.name, "-n", case.namespace, "--show-managed-fields"
    )
    return obj


def _hook(obj: dict[str, Any]) -> dict[str, Any]:
    handler: dict[str, Any] = obj["spec"]["template"]["spec"]["containers"][0]["lifecycle"]["preStop"]
    return handler


def _replica_sets(cluster: Any, case: Case) -> int:
    selector = f"app={case.name}"
    return len(cluster.kubectl_json("get", "replicasets", "-n", case.namespace, "-l", selector)["items"])


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_an_earlier_podgraces_hook_is_rewritten_once(cluster: Any, case: Case) -> None:
    ns, name = case.namespace, case.name
    cluster.kubectl("create", "namespace", ns)
    if case.profile == TERM_PROFILE["metadata"]["name"]:
        cluster.kubectl("apply", "-f", "-", input=json.dumps(TERM_PROFILE))
    obj = deployment(name, ns, {"podgrace.dev/profile": case.profile}, containers=[case.container])
    cluster.kubectl(
        "apply", "--server-side", "--field-manager=gitops", "-f", "-", input=json.dumps(obj)
    )  # fmt: skip
    earlier = {
        "spec": {
            "template": {
                "spec": {
                    "terminationGracePeriodSeconds": case.grace,
                    "containers": [
                        {
                            "name": case.container["name"],
                            "lifecycle": {
                                "preStop": {"exec": {"command": ["/bin/sh", "-c", case.earlier_hook]}}
                            },
                        }
                    ],
                }
            }
        }
    }
    cluster.kubectl(
        "patch", "deployment", name, "-n", ns, "--type=strategic", "--field-manager=podgrace",
        "-p", json.dumps(earlier),
    )  # fmt: skip
    wait_until("the earlier podgrace's rollout", lambda: _replica_sets(cluster, case) == 2)
    assert _hook(_get(cluster, case)) == {"exec": {"command": ["/bin/sh", "-c", case.earlier_hook]}}

    t0 = time.time()
    with running_operator(cluster, "--namespace", ns):
        upgraded = wait_until(
            "the hook rewritten", lambda: case.rewritten(_hook(_get(cluster, case))), timeout=60
        )
        wait_until("the upgrade's rollout", lambda: _replica_sets(cluster, case) == 3)
        time.sleep(5)  # a second write or a rollout storm would show by now
        obj = _get(cluster, case)
        assert [(w.verb, w.name) for w in accepted_writes(cluster, t0, namespace=ns)] == [("patch", name)]
        assert _replica_sets(cluster, case) == 3
        assert obj["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == case.grace
        assert case.rewritten(_hook(obj)) and len(_hook(obj)) == 1  # one handler, the earlier one gone
        fields = obj["metadata"]["managedFields"]
        assert [(m["operation"], m.get("subresource")) for m in fields if m["manager"] == "podgrace"] == [
            ("Update", None)
        ]
        about = f"involvedObject.name={name}"
        events = cluster.kubectl_json("get", "events", "-n", ns, "--field-selector", about)
        warnings = [(e["reason"], e["message"]) for e in events["items"] if e["type"] == "Warning"]
        assert warnings == []
    assert upgraded
