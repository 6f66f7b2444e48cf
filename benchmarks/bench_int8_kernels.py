"""int8 conv kernels against onnxruntime's QLinearConv, per ResNet-18 layer shape, and an int8
ResNet-18 (224x224, batch 1) quantized by `velcro quantize` and run by the engine against
onnxruntime running the QDQ model quantize_static makes from the same calibration ranges. Every
measurement runs in its own process (2 threads each, the two sides taking turns), so neither side's
thread pool spins while the other works. Prints medians and ratios; nothing is asserted.

onnxruntime runs with its default session options ("ort") and with exact int32 sums
("ort exact": session.x64quantprecision = 1, the mode the golden tests compare against).

With --profile, the ResNet-18's time per node instead: the engine's (each kernel call timed)
against onnxruntime's own profile of the same run (its per-node kernel times, the nodes its
optimizer fused named after the node they replace), medians over the calls and processes.

    python benchmarks/bench_int8_kernels.py [--rounds 3] [--repeat 15] [--skip-e2e] [--profile]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np  # first, as users import it

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, median_ms  # noqa: E402

# (in channels, out channels, input size, kernel, stride, pad, groups): ResNet-18's conv shapes at
# 224x224, then two depthwise convs of MobileNet-V2.
SHAPES = {
    "conv1 7x7/2": (3, 64, 224, 7, 2, 3, 1),
    "layer1 3x3": (64, 64, 56, 3, 1, 1, 1),
    "layer2.0.conv1 3x3/2": (64, 128, 56, 3, 2, 1, 1),
    "layer2 downsample 1x1/2": (64, 128, 56, 1, 2, 0, 1),
    "layer2 3x3": (128, 128, 28, 3, 1, 1, 1),
    "layer3.0.conv1 3x3/2": (128, 256, 28, 3, 2, 1, 1),
    "layer3 3x3": (256, 256, 14, 3, 1, 1, 1),
    "layer4.0.conv1 3x3/2": (256, 512, 14, 3, 2, 1, 1),
    "layer4 3x3": (512, 512, 7, 3, 1, 1, 1),
    "mbv2 dw 3x3 112": (96, 96, 112, 3, 2, 1, 96),
    "mbv2 dw 3x3 14": (576, 576, 14, 3, 1, 1, 576),
}


def _folded(graph):
    """The graph as the engine runs it: batch norms folded into their convs."""
    from velcro_ref.engine import Model
    from velcro_ref.plan import executed_graph

    return executed_graph(Model(graph).plan, graph)


def _layer_data(shape):
    c, k, h, ks, _, _, groups = shape
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (1, c, h, h)).astype(np.uint8)
    w = rng.integers(-127, 128, (k, c // groups, ks, ks)).astype(np.int8)
    bias = rng.integers(-1000, 1000, k).astype(np.int32)
    return x, w, bias


def child_layer_velcro(shape, repeat):
    from velcro_ref import qprepare
    from velcro_ref.kernels.conv import conv_geom
    from velcro_ref.kernels.int8 import conv
    from velcro_ref.ops.base import window_out_size as pool_out_size

    c, k, h, ks, s, p, groups = shape
    x, w, bias = _layer_data(shape)
    geom = conv_geom(c, h, h, k, (ks, ks), (s, s), (p, p, p, p), (1, 1), groups)
    pc = qprepare.prepare_conv("conv", w, 0, bias, 3, np.uint8, geom)
    rq = qprepare.requant_params("ort", 0.02, np.float32(0.01), 0.5, 5, np.uint8, k)
    oh = pool_out_size(h, ks, s, p, p, False)
    out = np.empty((1, k, oh, oh), np.uint8)
    return median_ms(lambda: conv.conv2d(x, 3, pc, geom, rq, None, out), repeat)


def _ort_options(exact):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.inter_op_num_threads = 1
    if exact:
        so.add_session_config_entry("session.x64quantprecision", "1")
    return so


def child_layer_ort(shape, repeat, exact):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    c, k, h, ks, s, p, groups = shape
    x, w, bias = _layer_data(shape)
    inits = {
        "xs": np.float32(0.02),
        "xz": np.uint8(3),
        "w": w,
        "ws": np.float32(0.01),
        "wz": np.int8(0),
        "ys": np.float32(0.5),
        "yz": np.uint8(5),
        "b": bias,
    }
    node = helper.make_node(
        "QLinearConv",
        ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"],
        ["y"],
        kernel_shape=[ks, ks],
        strides=[s, s],
        pads=[p] * 4,
        group=groups,
    )
    graph = helper.make_graph(
        [node],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, None)],
        initializer=[numpy_helper.from_array(np.asarray(v), n) for n, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    sess = ort.InferenceSession(model.SerializeToString(), _ort_options(exact), providers=["CPUExecutionProvider"])
    return median_ms(lambda: sess.run(None, {"x": x}), repeat)


def _e2e_input(size):
    return np.random.default_rng(5).uniform(-1, 1, (1, 3, size, size)).astype(np.float32)


def child_e2e_velcro(model_path, size, repeat, out_path):
    from velcro_ref.engine import load_model

    model = load_model(model_path)
    x = _e2e_input(size)
    np.save(out_path, model.run(x))
    return median_ms(lambda: model.run(x), repeat)


def child_e2e_ort(model_path, size, repeat, exact, out_path):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model_path), _ort_options(exact), providers=["CPUExecutionProvider"])
    x = _e2e_input(size)
    np.save(out_path, sess.run(None, {"input": x})[0])
    return median_ms(lambda: sess.run(None, {"input": x}), repeat)


def child_profile_velcro(model_path, size, repeat):
    """Per node of the engine's run: the median of its kernel call's time (ms) over `repeat` runs."""
    from velcro_ref.engine import load_model

    model = load_model(model_path)
    x = _e2e_input(size)
    times, name_of = {}, {id(st.args): st.name for st in model.steps}

    def timed(run):
        def call(xs, args, skip, out, scratch):
            t = time.perf_counter()
            result = run(xs, args, skip, out, scratch)
            times.setdefault(name_of[id(args)], []).append(time.perf_counter() - t)
            return result

        return call

    for op in {id(st.opdef): st.opdef for st in model.steps}.values():
        op.run = timed(op.run)
    for _ in range(3):
        model.run(x)
    times.clear()
    for _ in range(repeat):
        model.run(x)
    return {name: float(np.median(t)) * 1e3 for name, t in times.items()}


def child_profile_ort(model_path, size, repeat, exact, folder):
    """Per node of onnxruntime's run: the median of its kernel time (ms) in onnxruntime's profile,
    under the name of the model's node it replaces (fused nodes are named `<node>_token_<n>`)."""
    import onnxruntime as ort

    so = _ort_options(exact)
    so.enable_profiling = True
    so.profile_file_prefix = str(Path(folder) / f"ort_profile_{int(exact)}")
    sess = ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
    x = _e2e_input(size)
    for _ in range(3):
        sess.run(None, {"input": x})
    sess.end_profiling()
    sess = ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
    for _ in range(repeat):
        sess.run(None, {"input": x})
    with open(sess.end_profiling()) as f:
        events = json.load(f)
    times = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            name = re.sub(r"_token_\d+$", "", e["name"][: -len("_kernel_time")])
            times.setdefault(name, []).append(e["dur"] / 1e3)
    return {name: float(np.median(t)) for name, t in times.items()}


