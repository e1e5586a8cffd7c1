"""IDX reading and writing on small files written by the tests themselves."""

from __future__ import annotations

import gzip

import pytest
import torch

from capsnet.data import DataError, read_idx, write_idx


@pytest.mark.parametrize("name", ["images-idx3-ubyte", "images-idx3-ubyte.gz"])
def test_uint8_images_round_trip(tmp_path, name):
    images = torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8)
    path = tmp_path / name
    write_idx(path, images)
    assert path.read_bytes()[:2] == (b"\x1f\x8b" if name.endswith(".gz") else b"\x00\x00")
    out = read_idx(path, dtype=torch.uint8, ndim=3)
    assert out.dtype == torch.uint8
    assert torch.equal(out, images)


def test_header_is_the_standard_magic_and_big_endian_dims(tmp_path):
    path = tmp_path / "labels"
    write_idx(path, torch.arange(3, dtype=torch.uint8))
    assert path.read_bytes() == bytes.fromhex("00000801 00000003 000102")


@pytest.mark.parametrize("dtype", [torch.int8, torch.int16, torch.int32, torch.float32, torch.float64])
def test_other_dtypes_round_trip_in_native_byte_order(tmp_path, dtype):
    values = (torch.randn(2, 3, 4) * 100).to(dtype)
    write_idx(tmp_path / "x.gz", values)
    out = read_idx(tmp_path / "x.gz")
    assert out.dtype == dtype
    assert torch.equal(out, values)
    out.add_(1)  # the result must be a writable tensor of its own


def test_compression_is_detected_from_content_not_name(tmp_path):
    labels = torch.tensor([7, 2, 1], dtype=torch.uint8)
    write_idx(tmp_path / "real.gz", labels)
    write_idx(tmp_path / "real-raw", labels)
    (tmp_path / "gzipped-without-suffix").write_bytes((tmp_path / "real.gz").read_bytes())
    (tmp_path / "raw-with-suffix.gz").write_bytes((tmp_path / "real-raw").read_bytes())
    assert torch.equal(read_idx(tmp_path / "gzipped-without-suffix"), labels)
    assert torch.equal(read_idx(tmp_path / "raw-with-suffix.gz"), labels)


def _raises_naming(path, match):
    """Assert ``read_idx(path)`` raises a one-line DataError that names the file and matches ``match``."""
    with pytest.raises(DataError, match=match) as info:
        read_idx(path)
    message = str(info.value)
    assert str(path) in message
    assert "\n" not in message
    return message


@pytest.mark.parametrize("magic", ["01000801", "00010801"])  # each of the two zero bytes
def test_wrong_magic(tmp_path, magic):
    path = tmp_path / "bad-magic"
    path.write_bytes(bytes.fromhex(magic + "00000001 05"))
    _raises_naming(path, "not an IDX file")


def test_unknown_dtype_code(tmp_path):
    path = tmp_path / "bad-code"
    path.write_bytes(bytes.fromhex("00000701 00000001 05"))
    _raises_naming(path, "0x00000701")


def test_too_short_for_magic(tmp_path):
    path = tmp_path / "tiny"
    path.write_bytes(b"\x00\x00")
    _raises_naming(path, "not an IDX file")


def test_truncated_header(tmp_path):
    path = tmp_path / "short-header"
    path.write_bytes(bytes.fromhex("00000803 0000ea60"))  # rank 3 but only one dim
    _raises_naming(path, "truncated")


def test_truncated_data_reports_expected_and_found_bytes(tmp_path):
    path = tmp_path / "train-images.gz"
    header = bytes.fromhex("00000803 0000ea60 0000001c 0000001c")  # 60000 x 28 x 28
    path.write_bytes(gzip.compress(header + bytes(12)))
    message = _raises_naming(path, "truncated")
    assert "expected 47040000 bytes of data, found 12" in message


def test_extra_bytes(tmp_path):
    path = tmp_path / "extra"
    write_idx(path, torch.zeros(4, dtype=torch.uint8))
    path.write_bytes(path.read_bytes() + b"\x00\x00")
    _raises_naming(path, "2 unexpected trailing bytes")


def test_wrong_count_in_header(tmp_path):
    path = tmp_path / "labels.gz"
    path.write_bytes(gzip.compress(bytes.fromhex("00000801 00000005") + bytes(4)))  # says 5 labels, holds 4
    _raises_naming(path, "expected 5 bytes of data, found 4")


def test_broken_gzip(tmp_path):
    path = tmp_path / "broken.gz"
    write_idx(path, torch.zeros(1000, dtype=torch.uint8))
    path.write_bytes(path.read_bytes()[:15])
    _raises_naming(path, "not a valid gzip file")


def test_missing_file(tmp_path):
    _raises_naming(tmp_path / "nope", "cannot read")


def test_expected_dtype_and_rank_are_enforced(tmp_path):
    path = tmp_path / "labels"
    write_idx(path, torch.zeros(3, dtype=torch.uint8))
    with pytest.raises(DataError, match="1-D array, expected 3-D"):
        read_idx(path, ndim=3)
    write_idx(path, torch.zeros(3, dtype=torch.int32))
    with pytest.raises(DataError, match="holds torch.int32 values, expected torch.uint8"):
        read_idx(path, dtype=torch.uint8)


def test_write_rejects_unsupported_tensors(tmp_path):
    with pytest.raises(ValueError, match="cannot store dtype torch.int64"):
        write_idx(tmp_path / "x", torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="1 to 255 dims"):
        write_idx(tmp_path / "x", torch.tensor(1, dtype=torch.uint8))


def test_data_error_is_a_runtime_error():
    assert issubclass(DataError, RuntimeError)
