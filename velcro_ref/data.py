"""Fashion-MNIST loading (IDX .gz files), class selection, preprocessing and the specialized tasks."""

import gzip
import hashlib
import numbers
import os
import pathlib
import zlib
from collections.abc import Mapping

import numpy as np

from velcro_ref.errors import DataError, InputError
from velcro_ref.fileio import checked_path, parse_toml
from velcro_ref.fpenv import default_env

CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
SETUP_COMMAND = "apt-get install -y dataset-fashion-mnist"
ENV_VAR = "VELCRO_DATA"
TASKS_PATH = pathlib.Path(__file__).with_name("tasks.toml")

SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
SPLIT_SIZES = {"train": 60000, "test": 10000}
IMAGE_SHAPE = (28, 28)
# IDX magic: two zero bytes, a type code (0x08 = unsigned byte) and the number of dimensions.
IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801

_CACHE = {}


def data_dir_of(data_dir=None) -> pathlib.Path:
    """The Fashion-MNIST directory `resolve_data_dir` reads, whether or not its files are there."""
    return _chosen_dir(data_dir)[0]


def _chosen_dir(data_dir):
    """(directory, where it comes from, how to fix a missing file there): `data_dir`, else
    $VELCRO_DATA, else DEBIAN_DIR, with ~ expanded."""
    install = f"install it with '{SETUP_COMMAND}'"
    if data_dir is not None:  # the command's --data-dir, the API's data_dir
        source, fix = "the directory given", f"give a directory holding it, or {install} and give none"
    elif os.environ.get(ENV_VAR):
        data_dir, source = os.environ[ENV_VAR], f"${ENV_VAR}"
        fix = f"set ${ENV_VAR} to a directory holding it, or {install} and unset ${ENV_VAR}"
    else:
        data_dir, source, fix = DEBIAN_DIR, "the default", f"{install} or set ${ENV_VAR} to a directory holding it"
    return checked_path(data_dir, DataError, "data folder").expanduser(), source, fix


def resolve_data_dir(data_dir=None, split=None):
    """Return the Fashion-MNIST directory: `data_dir`, else $VELCRO_DATA, else DEBIAN_DIR.

    The files of `split` ("train" or "test"; both when None) must exist there.
    Raises DataError naming the directory searched, the missing file and the set-up command.
    """
    directory, source, fix = _chosen_dir(data_dir)
    splits = SPLIT_FILES if split is None else (_check_split(split),)
    for name in (f for s in splits for f in SPLIT_FILES[s]):
        if not (directory / name).is_file():
            found = "is not a regular file" if (directory / name).exists() else "not found"
            raise DataError(f"Fashion-MNIST file {name} {found} in {directory} ({source}); {fix}")
    return directory


def load_fashion_mnist(split="train", data_dir=None):
    """Load one split of Fashion-MNIST.

    Returns (images, labels): images uint8 (N, 28, 28), labels int64 (N,), N = 60000 (train) or
    10000 (test, the t10k files). Parsed arrays are cached per (directory, split) and returned
    read-only, so repeated calls are cheap and cannot corrupt the cache; copy before writing.
    Raises DataError for a missing directory or file, a bad split, or a malformed/truncated file.
    """
    split = _check_split(split)
    directory = resolve_data_dir(data_dir, split).resolve()
    key = (str(directory), split)
    image_file, label_file = (directory / name for name in SPLIT_FILES[split])
    files = (_signature(image_file), _signature(label_file))  # a long-lived process (a Dask worker)
    if key not in _CACHE or _CACHE[key][0] != files:  # reads files replaced since it last read them
        images = _read_idx(image_file, IMAGES_MAGIC, (SPLIT_SIZES[split], *IMAGE_SHAPE))
        labels = _read_idx(label_file, LABELS_MAGIC, (SPLIT_SIZES[split],)).astype(np.int64)
        if labels.max() >= len(CLASS_NAMES):
            raise DataError(f"{label_file}: labels must be 0-{len(CLASS_NAMES) - 1}, found {labels.max()}")
        images.setflags(write=False)
        labels.setflags(write=False)
        _CACHE[key] = (files, (images, labels))
    return _CACHE[key][1]


