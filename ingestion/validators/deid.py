"""De-identification verifier: the enclave checks every file itself instead of trusting the
provider's de-identification tool.

No off-the-shelf de-identifier tried for Enclave leaves a file that passes a DICOM PS3.15
Annex E Basic Profile check on its own, so ingestion walks every element, sequences included,
and refuses what a re-identification attack could use:

- private tags (unless the submission's allow-list names them) and the 50xx/60xx repeating
  groups (curves and overlays can carry text and burned-in graphics);
- attributes the Basic Profile removes (action X or X/Z) that still hold a value, and person
  names (VR PN) with a value anywhere; attributes the profile lets a de-identifier replace with
  a dummy (X/D, X/Z/D) are warned about, because the verifier cannot tell a dummy from a real
  value;
- a patient birth date with a value (the profile allows a dummy; Enclave policy wants it empty);
- a missing declaration: PatientIdentityRemoved must be YES with a DeidentificationMethod or a
  DeidentificationMethodCodeSequence;
- images whose BurnedInAnnotation is not NO: they are held for pixel review;
- a ContributingEquipmentSequence item that names a site or a person. Items describing
  software or equipment (Manufacturer, ManufacturerModelName, SoftwareVersions, a purpose
  code) are what PS3.15 expects a de-identifier or a derived object such as a DICOM SEG to add;
  but tools copy the source scanner's institution, station and serial number into them
  (highdicom does for every SEG), where the attributes are optional (Type 3), so the dummy
  values the profile tolerates at the top level (X/Z/D) are refused there;
- identifiers that disagree across one submission (``DeidConsistency``).

Profile options (PS3.15 E.3) change the verdicts: a file declares them as PS3.16 codes in its
DeidentificationMethodCodeSequence, and those the provider is allowed (``DeidPolicy``, from the
catalog) apply Table E.1-1's option columns, so an attribute an active option keeps (K) or
cleans (C) may hold a value, and the Retain Safe Private Option admits the private attributes
of PS3.15 Table E.3.10-1 (``deid_options``). A finding about a value that only an option
would have allowed names that option, and whether the provider may use it.

Findings name the attribute and the file, never the value.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol, cast

from pydicom import Dataset
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag
from pydicom.valuerep import PersonName

from ingestion.report import Finding, Severity
from ingestion.validators.deid_options import (
    BASIC_PROFILE_CODE,
    DCM,
    DeidOption,
    DeidPolicy,
    masked_option_table,
    options_keeping,
    safe_private_keys,
)

ElementVisitor = Callable[[DataElement | RawDataElement, str, str], None]


class RecordingVisitor(Protocol):
    """An element visitor whose verdicts the walk may record and replay for identical
    sequences (``_Walk._replay_sequence``): they depend only on the element and on
    ``cache_key``, and it appends them, all about ``path``, to ``findings``."""

    findings: list[Finding]

    @property
    def cache_key(self) -> Hashable: ...

    @property
    def path(self) -> str: ...

    def __call__(self, elem: DataElement | RawDataElement, vr: str, prefix: str, /) -> None: ...


BASIC_PROFILE_PATH = Path(__file__).with_name("data") / "basic_profile.json"

#: Actions after which no value may remain (remove, or remove-or-empty).
REMOVE_ACTIONS = frozenset({"X", "X/Z"})
#: Actions that allow a dummy value: a value is suspicious but may be legitimate.
DUMMY_ACTIONS = frozenset({"X/D", "X/Z/D", "X/Z/U*"})

PATIENT_IDENTITY_REMOVED = 0x00120062
DEIDENTIFICATION_METHOD = 0x00120063
DEIDENTIFICATION_METHOD_CODES = 0x00120064
BURNED_IN_ANNOTATION = 0x00280301
PATIENT_BIRTH_DATE = 0x00100030
PATIENT_ID = 0x00100020
STUDY_INSTANCE_UID = 0x0020000D
SERIES_INSTANCE_UID = 0x0020000E
SOP_INSTANCE_UID = 0x00080018
PIXEL_DATA_TAGS = (0x7FE00008, 0x7FE00009, 0x7FE00010)
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"

CONTRIBUTING_EQUIPMENT = 0x0018A001
#: Attributes that identify a site or a person, refused with any value inside a
#: ContributingEquipmentSequence item (all optional there; some are X/Z/D in Table E.1-1).
#: Person names (OperatorsName) are refused everywhere already (``deid.person-name``).
EQUIPMENT_SITE_TAGS = frozenset(
    {
        0x00080080,  # InstitutionName
        0x00080081,  # InstitutionAddress
        0x00080082,  # InstitutionCodeSequence
        0x00081010,  # StationName
        0x00081040,  # InstitutionalDepartmentName
        0x00081041,  # InstitutionalDepartmentTypeCodeSequence
        0x00081072,  # OperatorIdentificationSequence
        0x00181000,  # DeviceSerialNumber
    }
)

#: Attributes the Basic Profile lets a tool fill with a dummy but that Enclave wants empty:
#: a real birth date survives many tools, and a dummy one is useless for research anyway.
MUST_BE_EMPTY = frozenset({PATIENT_BIRTH_DATE})

#: VRs whose raw bytes are text; everything else is binary (a zero byte is a value there).
TEXT_VRS = frozenset(
    {
        "AE",
        "AS",
        "CS",
        "DA",
        "DS",
        "DT",
        "IS",
        "LO",
        "LT",
        "PN",
        "SH",
        "ST",
        "TM",
        "UC",
        "UI",
        "UR",
        "UT",
    }
)
_TEXT_PADDING = b" \x00\\"
_PN_PADDING = b" \x00\\^="


@lru_cache(1)
def basic_profile() -> dict[int, tuple[str, str]]:
    """Table E.1-1 as ``{tag: (keyword, action)}``, from the JSON committed beside this module."""
    data = json.loads(BASIC_PROFILE_PATH.read_text())
    return {int(tag, 16): (kw, action) for tag, (kw, action) in data["attributes"].items()}


@lru_cache(8192)
def tag_label(tag: int) -> str:
    """``(0010,0010) PatientName``: how findings name an attribute (never its value)."""
    group, elem = tag >> 16, tag & 0xFFFF
    if group & 1:
        name = "PrivateCreator" if 0x0010 <= elem <= 0x00FF else "private"
    else:
        name = keyword_for_tag(tag) or basic_profile().get(tag, ("",))[0] or "unknown"
    return f"({group:04X},{elem:04X}) {name}"


def element_vr(elem: DataElement | RawDataElement) -> str:
    """The element's VR; implicit-VR files leave it to the data dictionary."""
    vr = elem.VR
    if vr:
        return str(vr)
    try:
        return dictionary_VR(elem.tag)
    except KeyError:
        return "UN"


