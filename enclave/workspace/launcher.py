"""``enclave up`` / ``enclave down``: start and stop the embedded enclave around the hub.

The hub process is the root of everything: it starts the proxy, the catalog, ingestion and the
idle culler as managed services, and each user server through ``IsolatedSpawner``. ``up`` starts
it detached, hands it the custodians' mnemonics on a pipe, waits for it, creates the first admin
and, on a first start with no data, runs the demo journey. ``down`` stops the hub (which stops
every server and service) and then removes anything a crash could have left behind.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from enclave._data import data_path
from enclave.errors import EnclaveError
from enclave.workspace.hub import HubSettings

DEMO_SECRETS = "DEMO-ONLY-secrets.txt"
DEMO_CUSTODIANS, DEMO_THRESHOLD = 3, 2
REQUIRED_TOOLS = {
    "ip": "iproute2",
    "nft": "nftables",
    "nsenter": "util-linux",
    "setpriv": "util-linux",
    "prlimit": "util-linux",
    "mount": "mount",
    "useradd": "passwd",
}


class LaunchError(EnclaveError):
    """The enclave cannot be started or stopped as asked."""


def hub_config_file() -> Path:
    """The ``jupyterhub_config.py`` the hub is started with (shipped data, see ``_data``)."""
    return data_path("hub_config", "jupyterhub_config.py")


def missing_system_tools() -> list[str]:
    missing = []
    for tool, package in REQUIRED_TOOLS.items():
        found = shutil.which(tool) or any(
            os.access(f"{d}/{tool}", os.X_OK) for d in ("/usr/sbin", "/sbin", "/usr/bin")
        )
        if not found:
            missing.append(f"{tool} (Debian package {package})")
    return missing


def check_system() -> None:
    if os.geteuid() != 0:
        raise LaunchError(
            "enclave up needs root: it creates Unix users, network namespaces, "
            "nftables rules and mounts"
        )
    missing = missing_system_tools()
    if missing:
        raise LaunchError(
            "missing system tools: "
            + ", ".join(missing)
            + " (install them with `make system-deps`)"
        )


def check_ports_free(settings: HubSettings) -> None:
    """Refuse, in one line, to start when a port the enclave listens on is taken."""
    wanted = [
        ("public_port", settings.public_ip, settings.public_port),
        ("proxy_api_port", "127.0.0.1", settings.proxy_api_port),
        ("catalog_port", "127.0.0.1", settings.catalog_port),
    ]
    if "ingest" in settings.managed_services:
        wanted.append(("ingest_port", settings.ingest_host, settings.ingest_port))
    if "airlock" in settings.managed_services:
        service_address = str(settings.netns_config().service_address)
        wanted.append(("airlock_port", service_address, settings.airlock_port))
    for name, host, port in wanted:
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                if exc.errno == errno.EADDRNOTAVAIL:
                    continue  # the service address is made at hub start: nothing listens yet
                raise LaunchError(
                    f"port {port} on {host} ({name}) is not free ({exc.strerror}): stop what "
                    f"listens there or set another {name} in {settings.hub_dir / 'settings.json'}"
                    + (" (or `enclave up --port`)" if name == "public_port" else "")
                ) from None


def hub_failure(log_text: str) -> str:
    """The gist of a hub's failed start, from its log: the first critical or error message
    and the first exception line (the cause; later ones wrap it)."""
    first = next(
        (
            line.split("] ", 1)[1]
            for line in log_text.splitlines()
            if line.startswith(("[C ", "[E ")) and "] " in line
        ),
        "",
    )
    exceptions = [
        line.strip()
        for line in log_text.splitlines()
        if re.match(r"\s*[A-Za-z_.]*(Error|Exception|Exit)\b.*: ", line)
    ]
    parts = [part for part in (first, exceptions[0] if exceptions else "") if part]
    return "; ".join(dict.fromkeys(parts)) or "no message in its log"


def running(pid: int) -> bool:
    """Whether ``pid`` is a live process: not gone, and not a zombie (an exited child of this
    process, as the hub is of the ``enclave up`` that started it, is reaped here)."""
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def hub_pid(settings: HubSettings) -> int | None:
    path = settings.hub_dir / "jupyterhub.pid"
    try:
        pid = int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    return pid if running(pid) else None


def demo_secrets_path(state_dir: Path) -> Path:
    return Path(state_dir) / DEMO_SECRETS


def write_demo_secret(state_dir: Path, title: str, lines: list[str]) -> None:
    path = demo_secrets_path(state_dir)
    new = not path.exists()
    with open(path, "a") as fh:
        os.chmod(path, 0o600)
        if new:
            fh.write(
                "# DEMO ONLY. This file holds secrets a production enclave never writes to disk.\n"
                "# A production site runs `enclave keys init` and gives each mnemonic to a\n"
                "# different custodian; people get their passwords out of band.\n"
            )
        fh.write(f"\n[{title}]\n" + "".join(f"{line}\n" for line in lines))


def read_demo_mnemonics(state_dir: Path) -> list[str]:
    path = demo_secrets_path(state_dir)
    if not path.is_file():
        return []
    lines, inside = [], False
    for line in path.read_text().splitlines():
        if line.startswith("["):
            inside = line.strip() == "[custodian mnemonics]"
        elif inside and line.strip() and not line.startswith("#"):
            lines.append(line.strip())
    return lines


def custodian_mnemonics(state_dir: Path, say: Callable[[str], None]) -> list[str]:
    """Mnemonics to unseal with: a demo custody on first start, the demo file, or stdin."""
    from enclave.custody import custody_initialised, init_custody

    if not custody_initialised(state_dir):
        mnemonics = init_custody(state_dir, custodians=DEMO_CUSTODIANS, threshold=DEMO_THRESHOLD)
        write_demo_secret(state_dir, "custodian mnemonics", mnemonics)
        say(
            f"DEMO ONLY: created a master key with {DEMO_THRESHOLD}-of-{DEMO_CUSTODIANS} custodian "
            f"mnemonics written to {demo_secrets_path(state_dir)} (root only). A production site "
            "runs `enclave keys init` itself and never keeps mnemonics on the machine."
        )
        return mnemonics
    demo = read_demo_mnemonics(state_dir)
    if demo:
        say(f"DEMO ONLY: unsealing with the mnemonics in {demo_secrets_path(state_dir)}")
        return demo
    if sys.stdin.isatty():
        import getpass

        from enclave.custody import CustodyRecord

        record = CustodyRecord.load(state_dir)
        return [
            getpass.getpass(f"custodian mnemonic {i} of {record.threshold}: ")
            for i in range(1, record.threshold + 1)
        ]
    return [line for line in sys.stdin.read().splitlines() if line.strip()]


def start_hub(
    settings: HubSettings,
    mnemonics: list[str],
    *,
    timeout: float = 90,
    config_file: Path | None = None,
) -> int:
    """Start the hub detached, unsealed with ``mnemonics``; return its pid once it answers.

    ``config_file`` replaces the shipped ``jupyterhub_config.py`` (a benchmark's variant)."""
    from enclave.custody import unseal

    unseal(Path(settings.state_dir), mnemonics)  # a wrong mnemonic fails here, with its reason
    log = settings.hub_dir / "hub.log"
    start_of_run = log.stat().st_size if log.exists() else 0
    env = {
        **os.environ,
        "ENCLAVE_STATE_DIR": settings.state_dir,
        "ENCLAVE_UNSEAL_STDIN": "1",
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
    }
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "jupyterhub"),
                "-f",
                str(config_file or hub_config_file()),
            ],
            cwd=settings.hub_dir,
            env=env,
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    assert proc.stdin is not None
    proc.stdin.write(("\n".join(mnemonics) + "\n").encode())
    proc.stdin.close()
    api = f"{settings.public_url.rstrip('/')}/hub/api/"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            with open(log, "rb") as fh:
                fh.seek(start_of_run)
                this_run = fh.read().decode(errors="replace")
            raise LaunchError(
                f"the hub exited with status {proc.returncode}: {hub_failure(this_run)} "
                f"(whole log: {log})"
            )
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(api, timeout=2).status_code == 200:
                return proc.pid
        time.sleep(0.3)
    raise LaunchError(f"the hub did not answer at {api} within {timeout:.0f} s; see {log}")


