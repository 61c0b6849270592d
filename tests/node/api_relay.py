"""A TCP relay from the real node's bridge address to the local API server on 127.0.0.1.

The local control plane has no kube-proxy and no routable ``kubernetes`` Service (its API server listens
on 127.0.0.1 only, ``--endpoint-reconciler-type=none``), and pods on the real node reach only their
bridge's /24. A pod that talks to the API server the in-cluster way (Kopf: ``https://kubernetes.default.svc``,
port 443) gets there through this relay: the pod's ``hostAliases`` map ``kubernetes.default.svc`` to the
bridge address, where the relay listens and copies bytes both ways to the API server. TLS stays end to end
(the pod verifies the API server's certificate, which names ``kubernetes.default.svc``, against the CA in
its ServiceAccount volume); the relay sees only ciphertext. It stands in for kube-proxy's Service rule.

    with ApiRelay(listen=(node.node_ip, 443), target=("127.0.0.1", cluster.port)) as relay:
        ...
        relay.connections  # how many connections it has relayed so far
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType


class ApiRelay:
    def __init__(self, *, listen: tuple[str, int], target: tuple[str, int]) -> None:
        self.listen = listen
        self.target = target
        self.connections = 0
        self._server: socket.socket | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> ApiRelay:
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(self.listen)
        server.listen(64)
        server.settimeout(0.2)
        self._server = server
        t = threading.Thread(target=self._accept_loop, name="api-relay-accept", daemon=True)
        t.start()
        self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.close()
        with self._lock:
            for s in list(self._open):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            self._open.clear()
        for t in self._threads:
            t.join(timeout=5)

    def _accept_loop(self) -> None:
        assert self._server is not None
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            client.settimeout(None)
            with self._lock:
                if self._stop.is_set():
                    client.close()
                    upstream.close()
                    return
                self.connections += 1
                self._open.update((client, upstream))
            pending = [2]  # pumps of this pair still running; the last one closes both sockets
            for a, b in ((client, upstream), (upstream, client)):
                t = threading.Thread(
                    target=self._pump, args=(a, b, pending), name="api-relay-pump", daemon=True
                )
                t.start()
                self._threads.append(t)

    def _pump(self, src: socket.socket, dst: socket.socket, pending: list[int]) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)
        with self._lock:
            pending[0] -= 1
            if pending[0] == 0:
                for s in (src, dst):
                    self._open.discard(s)
                    s.close()
