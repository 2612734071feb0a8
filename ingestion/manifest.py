"""The dataset manifest (``dataset.yaml``): what a provider declares about a dataset.

The manifest is the contract between a data provider and the enclave: the catalog entry is
built from it, and validation checks the files against it. It is parsed strictly (safe YAML
only, unknown keys refused, every referenced path must stay inside the dataset) because a
typo that silently disables a check is worse than a refused upload.

Every problem found is collected, so a provider sees all of them at once; they are raised
together as one :class:`ManifestError`.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from secret_sharing.errors import EnclaveError

MANIFEST_NAME = "dataset.yaml"

# DICOM PS3.3 C.7.3.1.1.1 Modality defined terms (current, not retired).
DICOM_MODALITIES: frozenset[str] = frozenset(
    """
    ANN AR ASMT AU BDUS BI BMD CFM CR CT CTPROTOCOL DMS DG DOC DX ECG EEG EMG EOG EPS ES FID GM
    HC HD IO IOL IVOCT IVUS KER KO LEN LS M3D MG MR NM OAM OCT OP OPM OPT OPTBSV OPTENF OPV OSS
    OT PA PLAN POS PR PT PX REG RESP RF RG RTDOSE RTIMAGE RTINTENT RTPLAN RTRAD RTRECORD
    RTSEGANN RTSTRUCT RWV SEG SM SMR SR SRF STAIN TEXTUREMAP TG US VA XA XAPROTOCOL XC
    """.split()
)

COLUMN_TYPES: frozenset[str] = frozenset({"string", "integer", "float", "boolean", "date"})
TABLE_SUFFIXES: tuple[str, ...] = (".csv", ".csv.gz", ".parquet", ".pq")
MASK_SUFFIXES: tuple[str, ...] = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".dcm")

SLUG = re.compile(r"[a-z0-9][a-z0-9-]*\Z")
TABLE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*\Z")
MAX_SLUG = 64

TOP_KEYS = (
    "name",
    "title",
    "description",
    "license",
    "modality",
    "body_part",
    "tags",
    "deidentification",
    "labels",
    "subject_id",
    "segmentations",
    "tables",
)
REQUIRED_KEYS = ("name", "title", "description", "license", "modality")
TABLE_KEYS = (
    "name",
    "path",
    "subject_id",
    "links_imaging",
    "one_row_per_subject",
    "columns",
    "expectations",
)
SEGMENTATION_KEYS = ("mask", "series")
DEID_KEYS = ("method", "profile", "options")


class ManifestError(EnclaveError):
    """``dataset.yaml`` is missing or wrong; ``problems`` lists each one separately."""

    def __init__(self, problems: list[ManifestProblem]) -> None:
        self.problems = problems
        if len(problems) == 1:
            message = str(problems[0])
        else:
            message = f"{MANIFEST_NAME} has {len(problems)} problems: " + "; ".join(
                str(p) for p in problems
            )
        super().__init__(message)


@dataclass(frozen=True)
class ManifestProblem:
    """One thing wrong with the manifest: where (key path, line) and what."""

    message: str
    key: str | None = None
    line: int | None = None

    def __str__(self) -> str:
        where = MANIFEST_NAME
        if self.line is not None:
            where += f" line {self.line}"
        if self.key:
            where += f", key '{self.key}'"
        return f"{where}: {self.message}"


@dataclass(frozen=True)
class Deidentification:
    """How the provider says the data was de-identified (the enclave still verifies)."""

    method: str | None = None
    profile: str | None = None
    #: PS3.16 codes of the PS3.15 E.3 options applied (``113108``...), sorted.
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class SegmentationSpec:
    """A label mask and the DICOM series (directory) it annotates."""

    mask: str
    series: str


@dataclass(frozen=True)
class TableSpec:
    """A clinical or derived table shipped with the dataset."""

    name: str
    path: str
    subject_id: str = "subject_id"
    links_imaging: bool = False
    one_row_per_subject: bool = True
    columns: dict[str, str] = field(default_factory=dict)
    expectations: str | None = None


@dataclass(frozen=True)
class DatasetManifest:
    """A parsed, checked ``dataset.yaml``. Paths are POSIX, relative to the dataset root."""

    name: str
    title: str
    description: str
    license: str
    modality: str
    body_part: str | None = None
    tags: tuple[str, ...] = ()
    deidentification: Deidentification | None = None
    labels: dict[int, str] = field(default_factory=dict)
    subject_id: str = "PatientID"
    segmentations: tuple[SegmentationSpec, ...] = ()
    tables: tuple[TableSpec, ...] = ()

    def referenced_paths(self) -> dict[str, str]:
        """Relative path -> kind (table, segmentation, expectations) of every declared file."""
        refs: dict[str, str] = {}
        for table in self.tables:
            refs[table.path] = "table"
            if table.expectations:
                refs[table.expectations] = "expectations"
        for seg in self.segmentations:
            refs[seg.mask] = "segmentation"
        return refs

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the catalog (JSON-friendly)."""
        return {
            "name": self.name,
            "title": self.title,
            "description": self.description,
            "license": self.license,
            "modality": self.modality,
            "body_part": self.body_part,
            "tags": list(self.tags),
            "deidentification": (
                {
                    "method": self.deidentification.method,
                    "profile": self.deidentification.profile,
                    "options": list(self.deidentification.options),
                }
                if self.deidentification
                else None
            ),
            "labels": {str(k): v for k, v in sorted(self.labels.items())},
            "subject_id": self.subject_id,
            "segmentations": [{"mask": s.mask, "series": s.series} for s in self.segmentations],
            "tables": [
                {
                    "name": t.name,
                    "path": t.path,
                    "subject_id": t.subject_id,
                    "links_imaging": t.links_imaging,
                    "one_row_per_subject": t.one_row_per_subject,
                    "columns": dict(t.columns),
                    "expectations": t.expectations,
                }
                for t in self.tables
            ],
        }


