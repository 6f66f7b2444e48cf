"""What the `velcro` commands share: their registration, arrays and JSON in and out, the model and
image-set options, task classes, progress bars and policy choices. Each condition raises one error
class."""

from __future__ import annotations

import argparse
import math
import os
import stat
import zipfile

import numpy as np

from .errors import DataError, InputError, UsageError
from .fileio import atomic_path
from .policies import POLICIES

MAX_BATCH = 65536  # images per batch
MAX_IMAGES = 100_000_000  # images in one run


def share_text(x, digits=1, percent=True) -> str:
    """A share x in [0, 1] as text with `digits` decimals, as a percentage or as it is. A share strictly
    between 0 and 1 never reads as 0 or 1: 0.99995 is ">99.9%" (">0.9999"), not "100.0%", and 0.00004
    "<0.1%"; anything else prints as rounded."""
    scale, unit = (100, "%") if percent else (1, "")
    text = f"{scale * x:.{digits}f}"
    if 0 < x < 1 and float(text) in (0, scale):
        step = 10.0**-digits
        return f"<{step:.{digits}f}{unit}" if float(text) == 0 else f">{scale - step:.{digits}f}{unit}"
    return text + unit


# -- option values: checked by argparse, so a bad value is a usage error (exit 2) before any work --


def count(lo: int, hi: int):
    """An argparse type: an integer in [lo, hi]."""

    def parse(text):
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expects an integer in [{lo}, {hi}], got {text!r}") from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"expects an integer in [{lo}, {hi}], got {v}")
        return v

    parse.__name__ = "integer"
    parse.shown = f"[{lo}, {hi}]"
    return parse


def number(lo: float, hi: float, open_lo=False, open_hi=False):
    """An argparse type: a finite number in the interval [lo, hi] (open where asked)."""
    shown = f"{'(' if open_lo else '['}{lo:g}, {hi:g}{')' if open_hi else ']'}"

    def parse(text):
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expects a number in {shown}, got {text!r}") from None
        inside = (lo < v if open_lo else lo <= v) and (v < hi if open_hi else v <= hi)
        if not math.isfinite(v) or not inside:
            raise argparse.ArgumentTypeError(f"expects a number in {shown}, got {text}")
        return v

    parse.__name__ = "number"
    parse.shown = shown
    return parse


def add_ranged(p, flag, kind, default, what, given_only=False, **kw):
    """Add option `flag` of type `kind` (a `count` or `number`) whose help states its range and default:
    "what, in [lo, hi] (default D)". With `given_only` the parsed arguments hold it only where it was
    given (the command fills in the default once it knows the option applies)."""
    shown = f"{default:g}" if isinstance(default, float) else default
    stored = argparse.SUPPRESS if given_only else default
    p.add_argument(flag, type=kind, default=stored, help=f"{what}, in {kind.shown} (default {shown})", **kw)


def text(value):
    """An argparse type: a non-empty string (an empty path or list is a mistake, not the option left out)."""
    if not value:
        raise argparse.ArgumentTypeError("expects a non-empty value, got ''")
    return value


def _path(value):
    if value.strip("/") in ("", "."):
        raise argparse.ArgumentTypeError(f"expects a file name, got {value!r}")
    return value


def add_file(p, *flags, role="in", **kw):
    """Add a file option and record its role for `check_files`: "in" (read), "out" (written),
    "dir_in", "dir_out" (folders) or "inout" (read, then rewritten in place)."""
    kw.setdefault("type", _path if role in ("in", "out", "inout") else text)
    action = p.add_argument(*flags, **kw)
    p.set_defaults(_files=(*(p.get_default("_files") or ()), (action.dest, role)))
    return action


