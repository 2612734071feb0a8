"""Access events of the hub (logins, failed logins, spawns, stops, dataset mounts), appended
to the catalog's tamper-evident audit log (``catalog/audit.py``).

Recording fails closed: a mount or a spawn whose event cannot be written does not happen.
"""

from __future__ import annotations

import threading
from typing import Any

_CATALOGS: dict[str, Any] = {}
_LOCK = threading.Lock()


def _catalog(url: str) -> Any:
    with _LOCK:
        if url not in _CATALOGS:
            from catalog.service import open_catalog

            _CATALOGS[url] = open_catalog(url)
        return _CATALOGS[url]


def record(catalog_url: str, actor: str, action: str, target: str, **details: Any) -> None:
    """Append one event; a no-op where no catalog is configured (unit tests of the hub)."""
    if not catalog_url:
        return
    _catalog(catalog_url).record_event(actor, action, target, details)
