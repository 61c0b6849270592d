"""What the target API server supports, which decides the form of the injected settings."""

from __future__ import annotations

import re
from dataclasses import dataclass

# preStop `sleep` is beta and on by default from 1.30 (GA in 1.34); lifecycle.stopSignal is alpha from 1.33
# behind the ContainerStopSignals feature gate, off by default.
NATIVE_SLEEP_SINCE = (1, 30)
STOP_SIGNAL_SINCE = (1, 33)
STOP_SIGNALS_GATE = "ContainerStopSignals"
DEFAULT_SERVER_VERSION = (1, 34)


@dataclass(frozen=True)
class Capabilities:
    native_sleep: bool
    stop_signal: bool

    def describe(self) -> str:
        sleep = "native sleep" if self.native_sleep else "exec sleep"
        signal = "lifecycle.stopSignal" if self.stop_signal else "signal via preStop hook"
        return f"{sleep}, {signal}"


class CapabilityError(ValueError):
    pass


def parse_server_version(text: str) -> tuple[int, int]:
    found = re.fullmatch(r"v?(\d+)\.(\d+)(?:\.\d+)?(?:[-+].*)?", text.strip())
    if not found:
        raise CapabilityError(f"server version {text!r} is not MAJOR.MINOR, e.g. 1.34")
    return int(found.group(1)), int(found.group(2))


def parse_feature_gates(text: str) -> dict[str, bool]:
    gates: dict[str, bool] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or value.lower() not in ("true", "false") or not re.fullmatch(r"[A-Za-z0-9]+", name):
            raise CapabilityError(f"feature gate {item!r} is not NAME=true|false")
        gates[name] = value.lower() == "true"
    return gates


def from_description(version: tuple[int, int], gates: dict[str, bool]) -> Capabilities:
    """Capabilities of a cluster described on the command line (render/audit, no cluster)."""
    unknown = sorted(set(gates) - {STOP_SIGNALS_GATE})
    if unknown:
        raise CapabilityError(f"unknown feature gate(s): {', '.join(unknown)}; known: {STOP_SIGNALS_GATE}")
    stop_signal = gates.get(STOP_SIGNALS_GATE, False)
    if stop_signal and version < STOP_SIGNAL_SINCE:
        raise CapabilityError(
            f"{STOP_SIGNALS_GATE} needs Kubernetes {STOP_SIGNAL_SINCE[0]}.{STOP_SIGNAL_SINCE[1]} or newer, "
            f"not {version[0]}.{version[1]}"
        )
    return Capabilities(native_sleep=version >= NATIVE_SLEEP_SINCE, stop_signal=stop_signal)
