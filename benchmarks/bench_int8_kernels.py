"""int8 conv kernels against onnxruntime's QLinearConv, per ResNet-18 layer shape, and an int8
ResNet-18 (224x224, batch 1) run by chaining the int8 kernels against onnxruntime running the
same QDQ model. Every measurement runs in its own process (2 threads each, the two sides taking
turns), so neither side's thread pool spins while the other works. Prints medians and ratios;
nothing is asserted.

onnxruntime runs with its default session options ("ort") and with exact int32 sums
("ort exact": session.x64quantprecision = 1, the mode the golden tests compare against).

    python benchmarks/bench_int8_kernels.py [--rounds 3] [--repeat 15] [--skip-e2e]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# isort: off
import velcro_ref.threads  # noqa: F401  (before NumPy: see velcro_ref/threads.py)

# isort: on
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402

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


def _median_ms(fn, repeat):
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e3)


def _layer_data(shape):
    c, k, h, ks, _, _, groups = shape
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (1, c, h, h)).astype(np.uint8)
    w = rng.integers(-127, 128, (k, c // groups, ks, ks)).astype(np.int8)
    bias = rng.integers(-1000, 1000, k).astype(np.int32)
    return x, w, bias


def child_layer_velcro(shape, repeat):
    from velcro_ref import qprepare
    from velcro_ref.kernels.int8 import conv
    from velcro_ref.ops.base import window_out_size as pool_out_size

    c, k, h, ks, s, p, groups = shape
    x, w, bias = _layer_data(shape)
    geom = qprepare.ConvGeom(ks, ks, s, s, p, p, p, p, 1, 1, groups)
    pc = qprepare.prepare_conv("conv", w, 0, bias, 3, np.uint8, geom)
    rq = qprepare.requant_params("ort", 0.02, np.float32(0.01), 0.5, 5, np.uint8, k)
    oh = pool_out_size(h, ks, s, p, p, False)
    out = np.empty((1, k, oh, oh), np.uint8)
    return _median_ms(lambda: conv.conv2d(x, 3, pc, geom, rq, None, out), repeat)


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
    return _median_ms(lambda: sess.run(None, {"x": x}), repeat)


def _resnet18_ranges(size):
    """The float ResNet-18 (BN folded), and per-tensor ranges measured with the float engine."""
    from velcro_ref.engine import Model
    from velcro_ref.graph import INPUT
    from velcro_ref.zoo import build_zoo

    graph = _folded(build_zoo("resnet18", input_size=size, seed=0))

    class Ranges:
        def __init__(self):
            self.r = {}

        def on_site(self, name, y):
            pass

        def on_node(self, step, inputs, out, skip):
            lo, hi = float(out.min()), float(out.max())
            old = self.r.get(step.name, (lo, hi))
            self.r[step.name] = (min(old[0], lo), max(old[1], hi))

    obs = Ranges()
    rng = np.random.default_rng(0)
    images = [rng.uniform(-1, 1, (1, 3, size, size)).astype(np.float32) for _ in range(2)]
    model = Model(graph)
    for x in images:
        model.run(x, observer=obs)
    obs.r[INPUT] = (min(float(x.min()) for x in images), max(float(x.max()) for x in images))
    return graph, obs.r


class Int8ResNet:
    """An int8 ResNet-18 as chained int8 kernels: uint8 activations, per-tensor weights, the
    ReLUs in the output clamps, parameters by velcro_ref.quant from the measured ranges (what
    quantize_static computes from the same ranges)."""

    def __init__(self, graph, ranges):
        from velcro_ref import ops, qprepare, quant
        from velcro_ref.graph import INPUT, infer_shapes

        readers = graph.readers()
        r = {k: (np.float32(a), np.float32(b)) for k, (a, b) in ranges.items()}
        for n in graph.nodes:
            if n.op == "relu" and len(readers[n.inputs[0]]) == 1:
                r[n.inputs[0]] = r[n.name]
        self.q = {INPUT: quant.scale_zero_point(*r[INPUT], "uint8")}
        self.shapes = infer_shapes(graph)
        self.steps, alias = [], {}
        for n in graph.nodes:
            src = [alias.get(t, t) for t in n.inputs]
            if n.op == "relu":
                alias[n.name] = src[0]
                continue
            xs, xz = self.q[src[0]]
            own = quant.scale_zero_point(*r[n.name], "uint8")
            if n.op in ("conv2d", "linear"):
                w, b = graph.params[n.params["weight"]], graph.params[n.params["bias"]]
                ws = quant.adjust_weight_scale_for_bias(xs, quant.weight_scale(w), b, False)
                wq, bq = quant.quantize_weight(w, ws), quant.quantize_bias(b, xs, ws)
                rq = qprepare.requant_params("ort", xs, ws, own[0], own[1], np.uint8, w.shape[0])
                if n.op == "conv2d":
                    a = ops.get(n.op).check(n)
                    geom = qprepare.ConvGeom(*a["kernel"], *a["stride"], *a["pads"], *a["dilation"], a["groups"])
                    pc = qprepare.prepare_conv(n.name, wq, 0, bq, int(xz), np.uint8, geom)
                    self.steps.append(("conv", n.name, src, (int(xz), pc, geom, rq)))
                else:
                    pl = qprepare.prepare_linear(n.name, wq, 0, bq, int(xz), np.uint8)
                    self.steps.append(("linear", n.name, src, (int(xz), pl, rq)))
                self.q[n.name] = own
            elif n.op == "add":
                bs, bz = self.q[src[1]]
                self.steps.append(("add", n.name, src, qprepare.add_params(xs, xz, bs, bz, *own, np.uint8)))
                self.q[n.name] = own
            elif n.op == "max_pool":
                a = ops.get(n.op).check(n)
                self.steps.append(("max_pool", n.name, src, (*a["kernel"], *a["stride"], *a["pads"][:2])))
                self.q[n.name] = (xs, xz)
            elif n.op == "global_avg_pool":
                hw = self.shapes[src[0]][1] * self.shapes[src[0]][2]
                scale = qprepare.global_avg_pool_scale(xs, own[0], hw)
                self.steps.append(("gap", n.name, src, (int(xz), scale, int(own[1]))))
                self.q[n.name] = own
            elif n.op == "flatten":
                self.steps.append(("flatten", n.name, src, None))
                self.q[n.name] = (xs, xz)
        self.output = alias.get(graph.output, graph.output)

    def run(self, x):
        from velcro_ref.graph import INPUT
        from velcro_ref.kernels.int8 import conv, eltwise, linear, pool, requant

        s, z = self.q[INPUT]
        env = {INPUT: np.empty(x.shape, np.uint8)}
        requant.quantize_linear(x.reshape(-1), s, int(z), 0, 255, env[INPUT].reshape(-1))
        for kind, name, src, prm in self.steps:
            xin = env[src[0]]
            out = np.empty((x.shape[0], *self.shapes[name]), np.uint8) if kind != "flatten" else None
            if kind == "conv":
                conv.conv2d(xin, *prm[:3], prm[3], None, out)
            elif kind == "linear":
                linear.linear(xin, *prm, None, out)
            elif kind == "add":
                eltwise.add(xin, env[src[1]], prm, None, out)
            elif kind == "max_pool":
                pool.max_pool(xin, *prm, out)
            elif kind == "gap":
                pool.global_avg_pool(xin, prm[0], prm[1], prm[2], 0, 255, out)
            else:
                out = xin.reshape(x.shape[0], -1)
            env[name] = out
        s, z = self.q[self.output]
        y = np.empty(env[self.output].shape, np.float32)
        requant.dequantize_linear(env[self.output].reshape(-1), s, int(z), y.reshape(-1))
        return y


def _e2e_input(size):
    return np.random.default_rng(5).uniform(-1, 1, (1, 3, size, size)).astype(np.float32)


def child_e2e_velcro(size, repeat, out_path):
    graph, ranges = _resnet18_ranges(size)
    net = Int8ResNet(graph, ranges)
    x = _e2e_input(size)
    np.save(out_path, net.run(x))
    return _median_ms(lambda: net.run(x), repeat)


def child_e2e_ort(model_path, size, repeat, exact, out_path):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model_path), _ort_options(exact), providers=["CPUExecutionProvider"])
    x = _e2e_input(size)
    np.save(out_path, sess.run(None, {"input": x})[0])
    return _median_ms(lambda: sess.run(None, {"input": x}), repeat)


def quantize_resnet(size, path):
    """ResNet-18 quantized by quantize_static (QDQ, uint8 activations, per-tensor int8 weights)
    from the ranges the velcro chain uses, given through its calibration cache."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData, save_tensors_data

    from velcro_ref.onnx_export import export_onnx

    graph, ranges = _resnet18_ranges(size)
    export_onnx(graph, path.with_suffix(".float.onnx"))
    data = {k: TensorData(lowest=np.float32(a), highest=np.float32(b)) for k, (a, b) in ranges.items()}
    cache = path.with_suffix(".ranges.json")
    save_tensors_data(TensorsData(CalibrationMethod.MinMax, data), cache)
    quantize_static(
        str(path.with_suffix(".float.onnx")),
        str(path),
        None,
        calibration_cache_path=str(cache),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )


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
    elif kind == "e2e_velcro":
        ms = child_e2e_velcro(args["size"], args["repeat"], args["out"])
    else:
        ms = child_e2e_ort(args["model"], args["size"], args["repeat"], args["exact"], args["out"])
    print(json.dumps(ms))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="processes per side and measurement, taking turns")
    ap.add_argument("--repeat", type=int, default=15, help="timed calls per process")
    ap.add_argument("--layers", default=",".join(SHAPES), help="comma-separated layer names")
    ap.add_argument("--skip-e2e", action="store_true")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child_main(args.child)
        return
    print(f"machine: {machine()}; 2 threads per process; {args.rounds} processes per side, {args.repeat} calls each")
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
        model = Path(tmp) / "resnet18_qdq_u8.onnx"
        quantize_resnet(224, model)
        figures = {"velcro": [], "ort": [], "ort exact": []}
        for r in range(args.rounds):
            figures["velcro"].append(
                run_child({"kind": "e2e_velcro", "size": 224, "repeat": args.repeat, "out": f"{tmp}/v{r}.npy"})
            )
            for label, exact in (("ort", False), ("ort exact", True)):
                spec = {"kind": "e2e_ort", "model": str(model), "size": 224, "repeat": args.repeat, "exact": exact}
                figures[label].append(run_child({**spec, "out": f"{tmp}/{label[-5:].strip()}{r}.npy"}))
        med = {k: float(np.median(v)) for k, v in figures.items()}
        same = np.array_equal(np.load(f"{tmp}/v0.npy"), np.load(f"{tmp}/exact0.npy"))
        print("\nint8 ResNet-18 224x224 batch 1 (QDQ, uint8 activations, per-tensor weights):")
        print(
            f"  velcro int8 kernels {med['velcro']:.1f} ms; onnxruntime {med['ort']:.1f} ms (ratio "
            f"{med['velcro'] / med['ort']:.2f}), exact sums {med['ort exact']:.1f} ms (ratio "
            f"{med['velcro'] / med['ort exact']:.2f}); outputs identical to the exact session: {same}"
        )


if __name__ == "__main__":
    main()
