"""A cached MONAI dataset over a granted version, with transforms that suit most CT/MR work.

Defaults follow MONAI's fast-training guide and nnU-Net's habits: load (pydicom for series),
channel first, RAS orientation, resample to the dataset's median spacing, CT windowed to
[-1000, 1000] HU and scaled to [0, 1] (MR: z-score over the body), then cache that
deterministic part so every epoch after the first only crops and flips. Training adds
foreground-balanced random patches and flips.

Where the cache lives is chosen per version (``cache="auto"``, see ``enclave.data.cache``): in
memory (``CacheDataset``) when it fits well within the server's memory limit, else on disk under
the user's own ``~/.cache`` (``PersistentDataset``, mode 0700, keyed by version and transforms),
else nowhere (every epoch reads the files again). Never under ``~/outputs``: that would be
plaintext data the airlock could be asked to export.
"""

from __future__ import annotations

import hashlib
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from enclave.data.dataset import EnclaveDataset, open_dataset
from enclave.data.mounts import DatasetAccessError

CT_WINDOW = (-1000.0, 1000.0)
SPLITS = ("train", "val", "all")


@dataclass(frozen=True)
class TrainingDevice:
    """Where to train: CUDA with mixed precision when a GPU is visible, else CPU in float32."""

    device: Any  # torch.device
    amp: bool
    name: str

    def __str__(self) -> str:
        return f"{self.name} ({'AMP' if self.amp else 'float32'})"


def training_device() -> TrainingDevice:
    """CUDA + AMP when this server was given a GPU (researchers), CPU otherwise (students, CI)."""
    import torch

    if torch.cuda.is_available():
        return TrainingDevice(torch.device("cuda"), True, torch.cuda.get_device_name(0))
    return TrainingDevice(torch.device("cpu"), False, "cpu")


def split_subjects(
    subjects: Sequence[str], val_fraction: float = 0.2, seed: int = 0
) -> tuple[list[str], list[str]]:
    """Deterministic train/validation split by subject (never by series: no leakage).

    Subjects are ordered by a hash of (seed, subject id), so a subject keeps its side when
    a later version adds subjects. At least one validation subject when there are two or more.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise DatasetAccessError(f"val_fraction must be in [0, 1), not {val_fraction}")
    unique = sorted(set(subjects))
    ranked = sorted(unique, key=lambda s: hashlib.sha256(f"{seed}:{s}".encode()).hexdigest())
    n_val = math.ceil(len(unique) * val_fraction) if val_fraction else 0
    if val_fraction and len(unique) >= 2:
        n_val = max(1, min(n_val, len(unique) - 1))
    val = set(ranked[:n_val])
    return [s for s in unique if s not in val], [s for s in unique if s in val]


def median_spacing(dataset: EnclaveDataset) -> tuple[float, float, float] | None:
    """The median (x, y, z) voxel spacing of the dataset's series, from DICOM headers."""
    from enclave.data.volumes import series_spacing

    found = [s for s in (series_spacing(i.image_path) for i in dataset.items) if s]
    if not found:
        return None
    return tuple(round(statistics.median(axis), 4) for axis in zip(*found, strict=True))