def has_value(elem: DataElement | RawDataElement, vr: str) -> bool:
    """Whether the element holds anything beyond padding (works on raw, unconverted elements)."""
    value = elem.value
    if vr == "SQ":
        return bool(value)
    if type(value) is bytes:  # a raw element: most of a file's values
        if vr in TEXT_VRS:
            return bool(value.strip(_PN_PADDING if vr == "PN" else _TEXT_PADDING))
        return len(value) > 0
    if isinstance(value, MultiValue | list | tuple):
        return any(_scalar_has_value(v, vr) for v in value)
    return _scalar_has_value(value, vr)


def _scalar_has_value(value: Any, vr: str) -> bool:
    if value is None:
        return False
    if isinstance(value, bytes | bytearray):
        if vr in TEXT_VRS:
            return bool(bytes(value).strip(_PN_PADDING if vr == "PN" else _TEXT_PADDING))
        return len(value) > 0
    if isinstance(value, str | PersonName):
        return bool(str(value).strip(" \x00\\^=" if vr == "PN" else " \x00\\"))
    return True


_REPEATING_BASES = (0x5000, 0x6000)

#: Outcomes of walking top-level sequences, by their bytes and everything else the walk
#: depends on (see ``_Walk._replay_sequence``); bounded, per process.
_SEQUENCE_OUTCOMES: dict[tuple, tuple[int, tuple, tuple]] = {}
_SEQUENCE_CACHE_MAX = 1024
_SEQUENCE_CACHE_BYTES = 16384


