"""A rotated bearer token is picked up without a restart; credentials that stop working are noticed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import kopf
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from podgrace.controller import credentials as credentials_module
from podgrace.controller.credentials import Credentials
from podgrace.controller.kube_api import ApiError, KubeClient


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def server() -> AsyncIterator[tuple[TestServer, dict[str, Any]]]:
    """An API server that accepts only the tokens in state["valid"] and records what it saw."""
    state: dict[str, Any] = {"valid": {"one"}, "seen": []}

    async def handle(request: web.Request) -> web.StreamResponse:
        auth = request.headers.get("Authorization", "")
        state["seen"].append(auth)
        if auth.removeprefix("Bearer ") not in state["valid"]:
            body = {"kind": "Status", "reason": "Unauthorized", "message": "Unauthorized", "code": 401}
            return web.Response(status=401, body=orjson.dumps(body))
        if request.query.get("watch") == "true":
            response = web.StreamResponse()
            await response.prepare(request)
            await response.write(
                orjson.dumps({"type": "ADDED", "object": {"metadata": {"name": "a"}}}) + b"\n"
            )
            return response
        return web.Response(body=orjson.dumps({"major": "1", "minor": "36"}))

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    async with TestServer(app) as test_server:
        yield test_server, state


def client(test_server: TestServer, token_file: Path, clock: Clock) -> KubeClient:
    info = kopf.ConnectionInfo(server=str(test_server.make_url("/")))
    return KubeClient(Credentials(info, token_file, clock=clock), clock=clock)


async def test_a_rotated_token_file_is_used_after_a_401_without_a_restart(
    server: Any, tmp_path: Path
) -> None:
    test_server, state = server
    token_file = tmp_path / "token"
    token_file.write_text("one\n")
    clock = Clock()
    api = client(test_server, token_file, clock)
    try:
        assert await api.server_version() == (1, 36)
        token_file.write_text("two\n")  # the kubelet rotates the token; the old one is revoked
        state["valid"] = {"two"}
        assert await api.server_version() == (1, 36)  # a 401, the file read again, the request repeated
        assert state["seen"][-2:] == ["Bearer one", "Bearer two"]
        assert api.unauthorized_for() == 0.0
        events = [e async for e in api.watch("/apis/apps/v1/deployments", {"watch": "true"})]
        assert events[0]["object"]["metadata"]["name"] == "a"
    finally:
        await api.close()


async def test_the_token_file_is_read_again_every_minute_before_any_401(server: Any, tmp_path: Path) -> None:
    test_server, state = server
    token_file = tmp_path / "token"
    token_file.write_text("one")
    clock = Clock()
    api = client(test_server, token_file, clock)
    try:
        await api.server_version()
        token_file.write_text("two")  # rotated; the old token still works for a while
        state["valid"].add("two")
        clock.now += 61
        await api.server_version()
        assert state["seen"][-1] == "Bearer two"
    finally:
        await api.close()


async def test_credentials_that_keep_failing_are_reported_until_they_work_again(
    server: Any, tmp_path: Path
) -> None:
    test_server, state = server
    token_file = tmp_path / "token"
    token_file.write_text("one")
    clock = Clock()
    api = client(test_server, token_file, clock)
    try:
        await api.server_version()
        state["valid"] = {"revoked-and-nothing-new"}
        with pytest.raises(ApiError) as raised:
            await api.server_version()
        assert raised.value.status == 401
        clock.now += 45
        await api.check_credentials(idle_seconds=30)  # idle: asks, and is refused again
        assert api.unauthorized_for() == 45
        token_file.write_text("fresh")
        state["valid"] = {"fresh"}
        clock.now += 1
        await api.check_credentials(idle_seconds=0)
        assert api.unauthorized_for() == 0.0
    finally:
        await api.close()


def test_kopfs_login_handler_gets_the_token_as_it_is_now(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("one")
    creds = Credentials(kopf.ConnectionInfo(server="https://example"), token_file)
    assert creds.connection().token == "one"
    token_file.write_text("two")
    assert creds.connection().token == "two"


def test_a_kubeconfig_token_file_is_followed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-file")
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443"}}],
        "users": [{"name": "u", "user": {"tokenFile": str(token_file)}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    }
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(orjson.dumps(config).decode())
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.setattr(credentials_module, "SERVICE_ACCOUNT_TOKEN", str(tmp_path / "absent"))
    monkeypatch.setattr(kopf, "login_with_service_account", lambda **_: None)
    creds = credentials_module.login()
    assert creds is not None and creds.token_file == token_file
    assert creds.headers() == {"Authorization": "Bearer from-file"}


def test_podgrace_run_logs_in_with_the_service_account_token_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a pod, `podgrace run` follows the projected token file. (Issue 12/14: the run command once built
    its connection from Kopf's service-account login itself, so the token read at start was sent forever,
    and a real kubelet's rotation ended in 401s; tests/node/test_operator_pod.py checks it on a node.)"""
    from podgrace.controller import run

    token_file = tmp_path / "token"
    token_file.write_text("first\n")
    monkeypatch.setattr(credentials_module, "SERVICE_ACCOUNT_TOKEN", str(token_file))
    info = kopf.ConnectionInfo(server="https://kubernetes.default.svc", token="first")
    monkeypatch.setattr(kopf, "login_with_service_account", lambda **_: info)
    creds = run.login()
    assert creds.token_file == token_file
    assert creds.headers() == {"Authorization": "Bearer first"}
    token_file.write_text("second\n")  # the kubelet's rotation (an atomic ..data swap in a real volume)
    assert creds.reread() and creds.headers() == {"Authorization": "Bearer second"}
    assert creds.connection().token == "second"  # what Kopf's login handler gets after its own 401
