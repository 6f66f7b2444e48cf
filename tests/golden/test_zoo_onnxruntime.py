"""Golden: every zoo model at 224x224, exported to ONNX and run in onnxruntime, matches the engine."""

import numpy as np
import onnxruntime as ort
import pytest

from velcro_ref.engine import Model
from velcro_ref.onnx_export import export_onnx
from velcro_ref.onnx_import import import_onnx
from velcro_ref.zoo import ZOO, build_zoo

RTOL = 1e-4  # max|engine - ort| <= RTOL * max|ort|


@pytest.mark.slow
@pytest.mark.parametrize("name", ZOO)
def test_zoo_model_matches_onnxruntime(name, tmp_path):
    g = build_zoo(name, input_size=224, seed=0)
    path = tmp_path / f"{name}.onnx"
    export_onnx(g, path)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1234).normal(0, 1, (1, 3, 224, 224)).astype(np.float32)
    want = sess.run(None, {"input": x})[0]
    got = Model(g).run(x)
    assert got.shape == want.shape == (1, 1000)
    err = float(np.max(np.abs(got - want)))
    scale = float(np.max(np.abs(want)))
    print(f"{name}: max|engine - ort| = {err:.3g}, max|ort| = {scale:.3g}")
    assert err <= RTOL * scale
    # The exported file imports back to a graph with the same activation sites.
    assert import_onnx(path).activation_sites() == g.activation_sites()