#: Read from the dataset without conversion after the walk (``_declaration_findings``): a
#: sequence under one of these tags (a malformed file) is always converted, as it was.
#: DeidentificationMethodCodeSequence is replayed; the walk passes on its item count.
_READ_UNCONVERTED = frozenset(
    {
        PATIENT_IDENTITY_REMOVED,
        DEIDENTIFICATION_METHOD,
        BURNED_IN_ANNOTATION,
        0x00080016,
    }
)
_PIXEL_REPRESENTATION = BaseTag(0x00280103)


def _pass_pixel_representation(ds: Dataset) -> None:
    """What converting a top-level sequence does to its dataset besides the sequence: pydicom
    (``Dataset._set_pixel_representation``) converts PixelRepresentation, which can fail,
    and remembers it for the items."""
    pr = None
    if _PIXEL_REPRESENTATION in ds._dict:
        pr = ds[_PIXEL_REPRESENTATION].value
    elif hasattr(ds, "_pixel_rep"):
        pr = ds._pixel_rep
    if pr is not None:
        ds._pixel_rep = int(b"\x01" in pr) if isinstance(pr, bytes) else pr


def _is_repeating_group(group: int) -> bool:
    return (group & 0xFF00) in _REPEATING_BASES and not group & 1


def _allowed_private(ds: Dataset, private_tags: list[int], allowlist: frozenset) -> set[int]:
    if not allowlist:
        return set()
    exact = {x for x in allowlist if isinstance(x, int)}
    by_creator = {x for x in allowlist if isinstance(x, tuple)}
    allowed: set[int] = set()
    blocks_in_use: set[int] = set()
    for tag in private_tags:
        group, elem = tag >> 16, tag & 0xFFFF
        if elem < 0x1000:
            continue
        ok = tag in exact
        if not ok and by_creator:
            creator_tag = (group << 16) | (elem >> 8)
            creator = ds.get(creator_tag)
            if creator is not None and isinstance(creator.value, str):
                ok = (creator.value.strip(), group, elem & 0xFF) in by_creator
        if ok:
            allowed.add(tag)
            blocks_in_use.add((group << 16) | (elem >> 8))
    return allowed | blocks_in_use


@dataclass(frozen=True)
class DeclaredOptions:
    """What a file's DeidentificationMethodCodeSequence declares."""

    options: frozenset[DeidOption] = frozenset()
    basic_profile: bool = False
    #: ``scheme:value`` of codes that are not CID 7050 codes (ignored, reported).
    unknown: tuple[str, ...] = ()


def declared_options(ds: Dataset) -> DeclaredOptions:
    """The profile and options a file declares (PS3.15 E.1.1 step 6), from its
    DeidentificationMethodCodeSequence (0012,0064); converts that one sequence."""
    if DEIDENTIFICATION_METHOD_CODES not in ds:
        return DeclaredOptions()
    # Converting a sequence can fail on a malformed file (pydicom converts
    # PixelRepresentation with it): the caller reports the file as one that cannot be checked.
    items = ds[DEIDENTIFICATION_METHOD_CODES].value or []
    options: set[DeidOption] = set()
    unknown: list[str] = []
    basic = False
    for item in items:
        scheme = str(item.get("CodingSchemeDesignator", "") or "").strip()
        value = str(item.get("CodeValue", "") or "").strip()
        if scheme == DCM and value == BASIC_PROFILE_CODE:
            basic = True
            continue
        try:
            option = DeidOption(value) if scheme == DCM else None
        except ValueError:
            option = None
        if option is None:
            unknown.append(f"{scheme or '?'}:{value or '?'}")
        else:
            options.add(option)
    return DeclaredOptions(frozenset(options), basic, tuple(unknown))


