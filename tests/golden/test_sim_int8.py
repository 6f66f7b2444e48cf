"""The simulator on an int8 layer worked out by hand: operand sizes from the model, the
requantization on the vector unit, dense and VELCRO-compressed.

The model: input (2, 4, 4) float32 -> quantize "q" -> qconv2d "c" (4 filters 3x3 on 2 channels,
pad 1, int8, fixed_point requantization) -> qrelu "r" (the site) -> dequantize "out". The array
is 4x4 (output stationary), the vector unit 3 lanes; the arch file says 16-bit operands and 48-bit
accumulators, the int8 model is priced with 8 and 32.
"""

import numpy as np
import pytest
from sim_util import arch_toml

from simulator import parse_arch, simulate
from velcro_ref.engine import Model
from velcro_ref.graph import INPUT, Graph, Node
from velcro_ref.masks import MaskSet

Q = {"y_scale": 0.0625, "y_zero_point": 0, "dtype": "int8"}


def tiny_arch():
    text = arch_toml(4, 4, "output_stationary", lanes=3, name="tiny")
    text = text.replace("operand_bits = 8", "operand_bits = 16").replace(
        "accumulator_bits = 32", "accumulator_bits = 48"
    )
    return parse_arch(text, "tiny.toml")


def int8_model():
    rng = np.random.default_rng(0)
    conv_attrs = {"out_channels": 4, "kernel": 3, "pads": 1, "requant": "fixed_point", **Q, "y_zero_point": -128}
    nodes = (
        Node("q", "quantize", (INPUT,), Q),
        Node("c", "qconv2d", ("q",), conv_attrs, {"weight": "c.w", "w_scale": "c.s", "bias": "c.b"}),
        Node("r", "qrelu", ("c",)),
        Node("out", "dequantize", ("r",)),
    )
    params = {
        "c.w": rng.integers(-127, 128, (4, 2, 3, 3)).astype(np.int8),
        "c.s": np.full(4, 0.01, np.float32),
        "c.b": rng.integers(-100, 100, 4).astype(np.int32),
    }
    return Model(Graph(nodes, (2, 4, 4), "out", params))


def by_name(result, side="dense"):
    return {layer.name: s for layer, s in zip(result.layers, getattr(result, side), strict=True)}


def test_int8_model_is_priced_with_8_bit_operands_and_32_bit_accumulators():
    arch = tiny_arch()
    assert (arch.operand_bits, arch.accumulator_bits) == (16, 48)
    res = simulate(int8_model(), arch)
    assert (res.arch.operand_bits, res.arch.accumulator_bits) == (8, 32)
    assert [layer.name for layer in res.layers] == ["q", "c", "c.requant", "r", "out"]
    s = by_name(res)
    # quantize: 32 elements x 4 ops (divide, round, zero point, clamp) on 3 lanes
    assert (s["q"].ops, s["q"].compute_cycles) == (128, 43)
    # conv: Sr = 16 pixels, T = 2*3*3 = 18, one chunk of 4 filters: ceil(16/4) = 4 folds of
    # 4 + 4 + 18 - 2 = 24 cycles; 64 outputs x 18 = 1152 MACs
    assert (s["c"].compute_cycles, s["c"].macs) == (96, 1152)
    # ifmap reads 16 x 18 one-byte operands + the 32-byte input from DRAM; filter reads 4 folds x
    # 18 x 4 filters + 72 bytes of weights from DRAM; 64 one-byte outputs written and drained
    assert s["c"].ifmap_sram_bytes == 16 * 18 + 32
    assert s["c"].filter_sram_bytes == 4 * 18 * 4 + 72
    assert s["c"].ofmap_sram_bytes == 64 + 64
    # requantization on the conv's output path: 64 outputs x 4 ops, no cycles of its own
    assert (s["c.requant"].ops, s["c.requant"].compute_cycles, s["c.requant"].macs) == (256, 0, 0)
    assert s["c.requant"].energy["vector"] == 256 * arch.energy_pj["vector_op"]
    # the site (fused): 64 ops; dequantize: 64 x 2 ops on 3 lanes
    assert (s["r"].ops, s["r"].compute_cycles) == (64, 0)
    assert (s["out"].ops, s["out"].compute_cycles) == (128, 43)
    # the float32 tensors are 4 bytes an element: quantize reads 32 x 4 and writes 32 x 1 bytes
    # (each through its buffer: twice), dequantize reads 64 x 1 and writes 64 x 4
    assert (s["q"].dram_bytes, s["q"].ifmap_sram_bytes, s["q"].ofmap_sram_bytes) == (128 + 32, 256, 64)
    assert (s["out"].dram_bytes, s["out"].ifmap_sram_bytes, s["out"].ofmap_sram_bytes) == (64 + 256, 128, 512)
    assert res.total_dense.ops == 128 + 256 + 64 + 128
    assert res.total_dense.compute_cycles == 43 + 96 + 43


