"""The hub's proxy: the ``configurable-http-proxy`` Python package, with binary frames kept
binary from the browser to the server.

Its websocket handler (0.4.0) forwards a browser's frames with ``write_message(message)``,
which sends bytes as a *text* frame; the server's tornado then refuses frames that are not
UTF-8, so a VNC client's key and pointer events never arrive (JupyterLab's kernel protocol
sends binary frames too). The same bug was fixed in jupyter-server-proxy (its issue 50).
``python -m enclave.workspace.proxy ARGS`` is ``configurable-http-proxy ARGS`` with that one
method mended.
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


def patch() -> None:
    handlers.ProxyHandler.on_message = _on_message


if __name__ == "__main__":
    patch()
    proxy_main()
