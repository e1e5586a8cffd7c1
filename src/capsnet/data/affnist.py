"""The real affNIST test set (Tieleman 2013), the paper's test of robustness to affine transformations.

affNIST takes the MNIST test digits, puts them on a 40x40 canvas and applies random affine maps: 320,000
images, each of the 10,000 digits under 32 maps, in one MATLAB file inside ``test.mat.zip``. Reading it
needs scipy (``pip install "capsnet[affnist]"``). Without the real file, ``affnist-synthetic``
(:func:`capsnet.data.synthetic.affnist_synthetic`) draws maps from the same ranges.

Its checksum is not pinned yet: capsnet was written where the file could not be fetched. The first
download therefore checks that the zip is whole, records the SHA-256 of what arrived beside the archive
(``test.mat.zip.sha256``), shows it in a warning, and every later load verifies the archive against that
record. Please report the digest you see, so that it can be pinned here.
"""

from __future__ import annotations

import io
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from capsnet._files import write_atomically
from capsnet.data.datasets import checked_data_root, resolve_data_root
from capsnet.data.download import download_file, sha256_file
from capsnet.data.idx import DataError
from capsnet.data.synthetic import AFFNIST_SIZE as SIZE

__all__ = ["AFFNIST_URLS", "load_affnist_test", "download_affnist", "read_affnist_mat"]

AFFNIST_URLS = ("https://www.cs.toronto.edu/~tijmen/affNIST/32x/transformed/test.mat.zip",)
ARCHIVE = "test.mat.zip"
PINNED_SHA256: str | None = None  # see the module docstring
FOLDER = "affnist"


def load_affnist_test(root: str | Path | None = None, *, download: bool = True,
                      progress: bool = True) -> tuple[Tensor, Tensor]:
    """The affNIST test set from ``root/affnist`` (or ``root``), downloaded there first if missing and allowed.

    ``root`` is resolved like the MNIST data root (``--data-dir``, ``$CAPSNET_DATA``, the user cache).

    Returns:
        images ``(320000, 1, 40, 40)`` uint8 and labels ``(320000,)`` int64 (for the published file).
    """
    root = checked_data_root(root)
    path = next((folder / name for folder in (root / FOLDER, root) for name in (ARCHIVE, "test.mat")
                 if (folder / name).is_file()), None)
    if path is not None:
        _check_recorded_digest(path)
    elif download:
        path = download_affnist(root, progress=progress)  # verified, or its digest recorded, as it arrived
    else:
        raise DataError(f"affNIST's {ARCHIVE} (or test.mat) not found in {root / FOLDER} or {root}; run "
                        f"`capsnet download affnist` or point --data-dir at a folder that holds it")
    return read_affnist_mat(path)


def download_affnist(root: str | Path | None = None, *, progress: bool = True) -> Path:
    """Fetch ``test.mat.zip`` into ``root/affnist`` unless it is there (or in ``root``, where loading finds it
    too); check it against the pinned or recorded SHA-256, or record its SHA-256 (see the module doc), also for
    an archive that a download killed before the record left behind."""
    root = resolve_data_root(root)
    dest = next((folder / ARCHIVE for folder in (root / FOLDER, root) if (folder / ARCHIVE).is_file()),
                root / FOLDER / ARCHIVE)
    expected = _expected_digest(dest)
    downloaded = not dest.is_file()
    if downloaded:
        # Against the record too: a mirror that now serves other bytes fails like a corrupt transfer, keeping nothing.
        try:
            download_file(AFFNIST_URLS, dest, expected, progress=progress)
        except DataError as exc:
            if expected is None or PINNED_SHA256:
                raise
            raise DataError(f"{exc} (the expected SHA-256 is the one recorded in {_record_path(dest)} at the first "
                            f"download; remove that file to accept what the mirror serves now)") from None
    elif expected is not None:
        _check_recorded_digest(dest)
    if expected is None:
        _check_archive_complete(dest, downloaded)  # nothing else vouches for it: a cut transfer must not be recorded
        digest = sha256_file(dest)
        write_atomically(_record_path(dest), lambda file: file.write(f"{digest}\n".encode()))
        warnings.warn(f"affNIST's checksum is not pinned in capsnet yet: the SHA-256 of "
                      f"{'the downloaded ' if downloaded else ''}{dest} is "
                      f"{digest}, recorded in {_record_path(dest)} and checked on every later load", stacklevel=2)
    return dest


