"""Validate a whole dataset folder: manifest, inventory, DICOM, tables, linkage, radiomics.

This is the gate between a reconstructed transfer and the catalog: whatever it reports as an
error sends the transfer to quarantine. It never raises for bad input; every problem becomes
a finding, so a provider gets one complete report instead of the first failure.

Stages run in order and later ones are skipped when they cannot mean anything: without a
readable manifest nothing else is checked, and radiomics (the slowest stage, and one that
writes ``derived/``) runs only when everything else passed.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from ingestion.manifest import (
    MANIFEST_NAME,
    DatasetManifest,
    ManifestError,
    dataset_relative_path,
    load_manifest,
)
from ingestion.report import Finding, ValidationReport
from secret_sharing.fileio import sha256_file

DERIVED_DIR = "derived"
# Files the enclave itself writes under derived/; anything else there is refused.
DERIVED_FILES = frozenset({"radiomics.parquet"})

# Leading bytes of executables and scripts. Checked at offset 0 of every file, so a DICOM
# preamble crafted as a Windows/ELF header (a "PE/DICOM polyglot", CVE-2019-11687) is caught.
EXECUTABLE_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"MZ", "a Windows executable"),
    (b"\x7fELF", "an ELF executable"),
    (b"#!", "a script"),
    (b"\xfe\xed\xfa\xce", "a Mach-O executable"),
    (b"\xfe\xed\xfa\xcf", "a Mach-O executable"),
    (b"\xce\xfa\xed\xfe", "a Mach-O executable"),
    (b"\xcf\xfa\xed\xfe", "a Mach-O executable"),
    (b"\xca\xfe\xba\xbe", "a Mach-O or Java class file"),
)

Progress = Callable[[str, int, int | None], None]


def is_dicom_candidate(rel: str) -> bool:
    """Files validated as DICOM: ``*.dcm`` anywhere, and every file under ``dicom/``."""
    return rel.lower().endswith(".dcm") or PurePosixPath(rel).parts[0] == "dicom"


@dataclass
class PrecheckedDicom:
    """Per-file DICOM outcomes (``validators.dicom.precheck_files``) computed early."""

    subject_attribute: str
    outcomes: Mapping[str, Any] = field(default_factory=dict)
    #: The ``DeidPolicy`` they were checked under: reused only under the same one.
    policy: Any = None


@dataclass
class ValidationOutcome:
    """What the ingestion worker needs to catalog (or quarantine) a dataset version."""

    report: ValidationReport
    manifest: DatasetManifest | None = None
    # every file: path (POSIX, relative), size, sha256, kind, and DICOM identifiers for DICOM
    files: list[dict[str, Any]] = field(default_factory=list)
    series: list[dict[str, Any]] = field(default_factory=list)
    tables: list[dict[str, Any]] = field(default_factory=list)
    feature_tables: list[dict[str, Any]] = field(default_factory=list)
    content_hash: str = ""
    # subject identifiers of the images and tables: the airlock's identifier index
    subject_ids: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.report.passed


def validate_dataset(
    root: Path,
    *,
    transfer_id: str | None = None,
    progress: Progress | None = None,
    prechecked: PrecheckedDicom | None = None,
    allowed_options: Iterable[str] | None = (),
) -> ValidationOutcome:
    """Check the dataset in ``root`` and compute its derived tables.

    ``allowed_options``: PS3.16 codes of the de-identification options the catalog lets the
    sending provider use; ``None`` when the provider is not known here (a provider checking
    its own folder): declared options then apply and the enclave checks them on arrival.

    ``progress(stage, done, total)`` is called as stages advance (stages: manifest, files,
    dicom, tables, radiomics). Writes ``root/derived/radiomics.parquet`` when the dataset
    passed and declares segmentations. ``prechecked`` carries per-file DICOM outcomes the
    ingestion worker computed while the files were unpacked; used when they were computed
    with the manifest's subject attribute, so the report is the same either way.
    """
    root = Path(root)
    timings: dict[str, float] = {}
    report = ValidationReport(dataset=root.name, transfer_id=transfer_id)
    outcome = ValidationOutcome(report=report)

    def stage(name: str) -> _Stage:
        return _Stage(name, timings, progress)

    if not root.is_dir():
        report.add(Finding("dataset.folder", "error", f"{root} is not a folder"))
        report.summary = {"files": 0, "seconds": timings}
        return outcome

    with stage("manifest"):
        try:
            manifest = load_manifest(root)
        except ManifestError as exc:
            manifest = None
            for problem in exc.problems:
                report.add(
                    Finding("manifest", "error", str(problem), path=MANIFEST_NAME, tag=problem.key)
                )
    if manifest is not None:
        report.dataset = manifest.name
        outcome.manifest = manifest

    with stage("files"):
        inventory = _Inventory(root)
        inventory.scan()
        report.extend(inventory.findings)

    dicom = None
    table_checks: list[Any] = []
    if manifest is not None:
        dicom_paths = inventory.dicom_candidates()
        with stage("dicom"):
            dicom = _run_dicom(root, manifest, dicom_paths, progress, prechecked, allowed_options)
            report.extend(dicom.findings)
            report.extend(_declared_options_findings(manifest, dicom, allowed_options))

        with stage("tables"):
            from ingestion.validators.tables import check_linkage, validate_tables

            table_checks = validate_tables(root, manifest, progress=progress)
            for check in table_checks:
                report.extend(check.findings)
            outcome.tables = [c.descriptor() for c in table_checks]
            imaging_subjects = {
                str(f["subject_id"]).strip()
                for f in dicom.files
                if f.get("subject_id") and f.get("modality") != "SEG"
            }
            report.extend(check_linkage(manifest.tables, table_checks, imaging_subjects))

        report.extend(inventory.unaccounted(manifest, set(dicom_paths)))

        if manifest.segmentations:
            if report.passed:
                with stage("radiomics"):
                    from ingestion.radiomics import compute_radiomics

                    findings, feature_tables = compute_radiomics(
                        root, manifest, dicom, root / DERIVED_DIR, progress=progress
                    )
                    report.extend(findings)
                    outcome.feature_tables = feature_tables
            else:
                report.add(
                    Finding(
                        "radiomics.skipped",
                        "info",
                        "radiomics features were not computed because validation found errors",
                    )
                )

    outcome.files = inventory.file_entries(dicom, manifest)
    outcome.files += inventory.derived_entries(outcome.feature_tables)
    outcome.series = list(dicom.series) if dicom is not None else []
    outcome.content_hash = content_hash(outcome.files)
    outcome.subject_ids = _subject_ids(outcome, table_checks)
    report.summary = _summary(outcome, dicom, table_checks, timings)
    return outcome


def content_hash(files: list[dict[str, Any]]) -> str:
    """SHA-256 over sorted (path, sha256) of the provider's files; derived files excluded.

    It depends only on names and contents (never on mtimes or the order files were found),
    so the same dataset sent twice hashes the same and the catalog can spot duplicates.
    """
    digest = hashlib.sha256(b"enclave-dataset-v1\n")
    for entry in sorted(files, key=lambda f: f["path"]):
        if entry.get("kind") == "derived":
            continue
        digest.update(f"{entry['path']}\0{entry['sha256']}\n".encode())
    return digest.hexdigest()


# --- internals -----------------------------------------------------------------------------


class _Stage:
    """Times a stage into ``timings`` and reports its start and end to ``progress``."""

    def __init__(self, name: str, timings: dict[str, float], progress: Progress | None) -> None:
        self.name, self.timings, self.progress = name, timings, progress

    def __enter__(self) -> _Stage:
        self.started = time.perf_counter()
        if self.progress:
            self.progress(self.name, 0, None)
        return self

    def __exit__(self, *exc: object) -> None:
        self.timings[self.name] = round(time.perf_counter() - self.started, 3)


def _run_dicom(
    root: Path,
    manifest: DatasetManifest,
    paths: list[str],
    progress: Progress | None,
    prechecked: PrecheckedDicom | None = None,
    allowed_options: Iterable[str] | None = (),
):
    from ingestion.validators.deid_options import DeidPolicy
    from ingestion.validators.dicom import validate_dicom_files

    usable = (
        prechecked is not None
        and prechecked.subject_attribute == manifest.subject_id
        and prechecked.policy == DeidPolicy.of((), allowed_options)
    )

    def dicom_progress(done: int, total: int | None = None) -> None:
        if progress:
            progress("dicom", done, total)

    return validate_dicom_files(
        root,
        [root / p for p in paths],
        progress=dicom_progress if progress else None,
        subject_attribute=manifest.subject_id,
        precomputed=prechecked.outcomes if usable and prechecked is not None else None,
        allowed_options=allowed_options,
    )


def _declared_options_findings(
    manifest: DatasetManifest, dicom: Any, allowed_options: Iterable[str] | None
) -> list[Finding]:
    """The manifest's de-identification options against the provider's and the files'.

    Every option a file declares must be declared in ``dataset.yaml`` too (the catalog entry
    tells researchers what was kept), and the manifest may declare only options the provider
    is allowed. Per-file problems (a file using an option the provider may not use) are the
    DICOM checks' findings.
    """
    from ingestion.validators.deid_options import DeidOption

    declared = set(manifest.deidentification.options if manifest.deidentification else ())
    allowed = (
        None if allowed_options is None else {DeidOption.parse(o).code for o in allowed_options}
    )
    findings = []
    for code in sorted(declared):
        option = DeidOption(code)
        if allowed is not None and code not in allowed:
            findings.append(
                Finding(
                    "deid.option-not-allowed",
                    "error",
                    f"deidentification.options declares the {option.label()}, which this "
                    "provider is not allowed (enclave providers set PROVIDER --deid-option "
                    f"{code})",
                    path=MANIFEST_NAME,
                    tag="deidentification.options",
                )
            )
    for code, files in sorted(dicom.deid_options.items()):
        if code not in declared:
            findings.append(
                Finding(
                    "deid.option-undeclared",
                    "error",
                    f"{files} DICOM file(s) declare the {DeidOption(code).label()} in "
                    "DeidentificationMethodCodeSequence, but deidentification.options does not "
                    "list it: declare every option the files use",
                    path=MANIFEST_NAME,
                    tag="deidentification.options",
                )
            )
    return findings


class _Inventory:
    """Every entry under the dataset root, with the findings that need no parsing."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.findings: list[Finding] = []
        self.files: dict[str, int] = {}  # relative path -> size, regular files only
        self.derived: set[str] = set()
        self.hashes: dict[str, str] = {}

    def _error(self, check: str, path: str, message: str) -> None:
        self.findings.append(Finding(check, "error", message, path=path))

    def scan(self) -> None:
        for dirpath, dirnames, filenames in os.walk(self.root, followlinks=False):
            here = Path(dirpath)
            rel_dir = here.relative_to(self.root)
            for name in sorted(dirnames):
                rel = (rel_dir / name).as_posix()
                full = here / name
                if full.is_symlink():
                    self._error(
                        "files.symlink", rel, f"'{rel}' is a symbolic link; ship real folders"
                    )
                    dirnames.remove(name)
                elif name.startswith("."):
                    self._error(
                        "files.hidden",
                        rel,
                        f"hidden folder '{rel}' is not allowed (version control or system "
                        "metadata can carry identifiers); remove it",
                    )
                    dirnames.remove(name)
            for name in sorted(filenames):
                self._entry(here / name, (rel_dir / name).as_posix())

    def _entry(self, full: Path, rel: str) -> None:
        info = full.lstat()
        if stat.S_ISLNK(info.st_mode):
            self._error("files.symlink", rel, f"'{rel}' is a symbolic link; ship the real file")
            return
        if not stat.S_ISREG(info.st_mode):
            self._error("files.special", rel, f"'{rel}' is not a regular file")
            return
        top = PurePosixPath(rel).parts[0]
        if PurePosixPath(rel).name.startswith("."):
            self._error(
                "files.hidden",
                rel,
                f"hidden file '{rel}' is not allowed (system metadata such as .DS_Store can "
                "carry names); remove it",
            )
            return
        if top == DERIVED_DIR:
            if rel.count("/") == 1 and PurePosixPath(rel).name in DERIVED_FILES:
                self.derived.add(rel)  # an earlier run's output: replaced, not part of the hash
                (self.root / rel).unlink()
            else:
                self._error(
                    "files.reserved",
                    rel,
                    f"'{rel}': the folder '{DERIVED_DIR}/' is reserved for tables the enclave "
                    "computes; put provider files elsewhere",
                )
            return
        self.files[rel] = info.st_size
        self._check_content(full, rel, info.st_size)

    def _check_content(self, full: Path, rel: str, size: int) -> None:
        if size == 0:
            self.findings.append(Finding("files.empty", "warning", f"'{rel}' is empty", path=rel))
            return
        with open(full, "rb") as fh:
            head = fh.read(4)
        for magic, what in EXECUTABLE_MAGIC:
            if head.startswith(magic):
                self._error(
                    "files.executable",
                    rel,
                    f"'{rel}' starts like {what}; executables and scripts are not accepted"
                    + (
                        " (a DICOM preamble must not be executable code)"
                        if rel.lower().endswith(".dcm")
                        else ""
                    ),
                )
                break

    def dicom_candidates(self) -> list[str]:
        return sorted(p for p in self.files if is_dicom_candidate(p))

    def unaccounted(self, manifest: DatasetManifest, dicom_paths: set[str]) -> list[Finding]:
        known = set(manifest.referenced_paths()) | dicom_paths | {MANIFEST_NAME}
        return [
            Finding(
                "files.undeclared",
                "warning",
                f"'{rel}' is not a .dcm file, not under dicom/ and not declared in "
                "dataset.yaml, so it was not checked for identifiers; declare it or remove it",
                path=rel,
            )
            for rel in sorted(self.files)
            if rel not in known
        ]

    def _sha256(self, rel: str) -> str:
        if rel not in self.hashes:
            self.hashes[rel] = sha256_file(self.root / rel)
        return self.hashes[rel]

    def file_entries(self, dicom: Any, manifest: DatasetManifest | None) -> list[dict[str, Any]]:
        by_path: dict[str, dict[str, Any]] = {}
        if dicom is not None:
            for record in dicom.files:
                rel = dataset_relative_path(self.root, str(record["path"]))
                by_path[rel] = record
        refs = manifest.referenced_paths() if manifest else {}
        entries = []
        for rel, size in sorted(self.files.items()):
            entry: dict[str, Any] = {"path": rel, "size": size}
            known = by_path.get(rel)
            if known is not None:
                for key in (
                    "study_uid",
                    "series_uid",
                    "sop_instance_uid",
                    "modality",
                    "subject_id",
                ):
                    if known.get(key) is not None:
                        entry[key] = known[key]
            sha = known.get("sha256") if known else None
            entry["sha256"] = sha if isinstance(sha, str) and len(sha) == 64 else self._sha256(rel)
            if rel == MANIFEST_NAME or refs.get(rel) == "expectations":
                entry["kind"] = "manifest"
            elif refs.get(rel) in ("table", "segmentation"):
                entry["kind"] = refs[rel]
            elif known is not None:
                entry["kind"] = "dicom"
            else:
                entry["kind"] = "other"
            entries.append(entry)
        return entries

    def derived_entries(self, feature_tables: list[dict[str, Any]]) -> list[dict[str, Any]]:
        entries = []
        for table in feature_tables:
            rel = dataset_relative_path(self.root, str(table["path"]))
            full = self.root / rel
            if full.is_file():
                entries.append(
                    {
                        "path": rel,
                        "size": full.stat().st_size,
                        "sha256": sha256_file(full),
                        "kind": "derived",
                    }
                )
        return entries


