"""Dataset classes: file lookup, verification, error messages (on tiny fake files) and the real data facts.

Real-data tests read ``shared/data`` beside the repository root and skip when it is absent.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
from pathlib import Path

import pytest
import torch

from capsnet.data import (
    DATASETS,
    MNIST,
    DataError,
    FashionMNIST,
    get_dataset_class,
    resolve_data_root,
    write_idx,
)
from capsnet.data import datasets as datasets_module
from capsnet.data.datasets import Resource

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_shared_data = pytest.mark.skipif(
    not (SHARED_DATA / "mnist").is_dir() or not (SHARED_DATA / "fashion-mnist").is_dir(),
    reason=f"real MNIST / Fashion-MNIST archives not found in {SHARED_DATA}",
)

# ---------------------------------------------------------------- tiny fake dataset

N_TINY = 6


def _tiny_arrays(n: int = N_TINY) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=generator)
    return images, torch.arange(n, dtype=torch.uint8) % 10


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A dataset class ``Tiny`` whose checksums match fake test-split files kept in ``Tiny.source``."""
    source = tmp_path_factory.mktemp("tiny-source")
    images, labels = _tiny_arrays()
    test_files = []
    for name, tensor in (("t10k-images-idx3-ubyte", images), ("t10k-labels-idx1-ubyte", labels)):
        write_idx(source / name, tensor)
        write_idx(source / f"{name}.gz", tensor)
        test_files.append(Resource(f"{name}.gz", _sha(source / f"{name}.gz"), _sha(source / name)))

    class Tiny(MNIST):
        name = "tiny"
        mirrors = []
        # The train split points at files nobody writes, so it is always "missing".
        resources = {"train": MNIST.resources["train"], "test": tuple(test_files)}

    Tiny.source = source
    return Tiny


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _place(cls, folder: Path, *, gz: bool = True, spelling=lambda name: name) -> Path:
    """Copy the fake test files into ``folder`` (archives or uncompressed) and return the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for resource in cls.resources["test"]:
        name = resource.filename if gz else resource.filename.removesuffix(".gz")
        shutil.copy(cls.source / name, folder / spelling(name))
    return folder


def test_loads_archives_from_root_slash_name(tiny, tmp_path):
    _place(tiny, tmp_path / "tiny")
    data = tiny(tmp_path, train=False, download=False)
    images, labels = _tiny_arrays()
    assert data.images.shape == (N_TINY, 1, 28, 28) and data.images.dtype == torch.uint8
    assert data.labels.dtype == torch.int64
    assert torch.equal(data.images[:, 0], images) and torch.equal(data.labels, labels.long())
    assert len(data) == N_TINY
    image, label = data[3]
    assert image.shape == (1, 28, 28) and type(label) is int and label == 3
    assert data.split == "test" and data.root == tmp_path and data.folder == tmp_path / "tiny"
    assert repr(data) == f"Tiny(name='tiny', split='test', size={N_TINY}, root='{tmp_path}')"


@pytest.mark.parametrize("spelling", [lambda n: n, lambda n: n.replace("-idx", ".idx")], ids=["dash", "dot"])
def test_loads_uncompressed_files_directly_in_root(tiny, tmp_path, spelling):
    _place(tiny, tmp_path, gz=False, spelling=spelling)
    data = tiny(tmp_path, train=False, download=False)
    assert data.folder == tmp_path and len(data) == N_TINY


def test_root_slash_name_wins_over_root(tiny, tmp_path):
    _place(tiny, tmp_path)
    _place(tiny, tmp_path / "tiny", gz=False)
    assert tiny(tmp_path, train=False, download=False).folder == tmp_path / "tiny"


def test_recompressed_archive_is_accepted_by_content(tiny, tmp_path):
    folder = _place(tiny, tmp_path / "tiny")
    labels = folder / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(gzip.decompress(labels.read_bytes()), compresslevel=9, mtime=12345))
    assert len(tiny(tmp_path, train=False, download=False)) == N_TINY


def test_uncompressed_file_under_the_archive_name_is_accepted_by_content(tiny, tmp_path):
    folder = _place(tiny, tmp_path / "tiny")
    labels = folder / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.decompress(labels.read_bytes()))
    assert len(tiny(tmp_path, train=False, download=False)) == N_TINY


def test_archive_under_the_uncompressed_name_is_accepted_by_content(tiny, tmp_path):
    folder = _place(tiny, tmp_path / "tiny", gz=False)
    labels = folder / "t10k-labels-idx1-ubyte"
    labels.write_bytes(gzip.compress(labels.read_bytes()))
    assert len(tiny(tmp_path, train=False, download=False)) == N_TINY


@pytest.mark.parametrize("gz", [True, False], ids=["archive", "uncompressed"])
def test_corrupt_file_is_reported_and_kept(tiny, tmp_path, gz):
    folder = _place(tiny, tmp_path / "tiny", gz=gz)
    name = "t10k-images-idx3-ubyte" + (".gz" if gz else "")
    content = bytearray((folder / name).read_bytes())
    content[-1] ^= 0xFF
    (folder / name).write_bytes(bytes(content))
    with pytest.raises(DataError, match="corrupt") as info:
        tiny(tmp_path, train=False, download=True)
    assert str(folder / name) in str(info.value)
    assert (folder / name).read_bytes() == bytes(content)  # user files are never deleted


def test_checksum_verdict_is_cached_in_memory(tiny, tmp_path, monkeypatch):
    _place(tiny, tmp_path / "tiny")
    tiny(tmp_path, train=False, download=False)
    calls = []
    monkeypatch.setattr(datasets_module, "sha256_file", lambda path: calls.append(path))
    tiny(tmp_path, train=False, download=False)
    assert calls == []


@pytest.mark.parametrize(
    ("images", "labels", "match"),
    [
        (torch.zeros(3, 28, 28, dtype=torch.uint8), torch.zeros(2, dtype=torch.uint8), "3 images but"),
        (torch.zeros(2, 28, 27, dtype=torch.uint8), torch.zeros(2, dtype=torch.uint8), r"size \(28, 27\)"),
        (torch.zeros(2, 28, 28, dtype=torch.uint8), torch.tensor([0, 10], dtype=torch.uint8), "label 10"),
        (torch.zeros(2, 784, dtype=torch.uint8), torch.zeros(2, dtype=torch.uint8), "2-D array, expected 3-D"),
    ],
    ids=["count", "size", "label", "rank"],
)
def test_inconsistent_files(tiny, tmp_path, monkeypatch, images, labels, match):
    monkeypatch.setattr(datasets_module, "_verify", lambda path, resource: None)  # test parsing checks only
    write_idx(tmp_path / "t10k-images-idx3-ubyte", images)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels)
    with pytest.raises(DataError, match=match):
        tiny(tmp_path, train=False, download=False)


def test_missing_files_without_download_explains_the_fixes(tiny, tmp_path):
    with pytest.raises(DataError) as info:
        tiny(tmp_path, train=False, download=False)
    message = str(info.value)
    assert str(tmp_path / "tiny") in message and str(tmp_path) in message
    assert "t10k-images-idx3-ubyte.gz" in message
    for fix in ("capsnet download tiny", "--data-dir", "CAPSNET_DATA", "download=True"):
        assert fix in message
    assert "\n" not in message
    assert list(tmp_path.iterdir()) == []


def test_explicit_root_must_exist(tmp_path):
    missing = tmp_path / "nope"
    for download in (False, True):
        with pytest.raises(DataError, match=f"data directory {missing} does not exist"):
            MNIST(missing, download=download)
    assert not missing.exists()


def test_root_from_environment_must_exist(tmp_path, monkeypatch):
    monkeypatch.setenv("CAPSNET_DATA", str(tmp_path / "nope"))
    with pytest.raises(DataError, match="from CAPSNET_DATA"):
        MNIST(download=False)


def test_missing_default_cache_is_not_found_not_created(tmp_path, monkeypatch):
    monkeypatch.delenv("CAPSNET_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(DataError, match="not found"):
        MNIST(train=False, download=False)
    assert not (tmp_path / "cache").exists()


def test_resolve_data_root_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv("CAPSNET_DATA", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_data_root() == tmp_path / "home" / ".cache" / "capsnet"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_data_root() == tmp_path / "xdg" / "capsnet"
    monkeypatch.setenv("CAPSNET_DATA", str(tmp_path / "env"))
    assert resolve_data_root() == tmp_path / "env"
    assert resolve_data_root(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_root(str(tmp_path / "arg")) == tmp_path / "arg"


def test_registry():
    assert DATASETS == {"mnist": MNIST, "fashion-mnist": FashionMNIST}
    assert get_dataset_class("fashion-mnist") is FashionMNIST
    with pytest.raises(ValueError, match="'fashion-mnist', 'mnist'"):
        get_dataset_class("cifar10")


def test_fashion_mnist_overrides_only_the_data_facts():
    own = {k for k in vars(FashionMNIST) if not k.startswith("__")}
    assert own == {"name", "mirrors", "resources", "classes"}
    assert FashionMNIST.classes[0] == "T-shirt/top" and FashionMNIST.classes[9] == "Ankle boot"
    assert len(FashionMNIST.classes) == len(MNIST.classes) == 10
    for cls in (MNIST, FashionMNIST):
        assert set(cls.resources) == {"train", "test"}
        for resource in (r for pair in cls.resources.values() for r in pair):
            assert resource.filename.endswith("-ubyte.gz")
            assert len(resource.sha256) == len(resource.raw_sha256) == 64
        assert all(m.endswith("/") for m in cls.mirrors)


# ---------------------------------------------------------------- real data


def _snapshot(folder: Path) -> list[tuple[str, int, int]]:
    entries = [folder, *sorted(folder.rglob("*"))]
    return [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in entries]


@pytest.fixture(scope="module")
def mnist_train():
    if not (SHARED_DATA / "mnist").is_dir():
        pytest.skip(f"real MNIST archives not found in {SHARED_DATA}")
    return MNIST(SHARED_DATA, train=True, download=False)


@needs_shared_data
def test_mnist_train_facts(mnist_train):
    assert mnist_train.images.shape == (60000, 1, 28, 28) and mnist_train.images.dtype == torch.uint8
    assert mnist_train.labels.shape == (60000,) and mnist_train.labels.dtype == torch.int64
    assert mnist_train.labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert int(mnist_train.images[0].sum()) == 27525
    counts = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert torch.bincount(mnist_train.labels).tolist() == counts
    assert mnist_train.folder == SHARED_DATA / "mnist"


@needs_shared_data
def test_mnist_test_facts_and_nothing_written():
    before = _snapshot(SHARED_DATA)
    test_set = MNIST(SHARED_DATA, train=False, download=True)  # present files: no download, no writes
    assert test_set.images.shape == (10000, 1, 28, 28)
    assert test_set.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert int(test_set.images[0].sum()) == 18454
    assert len(FashionMNIST(SHARED_DATA, train=False, download=True)) == 10000
    assert _snapshot(SHARED_DATA) == before


@needs_shared_data
def test_fashion_mnist_train_facts():
    train = FashionMNIST(SHARED_DATA, train=True, download=False)
    assert train.images.shape == (60000, 1, 28, 28)
    assert train.labels[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    assert int(train.images[0].sum()) == 76247
    assert "fashion-mnist" in repr(train) and "'train'" in repr(train) and "60000" in repr(train)


@needs_shared_data
def test_root_from_environment(monkeypatch):
    monkeypatch.setenv("CAPSNET_DATA", str(SHARED_DATA))
    test_set = MNIST(train=False, download=False)
    assert test_set.root == SHARED_DATA and len(test_set) == 10000


@needs_shared_data
def test_file_of_the_other_dataset_is_named(tmp_path):
    folder = tmp_path / "mnist"
    folder.mkdir()
    shutil.copy(SHARED_DATA / "mnist" / "t10k-images-idx3-ubyte.gz", folder)
    shutil.copy(SHARED_DATA / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz", folder)
    with pytest.raises(DataError, match="it is fashion-mnist's t10k-labels-idx1-ubyte"):
        MNIST(tmp_path, train=False, download=False)
    assert len(os.listdir(folder)) == 2  # nothing removed


@needs_shared_data
def test_mnist_files_directly_in_root_are_not_taken_for_fashion_mnist(tmp_path, monkeypatch):
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (tmp_path / name).symlink_to(SHARED_DATA / "mnist" / name)
    assert MNIST(tmp_path, train=False, download=False).folder == tmp_path  # its checksums now cached as MNIST's
    with pytest.raises(DataError, match=r"fashion-mnist test files .* not found in .*fashion-mnist or .*; run .* "
                                        r"\(.* holds mnist's t10k-images-idx3-ubyte under the same name\)"):
        FashionMNIST(tmp_path, train=False, download=False)
    fetched = []

    def download_file(urls, dest, sha256, progress):  # a mirror serving the real files
        fetched.append(dest.name)
        dest.parent.mkdir(parents=True, exist_ok=True)
        return Path(shutil.copy(SHARED_DATA / "fashion-mnist" / dest.name, dest))

    monkeypatch.setattr(datasets_module, "download_file", download_file)
    fashion = FashionMNIST(tmp_path, train=False, progress=False)
    assert fashion.folder == tmp_path / "fashion-mnist" and len(fetched) == 2 and len(fashion) == 10000
    assert fashion.images.float().mean() > 70  # clothes cover more of the image than digits (MNIST: ~33)
