"""HDF5 plumbing shared by model, statistics, mask and golden-vector files: names as link names, the
checksummed file format and header, and reading that checks every value and survives a corrupt file.

Which files use what is in docs/formats.md.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import select
import signal
import time
import traceback
import warnings
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np

from .fileio import checked_path, parse_json
from .fpenv import default_env
from .jsonout import numpy_scalar
from .ops.base import MAX_ELEMENTS


def escape_key(key: str) -> str:
    """A name as an HDF5 link name: '/' would open a group, so it is stored as %2F, and % as %25; a
    name of only dots ('.', '..'), which HDF5 takes as a path, has its dots stored as %2E."""
    out = key.replace("%", "%25").replace("/", "%2F")
    return out.replace(".", "%2E") if out.strip(".") == "" else out


def unescape_key(h5_name: str) -> str:
    return h5_name.replace("%2F", "/").replace("%2E", ".").replace("%25", "%")


# Files are written in the HDF5 1.8 format, whose metadata (superblock, object headers, attribute heaps)
# carries checksums, and text attributes are fixed-length strings stored in those checksummed headers.
# The older default stores variable-length strings in a global heap without checksums, where a flipped
# bit can make the HDF5 library loop forever.
LIBVER = ("v108", "v108")


def write_text_attr(obj, name: str, text: str) -> None:
    """Store `text` as a fixed-length UTF-8 string attribute (see LIBVER)."""
    data = text.encode("utf-8", "backslashreplace")  # a file name that is not UTF-8 keeps its bytes as escapes
    obj.attrs.create(name, data=np.bytes_(data), dtype=h5py.string_dtype("utf-8", max(1, len(data))))


# What h5py raises for a corrupt or unexpected file; the loaders turn these into their own error type.
H5_ERRORS = (OSError, RuntimeError, KeyError, ValueError, TypeError, AttributeError, IndexError, OverflowError)
_MISSING = object()


TIMEOUT_ENV = "VELCRO_LOAD_TIMEOUT_S"
MAX_TIMEOUT_S = 86400.0


def timeout_from_env(default=300.0) -> float | None:
    """Seconds from $VELCRO_LOAD_TIMEOUT_S: the default when unset, None when it is not a number
    in (0, MAX_TIMEOUT_S] (the CLI refuses that before any work; a library caller gets the default)."""
    text = os.environ.get(TIMEOUT_ENV)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        return None
    return value if 0 < value <= MAX_TIMEOUT_S else None


# A read that takes longer than this is taken to be the HDF5 library stuck on a corrupt file.
LOAD_TIMEOUT_S = timeout_from_env() or 300.0
# Loaders read files in a forked child process (see read_isolated); tests that measure the loader's own
# allocations turn this off.
ISOLATE = hasattr(os, "fork")


def read_isolated(read, path, error):
    """Return read(), run in a forked child process that hands its result (or exception) back by pickle.

    The HDF5 library can loop forever or crash on a corrupt file, in C code that no Python signal
    handler interrupts. In a child, a read that does not finish within LOAD_TIMEOUT_S or that kills
    the child becomes `error` naming `path`, and the parent goes on. Without fork (or if fork fails)
    read() runs here.
    """
    if not ISOLATE:
        return read()
    rfd, wfd = os.pipe()
    try:
        with warnings.catch_warnings():
            # Python 3.12 warns about fork in a process with threads (BLAS, numba); the child only runs
            # h5py and NumPy on this thread and leaves by os._exit.
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
    except OSError:
        os.close(rfd)
        os.close(wfd)
        return read()
    if pid == 0:  # the child: never returns, never runs the parent's cleanup or atexit handlers
        status = 0
        try:
            os.close(rfd)
            try:
                payload = (True, read())
            except BaseException as e:
                e.add_note("raised in the loader process:\n" + traceback.format_exc())
                payload = (False, e)
            try:
                data = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception as e:
                data = pickle.dumps((False, RuntimeError(f"loader result cannot be pickled: {e!r}")))
            with os.fdopen(wfd, "wb") as out:
                out.write(data)
        except BaseException:
            status = 1
        finally:
            os._exit(status)
    os.close(wfd)
    chunks = []
    deadline = time.monotonic() + LOAD_TIMEOUT_S
    try:
        with os.fdopen(rfd, "rb") as src:
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([src], [], [], left)[0]:
                    raise error(
                        f"{path}: reading did not finish within {LOAD_TIMEOUT_S:g} s (a corrupt file can make "
                        "the HDF5 library loop forever; VELCRO_LOAD_TIMEOUT_S sets this limit)"
                    )
                chunk = os.read(src.fileno(), 1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status) or not chunks:
        how = f"exit {os.WEXITSTATUS(status)}" if os.WIFEXITED(status) else _signal_name(os.WTERMSIG(status))
        raise error(f"{path}: the HDF5 library crashed reading it ({how}); the file is corrupt")
    ok, value = pickle.loads(b"".join(chunks))
    if ok:
        return value
    raise value


def _signal_name(number) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _describe(v) -> str:
    """A short description of an unexpected attribute value for an error message."""
    text = " ".join(repr(v).split())
    text = text if len(text) <= 60 else text[:57] + "..."
    return f"{type(v).__name__} {text}"


def open_h5(path, error, what):
    """Open an HDF5 file read-only; raise `error` naming the file if it is missing or not HDF5."""
    path = Path(path)
    if not path.exists():
        raise error(f"{path}: no such file")
    if path.is_dir():
        raise error(f"{path}: is a directory, expects a {what} file")
    if not path.is_file():
        raise error(f"{path}: not a regular file, expects a {what} file")
    try:
        ok = h5py.is_hdf5(path)
    except H5_ERRORS as e:
        raise error(f"{path}: cannot be read ({e})") from e
    if not ok:
        raise error(f"{path}: not an HDF5 file (expects a {what} file)")
    try:
        return h5py.File(path, "r")
    except H5_ERRORS as e:
        cut = re.search(r"truncated file: eof = (\d+), .*stored_eof = (\d+)", str(e))
        if cut:
            raise error(f"{path}: truncated: {cut[1]} bytes of the {cut[2]} its header expects") from e
        raise error(f"{path}: cannot be read as HDF5 (truncated or corrupt?): {e}") from e


def read_attr(obj, name, error, where=""):
    """Value of attribute `name` of a file, group or dataset, or _MISSING; `error` if it cannot be read."""
    try:
        if name not in obj.attrs:
            return _MISSING
        return obj.attrs[name]
    except H5_ERRORS as e:
        raise error(f"{where}attribute '{name}' cannot be read ({e})") from e


def _attr(obj, name, error, where, default, convert):
    """convert(value) of attribute `name`; `default` if absent, else `error` when absent; `error`
    when convert refuses the value (a ValueError saying what it expects)."""
    v = read_attr(obj, name, error, where)
    if v is _MISSING:
        if default is None:
            raise error(f"{where}attribute '{name}' is missing")
        return default
    try:
        return convert(v)
    except ValueError as e:
        raise error(f"{where}attribute '{name}' expects {e}") from None


def _text(v) -> str:
    if isinstance(v, bytes):
        try:
            v = v.decode()
        except UnicodeDecodeError:
            raise ValueError("UTF-8 text, found undecodable bytes") from None
    if not isinstance(v, str):
        raise ValueError(f"a string, found {_describe(v)}")
    return v


def _integer(v) -> int:
    if isinstance(v, np.ndarray) and v.shape == ():
        v = v[()]
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise ValueError(f"an integer, found {_describe(v)}")
    return int(v)


def attr_str(obj, name, error, where="", default=None) -> str:
    """A string attribute (UTF-8 bytes accepted); `default` if absent, else `error` when absent."""
    return _attr(obj, name, error, where, default, _text)


def attr_int(obj, name, error, where="", default=None) -> int:
    """An integer attribute; `default` if absent, else `error` when absent."""
    return _attr(obj, name, error, where, default, _integer)


def attr_json(obj, name, error, kind, where="", default=None):
    """A JSON attribute decoded to `kind` (dict or list); `default` if absent, else `error`."""
    if default is not None and read_attr(obj, name, error, where) is _MISSING:
        return default
    text = attr_str(obj, name, error, where)
    try:
        v = parse_json(text)
    except ValueError as e:
        raise error(f"{where}attribute '{name}' is not valid JSON ({e})") from None
    if not isinstance(v, kind):
        raise error(f"{where}attribute '{name}' expects a JSON {kind.__name__}, found {type(v).__name__}")
    return v


def check_format(f, fmt, version, error) -> int:
    """Check the file's `format` and `format_version` attributes; return the version."""
    found = attr_str(f, "format", error, default="")
    if found != fmt:
        raise error(f"format attribute expects '{fmt}', found {found or 'none'!r} (not a {fmt} file)")
    v = attr_int(f, "format_version", error)
    if v > version:
        raise error(f"format_version {v} is newer than supported (this build reads {fmt} versions 1..{version})")
    if v < 1:
        raise error(f"format_version expects 1..{version}, found {v}")
    return v


