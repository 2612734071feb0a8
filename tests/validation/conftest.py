"""Fixtures that produce sample datasets and DICOM series (enclave.samples), small and fast."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from enclave.samples import make_ct_series, make_sample_dataset
from tests.phi import PHI_VALUES, planting


@pytest.fixture(scope="session")
def demo_dataset(tmp_path_factory) -> Path:
    """A complete two-subject sample dataset, built once per session: treat it as read-only."""
    return make_sample_dataset(tmp_path_factory.mktemp("demo"), subjects=2, slices=12, size=32)


@pytest.fixture
def ct_series(tmp_path) -> list[Path]:
    """One clean, de-identified 8-slice CT series of 16x16 images under tmp_path/series."""
    return make_ct_series(tmp_path / "series", slices=8, size=16, subject_id="SUBJ-0001", seed=1)


@pytest.fixture
def make_series(tmp_path) -> Callable[..., list[Path]]:
    """Factory: ``make_series("name", phi=["patient-name"], slices=4, ...)`` under tmp_path."""

    def make(name: str = "series", *, phi: Iterable[str] = (), **kwargs) -> list[Path]:
        kwargs.setdefault("slices", 4)
        kwargs.setdefault("size", 16)
        kwargs.setdefault("subject_id", "SUBJ-0001")
        return make_ct_series(tmp_path / name, edit_header=planting(*phi), **kwargs)

    return make


def _assert_no_phi(*texts: object) -> None:
    blob = "\n".join(json.dumps(t, default=str) if not isinstance(t, str) else t for t in texts)
    for kind, value in PHI_VALUES.items():
        if value:
            assert value not in blob, f"planted {kind} value leaked"
            for part in value.split("^"):
                if len(part) > 3:
                    assert part not in blob, f"part of planted {kind} value leaked"


@pytest.fixture
def assert_no_phi() -> Callable[..., None]:
    """``assert_no_phi(findings, report_text, captured_output)``: no planted identifier (or
    a distinctive part of one) appears in any of them."""
    return _assert_no_phi