def default_transforms(
    *,
    train: bool,
    modality: str = "CT",
    pixdim: Sequence[float] | None = None,
    patch_size: Sequence[int] = (96, 96, 96),
    num_samples: int = 2,
    with_label: bool = True,
    label_reader: str = "NibabelReader",
) -> Any:
    """The MONAI ``Compose`` that :func:`monai_dataset` uses (deterministic part first)."""
    from enclave.data.volumes import _quiet_monai

    _quiet_monai()
    from monai import transforms as T

    keys = ["image", "label"] if with_label else ["image"]
    chain: list[Any] = [T.LoadImaged(keys="image", reader="PydicomReader", image_only=True)]
    if with_label:
        chain.append(T.LoadImaged(keys="label", reader=label_reader, image_only=True))
    chain += [
        T.EnsureChannelFirstd(keys=keys),
        T.Orientationd(keys=keys, axcodes="RAS", labels=None),
    ]
    if pixdim is not None:
        modes = ("bilinear", "nearest") if with_label else ("bilinear",)
        chain.append(T.Spacingd(keys=keys, pixdim=tuple(pixdim), mode=modes))
    if modality.upper() == "CT":
        chain.append(
            T.ScaleIntensityRanged(
                keys="image",
                a_min=CT_WINDOW[0],
                a_max=CT_WINDOW[1],
                b_min=0.0,
                b_max=1.0,
                clip=True,
            )
        )
    else:
        chain.append(T.NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True))
    if not train:
        chain.append(T.EnsureTyped(keys=keys, track_meta=True))
        return T.Compose(chain)
    # Training: pad and find foreground/background voxels once, in the cached part, so each
    # epoch only crops (finding them per crop searches the whole label every time); patches
    # drop the metadata (MetaTensor bookkeeping slows every flip).
    patch = tuple(int(p) for p in patch_size)
    chain.append(T.SpatialPadd(keys=keys, spatial_size=patch))
    if with_label:
        chain.append(T.FgBgToIndicesd(keys="label", fg_postfix="_fg", bg_postfix="_bg"))
    chain.append(T.EnsureTyped(keys=keys, track_meta=False))
    if with_label:
        chain.append(
            T.RandCropByPosNegLabeld(
                keys=keys,
                label_key="label",
                spatial_size=patch,
                pos=1,
                neg=1,
                num_samples=num_samples,
                fg_indices_key="label_fg",
                bg_indices_key="label_bg",
            )
        )
        chain.append(T.DeleteItemsd(keys=["label_fg", "label_bg"]))
    else:
        chain.append(
            T.RandSpatialCropSamplesd(
                keys=keys,
                roi_size=patch,
                num_samples=num_samples,
                random_size=False,
            )
        )
    chain += [T.RandFlipd(keys=keys, prob=0.5, spatial_axis=axis) for axis in range(3)]
    chain.append(T.RandShiftIntensityd(keys="image", offsets=0.05, prob=0.5))
    return T.Compose(chain)


def _label_reader(dataset: EnclaveDataset) -> str:
    from enclave.data.volumes import reader_for

    readers = {reader_for(i.label_path) for i in dataset.items if i.label_path is not None}
    if len(readers) > 1:
        raise DatasetAccessError(
            f"{dataset.label} mixes mask formats ({', '.join(sorted(readers))}); "
            "pass transforms= with a loader per format"
        )
    return readers.pop() if readers else "NibabelReader"


def monai_items(
    dataset: EnclaveDataset,
    *,
    split: str = "all",
    val_fraction: float = 0.2,
    seed: int = 0,
    require_label: bool = True,
) -> list[dict[str, Any]]:
    """The MONAI dicts (``image``, ``label``, ``subject_id``...) of one split."""
    if split not in SPLITS:
        raise DatasetAccessError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    items = [i for i in dataset.items if i.label_path is not None or not require_label]
    if not items:
        raise DatasetAccessError(
            f"{dataset.label} has no series with a segmentation; pass require_label=False "
            "to load images only"
        )
    if split != "all":
        train, val = split_subjects([i.subject_id for i in items], val_fraction, seed)
        keep = set(train if split == "train" else val)
        items = [i for i in items if i.subject_id in keep]
    return [i.as_monai() for i in items]


def deterministic_part(transforms: Any) -> list[Any]:
    """The transforms a cache stores the output of: those before the first random one."""
    from monai.transforms import Compose, Randomizable

    chain = list(transforms.transforms) if isinstance(transforms, Compose) else [transforms]
    part = []
    for t in chain:
        if isinstance(t, Randomizable):
            break
        part.append(t)
    return part


def transform_hash(transforms: Any) -> str:
    """SHA-256 of the pickled deterministic part and the MONAI version: a changed transform
    (another spacing, window, reader...) gives another disk cache folder."""
    import pickle

    import monai

    part = deterministic_part(transforms)
    try:
        blob = pickle.dumps(part, protocol=4)
    except Exception:  # an unpicklable transform: fall back to its classes and reprs
        blob = repr([(type(t).__qualname__, vars(t)) for t in part]).encode()
    return hashlib.sha256(monai.__version__.encode() + b"\0" + blob).hexdigest()


