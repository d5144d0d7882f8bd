"""JSON answers for the errors Ray Serve's HTTP proxy makes itself.

The replicas answer every error in JSON. Some answers never reach a replica: the proxy makes them
when a replica died under a request (500, plain text or no body), when a request waited past
Serve's ``request_timeout_s`` (408) or when no replica can take it (503). Ray Serve imports
:func:`middlewares` in each proxy process when ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`` names
it (:func:`.serve.start_ray` sets it for the local cluster it starts), and puts
:class:`JsonErrors` in front of every application.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["JsonErrors", "middlewares"]

_JSON = b"application/json"


class JsonErrors:
    """ASGI middleware: an error answer that is not JSON becomes ``{"error": ..., "field": null}``.

    Args:
        app: The proxy's ASGI application.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass answers through, holding back and rewriting error answers that are not JSON."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        held: Message | None = None
        body = b""
        started = False

        async def rewrite(message: Message) -> None:
            nonlocal held, body, started
            if message["type"] == "http.response.start":
                headers = dict(message.get("headers") or [])
                if message["status"] >= 400 and not headers.get(b"content-type", b"").startswith(_JSON):
                    held = message
                    return
                started = True
                await send(message)
            elif message["type"] == "http.response.body" and held is not None:
                body += message.get("body", b"")
                if not message.get("more_body", False):
                    await _send_json(send, held["status"], body.decode("utf-8", "replace").strip())
                    started = True
                    held = None
            else:
                await send(message)

        try:
            await self.app(scope, receive, rewrite)
        except Exception as exc:
            if not started:
                await _send_json(send, 500, f"the server failed: {type(exc).__name__}")
            return
        if held is not None:
            await _send_json(send, held["status"], body.decode("utf-8", "replace").strip())
        elif not started:
            await _send_json(send, 500, "the replica serving this request stopped before it answered; try again")


async def _send_json(send: Send, status: int, text: str) -> None:
    reason = text or "the server failed before it answered; try again"
    payload = json.dumps({"error": f"{reason} (HTTP {status} from the Ray Serve proxy)", "field": None}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", _JSON), (b"content-length", str(len(payload)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": payload})


def middlewares() -> list[Any]:
    """What the proxy puts in front of every application (``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``)."""
    return [Middleware(JsonErrors)]
