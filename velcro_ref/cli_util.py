"""What the `velcro` commands share: arrays and JSON in and out, the model and image-set options,
task classes, progress bars and policy choices. Each condition raises one error class."""

from __future__ import annotations

import json
import sys

import numpy as np

from .errors import DataError, InputError, UsageError
from .fileio import atomic_path
from .policies import POLICIES


def add_policy_arg(p, help_text="mask policy (default uniform)"):
    p.add_argument("--policy", default="uniform", choices=POLICIES, help=help_text)


def load_array(path, what="input") -> np.ndarray:
    """np.load a .npy file; InputError naming the file if it is missing or not an array."""
    try:
        a = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise InputError(f"{path}: cannot read {what} as .npy ({e})") from None
    if not isinstance(a, np.ndarray):
        raise InputError(f"{path}: expects a .npy array, found {type(a).__name__}")
    return a


def save_array(path, a) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, a)


def print_json(doc) -> None:
    json.dump(doc, sys.stdout, indent=2)
    sys.stdout.write("\n")


def add_model_arg(p):
    p.add_argument("model", help="model file (HDF5, velcro-model format)")
    p.add_argument("--allow-nonfinite", action="store_true", help="accept NaN/Inf parameters")


def add_image_args(p, split):
    p.add_argument("--data", choices=["fashion-mnist"], help="image set (Fashion-MNIST from the Debian package)")
    p.add_argument(
        "--data-dir", help="directory of the Fashion-MNIST IDX .gz files (default: $VELCRO_DATA or the Debian path)"
    )
    p.add_argument("--classes", help="task classes, numbers or names, e.g. 5,7,9 or sandal,sneaker")
    p.add_argument("--split", choices=["train", "test"], default=split, help=f"data split (default {split})")
    p.add_argument("--samples", type=int, help="use at most this many images (the first ones of the split)")
    p.add_argument("--images", help="an .npz with arrays x (NCHW float32, already preprocessed) and y (labels)")
    p.add_argument("--batch", type=int, default=256, help="images per batch (default 256)")


def load_image_set(args, model):
    """(x float32 NCHW, labels int64, classes tuple, source) from --data or --images.

    Every image is checked against the model (shape, dtype, finite values) before any is run; a
    failure names the file and the first bad image. Requested classes without images are an error.
    """
    if args.batch < 1:
        raise UsageError(f"--batch must be a positive integer, got {args.batch}")
    if args.samples is not None and args.samples < 1:
        raise UsageError(f"--samples must be a positive integer, got {args.samples}")
    from . import data

    index = None  # position in the file of each kept image, for messages
    missing = ""
    if args.images:
        try:
            with np.load(args.images, allow_pickle=False) as z:
                x, y = z["x"], z["y"]
        except (OSError, ValueError, KeyError, EOFError) as e:
            raise InputError(f"{args.images}: expects an .npz with arrays 'x' and 'y' ({e})") from None
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise InputError(f"{args.images}: 'y' expects a 1-D array of integer labels, found {y.dtype} {y.shape}")
        n_x = len(x) if x.ndim else 0
        if n_x != len(y):
            raise InputError(f"{args.images}: {n_x} images but {len(y)} labels")
        found = tuple(int(c) for c in np.unique(y))
        classes = data.parse_classes(args.classes) if args.classes else found
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
        classes = data.parse_classes(args.classes)
        x, y = data.task_images(model, classes, args.split, args.samples, args.data_dir)
        source = f"fashion-mnist {args.split} classes {list(classes)}"
        where = source
    else:
        raise UsageError("give --data fashion-mnist or --images FILE.npz")
    if len(x) == 0:
        raise DataError(f"the image set is empty ({source})")
    if missing:
        raise DataError(f"{where}: {missing}")
    try:
        model.check_input(x)
    except InputError as e:
        raise InputError(f"{where}: {e}{_first_nonfinite(x, model, index)}") from None
    return np.ascontiguousarray(x), y, tuple(classes), source


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


def task_classes(args):
    """(classes, label) from --task NAME (tasks.toml) or --classes LIST, exactly one of them."""
    from .api import task_classes as classes_of

    if bool(args.task) == bool(args.classes):
        raise UsageError("give exactly one of --task NAME or --classes LIST")
    if args.classes:
        return classes_of(classes=args.classes), f"classes {args.classes}"
    return classes_of(task=args.task), args.task


def progress(total, desc, unit="img"):
    """A progress bar on stderr (tqdm; hidden when stderr is not a terminal), closed on exit."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True, disable=None)


def add_data_dir_arg(p):
    p.add_argument("--data-dir", help="Fashion-MNIST directory (default: $VELCRO_DATA or the Debian path)")
