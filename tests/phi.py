"""Identifiers planted in sample DICOM headers on purpose, for the negative tests.

Every value here is made up; tests assert that none of them reaches a report, a log or an
error message. ``planting(*kinds)`` is an ``edit_header`` for ``enclave.samples``'s series
and dataset builders.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from pydicom import Dataset
from pydicom.sequence import Sequence as DicomSequence

# Values planted by plant_phi(); tests assert none of them reaches a report or log.
PHI_VALUES = {
    "patient-name": "Doe^Jane^Quincy",
    "birth-date": "19610704",
    "private-tag": "MRN-5551234-ACME",
    "overlay": "Jane Doe 5551234",
    "sequence": "Smithers^Harriet^Q",
    "patient-address": "42 Wallaby Way Sydney",
    "institution": "St Elsewhere General Hospital",
    "identity-removed-missing": "",
    "burned-in-yes": "",
}
PHI_KINDS = tuple(PHI_VALUES)


def _plant_overlay(ds: Dataset, value: str) -> None:
    rows, cols = int(ds.Rows), int(ds.Columns)
    ds.add_new(0x60000010, "US", rows)
    ds.add_new(0x60000011, "US", cols)
    ds.add_new(0x60000022, "LO", value)  # Overlay Description
    ds.add_new(0x60000040, "CS", "G")
    ds.add_new(0x60000050, "SS", [1, 1])
    ds.add_new(0x60000100, "US", 1)
    ds.add_new(0x60000102, "US", 0)
    bits = np.zeros(rows * cols, np.uint8)
    bits[: cols * 4] = 1  # a burned text band
    ds.add_new(0x60003000, "OW", np.packbits(bits, bitorder="little").tobytes())


def _plant_sequence(ds: Dataset, value: str) -> None:
    item = Dataset()
    item.Manufacturer = "ACME"
    item.OperatorsName = value
    ds.ContributingEquipmentSequence = DicomSequence([item])


def _plant_private(ds: Dataset, value: str) -> None:
    block = ds.private_block(0x0011, "ACME_HOSPITAL_1", create=True)
    block.add_new(0x01, "LO", value)


def plant_phi(ds: Dataset, kind: str) -> str:
    """Put one kind of identifying information into ``ds``; returns the planted value."""
    value = PHI_VALUES.get(kind)
    if value is None:
        raise ValueError(f"unknown PHI kind {kind!r}; choose from {', '.join(PHI_KINDS)}")
    if kind == "patient-name":
        ds.PatientName = value
    elif kind == "birth-date":
        ds.PatientBirthDate = value
    elif kind == "private-tag":
        _plant_private(ds, value)
    elif kind == "overlay":
        _plant_overlay(ds, value)
    elif kind == "sequence":
        _plant_sequence(ds, value)
    elif kind == "patient-address":
        ds.PatientAddress = value
    elif kind == "institution":
        ds.InstitutionName = value
    elif kind == "identity-removed-missing":
        del ds.PatientIdentityRemoved
    elif kind == "burned-in-yes":
        ds.BurnedInAnnotation = "YES"
    return value


def planting(*kinds: str) -> Callable[[Dataset], None]:
    """An ``edit_header`` that plants each of ``kinds`` (see ``PHI_KINDS``) in a header."""
    for kind in kinds:
        if kind not in PHI_VALUES:
            raise ValueError(f"unknown PHI kind {kind!r}; choose from {', '.join(PHI_KINDS)}")

    def plant(ds: Dataset) -> None:
        for kind in kinds:
            plant_phi(ds, kind)

    return plant
