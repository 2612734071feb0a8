"""A small RFB (VNC) client over a websocket, for tests: what a browser's noVNC would do.

It speaks RFB 3.8 with security None through the desktop gateway, asks for raw 32-bit pixels
(so a frame is plain numbers to compare), sends keys and clipboard text, and keeps every
server message it reads, so a test can tell whether the server ever sent clipboard text.
"""

from __future__ import annotations

import asyncio
import struct
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tornado.httpclient import HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

SERVER_CUT_TEXT = 3
FRAMEBUFFER_UPDATE = 0
BELL = 2
SET_COLOUR_MAP = 1
RAW, DESKTOP_SIZE, EXTENDED_DESKTOP_SIZE, LAST_RECT = 0, -223, -308, -224


@dataclass
class RfbClient:
    url: str
    headers: dict[str, str]
    conn: WebSocketClientConnection | None = None
    buffer: bytearray = field(default_factory=bytearray)
    width: int = 0
    height: int = 0
    frame: np.ndarray | None = None
    server_cut_texts: list[bytes] = field(default_factory=list)
    received_bytes: int = 0
    raw_messages: list[bytes] = field(default_factory=list)

    async def _open(self) -> None:
        request = HTTPRequest(self.url, headers=self.headers)
        self.conn = await websocket_connect(request, subprotocols=["binary"])

    async def connect(self, *, encodings: tuple[int, ...] = (RAW, DESKTOP_SIZE)) -> None:
        await self._open()
        version = await self._read(12)
        assert version.startswith(b"RFB 003."), version
        await self._send(b"RFB 003.008\n")
        (count,) = await self._read(1)
        types = await self._read(count)
        assert 1 in types, f"security None not offered: {list(types)}"
        await self._send(bytes([1]))
        (result,) = struct.unpack(">I", await self._read(4))
        assert result == 0, "security handshake failed"
        await self._send(b"\x01")  # ClientInit: shared
        self.width, self.height = struct.unpack(">HH", await self._read(4))
        await self._read(16)  # the server's pixel format
        (name_length,) = struct.unpack(">I", await self._read(4))
        await self._read(name_length)
        # 32 bpp, depth 24, little endian, true colour: blue, green, red, unused in memory.
        await self._send(
            struct.pack(">BxxxBBBBHHHBBBxxx", 0, 32, 24, 0, 1, 255, 255, 255, 16, 8, 0)
        )
        await self._send(struct.pack(f">BxH{len(encodings)}i", 2, len(encodings), *encodings))
        self.frame = np.zeros((self.height, self.width, 4), np.uint8)

    async def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    async def request_frame(self, incremental: bool = False) -> None:
        await self._send(struct.pack(">BBHHHH", 3, int(incremental), 0, 0, self.width, self.height))

    async def full_frame(self, timeout: float = 10) -> np.ndarray:
        await self.request_frame(False)
        await self.read_until_update(timeout)
        assert self.frame is not None
        return self.frame.copy()

    async def key(self, keysym: int) -> None:
        await self._send(struct.pack(">BBxxI", 4, 1, keysym))
        await self._send(struct.pack(">BBxxI", 4, 0, keysym))

    async def set_desktop_size(self, width: int, height: int) -> None:
        """What noVNC sends when the browser window changes size (one screen)."""
        await self._send(
            struct.pack(">BxHHBx", 251, width, height, 1)
            + struct.pack(">IHHHHI", 0, 0, 0, width, height, 0)
        )

    async def client_cut_text(self, text: bytes) -> None:
        await self._send(struct.pack(">BxxxI", 6, len(text)) + text)

    async def read_until_update(self, timeout: float) -> bool:
        """Read messages until a framebuffer update with pixels is complete; False on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                kind = (await asyncio.wait_for(self._read(1), left))[0]
            except TimeoutError:
                return False
            if await self._message(kind):
                return True

    async def listen(self, seconds: float) -> None:
        """Read whatever the server sends for ``seconds`` (updates and anything else)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                kind = (await asyncio.wait_for(self._read(1), left))[0]
            except TimeoutError:
                return
            await self._message(kind)

    async def _message(self, kind: int) -> bool:
        if kind == FRAMEBUFFER_UPDATE:
            (count,) = struct.unpack(">xH", await self._read(3))
            pixels = False
            for _ in range(count):
                x, y, w, h, encoding = struct.unpack(">HHHHi", await self._read(12))
                if encoding == RAW:
                    data = await self._read(w * h * 4)
                    assert self.frame is not None
                    self.frame[y : y + h, x : x + w] = np.frombuffer(data, np.uint8).reshape(
                        h, w, 4
                    )
                elif encoding == DESKTOP_SIZE:
                    self.width, self.height = w, h
                    self.frame = np.zeros((h, w, 4), np.uint8)
                elif encoding == EXTENDED_DESKTOP_SIZE:
                    (screens,) = struct.unpack(">Bxxx", await self._read(4))
                    await self._read(16 * screens)
                    self.width, self.height = w, h
                    self.frame = np.zeros((h, w, 4), np.uint8)
                elif encoding == LAST_RECT:
                    break
                else:
                    raise AssertionError(f"unexpected encoding {encoding}")
            if not pixels:
                # Only the screen layout: a server with ExtendedDesktopSize answers a full
                # request with it, and the pixels to an incremental one (as noVNC asks).
                await self.request_frame(True)
            return pixels
        if kind == SERVER_CUT_TEXT:
            (length,) = struct.unpack(">xxxi", await self._read(7))
            self.server_cut_texts.append(await self._read(abs(length)))
            return False
        if kind == BELL:
            return False
        if kind == SET_COLOUR_MAP:
            _, count = struct.unpack(">xHH", await self._read(5))
            await self._read(6 * count)
            return False
        raise AssertionError(f"unexpected server message type {kind}")

    async def _send(self, data: bytes) -> None:
        assert self.conn is not None
        await self.conn.write_message(data, binary=True)

    async def _chunk(self) -> bytes:
        assert self.conn is not None
        message: Any = await self.conn.read_message()
        if message is None:
            raise ConnectionError("the desktop closed the connection")
        return bytes(message)

    async def _read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            message = await self._chunk()
            self.received_bytes += len(message)
            self.raw_messages.append(message)
            self.buffer += message
        data = bytes(self.buffer[:n])
        del self.buffer[:n]
        return data


@dataclass
class UnixRfbClient(RfbClient):
    """The same client on a VNC server's own Unix socket (no gateway, no proxy)."""

    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None

    async def _open(self) -> None:
        self.reader, self.writer = await asyncio.open_unix_connection(self.url)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    async def _send(self, data: bytes) -> None:
        assert self.writer is not None
        self.writer.write(data)
        await self.writer.drain()

    async def _chunk(self) -> bytes:
        assert self.reader is not None
        data = await self.reader.read(65536)
        if not data:
            raise ConnectionError("the VNC server closed the connection")
        return data


def as_rgb(frame: np.ndarray) -> np.ndarray:
    """BGRX from the server to RGB for saving."""
    return frame[:, :, [2, 1, 0]]