def _private_persistent_dataset(
    items: list[dict[str, Any]], transforms: Any, cache_dir: Any
) -> Any:
    """MONAI's ``PersistentDataset``, writing its files inside ``cache_dir`` (mode 0600).

    MONAI's own writes each item first into a ``tempfile`` folder (``/tmp``) and moves it over:
    plaintext volumes in a shared folder, and a copy across filesystems. Here the temporary file
    sits next to its final name and is renamed atomically.
    """
    import tempfile

    import torch
    from monai.data import PersistentDataset
    from monai.data.utils import pickle_hashing
    from monai.utils import convert_to_tensor

    class PrivatePersistentDataset(PersistentDataset):
        def _cachecheck(self, item_transformed: Any) -> Any:
            import copy
            import os

            hashfile = Path(str(self.cache_dir)) / f"{pickle_hashing(item_transformed).decode()}.pt"
            if hashfile.is_file():
                try:
                    return torch.load(hashfile, weights_only=self.weights_only)
                except Exception:  # a torn or unreadable entry: compute it again
                    hashfile.unlink(missing_ok=True)
            result = self._pre_transform(copy.deepcopy(item_transformed))
            fd, tmp = tempfile.mkstemp(dir=self.cache_dir, prefix=".tmp-", suffix=".pt")
            try:
                with os.fdopen(fd, "wb") as fh:
                    torch.save(
                        convert_to_tensor(
                            result, convert_numeric=False, track_meta=self.track_meta
                        ),
                        fh,
                    )
                os.replace(tmp, hashfile)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            return result

    # Entries keep their metadata (validation items are MetaTensors, as from memory); they are
    # this user's own files in a 0700 folder, so loading them in full is no wider trust.
    return PrivatePersistentDataset(
        items, transform=transforms, cache_dir=cache_dir, track_meta=True, weights_only=False
    )


def monai_dataset(
    dataset: EnclaveDataset | str,
    version: int | None = None,
    *,
    split: str = "all",
    train: bool | None = None,
    transforms: Any = None,
    pixdim: Sequence[float] | Literal["median"] | None = "median",
    patch_size: Sequence[int] = (96, 96, 96),
    num_samples: int = 2,
    val_fraction: float = 0.2,
    seed: int = 0,
    require_label: bool = True,
    cache: bool | str = "auto",
    num_workers: int | None = None,
    cache_dir: str | Path | None = None,
    memory_limit: int | None = None,
    verbose: bool = True,
) -> Any:
    """A MONAI dataset of image/label dicts whose deterministic part is cached.

    ``split`` is ``"train"``, ``"val"`` or ``"all"`` (by subject, see :func:`split_subjects`);
    random patch transforms apply when ``train`` (default: split is "train"). ``pixdim`` is
    the target voxel spacing in mm, ``"median"`` (the dataset's median) or None (native).

    ``cache``: ``"memory"`` (``CacheDataset``; ``True`` means this), ``"disk"``
    (``PersistentDataset`` under ``cache_dir``, default ``~/.cache/enclave/monai``), ``"none"``
    (plain ``Dataset``; ``False`` means this), or ``"auto"``: memory when the estimated cache
    is at most half the memory limit (``memory_limit`` bytes, default this server's cgroup
    limit), else disk. The choice and its reason are printed (``verbose=False``: logged only).
    """
    import logging

    from enclave.data import cache as caching
    from enclave.data.volumes import _quiet_monai

    _quiet_monai()
    from monai.data import CacheDataset, Dataset

    if isinstance(dataset, str):
        dataset = open_dataset(dataset, version)
    items = monai_items(
        dataset, split=split, val_fraction=val_fraction, seed=seed, require_label=require_label
    )
    with_label = all("label" in i for i in items)
    if train is None:
        train = split == "train"
    if transforms is None:
        spacing = median_spacing(dataset) if pixdim == "median" else pixdim
        transforms = default_transforms(
            train=train,
            modality=dataset.modality,
            pixdim=spacing,
            patch_size=patch_size,
            num_samples=num_samples,
            with_label=with_label,
            label_reader=_label_reader(dataset) if with_label else "NibabelReader",
        )
    limit = (
        caching.MemoryLimit(int(memory_limit), "memory_limit= given")
        if memory_limit is not None
        else caching.memory_limit()
    )
    estimate = caching.estimate_cache_bytes(
        caching.files_bytes(Path(i["image"]) for i in items), with_label=with_label, train=train
    )
    root = Path(cache_dir).expanduser() if cache_dir is not None else caching.cache_root()
    choice = caching.choose_cache(
        cache, estimated_bytes=estimate, limit=limit, disk_free=caching.disk_free(root)
    )
    folder = None
    if choice.mode == "disk":
        key = caching.cache_key(
            dataset.name, dataset.version, dataset.content_hash, transform_hash(transforms)
        )
        folder = caching.prepare_cache_dir(key, root)
    line = choice.describe(f"{dataset.label} {split}", folder)
    logging.getLogger("enclave.data").info(line)
    if verbose:
        print(line, flush=True)
    result: Any
    if choice.mode == "none":
        result = Dataset(items, transform=transforms)
    elif choice.mode == "disk":
        result = _private_persistent_dataset(items, transforms, folder)
    else:
        workers = num_workers if num_workers is not None else min(4, len(items))
        result = CacheDataset(
            items, transform=transforms, cache_rate=1.0, num_workers=workers, progress=False
        )
    result.cache_choice = choice
    result.cache_dir = folder
    return result
