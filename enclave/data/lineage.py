"""Lineage: which data, code, parameters and environment produced each file in ``~/outputs``.

A training run writes one JSON record, ``~/outputs/.lineage/<run id>.json`` (format
``enclave-lineage/1``, documented in docs/training.md), when it ends: the dataset versions by
content hash, the code by hash (a copy is kept under ``.lineage/code/``), the parameters, the
software and device, the metrics logged, and every registered output with its SHA-256 taken at
the end of the run. ``lineage(path)`` finds the runs that produced a file, by path and by hash,
and says whether the file was modified since. The export review shows the same record.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import math
import os
import platform
import secrets
import shutil
import socket
import sys
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from enclave.data.mounts import DatasetAccessError, GrantedVersion, outputs_root, resolve
from enclave.errors import EnclaveError
from secret_sharing.fileio import sha256_file

FORMAT = "enclave-lineage/1"
LINEAGE_DIR = ".lineage"
CODE_DIR = "code"
CODE_COPY_LIMIT = 20 * 1024 * 1024
PACKAGES = ("enclave", "torch", "monai", "numpy", "pydicom", "pandas")


class LineageError(EnclaveError):
    """A run cannot record an output, or a file has no recorded lineage."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _jsonable(value: Any) -> Any:
    """Parameters as JSON: numbers, strings, lists, dicts; anything else as its repr."""
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "ndim", 1) == 0:
        value = item()
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return _jsonable(tolist())
    return repr(value)


# --- code and environment ------------------------------------------------------------------


def _notebook_path() -> Path | None:
    """The running notebook, as Jupyter Server (JPY_SESSION_NAME) or VS Code tell the kernel."""
    candidates = [os.environ.get("JPY_SESSION_NAME")]
    main = sys.modules.get("__main__")
    candidates.append(getattr(main, "__vsc_ipynb_file__", None))
    for value in candidates:
        if not value:
            continue
        path = Path(value).expanduser()
        for base in [path] if path.is_absolute() else [Path.cwd() / path, Path.home() / path]:
            if base.is_file():
                return base.resolve()
    return None


def _script_path() -> Path | None:
    main = sys.modules.get("__main__")
    value = getattr(main, "__file__", None)
    if not value or "ipykernel" in str(value):
        return None
    path = Path(value)
    return path.resolve() if path.is_file() else None


def notebook_source_hash(path: Path) -> str | None:
    """SHA-256 of a notebook's code cells only, so saving outputs does not change it."""
    try:
        cells = json.loads(Path(path).read_text()).get("cells", [])
    except (OSError, ValueError, AttributeError):
        return None
    digest = hashlib.sha256(b"enclave-notebook-code-v1\n")
    for cell in cells:
        if cell.get("cell_type") == "code":
            source = cell.get("source", "")
            digest.update(("".join(source) if isinstance(source, list) else source).encode())
            digest.update(b"\0")
    return digest.hexdigest()


def _strip_outputs(notebook: dict[str, Any]) -> dict[str, Any]:
    for cell in notebook.get("cells", []):
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
    return notebook


def describe_code(code: str | Path | None = None) -> dict[str, Any]:
    """The notebook or script behind this run: path, kind, how it was found, hashes."""
    path: Path | None
    if code is not None:
        path, how = Path(code).expanduser(), "explicit"
        if not path.is_file():
            raise LineageError(f"code={str(code)!r} is not a file")
        path = path.resolve()
    elif (path := _notebook_path()) is not None:
        how = "jupyter-session"
    elif (path := _script_path()) is not None:
        how = "__main__"
    else:
        return {"path": None, "kind": "unknown", "how": "not found", "sha256": None}
    kind = "notebook" if path.suffix == ".ipynb" else "script"
    info: dict[str, Any] = {
        "path": str(path),
        "kind": kind,
        "how": how,
        "sha256": sha256_file(path),
    }
    if kind == "notebook":
        info["source_sha256"] = notebook_source_hash(path)
    return info


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def describe_environment() -> dict[str, Any]:
    """Python, package versions, device, host and user (torch is asked only if it is loaded)."""
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "user": _user(),
        "packages": {p: _version(p) for p in PACKAGES},
        "profile": os.environ.get("ENCLAVE_PROFILE") or None,
    }
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        env.update(
            device="cuda",
            gpu=torch.cuda.get_device_name(0),
            cuda=getattr(torch.version, "cuda", None),
        )
    else:
        env.update(device="cpu", gpu=None, cuda=None)
    return env


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


