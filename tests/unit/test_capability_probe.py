"""The stop-signal probe caches only a definitive answer: the dry run's own result."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from fake_api import FakeApi

from podgrace.controller.capability_probe import CapabilityCache, ProbeFailed
from podgrace.controller.kube_api import ApiError


def deployment(name: str = "shop") -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "web"},
        "spec": {"template": {"spec": {"containers": [{"name": "nginx", "image": "nginx"}]}}},
    }


FAILURES = [
    ApiError(404, "NotFound", "deployments.apps shop not found"),
    ApiError(409, "Conflict", "the object has been modified"),
    ApiError(503, "ServiceUnavailable", "the server is currently unable to handle the request"),
    ApiError(429, "TooManyRequests", "too many requests"),
    ApiError(403, "Forbidden", 'admission webhook "deny.example.com" denied the request: no dry runs'),
    ApiError(422, "Invalid", "ValidatingAdmissionPolicy 'no-dry-run' with binding 'b' denied request"),
    ApiError(400, "BadRequest", "the server rejected our request for an unknown reason"),
    TimeoutError(),
    aiohttp.ServerDisconnectedError(),
]


@pytest.mark.parametrize("failure", FAILURES, ids=lambda f: getattr(f, "reason", type(f).__name__))
async def test_a_failed_probe_is_not_cached_and_is_retried(failure: Exception) -> None:
    api = FakeApi()
    api.create(deployment())
    cache = CapabilityCache(api, retry_delays=(0.0,))
    api.fail_next.append(failure)  # type: ignore[arg-type]
    with pytest.raises(ProbeFailed) as raised:
        await cache.get(api.get("web", "shop"))
    assert "web/shop" in str(raised.value)
    probes = len(api.applies)
    capabilities = await cache.get(api.get("web", "shop"))
    assert capabilities.stop_signal is True  # the second probe's answer, not a guess after the failure
    assert len(api.applies) == probes + 1
    assert await cache.get(api.get("web", "shop")) == capabilities  # now known: no third probe
    assert len(api.applies) == probes + 1


async def test_the_next_probe_waits_for_its_backoff() -> None:
    api = FakeApi()
    api.create(deployment())
    cache = CapabilityCache(api, retry_delays=(0.2, 60.0))
    api.fail_next.append(ApiError(503, "ServiceUnavailable", "down"))
    with pytest.raises(ProbeFailed):
        await cache.get(api.get("web", "shop"))
    probes = len(api.applies)
    with pytest.raises(ProbeFailed, match="not known yet"):  # within the backoff: no request at all
        await cache.get(api.get("web", "shop"))
    assert len(api.applies) == probes
    await asyncio.sleep(0.25)
    assert (await cache.get(api.get("web", "shop"))).stop_signal is True


async def test_a_definitive_no_is_cached() -> None:
    api = FakeApi()
    api.keep_stop_signal = False
    api.create(deployment())
    cache = CapabilityCache(api)
    assert (await cache.get(api.get("web", "shop"))).stop_signal is False
    api.keep_stop_signal = True
    assert (await cache.get(api.get("web", "shop"))).stop_signal is False
    assert len([a for a in api.applies if a[4]]) == 1


async def test_a_reconcile_whose_probe_failed_fails_without_writing_and_says_why(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from test_reconciler import deployment as opted_in
    from test_reconciler import make

    api = FakeApi()
    reconciler = make(api)
    reconciler.capabilities = CapabilityCache(api, retry_delays=(0.0,))
    body = api.create(opted_in("web"))
    api.fail_next.append(ApiError(403, "Forbidden", "denied by policy no-dry-run"))
    outcome = await reconciler.reconcile_workload(body)
    assert outcome.result.value == "failed"
    assert api.writes() == []
    assert "web/web" in caplog.text and "denied by policy no-dry-run" in caplog.text
    outcome = await reconciler.reconcile_workload(api.get("web", "web"))  # the retry probes again
    assert outcome.result.value == "applied"
    assert api.get("web", "web")["spec"]["template"]["spec"]["containers"][0]["lifecycle"]["stopSignal"]