def _signature(path) -> tuple | None:
    """What changes when a file is written or replaced: device, inode, size, modification time and
    status change time (which a copy keeping the time, `cp -p`, still sets; of the file a symlink
    points to); None where it cannot be read (the read then names the problem)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _check_split(split):
    if split not in SPLIT_FILES:
        raise DataError(f"unknown split {split!r}; valid: {', '.join(SPLIT_FILES)}")
    return split


def _read_idx(path, magic, shape):
    """Parse a gzip IDX file of unsigned bytes whose magic and dims must equal `magic` and `shape`."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: cannot decompress ({exc}); reinstall with '{SETUP_COMMAND}'") from exc
    n_dims = len(shape)
    header_bytes = 4 * (1 + n_dims)
    if len(raw) < header_bytes:
        raise DataError(f"{path}: truncated header, expected {header_bytes} bytes, found {len(raw)}")
    header = np.frombuffer(raw, dtype=">u4", count=1 + n_dims)
    if header[0] != magic:
        raise DataError(f"{path}: expected IDX magic 0x{magic:08x}, found 0x{int(header[0]):08x}")
    dims = tuple(int(d) for d in header[1:])
    if dims != shape:
        raise DataError(f"{path}: expected dims {shape}, found {dims}")
    n_bytes = int(np.prod(shape))
    found = len(raw) - header_bytes
    if found != n_bytes:
        raise DataError(f"{path}: expected {n_bytes} data bytes, found {found} (truncated or corrupt file)")
    return np.frombuffer(raw, dtype=np.uint8, offset=header_bytes).reshape(shape).copy()


def _valid(names) -> str:
    """The classes `names` allows, for messages: "0=T-shirt/top, ...", or "0-19" where they have no names."""
    if all(name == str(i) for i, name in enumerate(names)):
        return f"0-{len(names) - 1}"
    return ", ".join(f"{i}={name}" for i, name in enumerate(names))


def _class_index(token, names=CLASS_NAMES):
    """Map one class given as an int, a digit string or a name (any case, '_' for ' ') to its index
    among `names`."""
    valid = _valid(names)
    if isinstance(token, (int, np.integer)) and not isinstance(token, bool):
        index = int(token)
    elif isinstance(token, str) and token.strip().lstrip("-").isdecimal():  # what int() reads ("²" is not)
        index = int(token.strip())
    elif isinstance(token, str):
        wanted = token.strip().replace("_", " ").lower()
        lowered = [name.replace("_", " ").lower() for name in names]
        if wanted not in lowered:
            raise DataError(f"unknown class {token!r}; valid: {valid}")
        index = lowered.index(wanted)
    else:
        raise DataError(f"class must be a number or a name, got {token!r}; valid: {valid}")
    if not 0 <= index < len(names):
        raise DataError(f"class {index} out of range; valid: {valid}")
    return index


def class_tuple(tokens, where="", names=CLASS_NAMES):
    """Indices of `tokens` among `names` (a string: a comma-separated list, as `parse_classes`
    reads it, not its characters; an integer: that one class); DataError (prefixed by `where`) for
    none, unknown or duplicates."""
    if isinstance(tokens, str):
        tokens = [t for t in tokens.split(",") if t.strip()]
    elif isinstance(tokens, (bool, np.bool_)):
        raise DataError(f"{where}{tokens} is no class; valid: 0-{len(names) - 1} or class names")
    elif isinstance(tokens, numbers.Integral):
        tokens = [tokens]
    try:
        if isinstance(tokens, (bytes, bytearray, memoryview, Mapping)):  # iterable, but of no classes
            raise TypeError
        tokens = list(tokens)
    except TypeError:  # 5.0, None, a 0-D array
        found = f"{tokens!r}" if np.ndim(tokens) == 0 else type(tokens).__name__
        raise DataError(f"{where}classes expect a class, a comma list or a sequence of them, found {found}") from None
    try:
        indices = tuple(_class_index(t, names) for t in tokens)
    except DataError as exc:
        raise DataError(f"{where}{exc}") from None
    if not indices:
        raise DataError(f"{where}no classes given; valid: 0-{len(names) - 1} or class names")
    duplicates = [
        f"{i}={names[i]}" if names[i] != str(i) else str(i) for i in sorted(set(indices)) if indices.count(i) > 1
    ]
    if duplicates:
        raise DataError(f"{where}duplicate classes: {', '.join(duplicates)}")
    return indices


