"""WebSocket ``/v1/stream`` (protocol in ``service/stream.py``): checks, then one session per connection."""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from bev_service.service.deps import State, connection_token, token_ok
from bev_service.service.errors import CLOSE_INTERNAL, CLOSE_POLICY, CLOSE_TRY_AGAIN, StreamClose
from bev_service.service.stream import StreamSession

log = logging.getLogger(__name__)

router = APIRouter()


@router.websocket("/v1/stream")
async def stream(ws: WebSocket, state: State) -> None:
    # Accept first: a close code and reason can only be sent on an accepted connection.
    await ws.accept()
    if not token_ok(state.settings, connection_token(ws)):
        await ws.close(CLOSE_POLICY, "a valid token is required (?token= or Authorization: Bearer)")
        return
    if not state.ready.is_set():
        await ws.close(CLOSE_TRY_AGAIN, f"not ready: {state.error or 'loading'}")
        return
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
