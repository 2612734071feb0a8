"""An opened, granted dataset version: its description and its items.

An *item* is one DICOM series with what belongs to it: the subject, the label mask declared for
that series in ``dataset.yaml``, the subject's rows from every table that links to imaging, and
the radiomics features ingestion computed for its mask. Items hold paths; volumes are read
only when asked (``item.image()``) or by a MONAI pipeline (``monai_dataset``).

pydicom reads one header per series folder to learn the subject and series UID; pandas and
MONAI are imported only by the methods that need them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import Any

from enclave.data.mounts import DatasetAccessError, GrantedVersion, resolve

RADIOMICS_FILE = "derived/radiomics.parquet"


@dataclass
class Item:
    """One DICOM series of a subject, with its mask, table rows and radiomics features."""

    subject_id: str
    series_uid: str
    image_path: Path  # the series folder (MONAI's PydicomReader reads the whole folder)
    label_path: Path | None = None
    clinical: dict[str, Any] = field(default_factory=dict)
    radiomics: dict[str, dict[str, float]] = field(default_factory=dict)  # label name -> features

    def image(self) -> Any:
        """The series as a channel-first MONAI ``MetaTensor`` in RAS (HU for CT)."""
        from enclave.data.volumes import load_volume

        return load_volume(self.image_path)

    def label(self) -> Any:
        """The label mask on the same grid as :meth:`image`."""
        from enclave.data.volumes import load_volume

        if self.label_path is None:
            raise DatasetAccessError(
                f"series {self.image_path.name} of subject {self.subject_id} has no segmentation"
            )
        return load_volume(self.label_path)

    def as_monai(self) -> dict[str, Any]:
        """The dict a MONAI dictionary transform chain starts from."""
        entry: dict[str, Any] = {
            "image": str(self.image_path),
            "subject_id": self.subject_id,
            "series_uid": self.series_uid,
        }
        if self.label_path is not None:
            entry["label"] = str(self.label_path)
        return entry

    def __repr__(self) -> str:
        label = self.label_path.name if self.label_path else "no mask"
        return (
            f"Item({self.subject_id}, series {self.image_path.name}, {label}, "
            f"{len(self.clinical)} table values, radiomics for {sorted(self.radiomics)})"
        )


class EnclaveDataset:
    """A granted dataset version opened for reading (``open_dataset``)."""

    def __init__(self, granted: GrantedVersion) -> None:
        from ingestion.manifest import ManifestError, load_manifest

        self.granted = granted
        self.name = granted.name
        self.version = granted.version
        self.path = granted.path
        try:
            self.manifest = load_manifest(self.path)
        except ManifestError as exc:
            raise DatasetAccessError(
                f"dataset '{self.name}' version {self.version}: dataset.yaml is not readable "
                f"({exc})"
            ) from None

    # ---- description

    @property
    def title(self) -> str:
        return self.manifest.title

    @property
    def description(self) -> str:
        return self.manifest.description

    @property
    def modality(self) -> str:
        return self.manifest.modality

    @property
    def labels(self) -> dict[int, str]:
        return dict(self.manifest.labels)

    @property
    def content_hash(self) -> str:
        return self.granted.content_hash

    @property
    def label(self) -> str:
        return self.granted.label

    # ---- items

    @cached_property
    def _series(self) -> list[tuple[str, str, Path]]:
        """(subject id, series uid, folder) for every folder holding DICOM files."""
        from pydicom import dcmread

        folders: dict[Path, Path] = {}
        dicom_root = self.path / "dicom"
        candidates = dicom_root.rglob("*") if dicom_root.is_dir() else self.path.rglob("*.dcm")
        for path in sorted(candidates):
            if path.is_file() and not path.name.startswith(".") and path.parent not in folders:
                folders[path.parent] = path
        series = []
        attribute = self.manifest.subject_id
        for folder, first in folders.items():
            try:
                header = dcmread(first, stop_before_pixels=True)
            except Exception as exc:
                raise DatasetAccessError(f"{first}: not a readable DICOM file ({exc})") from None
            subject = str(header.get(attribute, "") or "")
            series.append((subject, str(header.get("SeriesInstanceUID", "")), folder))
        return series

    @cached_property
    def items(self) -> list[Item]:
        """One item per series, in subject order."""
        masks = {
            (self.path / PurePosixPath(seg.series)).resolve(): self.path / PurePosixPath(seg.mask)
            for seg in self.manifest.segmentations
        }
        rows = self._linked_rows()
        features = self._radiomics_by_series()
        items = []
        for subject, series_uid, folder in sorted(self._series, key=lambda s: (s[0], str(s[2]))):
            items.append(
                Item(
                    subject_id=subject,
                    series_uid=series_uid,
                    image_path=folder,
                    label_path=masks.get(folder.resolve()),
                    clinical=dict(rows.get(subject, {})),
                    radiomics=features.get(series_uid, {}),
                )
            )
        return items

    @property
    def subjects(self) -> list[str]:
        return sorted({item.subject_id for item in self.items})

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self):
        return iter(self.items)

    def __getitem__(self, index: int) -> Item:
        return self.items[index]

    def item(self, subject_id: str) -> Item:
        """The first series of ``subject_id``."""
        for item in self.items:
            if item.subject_id == subject_id:
                return item
        raise DatasetAccessError(f"{self.label} has no subject '{subject_id}'")

    # ---- tables

    @property
    def table_names(self) -> list[str]:
        return [t.name for t in self.manifest.tables]

    def table(self, name: str | None = None) -> Any:
        """A table of the dataset as a pandas DataFrame (the first table when no name)."""
        import pandas as pd

        specs = {t.name: t for t in self.manifest.tables}
        if not specs:
            raise DatasetAccessError(f"{self.label} has no tables")
        if name is None:
            name = next(iter(specs))
        if name not in specs:
            raise DatasetAccessError(
                f"{self.label} has no table '{name}'; tables: {', '.join(specs)}"
            )
        spec = specs[name]
        path = self.path / PurePosixPath(spec.path)
        if path.suffix == ".parquet":
            return pd.read_parquet(path)
        dtype = {spec.subject_id: str}
        if path.suffix == ".tsv":
            return pd.read_csv(path, dtype=dtype, sep="\t")
        return pd.read_csv(path, dtype=dtype)

    def _linked_rows(self) -> dict[str, dict[str, Any]]:
        rows: dict[str, dict[str, Any]] = {}
        for spec in self.manifest.tables:
            if not spec.links_imaging:
                continue
            frame = self.table(spec.name)
            for record in frame.to_dict("records"):
                subject = str(record.pop(spec.subject_id))
                target = rows.setdefault(subject, {})
                for column, value in record.items():
                    key = column if column not in target else f"{spec.name}.{column}"
                    target[key] = _plain(value)
        return rows

    def radiomics(self) -> Any:
        """Ingestion's radiomics features: one row per subject, series and label."""
        import pandas as pd

        path = self.path / RADIOMICS_FILE
        if not path.is_file():
            raise DatasetAccessError(
                f"{self.label} has no radiomics table ({RADIOMICS_FILE}): it declares no "
                "segmentations, or was ingested before features were computed"
            )
        return pd.read_parquet(path)

    def _radiomics_by_series(self) -> dict[str, dict[str, dict[str, float]]]:
        if not (self.path / RADIOMICS_FILE).is_file():
            return {}
        frame = self.radiomics()
        features = [c for c in frame.columns if c.startswith("original_")]
        out: dict[str, dict[str, dict[str, float]]] = {}
        for record in frame.to_dict("records"):
            label = str(record.get("label_name") or record.get("label"))
            out.setdefault(str(record["series_uid"]), {})[label] = {
                f: _plain(record[f]) for f in features
            }
        return out

    def features(self, label: str | int | None = None) -> Any:
        """One row per series: subject id, linked table columns and radiomics features.

        ``label`` (a name such as ``"lesion"`` or its number) picks which mask label's
        features become the columns; by default every label, prefixed ``<label>_``.
        """
        import pandas as pd

        names = self.labels
        if isinstance(label, int):
            if label not in names:
                raise DatasetAccessError(f"{self.label} has no label {label}; labels: {names}")
            label = names[label]
        records = []
        for item in self.items:
            if not item.radiomics:
                continue
            row: dict[str, Any] = {"subject_id": item.subject_id, "series_uid": item.series_uid}
            row.update(item.clinical)
            if label is None:
                for name, values in item.radiomics.items():
                    row.update({f"{name}_{k}": v for k, v in values.items()})
            elif label in item.radiomics:
                row.update(item.radiomics[label])
            else:
                continue
            records.append(row)
        if not records:
            known = sorted({n for item in self.items for n in item.radiomics})
            raise DatasetAccessError(
                f"{self.label} has no radiomics rows"
                + (
                    f" for label '{label}'; labels with features: {', '.join(known)}"
                    if known
                    else ""
                )
            )
        return pd.DataFrame.from_records(records)

    # ---- display

    def describe(self) -> str:
        with_mask = sum(1 for i in self.items if i.label_path is not None)
        lines = [
            f"{self.label}: {self.title}",
            self.description,
            f"modality {self.modality}; {len(self.subjects)} subject(s), {len(self.items)} "
            f"series, {with_mask} with segmentation",
        ]
        if self.labels:
            lines.append("labels: " + ", ".join(f"{k} {v}" for k, v in sorted(self.labels.items())))
        if self.table_names:
            lines.append("tables: " + ", ".join(self.table_names))
        if (self.path / RADIOMICS_FILE).is_file():
            lines.append(f"radiomics: {RADIOMICS_FILE}")
        lines.append(f"content hash {self.content_hash[:16]}...")
        return "\n".join(line for line in lines if line)

    def __repr__(self) -> str:
        return f"<EnclaveDataset {self.label}: {self.title!r}, {len(self.items)} series>"

    def _repr_html_(self) -> str:
        from html import escape

        body = "<br>".join(escape(line) for line in self.describe().splitlines())
        return f"<div><b>{escape(self.label)}</b><br>{body}</div>"


def _plain(value: Any) -> Any:
    """numpy scalars to Python numbers (JSON- and display-friendly)."""
    item = getattr(value, "item", None)
    return item() if callable(item) else value


def open_dataset(name: str, version: int | str | None = None) -> EnclaveDataset:
    """Open a granted dataset version (the latest granted one when ``version`` is None)."""
    return EnclaveDataset(resolve(name, version))