def _check_archive_complete(archive: Path, downloaded: bool) -> None:
    """Raise ``DataError`` unless ``archive`` is a zip whose members all match their CRCs; delete it if this call
    ``downloaded`` it (an archive that was there before was put there by its owner: theirs to remove)."""
    try:
        with zipfile.ZipFile(archive) as zipped:
            broken = zipped.testzip()
    except (OSError, zipfile.BadZipFile) as exc:
        broken = str(exc)
    if broken is None:
        return
    if downloaded:
        archive.unlink()
        raise DataError(f"the downloaded {archive} is damaged ({broken}); it was removed: download it again")
    raise DataError(f"{archive} is damaged ({broken}); remove or replace it (nothing was deleted), then run "
                    f"`capsnet download affnist` again")


def read_affnist_mat(path: str | Path) -> tuple[Tensor, Tensor]:
    """Parse affNIST's MATLAB file (``test.mat``, or the zip that holds it) into images and labels.

    The file holds a struct ``affNISTdata`` whose ``image`` is ``(1600, n)``, one 40x40 image per column
    stored row by row, and whose ``label_int`` is ``(1, n)``.
    """
    path = Path(path)
    try:
        from scipy.io import loadmat
        from scipy.io.matlab import MatReadError
    except ImportError:
        raise ImportError('reading affNIST needs scipy: pip install "capsnet[affnist]" (in a checkout: '
                          'pip install -e ".[affnist]")') from None
    try:
        if path.suffix == ".zip":
            with zipfile.ZipFile(path) as archive:
                member = next(name for name in archive.namelist() if name.endswith(".mat"))
                data = loadmat(io.BytesIO(archive.read(member)))
        else:
            data = loadmat(path)
        struct = data["affNISTdata"][0, 0]
        images, labels = np.asarray(struct["image"]), np.asarray(struct["label_int"]).reshape(-1)
    except (OSError, ValueError, KeyError, IndexError, StopIteration, NotImplementedError, zipfile.BadZipFile,
            MatReadError) as exc:
        raise DataError(f"{path} is not affNIST's MATLAB file ({type(exc).__name__}: {exc}); remove it and run "
                        f"`capsnet download affnist`, or replace it") from None
    labels_ok = labels.size == 0 or (labels.min() >= 0 and labels.max() <= 9)
    shape_ok = images.ndim == 2 and images.shape[0] == SIZE * SIZE and images.shape[1] == labels.shape[0]
    if images.dtype != np.uint8 or not shape_ok or not labels_ok:
        raise DataError(f"{path}: expected (1600, n) uint8 images and n labels in 0..9, got {images.shape} "
                        f"{images.dtype} images and {labels.shape[0]} labels")
    pictures = np.ascontiguousarray(images.T.reshape(-1, 1, SIZE, SIZE), dtype=np.uint8)  # (n, 1, 40, 40)
    return torch.from_numpy(pictures), torch.from_numpy(labels.astype(np.int64))


def _record_path(archive: Path) -> Path:
    return archive.with_name(archive.name + ".sha256")


def _expected_digest(archive: Path) -> str | None:
    """The pinned SHA-256, else the one recorded beside ``archive`` at its first download, else ``None``."""
    record = _record_path(archive)
    return PINNED_SHA256 or (record.read_text().strip() if record.is_file() else None) or None


def _check_recorded_digest(path: Path) -> None:
    """Compare the archive with the pinned or recorded SHA-256; without either (or for an unzipped ``test.mat``,
    which no digest covers), say that it is unverified."""
    record = _record_path(path)
    expected = _expected_digest(path) if path.name == ARCHIVE else None  # no digest covers an unzipped test.mat
    digest = sha256_file(path)
    if expected is None:
        why = ("no checksum covers an unzipped test.mat (keep test.mat.zip to have it checked)" if path.name != ARCHIVE
               else "capsnet has no pinned affNIST checksum yet")
        warnings.warn(f"{path} is not verified: {why} (its SHA-256 is {digest})", stacklevel=3)
    elif digest != expected:
        raise DataError(f"{path} is corrupt or the wrong file: its SHA-256 is {digest}, expected {expected} "
                        f"({'pinned in capsnet' if PINNED_SHA256 else f'recorded in {record} at download'}); "
                        f"remove or replace it")