# --- the run -------------------------------------------------------------------------------


def _dataset_entry(value: Any) -> dict[str, Any]:
    """A dataset reference (opened dataset, GrantedVersion, "name", "name@2", (name, 2))."""
    granted: GrantedVersion | None = getattr(value, "granted", None)
    if granted is None and isinstance(value, GrantedVersion):
        granted = value
    if granted is None:
        if isinstance(value, tuple) and len(value) == 2:
            granted = resolve(value[0], value[1])
        elif isinstance(value, str):
            name, _, version = value.partition("@")
            granted = resolve(name, version or None)
        else:
            raise DatasetAccessError(
                f"datasets= takes opened datasets or 'name@version' strings, not {value!r}"
            )
    return {
        "name": granted.name,
        "version": granted.version,
        "content_hash": granted.content_hash,
        "path": str(granted.path),
    }


class TrainingRun:
    """One run: register outputs and metrics, then ``close()`` writes the lineage record.

    Use it as a context manager (``with training_run(...) as run:``); an exception inside
    the block is recorded as ``status: failed`` and re-raised.
    """

    def __init__(
        self,
        name: str,
        *,
        params: dict[str, Any] | None = None,
        datasets: Iterable[Any] = (),
        code: str | Path | None = None,
        outputs_dir: Path | None = None,
    ) -> None:
        if not name or not isinstance(name, str):
            raise LineageError("a training run needs a name, e.g. training_run('unet-baseline')")
        self.outputs_dir = Path(outputs_dir) if outputs_dir else outputs_root()
        self.name = name
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        self.run_id = f"{stamp}-{secrets.token_hex(4)}"
        self.params = _jsonable(dict(params or {}))
        self.datasets = [_dataset_entry(d) for d in datasets]
        self.code = describe_code(code)
        self.environment = describe_environment()
        self.started_at = _now()
        self._start = time.monotonic()
        self.metrics: list[dict[str, Any]] = []
        self._outputs: dict[str, Path] = {}
        self.record: dict[str, Any] | None = None
        self.path: Path | None = None

    # ---- during the run

    @property
    def device(self) -> Any:
        """``training_device()``: CUDA + AMP when available, else CPU."""
        from enclave.data.monai_data import training_device

        return training_device()

    def log(self, step: int | None = None, **values: Any) -> None:
        """Record metrics (loss, dice...) for a step or epoch; they go into the record."""
        entry = {"step": step if step is not None else len(self.metrics)}
        entry.update({k: _jsonable(v) for k, v in values.items()})
        self.metrics.append(entry)

    def _relative(self, path: Path) -> str:
        root = self.outputs_dir.resolve()
        full = (
            Path(path).expanduser() if Path(path).expanduser().is_absolute() else root / path
        ).resolve()
        if not full.is_relative_to(root):
            raise LineageError(
                f"{path}: outputs must be under {self.outputs_dir} (the only folder the "
                "airlock exports from)"
            )
        rel = full.relative_to(root).as_posix()
        if rel.split("/")[0] == LINEAGE_DIR:
            raise LineageError(f"{path}: {LINEAGE_DIR}/ is reserved for lineage records")
        return rel

    def output(self, path: str | Path) -> Path:
        """Register a file this run writes (relative paths are under ``~/outputs``)."""
        rel = self._relative(Path(path))
        full = self.outputs_dir.resolve() / rel
        full.parent.mkdir(parents=True, exist_ok=True)
        self._outputs[rel] = full
        return full

    def save(self, obj: Any, path: str | Path, **kwargs: Any) -> Path:
        """Write ``obj`` to an output file and register it.

        torch modules/tensors/state dicts -> ``torch.save`` (a module saves its state dict),
        matplotlib figures -> ``savefig``, pandas frames -> CSV or Parquet by suffix,
        str/bytes -> the file, dicts/lists -> JSON.
        """
        full = self.output(path)
        module = type(obj).__module__.split(".")[0]
        if module == "matplotlib" and hasattr(obj, "savefig"):
            obj.savefig(full, **({"dpi": 120, "bbox_inches": "tight"} | kwargs))
        elif module == "pandas" and hasattr(obj, "to_csv"):
            if full.suffix == ".parquet":
                obj.to_parquet(full, **kwargs)
            else:
                obj.to_csv(full, **({"index": False} | kwargs))
        elif isinstance(obj, bytes):
            full.write_bytes(obj)
        elif isinstance(obj, str):
            full.write_text(obj)
        elif isinstance(obj, dict | list) and full.suffix == ".json":
            full.write_text(json.dumps(_jsonable(obj), indent=2) + "\n")
        else:
            import torch

            if isinstance(obj, torch.nn.Module):
                obj = obj.state_dict()
            torch.save(obj, full, **kwargs)
        return full

    # ---- the end

    def close(self, error: BaseException | None = None) -> dict[str, Any]:
        """Hash the outputs and write the record; returns it. Calling twice is harmless."""
        if self.record is not None:
            return self.record
        outputs = []
        for rel, full in sorted(self._outputs.items()):
            if full.is_file():
                outputs.append(
                    {"path": rel, "sha256": sha256_file(full), "size": full.stat().st_size}
                )
            else:
                outputs.append({"path": rel, "sha256": None, "size": None, "missing": True})
        environment = describe_environment() | {"started_on": self.environment["device"]}
        record = {
            "format": FORMAT,
            "run_id": self.run_id,
            "name": self.name,
            "status": "failed" if error is not None else "succeeded",
            "error": f"{type(error).__name__}: {error}" if error is not None else None,
            "started_at": self.started_at,
            "finished_at": _now(),
            "duration_s": round(time.monotonic() - self._start, 3),
            "user": environment["user"],
            "hostname": environment["hostname"],
            "datasets": self.datasets,
            "code": self._keep_code(),
            "parameters": self.params,
            "environment": environment,
            "metrics": self.metrics,
            "outputs": outputs,
        }
        folder = self.outputs_dir / LINEAGE_DIR
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.run_id}.json"
        tmp = folder / f".{self.run_id}.json.tmp"
        tmp.write_text(json.dumps(record, indent=2, sort_keys=False) + "\n")
        os.replace(tmp, path)
        self.record, self.path = record, path
        return record

    def _keep_code(self) -> dict[str, Any]:
        """Copy the code into ``.lineage/code/`` so the record can show what ran.

        Notebooks are copied without their cell outputs (``<source_sha256>.ipynb``): outputs
        can hold data, and what leaves the enclave is decided by the airlock, not by lineage.
        """
        code = dict(self.code)
        source = code.get("path")
        if not source or not code.get("sha256"):
            return code
        src = Path(source)
        notebook = code.get("kind") == "notebook" and code.get("source_sha256")
        stem = code["source_sha256"] if notebook else code["sha256"]
        copy = self.outputs_dir / LINEAGE_DIR / CODE_DIR / f"{stem}{src.suffix}"
        try:
            if not copy.exists() and src.stat().st_size <= CODE_COPY_LIMIT:
                copy.parent.mkdir(parents=True, exist_ok=True)
                if notebook:
                    copy.write_text(
                        json.dumps(_strip_outputs(json.loads(src.read_text())), indent=1) + "\n"
                    )
                else:
                    shutil.copyfile(src, copy)
            if copy.exists():
                code["copy"] = copy.relative_to(self.outputs_dir).as_posix()
        except (OSError, ValueError):
            pass
        return code

    def __enter__(self) -> TrainingRun:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        self.close(exc)

    def __repr__(self) -> str:
        state = "closed" if self.record else "running"
        return f"<TrainingRun {self.name} {self.run_id} ({state}, {len(self._outputs)} outputs)>"


