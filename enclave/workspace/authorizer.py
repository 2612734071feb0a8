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

and in a notebook session the contents API does not hand over the content of a granted dataset
file (``GET /api/contents/datasets/...`` with content, through any link into ``~/datasets``,
nor a copy of one made by ``POST /api/contents`` with ``copy_from``); listing the folders stays.

This is defence in depth, not the barrier: a kernel can still print a file, or copy it into
the home, and whatever the browser shows (a cell's output, a plot) a person can copy by hand.
That is why data from providers is granted for desktop sessions (pixels only), and notebook
sessions get only what an admin marked for notebooks. Results leave through the export path.
"""

from __future__ import annotations

import json
import os
from typing import Any
from urllib.parse import unquote

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
CONTENTS_PREFIX = "api/contents/"
DATASETS_DIR = "datasets"
DATASET_CONTENT_REFUSED = (
    "Dataset files are not sent to the browser in a notebook session: open them in code "
    "(enclave.data), or work in a desktop session, where only pixels leave."
)


def _route(handler: Any) -> str:
    """The request path after the server's base URL."""
    base = handler.settings.get("base_url", "/")
    path = handler.request.path
    return path[len(base) :] if path.startswith(base) else path.lstrip("/")


def is_download_request(handler: Any, resource: str) -> bool:
    """Whether this request would hand file content to the browser as a download."""
    if resource in REFUSED_RESOURCES:
        return True
    return _route(handler).startswith(REFUSED_PREFIXES)


def _dataset_file(root: str, api_path: str) -> bool:
    """Whether ``api_path`` (relative to the server's root) is, after every link, a file
    inside ``root/datasets``."""
    real_root = os.path.realpath(os.path.join(root, DATASETS_DIR))
    target = os.path.realpath(os.path.join(root, unquote(api_path).lstrip("/")))
    inside = target == real_root or target.startswith(real_root + os.sep)
    return inside and not os.path.isdir(target)


def is_dataset_content_request(handler: Any, resource: str) -> bool:
    """Whether this contents-API request would send a dataset file's bytes to the browser
    (reading it with content, or copying it somewhere the browser may then read it)."""
    route = _route(handler)
    if resource != "contents" or not route.startswith(CONTENTS_PREFIX):
        return False
    root = getattr(handler.settings.get("contents_manager"), "root_dir", None)
    if not root:
        return True  # cannot tell where the file is: refuse rather than guess
    request = handler.request
    path = route[len(CONTENTS_PREFIX) :]
    if request.method == "GET":
        wants_content = handler.get_argument("content", "1") not in ("0", "false")
        return wants_content and _dataset_file(root, path.split("/checkpoints")[0])
    if request.method in ("POST", "PUT") and request.body:
        try:
            model = json.loads(request.body)
        except ValueError:
            return False  # the handler refuses a body that is not JSON itself
        source = model.get("copy_from") if isinstance(model, dict) else None
        return isinstance(source, str) and _dataset_file(root, source)
    return False


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
        if is_dataset_content_request(handler, resource):
            self.log.warning(
                "refused %s %s for %s: dataset content is not sent to the browser",
                handler.request.method,
                handler.request.path,
                getattr(user, "username", "?"),
            )
            raise HTTPError(403, DATASET_CONTENT_REFUSED)
        return True
