"""The dependencies routes declare (``Annotated`` types) and the token check REST and the stream share."""

from __future__ import annotations

import base64
import binascii
import hmac
from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import HTTPConnection

from bev_service.service.errors import ApiError
from bev_service.service.rigs import RigStore
from bev_service.service.settings import Settings
from bev_service.service.state import ServiceState

# auto_error=False: a missing token must get our JSON 401, not FastAPI's 403.
bearer = HTTPBearer(auto_error=False, description="BEV_API_TOKEN, when the service sets one")


def token_ok(settings: Settings, given: str | None) -> bool:
    if settings.api_token is None:
        return True
    # Constant time: the comparison must not tell an attacker how much of a guess was right.
    return hmac.compare_digest((given or "").encode(), settings.api_token.encode())


STREAM_PROTOCOL = "bev.v1"  # the subprotocol the stream answers when a client offers it
TOKEN_PROTOCOL_PREFIX = "bev-token."  # then the token, base64url without padding


def offered_protocols(connection: HTTPConnection) -> list[str]:
    return [p.strip() for p in connection.headers.get("sec-websocket-protocol", "").split(",") if p.strip()]


def connection_token(connection: HTTPConnection) -> str | None:
    """``Authorization: Bearer``; for browsers' WebSockets, which cannot set headers, the subprotocol
    ``bev-token.<base64url token>`` (offered beside ``bev.v1``); last, ``?token=`` (kept out of the access log)."""
    header = connection.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    for protocol in offered_protocols(connection):
        if protocol.startswith(TOKEN_PROTOCOL_PREFIX):
            encoded = protocol.removeprefix(TOKEN_PROTOCOL_PREFIX)
            try:
                return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                return None  # refused like a wrong token
    return connection.query_params.get("token")


def stream_subprotocol(connection: HTTPConnection) -> str | None:
    """The subprotocol to accept with: ``bev.v1`` when offered (a browser that offered any subprotocol
    fails the connection unless one is chosen); the token's own is never echoed back."""
    return STREAM_PROTOCOL if STREAM_PROTOCOL in offered_protocols(connection) else None


def get_state(connection: HTTPConnection) -> ServiceState:
    state = connection.app.state.bev
    assert isinstance(state, ServiceState)
    return state


State = Annotated[ServiceState, Depends(get_state)]


def require_token(state: State, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
    if not token_ok(state.settings, credentials.credentials if credentials is not None else None):
        error = ', error="invalid_token"' if credentials is not None else ""
        raise ApiError(
            401,
            "unauthorized",
            "a valid bearer token is required (Authorization: Bearer <token>)",
            {"WWW-Authenticate": f'Bearer realm="bev-service"{error}'},
        )


def ready_state(state: State) -> ServiceState:
    if not state.ready.is_set():
        detail = f"not ready: {state.error}" if state.error else "not ready: loading the model and building the rig tables"
        raise ApiError(503, "not_ready", detail, {"Retry-After": "2"})
    return state


Ready = Annotated[ServiceState, Depends(ready_state)]


def ready_store(state: Ready) -> RigStore:
    assert state.store is not None  # set before ready is
    return state.store


Store = Annotated[RigStore, Depends(ready_store)]
Token = Depends(require_token)

__all__ = [
    "STREAM_PROTOCOL",
    "TOKEN_PROTOCOL_PREFIX",
    "Ready",
    "State",
    "Store",
    "Token",
    "bearer",
    "connection_token",
    "get_state",
    "require_token",
    "stream_subprotocol",
    "token_ok",
]
