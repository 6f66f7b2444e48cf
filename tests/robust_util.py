"""Helpers every test may import: the real-process CLI runner, the one-line error check, edited copies of HDF5
files, zoo graphs built once."""

import functools
import os
import resource
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
N_CLASSES = 4


@dataclass
class Result:
    """Exit code and output of one `velcro` run."""

    code: int
    out: str
    err: str

    def error_line(self, *needles, code=1) -> str:
        """Assert a user error: exit `code`, exactly one `error: ` line holding every needle, no traceback."""
        assert self.code == code, f"exit {self.code}, expected {code}\n{self.err}"
        assert "Traceback" not in self.err, self.err
        lines = [ln for ln in self.err.splitlines() if ln.startswith("error: ")]
        assert len(lines) == 1, self.err
        for needle in needles:
            assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
        return lines[0]


def _file_limit(size):
    """In the child: no file may grow past `size` bytes; a write beyond fails with EFBIG (SIGXFSZ ignored),
    as a write fails on a full disk."""

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))

    return limit


def velcro_process(*args, env=None, timeout=120, file_limit=None) -> Result:
    """Run `python -m velcro_ref.cli ARGS` as a real process (its files limited to `file_limit` bytes if given)."""
    res = subprocess.run(
        [sys.executable, "-m", "velcro_ref.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
        preexec_fn=None if file_limit is None else _file_limit(file_limit),
    )
    return Result(res.returncode, res.stdout, res.stderr)


def edited_copy(src, dst, edit):
    """Copy an HDF5 file and apply edit(h5py.File) to the copy."""
    dst = Path(dst)
    dst.write_bytes(Path(src).read_bytes())
    with h5py.File(dst, "a") as f:
        edit(f)
    return dst


@functools.cache
def zoo_graph(name="resnet18", **kwargs):
    """A zoo graph (velcro_ref.zoo.build_zoo), built once per process for each set of arguments;
    graphs are frozen, so tests may share them."""
    from velcro_ref.zoo import build_zoo

    return build_zoo(name, **kwargs)


class NodeOutputs:
    """Engine observer: a copy of every node's output, by node name (`values`)."""

    def __init__(self):
        self.values = {}

    def on_site(self, name, y):
        pass

    def on_node(self, step, inputs, out, skip):
        self.values[step.name] = out.copy()

    def digests(self) -> dict:
        """sha256 of each output's bytes: large outputs compared without printing them."""
        import hashlib

        return {k: hashlib.sha256(v.tobytes()).hexdigest() for k, v in self.values.items()}


def images_npz(path, images):
    """Write images = (x, labels) as an --images file (x, y) at path; returns path."""
    np.savez(path, x=images[0], y=images[1])
    return path


def save_onnx(path, nodes, inits, input_shape, opsets=(("", 13),), name="g"):
    """An ONNX model of `nodes` with one float input 'x' of `input_shape` (a symbolic batch: "N") and
    one float output 'y', IR version 8, saved at path; returns path."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(input_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets], ir_version=8)
    onnx.save(model, str(path))
    return path


def int8_session(path, act, fmt, extra_outputs=()):
    """An onnxruntime session of a quantized ONNX model in its exact mode (docs/int8.md, "Where
    onnxruntime is not exact"): uint8 activations with `session.x64quantprecision = 1`, int8 QDQ
    with `session.qdqisint8allowed = 1`, int8 QOperator as it is. extra_outputs: (tensor, dtype)
    pairs exposed as graph outputs."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if act == "uint8":
        so.add_session_config_entry("session.x64quantprecision", "1")
    elif fmt == "QDQ":
        so.add_session_config_entry("session.qdqisint8allowed", "1")
    model = onnx.load(str(path))
    onnx_type = {np.dtype(np.uint8): TensorProto.UINT8, np.dtype(np.int8): TensorProto.INT8}
    for name, dtype in extra_outputs:
        model.graph.output.append(helper.make_tensor_value_info(name, onnx_type[dtype], None))
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def overflowing_model():
    """(Model, x): a flatten -> linear -> relu model whose score 0 overflows to +inf on the first 3
    of the 7 images x (ones) and stays finite on the other 4 (1e-38)."""
    from velcro_ref.engine import Model
    from velcro_ref.graph import INPUT, Graph, Node

    w = np.array([[3e38] * 4, [1] * 4, [-1] * 4], np.float32)
    nodes = (
        Node("f", "flatten", (INPUT,)),
        Node("l", "linear", ("f",), {}, {"weight": "w"}),
        Node("r", "relu", ("l",)),
    )
    x = np.concatenate([np.ones((3, 1, 2, 2), np.float32), np.full((4, 1, 2, 2), 1e-38, np.float32)])
    return Model(Graph(nodes, (1, 2, 2), "r", {"w": w})), x
