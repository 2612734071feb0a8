"""The launcher's own logic, without starting anything: what it says when a hub fails."""

from __future__ import annotations


def test_a_hub_that_exits_at_start_is_summarised_from_its_log():
    from enclave.workspace.launcher import hub_failure

    log = """[I 2026-12-06 04:32:50.100 JupyterHub app:3300] Starting the proxy
[E 2026-12-06 04:32:50.650 JupyterHub proxy:818] Proxy failed to start
    Traceback (most recent call last):
      File "tornado/netutil.py", line 181, in bind_sockets
        sock.bind(sockaddr)
    OSError: [Errno 98] Address already in use
[C 2026-12-06 04:32:50.660 JupyterHub app:3872] Failed to start proxy
    RuntimeError: Proxy failed to start with exit code 1
"""
    assert hub_failure(log) == "Proxy failed to start; OSError: [Errno 98] Address already in use"
    assert hub_failure("") == "no message in its log"
