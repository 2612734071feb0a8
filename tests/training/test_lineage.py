"""Lineage records: which data, code, parameters and environment produced an output."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

import enclave.data as ed


def train_and_save(outputs, dataset, code=None, name="baseline"):
    with ed.training_run(
        name, params={"epochs": 2, "lr": 1e-3, "patch": (32, 32, 16)}, datasets=[dataset], code=code
    ) as run:
        run.log(epoch=0, loss=1.5)
        run.log(epoch=1, loss=0.75)
        model = run.save(b"weights", "models/unet.pt")
        (outputs / "curve.csv").write_text("epoch,loss\n0,1.5\n1,0.75\n")
        run.output("curve.csv")
    return run, model


def test_run_records_data_code_parameters_environment_outputs(researcher_env, demo_ct, tmp_path):
    script = tmp_path / "train.py"
    script.write_text("print('training')\n")
    run, model = train_and_save(researcher_env, demo_ct, code=script)
    record_path = researcher_env / ".lineage" / f"{run.run_id}.json"
    record = json.loads(record_path.read_text())
    assert record["format"] == "enclave-lineage/1"
    assert record["status"] == "succeeded" and record["error"] is None
    assert record["datasets"] == [
        {
            "name": "demo-ct",
            "version": 1,
            "content_hash": demo_ct.content_hash,
            "path": str(demo_ct.path),
        }
    ]
    import hashlib

    assert record["code"]["kind"] == "script" and record["code"]["how"] == "explicit"
    assert record["code"]["sha256"] == hashlib.sha256(script.read_bytes()).hexdigest()
    assert (researcher_env / record["code"]["copy"]).read_bytes() == script.read_bytes()
    assert record["parameters"] == {"epochs": 2, "lr": 1e-3, "patch": [32, 32, 16]}
    env = record["environment"]
    assert env["python"] == ".".join(map(str, sys.version_info[:3]))
    assert env["packages"]["monai"] and env["packages"]["torch"]
    assert env["device"] == "cpu" and record["user"] and record["hostname"]
    assert [m["loss"] for m in record["metrics"]] == [1.5, 0.75]
    assert {o["path"]: o["sha256"] for o in record["outputs"]} == {
        "curve.csv": hashlib.sha256(b"epoch,loss\n0,1.5\n1,0.75\n").hexdigest(),
        "models/unet.pt": hashlib.sha256(b"weights").hexdigest(),
    }

    found = ed.lineage(model)
    assert found.record["run_id"] == run.run_id and not found.modified
    text = repr(found)
    assert "models/unet.pt: unchanged" in text
    assert f"demo-ct v1 ({demo_ct.content_hash[:12]}" in text
    assert '"epochs": 2' in text and "<li>" in found._repr_html_()
    assert ed.lineage("curve.csv").record["run_id"] == run.run_id


def test_modified_output_is_detected(researcher_env, demo_ct):
    _, model = train_and_save(researcher_env, demo_ct)
    model.write_bytes(b"weights edited by hand")
    found = ed.lineage(model)
    assert found.modified
    assert "MODIFIED since the run wrote it" in repr(found)


def test_copy_keeps_lineage_and_later_run_comes_first(researcher_env, demo_ct):
    first, model = train_and_save(researcher_env, demo_ct)
    (researcher_env / "release.pt").write_bytes(model.read_bytes())
    assert ed.lineage(researcher_env / "release.pt").record["run_id"] == first.run_id
    second, _ = train_and_save(researcher_env, demo_ct, name="again")
    found = ed.lineage("models/unet.pt")
    assert [r["run_id"] for r in found.runs] == [second.run_id, first.run_id]


def test_failed_run_is_recorded_as_failed(researcher_env, demo_ct):
    with pytest.raises(RuntimeError):
        with ed.training_run("crashes", datasets=[demo_ct]) as run:
            run.output("half.pt")
            raise RuntimeError("CUDA out of memory")
    record = run.record
    assert record["status"] == "failed"
    assert record["error"] == "RuntimeError: CUDA out of memory"
    assert record["outputs"] == [{"path": "half.pt", "sha256": None, "size": None, "missing": True}]


def test_outputs_outside_outputs_folder_are_refused(researcher_env, demo_ct, tmp_path):
    with ed.training_run("escape", datasets=[demo_ct]) as run:
        with pytest.raises(ed.LineageError, match="outputs must be under"):
            run.output(tmp_path / "elsewhere.pt")
        with pytest.raises(ed.LineageError, match="outputs must be under"):
            run.output("../escape.pt")
        with pytest.raises(ed.LineageError, match="reserved"):
            run.output(".lineage/forged.json")


def test_file_without_lineage_and_missing_file(researcher_env):
    (researcher_env / "notes.txt").write_text("hand-written")
    with pytest.raises(ed.LineageError, match="no training run recorded this file"):
        ed.lineage("notes.txt")
    with pytest.raises(ed.LineageError, match="no such file"):
        ed.lineage("absent.pt")


def test_datasets_by_name_and_refusals(researcher_env):
    with ed.training_run("by-name", datasets=["demo-ct@1", ("demo-ct", 2)]) as run:
        pass
    assert [(d["name"], d["version"]) for d in run.record["datasets"]] == [
        ("demo-ct", 1),
        ("demo-ct", 2),
    ]
    with pytest.raises(ed.DatasetNotGranted):
        ed.training_run("x", datasets=["demo-ct@7"])
    with pytest.raises(ed.LineageError, match="needs a name"):
        ed.training_run("")


def test_notebook_found_through_jupyter_session(researcher_env, demo_ct, tmp_path, monkeypatch):
    import nbformat

    notebook = tmp_path / "analysis.ipynb"
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1")]
    nb.cells[0].outputs = [nbformat.v4.new_output("stream", text="SUBJ-0001 age 75")]
    nbformat.write(nb, notebook)
    monkeypatch.setenv("JPY_SESSION_NAME", str(notebook))
    with ed.training_run("nb", datasets=[demo_ct]) as run:
        pass
    code = run.record["code"]
    assert code["kind"] == "notebook" and code["how"] == "jupyter-session"
    assert code["path"] == str(notebook.resolve())
    before = code["source_sha256"]
    nb.cells[0].outputs = []
    nbformat.write(nb, notebook)
    from enclave.data.lineage import notebook_source_hash

    assert notebook_source_hash(notebook) == before  # outputs do not change the code hash
    kept = json.loads((researcher_env / code["copy"]).read_text())  # code only, no outputs
    assert "".join(kept["cells"][0]["source"]) == "x = 1" and kept["cells"][0]["outputs"] == []


def test_script_found_through_main(researcher_env, tmp_path, granted_mounts):
    script = tmp_path / "train_script.py"
    script.write_text(
        textwrap.dedent("""
        import enclave.data as ed
        with ed.training_run("script", datasets=["demo-ct@1"]) as run:
            run.save({"dice": 0.9}, "metrics.json")
        print(run.path)
    """)
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True)
    record = json.loads(open(out.stdout.strip()).read())
    assert record["code"]["path"] == str(script.resolve())
    assert record["code"]["how"] == "__main__"
    assert json.loads((researcher_env / "metrics.json").read_text()) == {"dice": 0.9}


def test_lineage_command(researcher_env, demo_ct, run_enclave):
    _, model = train_and_save(researcher_env, demo_ct)
    result = run_enclave("lineage", str(model))
    assert result.exit_code == 0, result.stderr
    assert "models/unet.pt: unchanged" in result.stdout
    as_json = json.loads(run_enclave("lineage", "--json", str(model)).stdout)
    assert as_json["modified"] is False and as_json["runs"][0]["name"] == "baseline"
    model.write_bytes(b"tampered")
    result = run_enclave("lineage", str(model))
    assert result.exit_code == 3 and "MODIFIED" in result.stdout
    result = run_enclave("lineage", str(researcher_env / "absent.pt"))
    assert result.exit_code == 1 and "error: " in result.stderr and "no such file" in result.stderr
