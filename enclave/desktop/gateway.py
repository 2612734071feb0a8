"""The server the hub reaches in a desktop session: the desktop page, its files, its pixels.

``python -m enclave.desktop.gateway --ip IP --port PORT --runtime DIR`` runs as the session's
display account inside the user's network namespace. It starts the VNC server (Xvnc, with the
enforced parameters of :mod:`enclave.desktop.layout`) and answers, under the server's prefix
(``/user/NAME/``), only:

* the desktop page (``/user/NAME/`` and ``/user/NAME/desktop``), a full-window noVNC client;
* its static files: the page's own script and style, and noVNC's modules from Debian's
  ``novnc`` package;
* ``/user/NAME/websockify``, a websocket carrying the RFB stream to the VNC server, with the
  browser's clipboard messages filtered out (:class:`enclave.desktop.rfb.ClientFilter`);
* ``/user/NAME/oauth_callback``, the end of the hub's login.

Every request is checked against the hub (JupyterHub OAuth, the server's access scopes) and
anything else answers 403: there is no contents API, no kernel, no terminal, no file route
facing outward. The process runs as an account the user cannot signal, so the user cannot
replace it, nor the VNC server it started.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from jupyterhub.services.auth import HubOAuth, HubOAuthCallbackHandler, HubOAuthenticated
from jupyterhub.utils import url_path_join
from tornado import httpserver, ioloop, web, websocket
from tornado.iostream import IOStream, StreamClosedError

from enclave.desktop.layout import DesktopPaths, xvnc_command
from enclave.desktop.rfb import ClientFilter, ProtocolError

log = logging.getLogger("enclave.desktop.gateway")

STATIC_DIR = Path(__file__).with_name("static")
#: Debian's noVNC (package ``novnc``): ES modules served as they are.
NOVNC_DIR = Path("/usr/share/novnc")
#: What every other path answers.
DESKTOP_ONLY = (
    "This is a desktop session: only the desktop is served here, as pixels. Files, kernels "
    "and terminals are inside the desktop; results leave through the export review."
)
RELAY_CHUNK = 256 * 1024


class GatewayError(Exception):
    """The gateway cannot start (no VNC server, no socket)."""


class _Authenticated(HubOAuthenticated):
    """Every handler: the hub's login (``HubOAuth.instance()``, configured from the
    environment the hub gives a server), the server's access scopes, 403 for anyone else."""

    def check_xsrf_cookie(self) -> None:
        """Nothing here changes state (pages, files and a websocket are all read with GET),
        so there is no form to forge; the hub's login cookie is checked on every request."""

    def set_default_headers(self) -> None:
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "no-referrer")
        self.set_header(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; "
            "connect-src 'self' ws: wss:; frame-ancestors 'self'",
        )


class DesktopPage(_Authenticated, web.RequestHandler):
    @web.authenticated
    def get(self) -> None:
        prefix = self.settings["prefix"]
        page = (STATIC_DIR / "desktop.html").read_text()
        hub = os.environ.get("JUPYTERHUB_BASE_URL", "/").rstrip("/") + "/"
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(page.replace("{{prefix}}", prefix).replace("{{hub}}", hub))


class AuthenticatedStatic(_Authenticated, web.StaticFileHandler):
    """Static files, for the logged-in owner only (the page that loads them logged them in)."""

    def prepare(self) -> None:
        if self.get_current_user() is None:
            raise web.HTTPError(403, "not logged in to this server")


class Refused(_Authenticated, web.RequestHandler):
    """Any other path: 403, whoever asks (the hub's access check comes first)."""

    def prepare(self) -> None:
        # No redirect to a login for these: nothing is here even after one.
        if self.get_current_user() is None:
            raise web.HTTPError(403, "not logged in to this server")
        raise web.HTTPError(403, DESKTOP_ONLY)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None))[1]
        reason = exc.log_message if isinstance(exc, web.HTTPError) and exc.log_message else ""
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(f"{status_code}: {reason or self._reason}\n")


