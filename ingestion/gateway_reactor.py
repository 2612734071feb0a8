"""pynetdicom's association reactors for the gateway, waiting on events instead of polling.

pynetdicom 3 runs two loops per association: the DUL loop sleeps 1 ms whenever it finds no
PDU on the socket and no primitive to send, and the association loop sleeps 1 ms before each
look for a complete DIMSE message. storescu waits for each C-STORE answer before it sends the
next image, so those sleeps are latency on every image, and the wake-ups cost CPU on a busy
machine. Here, for the gateway's own associations only (nothing in pynetdicom is patched;
other AEs in the process keep its behaviour):

- the DUL waits in ``select`` on its socket and on a pipe that ``send_pdu`` writes to, so it
  wakes as soon as a PDU arrives or an answer is queued (at most ``IDLE_WAIT`` otherwise, for
  its timers and its stop flag);
- the association loop blocks on the DIMSE message queue (at most ``IDLE_WAIT``, then it
  checks release, abort and the idle timer as pynetdicom's loop does).

``start_server`` is ``AE.start_server(block=False)`` with these reactors.
"""

from __future__ import annotations

import contextlib
import os
import queue
import select
import ssl
import threading
import time
from datetime import datetime
from typing import Any, cast

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer
from pynetdicom.utils import make_target

#: Longest wait with nothing to do before a loop checks its timers and stop flags (seconds).
IDLE_WAIT = 0.005


class WaitingDUL(DULServiceProvider):
    """A DUL service provider that sleeps in ``select`` until there is work.

    Made from a freshly built ``DULServiceProvider`` (before its thread starts) by
    ``WaitingDUL.adopt``, which keeps every timer and queue pynetdicom set up."""

    _wake_r: int
    _wake_w: int
    _waiting: bool

    @classmethod
    def adopt(cls, dul: DULServiceProvider) -> WaitingDUL:
        if dul.is_alive():
            raise RuntimeError("the DUL reactor is already running: it cannot be adopted")
        dul.__class__ = cls
        adopted = cast(WaitingDUL, dul)
        adopted._waiting = False
        adopted._wake_r, adopted._wake_w = os.pipe()
        os.set_blocking(adopted._wake_r, False)
        os.set_blocking(adopted._wake_w, False)
        # The wait happens in _process_recv_primitive; pynetdicom's own sleep becomes a yield.
        adopted._run_loop_delay = 0
        return adopted

    def send_pdu(self, primitive: Any) -> None:
        super().send_pdu(primitive)
        if self._waiting:  # only a reactor in select needs the wake-up (see _wait_for_work)
            with contextlib.suppress(BlockingIOError, OSError):  # full pipe: one is pending
                os.write(self._wake_w, b"\0")

    def _process_recv_primitive(self) -> bool:
        # Called at the top of every reactor loop: wait here while nothing is queued. The flag
        # is raised before the queues are looked at, so a primitive queued after the look
        # always finds it raised and writes to the pipe.
        self._waiting = True
        try:
            if self.event_queue.empty() and self.to_provider_queue.empty():
                self._wait_for_work()
        finally:
            self._waiting = False
        return super()._process_recv_primitive()

    def _wait_for_work(self) -> None:
        sock = self.socket
        raw = getattr(sock, "socket", None) if sock is not None else None
        if raw is None or not getattr(sock, "_is_connected", False):
            time.sleep(IDLE_WAIT)
            return
        if isinstance(raw, ssl.SSLSocket) and raw.pending():
            return  # decrypted bytes already buffered: select would not see them
        try:
            readable, _, _ = select.select([raw, self._wake_r], [], [], IDLE_WAIT)
        except (OSError, ValueError):  # socket closed under us: the reactor notices next
            return
        if self._wake_r in readable:
            with contextlib.suppress(BlockingIOError, OSError):
                os.read(self._wake_r, 4096)

    def run_reactor(self) -> None:
        try:
            super().run_reactor()
        finally:
            for fd in (self._wake_r, self._wake_w):
                with contextlib.suppress(OSError):
                    os.close(fd)


class WaitingAssociation(Association):
    """An acceptor association whose loop blocks on the DIMSE message queue."""

    @classmethod
    def adopt(cls, assoc: Association) -> WaitingAssociation:
        if assoc.is_alive():
            raise RuntimeError("the association is already running: it cannot be adopted")
        assoc.__class__ = cls
        WaitingDUL.adopt(assoc.dul)
        return cast(WaitingAssociation, assoc)

    def _run_reactor(self) -> None:
        # pynetdicom's Association._run_reactor, with its 1 ms sleep replaced by a blocking get.
        self._is_paused = False
        messages = self.dimse.msg_queue
        while not self._kill:
            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False
            try:
                context_id, msg = messages.get(timeout=IDLE_WAIT)
            except queue.Empty:
                context_id, msg = None, None
            if msg:
                self._serve_request(msg, cast(int, context_id))

            if self.is_established and self.acse.is_release_requested():
                self.acse.send_release(is_response=True)
                self.is_released = True
                self.is_established = False
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return

            if self.acse.is_aborted():
                self.dul.receive_pdu(wait=False)
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return

            if not self.dul.is_alive():
                self.kill()
                return

            if self.dul.idle_timer_expired():
                if self.network_timeout_response == "A-RELEASE":
                    self._is_paused = True
                    self._reactor_checkpoint.wait()
                    self.release()
                    self._is_paused = False
                else:
                    self.abort()
                self.kill()
                return


class WaitingRequestHandler(RequestHandler):
    """pynetdicom's request handler, building waiting associations."""

    def _create_association(self) -> Association:
        return WaitingAssociation.adopt(super()._create_association())


def start_server(
    ae: Any,
    address: tuple[str, int],
    *,
    evt_handlers: list[Any],
    ssl_context: ssl.SSLContext | None = None,
) -> ThreadedAssociationServer:
    """``ae.start_server(address, block=False, ...)`` with the waiting reactors."""
    server = ae.make_server(
        address,
        ssl_context=ssl_context,
        evt_handlers=evt_handlers,
        server_class=ThreadedAssociationServer,
        request_handler=WaitingRequestHandler,
    )
    timestamp = datetime.strftime(datetime.now(), "%Y%m%d%H%M%S")
    thread = threading.Thread(
        target=make_target(server.serve_forever), name=f"AcceptorServer@{timestamp}"
    )
    thread.daemon = True
    thread.start()
    ae._servers.append(server)
    return cast(ThreadedAssociationServer, server)
