"""The airlock's automated checks: what each file of an export request is, and whether it may go.

Every check gives a verdict (``pass``, ``hold``: a reviewer must look, or ``refuse``: it cannot
leave as it is) and a reason a researcher can act on. The checks, per file:

* ``type``: the file's content (:mod:`enclave.airlock.sniff`, never its name) is on the
  allow-list: tables (CSV, TSV, Parquet, xlsx), text, images (PNG, JPEG, GIF), PDF, and model
  weights in formats that run no code (safetensors, ONNX); pickled models (PyTorch ``.pt``,
  scikit-learn ``.pkl``/``.joblib``) only with their run's lineage and a note; the extension must
  agree with the content; extensions ACRO blocks are refused;
* ``size``: caps per file and per request;
* ``imaging``: DICOM, NIfTI, NRRD and MetaImage, found by content (also inside gzip), never leave;
* ``copy``: a file whose SHA-256, or any 64 KiB-aligned chunk of whose bytes, matches a file of
  any dataset version (the chunk index is built at ingestion);
* ``table``: statistical disclosure control with ACRO's parameters: a count below the minimum
  cell count, or a zero, is held, naming the cell;
* ``identifiers``: a subject or patient identifier of any dataset version in a text output;
* ``lineage``: a model without the ``enclave.data`` lineage record of the run that made it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Protocol

from catalog.airlock import CheckVerdict
from enclave.airlock.sniff import IMAGING, PICKLED, Kind, sniff_file
from ingestion.content_index import identifier_digest, iter_chunk_digests

#: Where a token is cut into the pieces also looked up.
_PIECES = re.compile(rb"[._]")
#: Bytes of a text file read at a time by the identifier check.
_TEXT_BLOCK = 4 * 1024 * 1024
#: Lower-cases letters, keeps digits and ``._-``, turns every other byte into a space.
_TOKEN_TABLE = bytes(
    (b | 0x20)
    if 0x41 <= b <= 0x5A
    else b
    if b in b"abcdefghijklmnopqrstuvwxyz0123456789._-"
    else 0x20
    for b in range(256)
)
_LETTERS = b"abcdefghijklmnopqrstuvwxyz"
#: Decimal numbers and whole numbers of fewer than 5 digits, as words (after translation).
_NUMBERS = re.compile(rb" -?(?:[0-9]{1,4}|[0-9]*\.[0-9.]*)(?= )")
#: Most distinct tokens a text file may hold for the identifier check to look them all up.
MAX_TOKENS = 2_000_000
#: Identifiers made of digits only are looked for from this many digits on.
MIN_NUMERIC_IDENTIFIER = 5
#: Rows of a table the SDC check reads.
MAX_TABLE_ROWS = 200_000
#: Columns whose small integers are positions, not counts of people.
INDEX_COLUMNS = frozenset(
    {"id", "index", "idx", "epoch", "step", "iteration", "fold", "year", "month", "day", "rank"}
)


Verdict = CheckVerdict


def worst(verdicts: Iterable[Verdict]) -> Verdict:
    return max(verdicts, key=lambda v: v.weight, default=Verdict.PASS)


@dataclass(frozen=True)
class Check:
    name: str
    verdict: Verdict
    reason: str
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["verdict"] = self.verdict.value
        return data


@dataclass(frozen=True)
class Limits:
    max_file_bytes: int = 1024**3
    max_request_bytes: int = 4 * 1024**3


class DataIndex(Protocol):
    """What the enclave knows of its datasets' bytes and identifiers (the catalog)."""

    def files_with_sha256(self, sha256: str) -> list[str]:
        """Dataset files with this content, as ``name vN: path``."""
        ...

    def chunks_found(self, digests: list[bytes]) -> dict[bytes, str]:
        """Which of these chunk digests occur in dataset files, each with where."""
        ...

    def identifiers_found(self, digests: list[bytes]) -> dict[bytes, str]:
        """Which of these identifier digests belong to a dataset version, each with which."""
        ...


class LineageIndex(Protocol):
    def record_for(self, sha256: str) -> dict[str, Any] | None:
        """The lineage record of the run that produced a file with this content, if any."""
        ...


# ----------------------------------------------------------------------------- file types


@dataclass(frozen=True)
class FileType:
    label: str
    kinds: frozenset[Kind]
    extensions: frozenset[str]
    model: bool = False