def load_manifest(root: Path) -> DatasetManifest:
    """Read and check ``root/dataset.yaml``; raise :class:`ManifestError` listing every problem."""
    root = Path(root)
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(
            [ManifestProblem(f"not found in {root} (every dataset needs a {MANIFEST_NAME})")]
        )
    if path.is_symlink():
        raise ManifestError([ManifestProblem("is a symbolic link; ship a regular file")])
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ManifestError([ManifestProblem("is not UTF-8 text")]) from None
    return parse_manifest(text, root)


def parse_manifest(text: str, root: Path) -> DatasetManifest:
    """Parse manifest text; ``root`` is used to check the referenced files."""
    try:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = exc.problem or str(exc)
        raise ManifestError([ManifestProblem(f"is not valid YAML: {problem}", line=line)]) from None
    except yaml.YAMLError as exc:
        raise ManifestError([ManifestProblem(f"is not valid YAML: {exc}")]) from None
    if not isinstance(data, dict):
        kind = "empty" if data is None else f"a {_type_name(data)}"
        raise ManifestError(
            [
                ManifestProblem(
                    f"must be a mapping of keys (name: ..., title: ...), but it is {kind}"
                )
            ]
        )
    checker = _Checker(root, _line_index(node))
    manifest = checker.manifest(data)
    if checker.problems:
        raise ManifestError(checker.problems)
    assert manifest is not None
    return manifest


def check_relative_path(root: Path, value: str) -> str | None:
    """Why ``value`` is not a safe path inside ``root`` (None when it is)."""
    if not value or not value.strip():
        return "is empty"
    if "\\" in value:
        return f"'{value}' uses backslashes; write paths with '/'"
    pure = PurePosixPath(value)
    if pure.is_absolute() or re.match(r"[A-Za-z]:", value):
        return f"'{value}' is absolute; give a path relative to the dataset folder"
    if ".." in pure.parts:
        return f"'{value}' contains '..'; paths must stay inside the dataset folder"
    root_real = Path(root).resolve()
    target = (Path(root) / pure).resolve()
    if not target.is_relative_to(root_real):
        return f"'{value}' leads outside the dataset folder (through a symbolic link)"
    return None


# --- internals -----------------------------------------------------------------------------


def _dicom_keyword(keyword: str) -> bool:
    if not re.match(r"[A-Za-z][A-Za-z0-9]*\Z", keyword):
        return False
    try:  # pydicom is a server dependency; a provider machine may not have it
        from pydicom.datadict import tag_for_keyword
    except ImportError:
        return True
    return tag_for_keyword(keyword) is not None


