"""Isolated JupyterHub workspaces: the spawner's helpers, server policy, datasets and accounts.

Modules here are imported by the hub (spawner, hub config), by each user's Jupyter server
(authorizer, launcher) and by the CLI; none of them imports the others' heavy dependencies at
module import time.
"""
