"""WebSocket ``/v1/stream`` (protocol in ``service/stream.py``): checks, then one session per connection."""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from bev_service.service.deps import State, connection_token, stream_subprotocol, token_ok
from bev_service.service.errors import CLOSE_INTERNAL, CLOSE_POLICY, CLOSE_TRY_AGAIN, StreamClose
from bev_service.service.state import ServiceState
from bev_service.service.stream import StreamSession, stream_slots

log = logging.getLogger(__name__)

router = APIRouter()


@router.websocket("/v1/stream")
async def stream(ws: WebSocket, state: State) -> None:
    # Accept first: a close code and reason can only be sent on an accepted connection. A browser that
    # offered subprotocols (bev.v1 and its token) fails the connection unless one is chosen.
    await ws.accept(subprotocol=stream_subprotocol(ws))
    if not token_ok(state.settings, connection_token(ws)):
        reason = "a valid token is required (Authorization: Bearer, the bev-token subprotocol or ?token=)"
        await ws.close(CLOSE_POLICY, reason)
        return
    if not state.ready.is_set():
        await ws.close(CLOSE_TRY_AGAIN, f"not ready: {state.error or 'loading'}")
        return
    slots = stream_slots(state)
    if not slots.take():
        await ws.close(CLOSE_TRY_AGAIN, f"the service serves at most {slots.limit} streams at once (max_streams); try later")
        return
    try:
        await run_session(ws, state)
    finally:
        slots.give_back()


async def run_session(ws: WebSocket, state: ServiceState) -> None:
    session = StreamSession(ws, state)
    state.metrics.streams.inc()
    receiver = asyncio.create_task(session.receive_loop())
    computer = asyncio.create_task(session.compute_loop())
    try:
        await receiver
    except StreamClose as close:
        session.closed = True
        await ws.close(close.code, close.reason)
    except WebSocketDisconnect:
        pass
    except Exception:  # a bug must cost this connection, never the process
        log.exception("stream connection failed")
        if ws.application_state == WebSocketState.CONNECTED:
            await ws.close(CLOSE_INTERNAL, "internal error")
    finally:
        session.closed = True
        session.wake.set()
        try:
            await asyncio.wait_for(computer, timeout=30)
        except (TimeoutError, WebSocketDisconnect, RuntimeError):
            computer.cancel()
        state.metrics.streams.dec()
