"""Clinical table validation: declared schema, subject ids, PHI heuristics, expectation suites.

The built-in checks stream the table in chunks so a large CSV or Parquet file is checked in
bounded memory. A provider's great-expectations suite needs the whole table in one frame and
is run only when the table declares one; great_expectations takes seconds to import, so it is
imported on first use only.

Findings name the table and column and give counts, never cell values: a table that fails
because a column holds e-mail addresses must not copy those addresses into the report.
"""

from __future__ import annotations

import csv
import functools
import gzip
import json
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ingestion.manifest import DatasetManifest, TableSpec
from ingestion.report import Finding, Severity

CHUNK_ROWS = 100_000
# Expectation suites need the table in memory; beyond this size they are skipped with a warning.
EXPECTATIONS_MAX_BYTES = 1 << 30
# How many subject ids a linkage finding may list (they are pseudonyms, never names).
LINKAGE_EXAMPLES = 5

# Column names that are direct identifiers (HIPAA Safe Harbor, GDPR direct identifiers).
# Compared after normalising to lower case with '_' between words.
IDENTIFIER_COLUMN_NAMES = frozenset(
    {
        "name",
        "names",
        "full_name",
        "fullname",
        "patient_name",
        "patientname",
        "first_name",
        "firstname",
        "last_name",
        "lastname",
        "given_name",
        "family_name",
        "middle_name",
        "maiden_name",
        "surname",
        "forename",
        "birth_date",
        "birthdate",
        "date_of_birth",
        "dateofbirth",
        "patient_birth_date",
        "patientbirthdate",
        "birthday",
        "dob",
        "address",
        "home_address",
        "street",
        "street_address",
        "postcode",
        "post_code",
        "postal_code",
        "zip",
        "zip_code",
        "zipcode",
        "phone",
        "phone_number",
        "telephone",
        "mobile",
        "cell_phone",
        "fax",
        "email",
        "e_mail",
        "email_address",
        "mrn",
        "medical_record_number",
        "hospital_number",
        "ssn",
        "social_security_number",
        "nhs_number",
        "insurance_number",
        "health_insurance_number",
        "passport",
        "passport_number",
        "driver_license",
        "drivers_license",
        "ip_address",
        "account_number",
        "license_plate",
    }
)
# Words that make a column an identifier wherever they appear in its name.
IDENTIFIER_WORDS = frozenset(
    {"ssn", "mrn", "dob", "email", "phone", "telephone", "fax", "surname", "address", "passport"}
)

EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
PHONE = re.compile(
    r"\s*(?:\+\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)[\s.-]?|\d{2,4}[\s.-])\d{3,4}[\s.-]?\d{3,4}\s*"
)
SSN = re.compile(r"\s*\d{3}-\d{2}-\d{4}\s*")
BOOLEAN_WORDS = frozenset({"true", "false", "t", "f", "yes", "no", "y", "n", "0", "1"})
INTEGER = re.compile(r"\s*[+-]?\d+\s*")

Progress = Callable[[str, int, int | None], None]


@dataclass
class TableCheck:
    """What checking one table found; ``subject_ids`` stays in memory, never in a report."""

    name: str
    path: str
    rows: int = 0
    columns: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    subject_ids: set[str] = field(default_factory=set)
    readable: bool = True

    def descriptor(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path, "rows": self.rows, "columns": self.columns}

    def error(self, check: str, message: str, column: str | None = None) -> None:
        self.findings.append(Finding(check, "error", message, path=self.path, tag=column))

    def warning(self, check: str, message: str, column: str | None = None) -> None:
        self.findings.append(Finding(check, "warning", message, path=self.path, tag=column))

    def info(self, check: str, message: str, column: str | None = None) -> None:
        self.findings.append(Finding(check, "info", message, path=self.path, tag=column))


def validate_tables(
    root: Path, manifest: DatasetManifest, *, progress: Progress | None = None
) -> list[TableCheck]:
    """Check every table the manifest declares."""
    checks = []
    for i, spec in enumerate(manifest.tables):
        if progress:
            progress("tables", i, len(manifest.tables))
        checks.append(validate_table(root, spec))
    if progress:
        progress("tables", len(manifest.tables), len(manifest.tables))
    return checks


