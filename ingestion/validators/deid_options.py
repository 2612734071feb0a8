"""De-identification profile options: PS3.15 Annex E's option columns and the PS3.16 codes
that declare them.

A de-identifier that follows the Basic Application Level Confidentiality Profile may apply
options that keep what the profile removes (PS3.15 E.3): dates for longitudinal studies,
patient characteristics, device and institution identity, UIDs, cleaned descriptions, known
safe private attributes. A file declares them as codes of CID 7050 in its
DeidentificationMethodCodeSequence (0012,0064); the dataset manifest repeats them; the
catalog records which options each provider may use.

This module owns the option vocabulary (``DeidOption``), Table E.1-1's option columns
(``data/profile_options.json``), the Retain Safe Private list (``data/safe_private.json``,
PS3.15 Table E.3.10-1) and ``DeidPolicy``, the frozen, picklable description of what a
submission may keep that the verifier in ``deid.py`` walks files with. Sources of the data
files are in ``data/README.md``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache
from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).with_name("data")
PROFILE_OPTIONS_PATH = DATA_DIR / "profile_options.json"
SAFE_PRIVATE_PATH = DATA_DIR / "safe_private.json"

#: Coding scheme of CID 7050 (De-identification Method) codes.
DCM = "DCM"
#: PS3.16 code of the Basic Application Confidentiality Profile itself.
BASIC_PROFILE_CODE = "113100"
BASIC_PROFILE_MEANING = "Basic Application Confidentiality Profile"

#: Actions of an option column: keep the value, or keep a cleaned value.
KEEP, CLEAN = "K", "C"

#: Safe-private entries of these VRs are not retained even under the option: PS3.15 calls
#: bulk OB data "particularly unsafe" (whole proprietary headers with names inside), and the
#: verifier cannot look inside a private sequence's meaning; an entry without a VR in the
#: table is left out for the same reason.
UNSAFE_PRIVATE_VRS = frozenset({"OB", "OW", "UN", "SQ", ""})


class DeidOption(Enum):
    """The options of PS3.15 E.3, valued by their PS3.16 CID 7050 code (scheme DCM)."""

    CLEAN_PIXEL_DATA = "113101"
    CLEAN_RECOGNIZABLE_VISUAL_FEATURES = "113102"
    CLEAN_GRAPHICS = "113103"
    CLEAN_STRUCTURED_CONTENT = "113104"
    CLEAN_DESCRIPTORS = "113105"
    RETAIN_LONGITUDINAL_FULL_DATES = "113106"
    RETAIN_LONGITUDINAL_MODIFIED_DATES = "113107"
    RETAIN_PATIENT_CHARACTERISTICS = "113108"
    RETAIN_DEVICE_IDENTITY = "113109"
    RETAIN_UIDS = "113110"
    RETAIN_SAFE_PRIVATE = "113111"
    RETAIN_INSTITUTION_IDENTITY = "113112"

    @property
    def code(self) -> str:
        return self.value

    @property
    def meaning(self) -> str:
        """The code meaning PS3.16 gives it (written into DeidentificationMethodCodeSequence)."""
        return _MEANINGS[self]

    @property
    def slug(self) -> str:
        """Command-line spelling: ``retain-patient-characteristics``."""
        return self.name.lower().replace("_", "-")

    def label(self) -> str:
        """How reports name it: ``Retain Patient Characteristics Option (DCM 113108)``."""
        return f"{self.meaning} (DCM {self.code})"

    @classmethod
    def parse(cls, text: str) -> DeidOption:
        """An option from its code (``113108``, ``DCM:113108``), its slug or its enum name;
        raises ValueError naming the text and the accepted spellings."""
        raw = text.strip()
        key = raw.upper().removeprefix("DCM:").removeprefix("DCM ").strip()
        for option in cls:
            if key in (option.code, option.name) or raw.lower() == option.slug:
                return option
        known = ", ".join(f"{o.code} ({o.slug})" for o in cls)
        raise ValueError(f"unknown de-identification option {text!r}; known: {known}")


_MEANINGS = {
    DeidOption.CLEAN_PIXEL_DATA: "Clean Pixel Data Option",
    DeidOption.CLEAN_RECOGNIZABLE_VISUAL_FEATURES: "Clean Recognizable Visual Features Option",
    DeidOption.CLEAN_GRAPHICS: "Clean Graphics Option",
    DeidOption.CLEAN_STRUCTURED_CONTENT: "Clean Structured Content Option",
    DeidOption.CLEAN_DESCRIPTORS: "Clean Descriptors Option",
    DeidOption.RETAIN_LONGITUDINAL_FULL_DATES: (
        "Retain Longitudinal Temporal Information Full Dates Option"
    ),
    DeidOption.RETAIN_LONGITUDINAL_MODIFIED_DATES: (
        "Retain Longitudinal Temporal Information Modified Dates Option"
    ),
    DeidOption.RETAIN_PATIENT_CHARACTERISTICS: "Retain Patient Characteristics Option",
    DeidOption.RETAIN_DEVICE_IDENTITY: "Retain Device Identity Option",
    DeidOption.RETAIN_UIDS: "Retain UIDs Option",
    DeidOption.RETAIN_SAFE_PRIVATE: "Retain Safe Private Option",
    DeidOption.RETAIN_INSTITUTION_IDENTITY: "Retain Institution Identity Option",
}


def parse_options(values: Iterable[str | DeidOption]) -> frozenset[DeidOption]:
    """Options from codes, slugs or members; raises ValueError for the first unknown one."""
    return frozenset(v if isinstance(v, DeidOption) else DeidOption.parse(v) for v in values)


def option_codes(options: Iterable[DeidOption]) -> list[str]:
    """Sorted codes, the form stored in the catalog and written into manifests."""
    return sorted(o.code for o in options)


def describe(options: Iterable[DeidOption]) -> str:
    """``Clean Descriptors Option (DCM 113105), ...`` or ``none``."""
    labels = [o.label() for o in sorted(options, key=lambda o: o.code)]
    return ", ".join(labels) or "none"


@lru_cache(1)
def _profile_options() -> dict[str, Any]:
    """``profile_options.json``, parsed once for both tables."""
    return dict(json.loads(PROFILE_OPTIONS_PATH.read_text()))


@lru_cache(1)
def option_table() -> dict[int, dict[DeidOption, str]]:
    """Table E.1-1's option columns as ``{tag: {option: "K" | "C"}}`` (attributes with no
    option entry are absent: the Basic Profile action alone applies to them)."""
    data = _profile_options()
    table: dict[int, dict[DeidOption, str]] = {}
    for tag, columns in data["attributes"].items():
        table[int(tag, 16)] = {DeidOption(code): action for code, action in columns.items()}
    return table


@lru_cache(1)
def masked_option_table() -> dict[str, dict[DeidOption, str]]:
    """The option columns of Table E.1-1's masked rows: ``curve``, ``overlay``, ``private``."""
    data = _profile_options()["masked"]
    names = {
        "(50XX,XXXX)": "curve",
        "(60XX,3000)": "overlay",
        "(60XX,4000)": "overlay",
        "(GGGG,EEEE) WHERE GGGG IS ODD": "private",
    }
    out: dict[str, dict[DeidOption, str]] = {}
    for row, columns in data.items():
        out.setdefault(names[row], {}).update(
            {DeidOption(code): action for code, action in columns.items()}
        )
    return out


