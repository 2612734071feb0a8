"""Dataset access and training lineage inside a user server.

    import enclave.data as ed
    ed.list_datasets()                       # what is granted to me
    ds = ed.open_dataset("demo-ct")          # latest granted version
    ds.items[0].image()                      # a series as a 3D MetaTensor (RAS, mm)
    train = ed.monai_dataset(ds, split="train", patch_size=(96, 96, 96))
    with ed.training_run("unet", params={...}, datasets=[ds]) as run:
        ...; run.save(model, "unet.pt")
    ed.lineage("~/outputs/unet.pt")

Importing this package is light (standard library, PyYAML): MONAI, torch, pandas and pydicom
load inside the functions that need them.
"""

from enclave.data.dataset import EnclaveDataset, Item, open_dataset
from enclave.data.lineage import (
    Lineage,
    LineageError,
    TrainingRun,
    lineage,
    runs,
    training_run,
)
from enclave.data.mounts import (
    DatasetAccessError,
    DatasetNotFound,
    DatasetNotGranted,
    GrantedVersion,
    datasets_root,
    list_datasets,
    outputs_root,
)


def monai_dataset(*args, **kwargs):  # noqa: ANN201
    """A cached MONAI dataset of a granted version (see ``enclave.data.monai_data``)."""
    from enclave.data.monai_data import monai_dataset as build

    return build(*args, **kwargs)


def training_device():  # noqa: ANN201
    """CUDA + AMP when this server has a GPU, else CPU (see ``enclave.data.monai_data``)."""
    from enclave.data.monai_data import training_device as pick

    return pick()


__all__ = [
    "DatasetAccessError",
    "DatasetNotFound",
    "DatasetNotGranted",
    "EnclaveDataset",
    "GrantedVersion",
    "Item",
    "Lineage",
    "LineageError",
    "TrainingRun",
    "datasets_root",
    "lineage",
    "list_datasets",
    "monai_dataset",
    "open_dataset",
    "outputs_root",
    "runs",
    "training_device",
    "training_run",
]