def validate_table(root: Path, spec: TableSpec) -> TableCheck:
    """Run the built-in checks and then the table's expectation suite, if it has one."""
    check = TableCheck(name=spec.name, path=spec.path)
    file = Path(root) / spec.path
    try:
        _builtin_checks(file, spec, check)
    except _Unreadable as exc:
        check.readable = False
        check.error("table.read", f"table '{spec.name}' cannot be read: {exc}")
        return check
    if spec.expectations:
        check.findings.extend(run_expectations(Path(root), spec, check))
    return check


def check_linkage(
    specs: Iterable[TableSpec], checks: Iterable[TableCheck], imaging_subjects: set[str]
) -> list[Finding]:
    """Tables marked ``links_imaging`` must cover exactly the subjects that have images."""
    findings: list[Finding] = []
    by_name = {c.name: c for c in checks}
    for spec in specs:
        check = by_name.get(spec.name)
        if not spec.links_imaging or check is None or not check.readable:
            continue
        if spec.subject_id not in check.columns:
            continue  # already an error of its own
        col = spec.subject_id
        table_only = sorted(check.subject_ids - imaging_subjects)
        imaging_only = sorted(imaging_subjects - check.subject_ids)
        if table_only:
            findings.append(
                Finding(
                    "table.linkage",
                    "error",
                    f"table '{spec.name}' column '{col}': {len(table_only)} subject(s) have no "
                    f"DICOM images in the dataset (e.g. {_examples(table_only)})",
                    path=spec.path,
                    tag=col,
                )
            )
        if imaging_only:
            findings.append(
                Finding(
                    "table.linkage",
                    "error",
                    f"table '{spec.name}' column '{col}': {len(imaging_only)} imaged subject(s) "
                    f"have no row in the table (e.g. {_examples(imaging_only)})",
                    path=spec.path,
                    tag=col,
                )
            )
    return findings


def identifier_column(name: str) -> bool:
    """Whether a column name looks like a direct identifier (name, birth date, e-mail ...)."""
    spaced = re.sub(r"([a-z])([A-Z])", r"\1_\2", name.strip())
    normal = re.sub(r"[^a-z0-9]+", "_", spaced.lower()).strip("_")
    if normal in IDENTIFIER_COLUMN_NAMES or normal.replace("_", "") in IDENTIFIER_COLUMN_NAMES:
        return True
    return bool(IDENTIFIER_WORDS.intersection(normal.split("_")))


# --- built-in checks ----------------------------------------------------------------------


class _Unreadable(Exception):
    pass


@dataclass
class _ColumnStats:
    nulls: int = 0
    bad_type: int = 0
    emails: int = 0
    phones: int = 0
    ssns: int = 0


def _builtin_checks(file: Path, spec: TableSpec, check: TableCheck) -> None:
    header = _read_header(file)
    check.columns = list(header)
    _header_checks(header, spec, check)

    columns = [c for c in dict.fromkeys(header) if c]
    stats = {c: _ColumnStats() for c in columns}
    id_counts: Counter[str] = Counter()
    id_col = spec.subject_id if spec.subject_id in columns else None
    rows = 0
    for chunk in _chunks(file):
        rows += len(chunk)
        for column in columns:
            if column not in chunk.columns:
                continue
            _column_chunk(chunk[column], spec.columns.get(column), stats[column])
        if id_col is not None:
            ids = chunk[id_col].dropna()
            ids = ids.astype(str).str.strip()
            id_counts.update(ids[ids != ""].tolist())
    check.rows = rows
    check.subject_ids = set(id_counts)

    if rows == 0:
        check.error("table.empty", f"table '{spec.name}' has a header but no rows")

    for column in columns:
        s = stats[column]
        declared = spec.columns.get(column)
        if s.bad_type:
            check.error(
                "table.type",
                f"table '{spec.name}' column '{column}': {s.bad_type} of {rows - s.nulls} "
                f"value(s) are not {_type_phrase(declared)}",
                column,
            )
        if s.nulls and column != id_col:
            check.warning(
                "table.nulls",
                f"table '{spec.name}' column '{column}': {s.nulls} of {rows} value(s) are empty",
                column,
            )
        for count, what in (
            (s.emails, "e-mail addresses"),
            (s.phones, "telephone numbers"),
            (s.ssns, "US social security numbers"),
        ):
            if count:
                check.error(
                    "table.phi-value",
                    f"table '{spec.name}' column '{column}': {count} value(s) look like {what}; "
                    "remove direct identifiers before sharing",
                    column,
                )
        if declared == "date":
            check.warning(
                "table.dates",
                f"table '{spec.name}' column '{column}' holds dates; make sure they are shifted "
                "or reduced to the year, as the de-identification profile requires",
                column,
            )

    if id_col is not None:
        nulls = rows - sum(id_counts.values())
        if nulls:
            check.error(
                "table.subject-id",
                f"table '{spec.name}' subject id column '{id_col}': {nulls} of {rows} row(s) "
                "have no subject id",
                id_col,
            )
        duplicated = [k for k, n in id_counts.items() if n > 1]
        if duplicated and spec.one_row_per_subject:
            extra = sum(id_counts[k] - 1 for k in duplicated)
            check.error(
                "table.subject-id",
                f"table '{spec.name}' subject id column '{id_col}': {len(duplicated)} subject "
                f"id(s) appear more than once ({extra} extra row(s)); set "
                "one_row_per_subject: false if the table has several rows per subject",
                id_col,
            )


