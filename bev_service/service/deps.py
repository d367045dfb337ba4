"""The dependencies routes declare (``Annotated`` types) and the token check REST and the stream share."""

from __future__ import annotations

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


def connection_token(connection: HTTPConnection) -> str | None:
    """``Authorization: Bearer`` or, for browsers' WebSockets that cannot set headers, ``?token=``."""
    header = connection.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return connection.query_params.get("token")


def get_state(connection: HTTPConnection) -> ServiceState:
    state = connection.app.state.bev
    assert isinstance(state, ServiceState)
    return state


State = Annotated[ServiceState, Depends(get_state)]


def require_token(state: State, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
    if not token_ok(state.settings, credentials.credentials if credentials is not None else None):
        raise ApiError(401, "unauthorized", "a valid bearer token is required (Authorization: Bearer <token>)")


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

__all__ = ["Ready", "State", "Store", "Token", "bearer", "connection_token", "get_state", "require_token", "token_ok"]
