"""`podgrace run`: log in, serve /metrics, and hand over to Kopf."""

from __future__ import annotations

import argparse
import asyncio
import logging

import kopf
from prometheus_client import start_http_server

from podgrace.controller import gctune
from podgrace.controller.credentials import Credentials
from podgrace.controller.credentials import login as read_credentials
from podgrace.controller.metrics import Metrics
from podgrace.controller.wiring import Options, build

log = logging.getLogger(__name__)


def login() -> Credentials:
    """The ServiceAccount's token in a pod, else the kubeconfig (controller/credentials.py); a failure is
    one line, not a traceback."""
    try:
        credentials = read_credentials()
    except kopf.LoginError as error:
        raise SystemExit(f"podgrace run: no credentials: {error}") from None
    except Exception as error:  # an exec plugin that fails, a malformed kubeconfig
        raise SystemExit(
            f"podgrace run: cannot log in through the kubeconfig: {type(error).__name__}: "
            f"{' '.join(str(error).split())}"
        ) from None
    if credentials is None:
        raise SystemExit("podgrace run: no credentials: neither a service account nor a kubeconfig was found")
    return credentials


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    if not args.verbose:
        # Kopf logs "Handler 'profile_event' succeeded." at INFO for every watch event, which says nothing
        # podgrace's own log does not. Warnings and errors (a failing handler) still show; --verbose shows
        # everything.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    stop_signals = {"auto": None, "true": True, "false": False}[args.stop_signals]
    operator = build(
        Options(
            namespaces=args.namespace,
            workers=args.workers,
            stop_signals=stop_signals,
            resync_seconds=args.resync_seconds,
        ),
        connection=login(),
        metrics=Metrics(),
    )
    start_http_server(args.metrics_port)
    import podgrace.controller.kopf_handlers  # noqa: F401  (registers the Kopf handlers)

    gctune.tune()

    asyncio.run(
        kopf.operator(
            standalone=True,  # one operator at a time (the chart's Recreate Deployment); no Kopf peering
            clusterwide=not args.namespace,
            namespaces=list(args.namespace),
            liveness_endpoint=f"http://0.0.0.0:{args.liveness_port}/healthz",
            memo=operator,  # the handlers' `memo`
        )
    )
    return 0
