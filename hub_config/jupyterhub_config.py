"""JupyterHub configuration of the embedded enclave (``enclave up`` starts the hub with it).

Everything is built by ``enclave.workspace.hub.configure`` from the state directory named by
``$ENCLAVE_STATE_DIR`` (settings in ``STATE_DIR/hub/settings.json``). When ``enclave up`` has
unsealed the master key it hands the custodians' mnemonics over on standard input
(``ENCLAVE_UNSEAL_STDIN=1``); the key then lives only in the hub's memory, for the spawner to
decrypt granted datasets.
"""

import os

from enclave.spawner import prewarm_zygote
from enclave.workspace.hub import HubSettings, configure, master_key_from_environment

# get_config is put in this file's namespace by traitlets' config loader when JupyterHub loads
# it (traitlets.config.get_config is another function: the application's config, not this file's).
c = get_config()  # type: ignore[name-defined]  # noqa: F821
state_dir = os.environ.get("ENCLAVE_STATE_DIR")
if not state_dir:
    raise SystemExit(
        "error: set ENCLAVE_STATE_DIR (enclave up does) to the enclave state directory"
    )
settings = HubSettings.load(state_dir)
configure(c, settings, master_key=master_key_from_environment(settings))
# User servers fork from a pre-imported zygote (enclave.workspace.zygote); start it now.
prewarm_zygote(c)
