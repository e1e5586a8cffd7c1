"""Data: MNIST-family datasets and those registered by name, IDX files, verified downloads, batching, the
random-shift augmentation, the paper's synthetic sets built from MNIST (MultiMNIST pairs, affNIST-like affine
maps), and the real affNIST test set.

Nothing here depends on the model or training code.
"""

from capsnet.data.affnist import download_affnist, load_affnist_test
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
from capsnet.data.registry import Loader, Split, list_datasets, load_split, register_dataset
from capsnet.data.synthetic import MultiDigitBatch, overlay_pairs, place_on_canvas, random_affine
from capsnet.data.transforms import random_shift, shift_images

__all__ = [
    "DATASETS",
    "MNIST",
    "DataError",
    "FashionMNIST",
    "Loader",
    "MultiDigitBatch",
    "Split",
    "TensorLoader",
    "download_affnist",
    "download_dataset",
    "get_dataset_class",
    "list_datasets",
    "load_affnist_test",
    "load_split",
    "overlay_pairs",
    "place_on_canvas",
    "random_affine",
    "random_shift",
    "read_idx",
    "register_dataset",
    "resolve_data_root",
    "shift_images",
    "write_idx",
]
