"""The browser's half of an RFB (VNC) conversation, read message by message and filtered.

The desktop gateway relays a browser's noVNC client to the session's VNC server. It does not
trust either end with the clipboard: the VNC server is started with its clipboard off, and on
top of that every message the browser sends passes through :class:`ClientFilter`, which

* drops ``ClientCutText`` (the browser's clipboard, plain or extended) before it reaches the
  desktop;
* removes the extended-clipboard pseudo-encoding from ``SetEncodings``, so the server never
  offers clipboard data in that form;
* ends the connection on anything it cannot parse (an unknown message type, a security type
  other than None, a malformed length): an unreadable stream cannot be filtered, so it is not
  relayed.

Only the client-to-server direction is parsed: its messages have fixed or self-described
lengths (RFC 6143 section 7.5 and the community extensions noVNC uses). The message types and
lengths follow RFC 6143 and the RFB community specification (rfbproto).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum

#: The pseudo-encoding that announces RFB's extended clipboard (rfbproto: 0xC0A1E5CE).
EXTENDED_CLIPBOARD = -1063131698
#: The only security type the gateway lets through: the VNC server listens on a socket only
#: the gateway can open, so the browser authenticates to the hub, not to the VNC server.
SECURITY_NONE = 1
#: Client protocol versions in which the client picks the security type (one byte) and then
#: sends ClientInit; RFB 3.3 lets the server pick and is not relayed.
SUPPORTED_VERSIONS = (b"RFB 003.008\n", b"RFB 003.007\n")


class ClientMessage(IntEnum):
    SET_PIXEL_FORMAT = 0
    SET_ENCODINGS = 2
    FRAMEBUFFER_UPDATE_REQUEST = 3
    KEY_EVENT = 4
    POINTER_EVENT = 5
    CLIENT_CUT_TEXT = 6
    ENABLE_CONTINUOUS_UPDATES = 150
    CLIENT_FENCE = 248
    XVP = 250
    SET_DESKTOP_SIZE = 251
    QEMU = 255


#: Message types whose length never changes, header included.
FIXED_LENGTHS = {
    ClientMessage.SET_PIXEL_FORMAT: 20,
    ClientMessage.FRAMEBUFFER_UPDATE_REQUEST: 10,
    ClientMessage.KEY_EVENT: 8,
    ClientMessage.POINTER_EVENT: 6,
    ClientMessage.ENABLE_CONTINUOUS_UPDATES: 10,
    ClientMessage.XVP: 4,
}
#: QEMU client messages by submessage type: only the extended key event (noVNC's).
QEMU_EXTENDED_KEY_EVENT = 0
QEMU_EXTENDED_KEY_EVENT_LENGTH = 12


class ProtocolError(Exception):
    """The browser's side of the RFB stream cannot be read as RFB; the relay ends."""


@dataclass
class Filtered:
    """What the filter made of the bytes it was given."""

    forward: bytes  # what goes on to the VNC server
    dropped_cut_text: int = 0  # clipboard messages withheld


class ClientFilter:
    """Incremental reader of the client-to-server stream (feed it bytes as they arrive).

    The handshake is followed as RFB 3.8 has it: the client's ProtocolVersion (12 bytes), its
    choice of security type (1 byte, which must be None), then ClientInit (1 byte); after that
    normal messages.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._phase = "version"

    def feed(self, data: bytes) -> Filtered:
        self._buffer += data
        out = Filtered(b"")
        parts: list[bytes] = []
        for kind, message in self._messages():
            if kind == ClientMessage.CLIENT_CUT_TEXT:
                out.dropped_cut_text += 1
                continue
            if kind == ClientMessage.SET_ENCODINGS:
                message = _without_extended_clipboard(message)
            parts.append(message)
        out.forward = b"".join(parts)
        return out

    def _messages(self) -> Iterator[tuple[int | None, bytes]]:
        """Complete messages at the front of the buffer, consumed as they are yielded."""
        while True:
            length = self._next_length()
            if length is None or len(self._buffer) < length:
                return
            message = bytes(self._buffer[:length])
            del self._buffer[:length]
            kind: int | None = None
            if self._phase == "version":
                if message not in SUPPORTED_VERSIONS:
                    raise ProtocolError(
                        f"the client speaks {message!r}; only RFB 3.7 and 3.8 are relayed"
                    )
                self._phase = "security"
            elif self._phase == "security":
                if message[0] != SECURITY_NONE:
                    raise ProtocolError(f"the client chose security type {message[0]}, not None")
                self._phase = "init"
            elif self._phase == "init":
                self._phase = "normal"
            else:
                kind = message[0]
            yield kind, message

    def _next_length(self) -> int | None:
        """The length of the message at the front of the buffer, or None until it is known."""
        buffer = self._buffer
        if not buffer:
            return None
        if self._phase == "version":
            return 12
        if self._phase in ("security", "init"):
            return 1
        kind = buffer[0]
        if kind in FIXED_LENGTHS:
            return FIXED_LENGTHS[ClientMessage(kind)]
        if kind == ClientMessage.SET_ENCODINGS:
            if len(buffer) < 4:
                return None
            (count,) = struct.unpack_from(">H", buffer, 2)
            return 4 + 4 * count
        if kind == ClientMessage.CLIENT_CUT_TEXT:
            if len(buffer) < 8:
                return None
            (length,) = struct.unpack_from(">i", buffer, 4)  # negative: extended clipboard
            if abs(length) > 64 * 1024 * 1024:
                raise ProtocolError(f"a clipboard message of {abs(length)} bytes")
            return 8 + abs(length)
        if kind == ClientMessage.CLIENT_FENCE:
            if len(buffer) < 9:
                return None
            if buffer[8] > 64:
                raise ProtocolError("a fence with more than 64 bytes of payload")
            return 9 + buffer[8]
        if kind == ClientMessage.SET_DESKTOP_SIZE:
            if len(buffer) < 8:
                return None
            return 8 + 16 * buffer[6]
        if kind == ClientMessage.QEMU:
            if len(buffer) < 2:
                return None
            if buffer[1] != QEMU_EXTENDED_KEY_EVENT:
                raise ProtocolError(f"QEMU client message {buffer[1]} is not relayed")
            return QEMU_EXTENDED_KEY_EVENT_LENGTH
        raise ProtocolError(f"client message type {kind} is not relayed")


def _without_extended_clipboard(message: bytes) -> bytes:
    (count,) = struct.unpack_from(">H", message, 2)
    encodings = struct.unpack_from(f">{count}i", message, 4)
    kept = [e for e in encodings if e != EXTENDED_CLIPBOARD]
    return struct.pack(f">BxH{len(kept)}i", ClientMessage.SET_ENCODINGS, len(kept), *kept)