class RfbRelay(_Authenticated, websocket.WebSocketHandler):
    """The websocket between noVNC and the VNC server's socket."""

    stream: IOStream | None = None

    async def get(self, *args: Any, **kwargs: Any) -> None:
        if self.get_current_user() is None:
            raise web.HTTPError(403, "not logged in to this server")
        await super().get(*args, **kwargs)

    def select_subprotocol(self, subprotocols: list[str]) -> str | None:
        return "binary" if "binary" in subprotocols else None

    async def open(self, *args: Any, **kwargs: Any) -> None:
        self.filter = ClientFilter()
        self.set_nodelay(True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.stream = IOStream(sock)
        try:
            await self.stream.connect(self.settings["rfb_socket"])
        except (OSError, StreamClosedError) as exc:
            log.error("cannot reach the VNC server: %s", exc)
            self.close(1011, "the desktop is not running")
            return
        log.info("desktop connection opened for %s", self.current_user["name"])
        asyncio.ensure_future(self._pump())

    async def _pump(self) -> None:
        """VNC server -> browser, as it comes (pixels; the server sends no clipboard)."""
        assert self.stream is not None
        try:
            while True:
                data = await self.stream.read_bytes(RELAY_CHUNK, partial=True)
                await self.write_message(data, binary=True)
        except (StreamClosedError, websocket.WebSocketClosedError):
            pass
        finally:
            self.close()

    async def on_message(self, message: str | bytes) -> None:
        if self.stream is None or isinstance(message, str):
            self.close(1003, "binary RFB only")
            return
        try:
            filtered = self.filter.feed(message)
        except ProtocolError as exc:
            log.warning("closing a desktop connection: %s", exc)
            self.close(1008, str(exc)[:120])
            return
        if filtered.dropped_cut_text:
            log.info("dropped %d clipboard message(s) from the browser", filtered.dropped_cut_text)
        if filtered.forward:
            with contextlib.suppress(StreamClosedError):
                await self.stream.write(filtered.forward)

    def on_close(self) -> None:
        if self.stream is not None:
            self.stream.close()
            self.stream = None


def make_app(prefix: str, rfb_socket: Path) -> web.Application:
    def route(path: str) -> str:
        return url_path_join(prefix, path)

    handlers: list[Any] = [
        (route("/?"), DesktopPage),
        (route("desktop"), DesktopPage),
        (route("oauth_callback"), HubOAuthCallbackHandler),
        (route("websockify"), RfbRelay),
        (route("static/desktop/(.*)"), AuthenticatedStatic, {"path": str(STATIC_DIR)}),
        (route("static/novnc/(.*)"), AuthenticatedStatic, {"path": str(NOVNC_DIR)}),
        (r".*", Refused),
    ]
    return web.Application(
        handlers,
        prefix=prefix,
        rfb_socket=str(rfb_socket),
        cookie_secret=secrets.token_bytes(32),
        websocket_ping_interval=30,
        xsrf_cookies=False,
    )


def start_vnc(paths: DesktopPaths, geometry: str, extra: list[str]) -> subprocess.Popen[bytes]:
    """Start Xvnc and return once its RFB socket accepts connections."""
    xvnc = shutil.which("Xvnc")
    if xvnc is None:
        raise GatewayError("Xvnc is missing (Debian package tigervnc-standalone-server)")
    with contextlib.suppress(FileNotFoundError):
        paths.rfb_socket.unlink()
    read_end, write_end = os.pipe()
    command = xvnc_command(xvnc, paths, geometry=geometry, extra=extra)
    proc = subprocess.Popen(
        [*command, "-displayfd", str(write_end)],
        pass_fds=(write_end,),
        stdin=subprocess.DEVNULL,
        cwd=paths.vnc_dir,
    )
    os.close(write_end)
    with os.fdopen(read_end, "rb") as ready:  # Xvnc writes its display number when ready
        announced = ready.readline()
    if proc.poll() is not None or not announced.strip():
        raise GatewayError(f"Xvnc exited with status {proc.wait()} before it was ready")
    return proc


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ip", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--runtime", required=True, help="the session's runtime folder")
    parser.add_argument("--geometry", default="1280x800")
    parser.add_argument("--vnc-parameter", action="append", default=[], dest="vnc_parameters")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="[%(levelname).1s %(asctime)s desktop-gateway] %(message)s"
    )
    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/")
    paths = DesktopPaths(Path(args.runtime))
    try:
        vnc = start_vnc(paths, args.geometry, args.vnc_parameters)
    except GatewayError as exc:
        sys.exit(f"error: {exc}")
    HubOAuth.instance(cache_max_age=60)  # from the hub's JUPYTERHUB_* environment
    app = make_app(prefix, paths.rfb_socket)
    server = httpserver.HTTPServer(app, xheaders=True)
    server.listen(args.port, args.ip)
    loop = ioloop.IOLoop.current()

    def stop(*_: Any) -> None:
        loop.add_callback_from_signal(loop.stop)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    def watch_vnc() -> None:
        if vnc.poll() is not None:
            log.error("the VNC server exited with status %s; stopping", vnc.returncode)
            loop.stop()

    ioloop.PeriodicCallback(watch_vnc, 1000).start()
    log.info(
        "desktop of %s on %s:%d%s", os.environ.get("JUPYTERHUB_USER"), args.ip, args.port, prefix
    )
    try:
        loop.start()
    finally:
        vnc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            vnc.wait(5)
        if vnc.poll() is None:
            vnc.kill()


if __name__ == "__main__":
    main()
