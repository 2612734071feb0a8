"""The provider-side de-identifier: PS3.15 Basic Profile with the options a provider declares.

The PACS gateway (``ingestion.gateway``) runs every received instance through
``Deidentifier.apply`` before anything leaves the spool. It reads the same tables the enclave
verifies with (Table E.1-1 and its option columns, the Safe Private list), so what it writes
passes the enclave's verifier for the same options:

- private attributes are removed, except the Safe Private list under Retain Safe Private;
- curves and overlays (50xx/60xx) are removed;
- an attribute an active option keeps (K) stays; a cleaned one (C) is cleaned where this
  de-identifier knows how (dates shifted by a per-patient offset under Modified Dates;
  descriptions stripped of the patient's own name and identifiers under Clean Descriptors)
  and removed where it does not;
- otherwise the Basic Profile action applies: X removes, Z empties, D writes a dummy, U maps
  a UID to a new one (HMAC of the original under the gateway's secret, so every instance of
  a study maps alike and a retry maps identically); X/Z, X/D, X/Z/D and Z/D choose by the
  attribute's type in the instance's IOD (Type 1: dummy, Type 2: empty, else removed);
- person names are emptied everywhere, PatientBirthDate is emptied (Enclave policy),
  PatientID becomes a keyed pseudonym (same patient, same pseudonym);
- PatientIdentityRemoved, DeidentificationMethod, DeidentificationMethodCodeSequence (the
  PS3.16 codes of profile and options) and LongitudinalTemporalInformationModified are set;
  BurnedInAnnotation becomes NO only for modalities the provider attests carry no burned-in
  text (``no_burned_in_modalities``); otherwise the enclave holds the images for review.

Options this de-identifier cannot carry out (Clean Pixel Data, Clean Recognizable Visual
Features, Clean Graphics, Clean Structured Content) are refused when it is configured: it
would otherwise declare what it did not do.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import dataclass, field
from datetime import date, timedelta
from functools import lru_cache
from typing import Any

from pydicom import Dataset
from pydicom.datadict import dictionary_VR
from pydicom.sequence import Sequence as DicomSequence

from ingestion.validators.deid import TEXT_VRS, basic_profile
from ingestion.validators.deid_options import (
    BASIC_PROFILE_CODE,
    BASIC_PROFILE_MEANING,
    CLEAN,
    DATA_DIR,
    DCM,
    KEEP,
    DeidOption,
    describe,
    options_keeping,
    safe_private_keys,
)

#: The validator's per-IOD Type 1/2 table (read here without importing the validator, which
#: needs numpy: a provider's machine has only the provider extra).
REQUIRED_ATTRIBUTES_PATH = DATA_DIR / "required_attributes.json"

#: Options whose cleaning needs pixels, graphics or report text this tool does not touch.
UNSUPPORTED_OPTIONS = frozenset(
    {
        DeidOption.CLEAN_PIXEL_DATA,
        DeidOption.CLEAN_RECOGNIZABLE_VISUAL_FEATURES,
        DeidOption.CLEAN_GRAPHICS,
        DeidOption.CLEAN_STRUCTURED_CONTENT,
    }
)
#: UID root of replaced UIDs ("2.25." + a 128-bit number: PS3.5 B.2, no registration needed).
UID_ROOT = "2.25."
METHOD = "Enclave gateway: DICOM PS3.15 Basic Profile"

PATIENT_ID = 0x00100020
PATIENT_BIRTH_DATE = 0x00100030
DATE_VRS = frozenset({"DA", "DT"})
_DUMMY = {
    "DA": "20000101",
    "DT": "20000101000000",
    "TM": "000000",
    "AS": "000Y",
    "DS": "0",
    "IS": "0",
    "CS": "REMOVED",
    "UI": "2.25.0",
}


class DeidentificationError(ValueError):
    """The de-identifier cannot be configured as asked, or cannot process an instance."""


@lru_cache(1)
def _iod_types() -> tuple[dict[str, str], dict[str, dict[str, int]]]:
    """SOP class -> IOD, and IOD -> {keyword: 1 or 2} for its top-level required attributes."""
    data = json.loads(REQUIRED_ATTRIBUTES_PATH.read_text())
    types: dict[str, dict[str, int]] = {}
    for iod, spec in data["iods"].items():
        kinds = {kw: 2 for kw in spec.get("2", [])}
        kinds.update({kw: 1 for kw in spec.get("1", [])})
        types[iod] = kinds
    return data["sop_classes"], types


@dataclass
class Deidentifier:
    """De-identifies datasets in place, deterministically for one ``secret``."""

    secret: bytes
    options: frozenset[DeidOption] = frozenset()
    no_burned_in_modalities: frozenset[str] = frozenset()
    _uids: dict[str, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if len(self.secret) < 16:
            raise DeidentificationError("the gateway secret must be at least 16 bytes")
        unsupported = self.options & UNSUPPORTED_OPTIONS
        if unsupported:
            raise DeidentificationError(
                f"this de-identifier cannot carry out the {describe(unsupported)}: it would "
                "declare cleaning it did not do"
            )
        if (
            DeidOption.RETAIN_LONGITUDINAL_FULL_DATES in self.options
            and DeidOption.RETAIN_LONGITUDINAL_MODIFIED_DATES in self.options
        ):
            raise DeidentificationError(
                "declare either full or modified longitudinal dates, not both"
            )

    # --- keyed pseudonyms ------------------------------------------------------------------

    def _mac(self, kind: str, value: str) -> bytes:
        return hmac.new(self.secret, f"{kind}\0{value}".encode(), hashlib.sha256).digest()

    def uid(self, original: str) -> str:
        """The replacement of a UID: the same for every instance, run and retry."""
        new = self._uids.get(original)
        if new is None:
            new = UID_ROOT + str(int.from_bytes(self._mac("uid", original)[:16], "big"))
            if len(self._uids) > 100_000:
                self._uids.clear()
            self._uids[original] = new
        return new

    def pseudonym(self, patient_id: str) -> str:
        """The subject identifier written into PatientID."""
        return "P" + self._mac("patient", patient_id).hex()[:16].upper()

    def name_of(self, kind: str, value: str) -> str:
        """A keyed, PHI-free name for spool and output paths (study, series, instance)."""
        return self._mac(kind, value).hex()[:24]

    def date_offset(self, patient_id: str) -> int:
        """Days every date of this patient moves back under Modified Dates (1..3650)."""
        return 1 + int.from_bytes(self._mac("dates", patient_id)[:4], "big") % 3650

    # --- the profile -----------------------------------------------------------------------

    def apply(self, ds: Dataset) -> Dataset:
        """De-identify ``ds`` in place and return it; file meta is rewritten to match."""
        sop_classes, types = _iod_types()
        sop_class = str(ds.get("SOPClassUID", ""))
        required = types.get(sop_classes.get(sop_class, ""), {})
        original_id = str(ds.get("PatientID", "") or "")
        context = _Context(
            patient_id=original_id,
            offset=self.date_offset(original_id),
            scrub=_scrub_pattern(ds),
        )
        self._walk(ds, required, context, top=True)
        ds.PatientID = self.pseudonym(original_id)
        ds.PatientName = ""
        if "PatientBirthDate" in ds:
            ds.PatientBirthDate = ""
        self._declare(ds)
        if ds.get("file_meta") is not None or hasattr(ds, "file_meta"):
            meta = ds.file_meta
            meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            meta.MediaStorageSOPClassUID = ds.SOPClassUID
            for tag in (0x00020016, 0x00020100, 0x00020102):  # source AE, private info
                if tag in meta:
                    del meta[tag]
        return ds

    def _declare(self, ds: Dataset) -> None:
        ds.PatientIdentityRemoved = "YES"
        labels = [o.meaning for o in sorted(self.options, key=lambda o: o.code)]
        ds.DeidentificationMethod = "; ".join([METHOD, *labels])[:64]
        items = []
        for code, meaning in [(BASIC_PROFILE_CODE, BASIC_PROFILE_MEANING)] + [
            (o.code, o.meaning) for o in sorted(self.options, key=lambda o: o.code)
        ]:
            item = Dataset()
            item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code, DCM, meaning
            items.append(item)
        ds.DeidentificationMethodCodeSequence = DicomSequence(items)
        if DeidOption.RETAIN_LONGITUDINAL_FULL_DATES in self.options:
            ds.LongitudinalTemporalInformationModified = "UNMODIFIED"
        elif DeidOption.RETAIN_LONGITUDINAL_MODIFIED_DATES in self.options:
            ds.LongitudinalTemporalInformationModified = "MODIFIED"
        else:
            ds.LongitudinalTemporalInformationModified = "REMOVED"
        modality = str(ds.get("Modality", "") or "").upper()
        if "PixelData" in ds and "BurnedInAnnotation" not in ds:
            if modality in self.no_burned_in_modalities:
                ds.BurnedInAnnotation = "NO"

    def _walk(self, ds: Dataset, required: dict[str, int], ctx: _Context, top: bool) -> None:
        profile = basic_profile()
        safe = safe_private_keys() if DeidOption.RETAIN_SAFE_PRIVATE in self.options else None
        keep_private: set[int] = set()
        if safe:
            for elem in ds:
                tag = int(elem.tag)
                group, el = tag >> 16, tag & 0xFFFF
                if group & 1 and el >= 0x1000:
                    creator = ds.get((group << 16) | (el >> 8))
                    name = str(creator.value).strip() if creator is not None else ""
                    if (name, group, el & 0xFF) in safe:
                        keep_private.update({tag, (group << 16) | (el >> 8)})
        for tag_obj in list(ds.keys()):
            tag = int(tag_obj)
            group = tag >> 16
            if group & 1:
                if tag not in keep_private:
                    del ds[tag]
                continue
            if (group & 0xFF00) in (0x5000, 0x6000) or group == 0x0002:
                if group != 0x0002:
                    del ds[tag]
                continue
            elem = ds[tag]
            vr = elem.VR or _vr(tag)
            kept = self._option_action(tag)
            if kept == KEEP:
                if vr == "SQ":
                    for item in elem.value or []:
                        self._walk(item, {}, ctx, top=False)
                continue
            if kept == CLEAN:
                self._clean(ds, tag, vr, ctx)
                continue
            entry = profile.get(tag)
            if vr == "PN":
                if (
                    entry is not None
                    and entry[1].startswith("X")
                    and not _required(elem.keyword, required, top)
                ):
                    del ds[tag]
                else:
                    elem.value = ""
                continue
            if entry is None:
                if vr == "SQ":
                    for item in elem.value or []:
                        self._walk(item, {}, ctx, top=False)
                continue
            self._basic(ds, tag, vr, entry[1], required if top else {}, ctx)

    def _option_action(self, tag: int) -> str | None:
        if not self.options:
            return None
        actions = [a for o, a in options_keeping(tag).items() if o in self.options]
        if KEEP in actions:
            return KEEP
        return CLEAN if actions else None

    def _basic(
        self,
        ds: Dataset,
        tag: int,
        vr: str,
        action: str,
        required: dict[str, int],
        ctx: _Context,
    ) -> None:
        elem = ds[tag]
        if action == "U" or (action == "X/Z/U*" and vr == "UI"):
            if DeidOption.RETAIN_UIDS in self.options:
                return
            if vr == "SQ":
                for item in elem.value or []:
                    self._walk(item, {}, ctx, top=False)
                return
            values = elem.value if elem.VM > 1 else [elem.value]
            mapped = [self.uid(str(v)) for v in values if v]
            elem.value = mapped if elem.VM > 1 else (mapped[0] if mapped else "")
            return
        kind = required.get(elem.keyword, 0)
        if action in ("X", "X/Z", "X/D", "X/Z/D", "X/Z/U*"):
            if kind == 0 or action == "X":
                del ds[tag]
                return
            action = "D" if kind == 1 and "D" in action else "Z"
        if action == "Z/D":
            action = "D" if kind == 1 else "Z"
        if vr == "SQ":
            if action == "Z":
                elem.value = DicomSequence([])
            else:  # a dummy sequence: its items de-identified in turn
                for item in elem.value or []:
                    self._walk(item, {}, ctx, top=False)
            return
        if action == "Z":
            elem.value = "" if vr in TEXT_VRS else None
        elif action == "D":
            elem.value = _DUMMY.get(vr, "REMOVED" if vr in TEXT_VRS else 0)

    def _clean(self, ds: Dataset, tag: int, vr: str, ctx: _Context) -> None:
        elem = ds[tag]
        if vr in DATE_VRS and DeidOption.RETAIN_LONGITUDINAL_MODIFIED_DATES in self.options:
            elem.value = _shift(elem.value, vr, ctx.offset)
            return
        if vr == "TM" and DeidOption.RETAIN_LONGITUDINAL_MODIFIED_DATES in self.options:
            return  # times of day stay: only the dates move
        if (
            vr in ("LO", "SH", "ST", "LT", "UT", "UC")
            and DeidOption.CLEAN_DESCRIPTORS in self.options
        ):
            if isinstance(elem.value, str) and ctx.scrub is not None:
                elem.value = ctx.scrub.sub("", elem.value).strip()
            return
        if vr == "SQ":
            for item in elem.value or []:
                self._walk(item, {}, ctx, top=False)
            return
        del ds[tag]  # a cleaning this tool does not know: removing is always safe


@dataclass(frozen=True)
class _Context:
    patient_id: str
    offset: int
    scrub: re.Pattern[str] | None


def _vr(tag: int) -> str:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return "UN"


def _required(keyword: str, required: dict[str, int], top: bool) -> bool:
    return top and required.get(keyword, 0) > 0


def _scrub_pattern(ds: Dataset) -> re.Pattern[str] | None:
    """Words of the patient's own name and identifiers, to strip from kept descriptions."""
    words: set[str] = set()
    for keyword in ("PatientName", "PatientID", "AccessionNumber", "OtherPatientIDs"):
        value = ds.get(keyword)
        if value is None:
            continue
        words.update(w for w in re.split(r"[\^\s=\\,]+", str(value)) if len(w) >= 2)
    if not words:
        return None
    return re.compile(
        "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True)), re.IGNORECASE
    )


def _shift(value: Any, vr: str, days: int) -> Any:
    """A DA or DT value (or several) moved ``days`` back; unreadable dates become empty."""
    if isinstance(value, list | tuple) or (
        hasattr(value, "__iter__") and not isinstance(value, str)
    ):
        return [_shift(v, vr, days) for v in value]
    text = str(value or "").strip()
    if len(text) < 8:
        return ""
    try:
        day = date(int(text[:4]), int(text[4:6]), int(text[6:8])) - timedelta(days=days)
    except ValueError:
        return ""
    return day.strftime("%Y%m%d") + text[8:]
