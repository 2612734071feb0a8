"""Entry point of a user's Jupyter server: ``python -m enclave.workspace.singleuser ARGS``.

The same as ``jupyterhub-singleuser`` with two start-up fixes, both for work that slowed every
server start and that an offline enclave server never needs (figures in docs/performance.md):

* ``jsonschema`` imports the optional ``rfc3987_syntax`` package, which compiles a Lark grammar at
  import time, on every server start, for an ``iri`` format check Jupyter's event schemas never
  use. Marking it absent makes ``jsonschema`` skip that check.
* importing ``jupyterlab.labapp`` computes the JupyterLab version through ``AppOptions``, whose
  ``registry`` default runs ``node yarn.js config --json`` in a subprocess when Node.js is on the
  PATH. The registry is the npm URL for installing extensions, which an enclave server cannot
  reach and whose extension manager is read-only; the enclave reports no yarn/npm
  configuration, so the default registry URL stands and nothing runs.

Everything else is ``jupyterhub.singleuser`` unchanged. :func:`prepare_imports` is what the
zygote (``enclave.workspace.zygote``) runs before it forks, so both paths start the same server.
"""

from __future__ import annotations

import sys

NO_YARN_CONFIG: dict[str, dict] = {"yarn config": {}, "npm config": {}}


def _no_yarn_config(logger: object = None) -> dict[str, dict]:
    return {key: dict(value) for key, value in NO_YARN_CONFIG.items()}


def block_slow_optional_imports() -> None:
    """The start-up fixes above; call before anything imports jsonschema or jupyterlab."""
    sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]
    import jupyterlab.commands

    jupyterlab.commands._yarn_config = _no_yarn_config


def prepare_imports() -> None:
    """Import what every server start needs (the zygote does this once, before forking)."""
    block_slow_optional_imports()
    import jupyterhub.singleuser  # noqa: F401
    import jupyterlab.labapp  # noqa: F401


def main() -> None:
    block_slow_optional_imports()
    from jupyterhub.singleuser import main as singleuser_main

    sys.exit(singleuser_main())


if __name__ == "__main__":
    main()
