"""The example notebooks run end to end on the sample dataset (short CPU runs), as a user
would run them: executed cell by cell in a kernel, with the Jupyter session name set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import enclave.data as ed
from enclave.data.examples import examples_source

SHORT_RUN = {
    "EXAMPLE_DATASET": "demo-ct",
    "EXAMPLE_VERSION": "1",
    "EXAMPLE_EPOCHS": "2",
    "EXAMPLE_PATCH": "32",
    "EXAMPLE_BATCH": "2",
    "EXAMPLE_CHANNELS": "8,16,32",
    "EXAMPLE_VAL_EVERY": "1",
    "OMP_NUM_THREADS": "2",
    "MPLBACKEND": "module://matplotlib_inline.backend_inline",
}


def execute(notebook: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch, **extra: str):
    import nbformat
    from nbclient import NotebookClient

    copy = workdir / notebook.name
    copy.write_bytes(notebook.read_bytes())
    for key, value in {**SHORT_RUN, **extra}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("JPY_SESSION_NAME", str(copy))  # what Jupyter Server tells a kernel
    nb = nbformat.read(copy, as_version=4)
    NotebookClient(
        nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}
    ).execute()
    return nb


def outputs_of(nb, kind: str) -> list:
    return [
        o
        for cell in nb.cells
        if cell.cell_type == "code"
        for o in cell.outputs
        if o.output_type == kind or (kind == "image" and "image/png" in o.get("data", {}))
    ]


@pytest.mark.slow
def test_segmentation_notebook_trains_and_records_lineage(
    researcher_env, tmp_path, monkeypatch, demo_ct
):
    nb = execute(examples_source() / "segmentation-unet.ipynb", tmp_path, monkeypatch)
    out = researcher_env / "unet-segmentation"
    assert {p.name for p in out.iterdir()} == {
        "model.pt",
        "history.json",
        "training-curve.png",
        "prediction.png",
    }
    assert len(outputs_of(nb, "image")) == 2  # the curve and the predicted slice
    history = json.loads((out / "history.json").read_text())
    assert len(history["loss"]) == 2 and set(history["dice"][-1]) == {"body", "lesion"}
    found = ed.lineage(out / "model.pt")
    record = found.record
    assert not found.modified and record["status"] == "succeeded"
    assert record["code"]["kind"] == "notebook"
    assert record["code"]["path"] == str((tmp_path / "segmentation-unet.ipynb").resolve())
    assert record["datasets"][0]["content_hash"] == demo_ct.content_hash
    assert record["parameters"]["epochs"] == 2 and record["parameters"]["amp"] is False
    assert record["environment"]["device"] == "cpu"
    assert "dice_lesion" in record["metrics"][-1]
    import torch

    state = torch.load(out / "model.pt", weights_only=True)
    assert any(k.endswith("weight") for k in state)


@pytest.mark.slow
def test_classification_notebook_trains_and_records_lineage(
    researcher_env, tmp_path, monkeypatch, demo_ct
):
    nb = execute(
        examples_source() / "outcome-classification.ipynb",
        tmp_path,
        monkeypatch,
        EXAMPLE_EPOCHS="50",
    )
    out = researcher_env / "outcome-classifier"
    assert {p.name for p in out.iterdir()} == {
        "training.png",
        "weights.csv",
        "model.pt",
        "results.json",
    }
    assert outputs_of(nb, "image")
    results = json.loads((out / "results.json").read_text())
    assert 0.0 <= results["train_accuracy"] <= 1.0
    weights = (out / "weights.csv").read_text()
    assert "original_shape_VoxelVolume" in weights and "age" in weights
    record = ed.lineage(out / "weights.csv").record
    assert record["name"] == "outcome-classifier"
    assert record["code"]["path"].endswith("outcome-classification.ipynb")
    assert record["parameters"]["label"] == "lesion"