def _option_advice(
    candidates: Iterable[DeidOption], policy: DeidPolicy, declared: frozenset[DeidOption]
) -> str:
    """``; allowed only under the Retain ... Option (DCM 113108), which ...``: what would
    have let the value stay, and what stands in the way (never a value)."""
    parts = []
    for option in sorted(candidates, key=lambda o: o.code):
        if not policy.allows(option):
            why = (
                "declared, but this provider is not allowed it"
                if option in declared
                else "this provider is not allowed it"
            )
        else:
            why = "this provider may use it: declare it in DeidentificationMethodCodeSequence"
        parts.append(f"{option.label()} ({why})")
    if not parts:
        return ""
    return "; the value may stay only under the " + " or the ".join(parts)


def _safe_private_tags(ds: Dataset, tags: list[int]) -> set[int]:
    """Those of ``tags`` that PS3.15's Safe Private list (as Enclave retains it) names."""
    return _allowed_private(ds, tags, frozenset(safe_private_keys()))


class _Walk:
    """One pass over a dataset tree, collecting findings (no values in messages)."""

    def __init__(
        self,
        path: str,
        policy: DeidPolicy,
        visitor: ElementVisitor | None = None,
        declared: DeclaredOptions = DeclaredOptions(),
    ) -> None:
        self.path = path
        self.policy = policy
        self.declared = declared.options
        #: The declared options this provider may use: those that change verdicts.
        self.active = frozenset(o for o in declared.options if policy.allows(o))
        self.allowlist = policy.private_tags
        if DeidOption.RETAIN_SAFE_PRIVATE in self.active:
            self.allowlist = self.allowlist | safe_private_keys()
        self.cache_key = (self.allowlist, self.active, policy.allowed_options)
        self.visitor = visitor
        self.profile = basic_profile()
        self.findings: list[Finding] = []
        # Top-level sequences whose outcome came from _SEQUENCE_OUTCOMES, left unconverted:
        # tag -> number of items the conversion gives.
        self.unconverted: dict[int, int] = {}

    def add(self, check: str, tag: str, message: str, severity: Severity = "error") -> None:
        self.findings.append(Finding(check, severity, message, path=self.path, tag=tag))

    def walk(self, ds: Dataset, prefix: str = "", equipment_item: bool = False) -> None:
        """``equipment_item``: ``ds`` is an item of ContributingEquipmentSequence."""
        private: list[int] = []
        repeating: dict[int, list[int]] = {}
        profile_get = self.profile.get
        visitor = self.visitor
        # A visitor may name the VRs it wants (``visitor.vrs``): the others skip the call.
        visited = getattr(visitor, "vrs", None) if visitor is not None else None
        for elem in list(ds.values()):  # parse order; no sorting, no Tag conversions
            # A plain int: BaseTag.__eq__ is Python code, called on every dict hit below.
            tag = int(elem.tag)
            group = tag >> 16
            if group & 1:
                private.append(tag)
                continue
            if (group & 0xFF00) in _REPEATING_BASES:  # even group here: curve or overlay
                repeating.setdefault(group, []).append(tag)
                continue
            vr = elem.VR
            if not vr or type(vr) is not str:
                vr = element_vr(elem)
            entry = profile_get(tag)
            if equipment_item and tag in EQUIPMENT_SITE_TAGS and not self._kept(tag):
                if has_value(elem, vr):
                    self.add(
                        "deid.contributing-equipment",
                        prefix + tag_label(tag),
                        "a ContributingEquipmentSequence item names a site or person; an item "
                        "may describe equipment and software only (Manufacturer, "
                        "ManufacturerModelName, SoftwareVersions): remove the attribute"
                        + self._advice(tag),
                    )
                continue
            if vr == "SQ":
                if not prefix and self._replay_sequence(ds, elem, tag, entry):
                    continue
                self._walk_sequence(ds[tag].value or [], tag, entry, prefix)
                continue
            if visitor is not None and (visited is None or vr in visited):
                visitor(elem, vr, prefix)
            if entry is None and vr != "PN" and tag not in MUST_BE_EMPTY:
                continue
            if not has_value(elem, vr):
                continue
            if vr == "PN":
                self.add(
                    "deid.person-name",
                    prefix + tag_label(tag),
                    "a person name (VR PN) has a value; every person name must be empty",
                )
            elif tag in MUST_BE_EMPTY:
                self.add(
                    "deid.patient-attribute",
                    prefix + tag_label(tag),
                    "has a value; Enclave requires it to be empty, not replaced by a dummy",
                )
            else:
                # Without a profile entry only person names and MUST_BE_EMPTY get this far.
                assert entry is not None
                action = entry[1]
                if self.active and self._kept(tag):
                    continue
                if action in REMOVE_ACTIONS:
                    self._remove_finding(prefix, tag, action)
                elif action in DUMMY_ACTIONS:
                    self._dummy_finding(prefix, tag, action)
        if private:
            allowed = _allowed_private(ds, private, self.allowlist)
            refused = [t for t in private if t not in allowed]
            by_group: dict[int, list[int]] = {}
            for t in refused:
                by_group.setdefault(t >> 16, []).append(t)
            safe = _safe_private_tags(ds, refused)
            for group, tags in by_group.items():
                on_list = sum(1 for t in tags if t in safe)
                advice = ""
                if on_list:
                    advice = (
                        f"; {on_list} of them are on the Retain Safe Private list (PS3.15 "
                        "Table E.3.10-1)"
                        + _option_advice(
                            [DeidOption.RETAIN_SAFE_PRIVATE], self.policy, self.declared
                        )
                    )
                self.add(
                    "deid.private-tag",
                    prefix + tag_label(tags[0]),
                    f"{len(tags)} private element(s) in group {group:04X} not on the "
                    "allow-list; private tags can carry identifiers and must be removed" + advice,
                )
        for group, tags in repeating.items():
            kind = "curve" if group & 0xFF00 == 0x5000 else "overlay"
            if DeidOption.CLEAN_GRAPHICS in self.active:
                self.add(
                    "deid.cleaned-graphics",
                    prefix + tag_label(tags[0]),
                    f"{kind} group {group:04X} kept under the Clean Graphics Option "
                    f"(DCM {DeidOption.CLEAN_GRAPHICS.code}): the de-identifier must have "
                    "cleaned its text and graphics",
                    severity="warning",
                )
                continue
            advice = _option_advice(masked_option_table().get(kind, {}), self.policy, self.declared)
            self.add(
                "deid.repeating-group",
                prefix + tag_label(tags[0]),
                f"{kind} group {group:04X} present ({len(tags)} element(s)); curves (50xx) and "
                "overlays (60xx) can carry identifying text or graphics and must be removed"
                + advice,
            )

    def _replay_sequence(
        self, ds: Dataset, elem: DataElement | RawDataElement, tag: int, entry: Any
    ) -> bool:
        """Walk a top-level sequence, or replay the outcome of an identical one.

        Slices of a series repeat most sequences byte for byte (code sequences, the
        de-identification method). What the walk finds in one depends only on its bytes,
        how they are encoded, the dataset's character set, the allow-list and the visitor
        (which must say so with a ``cache_key`` and keep its ``findings`` in a list), so the
        findings are recorded once and replayed, without converting the sequence again.
        Returns False when the caller must walk it the ordinary way.
        """
        visitor = self.visitor
        visitor_key = getattr(visitor, "cache_key", None) if visitor is not None else ()
        value = elem.value
        if (
            visitor_key is None
            or not isinstance(elem, RawDataElement)
            or type(value) is not bytes
            or len(value) > _SEQUENCE_CACHE_BYTES
            or tag in _READ_UNCONVERTED
        ):
            return False
        # Only a visitor that says it records (a cache_key) gets this far, or none at all.
        recorder = cast("RecordingVisitor | None", visitor)
        charset = ds.original_character_set or ds._character_set  # as Dataset.__getitem__
        charset_key = charset if isinstance(charset, str) else tuple(charset)
        key = (
            tag,
            elem.VR,
            value,
            elem.is_implicit_VR,
            elem.is_little_endian,
            charset_key,
            self.cache_key,
            visitor_key,
        )
        outcome = _SEQUENCE_OUTCOMES.get(key)
        if outcome is None:
            seen = len(self.findings)
            visited = len(recorder.findings) if recorder is not None else 0
            items = ds[tag].value or []
            self._walk_sequence(items, tag, entry)
            if any(f.path != self.path for f in self.findings[seen:]) or (
                recorder is not None
                and any(f.path != recorder.path for f in recorder.findings[visited:])
            ):
                return True  # walked; nothing to remember
            outcome = (
                len(items),
                tuple((f.check, f.severity, f.message, f.tag) for f in self.findings[seen:]),
                tuple(
                    (f.check, f.severity, f.message, f.tag)
                    for f in (recorder.findings[visited:] if recorder is not None else ())
                ),
            )
            if len(_SEQUENCE_OUTCOMES) >= _SEQUENCE_CACHE_MAX:
                _SEQUENCE_OUTCOMES.clear()
            _SEQUENCE_OUTCOMES[key] = outcome
            return True
        count, walked, visited_findings = outcome
        _pass_pixel_representation(ds)
        self.unconverted[tag] = count
        # The walk appends its own findings and the visitor's to separate lists; each keeps
        # its order, so replaying them one list after the other gives the same two lists.
        self.findings += [Finding(c, sev, m, path=self.path, tag=t) for c, sev, m, t in walked]
        if visited_findings:
            # Recorded from a visitor with this cache_key; without a visitor the key is ().
            assert recorder is not None
            recorder.findings += [
                Finding(c, sev, m, path=recorder.path, tag=t) for c, sev, m, t in visited_findings
            ]
        return True

    def _kept(self, tag: int) -> bool:
        """Whether an active option keeps or cleans ``tag`` (Table E.1-1 option K or C)."""
        return bool(self.active) and not self.active.isdisjoint(options_keeping(tag))

    def _advice(self, tag: int) -> str:
        return _option_advice(options_keeping(tag), self.policy, self.declared)

    def _walk_sequence(self, items: Any, tag: int, entry: Any, prefix: str = "") -> None:
        if self._kept(tag):
            entry = None  # kept or cleaned: its items are still checked one by one
        if entry and entry[1] in REMOVE_ACTIONS and len(items):
            self._remove_finding(prefix, tag, entry[1])
            return
        if entry and entry[1] in DUMMY_ACTIONS and len(items):
            self._dummy_finding(prefix, tag, entry[1])
        for i, item in enumerate(items):
            self.walk(item, f"{prefix}{tag_label(tag)}[{i}] > ", tag == CONTRIBUTING_EQUIPMENT)

    def _remove_finding(self, prefix: str, tag: int, action: str) -> None:
        self.add(
            "deid.basic-profile",
            prefix + tag_label(tag),
            f"has a value, but the Basic Profile action is {action}: remove the attribute"
            + self._advice(tag),
        )

    def _dummy_finding(self, prefix: str, tag: int, action: str) -> None:
        self.add(
            "deid.dummy-value",
            prefix + tag_label(tag),
            f"has a value; the Basic Profile action is {action}, so it must be removed or hold "
            "a dummy value: confirm it is a dummy" + self._advice(tag),
            severity="warning",
        )