def member(group, name, kind, error, where=""):
    """group[name] if it is a `kind` (h5py.Group or h5py.Dataset), else `error` naming what was found."""
    try:
        obj = group.get(name)
    except H5_ERRORS as e:
        raise error(f"{where}'{name}' cannot be read ({e})") from e
    if obj is None:
        raise error(f"{where}'{name}' is missing")
    if not isinstance(obj, kind):
        expect = "group" if kind is h5py.Group else "dataset"
        raise error(f"{where}'{name}' expects an HDF5 {expect}, found {type(obj).__name__}")
    return obj


def site_groups(f, error):
    """(name, group, "site 'name': ") for every group under /sites of a stats or mask file, the
    name from the group's `name` attribute (default its key); `error` for a bad member or a name
    stored twice."""
    seen = set()
    for key in member(f, "sites", h5py.Group, error, "group "):
        sg = member(f["sites"], key, h5py.Group, error, "site ")
        name = attr_str(sg, "name", error, f"site group '{key}': ", default=key)
        if name in seen:
            raise error(f"site '{name}' is stored twice")
        seen.add(name)
        yield name, sg, f"site '{name}': "


def check_dataset(ds, error, where, dtype=None, max_elements=MAX_ELEMENTS):
    """Check a dataset's shape (size within max_elements) and dtype before anything is read."""
    shape = ds.shape
    if shape is None:
        raise error(f"{where}expects an array, found an empty dataspace")
    if float(np.prod([float(d) for d in shape])) > max_elements:
        raise error(f"{where}shape {shape} exceeds {max_elements} elements")
    if dtype is not None and ds.dtype != dtype:
        raise error(f"{where}expects dtype {np.dtype(dtype)}, found {ds.dtype}")
    return ds


