"""Target API server capabilities: parsing --server-version / --feature-gates and what they imply."""

from __future__ import annotations

import pytest

from podgrace.core import capabilities
from podgrace.core.capabilities import Capabilities, CapabilityError


@pytest.mark.parametrize(
    ("text", "version"),
    [
        ("1.34", (1, 34)),
        ("v1.29", (1, 29)),
        ("1.30.2", (1, 30)),
        (" 1.35 ", (1, 35)),
        ("v1.33.1-eks-1234", (1, 33)),
        ("1.31.0+k3s1", (1, 31)),
        ("1.100", (1, 100)),  # compared as numbers, not strings
    ],
)
def test_parse_server_version(text: str, version: tuple[int, int]) -> None:
    assert capabilities.parse_server_version(text) == version


@pytest.mark.parametrize("text", ["banana", "", "1", "1.", "1.x", "one.two", "1.34.0.1", "v"])
def test_parse_server_version_rejects(text: str) -> None:
    with pytest.raises(CapabilityError, match=r"is not MAJOR\.MINOR"):
        capabilities.parse_server_version(text)


@pytest.mark.parametrize(
    ("text", "gates"),
    [
        ("", {}),
        ("ContainerStopSignals=true", {"ContainerStopSignals": True}),
        ("ContainerStopSignals=False", {"ContainerStopSignals": False}),
        (" ContainerStopSignals=TRUE , ", {"ContainerStopSignals": True}),
        ("A=true,B=false", {"A": True, "B": False}),
    ],
)
def test_parse_feature_gates(text: str, gates: dict[str, bool]) -> None:
    assert capabilities.parse_feature_gates(text) == gates


@pytest.mark.parametrize(
    "text",
    ["ContainerStopSignals", "ContainerStopSignals=yes", "ContainerStopSignals=1", "Bad-Name=true", "=true"],
)
def test_parse_feature_gates_rejects(text: str) -> None:
    with pytest.raises(CapabilityError, match=r"is not NAME=true\|false"):
        capabilities.parse_feature_gates(text)


# (version, gates, native sleep, stopSignal)
DESCRIPTIONS = [
    pytest.param((1, 29), {}, False, False, id="1.29"),
    pytest.param((1, 30), {}, True, False, id="1.30-native-sleep"),
    pytest.param((1, 32), {"ContainerStopSignals": False}, True, False, id="1.32-gate-off"),
    pytest.param((1, 33), {"ContainerStopSignals": True}, True, True, id="1.33-gate-on"),
    pytest.param((1, 34), {}, True, False, id="1.34-default"),
    pytest.param((1, 34), {"ContainerStopSignals": True}, True, True, id="1.34-gate-on"),
    pytest.param((1, 35), {"ContainerStopSignals": True}, True, True, id="1.35-gate-on"),
    pytest.param((2, 0), {}, True, False, id="2.0"),
]


@pytest.mark.parametrize(("version", "gates", "native_sleep", "stop_signal"), DESCRIPTIONS)
def test_from_description(
    version: tuple[int, int], gates: dict[str, bool], native_sleep: bool, stop_signal: bool
) -> None:
    assert capabilities.from_description(version, gates) == Capabilities(native_sleep, stop_signal)


def test_gate_needs_1_33() -> None:
    with pytest.raises(
        CapabilityError, match=r"ContainerStopSignals needs Kubernetes 1\.33 or newer, not 1\.32"
    ):
        capabilities.from_description((1, 32), {"ContainerStopSignals": True})


def test_unknown_gate() -> None:
    with pytest.raises(CapabilityError, match=r"unknown feature gate\(s\): Foo; known: ContainerStopSignals"):
        capabilities.from_description((1, 34), {"Foo": True, "ContainerStopSignals": True})


def test_default_server_version_is_a_gate_off_native_sleep_cluster() -> None:
    caps = capabilities.from_description(capabilities.DEFAULT_SERVER_VERSION, {})
    assert caps == Capabilities(native_sleep=True, stop_signal=False)


@pytest.mark.parametrize(
    ("caps", "text"),
    [
        (Capabilities(False, False), "exec sleep, signal via preStop hook"),
        (Capabilities(True, True), "native sleep, lifecycle.stopSignal"),
    ],
)
def test_describe(caps: Capabilities, text: str) -> None:
    assert caps.describe() == text
