"""Items of an opened dataset: volumes with DICOM geometry, aligned masks, tables, radiomics,
and the MONAI dataset built on them."""

from __future__ import annotations

import csv

import numpy as np
import pytest

import enclave.data as ed
from enclave.data.volumes import geometry
from enclave.samples import FIELD_OF_VIEW_MM, SLICE_SPACING_MM, _lesion
from tests.training.conftest import SIZE, SLICES, SUBJECTS


def expected_lesion(subject_index: int, subject_id: str, seed: int = 0):
    """The lesion the sample generator drew for a subject (same random stream)."""
    from enclave.samples import _geometry

    rng = np.random.default_rng(
        [seed * 1000 + subject_index, 1, int.from_bytes(subject_id.encode()[-6:])]
    )
    return _lesion(rng, _geometry(SIZE, SLICES))


def test_items_are_one_per_series_with_masks(demo_ct):
    assert demo_ct.subjects == [f"SUBJ-{i:04d}" for i in range(1, SUBJECTS + 1)]
    assert len(demo_ct) == SUBJECTS
    for item in demo_ct:
        assert item.image_path.parent.name == item.subject_id
        assert item.label_path.name == f"{item.subject_id}.nii.gz"
        assert item.series_uid.startswith("1.2.826.0.1.3680043")
    assert "4 subject(s), 4 series, 4 with segmentation" in demo_ct.describe()


def test_volume_has_the_dicom_geometry(demo_ct):
    from pydicom import dcmread

    item = demo_ct.item("SUBJ-0002")
    image = item.image()
    assert tuple(image.shape) == (1, SIZE, SIZE, SLICES)
    geo = geometry(image)
    # Axial DICOM: columns run to the patient's left, rows to posterior, slices superior.
    # The affine maps to RAS world coordinates; the array axes themselves point L, P, S.
    assert geo.orientation == "LPS"
    assert geo.spacing == pytest.approx((FIELD_OF_VIEW_MM / SIZE,) * 2 + (SLICE_SPACING_MM,))
    first = dcmread(sorted(item.image_path.iterdir())[0])
    x, y, z = (float(v) for v in first.ImagePositionPatient)
    assert geo.origin == pytest.approx((-x, -y, z), abs=1e-3)  # LPS -> RAS
    # Voxel [i, j, k] is column i, row j of slice k, in Hounsfield units.
    hu = first.pixel_array * float(first.RescaleSlope) + float(first.RescaleIntercept)
    assert np.allclose(image[0, :, :, 0].numpy(), hu.T)


@pytest.mark.parametrize("index", range(SUBJECTS))
def test_segmentation_is_where_the_generator_put_the_lesion(demo_ct, index):
    item = demo_ct.items[index]
    image, label = item.image(), item.label()
    assert np.allclose(label.affine.numpy(), image.affine.numpy(), atol=1e-3)
    mask = label[0].numpy() == 2
    assert mask.sum() > 20
    lesion = expected_lesion(index, item.subject_id)
    voxels = np.argwhere(mask)
    world = (image.affine.numpy() @ np.c_[voxels, np.ones(len(voxels))].T)[:3].T
    centre_ras = world.mean(axis=0)
    # The generator works in LPS relative to the volume centre; RAS flips x and y.
    assert centre_ras == pytest.approx([-lesion.x, -lesion.y, lesion.z], abs=6.0)
    # The lesion is soft tissue (30 HU) inside air-filled lung (-850 HU).
    hu = image[0].numpy()
    assert 0 < hu[mask].mean() < 60
    assert abs(hu[label[0].numpy() == 0].mean() + 1000) < 30


def test_clinical_rows_are_joined_by_subject(demo_ct, granted_mounts):
    with open(granted_mounts.v1 / "tables" / "clinical.csv", newline="") as fh:
        rows = {r["subject_id"]: r for r in csv.DictReader(fh)}
    for item in demo_ct:
        row = rows[item.subject_id]
        assert item.clinical == {
            "age": int(row["age"]),
            "sex": row["sex"],
            "outcome": int(row["outcome"]),
        }
    table = demo_ct.table("clinical")
    assert list(table.columns) == ["subject_id", "age", "sex", "outcome"]
    with pytest.raises(ed.DatasetAccessError, match="no table 'labs'; tables: clinical"):
        demo_ct.table("labs")