def _header_checks(header: list[str], spec: TableSpec, check: TableCheck) -> None:
    name = spec.name
    if any(not c for c in header):
        check.error("table.schema", f"table '{name}' has a column with an empty name")
    for column, n in Counter(header).items():
        if column and n > 1:
            check.error(
                "table.schema", f"table '{name}' column '{column}' appears {n} times", column
            )
    present = set(header)
    if spec.subject_id not in present:
        check.error(
            "table.subject-id",
            f"table '{name}' has no subject id column '{spec.subject_id}'",
            spec.subject_id,
        )
    if spec.columns:
        for column in spec.columns:
            if column not in present and column != spec.subject_id:
                check.error(
                    "table.schema",
                    f"table '{name}' column '{column}' is declared in dataset.yaml but missing",
                    column,
                )
        for column in header:
            if column and column not in spec.columns:
                check.warning(
                    "table.schema",
                    f"table '{name}' column '{column}' is not declared in dataset.yaml",
                    column,
                )
    else:
        check.info(
            "table.schema",
            f"table '{name}' declares no columns in dataset.yaml; value types were not checked",
        )
    for column in header:
        if column and identifier_column(column):
            check.error(
                "table.phi-column",
                f"table '{name}' column '{column}' looks like a direct identifier; "
                "remove it before sharing",
                column,
            )


def _type_phrase(kind: str | None) -> str:
    return {
        "integer": "whole numbers",
        "float": "numbers",
        "boolean": "true/false",
        "date": "ISO 8601 dates (YYYY-MM-DD)",
    }.get(kind or "", kind or "")


def _column_chunk(values: Any, declared: str | None, stats: _ColumnStats) -> None:
    import pandas as pd

    nulls = values.isna()
    if values.dtype == object or pd.api.types.is_string_dtype(values.dtype):
        _string_chunk(_as_arrow_strings(values, nulls), declared, stats)
        return
    stats.nulls += int(nulls.sum())
    if declared:
        stats.bad_type += _count_bad_typed(values[~nulls], declared)