ALLOWED_TYPES = (
    FileType("table", frozenset({Kind.TEXT}), frozenset({".csv", ".tsv"})),
    FileType("table", frozenset({Kind.PARQUET}), frozenset({".parquet"})),
    FileType("table", frozenset({Kind.XLSX}), frozenset({".xlsx"})),
    FileType(
        "text",
        frozenset({Kind.TEXT, Kind.EMPTY}),
        frozenset({".txt", ".md", ".json", ".yaml", ".yml", ".log", ".tex", ".rst"}),
    ),
    FileType("image", frozenset({Kind.PNG}), frozenset({".png"})),
    FileType("image", frozenset({Kind.JPEG}), frozenset({".jpg", ".jpeg"})),
    FileType("image", frozenset({Kind.GIF}), frozenset({".gif"})),
    FileType("document", frozenset({Kind.PDF}), frozenset({".pdf"})),
    FileType("model", frozenset({Kind.SAFETENSORS}), frozenset({".safetensors"}), model=True),
    FileType("model", frozenset({Kind.ONNX}), frozenset({".onnx"}), model=True),
    FileType(
        "pickled model",
        PICKLED,
        frozenset({".pt", ".pth", ".ckpt", ".pkl", ".joblib"}),
        model=True,
    ),
)
ALLOWED_SUMMARY = (
    "tables (.csv .tsv .parquet .xlsx), text (.txt .md .json .yaml .log), images (.png .jpg "
    ".gif), PDF, model weights (.safetensors .onnx; pickled .pt/.pkl with lineage and a note)"
)


@cache
def acro_config() -> dict[str, Any]:
    """ACRO's own default risk appetite (its ``default.yaml``): thresholds and blocked types."""
    from importlib.util import find_spec

    import yaml

    spec = find_spec("acro")  # ACRO's package folder, without importing it (statsmodels...)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("ACRO is not installed: the airlock's table checks need it")
    folder = Path(next(iter(spec.submodule_search_locations)))
    with open(folder / "default.yaml", encoding="utf-8") as fh:
        return dict(yaml.safe_load(fh))


def file_type(kind: Kind, suffix: str) -> FileType | None:
    for allowed in ALLOWED_TYPES:
        if kind in allowed.kinds and suffix in allowed.extensions:
            return allowed
    return None


# ----------------------------------------------------------------------------- the checks


def check_type(
    kind: Kind, name: str, *, lineage: dict[str, Any] | None, note: str
) -> tuple[Check, FileType | None]:
    suffix = Path(name).suffix.lower()
    blocked = {e.lower() for e in acro_config().get("blocked_extensions", [])}
    if suffix in blocked:
        return Check("type", Verdict.REFUSE, f"{suffix} files are blocked (ACRO's list)"), None
    matched = file_type(kind, suffix)
    if matched is None:
        expected = [a for a in ALLOWED_TYPES if suffix in a.extensions]
        if expected:
            reason = (
                f"the name says {suffix} but the content is {kind.value}: rename it to what it "
                f"is, or export it in an allowed format ({ALLOWED_SUMMARY})"
            )
        else:
            reason = f"{kind.value} content ({suffix or 'no extension'}) is not on the allow-list: {ALLOWED_SUMMARY}"
        return Check("type", Verdict.REFUSE, reason, {"kind": kind.value}), None
    if kind in PICKLED:
        if lineage is None:
            return (
                Check(
                    "type",
                    Verdict.REFUSE,
                    "a pickled model runs code when loaded: it leaves only with the lineage of "
                    "the run that made it (enclave.data.training_run) and a note; or save the "
                    "weights as .safetensors",
                    {"kind": kind.value},
                ),
                matched,
            )
        if not note.strip():
            return (
                Check(
                    "type",
                    Verdict.REFUSE,
                    "a pickled model needs a note saying why it cannot be safetensors or ONNX "
                    "(airlock submit --note)",
                    {"kind": kind.value},
                ),
                matched,
            )
        return (
            Check(
                "type",
                Verdict.HOLD,
                "a pickled model (it runs code when loaded): the reviewers read the note",
                {"kind": kind.value},
            ),
            matched,
        )
    return Check(
        "type", Verdict.PASS, f"{matched.label} ({kind.value})", {"kind": kind.value}
    ), matched


def check_size(size: int, limits: Limits) -> Check:
    if size > limits.max_file_bytes:
        return Check(
            "size",
            Verdict.REFUSE,
            f"{size} bytes is over the per-file cap of {limits.max_file_bytes} bytes",
        )
    return Check("size", Verdict.PASS, f"{size} bytes")


def check_imaging(kind: Kind) -> Check:
    if kind in IMAGING:
        return Check(
            "imaging",
            Verdict.REFUSE,
            f"the content is a medical image ({kind.value}, whatever the name says): images "
            "never leave; export what you derived from them (tables, figures, a model)",
        )
    return Check("imaging", Verdict.PASS, "no medical image")