def _kind(path) -> str | None:
    """ "file", "dir", "special" (FIFO, device, socket) or None if nothing is there."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    return "file" if stat.S_ISREG(mode) else "dir" if stat.S_ISDIR(mode) else "special"


def _same(a, b) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def check_files(args) -> None:
    """Before any work: outputs are regular files or new names and never name an input or each
    other (by any path: symlinks, hard links, ./ prefixes); inputs are not special files. Usage
    errors (exit 2) for clashes and outputs onto something else, InputError for special inputs."""
    roles = getattr(args, "_files", ())
    files = [(dest, role, v) for dest, role in roles for v in _values(getattr(args, dest, None))]
    files += _implicit_inputs(args)
    for dest, role, v in files:
        kind = _kind(v)
        flag = "--" + dest.replace("_", "-")
        if role in ("out", "inout") and kind not in (None, "file"):
            raise UsageError(f"{flag} {v}: is a {'directory' if kind == 'dir' else 'special file'}, expects a file")
        if role == "dir_out" and kind not in (None, "dir"):
            raise UsageError(f"{flag} {v}: expects a folder, found a {'file' if kind == 'file' else 'special file'}")
        if role in ("in", "inout") and kind == "special":
            raise InputError(f"{v}: not a regular file (a FIFO or device cannot be read as {dest.replace('_', ' ')})")
    outs = [f for f in files if f[1] in ("out", "dir_out")]
    # an input that is not there (a preset's name, `--accel edge16`) cannot be overwritten
    ins = [f for f in files if f[1] in ("in", "dir_in", "inout") and _kind(f[2]) is not None]
    for i, (dest, _, v) in enumerate(outs):
        for _, role2, v2 in ins + outs[:i]:
            if _same(v, v2):
                what = "the input" if role2 in ("in", "dir_in", "inout") else "another output"
                raise UsageError(f"--{dest.replace('_', '-')} {v} names {what} {v2}; choose another name")


def _implicit_inputs(args) -> list:
    """(dest, role, path) of what a command reads where its flag is left out, for `check_files`: the
    Fashion-MNIST folder and its files (--data-dir: $VELCRO_DATA or the Debian path), and the
    shipped weights folder (demo's --weights)."""
    out = []
    if hasattr(args, "data_dir"):
        from . import data

        folder = str(data.data_dir_of(args.data_dir))
        out.append(("data_dir", "dir_in", folder))
        out += [("data_dir", "in", os.path.join(folder, f)) for pair in data.SPLIT_FILES.values() for f in pair]
    if hasattr(args, "weights") and getattr(args, "weights", None) is None:
        from .demo import WEIGHTS_DIR

        out.append(("weights", "dir_in", str(WEIGHTS_DIR)))
    return out


def _values(v):
    if v is None:
        return []
    return [str(x) for x in v] if isinstance(v, (list, tuple)) else [str(v)]


def add_policy_arg(p, help_text="mask policy (default uniform)", default="uniform"):
    p.add_argument("--policy", default=default, choices=POLICIES, help=help_text)


def load_array(path, what="input") -> np.ndarray:
    """np.load a .npy file; InputError naming the file if it is missing, not an array, or too large
    to allocate (with the size it needs)."""
    try:
        with open(path, "rb") as f:
            shape, dtype = _npy_header(f)
    except (OSError, ValueError, EOFError) as e:
        raise InputError(f"{path}: cannot read {what} as .npy ({e})") from None
    try:
        a = np.load(path, allow_pickle=False)
    except MemoryError:
        raise InputError(f"{path}: {_size(shape, dtype)} does not fit in memory") from None
    except (OSError, ValueError, EOFError) as e:
        raise InputError(f"{path}: cannot read {what} as .npy ({e})") from None
    if not isinstance(a, np.ndarray):
        raise InputError(f"{path}: expects a .npy array, found {type(a).__name__}")
    return _native(a)


def _native(a: np.ndarray) -> np.ndarray:
    """An array written on a machine of the other byte order as the same values in this one's."""
    return a if a.dtype.isnative else a.astype(a.dtype.newbyteorder("="))


def load_npz(path, keys) -> tuple:
    """The arrays `keys` of an .npz file; InputError naming the file for anything else (not a zip,
    a missing key, pickled objects, an array too large for memory)."""
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"PK\x03\x04":
                raise InputError(f"{path}: not an .npz file (a zip archive of the .npy arrays {' and '.join(keys)})")
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in keys if k not in z.files]
            if missing:
                raise InputError(
                    f"{path}: expects an .npz with arrays {' and '.join(map(repr, keys))}, "
                    f"missing {', '.join(map(repr, missing))}"
                )
            out = []
            for k in keys:
                with z.zip.open(f"{k}.npy") as f:
                    shape, dtype = _npy_header(f)
                try:
                    out.append(_native(z[k]))
                except MemoryError:
                    raise InputError(f"{path}: array '{k}', {_size(shape, dtype)}, does not fit in memory") from None
            return tuple(out)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise InputError(f"{path}: expects an .npz with arrays {' and '.join(map(repr, keys))} ({e})") from None


