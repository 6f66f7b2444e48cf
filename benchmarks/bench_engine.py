"""Dense engine vs onnxruntime, each in its own process, alternating; zoo models at 224x224.

Every measurement is a fresh worker process (this script with --worker) that imports NumPy
first, as a user's script does, builds the model, warms it up and times `repeat` runs. The
engine's and onnxruntime's workers alternate A B A B for `rounds` rounds; printed are the
median of each side's per-round medians, the median and the spread of the per-round ratios,
and the load average around each model (the machine may be shared). Then a per-layer table
of ResNet-18 at batch 1 (ms, and GFLOPS against the fp32 FMA peak and a large sgemm, both
measured on the same machine) and the peak resident memory at batch 8. Nothing is asserted.

    python benchmarks/bench_engine.py [--models resnet18,mobilenet_v2,googlenet] [--batches 1,8,256]
        [--rounds 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OpTimer, fma_peak_gflops, fp32_peak_gflops, machine, positive  # noqa: E402

# runs timed per worker, by batch: enough for a median, one at batch 256 (seconds a run; the
# rounds of alternated workers give the spread)
REPEAT = {1: 15, 8: 6, 256: 1}


def worker(args):
    """Time args.repeat runs of one side; print one JSON line."""
    import numba

    from velcro_ref.zoo import build_zoo

    g = build_zoo(args.model, seed=0)
    x = np.random.default_rng(0).standard_normal((args.batch, 3, 224, 224), dtype=np.float32)
    if args.worker == "ort":
        import tempfile

        import onnxruntime as ort

        from velcro_ref.onnx_export import export_onnx

        path = Path(tempfile.mkdtemp()) / "m.onnx"
        export_onnx(g, path)
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = args.threads, 1
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

        def run():
            sess.run(None, {"input": x})
    else:
        from velcro_ref.engine import Model

        numba.set_num_threads(args.threads)
        model = Model(g)

        def run():
            model.run(x)

    for _ in range(2 if args.batch < 64 else 1):
        run()
    times = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    out = {"median_ms": float(np.median(times) * 1e3), "min_ms": float(np.min(times) * 1e3)}
    if args.worker == "layers":
        out["layers"] = layer_table(model, x[:1])
    print(json.dumps(out))


def layer_table(model, x):
    """(name, description, MMACs, median ms, GFLOPS) of every conv/linear node at batch 1."""
    med = OpTimer().run(model, x, repeat=7)
    rows = []
    for st in model.steps:
        macs = model.layer_macs().get(st.name)
        if macs is None:
            continue
        if st.op == "conv2d":
            g = st.args[1]
            desc = f"{g.c_in}->{g.k_out} {g.kh}x{g.kw}/{g.sh} {g.oh}x{g.ow}" + (f" g{g.groups}" if g.groups > 1 else "")
        else:
            desc = "linear"
        rows.append((st.name, desc, macs / 1e6, med[st.name] * 1e3, 2 * macs / med[st.name] / 1e9))
    other = sum(v for k, v in med.items() if k not in model.layer_macs())
    return {"rows": rows, "other_ms": other * 1e3, "total_ms": sum(med.values()) * 1e3}


def spawn(side, model, batch, repeat, threads):
    cmd = [sys.executable, __file__, "--worker", side, "--model", model, "--batch", str(batch)]
    cmd += ["--repeat", str(repeat), "--threads", str(threads)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def peak_rss_mb(batch, threads):
    code = (
        "import numpy as np, resource, numba; from velcro_ref.engine import Model;"
        "from velcro_ref.zoo import build_zoo;"
        f"numba.set_num_threads({threads}); m = Model(build_zoo('resnet18')); "
        f"x = np.zeros(({batch}, 3, 224, 224), np.float32); m.run(x); m.run(x);"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet18,mobilenet_v2,googlenet")
    ap.add_argument("--batches", default="1,8,256")
    ap.add_argument("--rounds", type=positive, default=3, help="A B pairs of worker processes per model and batch")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-layers", action="store_true", help="skip the per-layer table")
    ap.add_argument("--worker", choices=["engine", "ort", "layers"], help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--repeat", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    print(f"machine: {machine()}; threads: engine {args.threads}, onnxruntime {args.threads} (intra-op)")
    print("each side in its own process, NumPy imported first; A B alternated; ms per run")
    head = f"{'model':<13} {'batch':>5} {'engine ms':>10} {'ort ms':>8} {'ratio':>6} {'ratio spread':>14}"
    print(f"\n{head} {'load avg':>10}")
    for name in args.models.split(","):
        for b in map(int, args.batches.split(",")):
            load0 = os.getloadavg()[0]
            eng, ort_ms, ratios = [], [], []
            for _ in range(args.rounds):
                e = spawn("engine", name, b, REPEAT.get(b, 5), args.threads)["median_ms"]
                o = spawn("ort", name, b, REPEAT.get(b, 5), args.threads)["median_ms"]
                eng.append(e)
                ort_ms.append(o)
                ratios.append(e / o)
            load = f"{load0:.1f}-{os.getloadavg()[0]:.1f}"
            spread = f"{min(ratios):.2f}-{max(ratios):.2f}"
            print(
                f"{name:<13} {b:>5} {np.median(eng):>10.1f} {np.median(ort_ms):>8.1f} {np.median(ratios):>6.2f} "
                f"{spread:>14} {load:>10}",
                flush=True,
            )
    if not args.no_layers:
        sgemm, peak = fp32_peak_gflops(args.threads), fma_peak_gflops(args.threads)
        table = spawn("layers", "resnet18", 1, 3, args.threads)["layers"]
        print(
            f"\nResNet-18 per layer, batch 1, {args.threads} threads (same machine: fp32 FMA peak {peak:.0f} GFLOPS, "
            f"the engine's register tile on data in L1; a 2048^3 sgemm {sgemm:.0f}):"
        )
        print(f"{'layer':<24} {'conv':<24} {'MMACs':>7} {'ms':>7} {'GFLOPS':>7} {'% peak':>7} {'% sgemm':>8}")
        for name, desc, mmacs, ms, gflops in table["rows"]:
            print(
                f"{name:<24} {desc:<24} {mmacs:>7.1f} {ms:>7.2f} {gflops:>7.1f} {100 * gflops / peak:>6.0f}% "
                f"{100 * gflops / sgemm:>7.0f}%"
            )
        print(f"total {table['total_ms']:.1f} ms, of which other ops {table['other_ms']:.1f} ms")
    print(f"\npeak resident memory, ResNet-18 batch 8: {peak_rss_mb(8, args.threads):.0f} MB")


if __name__ == "__main__":
    main()