def _code_string(ds: Dataset, tag: int) -> str:
    """A CS value read from the raw bytes when possible (no conversion of the element)."""
    elem = ds.get_item(tag)
    if elem is None or elem.value is None:
        return ""
    value = elem.value
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("ascii", "replace").strip(" \x00").upper()
    return str(value).strip(" \x00").upper()


def _declaration_findings(
    ds: Dataset, path: str, unconverted: dict[int, int] | None = None
) -> list[Finding]:
    """``unconverted``: item counts of sequences the walk replayed without converting."""
    findings = []
    if _code_string(ds, PATIENT_IDENTITY_REMOVED) != "YES":
        findings.append(
            Finding(
                "deid.identity-removed",
                "error",
                "PatientIdentityRemoved must be YES: the provider has not declared the file "
                "de-identified",
                path=path,
                tag=tag_label(PATIENT_IDENTITY_REMOVED),
            )
        )
    method = ds.get_item(DEIDENTIFICATION_METHOD)
    codes = ds.get_item(DEIDENTIFICATION_METHOD_CODES)
    has_method = method is not None and has_value(method, "LO")
    if codes is not None and unconverted and DEIDENTIFICATION_METHOD_CODES in unconverted:
        has_codes = unconverted[DEIDENTIFICATION_METHOD_CODES] > 0  # as if converted
    else:
        has_codes = codes is not None and has_value(codes, "SQ")
    if not (has_method or has_codes):
        findings.append(
            Finding(
                "deid.method",
                "error",
                "no DeidentificationMethod or DeidentificationMethodCodeSequence: say which tool "
                "and profile de-identified the file",
                path=path,
                tag=tag_label(DEIDENTIFICATION_METHOD),
            )
        )
    keys = ds.keys()
    if any(t in keys for t in PIXEL_DATA_TAGS):
        state = _code_string(ds, BURNED_IN_ANNOTATION)
        if state != "NO":
            why = "is missing" if not state else "is not NO"
            hint = (
                "; a segmentation's frames are label maps: write NO into the SEG (highdicom "
                "leaves it out)"
                if _code_string(ds, 0x00080016) == SEGMENTATION_STORAGE
                else ""
            )
            findings.append(
                Finding(
                    "deid.burned-in-annotation",
                    "error",
                    f"BurnedInAnnotation {why}: pixels may show identifying text; held for pixel "
                    f"review (set NO only after the pixels were checked or cleaned){hint}",
                    path=path,
                    tag=tag_label(BURNED_IN_ANNOTATION),
                )
            )
    return findings


