"""Data: MNIST-family datasets, IDX files, verified downloads, batching and the random-shift augmentation.

Nothing here depends on the model or training code.
"""

from capsnet.data.datasets import (
    DATASETS,
    MNIST,
    FashionMNIST,
    download_dataset,
    get_dataset_class,
    resolve_data_root,
)
from capsnet.data.idx import DataError, read_idx, write_idx
from capsnet.data.loader import TensorLoader
from capsnet.data.transforms import random_shift

__all__ = [
    "DATASETS",
    "MNIST",
    "DataError",
    "FashionMNIST",
    "TensorLoader",
    "download_dataset",
    "get_dataset_class",
    "random_shift",
    "read_idx",
    "resolve_data_root",
    "write_idx",
]
