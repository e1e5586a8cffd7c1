"""Read and write IDX files, the format MNIST and Fashion-MNIST are published in.

An IDX file is a 4-byte magic number, one big-endian ``uint32`` per dimension, then the values in C order,
big-endian. The magic is ``00 00 <dtype code> <rank>``: ``0x00000803`` is a 3-D ``uint8`` array (images),
``0x00000801`` a 1-D ``uint8`` array (labels). Files may be gzip-compressed; we detect that from the
content (magic bytes ``1f 8b``), not from the file name.
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np
import torch

__all__ = ["DataError", "read_idx", "write_idx"]

_GZIP_MAGIC = b"\x1f\x8b"

# IDX dtype code -> (big-endian numpy dtype as stored, torch dtype we return)
_CODES: dict[int, tuple[str, torch.dtype]] = {
    0x08: (">u1", torch.uint8),
    0x09: (">i1", torch.int8),
    0x0B: (">i2", torch.int16),
    0x0C: (">i4", torch.int32),
    0x0D: (">f4", torch.float32),
    0x0E: (">f8", torch.float64),
}
_CODE_OF_DTYPE = {torch_dtype: code for code, (_, torch_dtype) in _CODES.items()}


class DataError(RuntimeError):
    """A data file or folder is missing, corrupt or cannot be downloaded.

    The message is one line that names the file (or URLs) and says what is wrong and how to fix it.
    """


def read_idx(
    path: str | Path, *, dtype: torch.dtype | None = None, ndim: int | None = None
) -> torch.Tensor:
    """Read an IDX file, gzip-compressed or raw, into a tensor.

    Args:
        path: the file. Compression is detected from its first two bytes, so the name does not matter.
        dtype: if given, the element type the file must hold (e.g. ``torch.uint8``).
        ndim: if given, the rank the file must have (3 for images, 1 for labels).

    Returns:
        A new tensor with the dims and element type stored in the file (native byte order).

    Raises:
        DataError: the file is not valid gzip, has a bad magic number, is truncated or has extra bytes,
            or does not hold the requested ``dtype`` / ``ndim``. The message names the file.

    Example:
        >>> import tempfile, os
        >>> folder = tempfile.TemporaryDirectory()
        >>> path = os.path.join(folder.name, "labels-idx1-ubyte.gz")
        >>> write_idx(path, torch.tensor([5, 0, 4], dtype=torch.uint8))
        >>> read_idx(path, dtype=torch.uint8, ndim=1)
        tensor([5, 0, 4], dtype=torch.uint8)
        >>> folder.cleanup()
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise DataError(f"{path} is not an IDX file: it holds only {len(data)} bytes, less than the 4-byte magic")
    code, rank = data[2], data[3]
    if data[0] != 0 or data[1] != 0 or code not in _CODES:
        raise DataError(
            f"{path} is not an IDX file: magic 0x{data[:4].hex()} should be 0x0000 followed by a dtype code "
            f"({', '.join(f'0x{c:02x}' for c in _CODES)}) and the rank"
        )
    np_dtype, torch_dtype = _CODES[code]
    _check_expected(path, torch_dtype, rank, dtype, ndim)
    header = 4 + 4 * rank
    if len(data) < header:
        raise DataError(f"{path} is truncated: its header needs {header} bytes for {rank} dims, found {len(data)}")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=rank, offset=4))
    expected = math.prod(dims) * np.dtype(np_dtype).itemsize
    found = len(data) - header
    if found < expected:
        raise DataError(f"{path} is truncated: expected {expected} bytes of data, found {found}")
    if found > expected:
        raise DataError(
            f"{path} has {found - expected} unexpected trailing bytes: dims {dims} need {expected} bytes of data, "
            f"found {found}"
        )
    array = np.frombuffer(data, dtype=np_dtype, count=math.prod(dims), offset=header).reshape(dims)
    # astype copies into native byte order and gives a writable array, which torch.from_numpy wants.
    return torch.from_numpy(array.astype(array.dtype.newbyteorder("="), copy=True))


def write_idx(path: str | Path, tensor: torch.Tensor) -> None:
    """Write ``tensor`` as an IDX file, gzip-compressed if ``path`` ends in ``.gz``.

    Args:
        path: the file to create (overwritten if it exists).
        tensor: at least 1-D; dtype uint8, int8, int16, int32, float32 or float64.

    Raises:
        ValueError: the dtype has no IDX code, the tensor is 0-D or has more than 255 dims.
    """
    if tensor.dtype not in _CODE_OF_DTYPE:
        valid = ", ".join(str(d) for d in _CODE_OF_DTYPE)
        raise ValueError(f"IDX cannot store dtype {tensor.dtype}; valid dtypes are {valid}")
    if not 1 <= tensor.dim() <= 255:
        raise ValueError(f"IDX needs a tensor with 1 to 255 dims, got shape {tuple(tensor.shape)}")
    code = _CODE_OF_DTYPE[tensor.dtype]
    header = bytes([0, 0, code, tensor.dim()]) + np.asarray(tensor.shape, dtype=">u4").tobytes()
    body = tensor.detach().cpu().contiguous().numpy().astype(_CODES[code][0]).tobytes()
    payload = header + body
    if str(path).endswith(".gz"):
        # mtime=0 makes the archive depend on the content only (reproducible test fixtures).
        payload = gzip.compress(payload, mtime=0)
    Path(path).write_bytes(payload)


def _read_bytes(path: Path) -> bytes:
    """Return the file's content, decompressed in memory when it is gzip (files are at most ~50 MB raw)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if data[:2] != _GZIP_MAGIC:
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path} is not a valid gzip file ({exc}); remove it and download it again") from exc


def _check_expected(
    path: Path, found_dtype: torch.dtype, found_ndim: int, dtype: torch.dtype | None, ndim: int | None
) -> None:
    """Raise ``DataError`` when the header announces another element type or rank than the caller needs."""
    if dtype is not None and found_dtype != dtype:
        raise DataError(f"{path} holds {found_dtype} values, expected {dtype}")
    if ndim is not None and found_ndim != ndim:
        raise DataError(f"{path} holds a {found_ndim}-D array, expected {ndim}-D")
