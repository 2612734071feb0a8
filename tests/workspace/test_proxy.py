"""The hub's proxy mends three websocket defects of configurable-http-proxy 0.4.0."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from enclave.workspace import proxy


class Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple[Any, bool]] = []
        self.nodelay: list[bool] = []

    def write_message(self, message: Any, binary: bool = False) -> None:
        self.sent.append((message, binary))

    def set_nodelay(self, value: bool) -> None:
        self.nodelay.append(value)


def handler(ws_client: Any = None) -> Any:
    activity: list[str] = []
    return SimpleNamespace(
        ws_client=ws_client,
        target={"prefix": "/user/rita"},
        proxy=SimpleNamespace(update_last_activity=activity.append),
        activity=activity,
    )


def test_a_browsers_binary_frames_reach_the_server_as_binary_and_text_as_text():
    client = Recorder()
    h = handler(client)
    proxy._on_message(h, b"\x04\x01\x00\x00\xff\xbe\x00\x00")  # an RFB key event: not UTF-8
    proxy._on_message(h, '{"msg": "text"}')
    assert client.sent == [(b"\x04\x01\x00\x00\xff\xbe\x00\x00", True), ('{"msg": "text"}', False)]
    assert h.activity == ["/user/rita", "/user/rita"]  # the idle culler still sees traffic


def test_the_browser_gets_the_subprotocol_the_server_chose_if_it_asked_for_it():
    chosen = handler(SimpleNamespace(selected_subprotocol="binary"))
    assert proxy._select_subprotocol(chosen, ["binary", "base64"]) == "binary"
    assert proxy._select_subprotocol(chosen, ["base64"]) is None
    assert (
        proxy._select_subprotocol(handler(SimpleNamespace(selected_subprotocol=None)), ["binary"])
        is None
    )


def test_the_patch_replaces_the_handlers_methods():
    from configurable_http_proxy import handlers

    proxy.patch()
    assert handlers.ProxyHandler.on_message is proxy._on_message
    assert handlers.ProxyHandler.select_subprotocol is proxy._select_subprotocol
    assert handlers.ProxyHandler.open is proxy._open
