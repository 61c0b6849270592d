"""podgrace's credentials for the API server, with a bearer token that is read again when it may have
changed: bound ServiceAccount tokens (projected volumes) are rotated by the kubelet about hourly, and a
kubeconfig may name a `tokenFile` that something else keeps fresh.

The token file is read again at most every `reread_seconds` (client-go's file token source: one minute)
and at once after a 401, so a rotated token is used without a restart. Kopf's login handler asks for
`connection()` and gets the current token too (Kopf calls it again after its own 401s).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kopf
import yaml

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"
REREAD_SECONDS = 60.0


class Credentials:
    def __init__(
        self,
        info: kopf.ConnectionInfo,
        token_file: str | os.PathLike[str] | None = None,
        *,
        reread_seconds: float = REREAD_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.info = info
        self.token_file = Path(token_file) if token_file is not None else None
        self._reread_seconds = reread_seconds
        self._clock = clock
        self._token = info.token
        self._read_at = clock() if token_file is None or info.token else float("-inf")

    def token(self) -> str | None:
        """The current bearer token (read again from its file when the last read is old)."""
        if self.token_file is not None and self._clock() - self._read_at >= self._reread_seconds:
            self.reread()
        return self._token

    def reread(self) -> bool:
        """Read the token file now; True if the token changed. Without a file there is nothing to read."""
        if self.token_file is None:
            return False
        self._read_at = self._clock()
        try:
            token = self.token_file.read_text(encoding="utf-8").strip() or None
        except OSError as error:
            log.warning(
                "could not read the token file %s (the last token is kept): %s", self.token_file, error
            )
            return False
        changed = token != self._token
        if changed:
            log.info("the bearer token in %s changed: using the new one", self.token_file)
            self._token = token
        return changed

    def headers(self) -> dict[str, str]:
        """The Authorization header of the current credentials (none without any)."""
        if self.token_file is None:
            return self.info.as_http_headers()
        token = self.token()
        return {"Authorization": f"{self.info.scheme or 'Bearer'} {token}"} if token else {}

    def connection(self) -> kopf.ConnectionInfo:
        """For Kopf's login handler: the connection with the token as it is now in its file."""
        if self.token_file is None:
            return self.info
        self.reread()
        return dataclasses.replace(self.info, token=self._token)


def login() -> Credentials | None:
    """In a pod: the ServiceAccount's (projected) token. Else the kubeconfig ($KUBECONFIG or ~/.kube/config),
    whose user may give a `token`, a `tokenFile` or an exec credential plugin."""
    settings = kopf.OperatorSettings()
    info = kopf.login_with_service_account(settings=settings)
    if info is not None:
        return Credentials(info, SERVICE_ACCOUNT_TOKEN)
    # Outside a pod: the kubeconfig through the official `kubernetes` client (KUBECONFIG, the current
    # context, exec credential plugins such as EKS's, GKE's and AKS's). Its errors reach `podgrace run`.
    try:
        info = kopf.login_via_client(logger=log, settings=settings)
    except kopf.LoginError:
        # The client reads $KUBECONFIG once, when first imported; Kopf's own reader reads it now.
        info = kopf.login_with_kubeconfig(settings=settings)
    if info is None:
        return None
    token_file = _kubeconfig_token_file()
    if token_file is not None:  # as client-go: the file, read again and again, wins over a `token`
        credentials = Credentials(info, token_file)
        credentials.reread()
        return credentials
    return Credentials(info)


def _kubeconfig_token_file() -> str | None:
    """The current context's user's `tokenFile` (Kopf's own kubeconfig login does not read it)."""
    paths = [p for p in os.environ.get("KUBECONFIG", "").split(os.pathsep) if p]
    if not paths:
        paths = [os.path.expanduser("~/.kube/config")]
    context_name: str | None = None
    contexts: dict[str, Any] = {}
    users: dict[str, Any] = {}
    for path in paths:
        try:
            config = yaml.safe_load(Path(path).expanduser().read_text(encoding="utf-8")) or {}
        except OSError:
            continue
        context_name = context_name or config.get("current-context")
        for item in config.get("contexts") or []:
            contexts.setdefault(item.get("name"), item.get("context") or {})
        for item in config.get("users") or []:
            users.setdefault(item.get("name"), item.get("user") or {})
    context = contexts.get(str(context_name)) or {}
    user = users.get(str(context.get("user"))) or {}
    token_file = user.get("tokenFile")
    return str(token_file) if token_file else None
