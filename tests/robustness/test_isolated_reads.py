"""The loaders read files in a child process, so an HDF5 library that hangs or crashes on a corrupt file
becomes a VelcroError naming the file instead of a hung or dead `velcro`."""

import os
import signal
import struct
import time

import h5py
import numpy as np
import pytest

from velcro_ref import h5io, model_io
from velcro_ref.errors import MaskError, ModelError, StatsError
from velcro_ref.h5io import read_isolated
from velcro_ref.masks import load_masks
from velcro_ref.stats import load_stats

pytestmark = pytest.mark.skipif(not h5io.ISOLATE, reason="needs os.fork")


@pytest.fixture
def short_timeout(monkeypatch):
    monkeypatch.setattr(h5io, "LOAD_TIMEOUT_S", 1.5)


def test_result_and_exceptions_come_back_from_the_child():
    assert read_isolated(lambda: {"a": np.arange(3)}, "f.h5", ModelError)["a"].tolist() == [0, 1, 2]
    big = read_isolated(lambda: np.ones(3_000_000), "f.h5", ModelError)  # more than a pipe buffer
    assert big.sum() == 3_000_000

    def fail():
        raise StatsError("f.h5: site 'relu': bad")

    with pytest.raises(StatsError, match="site 'relu': bad") as e:
        read_isolated(fail, "f.h5", ModelError)
    assert any("raised in the loader process" in note for note in e.value.__notes__)


def test_a_read_that_never_finishes_becomes_an_error(short_timeout):
    t0 = time.monotonic()
    with pytest.raises(MaskError, match=r"^m\.h5: reading did not finish within 1\.5 s"):
        read_isolated(lambda: time.sleep(3600), "m.h5", MaskError)
    assert time.monotonic() - t0 < 30


def test_a_read_that_crashes_becomes_an_error():
    with pytest.raises(ModelError, match=r"^m\.h5: the HDF5 library crashed reading it \(SIGSEGV\)"):
        read_isolated(lambda: os.kill(os.getpid(), signal.SIGSEGV), "m.h5", ModelError)


def vlen_string_file(path, fmt):
    """A file in HDF5's default layout: variable-length string attributes in an unchecksummed global heap."""
    with h5py.File(path, "w") as f:
        f.attrs["format"] = fmt
        f.attrs["format_version"] = 1
        f.attrs["fingerprint"] = "0" * 64
        f.create_group("sites").create_group("relu").attrs["name"] = "relu"
    return path


def grow_first_heap_object(path):
    """Claim 1 KiB more for the first global heap object than its collection holds; the HDF5 library (1.14)
    then loops forever reading the attribute."""
    data = bytearray(path.read_bytes())
    heap = data.find(b"GCOL")
    assert heap > 0
    (size,) = struct.unpack_from("<Q", data, heap + 24)
    struct.pack_into("<Q", data, heap + 24, size + 1024)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "load, fmt, error",
    [(load_stats, "velcro-stats", StatsError), (load_masks, "velcro-masks", MaskError)],
    ids=["stats", "masks"],
)
def test_corrupt_global_heap_is_an_error_not_a_hang(tmp_path, short_timeout, load, fmt, error):
    path = vlen_string_file(tmp_path / "corrupt.h5", fmt)
    grow_first_heap_object(path)
    t0 = time.monotonic()
    with pytest.raises(error) as e:
        load(path)
    assert str(e.value).startswith(f"{path}: ")
    assert time.monotonic() - t0 < 30


def test_model_files_carry_checksummed_metadata_without_a_global_heap(tmp_path, small_graph):
    path = tmp_path / "m.h5"
    model_io.save_model(small_graph, path)
    data = path.read_bytes()
    assert data[8] >= 2  # superblock version 2+: checksummed (HDF5 1.8 format)
    assert b"GCOL" not in data
    assert model_io.load_graph(path).fingerprint() == small_graph.fingerprint()