def prepare_e2e(size, folder):
    """ResNet-18 (BN folded) quantized twice from the same calibration ranges: by `velcro quantize`
    (velcro_ref.quantize; uint8 activations, per-tensor int8 weights, ort requantization) into a
    velcro model file, and by onnxruntime's quantize_static (QDQ) into an ONNX file, the ranges
    handed over through its calibration cache. Returns (velcro model path, ONNX path)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData, save_tensors_data

    import velcro_ref
    from velcro_ref.engine import Model
    from velcro_ref.graph import INPUT
    from velcro_ref.model_io import save_model
    from velcro_ref.onnx_export import export_onnx
    from velcro_ref.zoo import build_zoo

    graph = _folded(build_zoo("resnet18", input_size=size, seed=0))
    fmodel = Model(graph)
    rng = np.random.default_rng(0)
    calib = rng.uniform(-1, 1, (2, 3, size, size)).astype(np.float32)
    stats = velcro_ref.profile(fmodel, calib, batch=1)
    qmodel = velcro_ref.quantize(fmodel, stats, per_channel=False, activations="uint8", requant="ort")
    save_model(qmodel.graph, folder / "resnet18_u8.h5")
    export_onnx(graph, folder / "resnet18.float.onnx")
    ranges = {t: stats.range_of(t) for t in [INPUT, *fmodel.plan.shapes]}
    data = {k: TensorData(lowest=np.float32(a), highest=np.float32(b)) for k, (a, b) in ranges.items()}
    save_tensors_data(TensorsData(CalibrationMethod.MinMax, data), folder / "ranges.json")
    quantize_static(
        str(folder / "resnet18.float.onnx"),
        str(folder / "resnet18_qdq_u8.onnx"),
        None,
        calibration_cache_path=str(folder / "ranges.json"),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    return folder / "resnet18_u8.h5", folder / "resnet18_qdq_u8.onnx"


def run_child(args):
    """Run this script as a child with `args`; its last line of output is a JSON figure."""
    env = dict(os.environ)
    out = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(args)], capture_output=True, text=True, env=env, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def child_main(spec):
    args = json.loads(spec)
    kind = args["kind"]
    if kind == "layer_velcro":
        ms = child_layer_velcro(tuple(args["shape"]), args["repeat"])
    elif kind == "layer_ort":
        ms = child_layer_ort(tuple(args["shape"]), args["repeat"], args["exact"])
    elif kind == "profile_velcro":
        ms = child_profile_velcro(args["model"], args["size"], args["repeat"])
    elif kind == "profile_ort":
        ms = child_profile_ort(args["model"], args["size"], args["repeat"], args["exact"], args["folder"])
    elif kind == "e2e_velcro":
        ms = child_e2e_velcro(args["model"], args["size"], args["repeat"], args["out"])
    else:
        ms = child_e2e_ort(args["model"], args["size"], args["repeat"], args["exact"], args["out"])
    print(json.dumps(ms))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="processes per side and measurement, taking turns")
    ap.add_argument("--repeat", type=int, default=15, help="timed calls per process")
    ap.add_argument("--layers", default=",".join(SHAPES), help="comma-separated layer names")
    ap.add_argument("--skip-e2e", action="store_true")
    ap.add_argument("--profile", action="store_true", help="ResNet-18's time per node (engine and onnxruntime)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child_main(args.child)
        return
    print(f"machine: {machine()}; 2 threads per process; {args.rounds} processes per side, {args.repeat} calls each")
    if args.profile:
        profile(args)
        return
    print(f"\n{'layer':<26} {'MMACs':>7} {'velcro ms':>10} {'ort ms':>8} {'exact ms':>9} {'/ort':>6} {'/exact':>7}")
    sides = [("layer_velcro", {}), ("layer_ort", {"exact": False}), ("layer_ort", {"exact": True})]
    for name in args.layers.split(","):
        shape = SHAPES[name]
        c, k, h, ks, s, p, groups = shape
        oh = (h + 2 * p - ks) // s + 1
        mmacs = k * oh * oh * (c // groups) * ks * ks / 1e6
        figures = [[] for _ in sides]
        for _ in range(args.rounds):
            for fig, (kind, extra) in zip(figures, sides, strict=True):
                fig.append(run_child({"kind": kind, "shape": shape, "repeat": args.repeat, **extra}))
        v, o, e = (float(np.median(f)) for f in figures)
        print(f"{name:<26} {mmacs:>7.1f} {v:>10.2f} {o:>8.2f} {e:>9.2f} {v / o:>6.2f} {v / e:>7.2f}", flush=True)
    if args.skip_e2e:
        return
    with tempfile.TemporaryDirectory() as tmp:
        velcro_model, model = prepare_e2e(224, Path(tmp))
        figures = {"velcro": [], "ort": [], "ort exact": []}
        for r in range(args.rounds):
            spec = {"kind": "e2e_velcro", "model": str(velcro_model), "size": 224, "repeat": args.repeat}
            figures["velcro"].append(run_child({**spec, "out": f"{tmp}/v{r}.npy"}))
            for label, exact in (("ort", False), ("ort exact", True)):
                spec = {"kind": "e2e_ort", "model": str(model), "size": 224, "repeat": args.repeat, "exact": exact}
                figures[label].append(run_child({**spec, "out": f"{tmp}/{label[-5:].strip()}{r}.npy"}))
        med = {k: float(np.median(v)) for k, v in figures.items()}
        same = np.array_equal(np.load(f"{tmp}/v0.npy"), np.load(f"{tmp}/exact0.npy"))
        print("\nint8 ResNet-18 224x224 batch 1, uint8 activations, per-tensor weights, the same calibration ranges:")
        print("  velcro quantize through the engine against quantize_static's QDQ model in onnxruntime")
        print(
            f"  velcro engine {med['velcro']:.1f} ms; onnxruntime {med['ort']:.1f} ms (ratio "
            f"{med['velcro'] / med['ort']:.2f}), exact sums {med['ort exact']:.1f} ms (ratio "
            f"{med['velcro'] / med['ort exact']:.2f}); outputs identical to the exact session: {same}"
        )


def profile(args):
    """Per-node medians of the engine and of onnxruntime (default and exact sessions) on the
    int8 ResNet-18, and their ratios; nodes onnxruntime folds into another (the engine's qrelu
    sites) have no onnxruntime figure, onnxruntime's own nodes (its input's QuantizeLinear, layout
    Transposes) no engine figure; the sums are over every node of each side."""
    with tempfile.TemporaryDirectory() as tmp:
        velcro_model, model = prepare_e2e(224, Path(tmp))
        sides = {"velcro": [], "ort": [], "ort exact": []}
        for _ in range(args.rounds):
            spec = {"model": str(velcro_model), "size": 224, "repeat": args.repeat}
            sides["velcro"].append(run_child({"kind": "profile_velcro", **spec}))
            for label, exact in (("ort", False), ("ort exact", True)):
                spec = {"model": str(model), "size": 224, "repeat": args.repeat, "exact": exact, "folder": tmp}
                sides[label].append(run_child({"kind": "profile_ort", **spec}))
    med = {k: {n: float(np.median([r[n] for r in v if n in r])) for n in v[0]} for k, v in sides.items()}
    print(f"\n{'node':<24} {'velcro ms':>10} {'ort ms':>8} {'exact ms':>9} {'/ort':>6} {'/exact':>7}")
    for name, v in med["velcro"].items():
        o, e = med["ort"].get(name), med["ort exact"].get(name)
        if o is None or e is None:
            print(f"{name:<24} {v:>10.3f} {'-':>8} {'-':>9} {'-':>6} {'-':>7}")
        else:
            print(f"{name:<24} {v:>10.3f} {o:>8.3f} {e:>9.3f} {v / o:>6.2f} {v / e:>7.2f}")
    for name in med["ort"]:
        if name not in med["velcro"] and name in med["ort exact"]:  # onnxruntime's own (its layout changes)
            o, e = med["ort"][name], med["ort exact"][name]
            print(f"{name:<24} {'-':>10} {o:>8.3f} {e:>9.3f} {'-':>6} {'-':>7}")
    tv, to, te = (sum(m.values()) for m in (med["velcro"], med["ort"], med["ort exact"]))
    print(f"{'sum of nodes':<24} {tv:>10.2f} {to:>8.2f} {te:>9.2f} {tv / to:>6.2f} {tv / te:>7.2f}")


if __name__ == "__main__":
    main()
