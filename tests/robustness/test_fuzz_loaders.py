"""Fuzzing: mutated model, stats and mask files (bit flips, truncation, deleted or replaced datasets and
attributes, edited graphs) either load and run or raise VelcroError: never another exception, a
segfault or a hang. The loaders run in a separate process (fuzz_worker.py) under a per-file timeout."""

import json
import math
import os
import select
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

WORKER = Path(__file__).with_name("fuzz_worker.py")
LOADER_TIMEOUT_S = 8  # the loaders' own guard against an HDF5 library stuck on a corrupt file
TIMEOUT_S = 40.0  # per file, on this side; a healthy load and run takes milliseconds

ATTR_VALUES = [
    0,
    -1,
    2,
    10**12,
    1.5,
    math.nan,
    "",
    "x",
    "{}",
    "[]",
    "null",
    "[1, 2]",
    '{"nodes": []}',
    "[" * 5000,
    np.array([1, 2]),
    np.zeros((2, 2), np.float32),
    np.bytes_(b"\xff\xfe"),
    np.bool_(True),
    h5py.Empty("f4"),
]
JSON_VALUES = [
    0, 1, 2, 3, -1, 10**9, 10**30, True, None, 1.5, "x", "relu", "conv2d", "input", "conv1", "fc",
    [], [1], [0, 0], [3, 3], [1, 1, 1, 1], [[1]], ["input"], ["input", "input"], {}, {"weight": "fc.weight"},
]  # fmt: skip
DATASET_REPLACEMENTS = (
    "float64",
    "float16",
    "int8",
    "bool",
    "drop-axis",
    "grow-axis",
    "scalar",
    "string",
    "group",
    "huge",
    "empty",
    "nan",
    "scale",
)


class Worker:
    """The loader process; restarted after it dies or hangs."""

    def __init__(self, reference_model):
        self.reference = str(reference_model)
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER), self.reference],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "VELCRO_LOAD_TIMEOUT_S": str(LOADER_TIMEOUT_S)},
        )
        assert self._reply(120.0)["outcome"] == "ready"

    def _reply(self, timeout):
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            self.stop()
            pytest.fail(f"the loader hung for more than {timeout:.0f} s")
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait(timeout=10)
            self.proc = None
            pytest.fail(f"the loader process died (exit {code}; negative = killed by that signal, e.g. -11 segfault)")
        return json.loads(line)

    def check(self, kind, path):
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        self.proc.stdin.write(json.dumps({"kind": kind, "path": str(path)}) + "\n")
        self.proc.stdin.flush()
        return self._reply(TIMEOUT_S)

    def stop(self):
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture(scope="module")
def worker(model_file):
    w = Worker(model_file)
    yield w
    w.stop()


def h5_items(path):
    """(h5 path, attribute name or None) for every attribute, dataset and group, in a fixed order."""
    items = []
    with h5py.File(path, "r") as f:
        items += [("/", a) for a in sorted(f.attrs)]

        def visit(name, obj):
            items.append((name, None))
            items.extend((name, a) for a in sorted(obj.attrs))

        f.visititems(visit)
    return items


def metadata_positions(path):
    """Byte offsets of the file outside the raw data of contiguous datasets: headers, attributes, B-trees."""
    size = os.path.getsize(path)
    used = np.zeros(size, bool)
    with h5py.File(path, "r") as f:

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and obj.id.get_offset() is not None:
                start = obj.id.get_offset()
                used[start : start + obj.id.get_storage_size()] = True

        f.visititems(visit)
    return np.flatnonzero(~used)