def _npy_header(f):
    """(shape, dtype) from an .npy header, read before the data so that its size is known."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
    else:
        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    return shape, dtype


def _size(shape, dtype) -> str:
    n = int(np.prod(shape, dtype=object)) * dtype.itemsize
    return f"{tuple(shape)} {dtype} ({n:,} bytes)"


def save_array(path, a) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, a)


def print_json(doc) -> None:
    """Print `doc` as strict JSON: NaN and infinite numbers become null (velcro_ref.jsonout)."""
    from .jsonout import print_json as print_strict

    print_strict(doc)


def command(sub, name, func, model=False):
    """Add subcommand `name`, run as func(args), and return its parser for the options. The command's
    one-line help is the first line of func's docstring, its description the paragraphs after it;
    model=True adds the model file and --allow-nonfinite (`add_model_arg`) first."""
    summary, _, rest = (func.__doc__ or _source_doc(func)).strip().partition("\n")
    p = sub.add_parser(name, help=summary, description=" ".join(rest.split()) or None)
    if model:
        add_model_arg(p)
    p.set_defaults(func=func)
    return p


def _source_doc(func) -> str:
    """func's docstring read from its source (`python -OO` leaves __doc__ None)."""
    import ast
    import inspect
    import textwrap

    try:
        return ast.get_docstring(ast.parse(textwrap.dedent(inspect.getsource(func))).body[0]) or ""
    except (OSError, TypeError, SyntaxError, IndexError):
        return ""


def add_model_arg(p):
    add_file(p, "model", help="model file (HDF5, velcro-model format)")
    p.add_argument("--allow-nonfinite", action="store_true", help="accept NaN/Inf parameters")


def add_image_args(p, split):
    p.add_argument("--data", choices=["fashion-mnist"], help="image set (Fashion-MNIST from the Debian package)")
    add_data_dir_arg(p)
    p.add_argument("--classes", type=text, help="task classes, numbers or names, e.g. 5,7,9 or sandal,sneaker")
    p.add_argument("--split", choices=["train", "test"], help=f"with --data: data split (default {split})")
    p.set_defaults(default_split=split)
    p.add_argument(
        "--samples",
        type=count(1, MAX_IMAGES),
        help="use at most this many images (the first ones of the chosen classes, in the split's order)",
    )
    add_file(
        p,
        "--images",
        help="an .npz with arrays x (NCHW float32, already preprocessed: raw 0..255 pixels are refused) and y (labels)",
    )
    add_ranged(p, "--batch", count(1, MAX_BATCH), 256, "images per batch")


def load_image_set(args, model):
    """(x float32 NCHW, labels int64, classes tuple, source) from --data or --images.

    Every image is checked against the model (shape, dtype, finite values) before any is run; a
    failure names the file and the first bad image. Requested classes without images are an error.
    """
    from . import data

    if args.images and args.data:
        raise UsageError("give --data or --images, not both")
    ignored = [flag for flag, v in (("--split", args.split), ("--data-dir", args.data_dir)) if v is not None]
    if args.images and ignored:
        raise UsageError(f"{' and '.join(ignored)}: options that choose images of --data, ignored with --images")
    args.split = args.split or args.default_split
    index = None  # position in the file of each kept image, for messages
    missing = ""
    if args.images:
        x, y = load_npz(args.images, ("x", "y"))
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise InputError(f"{args.images}: 'y' expects a 1-D array of integer labels, found {y.dtype} {y.shape}")
        if y.size and int(y.max()) >= 2**31:  # (a negative one is named against the model's classes later)
            raise InputError(f"{args.images}: 'y' holds label {int(y.max())}; expects class indices below 2^31")
        n_x = len(x) if x.ndim else 0
        if n_x != len(y):
            raise InputError(f"{args.images}: {n_x} images but {len(y)} labels")
        found = tuple(int(c) for c in np.unique(y))
        classes = option_classes(args.classes, _class_names(model)) if args.classes else found
        if classes and min(classes) < 0:  # a label such as -1 for "unlabelled", taken as a class
            raise InputError(
                f"{args.images}: 'y' holds label {min(classes)}, and class {min(classes)} is no class index "
                "(0 or more; choose classes with --classes)"
            )
        absent = ", ".join(str(c) for c in classes if c not in found)
        if absent:
            missing = f"no images of class(es) {absent}; labels found: {', '.join(map(str, found))}"
        index = np.flatnonzero(np.isin(y, classes))[: args.samples]
        x, y = x[index], y[index].astype(np.int64)
        source = f"{args.images} classes {list(classes)}"
        where = args.images
    elif args.data == "fashion-mnist":
        if not args.classes:
            raise UsageError("--classes is required with --data (e.g. --classes 5,7,9)")
        classes = option_classes(args.classes)
        x, y = data.task_images(model, classes, args.split, args.samples, args.data_dir)
        source = f"fashion-mnist {args.split} classes {list(classes)}"
        where = source
    else:
        raise UsageError("give --data fashion-mnist or --images FILE.npz")
    if len(x) == 0:
        raise DataError(f"the image set is empty ({source}){': ' + missing if missing else ''}")
    if missing:
        raise DataError(f"{where}: {missing}")
    try:
        model.check_input(x)
    except InputError as e:
        raise InputError(f"{where}: {e}{_first_nonfinite(x, model, index)}") from None
    if args.images:
        data.check_not_raw_pixels(x, model, where)
    return np.ascontiguousarray(x), y, tuple(classes), source