def _as_arrow_strings(values: Any, nulls: Any) -> Any:
    import pyarrow as pa

    try:
        return pa.array(values, type=pa.string(), from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed objects in a Parquet column
        return pa.array(
            [None if null else str(v) for v, null in zip(values, nulls, strict=True)], pa.string()
        )


def _count(mask: Any) -> int:
    import pyarrow.compute as pc

    return int(pc.sum(mask).as_py() or 0)


def _string_chunk(arr: Any, declared: str | None, stats: _ColumnStats) -> None:
    """Counts for a text column, with Arrow's vectorised (RE2) regular expressions."""
    import pyarrow.compute as pc

    trimmed = pc.utf8_trim_whitespace(arr)
    empty = pc.fill_null(pc.equal(trimmed, ""), True)
    stats.nulls += _count(empty)
    present = pc.filter(trimmed, pc.invert(empty))
    if len(present) == 0:
        return
    if declared in (None, "string"):
        with_at = pc.filter(present, pc.match_substring(present, "@"))
        if len(with_at):
            stats.emails += _count(pc.match_substring_regex(with_at, EMAIL.pattern))
        # telephone and SSN patterns are 9 to 24 characters long: skip everything else cheaply
        lengths = pc.utf8_length(present)
        present = pc.filter(
            present, pc.and_(pc.greater_equal(lengths, 9), pc.less_equal(lengths, 24))
        )
        if len(present) == 0:
            return
        digits = pc.count_substring_regex(present, r"\d")
        plausible = pc.and_(pc.greater_equal(digits, 9), pc.less_equal(digits, 15))
        phones = pc.and_(pc.match_substring_regex(present, f"^(?:{PHONE.pattern})$"), plausible)
        ssns = pc.match_substring_regex(present, f"^(?:{SSN.pattern})$")
        stats.ssns += _count(ssns)
        stats.phones += _count(pc.and_(phones, pc.invert(ssns)))
    elif declared:
        stats.bad_type += _count_bad_strings(present, declared)


def _count_bad_strings(present: Any, declared: str) -> int:
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc

    if declared == "integer":
        return _count(pc.invert(pc.match_substring_regex(present, f"^(?:{INTEGER.pattern})$")))
    if declared == "boolean":
        words = pa.array(sorted(BOOLEAN_WORDS), pa.string())
        return _count(pc.invert(pc.is_in(pc.utf8_lower(present), value_set=words)))
    series = pd.Series(present.to_pylist(), dtype=object)
    if declared == "float":
        return int(pd.to_numeric(series, errors="coerce").isna().sum())
    if declared == "date":
        parsed = pd.to_datetime(series, errors="coerce", format="ISO8601")
        return int(parsed.isna().sum())
    return 0


def _count_bad_typed(present: Any, declared: str) -> int:
    import numpy as np

    kind = present.dtype.kind
    if declared == "integer":
        if kind in "iu":
            return 0
        if kind == "f":
            return int((present != np.floor(present)).sum())
        return len(present)
    if declared == "float":
        return 0 if kind in "iuf" else len(present)
    if declared == "boolean":
        if kind == "b":
            return 0
        if kind in "iu":
            return int((~present.isin([0, 1])).sum())
        return len(present)
    if declared == "date":
        return 0 if kind == "M" else len(present)
    return 0


def _is_parquet(file: Path) -> bool:
    return file.name.lower().endswith((".parquet", ".pq"))


def _read_header(file: Path) -> list[str]:
    if _is_parquet(file):
        import pyarrow.parquet as pq

        try:
            return list(pq.ParquetFile(file).schema_arrow.names)
        except Exception as exc:  # pyarrow raises several types for a corrupt file
            raise _Unreadable(f"not a valid Parquet file ({type(exc).__name__})") from None
    opener = gzip.open if file.name.lower().endswith(".gz") else open
    try:
        with opener(file, "rt", encoding="utf-8-sig", newline="") as fh:
            header = next(csv.reader(fh), None)
    except UnicodeDecodeError:
        raise _Unreadable("not UTF-8 text") from None
    except (OSError, EOFError, csv.Error) as exc:
        raise _Unreadable(f"not a readable CSV file ({type(exc).__name__})") from None
    if not header:
        raise _Unreadable("the file is empty (no header row)")
    return [c.strip() for c in header]


def _chunks(file: Path) -> Iterator[Any]:
    import pandas as pd

    if _is_parquet(file):
        import pyarrow.parquet as pq

        try:
            for batch in pq.ParquetFile(file).iter_batches(batch_size=CHUNK_ROWS):
                yield batch.to_pandas()
        except Exception as exc:
            raise _Unreadable(f"not a valid Parquet file ({type(exc).__name__})") from None
        return
    try:
        reader = pd.read_csv(
            file,
            dtype=str,
            chunksize=CHUNK_ROWS,
            keep_default_na=False,
            na_values=[""],
            encoding="utf-8-sig",
            skipinitialspace=True,
        )
        with reader:
            for chunk in reader:
                chunk.columns = [str(c).strip() for c in chunk.columns]
                yield chunk
    except pd.errors.ParserError as exc:
        # pandas' parser messages give line and field counts, not cell contents
        message = str(exc).splitlines()[0] if str(exc) else "malformed CSV"
        raise _Unreadable(f"malformed CSV ({message})") from None
    except UnicodeDecodeError:
        raise _Unreadable("not UTF-8 text") from None
    except pd.errors.EmptyDataError:
        raise _Unreadable("the file is empty") from None


def load_table(file: Path, spec: TableSpec) -> Any:
    """The whole table as a DataFrame, declared columns converted to their declared types."""
    import pandas as pd

    if _is_parquet(file):
        frame = pd.read_parquet(file)
    else:
        frame = pd.read_csv(
            file,
            dtype={spec.subject_id: str},
            keep_default_na=False,
            na_values=[""],
            encoding="utf-8-sig",
            skipinitialspace=True,
        )
        frame.columns = [str(c).strip() for c in frame.columns]
    for column, kind in spec.columns.items():
        if column not in frame.columns:
            continue
        values = frame[column]
        if kind == "integer":
            frame[column] = pd.to_numeric(values, errors="coerce").astype("Int64")
        elif kind == "float":
            frame[column] = pd.to_numeric(values, errors="coerce").astype("float64")
        elif kind == "boolean" and values.dtype.kind != "b":
            words = values.astype(str).str.strip().str.lower()
            truth = words.isin({"true", "t", "yes", "y", "1"})
            frame[column] = truth.where(words.isin(BOOLEAN_WORDS)).astype("boolean")
        elif kind == "date" and values.dtype.kind != "M":
            frame[column] = pd.to_datetime(values, errors="coerce", format="ISO8601")
        elif kind == "string":
            frame[column] = values.astype("string")
    return frame


# --- expectation suites -------------------------------------------------------------------


@functools.cache
def _gx() -> Any:
    """Import great_expectations once per process (it takes several seconds)."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx

    _quiet_gx()
    return gx


def _quiet_gx() -> None:
    # GX modules set their own loggers to INFO (temporary docs sites, data sources): quiet
    # every one of them, including those created after import.
    import logging

    for name in list(logging.Logger.manager.loggerDict):
        if name.startswith("great_expectations"):
            logging.getLogger(name).setLevel(logging.WARNING)


def load_suite(file: Path) -> list[tuple[str, dict[str, Any]]]:
    """(type, kwargs) of every expectation in a suite file; ValueError says what is wrong."""
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ValueError("is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if isinstance(data, list):
        items = data
    elif isinstance(data, dict) and isinstance(data.get("expectations"), list):
        items = data["expectations"]
    else:
        raise ValueError('must be {"expectations": [...]} with a list of expectations')
    parsed = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ValueError(f"expectation #{i + 1} is not an object")
        kind = item.get("type", item.get("expectation_type"))
        if not isinstance(kind, str) or not kind:
            raise ValueError(f'expectation #{i + 1} has no "type" (or "expectation_type")')
        kwargs = item.get("kwargs", {})
        if not isinstance(kwargs, dict):
            raise ValueError(f"expectation #{i + 1} ({kind}) has kwargs that are not an object")
        parsed.append((kind, kwargs))
    if not parsed:
        raise ValueError("lists no expectations")
    return parsed


def _columns_named(kwargs: dict[str, Any]) -> list[str]:
    names = [
        kwargs[k] for k in ("column", "column_A", "column_B") if isinstance(kwargs.get(k), str)
    ]
    if isinstance(kwargs.get("column_list"), list):
        names += [c for c in kwargs["column_list"] if isinstance(c, str)]
    return names


def run_expectations(root: Path, spec: TableSpec, check: TableCheck) -> list[Finding]:
    """Run the table's great-expectations suite; one finding per failed expectation."""
    suite_path = spec.expectations
    assert suite_path is not None
    findings: list[Finding] = []

    def finding(severity: Severity, message: str, column: str | None = None) -> None:
        findings.append(
            Finding("table.expectation", severity, message, path=suite_path, tag=column)
        )

    try:
        items = load_suite(root / suite_path)
    except (ValueError, OSError) as exc:
        finding("error", f"expectation suite for table '{spec.name}' {exc}")
        return findings
    file = root / spec.path
    if file.stat().st_size > EXPECTATIONS_MAX_BYTES:
        finding(
            "warning",
            f"table '{spec.name}' is larger than {EXPECTATIONS_MAX_BYTES >> 20} MiB; its "
            "expectation suite was not run",
        )
        return findings

    gx = _gx()
    from great_expectations.core.expectation_suite import ExpectationSuite
    from great_expectations.data_context.types.base import ProgressBarsConfig
    from great_expectations.exceptions import ExpectationNotFoundError
    from great_expectations.expectations.registry import get_expectation_impl

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    _quiet_gx()
    expectations = []
    for i, (kind, kwargs) in enumerate(items):
        label = f"expectation #{i + 1} ({kind})"
        try:
            impl = get_expectation_impl(kind)
        except ExpectationNotFoundError:
            finding(
                "error",
                f"expectation suite for table '{spec.name}': {label} is not a known "
                "great-expectations expectation type",
            )
            continue
        missing = [c for c in _columns_named(kwargs) if c not in check.columns]
        if missing:
            finding(
                "error",
                f"table '{spec.name}': {label} names column(s) "
                f"{', '.join(repr(c) for c in missing)} that the table does not have",
                missing[0],
            )
            continue
        try:
            expectation = impl(**kwargs)
        except Exception as exc:  # pydantic ValidationError, TypeError, InvalidExpectation...
            fields = _bad_fields(exc)
            finding(
                "error",
                f"expectation suite for table '{spec.name}': {label} has invalid kwargs"
                + (f" ({fields})" if fields else ""),
            )
            continue
        expectations.append(expectation)
    if not expectations:
        return findings

    try:
        frame = load_table(file, spec)
    except Exception as exc:
        finding("error", f"table '{spec.name}' could not be loaded ({type(exc).__name__})")
        return findings

    source = context.data_sources.add_pandas(name="enclave")
    asset = source.add_dataframe_asset(name=spec.name)
    batch = asset.add_batch_definition_whole_dataframe(name="whole-table")
    suite = context.suites.add(
        ExpectationSuite(name=f"{spec.name}-suite", expectations=expectations)
    )
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=f"{spec.name}-validation", data=batch, suite=suite)
    )
    result = definition.run(batch_parameters={"dataframe": frame})
    for item in result.results:
        if item.success:
            continue
        config = item.expectation_config
        kind = config.type
        columns = _columns_named(config.kwargs)
        on = f" on column(s) {', '.join(repr(c) for c in columns)}" if columns else ""
        exc_info = item.exception_info or {}
        raised = exc_info.get("raised_exception") or any(
            isinstance(v, dict) and v.get("raised_exception") for v in exc_info.values()
        )
        if raised:
            finding(
                "error",
                f"table '{spec.name}': expectation {kind}{on} could not be evaluated; "
                "check its kwargs against the column types",
                columns[0] if columns else None,
            )
            continue
        counts = _unexpected_counts(item.result or {})
        finding(
            "error",
            f"table '{spec.name}': expectation {kind}{on} failed{counts}",
            columns[0] if columns else None,
        )
    return findings


def _bad_fields(exc: Exception) -> str:
    """The kwarg names a pydantic error complains about (not the values it quotes)."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        try:
            names = {".".join(str(p) for p in e.get("loc", ())) for e in errors()} - {"__root__"}
            return ", ".join(sorted(n for n in names if n)) or ""
        except Exception:
            return ""
    return type(exc).__name__


def _unexpected_counts(result: dict[str, Any]) -> str:
    """Counts from a GX result; ``partial_unexpected_list`` holds values and is never used."""
    count = result.get("unexpected_count")
    total = result.get("element_count")
    if isinstance(count, int) and isinstance(total, int):
        percent = result.get("unexpected_percent")
        pct = f", {percent:.1f}%" if isinstance(percent, int | float) else ""
        return f" ({count} of {total} value(s) unexpected{pct})"
    return ""


def _examples(ids: list[str]) -> str:
    shown = ", ".join(ids[:LINKAGE_EXAMPLES])
    more = f" and {len(ids) - LINKAGE_EXAMPLES} more" if len(ids) > LINKAGE_EXAMPLES else ""
    return shown + more
