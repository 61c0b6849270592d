"""A generic HTTP server that drains on SIGTERM (the lab's "web" profile, and the nginx-only pods' upstream).

On SIGTERM (or SIGINT) it closes its listening socket, finishes the requests in flight, and exits 0, as a
well-behaved app server does. Each request takes ?ms=N milliseconds (a loop on the monotonic clock: a signal
cannot cut it short) and returns the lab's fixed-size body (see bench/termination/plan.py make_body).
Stdlib only; runs as PID 1 of its container.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

BODY_BEGIN = b"PODGRACE-BEGIN "
BODY_END = b" PODGRACE-END\n"
BODY_SIZE = 2048


def make_body(pod: str, ms: int) -> bytes:
    head = BODY_BEGIN + f"pod={pod} ms={ms} ".encode()
    return head + b"x" * max(0, BODY_SIZE - len(head) - len(BODY_END)) + BODY_END


class Server(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True
    request_queue_size = 1024
    allow_reuse_address = True


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--pod", default=os.environ.get("POD_NAME", "unknown"))
    args = ap.parse_args()
    pod = args.pod

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            query = parse_qs(urlsplit(self.path).query)
            try:
                ms = max(0, int(query.get("ms", ["300"])[0]))
            except ValueError:
                ms = 300
            deadline = time.monotonic() + ms / 1000.0
            while (left := deadline - time.monotonic()) > 0:
                time.sleep(min(0.02, left))
            body = make_body(pod, ms)
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = True

        def log_message(self, format: str, *a: object) -> None:
            pass

    server = Server((args.host, args.port), Handler)
    stopping = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        if stopping.is_set():
            return
        stopping.set()
        sys.stderr.write(f"generic_server {pod}: signal {signum}, draining\n")
        # shutdown() blocks until serve_forever returns: call it off the main thread
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    sys.stderr.write(f"generic_server {pod}: listening on {args.host}:{args.port}\n")
    sys.stderr.flush()
    try:
        server.serve_forever(poll_interval=0.05)
    finally:
        # stop accepting at once, then wait for the request threads (block_on_close)
        with contextlib.suppress(OSError):
            server.socket.shutdown(socket.SHUT_RDWR)
        server.server_close()
    sys.stderr.write(f"generic_server {pod}: drained, exiting\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
