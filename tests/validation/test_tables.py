"""Clinical tables: declared schema, subject ids, PHI heuristics and expectation suites.

Planted values (an e-mail address, a phone number, an out-of-range age) must never appear in
any finding: reports are shown to curators and kept with the dataset.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ingestion.manifest import TableSpec
from ingestion.report import Finding
from ingestion.validators.tables import (
    check_linkage,
    identifier_column,
    load_suite,
    validate_table,
)

SCHEMA = {"subject_id": "string", "age": "integer", "sex": "string", "outcome": "integer"}
PLANTED_EMAIL = "jane.planted@hospital.example.org"
PLANTED_PHONE = "+1 617-555-0199"
PLANTED_SSN = "078-05-1120"
PLANTED_AGE = "187"


def write_table(
    root: Path, rows: list[list[object]], header=("subject_id", "age", "sex", "outcome")
) -> str:
    path = root / "tables" / "clinical.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [",".join(header)] + [
        ",".join("" if v is None else str(v) for v in row) for row in rows
    ]
    path.write_text("\n".join(lines) + "\n")
    return "tables/clinical.csv"


def write_suite(root: Path, expectations: list[dict] | str) -> str:
    path = root / "expectations" / "clinical.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = (
        expectations
        if isinstance(expectations, str)
        else json.dumps({"expectations": expectations})
    )
    path.write_text(text)
    return "expectations/clinical.json"


def good_rows(n: int = 6) -> list[list[object]]:
    return [[f"SUBJ-{i:04d}", 30 + i, "F" if i % 2 else "M", i % 2] for i in range(1, n + 1)]


def spec(path: str, **kwargs) -> TableSpec:
    kwargs.setdefault("columns", SCHEMA)
    return TableSpec(name="clinical", path=path, **kwargs)


def by_check(findings: list[Finding], check: str, severity: str = "error") -> list[Finding]:
    return [f for f in findings if f.check == check and f.severity == severity]


def assert_no_values(findings: list[Finding], *values: str) -> None:
    text = json.dumps([f.to_dict() for f in findings])
    for value in values:
        assert value not in text


def test_good_table_passes_with_counts_and_subject_ids(tmp_path):
    result = validate_table(tmp_path, spec(write_table(tmp_path, good_rows())))
    assert [f for f in result.findings if f.severity != "info"] == []
    assert result.rows == 6
    assert result.columns == ["subject_id", "age", "sex", "outcome"]
    assert result.subject_ids == {f"SUBJ-{i:04d}" for i in range(1, 7)}
    assert result.descriptor() == {
        "name": "clinical",
        "path": "tables/clinical.csv",
        "rows": 6,
        "columns": ["subject_id", "age", "sex", "outcome"],
    }


def test_schema_mismatch_missing_undeclared_and_bad_types(tmp_path):
    rows = [["SUBJ-0001", "thirty", "F", "1.5", "x"], ["SUBJ-0002", 40, "M", 0, "y"]]
    path = write_table(tmp_path, rows, header=("subject_id", "age", "sex", "outcome", "site"))
    result = validate_table(
        tmp_path, spec(path, columns={**SCHEMA, "weight": "float", "visit": "date"})
    )
    errors = {(f.check, f.tag): f.message for f in result.findings if f.severity == "error"}
    assert "declared in dataset.yaml but missing" in errors[("table.schema", "weight")]
    assert "1 of 2 value(s) are not whole numbers" in errors[("table.type", "age")]
    assert ("table.type", "outcome") in errors
    (undeclared,) = by_check(result.findings, "table.schema", "warning")
    assert undeclared.tag == "site" and "not declared" in undeclared.message
    assert all("table 'clinical'" in f.message for f in result.findings)
    assert_no_values(result.findings, "thirty", "1.5")


def test_type_checks_for_float_boolean_and_date(tmp_path):
    path = write_table(
        tmp_path,
        [["SUBJ-0001", "2.5", "yes", "2020-02-30"], ["SUBJ-0002", "x1", "maybe", "2021-07-01"]],
        header=("subject_id", "weight", "smoker", "visit"),
    )
    columns = {"subject_id": "string", "weight": "float", "smoker": "boolean", "visit": "date"}
    result = validate_table(tmp_path, spec(path, columns=columns))
    bad = {f.tag for f in by_check(result.findings, "table.type")}
    assert bad == {"weight", "smoker", "visit"}
    (dates,) = by_check(result.findings, "table.dates", "warning")
    assert dates.tag == "visit"


def test_duplicate_and_null_subject_ids(tmp_path):
    rows = good_rows(4) + [["SUBJ-0002", 50, "F", 1], [None, 51, "M", 0], ["  ", 52, "M", 0]]
    result = validate_table(tmp_path, spec(write_table(tmp_path, rows)))
    messages = [f.message for f in by_check(result.findings, "table.subject-id")]
    assert any("2 of 7 row(s) have no subject id" in m for m in messages)
    assert any("1 subject id(s) appear more than once (1 extra row(s))" in m for m in messages)
    assert all(f.tag == "subject_id" for f in by_check(result.findings, "table.subject-id"))


def test_several_rows_per_subject_when_declared(tmp_path):
    rows = good_rows(3) + [["SUBJ-0001", 31, "F", 0]]
    result = validate_table(tmp_path, spec(write_table(tmp_path, rows), one_row_per_subject=False))
    assert by_check(result.findings, "table.subject-id") == []
    assert result.subject_ids == {"SUBJ-0001", "SUBJ-0002", "SUBJ-0003"}


def test_missing_subject_id_column(tmp_path):
    path = write_table(tmp_path, [[1, 30]], header=("case", "age"))
    result = validate_table(tmp_path, spec(path, columns={}))
    (error,) = by_check(result.findings, "table.subject-id")
    assert "has no subject id column 'subject_id'" in error.message


def test_nulls_in_ordinary_columns_are_warnings(tmp_path):
    rows = good_rows(4)
    rows[1][3] = None
    rows[2][3] = None
    result = validate_table(tmp_path, spec(write_table(tmp_path, rows)))
    (nulls,) = by_check(result.findings, "table.nulls", "warning")
    assert nulls.tag == "outcome" and "2 of 4 value(s) are empty" in nulls.message
    assert result.findings and not [f for f in result.findings if f.severity == "error"]


@pytest.mark.parametrize(
    "column",
    [
        "patient_name",
        "PatientName",
        "Name",
        "DOB",
        "date_of_birth",
        "e-mail",
        "home address",
        "Phone Number",
        "mrn",
        "SSN",
        "zip_code",
        "contact_email",
    ],
)
def test_identifier_like_column_names_are_errors(tmp_path, column):
    path = write_table(tmp_path, [["SUBJ-0001", "x"]], header=("subject_id", column))
    result = validate_table(tmp_path, spec(path, columns={}))
    (error,) = by_check(result.findings, "table.phi-column")
    assert error.tag == column
    assert f"column '{column}' looks like a direct identifier" in error.message


@pytest.mark.parametrize(
    "column",
    ["age", "sex", "outcome", "label_name", "drug_name", "tumour_volume", "site", "study_arm"],
)
def test_ordinary_column_names_pass(column):
    assert not identifier_column(column)


def test_values_that_look_like_contact_details_are_errors_without_the_values(tmp_path):
    rows = [
        ["SUBJ-0001", "ok", "note"],
        ["SUBJ-0002", f"write to {PLANTED_EMAIL}", "2020-01-02"],
        ["SUBJ-0003", PLANTED_PHONE, "12.5"],
        ["SUBJ-0004", PLANTED_SSN, "100"],
    ]
    path = write_table(tmp_path, rows, header=("subject_id", "comment", "other"))
    result = validate_table(tmp_path, spec(path, columns={}))
    errors = by_check(result.findings, "table.phi-value")
    assert {(f.tag, f.message.split(": ", 1)[1][:30]) for f in errors} == {
        ("comment", "1 value(s) look like e-mail ad"),
        ("comment", "1 value(s) look like telephone"),
        ("comment", "1 value(s) look like US social"),
    }
    assert_no_values(result.findings, PLANTED_EMAIL, PLANTED_PHONE, PLANTED_SSN, "hospital.example")


def test_parquet_tables_are_checked_by_type(tmp_path):
    import pandas as pd

    frame = pd.DataFrame(
        {
            "subject_id": ["SUBJ-0001", "SUBJ-0002", "SUBJ-0002"],
            "age": [30.0, 40.5, None],
            "sex": ["F", "M", "F"],
            "outcome": [1, 0, 1],
        }
    )
    (tmp_path / "tables").mkdir()
    frame.to_parquet(tmp_path / "tables/clinical.parquet")
    result = validate_table(tmp_path, spec("tables/clinical.parquet"))
    assert result.rows == 3
    types = by_check(result.findings, "table.type")
    assert [(f.tag, "1 of 2 value(s)" in f.message) for f in types] == [("age", True)]
    assert by_check(result.findings, "table.subject-id")
    assert by_check(result.findings, "table.nulls", "warning")[0].tag == "age"


@pytest.mark.parametrize(
    "content, words",
    [
        (b"", "empty"),
        (b"\xff\xfe\x00bad", "not UTF-8"),
        (b'subject_id,age\n"SUBJ-1,3\n', "malformed CSV"),
    ],
)
def test_unreadable_tables(tmp_path, content, words):
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables/clinical.csv").write_bytes(content)
    result = validate_table(tmp_path, spec("tables/clinical.csv"))
    (error,) = by_check(result.findings, "table.read")
    assert words in error.message and "table 'clinical' cannot be read" in error.message
    assert not result.readable


def test_corrupt_parquet(tmp_path):
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables/clinical.parquet").write_bytes(b"PAR1 not really")
    result = validate_table(tmp_path, spec("tables/clinical.parquet"))
    assert [f.check for f in result.findings] == ["table.read"]


def test_large_csv_is_read_in_chunks(tmp_path, monkeypatch):
    import ingestion.validators.tables as tables

    monkeypatch.setattr(tables, "CHUNK_ROWS", 7)
    rows = good_rows(50) + [["SUBJ-0003", 1, "F", 0]]
    rows[20][1] = "old"
    result = validate_table(tmp_path, spec(write_table(tmp_path, rows)))
    assert result.rows == 51
    assert (
        "1 of 51 value(s) are not whole numbers"
        in by_check(result.findings, "table.type")[0].message
    )
    assert (
        "1 subject id(s) appear more than once"
        in by_check(result.findings, "table.subject-id")[0].message
    )


# --- linkage ---------------------------------------------------------------------------------


def test_linkage_reports_both_directions_with_counts(tmp_path):
    table = spec(write_table(tmp_path, good_rows(4)), links_imaging=True)
    result = validate_table(tmp_path, table)
    imaging = {"SUBJ-0001", "SUBJ-0002", "SUBJ-0009"}
    findings = check_linkage([table], [result], imaging)
    messages = sorted(f.message for f in findings)
    assert all(f.severity == "error" and f.tag == "subject_id" for f in findings)
    assert "1 imaged subject(s) have no row in the table (e.g. SUBJ-0009)" in messages[0]
    assert "2 subject(s) have no DICOM images" in messages[1]
    assert check_linkage([table], [result], {f"SUBJ-{i:04d}" for i in range(1, 5)}) == []


def test_linkage_lists_at_most_five_subjects(tmp_path):
    table = spec(write_table(tmp_path, good_rows(9)), links_imaging=True)
    result = validate_table(tmp_path, table)
    (finding,) = check_linkage([table], [result], set())
    assert "9 subject(s)" in finding.message and "and 4 more" in finding.message


def test_linkage_only_for_tables_that_ask_for_it(tmp_path):
    table = spec(write_table(tmp_path, good_rows(2)))
    result = validate_table(tmp_path, table)
    assert check_linkage([table], [result], set()) == []


# --- expectation suites (great_expectations is imported once per test process) -----------


def test_failing_expectations_name_table_type_and_column_but_no_values(tmp_path):
    rows = good_rows(5)
    rows[2][1] = PLANTED_AGE
    path = write_table(tmp_path, rows)
    suite = write_suite(
        tmp_path,
        [
            {
                "type": "expect_column_values_to_be_between",
                "kwargs": {"column": "age", "min_value": 0, "max_value": 120},
            },
            {
                "expectation_type": "expect_column_values_to_be_in_set",
                "kwargs": {"column": "sex", "value_set": ["F", "M"]},
            },
            {"type": "expect_table_row_count_to_be_between", "kwargs": {"min_value": 10}},
            {"type": "expect_column_values_to_be_unique", "kwargs": {"column": "subject_id"}},
        ],
    )
    result = validate_table(tmp_path, spec(path, expectations=suite))
    failed = by_check(result.findings, "table.expectation")
    assert len(failed) == 2
    by_type = {f.message.split("expectation ")[1].split(" ")[0]: f for f in failed}
    age = by_type["expect_column_values_to_be_between"]
    assert age.tag == "age" and age.path == suite
    assert "table 'clinical'" in age.message and "1 of 5 value(s) unexpected" in age.message
    assert "expect_table_row_count_to_be_between" in by_type
    assert_no_values(result.findings, PLANTED_AGE)


def test_malformed_suites_are_clear_findings(tmp_path):
    path = write_table(tmp_path, good_rows(3))
    for text, words in [
        ("{not json", "is not valid JSON (line 1"),
        ('{"expectations": {}}', 'must be {"expectations": [...]}'),
        ('{"expectations": [{"kwargs": {}}]}', 'expectation #1 has no "type"'),
        ('{"expectations": []}', "lists no expectations"),
    ]:
        suite = write_suite(tmp_path, text)
        result = validate_table(tmp_path, spec(path, expectations=suite))
        (finding,) = by_check(result.findings, "table.expectation")
        assert words in finding.message and "table 'clinical'" in finding.message


def test_unknown_expectation_bad_kwargs_and_unknown_column(tmp_path):
    path = write_table(tmp_path, good_rows(3))
    suite = write_suite(
        tmp_path,
        [
            {"type": "expect_column_values_to_be_awesome", "kwargs": {"column": "age"}},
            {
                "type": "expect_column_values_to_be_between",
                "kwargs": {"column": "age", "strict_min": "x"},
            },
            {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "weight"}},
            {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "age"}},
        ],
    )
    result = validate_table(tmp_path, spec(path, expectations=suite))
    messages = [f.message for f in by_check(result.findings, "table.expectation")]
    assert len(messages) == 3
    assert (
        "#1 (expect_column_values_to_be_awesome) is not a known great-expectations" in messages[0]
    )
    assert "#2 (expect_column_values_to_be_between) has invalid kwargs (strict_min)" in messages[1]
    assert "#3 (expect_column_values_to_not_be_null) names column(s) 'weight'" in messages[2]


def test_load_suite_accepts_exported_suites(tmp_path):
    exported = {
        "name": "clinical",
        "meta": {"great_expectations_version": "1.3.0"},
        "expectations": [
            {"type": "expect_column_to_exist", "kwargs": {"column": "age"}, "meta": {}, "id": "x"}
        ],
    }
    (tmp_path / "s.json").write_text(json.dumps(exported))
    assert load_suite(tmp_path / "s.json") == [("expect_column_to_exist", {"column": "age"})]


def test_gzipped_csv(tmp_path):
    import gzip

    write_table(tmp_path, good_rows(3))
    raw = (tmp_path / "tables/clinical.csv").read_bytes()
    (tmp_path / "tables/clinical.csv.gz").write_bytes(gzip.compress(raw))
    result = validate_table(tmp_path, spec("tables/clinical.csv.gz"))
    assert result.rows == 3 and result.columns[0] == "subject_id"
    assert [f for f in result.findings if f.severity != "info"] == []


def test_subject_id_column_named_like_an_identifier_is_refused(tmp_path):
    path = write_table(tmp_path, [["12345", 40]], header=("mrn", "age"))
    result = validate_table(tmp_path, spec(path, subject_id="mrn", columns={}))
    (error,) = by_check(result.findings, "table.phi-column")
    assert error.tag == "mrn"