def _option_findings(declared: DeclaredOptions, policy: DeidPolicy, path: str) -> list[Finding]:
    """A declared option the provider may not use, and codes that are no CID 7050 code."""
    label = tag_label(DEIDENTIFICATION_METHOD_CODES)
    findings = [
        Finding(
            "deid.option-not-allowed",
            "error",
            f"declares the {option.label()}, which this provider is not allowed: the enclave "
            f"applies no option it has not agreed (enclave providers set PROVIDER "
            f"--deid-option {option.code}), so what the option keeps is refused below",
            path=path,
            tag=label,
        )
        for option in sorted(declared.options, key=lambda o: o.code)
        if not policy.allows(option)
    ]
    if declared.unknown:
        findings.append(
            Finding(
                "deid.option-unknown",
                "warning",
                f"{len(declared.unknown)} code(s) that are not PS3.16 CID 7050 "
                f"de-identification codes ({', '.join(sorted(set(declared.unknown)))}): ignored",
                path=path,
                tag=label,
            )
        )
    if declared.options and not declared.basic_profile:
        findings.append(
            Finding(
                "deid.option-without-profile",
                "warning",
                f"declares options but not the {BASIC_PROFILE_CODE} Basic Application "
                "Confidentiality Profile code they modify",
                path=path,
                tag=label,
            )
        )
    return findings


