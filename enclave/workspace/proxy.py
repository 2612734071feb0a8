"""The hub's proxy: the ``configurable-http-proxy`` Python package, with two websocket
defects of its 0.4.0 mended.

* It forwards a browser's frames with ``write_message(message)``, which sends bytes as a
  *text* frame; the server's tornado then refuses frames that are not UTF-8, so a VNC
  client's key and pointer events never arrive (JupyterLab's kernel protocol sends binary
  frames too). The same bug was fixed in jupyter-server-proxy (its issue 50).
* It answers the browser's upgrade without a ``Sec-WebSocket-Protocol``, whatever the server
  chose, and a browser that asked for a subprotocol then drops the connection.

``python -m enclave.workspace.proxy ARGS`` is ``configurable-http-proxy ARGS`` with both
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


def patch() -> None:
    handlers.ProxyHandler.on_message = _on_message
    handlers.ProxyHandler.select_subprotocol = _select_subprotocol


if __name__ == "__main__":
    patch()
    proxy_main()
