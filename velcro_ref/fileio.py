"""Atomic file writing: every output goes to a temporary name and is renamed into place. And the
decoding of JSON and TOML documents, whatever a damaged one holds, as ValueError."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import tomllib
from collections import Counter
from pathlib import Path

from .errors import UsageError

BOM = "\ufeff"  # a byte order mark, as UTF-8 text decodes it


def parse_json(text):
    """json.loads; a document nested too deeply to decode, or an object giving a key twice (which of
    the values a reader takes is its own choice), raises ValueError, as any other bad one. A
    leading byte order mark (some editors write one) is skipped, as RFC 8259 allows."""
    try:
        if isinstance(text, str):  # bytes (an HDF5 attribute of fixed length): json finds a BOM itself
            text = text.removeprefix(BOM)
        return json.loads(text, object_pairs_hook=_unique_keys)
    except RecursionError:
        raise ValueError("nested too deeply to decode") from None


def _unique_keys(pairs) -> dict:
    twice = repeated(k for k, _ in pairs)
    if twice:
        raise ValueError(f"key {twice[0]!r} given twice in one object")
    return dict(pairs)


def repeated(names) -> list:
    """The names given more than once, sorted: where a reader would take one of them by its own rule."""
    counts = Counter(names)
    return sorted(n for n, c in counts.items() if c > 1)


def parse_toml(text: str) -> dict:
    """tomllib.loads; ValueError for any bad document: TOMLDecodeError, an integer beyond
    Python's digit limit, nesting too deep to decode. A leading byte order mark is skipped."""
    try:
        return tomllib.loads(text.removeprefix(BOM))
    except RecursionError:
        raise ValueError("arrays or tables nested too deeply") from None


def checked_path(path, error, what) -> Path:
    """`path` (a str, or an os.PathLike giving one) as a Path; else `error`, one line naming the
    type found (bytes, an open file), as the `what` (e.g. "model file") it was to name."""
    name = os.fspath(path) if isinstance(path, os.PathLike) else path
    if not isinstance(name, str):
        raise error(f"the {what} path expects a str or os.PathLike, found {type(path).__name__}")
    return Path(name)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; on success rename it onto `path`, else delete it.

    An interrupted run therefore leaves the old file or the new one, never half of one; the file is
    synced before the rename and the directory after, so a power cut cannot leave an empty or
    partial file under the final name either. The file gets the permissions open() would give it
    (0o666 less the umask). Raises OSError naming `path`, UsageError for a path that is none.
    """
    path = checked_path(path, UsageError, "output file")
    made = []  # the temporary file, named before it is made: deleted on every way out but the rename
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _create_temp(path, made)
        yield made[0]
        _fsync(made[0])
        os.replace(made[0], path)
        _fsync(path.parent)
    except OSError as e:
        raise _naming(path, e) from e
    finally:
        if made:
            try:  # one call: a signal Python takes where a check returned would leave the file
                os.unlink(made[0])
            except FileNotFoundError:  # renamed
                pass


def _create_temp(path: Path, made: list) -> None:
    """Make an empty temporary file beside `path`, its name put in `made` before the file is made: an
    interrupt where os.open returns (the file made, no name returned yet) leaves it to the caller's
    clean-up all the same."""
    # not tempfile.mkstemp: its mode 0o600 would reach the final file; os.open applies the umask itself
    try:
        name_max = os.pathconf(path.parent, "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255
    while True:
        name = f".{path.name}.{secrets.token_hex(6)}.part"
        if len(os.fsencode(name)) > name_max:  # a name the file system takes must work: use a short one
            name = f".velcro-{secrets.token_hex(6)}.part"
        made[:] = [path.with_name(name)]
        try:
            os.close(os.open(made[0], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return
        except FileExistsError:  # another's file: not ours to delete
            made.clear()


def _fsync(path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _naming(path: Path, e: OSError) -> OSError:
    """The same kind of OSError, its message naming the final path rather than the temporary one."""
    # the system's words for an errno: the HDF5 library's message for it spans lines and names the temporary file
    reason = os.strerror(e.errno) if e.errno else (e.strerror or e)
    err = type(e)(f"{path}: cannot write ({reason})")
    err.errno = e.errno
    return err


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)