def check_deidentification(
    ds: Dataset,
    path: str,
    *,
    private_tag_allowlist: Iterable[Any] = frozenset(),
    element_visitor: ElementVisitor | None = None,
    policy: DeidPolicy | None = None,
    declared: DeclaredOptions | None = None,
) -> list[Finding]:
    """Every de-identification problem of one DICOM dataset.

    ``policy`` (or, without one, ``private_tag_allowlist`` and no options) says what the
    submission may keep: declared options (``declared``, read from the file when not given)
    apply only where the policy allows them. ``private_tag_allowlist`` holds full private tags (``0x00431027``) or
    ``(private creator, group, element offset)`` tuples (``("GEMS_PARM_01", 0x0043, 0x27)``)
    a curator has reviewed and accepted as free of identifiers.
    ``element_visitor(elem, vr, prefix)`` is called for every public, non-sequence element the
    walk passes (``prefix`` names the enclosing sequence items), so conformance checks can
    share this one pass over the file; a visitor with a ``vrs`` attribute (a set of VRs) is
    called only for elements of those VRs.
    """
    if policy is None:
        policy = DeidPolicy(frozenset(private_tag_allowlist))
    if declared is None:
        declared = declared_options(ds)
    walk = _Walk(path, policy, element_visitor, declared)
    walk.walk(ds)
    return (
        _option_findings(declared, policy, path)
        + walk.findings
        + _declaration_findings(ds, path, walk.unconverted)
    )