def check_copy(path: Path, sha256: str, index: DataIndex) -> Check:
    same = index.files_with_sha256(sha256)
    if same:
        return Check(
            "copy",
            Verdict.REFUSE,
            f"this file is a copy of dataset file {same[0]}",
            {"matches": same[:10]},
        )
    chunks = list(iter_chunk_digests(path))
    if chunks:
        found = index.chunks_found([digest for _, digest in chunks])
        hits = [(offset, found[d]) for offset, d in chunks if d in found]
        if hits:
            offset, where = hits[0]
            return Check(
                "copy",
                Verdict.REFUSE,
                f"{len(hits)} of its 64 KiB blocks are bytes of dataset files (the first at "
                f"offset {offset}: {where})",
                {"blocks": len(hits), "first_offset": offset, "source": where},
            )
    return Check("copy", Verdict.PASS, "no bytes of a dataset file")


def _read_table(path: Path) -> Any:
    """The first ``MAX_TABLE_ROWS`` rows of a CSV or TSV, column types inferred (C parser)."""
    import pandas as pd

    with open(path, "rb") as fh:
        first = fh.readline(65536)
    sep = "\t" if path.suffix.lower() == ".tsv" or b"\t" in first else ","
    return pd.read_csv(
        path,
        sep=sep,
        nrows=MAX_TABLE_ROWS,
        on_bad_lines="skip",
        encoding_errors="replace",
        skipinitialspace=True,
        low_memory=False,
    )


def check_table(path: Path) -> Check:
    """ACRO's minimum cell count and zero checks on the count cells of a CSV/TSV table.

    A column is a count when every cell is a whole number (read as integers), it is not named
    as a position (epoch, fold, year...) and is not a run of consecutive numbers (row
    numbers). Empty cells in a column of counts make pandas read it as floats: such a column
    counts when its other cells are whole."""
    import pandas as pd
    from acro.sdcchecks import get_status_summary_from_mask

    config = acro_config()
    threshold = int(config.get("safe_threshold", 10))
    zeros = bool(config.get("zeros_are_disclosive", True))
    try:
        table = _read_table(path)
    except pd.errors.EmptyDataError:
        return Check("table", Verdict.PASS, "no data rows")
    except (pd.errors.ParserError, ValueError) as exc:
        return Check(
            "table",
            Verdict.HOLD,
            f"cannot be read as a table ({str(exc).splitlines()[0]}): reviewers must look",
        )
    if table.empty:
        return Check("table", Verdict.PASS, "no data rows")
    flagged: dict[str, Any] = {}
    for name in table.columns:
        values = table[name]
        if pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values):
            continue
        filled = values.dropna()
        if filled.empty or not (filled == filled.round()).all() or (filled < 0).any():
            continue
        steps = filled.diff().iloc[1:]
        if str(name).strip().lower() in INDEX_COLUMNS or (len(filled) > 2 and (steps == 1).all()):
            continue  # positions (epochs, folds, row numbers), not counts of people
        small = (values > 0) & (values < threshold)
        flagged[name] = small | (values == 0) if zeros else small
    if not flagged:
        return Check("table", Verdict.PASS, "no count cells (no frequency table to check)")
    mask = pd.DataFrame(flagged).fillna(False).astype(bool)
    status, summary = get_status_summary_from_mask(mask)
    if status == "pass":
        return Check(
            "table",
            Verdict.PASS,
            f"every count is at least {threshold} (ACRO's minimum cell count)",
        )
    text_columns = [c for c in table.columns if not pd.api.types.is_numeric_dtype(table[c])]
    cells = []
    for row, column in zip(*mask.to_numpy().nonzero(), strict=True):
        name = mask.columns[column]
        labels = [str(table.at[row, c]) for c in text_columns if pd.notna(table.at[row, c])]
        where = ", ".join(labels[:2]) or f"row {row + 2}"
        cells.append({"cell": f"{where} / {name}", "count": int(table.at[row, name])})
        if len(cells) >= 50:
            break
    first = cells[0]
    kind_of = "zero" if first["count"] == 0 else f"{first['count']} (below {threshold})"
    return Check(
        "table",
        Verdict.HOLD,
        f"cell {first['cell']} is {kind_of}: ACRO's minimum cell count is {threshold} and "
        f"zeros can disclose; {int(mask.to_numpy().sum())} cell(s) need suppressing or "
        f"merging ({summary.strip()})",
        {"cells": cells, "threshold": threshold},
    )


TEXT_KINDS = frozenset({Kind.TEXT, Kind.SVG})