def parse_classes(text, names=CLASS_NAMES):
    """Parse a comma-separated class list: "5,7,9" or "sandal, Sneaker, ankle boot" -> (5, 7, 9);
    the classes are `names` (Fashion-MNIST's ten unless given; index i is named names[i]).

    Raises DataError for an empty list, an unknown, out-of-range or duplicate class, listing the choices.
    """
    if not isinstance(text, str):
        raise DataError(f"classes must be a comma-separated string, got {type(text).__name__}")
    tokens = [t for t in text.split(",") if t.strip()]
    return class_tuple(tokens, "", tuple(names))


def select_classes(images, labels, classes, n=None, start=0):
    """Return (images, labels) of the samples whose label is in `classes`, dataset order kept.

    `start` skips the first `start` of them; `n` keeps at most the next n (all when None). Shapes
    follow the inputs, N first. Raises DataError for bad classes, n, start or mismatched lengths.
    """
    indices = class_indices(images, labels, classes, n, start)
    return images[indices], labels[indices]


def class_indices(images, labels, classes, n=None, start=0) -> np.ndarray:
    """The positions in the data set of the samples `select_classes` returns, in its order."""
    classes = class_tuple(classes, "")
    if len(images) != len(labels):
        raise DataError(f"images and labels differ in length: {len(images)} vs {len(labels)}")
    if n is not None and (isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1):
        raise DataError(f"n must be a positive integer or None, got {n!r}")
    if isinstance(start, bool) or not isinstance(start, (int, np.integer)) or start < 0:
        raise DataError(f"start must be a non-negative integer, got {start!r}")
    return np.flatnonzero(np.isin(labels, classes))[start:][:n]


def preprocess(images_uint8, preprocessing):
    """Turn uint8 images (N, H, W) into float32 NCHW (N, 1, H, W): (x * scale - mean) / std.

    `preprocessing` is {"scale": float, "mean": [per channel], "std": [per channel]} (one channel here).
    Raises DataError for a bad dict or image array.
    """
    images = np.asarray(images_uint8)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise DataError(f"images must be uint8 (N, H, W), got {images.dtype} {images.shape}")
    from .graph import check_preprocessing  # (graph loads the ops and Numba: not at this module's import)

    if isinstance(preprocessing, dict):  # as the model's JSON holds them: mean and std lists, Python numbers
        preprocessing = {k: _plain(v, k in ("mean", "std")) for k, v in preprocessing.items()}
        channels = {len(preprocessing[k]) for k in ("mean", "std") if isinstance(preprocessing.get(k), list)}
        if len(channels) == 1 and channels != {1} and 0 not in channels and {"mean", "std"} <= set(preprocessing):
            raise DataError(f"preprocessing of {channels.pop()} input channels; Fashion-MNIST images have 1")
    check_preprocessing(preprocessing, 1, DataError, "preprocessing")
    scale = np.float32(preprocessing["scale"])
    mean = np.asarray(preprocessing["mean"], dtype=np.float32)
    std = np.asarray(preprocessing["std"], dtype=np.float32)
    x = images[:, None, :, :].astype(np.float32)
    with np.errstate(over="ignore"):  # a tiny std overflows: the input check refuses it in one line
        return (x * scale - mean[None, :, None, None]) / std[None, :, None, None]


def _plain(v, listed):
    """A preprocessing value given through the API as the model's JSON holds it: NumPy numbers as Python
    ones, and with `listed` any other sequence (a tuple, an array, a range) or one number as a list;
    anything else as it is, for the check to refuse."""
    if listed and not isinstance(v, (list, str, bytes, bytearray, memoryview, dict, bool, np.bool_)) and v is not None:
        try:  # a tuple, an array, a range, a deque, one number
            v = list(np.asarray(v, object).reshape(-1))
        except (TypeError, ValueError):
            pass
    return [_python_number(x) for x in v] if isinstance(v, list) else _python_number(v)


def _python_number(x):
    """A NumPy float of at most 64 bits or integer as a Python one (exact); anything else as it is (a
    longdouble would round twice on its way to float32 through a Python float)."""
    exact = isinstance(x, (np.float16, np.float32, np.float64, np.integer))
    return (float(x) if isinstance(x, np.floating) else int(x)) if exact else x


