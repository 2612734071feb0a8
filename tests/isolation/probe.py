"""Runs inside a user namespace (as the unprivileged test user) and reports as JSON.

Standard library only: it is run with the system Python, not the project venv.
"""

import errno
import json
import os
import socket
import subprocess
import sys
import time


def error_name(exc: OSError) -> str:
    """errno's symbolic name for ``exc`` (``ECONNREFUSED``), else its message."""
    if exc.errno is None:
        return str(exc)
    return errno.errorcode.get(exc.errno, str(exc))


def attempt(proto: str, host: str, port: int, timeout: float = 0.5) -> dict:
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    started = time.monotonic()
    sock = socket.socket(socket.AF_INET, kind)
    sock.settimeout(timeout)
    result = {"proto": proto, "host": host, "port": port, "ok": False, "error": None, "data": None}
    try:
        if proto == "tcp":
            sock.connect((host, port))
            result["data"] = sock.recv(64).decode()
        else:
            # Connected, as resolvers do, so ICMP errors are reported to us.
            sock.connect((host, port))
            sock.send(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00")
            result["data"] = sock.recv(512).hex()
        result["ok"] = True
    except TimeoutError:
        result["error"] = "timeout"
    except OSError as exc:
        result["error"] = error_name(exc)
    finally:
        sock.close()
    result["seconds"] = round(time.monotonic() - started, 3)
    return result


def serve(address: str, port: int, log: str) -> None:
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((address, port))
    server.listen(16)
    print("listening", flush=True)
    while True:
        conn, peer = server.accept()
        with open(log, "a") as f:
            f.write(peer[0] + "\n")
        try:
            conn.sendall(b"server\n")
        except OSError:
            pass
        conn.close()


def status() -> dict:
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in (
                "NoNewPrivs",
                "CapEff",
                "CapPrm",
                "CapBnd",
                "CapAmb",
                "Uid",
                "Gid",
                "Groups",
            ):
                fields[key] = value.strip()
    return fields


def main() -> None:
    mode, args = sys.argv[1], sys.argv[2:]
    out: object  # whatever the mode reports, as JSON
    if mode == "connect":
        out = [attempt(p, h, int(port)) for p, h, port in json.loads(args[0])]
    elif mode == "serve":
        serve(args[0], int(args[1]), args[2])
        return
    elif mode == "resolve":
        started = time.monotonic()
        resolved: dict[str, object]
        try:
            socket.getaddrinfo(args[0], 80)
            resolved = {"ok": True}
        except OSError as exc:
            resolved = {"ok": False, "error": str(exc)}
        resolved["seconds"] = round(time.monotonic() - started, 3)
        out = resolved
    elif mode == "status":
        out = status()
    elif mode == "alloc":
        block = b"x" * int(args[0])
        out = {"allocated": len(block)}
    elif mode == "spawn":
        children, failed = [], None
        for _ in range(int(args[0])):
            try:
                children.append(subprocess.Popen(["sleep", "5"]))
            except OSError as exc:
                failed = error_name(exc)
                break
        for child in children:
            child.kill()
            child.wait()
        out = {"started": len(children), "error": failed}
    elif mode == "burn":
        wall = float(args[0])
        start_cpu, start = time.process_time(), time.monotonic()
        while time.monotonic() - start < wall:
            pass
        out = {"cpu": time.process_time() - start_cpu, "wall": time.monotonic() - start}
    elif mode == "routes":
        out = subprocess.run(["ip", "route"], capture_output=True, text=True).stdout.splitlines()
    else:
        raise SystemExit(f"unknown mode {mode}")
    print(json.dumps(out), flush=True)
    os._exit(0)


if __name__ == "__main__":
    main()