def replace_dataset(f, name, how):
    ds = f[name]
    shape, dtype = ds.shape, ds.dtype
    data = ds[()] if shape is not None and ds.size <= 1 << 20 else np.zeros(1, np.float32)
    parent, leaf = name.rsplit("/", 1) if "/" in name else ("/", name)
    del f[name]
    g = f[parent]
    if how in ("float64", "float16", "int8", "bool"):
        g.create_dataset(leaf, data=np.asarray(data).astype(how))
    elif how == "drop-axis":
        g.create_dataset(leaf, data=np.zeros(shape[1:] or (1,), dtype))
    elif how == "grow-axis":
        g.create_dataset(leaf, data=np.zeros((shape[0] + 1, *shape[1:]) if shape else (2,), dtype))
    elif how == "scalar":
        g.create_dataset(leaf, data=np.zeros((), dtype))
    elif how == "string":
        g.create_dataset(leaf, data="not numbers")
    elif how == "group":
        g.create_group(leaf)
    elif how == "huge":
        g.create_dataset(leaf, shape=(10**6, 10**6), dtype=dtype)
    elif how == "empty":
        g.create_dataset(leaf, data=h5py.Empty(dtype))
    else:
        a = np.array(data, copy=True)
        if a.size and a.dtype.kind == "f":
            a.flat[a.size // 2] = np.nan if how == "nan" else a.flat[a.size // 2] * 3 + 1
        g.create_dataset(leaf, data=a)


def edit_graph_json(f, node_index, key, value):
    """Set one field of one node (or of the graph) in the model's graph JSON, then make the stored
    fingerprint agree when the new graph can be fingerprinted, so validation is what refuses it."""
    doc = json.loads(f.attrs["graph"])
    if key in ("input_shape", "output"):
        doc[key] = value
    else:
        node = doc["nodes"][node_index % len(doc["nodes"])]
        if key.startswith("attrs."):
            node["attrs"][key[6:]] = value
        else:
            node[key] = value
    f.attrs["graph"] = json.dumps(doc)
    try:
        from velcro_ref.h5io import unescape_key as _key
        from velcro_ref.model_io import graph_from_json

        params = {_key(k): v[()] for k, v in f["params"].items()}
        graph = graph_from_json(doc, json.loads(f.attrs["meta"]), params)
        needed = {k for n in graph.nodes for k in n.params.values()}
        graph = type(graph)(graph.nodes, graph.input_shape, graph.output, {k: params[k] for k in needed})
        f.attrs["fingerprint"] = graph.fingerprint()
    except Exception:  # the new graph cannot even be fingerprinted: the loader will refuse it anyway
        pass


NODE_KEYS = ["op", "name", "inputs", "params", "input_shape", "output"] + [
    f"attrs.{a}" for a in ("kernel", "stride", "pads", "out_channels", "groups", "dilation", "eps", "ceil_mode", "p")
]

edits = st.one_of(
    st.tuples(st.just("delete"), st.integers(0, 10**6)),
    st.tuples(st.just("attr"), st.integers(0, 10**6), st.sampled_from(range(len(ATTR_VALUES)))),
    st.tuples(st.just("dataset"), st.integers(0, 10**6), st.sampled_from(DATASET_REPLACEMENTS)),
)
byte_edits = st.one_of(
    st.tuples(st.just("flip"), st.floats(0, 1, exclude_max=True), st.integers(0, 7), st.booleans()),
    st.tuples(st.just("truncate"), st.floats(0, 1, exclude_max=True)),
)


def mutate(src, dst, h5_edits, raw_edits, graph_edit=None):
    shutil.copyfile(src, dst)
    items = h5_items(src)
    datasets = [name for name, attr in items if attr is None]
    if h5_edits or graph_edit:
        with h5py.File(dst, "a") as f:
            if graph_edit:
                edit_graph_json(f, *graph_edit)
            for edit in h5_edits:
                if edit[0] == "delete":
                    name, attr = items[edit[1] % len(items)]
                    obj = f.get(name)
                    if obj is not None and attr is None:
                        del f[name]
                    elif obj is not None and attr in obj.attrs:
                        del obj.attrs[attr]
                elif edit[0] == "attr":
                    attrs = [it for it in items if it[1] is not None]
                    name, attr = attrs[edit[1] % len(attrs)]
                    if name in f:
                        f[name].attrs[attr] = ATTR_VALUES[edit[2]]
                else:
                    name = datasets[edit[1] % len(datasets)]
                    if isinstance(f.get(name), h5py.Dataset):
                        try:
                            replace_dataset(f, name, edit[2])
                        except (ValueError, TypeError):  # e.g. strings to float: that edit is only a deletion
                            pass
    if raw_edits:
        data = bytearray(Path(dst).read_bytes())
        meta = metadata_positions(src)
        for edit in raw_edits:
            if edit[0] == "flip" and data:
                pool = meta if edit[3] and len(meta) else np.arange(len(data))
                pos = int(pool[int(edit[1] * len(pool))]) % len(data)
                data[pos] ^= 1 << edit[2]
            elif edit[0] == "truncate":
                del data[int(edit[1] * len(data)) :]
        Path(dst).write_bytes(bytes(data))


def assert_loads_or_velcro_error(worker, kind, path):
    reply = worker.check(kind, path)
    assert reply["outcome"] in ("ok", "error"), f"{kind} loader raised a non-VelcroError:\n{reply['detail']}"
    if reply["outcome"] == "error":
        assert reply["detail"].startswith(str(path)), reply["detail"]
        assert "\n" not in reply["detail"], reply["detail"]


FUZZ = settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture], deadline=None)


@FUZZ
@given(
    h5_edits=st.lists(edits, max_size=2),
    raw_edits=st.lists(byte_edits, max_size=3),
    graph_edit=st.none() | st.tuples(st.integers(0, 200), st.sampled_from(NODE_KEYS), st.sampled_from(JSON_VALUES)),
)
def test_mutated_model_loads_and_runs_or_raises_velcro_error(worker, model_file, h5_edits, raw_edits, graph_edit):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "model.h5"
        mutate(model_file, path, h5_edits, raw_edits, graph_edit)
        assert_loads_or_velcro_error(worker, "model", path)


@FUZZ
@given(h5_edits=st.lists(edits, max_size=2), raw_edits=st.lists(byte_edits, max_size=3))
def test_mutated_stats_load_and_run_or_raise_velcro_error(worker, stats_file, h5_edits, raw_edits):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "stats.h5"
        mutate(stats_file, path, h5_edits, raw_edits)
        assert_loads_or_velcro_error(worker, "stats", path)


@FUZZ
@given(h5_edits=st.lists(edits, max_size=2), raw_edits=st.lists(byte_edits, max_size=3))
def test_mutated_masks_load_and_run_or_raise_velcro_error(worker, mask_file, h5_edits, raw_edits):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "masks.h5"
        mutate(mask_file, path, h5_edits, raw_edits)
        assert_loads_or_velcro_error(worker, "masks", path)
