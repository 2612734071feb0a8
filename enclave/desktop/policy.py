"""The desktop's root-owned configuration: the panel's launchers, the window manager's
settings, the JupyterLab launcher. Builders return file contents; :func:`install_desktop_policy`
writes them where the hub keeps the files every server reads.

Sessions read it through ``XDG_CONFIG_DIRS`` and ``XDG_DATA_DIRS`` ahead of ``/etc/xdg``: a
user's own ``~/.config`` may rearrange their panel (their session, their choice), but the VNC
server's clipboard and the gateway are not configured here at all; they are not the user's.
"""

from __future__ import annotations

import os
from pathlib import Path
from xml.sax.saxutils import quoteattr

JUPYTERLAB_LAUNCHER = "enclave-jupyterlab.desktop"
TERMINAL_LAUNCHER = "xfce4-terminal.desktop"


def jupyterlab_desktop_entry(python: str) -> str:
    """The launcher that opens JupyterLab again (Chromium on the session's own server)."""
    return (
        "[Desktop Entry]\n"
        "Type=Application\n"
        "Name=JupyterLab\n"
        "Comment=Notebooks on this desktop's Jupyter server\n"
        f"Exec={python} -m enclave.desktop.session --open-lab\n"
        "Icon=chromium\n"
        "Terminal=false\n"
        "Categories=Development;\n"
    )


def panel_config(*, terminal: bool) -> str:
    """One panel at the top: launchers, the open windows, a clock."""
    launchers = [JUPYTERLAB_LAUNCHER] + ([TERMINAL_LAUNCHER] if terminal else [])
    plugins: list[tuple[str, list[str] | None]] = [("launcher", [name]) for name in launchers]
    plugins += [("tasklist", None), ("separator", None), ("clock", None)]
    ids = "".join(f'<value type="int" value="{i}"/>' for i in range(1, len(plugins) + 1))
    lines = []
    for number, (kind, items) in enumerate(plugins, start=1):
        inner = ""
        if items:
            values = "".join(f'<value type="string" value={quoteattr(i)}/>' for i in items)
            inner = f'<property name="items" type="array">{values}</property>'
        if kind == "separator":
            inner = (
                '<property name="expand" type="bool" value="true"/>'
                '<property name="style" type="uint" value="0"/>'
            )
        lines.append(
            f'    <property name="plugin-{number}" type="string" value="{kind}">{inner}</property>'
        )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<channel name="xfce4-panel" version="1.0">\n'
        '  <property name="configver" type="int" value="2"/>\n'
        '  <property name="panels" type="array">\n'
        '    <value type="int" value="1"/>\n'
        '    <property name="panel-1" type="empty">\n'
        '      <property name="position" type="string" value="p=6;x=0;y=0"/>\n'
        '      <property name="length" type="uint" value="100"/>\n'
        '      <property name="position-locked" type="bool" value="true"/>\n'
        '      <property name="size" type="uint" value="30"/>\n'
        f'      <property name="plugin-ids" type="array">{ids}</property>\n'
        "    </property>\n"
        "  </property>\n"
        '  <property name="plugins" type="empty">\n' + "\n".join(lines) + "\n  </property>\n"
        "</channel>\n"
    )


def window_manager_config() -> str:
    """No compositor and one workspace: every pixel redrawn costs bandwidth and latency."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<channel name="xfwm4" version="1.0">\n'
        '  <property name="general" type="empty">\n'
        '    <property name="use_compositing" type="bool" value="false"/>\n'
        '    <property name="workspace_count" type="int" value="1"/>\n'
        '    <property name="box_move" type="bool" value="false"/>\n'
        "  </property>\n"
        "</channel>\n"
    )


def xsettings_config() -> str:
    """No blinking cursor and no animations: an idle desktop sends no frames."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<channel name="xsettings" version="1.0">\n'
        '  <property name="Net" type="empty">\n'
        '    <property name="CursorBlink" type="bool" value="false"/>\n'
        '    <property name="EnableEventSounds" type="bool" value="false"/>\n'
        "  </property>\n"
        '  <property name="Gtk" type="empty">\n'
        '    <property name="CursorBlink" type="bool" value="false"/>\n'
        "  </property>\n"
        "</channel>\n"
    )


def desktop_policy_files(python: str, *, terminal: bool) -> dict[str, str]:
    """Relative path -> content of one profile's desktop policy folder."""
    channel = "xdg/xfce4/xfconf/xfce-perchannel-xml"
    return {
        "xdg/xfce4/panel/default.xml": panel_config(terminal=terminal),
        f"{channel}/xfce4-panel.xml": panel_config(terminal=terminal),
        f"{channel}/xfwm4.xml": window_manager_config(),
        f"{channel}/xsettings.xml": xsettings_config(),
        f"share/applications/{JUPYTERLAB_LAUNCHER}": jupyterlab_desktop_entry(python),
    }


def install_desktop_policy(dest: Path, python: str, profiles: dict[str, bool]) -> Path:
    """Write ``dest/<profile>/...`` for each profile (name -> whether it has a terminal),
    root-owned and read-only for everyone else; returns ``dest``."""
    dest = Path(dest)
    for name, terminal in profiles.items():
        for rel, content in desktop_policy_files(python, terminal=terminal).items():
            path = dest / name / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(content)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
    for dirpath, _dirnames, _files in os.walk(dest):
        os.chown(dirpath, 0, 0)
        os.chmod(dirpath, 0o755)
    return dest