def test_radiomics_rows_per_series_and_label(demo_ct):
    frame = demo_ct.radiomics()
    assert len(frame) == SUBJECTS * 2
    assert set(frame["label_name"]) == {"body", "lesion"}
    for item in demo_ct:
        assert set(item.radiomics) == {"body", "lesion"}
        volume = item.radiomics["lesion"]["original_shape_VoxelVolume"]
        assert volume == pytest.approx(
            (item.label()[0].numpy() == 2).sum()
            * (FIELD_OF_VIEW_MM / SIZE) ** 2
            * SLICE_SPACING_MM,
            rel=0.05,
        )
    features = demo_ct.features("lesion")
    assert list(features["subject_id"]) == demo_ct.subjects
    assert {"age", "outcome", "original_shape_MeshVolume"} <= set(features.columns)
    assert demo_ct.features(2).shape == features.shape
    assert "body_original_firstorder_Mean" in demo_ct.features().columns
    with pytest.raises(ed.DatasetAccessError, match="no radiomics rows for label 'liver'"):
        demo_ct.features("liver")


def test_dataset_without_segmentations_says_so(researcher_env):
    v2 = ed.open_dataset("demo-ct", 2)
    assert all(item.label_path is None for item in v2)
    with pytest.raises(ed.DatasetAccessError, match="no radiomics table"):
        v2.radiomics()
    with pytest.raises(ed.DatasetAccessError, match="has no segmentation"):
        v2.items[0].label()
    with pytest.raises(ed.DatasetAccessError, match="no series with a segmentation"):
        ed.monai_dataset(v2)


def test_monai_dataset_yields_image_label_pairs(demo_ct):
    from enclave.data.monai_data import split_subjects

    train = ed.monai_dataset(demo_ct, split="train", patch_size=(32, 32, 16), num_samples=2)
    val = ed.monai_dataset("demo-ct", 1, split="val")
    train_subjects = {d["subject_id"] for d in train.data}
    val_subjects = {d["subject_id"] for d in val.data}
    assert train_subjects.isdisjoint(val_subjects)
    assert train_subjects | val_subjects == set(demo_ct.subjects)
    assert (sorted(train_subjects), sorted(val_subjects)) == split_subjects(demo_ct.subjects)
    patches = train[0]
    assert len(patches) == 2
    for patch in patches:
        assert tuple(patch["image"].shape) == (1, 32, 32, 16)
        assert tuple(patch["label"].shape) == (1, 32, 32, 16)
        # CT window scaled to [0, 1], then a random intensity shift of at most 0.05.
        assert -0.05 <= float(patch["image"].min()) and float(patch["image"].max()) <= 1.05
        assert set(np.unique(patch["label"].numpy())) <= {0.0, 1.0, 2.0}
    whole = val[0]
    assert tuple(whole["image"].shape) == (1, SIZE, SIZE, SLICES)  # median spacing = native
    assert geometry(whole["image"]).orientation == "RAS"  # reoriented for training
    assert geometry(whole["label"]).orientation == "RAS"
    assert (whole["label"].numpy() == 2).sum() > 20


def test_split_is_stable_when_subjects_are_added():
    from enclave.data.monai_data import split_subjects

    subjects = [f"S{i}" for i in range(20)]
    train, val = split_subjects(subjects, 0.2)
    assert len(val) == 4 and not set(train) & set(val)
    _, val_more = split_subjects(subjects + [f"S{i}" for i in range(20, 40)], 0.2)
    assert len(set(val) & set(val_more)) >= 2
    with pytest.raises(ed.DatasetAccessError):
        split_subjects(subjects, 1.5)