def stop_hub(settings: HubSettings, *, timeout: float = 90) -> bool:
    pid = hub_pid(settings)
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not running(pid):
            return True
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return True


def enclave_processes(settings: HubSettings) -> dict[int, str]:
    """The processes running for this enclave, by pid, with their command lines.

    The hub, the proxy, the services, the receivers and the zygote all carry the state
    directory in ``ENCLAVE_STATE_DIR`` (the hub sets it for them); this process and its
    ancestors are left out. User servers run in network namespaces, which
    :func:`clean_leftovers` removes."""
    marker = f"ENCLAVE_STATE_DIR={settings.state_dir}".encode()
    spared = {os.getpid(), *_ancestors()}
    found: dict[int, str] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) in spared:
            continue
        try:
            if marker not in Path(entry.path, "environ").read_bytes().split(b"\0"):
                continue
            cmdline = Path(entry.path, "cmdline").read_bytes()
        except OSError:  # gone, or a zombie
            continue
        if not cmdline or not running(int(entry.name)):
            continue
        found[int(entry.name)] = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
    return found


def _ancestors() -> list[int]:
    pids, pid = [], os.getppid()
    while pid > 1:
        pids.append(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return pids


@dataclass
class Stopped:
    """What :func:`stop_everything` did."""

    hub_was_running: bool
    leftovers: list[str]  # namespaces and rules a crash had left
    killed: dict[int, str]  # processes that outlived the hub
    still_running: dict[int, str]  # what not even SIGKILL ended (normally nothing)


def stop_everything(settings: HubSettings, *, grace: float = 10) -> Stopped:
    """Stop the hub (which stops what it started), remove a crash's leftovers, then end any
    process of this enclave still running (SIGTERM, then SIGKILL after ``grace`` seconds)."""
    hub_was_running = stop_hub(settings)
    leftovers = clean_leftovers(settings)
    remaining = killed = enclave_processes(settings)
    for pid in remaining:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while remaining and time.monotonic() < deadline:
        time.sleep(0.2)
        remaining = enclave_processes(settings)
    for pid in remaining:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if remaining:
        time.sleep(0.5)
    return Stopped(hub_was_running, leftovers, killed, enclave_processes(settings))


def clean_leftovers(settings: HubSettings) -> list[str]:
    """Namespaces, rules, dataset mounts and decrypting mounts a crash may have left."""
    from enclave.netns import NamespaceManager
    from enclave.workspace.datasets import DatasetMounter

    removed = NamespaceManager(settings.netns_config()).cleanup_all()
    homes = list(Path(settings.home_root).glob(f"{settings.unix_prefix}*"))
    DatasetMounter(Path(settings.plaintext_root)).release_all(homes)
    for pidfile in ("proxy.pid",):
        path = settings.hub_dir / pidfile
        with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
            os.kill(int(path.read_text().strip()), signal.SIGTERM)
    return removed


@dataclass
class DemoResult:
    dataset: str
    version: int
    transfer_id: str
    researcher: object


def run_demo_journey(
    settings: HubSettings, say: Callable[[str], None], *, timeout: float = 300
) -> DemoResult | None:
    """A demo provider sends a sample CT dataset through the secret-shared path; it is
    published and granted to a demo researcher group, and a demo researcher is created."""
    from catalog.db import resolve_database_url
    from catalog.service import open_catalog
    from enclave.samples import make_sample_dataset
    from enclave.workspace.people import add_person
    from ingestion.client import send_shares
    from ingestion.shares import fingerprint_of_pem
    from secret_sharing.keys import load_signing_key, write_keypair
    from secret_sharing.split import split_dataset

    url = settings.catalog_url or resolve_database_url(Path(settings.state_dir))
    demo = Path(settings.state_dir) / "demo"
    with open_catalog(url) as catalog:
        if catalog.list_datasets():
            return None
        demo.mkdir(parents=True, exist_ok=True)
        os.chmod(demo, 0o700)
        keys = demo / "provider-keys"
        if not (keys / "signing.key").exists():
            write_keypair(keys)
        pem = (keys / "verify.key").read_bytes()
        providers = {p.name for p in catalog.list_providers()}
        if "demo-hospital" in providers:
            token = catalog.rotate_provider_token("demo-hospital", actor="enclave-up")
        else:
            _, token = catalog.add_provider(
                "demo-hospital", pem, fingerprint_of_pem(pem), actor="enclave-up"
            )
    say("demo: a provider (demo-hospital) splits a generated CT dataset 2-of-3 and sends it")
    shutil.rmtree(demo / "source", ignore_errors=True)
    shutil.rmtree(demo / "shares", ignore_errors=True)
    source = make_sample_dataset(demo / "source", name="demo-ct")
    split_dataset(
        source, demo / "shares", k=2, n=3, signing_key=load_signing_key(keys / "signing.key")
    )
    shares = sorted((demo / "shares").glob("share-*"))
    coordinator = f"http://{settings.ingest_host}:{settings.ingest_port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            result = send_shares(shares, [coordinator], token)
            break
        except (EnclaveError, httpx.HTTPError, OSError):  # the service may still be starting
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
    say(f"demo: transfer {result.transfer_id} sent; ingestion reconstructs and validates it")
    with open_catalog(url) as catalog:
        deadline = time.monotonic() + timeout
        while True:
            transfer = catalog.get_transfer(result.transfer_id)
            if transfer.state == "cataloged" and transfer.version_id is not None:
                break
            if transfer.state in ("quarantined", "failed"):
                raise LaunchError(
                    f"demo transfer {result.transfer_id} was {transfer.state}: {transfer.reason}"
                )
            if time.monotonic() > deadline:
                raise LaunchError(
                    f"demo transfer {result.transfer_id} still {transfer.state} "
                    f"after {timeout:.0f} s"
                )
            time.sleep(1)
        version = max(v.version for v in catalog.get_dataset("demo-ct").versions)
        catalog.publish("demo-ct", version, actor="enclave-up")
        catalog.grant("demo-ct", version, group="demo-researchers", actor="enclave-up")
    researcher = add_person(settings, "demo-researcher", "researcher", groups=("demo-researchers",))
    if researcher.password:
        write_demo_secret(
            Path(settings.state_dir),
            "demo researcher login",
            [
                f"username: {researcher.name}",
                f"password: {researcher.password}",
                f"totp secret: {researcher.otp_secret}",
                f"totp uri: {researcher.otp_uri}",
            ],
        )
    say(f"demo: demo-ct version {version} published and granted to group demo-researchers")
    return DemoResult("demo-ct", version, result.transfer_id, researcher)
