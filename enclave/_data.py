"""Where the enclave's data folders are: the hub configuration, the policies, the examples,
the Kubernetes deployment.

In a checkout they are its top-level folders ``hub_config/``, ``policies/``, ``examples/`` and
``deploy/``. A wheel installs the same folders as shared data under ``<prefix>/share/enclave/``. They are
found the way JupyterHub's ``_data.py`` finds ``share/jupyterhub``: walk up from this package,
then from ``sys.prefix``, taking the first folder that holds them.
"""

from __future__ import annotations

import os
import sys
from functools import cache
from pathlib import Path

from enclave.errors import EnclaveError

#: The shipped data folders, by name in a checkout and under ``share/enclave`` when installed.
DATA_FOLDERS = ("hub_config", "policies", "examples", "deploy")
#: A file every complete data root has.
MARKER = Path("hub_config") / "jupyterhub_config.py"
#: Set to a data root to use that one instead (a site's own copy).
DATA_DIR_ENV = "ENCLAVE_DATA_DIR"


class DataFilesError(EnclaveError):
    """The enclave's shipped data files cannot be found."""


def _candidates() -> list[Path]:
    starts = [Path(__file__).resolve().parent, Path(sys.prefix).resolve()]
    roots: list[Path] = []
    for start in starts:
        for folder in (start, *start.parents):
            roots += [folder / "share" / "enclave", folder]
    return roots


@cache
def data_root() -> Path:
    """The folder holding ``hub_config/``, ``policies/`` and ``examples/``."""
    override = os.environ.get(DATA_DIR_ENV)
    if override:
        root = Path(override)
        if not (root / MARKER).is_file():
            raise DataFilesError(f"{DATA_DIR_ENV}={override} does not hold {MARKER}")
        return root
    for root in _candidates():
        if (root / MARKER).is_file():
            return root
    raise DataFilesError(
        f"the enclave's data files ({', '.join(DATA_FOLDERS)}) are neither next to "
        f"{Path(__file__).parent} nor under {Path(sys.prefix) / 'share' / 'enclave'}: "
        f"reinstall the package, or set {DATA_DIR_ENV} to a folder that holds them"
    )


def data_path(*parts: str) -> Path:
    """A path inside the data root, e.g. ``data_path("policies", "jupyterlab")``."""
    return data_root().joinpath(*parts)
