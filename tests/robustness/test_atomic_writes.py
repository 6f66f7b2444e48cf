"""Files written through fileio.atomic_path: usual permissions, synced before and after the rename, errors that
name the file the user asked for (not its temporary name)."""

import errno
import os

import numpy as np
import pytest
from robust_util import velcro_process

from velcro_ref import fileio
from velcro_ref.fileio import write_text
from velcro_ref.masks import MaskSet, save_masks
from velcro_ref.stats import SiteStats, Stats, save_stats


def write_stats(path):
    save_stats(Stats("fp", {"a": SiteStats.of_batch(np.ones((2, 3, 4), np.float32))}, (1,), 2, "x"), path)


def write_masks(path):
    save_masks(MaskSet("fp", {"a": (np.zeros((3, 4), bool), np.zeros((3, 4), np.float32))}), path)


WRITERS = {"text": lambda path: write_text(path, "hello\n"), "stats": write_stats, "masks": write_masks}


@pytest.fixture
def umask():
    """Set the process umask for one test and restore it afterwards."""
    previous = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(previous)


@pytest.mark.parametrize("writer", WRITERS, ids=list(WRITERS))
@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_written_file_has_the_permissions_open_would_give(tmp_path, umask, writer, mask, mode):
    umask(mask)
    out = tmp_path / "out"
    WRITERS[writer](out)
    assert out.stat().st_mode & 0o777 == mode


def test_file_is_synced_before_the_rename_and_the_directory_after(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.fstat(fd).st_ino))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.stat(src).st_ino))
        real_replace(src, dst)

    monkeypatch.setattr(fileio.os, "fsync", fsync)
    monkeypatch.setattr(fileio.os, "replace", replace)
    out = tmp_path / "out.txt"
    write_text(out, "hello\n")
    file_ino, dir_ino = out.stat().st_ino, tmp_path.stat().st_ino
    assert events == [("fsync", file_ino), ("replace", file_ino), ("fsync", dir_ino)]


def test_failed_rename_names_the_final_path_and_leaves_no_temporary_file(velcro, tmp_path, stats_file, monkeypatch):
    out = tmp_path / "m.h5"

    def replace(src, dst):  # a directory appears where the file should go, after the options were checked
        os.mkdir(dst)
        return real_replace(src, dst)

    real_replace = os.replace
    monkeypatch.setattr(fileio.os, "replace", replace)
    line = velcro("compress", stats_file, "--ratio", "0.3", "-o", out).error_line(f"error: {out}: cannot write")
    assert ".part" not in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.h5"]


def test_failed_write_names_the_final_path_and_leaves_no_temporary_file(tmp_path):
    out = tmp_path / "out.txt"
    with pytest.raises(OSError) as e, fileio.atomic_path(out) as tmp:
        tmp.write_text("half of it")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))  # as a full disk would
    assert str(e.value) == f"{out}: cannot write ({os.strerror(errno.ENOSPC)})"
    assert e.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []


HDF5_WRITES = {
    "compress": lambda stats, out: ("compress", stats, "--ratio", "0.3", "-o", out),
    "zoo": lambda stats, out: ("zoo", "resnet18", "--input-size", "16", "--width", "0.125", "-o", out),
}


@pytest.mark.parametrize("command", HDF5_WRITES)
def test_an_hdf5_file_that_cannot_be_written_is_one_line_and_the_old_file_stays(tmp_path, stats_file, command):
    """A write that fails half-way (here a file-size limit, as on a full disk) ends in one line, exit 1; the
    HDF5 library's own failed writes used to crash the process on close (exit 139, hundreds of lines)."""
    out = tmp_path / "out.h5"
    args = HDF5_WRITES[command](stats_file, out)
    assert velcro_process(*args).code == 0
    old = out.read_bytes()
    res = velcro_process(*args, file_limit=len(old) // 2)
    line = res.error_line(f"error: {out}: cannot write (")
    assert res.err.strip() == line
    assert out.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.h5"]


def test_a_write_error_is_named_in_the_systems_words_not_the_librarys(tmp_path):
    """h5py's OSError for a full disk carries the HDF5 library's message: several lines, the temporary name."""
    hdf5_message = "Can't synchronously write data (file write failed: time = ...\n, filename = '.out.h5.1a2b.part')"
    out = tmp_path / "out.h5"
    with pytest.raises(OSError) as e, fileio.atomic_path(out) as tmp:
        raise OSError(errno.ENOSPC, hdf5_message, str(tmp))
    assert str(e.value) == f"{out}: cannot write ({os.strerror(errno.ENOSPC)})"


@pytest.mark.parametrize("where", ["os.open returns", "the file is closed"])
def test_an_interrupt_as_the_temporary_file_is_made_leaves_none_behind(tmp_path, monkeypatch, where):
    """Python takes a signal where a call returns: one taken as os.open returns (the file made, its name
    not yet handed back) or at the close after it left the temporary file, outside the clean-up."""
    real_open, real_close = os.open, os.close

    def interrupted_open(*args):
        fd = real_open(*args)
        if where == "os.open returns":
            real_close(fd)
            raise KeyboardInterrupt
        return fd

    def interrupted_close(fd):
        real_close(fd)
        raise KeyboardInterrupt

    monkeypatch.setattr(fileio.os, "open", interrupted_open)
    if where == "the file is closed":
        monkeypatch.setattr(fileio.os, "close", interrupted_close)
    with pytest.raises(KeyboardInterrupt):
        with fileio.atomic_path(tmp_path / "out.txt"):
            pass
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_an_interrupt_in_the_clean_up_of_a_failed_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    """The write failed (a full disk) and a signal came as the clean-up ran: a check whether the temporary
    file exists, then its deletion, gave Python a call's return to take it at, the file left."""
    real_exists = os.path.exists

    def interrupted_exists(path):
        real_exists(path)
        raise KeyboardInterrupt

    with pytest.raises((OSError, KeyboardInterrupt)):  # the write's error, or the interrupt on old code
        with fileio.atomic_path(tmp_path / "out.txt"):
            monkeypatch.setattr(fileio.os.path, "exists", interrupted_exists)
            raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []
