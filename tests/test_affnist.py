"""The real affNIST test set: parsing its MATLAB file, the download with a recorded checksum, --extra-test affnist.

The tests write small files in affNIST's format with scipy and serve them from 127.0.0.1; they never touch the
internet.
"""

from __future__ import annotations

import functools
import re
import http.server
import threading
import warnings
import zipfile

import numpy as np
import pytest
import torch

from capsnet import TrainConfig, Trainer
from capsnet.cli import main
from capsnet.data import DataError
from capsnet.data import affnist
from capsnet.data.download import sha256_file

savemat = pytest.importorskip("scipy.io").savemat


def write_affnist(folder, images: np.ndarray, labels: np.ndarray):
    """``folder/test.mat.zip`` holding ``affNISTdata`` as affNIST stores it: one 40x40 image per column, row by row."""
    folder.mkdir(parents=True, exist_ok=True)
    mat = folder / "test.mat"
    savemat(mat, {"affNISTdata": {"image": images.reshape(len(images), 1600).T, "label_int": labels[None, :]}})
    with zipfile.ZipFile(folder / "test.mat.zip", "w") as archive:
        archive.write(mat, "test.mat")
    mat.unlink()
    return folder / "test.mat.zip"


def sample(n=6, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 40, 40), dtype=np.uint8), rng.integers(0, 10, n).astype(np.uint8)


def test_read_keeps_every_pixel_in_place_and_the_labels(tmp_path):
    images, labels = sample()
    images[0] = 0
    images[0, 3, 17] = 255  # row 3, column 17: a transposed reader would put it at (17, 3)
    got_images, got_labels = affnist.read_affnist_mat(write_affnist(tmp_path, images, labels))
    assert got_images.shape == (6, 1, 40, 40) and got_images.dtype == torch.uint8
    assert torch.equal(got_images[:, 0], torch.from_numpy(images))
    assert got_labels.dtype == torch.int64 and got_labels.tolist() == labels.tolist()
    assert got_images[0, 0].nonzero().tolist() == [[3, 17]]


def test_a_file_that_is_not_affnist_is_named_in_the_error(tmp_path):
    bad = tmp_path / "test.mat.zip"
    bad.write_bytes(b"not a zip")
    with pytest.raises(DataError, match=f"{bad} is not affNIST's MATLAB file"):
        affnist.read_affnist_mat(bad)
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    (wrong / "test.mat").write_bytes(b"junk")  # scipy's own MatReadError: truncated
    with pytest.raises(DataError, match="test.mat is not affNIST's MATLAB file"):
        affnist.read_affnist_mat(wrong / "test.mat")
    savemat(wrong / "test.mat", {"affNISTdata": {"image": np.zeros((784, 3), np.uint8), "label_int": np.zeros((1, 3))}})
    with pytest.raises(DataError, match=r"expected \(1600, n\) uint8 images"):
        affnist.read_affnist_mat(wrong / "test.mat")
    for image_dtype, label in ((np.float64, 1), (np.uint8, -1)):  # scaled pixels, impossible labels
        savemat(wrong / "test.mat", {"affNISTdata": {"image": np.zeros((1600, 2), image_dtype),
                                                     "label_int": np.full((1, 2), label, np.int16)}})
        with pytest.raises(DataError, match="labels in 0..9"):
            affnist.read_affnist_mat(wrong / "test.mat")


@pytest.fixture
def served(tmp_path):
    """A local server over ``tmp_path/www`` holding a small affNIST archive; yields (base URL, images, labels)."""
    images, labels = sample(8, seed=1)
    write_affnist(tmp_path / "www", images, labels)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(tmp_path / "www")))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/", images, labels
    finally:
        httpd.shutdown()
        httpd.server_close()


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_download_records_the_checksum_and_later_loads_check_it(served, tmp_path, monkeypatch):
    base, images, labels = served
    monkeypatch.setattr(affnist, "AFFNIST_URLS", (base + "missing/test.mat.zip", base + "test.mat.zip"))
    root = tmp_path / "data"
    root.mkdir()
    with pytest.warns(UserWarning, match="checksum is not pinned"):
        got_images, got_labels = affnist.load_affnist_test(root, progress=False)
    assert torch.equal(got_images[:, 0], torch.from_numpy(images)) and got_labels.tolist() == labels.tolist()
    archive = root / "affnist" / "test.mat.zip"
    assert (root / "affnist" / "test.mat.zip.sha256").read_text().strip() == sha256_file(archive)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        affnist.load_affnist_test(root, progress=False)  # verified against the record: no warning
    record = (root / "affnist" / "test.mat.zip.sha256").read_text()
    (root / "affnist" / "test.mat.zip.sha256").unlink()  # as when a download is killed between archive and record
    with pytest.warns(UserWarning, match="checksum is not pinned"):
        assert affnist.download_affnist(root, progress=False) == archive  # not fetched again, but recorded
    assert (root / "affnist" / "test.mat.zip.sha256").read_text() == record
    data = archive.read_bytes()
    archive.write_bytes(data[:100] + bytes([data[100] ^ 0xFF]) + data[101:])
    with pytest.raises(DataError, match=f"{archive} is corrupt or the wrong file.*recorded in"):
        affnist.load_affnist_test(root, progress=False)


