"""The hub's proxy: the ``configurable-http-proxy`` Python package, with two websocket
defects of its 0.4.0 mended.

* It forwards a browser's frames with ``write_message(message)``, which sends bytes as a
  *text* frame; the server's tornado then refuses frames that are not UTF-8, so a VNC
  client's key and pointer events never arrive (JupyterLab's kernel protocol sends binary
  frames too). The same bug was fixed in jupyter-server-proxy (its issue 50).
* It answers the browser's upgrade without a ``Sec-WebSocket-Protocol``, whatever the server
  chose, and a browser that asked for a subprotocol then drops the connection.

And it leaves Nagle's algorithm on for websockets, on both of its connections: a small frame
(a key press, the pixels of one echoed character) then waits for the previous one's
acknowledgement, which the peer delays. Interactive traffic turns it off.

``python -m enclave.workspace.proxy ARGS`` is ``configurable-http-proxy ARGS`` with these
methods mended.
"""

from __future__ import annotations

from typing import Any

from configurable_http_proxy import handlers
from configurable_http_proxy.cli import main as proxy_main


def _on_message(self: Any, message: str | bytes) -> None:
    if self.ws_client:
        prefix = self.target["prefix"] if self.target else ""
        if prefix:
            self.proxy.update_last_activity(prefix)
        self.ws_client.write_message(message, binary=isinstance(message, bytes))


def _select_subprotocol(self: Any, subprotocols: list[str]) -> str | None:
    """The subprotocol the server chose when the proxy connected to it, if the browser
    offered it (the proxy connects to the server before it answers the browser)."""
    chosen = getattr(self.ws_client, "selected_subprotocol", None)
    return chosen if chosen in subprotocols else None


_original_start_ws_client = handlers.ProxyHandler.start_ws_client


async def _start_ws_client(self: Any, path: str | None = None) -> None:
    await _original_start_ws_client(self, path)
    if self.ws_client is not None:
        self.ws_client.protocol.set_nodelay(True)  # the connection to the server


def _open(self: Any, *args: Any, **kwargs: Any) -> None:
    self.set_nodelay(True)


def patch() -> None:
    handlers.ProxyHandler.on_message = _on_message
    handlers.ProxyHandler.select_subprotocol = _select_subprotocol
    handlers.ProxyHandler.start_ws_client = _start_ws_client
    handlers.ProxyHandler.open = _open


if __name__ == "__main__":
    patch()
    proxy_main()
