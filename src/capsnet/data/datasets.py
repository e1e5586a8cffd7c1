"""MNIST and Fashion-MNIST as whole-split uint8 tensors, found on disk or downloaded and verified.

Where the files are looked for, in order (``resolve_data_root`` picks the root):

1. ``<root>/<name>/`` (``name`` is ``"mnist"`` or ``"fashion-mnist"``); downloads go here.
2. ``<root>/`` itself, if it holds the split's two files.

Each file may be the official ``.gz`` archive or the uncompressed IDX file. Files are checked against the
published SHA-256 of the archive or of the uncompressed file (the verdict is cached in memory for the
process) and then parsed. Using files that are already present needs no network and writes nothing, so a
read-only folder works.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from pathlib import Path
from typing import ClassVar, NamedTuple

import torch

from capsnet._checks import check_choice
from capsnet.data.download import download_file, sha256_file
from capsnet.data.idx import DataError, read_idx

__all__ = [
    "DATASETS",
    "FashionMNIST",
    "MNIST",
    "Resource",
    "download_dataset",
    "get_dataset_class",
    "resolve_data_root",
]

ENV_VAR = "CAPSNET_DATA"
IMAGE_SIZE = (28, 28)

# ((path, size, mtime_ns), the published SHA-256) of files that matched it in this process; never stored on disk.
# The published file is part of the key: Fashion-MNIST's files have MNIST's names, and a file that passed as one
# must not pass as the other.
_VERIFIED: set[tuple[tuple[str, int, int], str]] = set()


class Resource(NamedTuple):
    """One published file: the archive name on the mirrors and the SHA-256 of the archive and of its content."""

    filename: str
    sha256: str
    raw_sha256: str

    def local_names(self) -> tuple[str, ...]:
        """Names the file may have on disk: the archive, then the uncompressed file in both usual spellings."""
        raw = self.filename.removesuffix(".gz")
        return (self.filename, raw, raw.replace("-idx", ".idx"))


def resolve_data_root(root: str | Path | None = None) -> Path:
    """Return the data root: ``root`` if given, else ``$CAPSNET_DATA``, else the user cache folder.

    The cache folder is ``$XDG_CACHE_HOME/capsnet``, or ``~/.cache/capsnet`` when that variable is unset.
    Nothing is created or checked here.

    Example:
        >>> resolve_data_root("/data")
        PosixPath('/data')
    """
    if root is not None:
        return Path(root).expanduser()
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME")
    return (Path(cache).expanduser() if cache else Path.home() / ".cache") / "capsnet"


class MNIST:
    """The MNIST handwritten digits (LeCun et al. 1998): 60,000 training and 10,000 test images.

    The whole split is held in memory as one tensor (47 MB for the training images).

    Args:
        root: data root (see ``resolve_data_root``); if given, or set through ``CAPSNET_DATA``, it must exist.
        train: the training split if true, else the test split.
        download: fetch missing files from ``mirrors`` into ``<root>/<name>/``.
        progress: show a download progress bar (only on a terminal).

    Attributes:
        images: uint8 tensor of pixel values 0..255.
        labels: int64 tensor of class indices into ``classes``.
        split: ``"train"`` or ``"test"``.
        root: the resolved data root.
        folder: the folder the files were read from.

    Shape:
        - images: ``(n, 1, 28, 28)``
        - labels: ``(n,)``

    Raises:
        DataError: the root does not exist, files are missing (and ``download`` is false or every mirror
            failed), or a file is corrupt. The message says where we looked and how to fix it.

    Example:
        >>> test_set = MNIST(train=False)  # doctest: +SKIP
        >>> image, label = test_set[0]  # doctest: +SKIP
        >>> image.shape, label  # doctest: +SKIP
        (torch.Size([1, 28, 28]), 7)
    """

    name: ClassVar[str] = "mnist"
    mirrors: ClassVar[list[str]] = [
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ]
    # split -> (images, labels); checksums from shared/data/SOURCES.md.
    resources: ClassVar[dict[str, tuple[Resource, Resource]]] = {
        "train": (
            Resource(
                "train-images-idx3-ubyte.gz",
                "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
                "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            ),
            Resource(
                "train-labels-idx1-ubyte.gz",
                "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
                "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            ),
        ),
        "test": (
            Resource(
                "t10k-images-idx3-ubyte.gz",
                "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
                "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            ),
            Resource(
                "t10k-labels-idx1-ubyte.gz",
                "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
                "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
            ),
        ),
    }
    classes: ClassVar[list[str]] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]

    def __init__(
        self, root: str | Path | None = None, *, train: bool = True, download: bool = True, progress: bool = True
    ) -> None:
        self.split = "train" if train else "test"
        self.root = checked_data_root(root)
        self.folder = self._ensure_split(self.root, self.split, download=download, progress=progress)
        self.images, self.labels = self._load(self.folder, self.split)

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        """Return ``(image, label)``: a uint8 ``(1, 28, 28)`` view and a Python int."""
        return self.images[index], int(self.labels[index])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, size={len(self)}, root='{self.root}')"

    @classmethod
    def download(cls, root: str | Path | None = None, *, progress: bool = True) -> Path:
        """Make sure every split is present and verified under ``root``, downloading what is missing.

        Unlike the constructor, this creates ``root`` if it does not exist: writing there is its purpose.

        Returns:
            The folder holding the training files (normally ``<root>/<name>``).
        """
        root = resolve_data_root(root)
        folders = [cls._ensure_split(root, split, download=True, progress=progress) for split in cls.resources]
        for split, folder in zip(cls.resources, folders):
            for resource in cls.resources[split]:
                _verify(_present(folder, resource), resource)
        return folders[0]

    @classmethod
    def _ensure_split(cls, root: Path, split: str, *, download: bool, progress: bool) -> Path:
        """Return the folder holding ``split``'s files, downloading missing ones into ``root/name`` if allowed.

        Files directly in ``root`` that are another dataset's (MNIST's, for Fashion-MNIST: the names are the same)
        are passed over, not reported as corrupt: ``root`` may be MNIST's folder and hold other datasets below it.
        """
        for folder in (root / cls.name, root):
            paths = [_present(folder, r) for r in cls.resources[split]]
            if None in paths:
                continue
            other = None if folder != root else next(
                filter(None, (_other_datasets_file(path, r) for path, r in zip(paths, cls.resources[split]))), None)
            if other is None:
                return folder
            if not download:
                raise DataError(f"{cls._not_found(root, split)} ({root} holds {other} under the same name)")
        if not download:
            raise cls._not_found(root, split)
        target = root / cls.name
        for resource in cls.resources[split]:
            if _present(target, resource) is None:
                dest = download_file(
                    [mirror + resource.filename for mirror in cls.mirrors], target / resource.filename,
                    resource.sha256, progress=progress,
                )
                _remember(dest, resource)
        return target

    @classmethod
    def _load(cls, folder: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Verify and parse ``split``'s two files; return images ``(n, 1, 28, 28)`` uint8 and labels int64."""
        image_res, label_res = cls.resources[split]
        image_path, label_path = _present(folder, image_res), _present(folder, label_res)
        _verify(image_path, image_res)
        _verify(label_path, label_res)
        images = read_idx(image_path, dtype=torch.uint8, ndim=3)
        labels = read_idx(label_path, dtype=torch.uint8, ndim=1)
        if tuple(images.shape[1:]) != IMAGE_SIZE:
            raise DataError(f"{image_path} holds images of size {tuple(images.shape[1:])}, expected {IMAGE_SIZE}")
        if images.shape[0] != labels.shape[0]:
            raise DataError(f"{image_path} holds {images.shape[0]} images but {label_path} {labels.shape[0]} labels")
        if labels.numel() and int(labels.max()) >= len(cls.classes):
            raise DataError(f"{label_path} holds label {int(labels.max())}, expected 0..{len(cls.classes) - 1}")
        return images.unsqueeze(1), labels.long()  # (n, 1, 28, 28), (n,)

    @classmethod
    def _not_found(cls, root: Path, split: str) -> DataError:
        names = " and ".join(r.filename for r in cls.resources[split])
        return DataError(
            f"{cls.name} {split} files ({names}, gzipped or not) not found in {root / cls.name} or {root}; "
            f"run `capsnet download {cls.name}`, pass download=True, or point --data-dir or the {ENV_VAR} "
            f"environment variable at a folder that holds them"
        )