def read_dataset(ds, error, where):
    """Read a whole (checked) dataset into memory."""
    try:
        return ds[()]
    except H5_ERRORS as e:
        raise error(f"{where}cannot be read (truncated or corrupt?): {e}") from e


def write_header(f, fmt: str, version: int, fingerprint: str, **texts) -> None:
    """The attributes every velcro file starts with: format, format_version, fingerprint (of the
    model), and each keyword as a text attribute (dicts and lists as JSON; `provenance` gets the
    time of this writing, in place of any `written` it holds from a file it was read from)."""
    write_text_attr(f, "format", fmt)
    f.attrs["format_version"] = version
    write_text_attr(f, "fingerprint", fingerprint)
    for name, value in texts.items():
        if name == "provenance":
            kept = {k: v for k, v in value.items() if k != "written"}
            value = {"written": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **kept}
        write_text_attr(f, name, value if isinstance(value, str) else json.dumps(value, default=numpy_scalar))


@contextmanager
def create(path):
    """An h5py.File for writing at `path` (a temporary name from fileio.atomic_path), in LIBVER.

    The file is built in memory and written to `path` by Python when the block ends: the HDF5 library
    never writes to the disk itself. Where its own writes fail (a full disk), closing the file makes the
    library crash the process (a segfault after hundreds of lines of messages); Python's write raises
    an OSError, which atomic_path names and the CLI reports in one line.
    """
    f = h5py.File(path, "w", libver=LIBVER, driver="core", backing_store=False)
    try:
        yield f
        f.flush()
        image = f.id.get_file_image()
    finally:
        f.close()
    with open(path, "wb") as out:
        out.write(image)


@default_env()  # HDF5 and Python's float parsing assume it
def load_checked(path, error, fmt: str, what: str, read):
    """read(f) on the HDF5 file at `path` (a `what` file of format `fmt`), in a forked child
    (read_isolated); every problem becomes `error` naming the file."""
    path = checked_path(path, error, f"{what} file")  # not bytes, an open h5py.File

    def run():
        f = open_h5(path, error, fmt)
        try:
            with f:
                return read(f)
        except error as e:
            msg = str(e)
            raise error(msg if msg.startswith(f"{path}: ") else f"{path}: {msg}") from e
        except H5_ERRORS as e:
            raise error(f"{path}: corrupt or unreadable {what} file ({type(e).__name__}: {e})") from e

    return read_isolated(run, path, error)
