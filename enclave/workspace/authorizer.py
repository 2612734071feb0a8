"""The user server's authorizer: JupyterHub's access check, and no downloads.

JupyterHub's single-user extension only installs an identity provider, so the authorizer is set on
the spawner's command line (``--ServerApp.authorizer_class=...``), where a user's own
``~/.jupyter`` config cannot override it. Subclassing ``JupyterHubAuthorizer`` keeps the hub's
``access:servers`` scope check; on top of it every route that hands a file to the browser as a
download is refused with 403:

* ``/files/...`` (``FilesHandler``, raw file bytes, "Download" in the file browser);
* ``/view/...`` (an HTML page that embeds ``/files/``);
* everything under the ``nbconvert`` resource (``/nbconvert/FORMAT/PATH?download=true``,
  ``POST /nbconvert/FORMAT``, the ``/api/nbconvert`` format list that feeds "Export As").

This is defence in depth: the network namespace is the barrier, and whatever the browser can show
(a notebook cell, a plot) a person can still copy by hand. Results leave through the export path.
"""

from __future__ import annotations

from typing import Any

from jupyterhub.singleuser.extension import JupyterHubAuthorizer
from tornado.web import HTTPError

DOWNLOADS_DISABLED = (
    "Downloads are disabled in this enclave: data stays inside. "
    "Results leave through the export review (save them under ~/outputs)."
)

# Resources (handler.auth_resource) that exist only to turn a file into a download.
REFUSED_RESOURCES = frozenset({"nbconvert"})
# URL path segments (after the server's base URL) served by download handlers.
REFUSED_PREFIXES = ("files/", "view/")


def is_download_request(handler: Any, resource: str) -> bool:
    """Whether this request would hand file content to the browser as a download."""
    if resource in REFUSED_RESOURCES:
        return True
    base = handler.settings.get("base_url", "/")
    path = handler.request.path
    rest = path[len(base) :] if path.startswith(base) else path.lstrip("/")
    return rest.startswith(REFUSED_PREFIXES)


class NoDownloadAuthorizer(JupyterHubAuthorizer):
    """``JupyterHubAuthorizer`` that also refuses every download route (403)."""

    def is_authorized(self, handler: Any, user: Any, action: str, resource: str) -> bool:
        if not super().is_authorized(handler, user, action, resource):
            return False
        if is_download_request(handler, resource):
            self.log.warning(
                "refused %s %s for %s: downloads are disabled in this enclave "
                "(results leave through the export path)",
                handler.request.method,
                handler.request.path,
                getattr(user, "username", "?"),
            )
            # Raised rather than returned so the page tells the person why, not just "forbidden".
            raise HTTPError(403, DOWNLOADS_DISABLED)
        return True