def _type_name(value: object) -> str:
    return {
        dict: "mapping",
        list: "list",
        str: "string",
        int: "integer",
        float: "number",
        bool: "boolean",
    }.get(type(value), type(value).__name__)


def _line_index(node: yaml.Node | None) -> dict[tuple, int]:
    """Key path -> 1-based line of the key (or list item) in the YAML source."""
    index: dict[tuple, int] = {}

    def walk(n: yaml.Node, prefix: tuple) -> None:
        if isinstance(n, yaml.MappingNode):
            for key_node, value_node in n.value:
                key = key_node.value
                index[prefix + (key,)] = key_node.start_mark.line + 1
                # labels use integer keys: index both spellings
                if isinstance(key, str) and key.isdigit():
                    index[prefix + (int(key),)] = key_node.start_mark.line + 1
                walk(value_node, prefix + (key,))
        elif isinstance(n, yaml.SequenceNode):
            for i, item in enumerate(n.value):
                index[prefix + (i,)] = item.start_mark.line + 1
                walk(item, prefix + (i,))

    if node is not None:
        walk(node, ())
    return index


def _key_text(path: tuple) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


class _Checker:
    def __init__(self, root: Path, lines: dict[tuple, int]) -> None:
        self.root = Path(root)
        self.lines = lines
        self.problems: list[ManifestProblem] = []

    def fail(self, path: tuple, message: str) -> None:
        line = None
        for n in range(len(path), 0, -1):
            line = self.lines.get(path[:n])
            if line is not None:
                break
        self.problems.append(ManifestProblem(message, key=_key_text(path) or None, line=line))

    # -- generic helpers

    def unknown_keys(self, data: dict, allowed: tuple[str, ...], prefix: tuple) -> None:
        for key in data:
            if key in allowed:
                continue
            hint = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
            suggestion = f"; did you mean '{hint[0]}'?" if hint else ""
            self.fail(
                prefix + (key,),
                f"unknown key (allowed: {', '.join(allowed)}){suggestion}",
            )

    def text(self, data: dict, key: str, prefix: tuple, *, required: bool) -> str | None:
        path = prefix + (key,)
        if key not in data or data[key] is None:
            if required:
                self.fail(path, "is required")
            return None
        value = data[key]
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            self.fail(path, f"must be text, not a {_type_name(value)}")
            return None
        value = str(value).strip()
        if not value:
            if required:
                self.fail(path, "is required and must not be empty")
            else:
                self.fail(path, "must not be empty (leave the key out instead)")
            return None
        return value

    def boolean(self, data: dict, key: str, prefix: tuple, default: bool) -> bool:
        value = data.get(key, default)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.fail(prefix + (key,), f"must be true or false, not {_type_name(value)}")
            return default
        return value

    def rel_path(
        self, value: object, path: tuple, *, suffixes: tuple[str, ...] | None, directory: bool
    ) -> str | None:
        if not isinstance(value, str):
            self.fail(path, f"must be a path (text), not a {_type_name(value)}")
            return None
        why = check_relative_path(self.root, value)
        if why:
            self.fail(path, why)
            return None
        clean = PurePosixPath(value).as_posix()
        target = self.root / clean
        if directory:
            if not target.is_dir():
                self.fail(path, f"'{clean}' is not a folder in the dataset")
                return None
        else:
            if not target.exists():
                self.fail(path, f"'{clean}' does not exist in the dataset")
                return None
            if not target.is_file():
                self.fail(path, f"'{clean}' is not a regular file")
                return None
            if suffixes and not clean.lower().endswith(suffixes):
                self.fail(path, f"'{clean}' must be one of: {', '.join(suffixes)}")
                return None
        return clean

    # -- sections

    def manifest(self, data: dict) -> DatasetManifest | None:
        self.unknown_keys(data, TOP_KEYS, ())
        values = {key: self.text(data, key, (), required=True) for key in REQUIRED_KEYS}

        name = values["name"]
        if name is not None and (not SLUG.match(name) or len(name) > MAX_SLUG):
            self.fail(
                ("name",),
                f"'{name}' is not a valid dataset name: use lower-case letters, digits and '-', "
                f"starting with a letter or digit, at most {MAX_SLUG} characters",
            )
        modality = values["modality"]
        if modality is not None:
            upper = modality.upper()
            if upper not in DICOM_MODALITIES:
                hint = difflib.get_close_matches(upper, sorted(DICOM_MODALITIES), n=1, cutoff=0.5)
                suggestion = f"; did you mean '{hint[0]}'?" if hint else ""
                self.fail(
                    ("modality",),
                    f"'{modality}' is not a DICOM modality code (CT, MR, PT, US, CR, DX, MG, "
                    f"NM, XA, SEG, OT, ...){suggestion}",
                )
            modality = upper

        body_part = self.text(data, "body_part", (), required=False)
        subject_attr = self.text(data, "subject_id", (), required=False) or "PatientID"
        if not _dicom_keyword(subject_attr):
            self.fail(("subject_id",), f"'{subject_attr}' is not a DICOM attribute keyword")

        manifest = DatasetManifest(
            name=name or "",
            title=values["title"] or "",
            description=values["description"] or "",
            license=values["license"] or "",
            modality=modality or "",
            body_part=body_part.upper() if body_part else None,
            tags=self.tags(data.get("tags")),
            deidentification=self.deidentification(data.get("deidentification")),
            labels=self.labels(data.get("labels")),
            subject_id=subject_attr,
            segmentations=self.segmentations(data.get("segmentations")),
            tables=self.tables(data.get("tables")),
        )
        return manifest

    def tags(self, value: object) -> tuple[str, ...]:
        if value is None:
            return ()
        if not isinstance(value, list):
            self.fail(("tags",), f"must be a list of words, not a {_type_name(value)}")
            return ()
        tags: list[str] = []
        for i, tag in enumerate(value):
            if not isinstance(tag, str) or not tag.strip():
                self.fail(("tags", i), "must be non-empty text")
            elif tag.strip() not in tags:
                tags.append(tag.strip())
        return tuple(tags)

    def deidentification(self, value: object) -> Deidentification | None:
        if value is None:
            return None
        if not isinstance(value, dict):
            self.fail(
                ("deidentification",),
                f"must be a mapping with method and profile, not a {_type_name(value)}",
            )
            return None
        self.unknown_keys(value, DEID_KEYS, ("deidentification",))
        return Deidentification(
            method=self.text(value, "method", ("deidentification",), required=False),
            profile=self.text(value, "profile", ("deidentification",), required=False),
            options=self.deid_options(value.get("options")),
        )

    def deid_options(self, value: object) -> tuple[str, ...]:
        """PS3.16 codes (or option names such as ``retain-patient-characteristics``)."""
        from ingestion.validators.deid_options import DeidOption

        if value is None:
            return ()
        if not isinstance(value, list):
            self.fail(
                ("deidentification", "options"),
                f"must be a list of PS3.16 option codes, not a {_type_name(value)}",
            )
            return ()
        codes: set[str] = set()
        for i, item in enumerate(value):
            try:
                codes.add(DeidOption.parse(str(item)).code)
            except ValueError as exc:
                self.fail(("deidentification", "options", i), str(exc))
        return tuple(sorted(codes))

    def labels(self, value: object) -> dict[int, str]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(("labels",), f"must map label numbers to names, not a {_type_name(value)}")
            return {}
        labels: dict[int, str] = {}
        for key, name in value.items():
            number = key
            if isinstance(key, str) and key.strip().isdigit():
                number = int(key)
            if isinstance(number, bool) or not isinstance(number, int) or number < 0:
                self.fail(("labels", str(key)), "label numbers must be whole numbers >= 0")
                continue
            if not isinstance(name, str) or not name.strip():
                self.fail(("labels", str(key)), "label name must be non-empty text")
                continue
            labels[number] = name.strip()
        return labels

    def segmentations(self, value: object) -> tuple[SegmentationSpec, ...]:
        if value is None:
            return ()
        if not isinstance(value, list):
            self.fail(
                ("segmentations",),
                f"must be a list of {{mask: ..., series: ...}}, not a {_type_name(value)}",
            )
            return ()
        specs: list[SegmentationSpec] = []
        seen: set[str] = set()
        for i, item in enumerate(value):
            prefix = ("segmentations", i)
            if not isinstance(item, dict):
                self.fail(
                    prefix, f"must be a mapping with mask and series, not a {_type_name(item)}"
                )
                continue
            self.unknown_keys(item, SEGMENTATION_KEYS, prefix)
            mask = series = None
            for key in SEGMENTATION_KEYS:
                if item.get(key) is None:
                    self.fail(prefix + (key,), "is required")
            if item.get("mask") is not None:
                mask = self.rel_path(
                    item["mask"], prefix + ("mask",), suffixes=MASK_SUFFIXES, directory=False
                )
            if item.get("series") is not None:
                series = self.rel_path(
                    item["series"], prefix + ("series",), suffixes=None, directory=True
                )
            if mask and mask in seen:
                self.fail(prefix + ("mask",), f"'{mask}' is listed twice")
            if mask and series:
                seen.add(mask)
                specs.append(SegmentationSpec(mask=mask, series=series))
        return tuple(specs)

    def tables(self, value: object) -> tuple[TableSpec, ...]:
        if value is None:
            return ()
        if not isinstance(value, list):
            self.fail(("tables",), f"must be a list of tables, not a {_type_name(value)}")
            return ()
        specs: list[TableSpec] = []
        names: set[str] = set()
        for i, item in enumerate(value):
            prefix = ("tables", i)
            if not isinstance(item, dict):
                self.fail(prefix, f"must be a mapping (name, path, ...), not a {_type_name(item)}")
                continue
            self.unknown_keys(item, TABLE_KEYS, prefix)
            name = self.text(item, "name", prefix, required=True)
            if name is not None:
                if not TABLE_NAME.match(name):
                    self.fail(
                        prefix + ("name",),
                        f"'{name}' is not a valid table name: use lower-case letters, digits, "
                        "'_' and '-'",
                    )
                elif name in names:
                    self.fail(prefix + ("name",), f"table name '{name}' is used twice")
                names.add(name)
            path = None
            if item.get("path") is None:
                self.fail(prefix + ("path",), "is required")
            else:
                path = self.rel_path(
                    item["path"], prefix + ("path",), suffixes=TABLE_SUFFIXES, directory=False
                )
            expectations = None
            if item.get("expectations") is not None:
                expectations = self.rel_path(
                    item["expectations"],
                    prefix + ("expectations",),
                    suffixes=(".json",),
                    directory=False,
                )
            subject_col = self.text(item, "subject_id", prefix, required=False) or "subject_id"
            columns = self.columns(item.get("columns"), prefix + ("columns",))
            if columns and subject_col not in columns:
                self.fail(
                    prefix + ("columns",),
                    f"does not declare the subject id column '{subject_col}'",
                )
            spec = TableSpec(
                name=name or "",
                path=path or "",
                subject_id=subject_col,
                links_imaging=self.boolean(item, "links_imaging", prefix, False),
                one_row_per_subject=self.boolean(item, "one_row_per_subject", prefix, True),
                columns=columns,
                expectations=expectations,
            )
            if name and path:
                specs.append(spec)
        return tuple(specs)

    def columns(self, value: object, prefix: tuple) -> dict[str, str]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(prefix, f"must map column names to types, not a {_type_name(value)}")
            return {}
        columns: dict[str, str] = {}
        for column, kind in value.items():
            if not isinstance(column, str) or not column.strip():
                self.fail(prefix + (column,), "column names must be non-empty text")
                continue
            if not isinstance(kind, str) or kind.strip().lower() not in COLUMN_TYPES:
                hint = (
                    difflib.get_close_matches(kind.lower(), sorted(COLUMN_TYPES), n=1)
                    if isinstance(kind, str)
                    else []
                )
                suggestion = f"; did you mean '{hint[0]}'?" if hint else ""
                self.fail(
                    prefix + (column,),
                    f"type must be one of {', '.join(sorted(COLUMN_TYPES))}{suggestion}",
                )
                continue
            columns[column] = kind.strip().lower()
        return columns


def dataset_relative_path(root: Path, value: str) -> str:
    """A file record's path as the POSIX path inside the dataset (validators may report either)."""
    path = Path(value)
    if path.is_absolute():
        try:
            return path.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            return path.as_posix()
    return PurePosixPath(value).as_posix()
