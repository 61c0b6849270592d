"""The loopback ports of one emulated lab run, claimed as a whole block.

A run's ports are a block of `BLOCK` ports at `base` (see `Ports`). `claim` takes the first block whose
lock file it can lock (flock, held for the run, released by the kernel even if the run is SIGKILLed) and
whose ports are all free. So two labs on one machine (CI beside a developer's run, two sessions, two pytest
workers) never share a port, and a server a crashed run left behind only makes the next run move to the
next block. Fixed ports were seen in CI to let one run's php-fpm answer another run's load (2026-11-30).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

BLOCK = 500
FIRST_BASE = 14000
MAX_PODS = 99  # pod index i uses base + role offset + i
ROLE_OFFSET = {"generic": 100, "apache": 200, "nginx": 300, "php-fpm": 400}
LOCK_DIR = Path("/tmp/podgrace-lab-ports")


class PortsExhausted(RuntimeError):
    pass


@dataclass(frozen=True)
class Ports:
    """pod i -> generic base+100+i, apache base+200+i, nginx base+300+i, php-fpm base+400+i; the load
    balancer listens on base, the shared upstream of nginx-only pods on base+99."""

    base: int = FIRST_BASE

    @property
    def lb(self) -> int:
        return self.base

    @property
    def upstream(self) -> int:
        return self.base + 99

    def server(self, runtime: str, pod_index: int) -> int:
        if not 0 <= pod_index < MAX_PODS:
            raise ValueError(f"pod index {pod_index} outside 0..{MAX_PODS - 1}")
        return self.base + ROLE_OFFSET[runtime] + pod_index


def ephemeral_low() -> int:
    """The lowest port the kernel hands out to outgoing connections: blocks stay below it."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    return 32768


def bases() -> range:
    return range(FIRST_BASE, ephemeral_low() - BLOCK + 1, BLOCK)


@contextlib.contextmanager
def claim(needed: Callable[[Ports], list[int]], in_use: Callable[[int], bool]) -> Iterator[Ports]:
    """The first free block: its lock held and `needed(block)` all free (`in_use` is false for each)."""
    LOCK_DIR.mkdir(mode=0o755, exist_ok=True)
    skipped: list[str] = []
    for base in bases():
        fd = os.open(LOCK_DIR / f"{base}.lock", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                skipped.append(f"{base}: locked by another run")
                continue
            ports = Ports(base)
            busy = [p for p in needed(ports) if in_use(p)]
            if busy:
                skipped.append(f"{base}: {busy} in use")
                continue
            yield ports
            return
        finally:
            os.close(fd)  # closing the only descriptor releases the lock
    raise PortsExhausted(f"no free lab port block on 127.0.0.1 ({'; '.join(skipped)})")