def training_run(
    name: str,
    *,
    params: dict[str, Any] | None = None,
    datasets: Iterable[Any] = (),
    code: str | Path | None = None,
    outputs_dir: Path | None = None,
) -> TrainingRun:
    """Start a run whose outputs get a lineage record (see the module docstring)."""
    return TrainingRun(name, params=params, datasets=datasets, code=code, outputs_dir=outputs_dir)


# --- looking lineage up --------------------------------------------------------------------


def load_records(outputs_dir: Path | None = None) -> list[dict[str, Any]]:
    """Every lineage record under ``outputs_dir`` (``~/outputs``), oldest first."""
    folder = (Path(outputs_dir) if outputs_dir else outputs_root()) / LINEAGE_DIR
    records = []
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("format") == FORMAT:
            records.append(data)
    return sorted(records, key=lambda r: (r.get("finished_at") or "", r.get("run_id") or ""))


class Lineage:
    """The runs that produced one output file, and whether the file changed since."""

    def __init__(self, path: Path, rel: str, sha256: str, runs: list[dict[str, Any]]) -> None:
        self.path = path
        self.relative_path = rel
        self.sha256 = sha256
        self.runs = runs  # newest first; each is the full record

    @property
    def record(self) -> dict[str, Any]:
        """The latest run that wrote this file."""
        return self.runs[0]

    def _entry(self, run: dict[str, Any]) -> dict[str, Any]:
        for out in run["outputs"]:
            if out["path"] == self.relative_path:
                return out
        return next(o for o in run["outputs"] if o.get("sha256") == self.sha256)

    @property
    def recorded_sha256(self) -> str | None:
        return self._entry(self.record).get("sha256")

    @property
    def modified(self) -> bool:
        """True when the file's content differs from what the latest producing run wrote."""
        return self.recorded_sha256 != self.sha256

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.relative_path,
            "sha256": self.sha256,
            "modified": self.modified,
            "runs": self.runs,
        }

    def _lines(self) -> list[str]:
        run = self.record
        state = (
            "MODIFIED since the run wrote it (recorded sha256 "
            f"{(self.recorded_sha256 or 'none')[:12]}..., now {self.sha256[:12]}...)"
            if self.modified
            else "unchanged since the run wrote it"
        )
        code = run.get("code") or {}
        env = run.get("environment") or {}
        packages = env.get("packages") or {}
        lines = [
            f"{self.relative_path}: {state}",
            f"run {run['name']} ({run['run_id']}), {run['status']}, "
            f"{run['started_at']} -> {run['finished_at']}, by {run['user']}@{run['hostname']}",
            "datasets: "
            + (
                ", ".join(
                    f"{d['name']} v{d['version']} ({d['content_hash'][:12]}...)"
                    for d in run["datasets"]
                )
                or "none recorded"
            ),
            f"code: {code.get('kind')} {code.get('path') or '(unknown)'}"
            + (f" sha256 {code['sha256'][:12]}..." if code.get("sha256") else ""),
            "parameters: " + (json.dumps(run["parameters"], sort_keys=True) or "{}"),
            f"environment: python {env.get('python')}, torch {packages.get('torch')}, "
            f"monai {packages.get('monai')}, device {env.get('device')}"
            + (f" ({env['gpu']})" if env.get("gpu") else ""),
        ]
        if run.get("metrics"):
            last = {k: v for k, v in run["metrics"][-1].items()}
            lines.append(f"last metrics: {json.dumps(last, sort_keys=True)}")
        if len(self.runs) > 1:
            lines.append(
                "earlier runs that wrote it: " + ", ".join(r["run_id"] for r in self.runs[1:])
            )
        return lines

    def __repr__(self) -> str:
        return "\n".join(self._lines())

    def _repr_html_(self) -> str:
        from html import escape

        lines = self._lines()
        colour = "#b00" if self.modified else "#060"
        head = f"<b style='color:{colour}'>{escape(lines[0])}</b>"
        return head + "<ul>" + "".join(f"<li>{escape(li)}</li>" for li in lines[1:]) + "</ul>"