def nonfinite_cause(model) -> str:
    """Why a run of finite (checked) images gave NaN or Inf, for a warning: the model's parameters
    where they hold NaN or Inf (a model loaded with --allow-nonfinite), else a float32 overflow."""
    if any(p.dtype.kind == "f" and not np.isfinite(p).all() for p in model.graph.params.values()):
        return "the model's parameters hold NaN or Inf (--allow-nonfinite)"
    return (
        f"computing the finite input overflowed float32 (|value| > {float(np.finfo(np.float32).max):.4g}) in some node"
    )


def _class_names(model) -> tuple:
    """The classes --classes names with --images: the model's own where it records one name per
    score (its meta's `classes`, its output one score per class), else Fashion-MNIST's ten, or
    "0", "1", ... for a model of more scores than ten. A label past the model's scores is not
    refused here (a model may give one score for two classes, or features): eval refuses it."""
    from . import data

    shape = tuple(model.shapes[model.graph.output])
    n = shape[0] if len(shape) == 1 else 0
    names = model.meta.get("classes")
    if n and isinstance(names, list) and len(names) == n and all(isinstance(name, str) for name in names):
        return tuple(names)
    return tuple(str(i) for i in range(n)) if n > len(data.CLASS_NAMES) else data.CLASS_NAMES


def _first_nonfinite(x, model, index):
    """'; first NaN/Inf in image i' (i = position in the file, or in x without `index`) when that is
    what check_input refused, else ''."""
    if x.dtype != np.float32 or tuple(x.shape[1:]) != model.input_shape:
        return ""
    bad = np.flatnonzero(~np.isfinite(x.reshape(len(x), -1)).all(axis=1))
    if not bad.size:
        return ""
    first = bad[0] if index is None else index[bad[0]]
    return f"; first NaN/Inf in image {first} ({bad.size} image(s) affected)"


def add_task_args(p):
    """--task and --classes, of which `task_classes` takes exactly one."""
    p.add_argument("--task", type=text, help="task name from tasks.toml")
    p.add_argument("--classes", type=text, help="task classes instead of --task, e.g. 1,3")


def task_classes(args):
    """(classes, label) from --task NAME (tasks.toml) or --classes LIST, exactly one of them."""
    from .api import task_classes as classes_of

    if bool(args.task) == bool(args.classes):
        raise UsageError("give exactly one of --task NAME or --classes LIST")
    if args.classes:
        return classes_of(classes=option_classes(args.classes)), f"classes {args.classes}"
    return classes_of(task=args.task), args.task


def option_classes(text, names=None) -> tuple:
    """The classes of a --classes option (`data.parse_classes`; `names` the model's, Fashion-MNIST's
    when None): an unknown, out-of-range or duplicate class is a usage error naming the option (exit 2,
    as an unknown --task is)."""
    from . import data

    try:
        return data.parse_classes(text, data.CLASS_NAMES if names is None else names)
    except DataError as e:
        raise UsageError(f"--classes: {e}") from None


def progress(total, desc, unit="img"):
    """A progress bar on stderr (tqdm; hidden when stderr is not a terminal), closed on exit."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True, disable=None)


def add_data_dir_arg(p):
    add_file(p, "--data-dir", role="dir_in", help="Fashion-MNIST directory (default: $VELCRO_DATA or the Debian path)")