def test_masked_int8_elements_skip_their_macs_and_their_requantization():
    model = int8_model()
    mask = np.zeros((4, 4, 4), bool)
    mask[1] = True  # filter 1 everywhere: 16 elements
    mask[2, 0] = True  # filter 2, first row: 4 elements
    masks = MaskSet(model.fingerprint, {"r": (mask, np.zeros((4, 4, 4), np.float32))})
    res = simulate(model, tiny_arch(), masks)
    s = by_name(res, "compressed")
    assert s["c"].macs == (64 - 20) * 18
    assert s["c.requant"].ops == (64 - 20) * 4
    assert s["r"].ops == 64 - 20
    # every pixel is still needed by filters 0 and 3: the same folds
    assert s["c"].compute_cycles == 96
    # the mask table: the conv reads the 8-byte bitmap (64 bits) for its outputs and the site for its
    # elements; the requantization on the conv's output path reads nothing of its own
    table = tiny_arch().energy_pj["mask_table"]
    assert s["c.requant"].energy["mask"] == 0 and s["c.requant"].mask_bytes == 0
    assert s["r"].energy["mask"] == pytest.approx(8 * table)


def test_a_float_model_keeps_the_arch_precision():
    rng = np.random.default_rng(1)
    conv = Node("c", "conv2d", (INPUT,), {"out_channels": 4, "kernel": 3, "pads": 1}, {"weight": "c.w"})
    model = Model(Graph((conv,), (2, 4, 4), "c", {"c.w": rng.standard_normal((4, 2, 3, 3)).astype(np.float32)}))
    res = simulate(model, tiny_arch())
    assert (res.arch.operand_bits, res.arch.accumulator_bits) == (16, 48)
    assert [layer.name for layer in res.layers] == ["c"]


def test_a_masked_int8_residual_add_skips_the_masked_elements():
    """A site after an int8 add: the add's masked elements are skipped on the vector unit too."""
    rng = np.random.default_rng(2)
    conv = {"out_channels": 2, "kernel": 1, "requant": "ort", **Q}
    add = {**Q, "y_zero_point": -128}
    nodes = (
        Node("q", "quantize", (INPUT,), Q),
        Node("c", "qconv2d", ("q",), conv, {"weight": "c.w", "w_scale": "c.s"}),
        Node("a", "qadd", ("c", "q"), add),
        Node("r", "qrelu", ("a",)),
        Node("out", "dequantize", ("r",)),
    )
    params = {"c.w": rng.integers(-127, 128, (2, 2, 1, 1)).astype(np.int8), "c.s": np.full(2, 0.01, np.float32)}
    model = Model(Graph(nodes, (2, 4, 4), "out", params))
    mask = np.zeros((2, 4, 4), bool)
    mask[0, :2] = True  # 8 elements
    res = simulate(model, tiny_arch(), MaskSet(model.fingerprint, {"r": (mask, np.zeros((2, 4, 4), np.float32))}))
    d, c = by_name(res), by_name(res, "compressed")
    assert d["a"].ops == 32 * 4 and c["a"].ops == (32 - 8) * 4  # 4 ops per QLinearAdd element
    assert c["c"].macs == (32 - 8) * 2 and c["c.requant"].ops == (32 - 8) * 4


def test_a_float_linear_of_an_int8_model_moves_four_bytes_an_element():
    """A linear left float on dequantized values (docs/int8.md) was priced at the int8 model's one byte per
    input, weight and output; its float32 tensors are four, as the vector ops' are."""
    rng = np.random.default_rng(0)
    nodes = (
        *int8_model().graph.nodes[:3],
        Node("dq", "dequantize", ("r",)),
        Node("f", "flatten", ("dq",)),
        Node("l", "linear", ("f",), {}, {"weight": "l.w"}),
    )
    params = {**int8_model().graph.params, "l.w": rng.standard_normal((5, 64)).astype(np.float32)}
    res = simulate(Model(Graph(nodes, (2, 4, 4), "l", params)), tiny_arch())
    s = by_name(res)
    # T = 64, one chunk of 4 filters and one of 1; Sr = 1 pixel: 1 fold each. ifmap reads 64 per chunk, filter
    # reads 64 x 5, outputs 5, each 4 bytes; from DRAM the 64 inputs and 320 weights, the 5 outputs to it
    assert s["l"].ifmap_sram_bytes == (2 * 64 + 64) * 4
    assert s["l"].filter_sram_bytes == (64 * 5 + 64 * 5) * 4
    assert s["l"].ofmap_sram_bytes == (5 + 5) * 4
    assert s["l"].dram_bytes == (64 + 320 + 5) * 4
