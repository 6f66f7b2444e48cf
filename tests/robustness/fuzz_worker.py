"""Loader process for test_fuzz_loaders.py: loads the files named on stdin and reports one JSON line each.

Usage: python fuzz_worker.py REFERENCE_MODEL. Each request is {"kind": "model"|"stats"|"masks", "path": ...};
each reply is {"outcome": "ok"|"error"|"crash", "detail": ...}. "ok" means the file loaded and then ran
(a model on a small batch; stats turned into masks and run; masks run on the reference model); "error"
means the loader raised VelcroError; "crash" is any other exception. A segfault or a hang shows up as a
dead or silent process on the test's side.
"""

import json
import sys
import traceback

import numpy as np

from velcro_ref.engine import load_model
from velcro_ref.errors import VelcroError
from velcro_ref.masks import build_masks, load_masks, uniform_ratios
from velcro_ref.stats import load_stats

# A mutated model that loads may have grown; past this many elements per image it is not run (loading and
# validating it is what the fuzz test is about, and a big run would only cost time).
MAX_RUN_ELEMENTS = 5_000_000


def check(kind, path, reference, x):
    if kind == "model":
        model = load_model(path)
        if sum(int(np.prod(s)) for s in model.plan.shapes.values()) <= MAX_RUN_ELEMENTS:
            xs = np.random.default_rng(0).standard_normal((2, *model.input_shape)).astype(np.float32)
            model.run(xs)
    elif kind == "stats":
        stats = load_stats(path, reference)
        masks = build_masks(stats, uniform_ratios(stats, 0.5), {"name": "uniform", "ratio": 0.5})
        reference.run(x, masks=masks)
    elif kind == "masks":
        reference.run(x, masks=load_masks(path, reference))
    else:
        raise ValueError(f"unknown kind {kind!r}")


def main():
    reference = load_model(sys.argv[1])
    x = np.random.default_rng(1).standard_normal((2, *reference.input_shape)).astype(np.float32)
    reference.run(x)  # compile the kernels before the first timed request
    print(json.dumps({"outcome": "ready"}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        try:
            check(req["kind"], req["path"], reference, x)
            reply = {"outcome": "ok", "detail": ""}
        except VelcroError as e:
            reply = {"outcome": "error", "detail": str(e)}
        except Exception:  # the fuzz test reports these as failures
            reply = {"outcome": "crash", "detail": traceback.format_exc()}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