def _uid(ds: Dataset, tag: int) -> str:
    elem = ds.get(tag)
    if elem is None or elem.value is None:
        return ""
    return str(elem.value).strip(" \x00")


class DeidConsistency:
    """Identifiers must agree across a submission, or de-identification mixed up subjects.

    The same StudyInstanceUID must always come with the same PatientID, a series must stay in
    one study, and no SOPInstanceUID may be used by two files (a sign of a tool that replaced
    UIDs inconsistently, or of the same image sent twice under different names).
    """

    def __init__(self) -> None:
        self._sop: dict[str, str] = {}
        self._study_patient: dict[str, tuple[str, str]] = {}
        self._series_study: dict[str, tuple[str, str]] = {}
        self._findings: list[Finding] = []

    def add(self, ds: Dataset, path: str) -> None:
        self.add_identifiers(
            path,
            study_uid=_uid(ds, STUDY_INSTANCE_UID),
            series_uid=_uid(ds, SERIES_INSTANCE_UID),
            sop_instance_uid=_uid(ds, SOP_INSTANCE_UID),
            patient_id=_uid(ds, PATIENT_ID),
        )

    def add_identifiers(
        self,
        path: str,
        *,
        study_uid: str,
        series_uid: str,
        sop_instance_uid: str,
        patient_id: str,
    ) -> None:
        """Same as ``add`` for identifiers already read (e.g. in a worker process)."""
        if sop_instance_uid:
            first = self._sop.setdefault(sop_instance_uid, path)
            if first != path:
                self._findings.append(
                    Finding(
                        "deid.uid-consistency",
                        "error",
                        f"SOPInstanceUID is also used by {first}: every file needs its own",
                        path=path,
                        tag=tag_label(SOP_INSTANCE_UID),
                    )
                )
        if study_uid:
            first_patient, first_path = self._study_patient.setdefault(
                study_uid, (patient_id, path)
            )
            if first_patient != patient_id:
                self._findings.append(
                    Finding(
                        "deid.uid-consistency",
                        "error",
                        f"PatientID differs from {first_path}, which has the same "
                        "StudyInstanceUID: subjects were mixed up or pseudonymised inconsistently",
                        path=path,
                        tag=tag_label(PATIENT_ID),
                    )
                )
        if series_uid:
            first_study, first_path = self._series_study.setdefault(series_uid, (study_uid, path))
            if first_study != study_uid:
                self._findings.append(
                    Finding(
                        "deid.uid-consistency",
                        "error",
                        f"StudyInstanceUID differs from {first_path}, which has the same "
                        "SeriesInstanceUID: a series must belong to one study",
                        path=path,
                        tag=tag_label(STUDY_INSTANCE_UID),
                    )
                )

    def findings(self) -> list[Finding]:
        return list(self._findings)