def _worth_looking_up(token: bytes) -> bool:
    """Identifier-like: has a letter (``subj-0001``), or is a long number (``100234``); not a
    measurement, a date or a small count (``0.8123``, ``2026-12-06``, ``42``)."""
    if not 3 <= len(token) <= 64 or token[:1] in b"._-":
        return False
    if len(token.translate(None, _LETTERS)) < len(token):
        return True
    return token.isdigit() and len(token) >= MIN_NUMERIC_IDENTIFIER


def text_tokens(path: Path) -> set[bytes] | None:
    """The distinct identifier-like tokens of a text file (lower-cased runs of letters,
    digits and ``._-``), read in blocks; None when there are more than ``MAX_TOKENS`` (the
    check then cannot vouch for the file)."""
    found: set[bytes] = set()
    tail = b""
    with open(path, "rb") as fh:
        while block := fh.read(_TEXT_BLOCK):
            data = tail + block.translate(_TOKEN_TABLE)
            # A token cut at the block's end is carried over to the next block.
            split = data.rfind(b" ") + 1
            tail = data[split:] if len(data) - split < 1024 else b""
            words = b" " + (data[:split] if tail else data)
            # Measurements and small counts go before the set (most of a table of numbers).
            found.update(_NUMBERS.sub(b" ", words).split())
            if len(found) > MAX_TOKENS:
                return None
    found.update(tail.split())
    tokens = set(filter(_worth_looking_up, found))
    # An identifier inside a file name or a longer word: "subj-0001_t1.png".
    pieces = {p for t in tokens if b"_" in t or b"." in t for p in _PIECES.split(t)}
    return tokens | set(filter(_worth_looking_up, pieces))


def check_identifiers(path: Path, index: DataIndex) -> Check:
    tokens = text_tokens(path)
    if tokens is None:
        return Check(
            "identifiers",
            Verdict.HOLD,
            f"over {MAX_TOKENS} distinct words: too many to look every one up; reviewers must "
            "judge it, or export a summary instead",
        )
    digests = {identifier_digest(t): t for t in tokens}
    found = index.identifiers_found(list(digests)) if digests else {}
    if found:
        digest, where = next(iter(found.items()))
        value = digests[digest].decode(errors="replace")
        return Check(
            "identifiers",
            Verdict.HOLD,
            f"'{value}' is a subject identifier of {where}: outputs name no subject; remove it "
            "or replace it with a label of your own",
            {"identifiers": len(found)},
        )
    return Check("identifiers", Verdict.PASS, "no subject identifier of a dataset")


def check_lineage(lineage: dict[str, Any] | None) -> Check:
    if lineage is None:
        return Check(
            "lineage",
            Verdict.HOLD,
            "no lineage record for this model: train it inside enclave.data.training_run so "
            "reviewers see which data, code and parameters made it",
        )
    datasets = ", ".join(
        f"{d.get('name')} v{d.get('version')}" for d in lineage.get("datasets", [])
    )
    return Check(
        "lineage",
        Verdict.PASS,
        f"run {lineage.get('run_id')} on {datasets or 'no dataset'}",
        {"run_id": lineage.get("run_id")},
    )


# ----------------------------------------------------------------------------- a request


@dataclass
class FileReport:
    name: str
    size: int
    sha256: str
    kind: str
    checks: list[Check]

    @property
    def verdict(self) -> Verdict:
        return worst(c.verdict for c in self.checks)


def check_file(
    path: Path,
    name: str,
    *,
    index: DataIndex,
    lineage: LineageIndex,
    limits: Limits,
    note: str = "",
    sha256: str | None = None,
) -> FileReport:
    """Every check on one file (already copied out of the user's reach); ``sha256`` is the
    hash staging took while copying it (computed here when not given)."""
    from secret_sharing.fileio import sha256_file

    size = path.stat().st_size
    sha256 = sha256 or sha256_file(path)
    kind = sniff_file(path)
    record = lineage.record_for(sha256)
    type_check, matched = check_type(kind, name, lineage=record, note=note)
    checks = [type_check, check_size(size, limits), check_imaging(kind)]
    checks.append(check_copy(path, sha256, index))
    if kind in TEXT_KINDS or kind is Kind.EMPTY:
        if Path(name).suffix.lower() in (".csv", ".tsv"):
            checks.append(check_table(path))
        checks.append(check_identifiers(path, index))
    if matched is not None and matched.model:
        checks.append(check_lineage(record))
    return FileReport(name, size, sha256, kind.value, checks)


def check_request_size(reports: Iterable[FileReport], limits: Limits) -> Check:
    total = sum(r.size for r in reports)
    if total > limits.max_request_bytes:
        return Check(
            "size",
            Verdict.REFUSE,
            f"the request holds {total} bytes, over the cap of {limits.max_request_bytes}: "
            "split it",
        )
    return Check("size", Verdict.PASS, f"{total} bytes in all")