@default_env()
def task_images(model, classes, split="train", n=None, data_dir=None, start=0, with_indices=False):
    """The first n (all if None) Fashion-MNIST images of `classes` from `split` after the first
    `start` of them, preprocessed as the model's meta says: (x float32 NCHW, labels int64), and
    with_indices their positions in the split's files (int64). Raises InputError when the model
    records no preprocessing, DataError for missing files or bad classes."""
    pre = model.meta.get("preprocessing")
    if pre is None:
        raise InputError(f"{model.where}model records no input preprocessing (meta 'preprocessing')")
    images, labels = load_fashion_mnist(split, data_dir)
    indices = class_indices(images, labels, classes, n, start)
    try:
        x = np.ascontiguousarray(preprocess(images[indices], pre))
    except DataError as e:  # the model's preprocessing: name the model
        raise DataError(f"{model.where}{e}") from None
    y = labels[indices].astype(np.int64)
    return (x, y, indices.astype(np.int64)) if with_indices else (x, y)


def load_tasks(path=None):
    """Read the specialized tasks from a TOML file (default: velcro_ref/tasks.toml).

    Returns {name: {"classes": tuple[int, ...], "description": str}}, each task with 2-4 distinct classes.
    Raises DataError naming the file and the task for any problem.
    """
    path = pathlib.Path(path) if path is not None else TASKS_PATH
    try:
        doc = parse_toml(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DataError(f"{path}: cannot read tasks file ({exc.strerror})") from None
    except ValueError as exc:  # UnicodeDecodeError among them
        raise DataError(f"{path}: invalid TOML ({exc})") from None
    if doc.get("format") != "velcro-tasks/1":
        raise DataError(f"{path}: format must be 'velcro-tasks/1', found {doc.get('format')!r}")
    unknown = sorted(set(doc) - {"format", "tasks"})
    if unknown:
        raise DataError(f"{path}: unknown top-level keys {unknown}; valid: format, tasks")
    raw_tasks = doc.get("tasks")
    if not isinstance(raw_tasks, dict) or not raw_tasks:
        raise DataError(f"{path}: needs at least one [tasks.<name>] table")
    tasks = {}
    for name, task in raw_tasks.items():
        where = f"{path}: task '{name}': "
        if not isinstance(task, dict) or set(task) != {"classes", "description"}:
            found = sorted(task) if isinstance(task, dict) else type(task).__name__
            raise DataError(f"{where}needs exactly the keys classes, description; found {found}")
        if not isinstance(task["description"], str) or not task["description"].strip():
            raise DataError(f"{where}description must be a non-empty string")
        if not isinstance(task["classes"], list):
            raise DataError(f"{where}classes must be a list of class names or numbers")
        classes = class_tuple(task["classes"], where)
        if not 2 <= len(classes) <= 4:
            raise DataError(f"{where}needs 2-4 classes, found {len(classes)}")
        tasks[name] = {"classes": classes, "description": task["description"].strip()}
    return tasks


def digest(x) -> str:
    """A short sha256 of an array's bytes: which images a checkpoint holds, or a worker reading
    shared data read (compared with the client's)."""
    return PrefixDigest(x).of(len(x))


class PrefixDigest:
    """digest(x[:n]) for n that only grows (a profile's checkpoints), each image hashed once."""

    def __init__(self, x):
        self.x, self.done, self.h = x, 0, hashlib.sha256()

    def of(self, n) -> str:
        self.h.update(np.ascontiguousarray(self.x[self.done : n]).tobytes())
        self.done = n
        return self.h.copy().hexdigest()[:16]


def check_not_raw_pixels(x, model, where) -> None:
    """Refuse (InputError) float images that are raw pixels where the model records a
    preprocessing: no value below 0 and some above the largest value the preprocessing gives,
    (255 * scale - mean) / std (whole numbers 0..255, or such pixels resized or averaged). Such
    images ran and scored near chance with exit 0. The preprocessing gives values below 0 (any
    pixel under the mean) and none above that one (but for float32's rounding: 1e-4 relative is
    allowed). Pixels only scaled to 0..1 fall inside that range and cannot be told apart."""
    pre = model.meta.get("preprocessing")
    if pre is None or x.size == 0:
        return
    top = max((255 * float(pre["scale"]) - m) / s for m, s in zip(pre["mean"], pre["std"], strict=True))
    if float(x.max()) > top + 1e-4 * abs(top) and float(x.min()) >= 0:
        raise InputError(
            f"{where}: x holds raw pixels (values 0..{float(x.max()):g}, none below 0); the model expects them "
            f"preprocessed as (x * {pre['scale']:g} - mean) / std, mean {list(pre['mean'])}, std {list(pre['std'])}, "
            f"at most {top:.4g}"
        )
