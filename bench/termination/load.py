"""Open-loop constant-rate HTTP load: request k is sent at start + k/rate whether or not earlier ones have
answered. One asyncio loop in its own thread, a fresh TCP connection per request (`Connection: close`), raw
sockets, every request's outcome recorded (see plan.classify). Bounded in count and in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import threading
import time
from dataclasses import dataclass, field

from bench.termination.plan import classify


@dataclass
class Result:
    id: int
    t_sched: float  # monotonic
    t_send: float
    t_end: float
    outcome: str
    status: int | None
    nbytes: int


@dataclass(eq=False)
class LoadGenerator:
    host: str
    port: int
    rate: float
    request_ms: int
    timeout_s: float
    max_requests: int = 20000
    results: list[Result] = field(default_factory=list, init=False)
    _thread: threading.Thread | None = field(default=None, init=False)
    _error: BaseException | None = field(default=None, init=False)
    _stop_at: float = field(default=0.0, init=False)
    _abort: threading.Event = field(default_factory=threading.Event, init=False)

    def __post_init__(self) -> None:
        if self.host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("the lab only sends traffic to loopback")
        if self.rate <= 0:
            raise ValueError("rate must be > 0")

    # -- public, called from the scenario thread

    def start(self, start_at: float, stop_at: float) -> None:
        self._stop_at = stop_at
        self._thread = threading.Thread(target=self._main, args=(start_at,), name="load", daemon=True)
        self._thread.start()

    def join(self, timeout: float) -> None:
        assert self._thread is not None
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._abort.set()
            self._thread.join(10)
        if self._error is not None:
            raise RuntimeError(f"load generator failed: {self._error!r}") from self._error

    def abort(self) -> None:
        self._abort.set()

    # -- the loop

    def _main(self, start_at: float) -> None:
        try:
            asyncio.run(self._run(start_at))
        except BaseException as exc:  # surfaced by join()
            self._error = exc

    async def _run(self, start_at: float) -> None:
        loop = asyncio.get_running_loop()
        tasks: list[asyncio.Task[None]] = []
        interval = 1.0 / self.rate
        k = 0
        while k < self.max_requests and not self._abort.is_set():
            t_sched = start_at + k * interval
            if t_sched >= self._stop_at:
                break
            delay = t_sched - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(loop.create_task(self._one(k, t_sched)))
            k += 1
        # every request is bounded by timeout_s; the extra second is slack for scheduling
        deadline = time.monotonic() + self.timeout_s + 5
        while tasks and not all(t.done() for t in tasks):
            if self._abort.is_set() or time.monotonic() > deadline:
                for t in tasks:
                    t.cancel()
                break
            await asyncio.sleep(0.05)
        with contextlib.suppress(Exception):
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _one(self, k: int, t_sched: float) -> None:
        t_send = time.monotonic()
        raw = bytearray()
        error: str | None = None
        writer: asyncio.StreamWriter | None = None
        request = (
            f"GET /app.php?ms={self.request_ms}&req={k} HTTP/1.1\r\n"
            f"Host: lab\r\nX-Req: {k}\r\nUser-Agent: podgrace-lab\r\nConnection: close\r\n\r\n"
        ).encode()
        try:
            async with asyncio.timeout(self.timeout_s):
                reader, writer = await asyncio.open_connection(self.host, self.port)
                writer.write(request)
                await writer.drain()
                while True:
                    chunk = await reader.read(65536)
                    if not chunk:
                        break
                    raw += chunk
        except ConnectionRefusedError:
            error = "refused"
        except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError):
            error = "reset"
        except TimeoutError:
            error = "timeout"
        except asyncio.CancelledError:
            error = "timeout"
        except OSError as exc:
            error = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
        finally:
            if writer is not None:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
        outcome = classify(bytes(raw), error)
        status: int | None = None
        if raw.startswith(b"HTTP/"):
            with contextlib.suppress(ValueError, IndexError):
                status = int(raw.split(b" ", 2)[1])
        self.results.append(Result(k, t_sched, t_send, time.monotonic(), outcome, status, len(raw)))
