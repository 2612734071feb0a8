"""Entry point of a user's Jupyter server: ``python -m enclave.workspace.singleuser ARGS``.

The same as ``jupyterhub-singleuser`` with one start-up fix: ``jsonschema`` imports the optional
``rfc3987_syntax`` package, which compiles a Lark grammar at import time (about 4 s of CPU on
this machine, on every server start, for an ``iri`` format check Jupyter's event schemas never
need). Marking it absent makes ``jsonschema`` skip that check; everything else is unchanged.
"""

from __future__ import annotations

import sys


def main() -> None:
    sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]
    from jupyterhub.singleuser import main as singleuser_main

    sys.exit(singleuser_main())


if __name__ == "__main__":
    main()