def test_a_download_again_is_checked_against_the_record(served, tmp_path, monkeypatch):
    base, _, _ = served
    monkeypatch.setattr(affnist, "AFFNIST_URLS", (base + "test.mat.zip",))
    root = tmp_path / "data"
    root.mkdir()
    with pytest.warns(UserWarning, match="checksum is not pinned"):
        archive = affnist.download_affnist(root, progress=False)
    archive.unlink()  # the record stays; the mirror now serves other bytes
    write_affnist(tmp_path / "www", *sample(8, seed=5))
    with pytest.raises(DataError, match=r"SHA-256 mismatch.*recorded in .*test.mat.zip.sha256 at the first download; "
                                        r"remove that file to accept what the mirror serves now"):
        affnist.load_affnist_test(root, progress=False)
    assert not archive.exists()  # nothing unverified kept, nor read
    archive.write_bytes((tmp_path / "www" / "test.mat.zip").read_bytes())  # placed by hand: download checks it too
    with pytest.raises(DataError, match=f"{archive} is corrupt or the wrong file.*recorded in {archive}.sha256"):
        affnist.download_affnist(root, progress=False)


def test_a_damaged_download_is_removed_and_not_recorded(served, tmp_path, monkeypatch):
    base, _, _ = served
    (tmp_path / "www" / "cut.zip").write_bytes((tmp_path / "www" / "test.mat.zip").read_bytes()[:-300])
    monkeypatch.setattr(affnist, "AFFNIST_URLS", (base + "cut.zip",))  # no Content-Length check can catch this one
    with pytest.raises(DataError, match="is damaged .* it was removed: download it again"):
        affnist.download_affnist(tmp_path / "data", progress=False)
    assert list((tmp_path / "data" / "affnist").iterdir()) == []
    mine = tmp_path / "data" / "affnist" / "test.mat.zip"
    mine.write_bytes(b"not a zip")  # put there by its owner, with no record of a download: not ours to delete
    with pytest.raises(DataError, match=r"test.mat.zip is damaged .*; remove or replace it \(nothing was deleted\)"):
        affnist.download_affnist(tmp_path / "data", progress=False)
    assert mine.read_bytes() == b"not a zip" and not (tmp_path / "data" / "affnist" / "test.mat.zip.sha256").exists()


def test_a_local_copy_is_read_without_network_and_without_writing(tmp_path, monkeypatch):
    images, labels = sample()
    folder = tmp_path / "mine"
    write_affnist(folder, images, labels)
    monkeypatch.setattr(affnist, "AFFNIST_URLS", ())  # any download attempt would fail
    with pytest.warns(UserWarning, match="is not verified"):
        got_images, _ = affnist.load_affnist_test(folder, download=False, progress=False)
    assert torch.equal(got_images[:, 0], torch.from_numpy(images))
    assert [p.name for p in folder.iterdir()] == ["test.mat.zip"]
    with pytest.warns(UserWarning, match="the SHA-256 of .*mine/test.mat.zip is"):  # no "downloaded": it was there
        assert affnist.download_affnist(folder, progress=False) == folder / "test.mat.zip"  # found flat, not fetched
    assert sorted(p.name for p in folder.iterdir()) == ["test.mat.zip", "test.mat.zip.sha256"]
    with pytest.raises(DataError, match="run `capsnet download affnist`"):
        affnist.load_affnist_test(tmp_path / "mine" / "..", download=False)


@pytest.mark.filterwarnings("ignore:.*is not verified")
def test_training_reports_the_real_affnist_error_and_evaluate_can_ask_for_it(tmp_path, shared_data, capsys):
    root = tmp_path / "data"
    (root / "mnist").mkdir(parents=True)
    for path in (shared_data / "mnist").glob("*-ubyte.gz"):
        (root / "mnist" / path.name).symlink_to(path)
    images, labels = sample(30, seed=2)
    write_affnist(root / "affnist", images, labels)
    run = tmp_path / "run"
    history = Trainer(TrainConfig(model="capsnet-tiny", data_dir=str(root), canvas=40, max_shift=6, extra_test="affnist",
                                  limit_train=64, limit_test=20, batch_size=32, epochs=1, progress=False,
                                  output_dir=str(run))).fit()
    assert 0 <= history[0]["affnist_error"] <= 1
    assert main(["evaluate", str(run / "last.pt"), "--limit-test", "20", "--extra-test", "affnist-synthetic"]) == 0
    assert "affnist-synthetic: error" in capsys.readouterr().out
    assert main(["evaluate", str(run / "last.pt"), "--limit-test", "20"]) == 0
    assert re.search(r"^  affnist: error \d+\.\d\d% on 20 images$", capsys.readouterr().out, re.M)  # cut to 20 of 30
    (root / "affnist").rename(root / "gone")  # the real set out of reach: the run's own test set still evaluates
    assert main(["evaluate", str(run / "last.pt"), "--limit-test", "20", "--extra-test", "none"]) == 0
    assert "test error" in (out := capsys.readouterr().out) and "affnist: error" not in out