def _subject_ids(outcome: ValidationOutcome, table_checks: list[Any]) -> list[str]:
    subjects = {
        str(f["subject_id"])
        for f in outcome.files
        if f.get("kind") == "dicom" and f.get("subject_id")
    }
    for check in table_checks:
        subjects |= {str(s) for s in check.subject_ids}
    return sorted(subjects)


def _summary(
    outcome: ValidationOutcome, dicom: Any, table_checks: list[Any], timings: dict[str, float]
) -> dict[str, Any]:
    dicom_files = [f for f in outcome.files if f.get("kind") == "dicom"]
    subjects = outcome.subject_ids
    studies = {s.get("study_uid") for s in outcome.series if s.get("study_uid")}
    provider_files = [f for f in outcome.files if f.get("kind") != "derived"]
    return {
        "files": len(provider_files),
        "bytes": sum(int(f["size"]) for f in provider_files),
        "dicom_files": len(dicom_files),
        "series": len(outcome.series),
        "studies": len(studies),
        "subjects": len(subjects),
        "tables": len(table_checks),
        "table_rows": sum(c.rows for c in table_checks),
        "segmentations": len(outcome.manifest.segmentations) if outcome.manifest else 0,
        "feature_tables": len(outcome.feature_tables),
        "feature_rows": sum(int(t.get("rows", 0)) for t in outcome.feature_tables),
        "seconds": dict(timings),
        "content_hash": outcome.content_hash,
    }