class FashionMNIST(MNIST):
    """Fashion-MNIST (Xiao, Rasul & Vollgraf 2017): Zalando article images in MNIST's format and sizes."""

    name: ClassVar[str] = "fashion-mnist"
    mirrors: ClassVar[list[str]] = [
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    ]
    resources: ClassVar[dict[str, tuple[Resource, Resource]]] = {
        "train": (
            Resource(
                "train-images-idx3-ubyte.gz",
                "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
                "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            ),
            Resource(
                "train-labels-idx1-ubyte.gz",
                "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
                "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            ),
        ),
        "test": (
            Resource(
                "t10k-images-idx3-ubyte.gz",
                "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
                "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            ),
            Resource(
                "t10k-labels-idx1-ubyte.gz",
                "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
                "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
            ),
        ),
    }
    classes: ClassVar[list[str]] = [
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ]


DATASETS: dict[str, type[MNIST]] = {"mnist": MNIST, "fashion-mnist": FashionMNIST}


def get_dataset_class(name: str) -> type[MNIST]:
    """Return the dataset class registered as ``name`` (a key of ``DATASETS``).

    Raises:
        ValueError: unknown name; the message lists the valid ones.
    """
    return DATASETS[check_choice(name, "dataset", DATASETS)]


def download_dataset(name: str, root: str | Path | None = None, *, progress: bool = True) -> Path:
    """Fetch and verify all files of dataset ``name`` ahead of training; present files are only verified.

    Returns:
        The folder holding the files (normally ``<root>/<name>``).
    """
    return get_dataset_class(name).download(root, progress=progress)


def checked_data_root(root: str | Path | None) -> Path:
    """Resolve the root; one the user chose (argument or environment variable) must already exist."""
    resolved = resolve_data_root(root)
    from_env = root is None and bool(os.environ.get(ENV_VAR))
    if (root is not None or from_env) and not resolved.is_dir():
        source = f" (from {ENV_VAR})" if from_env else ""
        raise DataError(f"data directory {resolved}{source} does not exist or is not a folder")
    return resolved


def _present(folder: Path, resource: Resource) -> Path | None:
    """The first of ``resource``'s local names that is a file in ``folder``, else ``None``."""
    for name in resource.local_names():
        if (folder / name).is_file():
            return folder / name
    return None


def _key(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns


def _remember(path: Path, resource: Resource) -> None:
    _VERIFIED.add((_key(path), resource.sha256))


def _remembered(path: Path, resource: Resource) -> bool:
    return (_key(path), resource.sha256) in _VERIFIED


def _other_datasets_file(path: Path, resource: Resource) -> str | None:
    """What ``path`` is when it is another dataset's file (``_owner_of``), else ``None``: ``resource``'s, unknown."""
    if _remembered(path, resource):
        return None
    digest = _sha256(path)
    if digest in (resource.sha256, resource.raw_sha256):
        _remember(path, resource)  # its own file: the load need not hash it again
        return None
    return _owner_of(digest)


def _sha256(path: Path) -> str:
    try:
        return sha256_file(path)
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None


def _verify(path: Path, resource: Resource) -> None:
    """Raise ``DataError`` unless ``path`` holds the published content, archived or uncompressed.

    The form is told from the content, not the name, as :func:`read_idx` reads it.
    """
    if _remembered(path, resource):
        return
    expected = resource.sha256 if path.name == resource.filename else resource.raw_sha256
    digest = _sha256(path)
    # Either published form under either name, or a re-compressed archive (other gzip header or level) of the
    # published content, is what read_idx will read correctly.
    if digest in (resource.sha256, resource.raw_sha256) or _content_sha256(path) == resource.raw_sha256:
        digest = expected
    if digest != expected:
        other = _owner_of(digest)
        why = f"it is {other}" if other else f"its SHA-256 is {digest}, expected {expected}"
        raise DataError(f"{path} is corrupt or the wrong file: {why}; remove or replace it (nothing was deleted)")
    _remember(path, resource)


def _content_sha256(path: Path) -> str | None:
    """SHA-256 of a gzip file's decompressed content, or ``None`` if it is not valid gzip."""
    digest = hashlib.sha256()
    try:
        with gzip.open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    except (OSError, EOFError, zlib.error):
        return None
    return digest.hexdigest()


def _owner_of(digest: str) -> str | None:
    """Name the known file with this checksum, so a file of the other dataset is reported as such."""
    for name, cls in DATASETS.items():
        for resources in cls.resources.values():
            for r in resources:
                if digest in (r.sha256, r.raw_sha256):
                    return f"{name}'s {r.filename.removesuffix('.gz')}"
    return None
