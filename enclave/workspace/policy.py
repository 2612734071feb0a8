"""The Jupyter configuration every user server reads, owned by root.

The spawner points ``JUPYTER_CONFIG_DIR`` at this directory, so a user's own ``~/.jupyter`` (and
its ``labconfig/page_config.json``, which could re-enable a plugin) is never read, and the
authorizer and profile switches are passed on the command line, which outranks any config file.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from enclave._data import data_path
from enclave.errors import EnclaveError

DISABLED_PLUGINS = (
    "@jupyterlab/docmanager-extension:download",
    "@jupyterlab/filebrowser-extension:download",
    "@jupyterlab/filebrowser-extension:open-browser-tab",
)
AUTHORIZER = "enclave.workspace.authorizer.NoDownloadAuthorizer"


class PolicyError(EnclaveError):
    """The server policy files are missing or do not say what they must."""


def policy_source() -> Path:
    """The shipped JupyterLab policy folder (``policies/jupyterlab``)."""
    return data_path("policies", "jupyterlab")


def load_page_config(source: Path | None = None) -> dict:
    path = (policy_source() if source is None else Path(source)) / "labconfig" / "page_config.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise PolicyError(
            f"{path} is missing: the no-download JupyterLab policy ships there"
        ) from None
    except ValueError as exc:
        raise PolicyError(f"{path} is not valid JSON: {exc}") from None
    disabled = data.get("disabledExtensions", {})
    missing = [p for p in DISABLED_PLUGINS if disabled.get(p) is not True]
    if missing:
        raise PolicyError(f"{path} does not disable {', '.join(missing)}")
    return data


def install_server_policy(dest: Path, source: Path | None = None) -> Path:
    """Write the root-owned config directory user servers run with; returns it."""
    source = policy_source() if source is None else Path(source)
    page_config = load_page_config(source)
    dest = Path(dest)
    labconfig = dest / "labconfig"
    labconfig.mkdir(parents=True, exist_ok=True)
    for path in (dest, labconfig):
        os.chown(path, 0, 0)
        os.chmod(path, 0o755)
    target = labconfig / "page_config.json"
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(page_config, indent=2) + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, target)
    # jupyter_core's one-off IPython config migration would write here; a root-owned marker
    # tells it there is nothing to do.
    marker = dest / "migrated"
    marker.write_text("enclave: no IPython profile migration in workspaces\n")
    os.chmod(marker, 0o644)
    readme = source / "README.md"
    if readme.exists():
        shutil.copyfile(readme, dest / "README.md")
        os.chmod(dest / "README.md", 0o644)
    return dest


LAB_POLICY_ARGS = (
    "--LabApp.lock_all_plugins=True",
    "--LabApp.extension_manager=readonly",
    "--LabApp.news_url=None",
    "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
)


def server_policy_args() -> list[str]:
    """Command-line options that no user config can override."""
    return [f"--ServerApp.authorizer_class={AUTHORIZER}", *LAB_POLICY_ARGS]


def user_state_args(home: Path | str) -> list[str]:
    """Where JupyterLab keeps the user's own state (workspace layouts, settings changes): in
    the home. Their default is below ``JUPYTER_CONFIG_DIR``, the root-owned policy, where
    saving a layout would fail."""
    lab = Path(home) / ".jupyter" / "lab"
    return [
        f"--LabApp.workspaces_dir={lab / 'workspaces'}",
        f"--LabApp.user_settings_dir={lab / 'user-settings'}",
    ]


def desktop_server_policy_args() -> list[str]:
    """The same for the Jupyter server inside a desktop: it faces only the desktop's own
    browser (token on the namespace's loopback), so the hub's authorizer has no part in it."""
    return list(LAB_POLICY_ARGS)
