"""Engine vs onnxruntime on the three zoo models at 224x224, batch 1 and 8, 2 threads.

Prints median latencies and their ratio, a per-layer GFLOPS table for ResNet-18 against the
measured sgemm peak, and the peak resident memory of ResNet-18 batch-8 inference (measured in a
fresh subprocess). Nothing is asserted: the machine is shared, so read the ratios.

    python benchmarks/bench_engine.py [--repeat 15] [--models resnet18,mobilenet_v2,googlenet]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

# isort: off
import velcro_ref.threads  # noqa: F401  (before NumPy: see velcro_ref/threads.py)

# isort: on
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from velcro_ref.engine import Model  # noqa: E402
from velcro_ref.onnx_export import export_onnx  # noqa: E402
from velcro_ref.zoo import build_zoo  # noqa: E402

from common import StepTimer, machine, median_ms, sgemm_peak_gflops  # noqa: E402


def ort_session(graph, tmp):
    import onnxruntime as ort

    path = Path(tmp) / "m.onnx"
    export_onnx(graph, path)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def per_layer_table(model, x, peak, repeat=7):
    med = StepTimer().run(model, x, repeat=repeat)
    macs = model.layer_macs()
    print(f"\nResNet-18 per layer, batch {x.shape[0]} (sgemm peak {peak:.0f} GFLOPS):")
    print(f"{'layer':<26} {'MMACs':>8} {'ms':>8} {'GFLOPS':>8} {'% peak':>7}")
    for st in model.steps:
        if st.name in macs:
            gflops = 2 * macs[st.name] * x.shape[0] / med[st.name] / 1e9
            print(
                f"{st.name:<26} {macs[st.name] / 1e6:>8.1f} {med[st.name] * 1e3:>8.2f} {gflops:>8.1f} "
                f"{100 * gflops / peak:>6.0f}%"
            )
    conv = sum(v for k, v in med.items() if k in macs)
    print(f"conv/linear total {conv * 1e3:.1f} ms, other ops {(sum(med.values()) - conv) * 1e3:.1f} ms")


def peak_rss_mb(batch):
    code = (
        "import numpy as np, resource; from velcro_ref.engine import Model; from velcro_ref.zoo import build_zoo;"
        f"m = Model(build_zoo('resnet18')); x = np.zeros(({batch}, 3, 224, 224), np.float32); m.run(x); m.run(x);"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--models", default="resnet18,mobilenet_v2,googlenet")
    ap.add_argument("--batches", default="1,8")
    args = ap.parse_args()
    print(f"machine: {machine()}; threads: OpenBLAS {os.environ.get('OPENBLAS_NUM_THREADS', 'default')}, ort 2")
    peak = sgemm_peak_gflops()
    print(f"sgemm 2048^3 peak: {peak:.0f} GFLOPS")
    print(f"\n{'model':<14} {'batch':>5} {'engine ms':>10} {'ort ms':>8} {'ratio':>6}")
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            g = build_zoo(name, seed=0)
            model = Model(g)
            sess = ort_session(g, tmp)
            for b in map(int, args.batches.split(",")):
                x = rng.standard_normal((b, 3, 224, 224), dtype=np.float32)
                t_eng = median_ms(lambda x=x, m=model: m.run(x), repeat=args.repeat)
                t_ort = median_ms(lambda x=x, s=sess: s.run(None, {"input": x}), repeat=args.repeat)
                print(f"{name:<14} {b:>5} {t_eng:>10.1f} {t_ort:>8.1f} {t_eng / t_ort:>6.2f}", flush=True)
            if name == "resnet18":
                per_layer_table(model, rng.standard_normal((1, 3, 224, 224), dtype=np.float32), peak)
    print(f"\npeak resident memory, ResNet-18 batch 8: {peak_rss_mb(8):.0f} MB (target <= 1536 MB)")


if __name__ == "__main__":
    main()
