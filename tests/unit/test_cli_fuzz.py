"""Fuzzing `podgrace render` and `audit`: no input, however malformed, gives a traceback or an exit code
that could be read as a finding. Bad input is exit 2 with `podgrace COMMAND: ...` lines on stderr and
nothing on stdout; 0 and 1 only for input that was read; 3 (an internal error) never."""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from podgrace.cli import main as cli
from podgrace.core import capabilities, overrides, planner, profiles
from podgrace.core.constants import KNOWN_ANNOTATIONS
from podgrace.core.models import ContainerView, Workload

FUZZ = settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])

anything = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=30)
    | st.sampled_from(["30", "0x1E", "-5", "1e3", "٣", " 30 ", "keep", "audit", "nginx", "SIGQUIT"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3),
    max_leaves=8,
)
names = st.sampled_from(["nginx", "php-fpm", "app", "web", "apache", "Bad_Name", "", "a" * 70]) | anything
images = (
    st.sampled_from(["nginx:1.27", "php:8.3-fpm", "wordpress:6", "wordpress:6-fpm", "httpd", "redis"])
    | anything
)
hooks = st.sampled_from(
    [
        None,
        {"preStop": {"sleep": {"seconds": 5}}},
        {"preStop": {"exec": {"command": ["sh", "-c", "sleep 5; kill -QUIT 1"]}}},
        {"preStop": {"httpGet": {"path": "/", "port": 80}}},
        {"stopSignal": "SIGQUIT"},
    ]
) | st.fixed_dictionaries({}, optional={"preStop": anything, "stopSignal": anything})
containers = st.fixed_dictionaries({"name": names}, optional={"image": images, "lifecycle": hooks}) | anything
annotations = st.dictionaries(
    st.sampled_from(sorted(KNOWN_ANNOTATIONS))
    | st.sampled_from(["podgrace.dev/sleep", "other/x"])
    | st.none()
    | st.integers()
    | st.text(max_size=10),
    st.sampled_from(
        ["nginx", "php-fpm", "nginx-php-fpm", "apache", "web", "enforce", "audit", "replace", "5"]
    )
    | anything,
    max_size=4,
)


@st.composite
def workloads(draw: st.DrawFn) -> Any:
    pod: dict[str, Any] = {"containers": draw(st.lists(containers, max_size=3) | anything)}
    if draw(st.booleans()):
        pod["terminationGracePeriodSeconds"] = draw(st.integers(min_value=-5, max_value=200) | anything)
    metadata = {"name": draw(st.sampled_from(["shop", "x"]) | anything), "annotations": draw(annotations)}
    obj: Any = {
        "apiVersion": draw(st.sampled_from(["apps/v1", "apps/v1", "extensions/v1beta1", "batch/v1"])),
        "kind": draw(
            st.sampled_from(["Deployment", "Deployment", "StatefulSet", "DaemonSet", "CronJob", "Pod"])
        ),
        "metadata": draw(st.just(metadata) | anything),
        "spec": {"template": {"spec": pod}},
    }
    if draw(st.integers(0, 9)) == 0:
        obj = draw(anything)
    return obj


@st.composite
def streams(draw: st.DrawFn) -> str:
    objects = draw(st.lists(workloads(), min_size=1, max_size=3))
    if draw(st.booleans()):
        objects = [{"apiVersion": "v1", "kind": "List", "items": objects}]
    text = yaml.safe_dump_all(objects, sort_keys=False)
    if draw(st.integers(0, 3)) == 0:  # and sometimes break the text itself
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.text(alphabet="&*!|>[]{}:-#'\"\t\n %@`?,0x.inf~", max_size=8)) + text[at:]
    return text


@contextlib.contextmanager
def _file(text: str) -> Iterator[str]:
    handle, path = tempfile.mkstemp(suffix=".yaml")
    with os.fdopen(handle, "w", encoding="utf-8") as f:
        f.write(text)
    try:
        yield path
    finally:
        os.unlink(path)


def _run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(argv))
    return code, out.getvalue(), err.getvalue()


def _check(command: str, code: int, out: str, err: str) -> None:
    event(f"exit {code}")  # --hypothesis-show-statistics: each exit code is reached
    assert "Traceback" not in err
    assert code in (0, 1, 2), err  # never 3: that would be a bug in podgrace
    if code == 2:
        assert out == ""
        assert err and all(line.startswith(f"podgrace {command}: ") for line in err.splitlines()), err
    if command == "render" and code == 0:
        list(yaml.safe_load_all(out))  # what render prints is YAML


@pytest.mark.slow
@FUZZ
@given(
    text=streams(),
    command=st.sampled_from(["render", "audit"]),
    output=st.sampled_from(["text", "json", "sarif"]),
)
def test_fuzz_manifests(text: str, command: str, output: str) -> None:
    with _file(text) as path:
        argv = [command, "-f", path] + (["-o", output] if command == "audit" else [])
        _check(command, *_run(*argv))


@pytest.mark.slow
@FUZZ
@given(text=st.text(alphabet="abk:-[]{}&*!|>#'\"\n \t,?0123456789.e+", max_size=200))
def test_fuzz_yaml_text(text: str) -> None:
    with _file(text) as path:
        _check("audit", *_run("audit", "-f", path))


@settings(max_examples=3000, deadline=None)
@given(values=st.dictionaries(st.sampled_from(sorted(KNOWN_ANNOTATIONS)), st.text(max_size=20), max_size=7))
def test_fuzz_annotation_values_never_raise(values: dict[str, str]) -> None:
    parsed = overrides.parse(values)
    assert parsed.errors or parsed.profile is None or isinstance(parsed.profile, str)
    pod = Workload(name="x", overrides=parsed, containers=(ContainerView(name="nginx", image="nginx:1"),))
    result = planner.plan(pod, profiles.builtin(), capabilities.from_description((1, 34), {}))
    assert result.outcome in set(planner.Outcome)
