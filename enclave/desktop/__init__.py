"""Desktop sessions: a Linux desktop inside the user's namespace, of which only pixels leave.

* :mod:`enclave.desktop.gateway` is what the hub's proxy reaches in a desktop session. It runs
  as the session's display account (not the user), starts the VNC server (TigerVNC's Xvnc)
  with its clipboard off, and serves exactly three things to the logged-in owner: the desktop
  page (noVNC from Debian), its static files, and a websocket relaying the RFB stream, with
  the browser's clipboard messages filtered out (:mod:`enclave.desktop.rfb`). Everything else
  answers 403.
* :mod:`enclave.desktop.session` runs as the user on that display: the window manager and
  panel, a Jupyter server reachable only inside the namespace, and Chromium showing
  JupyterLab from it.
* :mod:`enclave.desktop.layout` holds what both the spawner (root) and these processes agree
  on: where the runtime files are, which display, which VNC parameters.
"""