def options_keeping(tag: int) -> dict[DeidOption, str]:
    """The options under which ``tag`` may keep a (possibly cleaned) value."""
    return option_table().get(tag, {})


@dataclass(frozen=True)
class SafePrivate:
    """One row of PS3.15 Table E.3.10-1."""

    creator: str
    group: int
    offset: int
    vr: str
    meaning: str


@lru_cache(1)
def safe_private_table() -> tuple[SafePrivate, ...]:
    """Every row of the standard's Safe Private Attributes table, as published."""
    data = json.loads(SAFE_PRIVATE_PATH.read_text())
    return tuple(
        SafePrivate(
            creator=row["creator"],
            group=int(row["group"], 16),
            offset=int(row["element"], 16),
            vr=row["vr"],
            meaning=row["meaning"],
        )
        for row in data["attributes"]
    )


@lru_cache(1)
def safe_private_keys() -> frozenset[tuple[str, int, int]]:
    """``(private creator, group, element offset)`` of the rows Enclave retains under the
    Retain Safe Private Option: the table less bulk binary and sequences
    (``UNSAFE_PRIVATE_VRS``). The same form as a submission's private-tag allow-list."""
    return frozenset(
        (row.creator, row.group, row.offset)
        for row in safe_private_table()
        if row.vr not in UNSAFE_PRIVATE_VRS
    )


@dataclass(frozen=True)
class DeidPolicy:
    """What one submission's files may keep beyond the Basic Profile.

    ``private_tags``: a curator's allow-list of private tags (full tags or
    ``(creator, group, offset)`` tuples). ``allowed_options``: the options the catalog lets
    this provider use; a file's declared options count only where allowed.
    ``allowed_options=None`` means the provider is not known here (a provider checking a
    folder before sending): declared options are then applied, and the enclave checks them
    against the catalog on arrival.
    """

    private_tags: frozenset[Any] = frozenset()
    allowed_options: frozenset[DeidOption] | None = frozenset()

    @classmethod
    def of(
        cls,
        private_tags: Iterable[Any] = (),
        allowed_options: Iterable[str | DeidOption] | None = (),
    ) -> DeidPolicy:
        return cls(
            frozenset(private_tags),
            None if allowed_options is None else parse_options(allowed_options),
        )

    def allows(self, option: DeidOption) -> bool:
        return self.allowed_options is None or option in self.allowed_options
