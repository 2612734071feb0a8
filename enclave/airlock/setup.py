"""Opening the airlock on a state directory: catalog, site key, accounts, limits."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from enclave.airlock.uploads import FileSource
from enclave.airlock.workflow import Airlock


@dataclass(frozen=True)
class SiteSigner:
    """The site's Ed25519 key (the audit checkpoint key), as ``release.Signer``."""

    key: Any  # Ed25519PrivateKey

    def sign(self, data: bytes) -> bytes:
        return bytes(self.key.sign(data))

    def public_key_bytes(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return bytes(
            self.key.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
        )


def open_airlock(state_dir: Path, database_url: str | None = None) -> tuple[Airlock, Any]:
    """The ``Airlock`` of a state directory and its provider ``Transparency``."""
    from catalog.audit import load_or_create_signing_key
    from catalog.db import resolve_database_url
    from catalog.service import open_catalog
    from enclave.airlock.transparency import Transparency
    from enclave.workspace.hub import HubSettings

    settings = HubSettings.load(state_dir)
    catalog = open_catalog(resolve_database_url(Path(state_dir), database_url))
    signer = SiteSigner(load_or_create_signing_key(Path(state_dir)))
    airlock = Airlock(
        catalog,
        Path(state_dir),
        signer,
        home_root=Path(settings.home_root),
        unix_prefix=settings.unix_prefix,
        site=settings.public_url,
        # One machine: the airlock runs as root and copies from ~/outputs itself.
        file_source=FileSource.HOME,
    )
    return airlock, Transparency(catalog, airlock, Path(state_dir))


#: How often the airlock service signs an audit checkpoint (entries after the newest one are
#: not yet sealed: see docs/audit.md).
CHECKPOINT_SECONDS = 300.0


def checkpoint_forever(catalog: Any, signer: SiteSigner, every: float = CHECKPOINT_SECONDS) -> None:
    """Sign a checkpoint over the audit log every ``every`` seconds (a daemon thread's loop);
    a failure is logged and tried again next time."""
    import logging
    import time

    from catalog.audit import checkpoint

    log = logging.getLogger("enclave.airlock")
    while True:
        try:
            made = checkpoint(catalog, signer.key)
            if made is not None:
                log.info("audit checkpoint %s: %s entries", made.id, made.tree_size)
        except Exception:
            log.exception("the audit checkpoint failed")
        time.sleep(every)