def lineage(path: str | Path, *, outputs_dir: Path | None = None) -> Lineage:
    """The runs that produced ``path`` (a file under ``~/outputs``), newest first.

    A run matches when it registered the same relative path, or a file with the same
    content (a copy or a rename keeps its lineage).
    """
    root = (Path(outputs_dir) if outputs_dir else outputs_root()).resolve()
    given = Path(path).expanduser()
    full = (given if given.is_absolute() else root / given).resolve()
    if not full.is_file():
        raise LineageError(f"{path}: no such file")
    rel = full.relative_to(root).as_posix() if full.is_relative_to(root) else str(full)
    digest = sha256_file(full)
    runs = []
    for record in reversed(load_records(root)):
        outputs = record.get("outputs") or []
        if any(o.get("path") == rel or o.get("sha256") == digest for o in outputs):
            runs.append(record)
    if not runs:
        raise LineageError(
            f"{rel}: no training run recorded this file; write outputs through "
            "enclave.data.training_run(...) (run.save / run.output) to give them lineage"
        )
    # Runs that wrote this path come before runs that only wrote identical content.
    runs.sort(key=lambda r: not any(o.get("path") == rel for o in r["outputs"]))
    return Lineage(full, rel, digest, runs)


def runs(outputs_dir: Path | None = None) -> Sequence[dict[str, Any]]:
    """All recorded runs, newest first."""
    return list(reversed(load_records(outputs_dir)))
