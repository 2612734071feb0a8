"""The airlock on a cluster: ``enclave.airlock`` as the Deployment ``enclave-airlock``.

The hub knows it as the service ``airlock`` (the chart's ``hub.services``, with the embedded
hub's OAuth settings and scopes: ``enclave.workspace.hub.airlock_service_fields``); the proxy
routes ``/services/airlock/`` to it, and that is the only way user pods reach it (their
NetworkPolicy allows the proxy, not this pod).

Its state directory is its own volume (``enclave-airlock``), which holds only

* ``airlock/requests/ID/ROUND/``: the copies of a request's files that the checks and the
  reviewers see;
* ``airlock/releases/ID/``: released bundles, signed;
* ``audit/``: the site signing key (Ed25519, mode 0600) and its ``verify.key``.

The signing key is made on first use in that volume rather than taken from a Secret: a Secret
is stored in etcd and readable by whoever may read Secrets in the namespace, and someone would
have to make the key outside the cluster first; made in the volume, the private key is never
anywhere but this pod's volume (back it up with the volume), and only its public half leaves
(``GET /services/airlock/api/key``).

What differs from one machine: there the airlock (root) copies a request's files from the
requester's ``~/outputs``. On a cluster each home is a volume of that user's own pod, which this
pod does not mount, so this airlock takes files only as uploads (``FileSource.UPLOAD``):
``enclave airlock submit`` in the pod uploads them, with their lineage records, into this
volume's staging area (``enclave.airlock.uploads``), and everything after staging is the same
code as on one machine (see docs/kubernetes.md).
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

from enclave.airlock.uploads import FileSource
from enclave.airlock.workflow import Airlock

log = logging.getLogger("enclave.airlock")


def open_cluster_airlock(state_dir: Path, database_url: str, site: str) -> tuple[Airlock, Any]:
    """The airlock of the volume at ``state_dir`` and its provider ``Transparency``."""
    from catalog.audit import load_or_create_signing_key
    from catalog.db import resolve_database_url
    from catalog.service import open_catalog
    from enclave.airlock.setup import SiteSigner
    from enclave.airlock.transparency import Transparency

    catalog = open_catalog(resolve_database_url(Path(state_dir), database_url))
    signer = SiteSigner(load_or_create_signing_key(Path(state_dir)))
    airlock = Airlock(catalog, Path(state_dir), signer, site=site, file_source=FileSource.UPLOAD)
    return airlock, Transparency(catalog, airlock, Path(state_dir))


def main(argv: list[str] | None = None) -> None:
    """``python -m enclave.kubernetes.airlock --state-dir DIR --port PORT --site URL``."""
    from enclave.airlock.web import serve

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--database-url", default=os.environ.get("ENCLAVE_DB_URL", ""))
    parser.add_argument("--port", type=int, default=8092)
    parser.add_argument("--site", required=True, help="the enclave's public URL")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="[%(levelname).1s %(asctime)s airlock] %(message)s"
    )
    airlock, transparency = open_cluster_airlock(args.state_dir, args.database_url, args.site)
    serve(airlock, transparency, "0.0.0.0", args.port)


if __name__ == "__main__":
    main()
