"""RTL vectors: tiles, streams and hex words of small layers worked by hand; manifest round trip;
the tile plan against the simulator's column chunks; bad input."""

import dataclasses
import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import velcro_ref.rtl_vectors as rv
from simulator.compute import column_chunks
from simulator.workload import Layer
from velcro_ref.rtl_vectors import (
    QConvLayer,
    RtlVectorError,
    pack_words,
    plan_tiles,
    read_hex,
    read_rtl_vectors,
    unpack_words,
    write_rtl_vectors,
)


def _layer(pads=(0, 0, 0, 0), skip=None, zx=1):
    """x = 1..9 on 3x3, two 2x2 filters; acc[k, oy, ox] = 100k + 10oy + ox stands for the golden."""
    x = np.arange(1, 10, dtype=np.int8).reshape(1, 3, 3)
    w = np.array([[[[1, 2], [3, 4]]], [[[-1, -2], [-3, -4]]]], np.int8)
    oh = 3 + pads[0] + pads[2] - 1
    ow = 3 + pads[1] + pads[3] - 1
    k, oy, ox = np.meshgrid(np.arange(2), np.arange(oh), np.arange(ow), indexing="ij")
    acc = (100 * k + 10 * oy + ox).astype(np.int32)
    y = (acc % 50).astype(np.int8)
    const = None
    if skip is not None:
        const = np.full((2, oh, ow), -7, np.int8)
        y = np.where(skip, const, y)
    return QConvLayer(
        name="conv",
        x=x,
        weight=w,
        bias=np.array([5, -5], np.int32),
        x_zero_point=zx,
        x_scale=0.5,
        y_zero_point=0,
        y_scale=1.0,
        multiplier=np.array([2**30, 2**30 + 1], np.int32),
        shift=np.array([-1, 2]),
        acc=acc,
        y=y,
        pads=pads,
        skip=skip,
        constants=const,
    )


def test_dense_tiles_stream_the_windows_of_their_pixels(tmp_path):
    m = write_rtl_vectors(_layer(), tmp_path, rows=2, cols=2)
    assert m["window"] == 4 and m["counts"]["tiles"] == 2
    assert [t["pixels"] for t in m["tiles"]] == [[0, 1], [2, 3]]
    # Windows (fy, fx order) of pixels (0,0): 1 2 4 5; (0,1): 2 3 5 6; (1,0): 4 5 7 8; (1,1): 5 6 8 9.
    # Array row r in bits 8r+7..8r: the hex text shows row 1 first.
    assert read_hex(tmp_path / "tile_act.hex") == [0x0201, 0x0302, 0x0504, 0x0605, 0x0504, 0x0605, 0x0807, 0x0908]
    assert (tmp_path / "tile_act.hex").read_text().splitlines()[:2] == ["0201", "0302"]
    # Filter 0 in column 0, filter 1 (negated) in column 1, same window order.
    assert read_hex(tmp_path / "tile_wgt.hex")[:4] == [0xFF01, 0xFE02, 0xFD03, 0xFC04]
    # Row r of a tile: the two filters' accumulators of its pixel, column 0 in the low 32 bits.
    assert read_hex(tmp_path / "tile_acc.hex") == [100 << 32 | 0, 101 << 32 | 1, 110 << 32 | 10, 111 << 32 | 11]
    assert read_hex(tmp_path / "tile_skip.hex") == [0, 0]
    assert read_hex(tmp_path / "tile_bias.hex") == [0xFFFFFFFB_00000005] * 2
    assert read_hex(tmp_path / "tile_shift.hex") == [0x02FF] * 2


def test_padding_streams_the_input_zero_point(tmp_path):
    write_rtl_vectors(_layer(pads=(1, 1, 0, 0), zx=-3), tmp_path, rows=2, cols=2)
    words = read_hex(tmp_path / "tile_act.hex")
    # Pixel (0,0) of the padded layer sees pad pad / pad 1; pixel (0,1) pad pad / 1 2.
    assert [w & 0xFF for w in words[:4]] == [0xFD, 0xFD, 0xFD, 0x01]
    assert [w >> 8 for w in words[:4]] == [0xFD, 0xFD, 0x01, 0x02]


def test_a_strided_layer_over_an_odd_padded_extent_streams_its_windows(tmp_path):
    # 3x3 padded on top and left to 4x4, 2x2 filters at stride 2: 2x2 outputs, (4 - 2) // 2 + 1
    layer = _layer(pads=(1, 1, 0, 0), zx=-3)
    acc = layer.acc[:, ::2, ::2].copy()
    layer = dataclasses.replace(layer, stride=(2, 2), acc=acc, y=(acc % 50).astype(np.int8))
    m = write_rtl_vectors(layer, tmp_path, rows=2, cols=2)
    assert [t["pixels"] for t in m["tiles"]] == [[0, 1], [2, 3]]
    # windows: (0,0) pad pad / pad 1; (0,1) pad pad / 2 3; (1,0) pad 4 / pad 7; (1,1) 5 6 / 8 9
    assert read_hex(tmp_path / "tile_act.hex") == [0xFDFD, 0xFDFD, 0x02FD, 0x0301, 0x05FD, 0x0604, 0x08FD, 0x0907]


def test_masked_pixels_leave_their_folds_and_unused_pes_are_skipped(tmp_path):
    skip = np.zeros((2, 2, 2), bool)
    skip[:, 0, 1] = True  # pixel 1 masked for both filters: no fold computes it
    skip[1, 1, 1] = True  # filter 1 of pixel 3 only
    m = write_rtl_vectors(_layer(skip=skip), tmp_path, rows=2, cols=2)
    assert [t["pixels"] for t in m["tiles"]] == [[0, 2], [3]]
    assert m["counts"] == {
        "tiles": 2,
        "output_elements": 8,
        "masked_elements": 3,
        "macs_dense": 32,
        "macs_executed": 20,
    }
    # Bit r*cols + c: tile 1 masks (0, 1) and has no array row 1 (bits 2, 3).
    assert read_hex(tmp_path / "tile_skip.hex") == [0b0000, 0b1110]
    # The unused row streams the zero point (1) and gives acc 0 and output 0; the masked element
    # gives acc 0 and its constant -7.
    assert [w >> 8 for w in read_hex(tmp_path / "tile_act.hex")[4:]] == [1, 1, 1, 1]
    acc = read_hex(tmp_path / "tile_acc.hex")
    assert acc[2:] == [11, 0]
    assert read_hex(tmp_path / "tile_out.hex")[2:] == [0xF9 << 8 | 11, 0]
    assert read_hex(tmp_path / "tile_const.hex")[1] == 0xF9 << 8
    # constants.hex (order k, oy, ox): the constant where masked, 0 elsewhere (a layer's constants may
    # hold values at unmasked elements too: a site's constants everywhere)
    assert read_hex(tmp_path / "constants.hex") == [0, 0xF9, 0, 0, 0, 0xF9, 0, 0xF9]


def test_manifest_reads_back_the_tensors_and_tiles(tmp_path):
    skip = np.zeros((2, 2, 2), bool)
    skip[0, 1, 0] = True
    layer = _layer(skip=skip)
    write_rtl_vectors(layer, tmp_path, rows=2, cols=2)
    vec = read_rtl_vectors(tmp_path)
    assert (vec.rows, vec.cols, vec.window, vec.layer) == (2, 2, 4, "conv")
    np.testing.assert_array_equal(vec.tensor("input"), layer.x)
    np.testing.assert_array_equal(vec.tensor("weight"), layer.weight)
    np.testing.assert_array_equal(vec.tensor("acc"), np.where(skip, 0, layer.acc))
    np.testing.assert_array_equal(vec.tensor("output"), layer.y)
    np.testing.assert_array_equal(vec.tensor("skip"), skip)
    np.testing.assert_array_equal(vec.tensor("shift"), [-1, 2])
    assert vec.tiles[1].element(1, 1, 2) == (1, 1, 1)
    q = vec.manifest["quant"]
    assert (q["input_zero_point"], q["output_min"], q["output_max"]) == (1, -128, 127)


@given(st.integers(1, 6), st.sampled_from([1, 8, 32]), st.data())
def test_pack_and_unpack_are_inverse(n_lanes, bits, data):
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if bits > 1 else (0, 1)
    lanes = np.array(data.draw(st.lists(st.lists(st.integers(lo, hi), min_size=n_lanes, max_size=n_lanes), min_size=1)))
    words = pack_words(lanes, bits)
    assert all(0 <= w < 2 ** (n_lanes * bits) for w in words)
    np.testing.assert_array_equal(unpack_words(words, n_lanes, bits, signed=bits > 1), lanes)


def test_pack_puts_lane_zero_in_the_low_bits():
    assert pack_words(np.array([[1, -1], [-128, 127]]), 8) == [0xFF01, 0x7F80]


@given(st.integers(1, 3), st.integers(1, 12), st.integers(1, 20), st.integers(2, 5), st.integers(2, 5), st.data())
def test_tile_plan_matches_the_simulators_column_chunks(groups, kg, pixels, rows, cols, data):
    k = groups * kg
    skip = np.array(data.draw(st.lists(st.booleans(), min_size=k * pixels, max_size=k * pixels))).reshape(k, pixels)
    tiles = plan_tiles(skip, k, groups, pixels, rows, cols)
    layer = Layer("l", "conv2d", "array", k, 1, 1, pixels, 1, 1, groups=groups, skip=skip)
    needed, _, _ = column_chunks(layer, cols)
    folds = -(-needed // rows)
    assert len(tiles) == int(folds.sum())
    for t in tiles:  # every computed element is unmasked somewhere in its tile's chunk column
        assert 1 <= len(t.pixels) <= rows and 1 <= t.n_cols <= cols
        assert all((~skip[t.k0 : t.k0 + t.n_cols, p]).any() for p in t.pixels)
    covered = {(k_, p) for t in tiles for p in t.pixels for k_ in range(t.k0, t.k0 + t.n_cols)}
    assert all((k_, p) in covered for k_, p in zip(*np.nonzero(~skip), strict=True))


def test_a_masked_output_that_is_not_its_constant_is_refused(tmp_path):
    skip = np.zeros((2, 2, 2), bool)
    skip[1, 0, 1] = True
    layer = _layer(skip=skip)
    y = layer.y.copy()
    y[1, 0, 1] = 3
    bad = QConvLayer(**{**layer.__dict__, "y": y})
    with pytest.raises(RtlVectorError, match=r"masked element \(k=1, oy=0, ox=1\): expected the constant -7, found 3"):
        write_rtl_vectors(bad, tmp_path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"weight": np.zeros((2, 1, 2, 2), np.float32)}, "weight: expected an int8"),
        ({"bias": np.zeros(3, np.int32)}, r"bias: expected int32 \(2,\)"),
        ({"shift": np.array([-32, 0])}, r"shift: expected \(2,\) integers in \[-31, 31\]"),
        ({"x_zero_point": 200}, r"x_zero_point: expected in \[-128, 127\] for int8"),
        ({"acc": np.zeros((2, 2, 2), np.int64)}, "acc: expected int32"),
        ({"groups": 2}, "groups: expected a divisor"),
    ],
)
def test_bad_layer_arrays_are_refused_with_where_expected_found(tmp_path, change, message):
    bad = QConvLayer(**{**_layer().__dict__, **change})
    with pytest.raises(RtlVectorError, match=message):
        write_rtl_vectors(bad, tmp_path)


def test_a_left_shift_beyond_int32_is_refused_where_an_output_needs_it(tmp_path):
    """The golden saturates acc << shift (docs/int8.md), the array's int32 shift wraps (docs/rtl.md):
    vectors would disagree with the RTL, so a layer where an unmasked output overflows is refused."""
    wide = QConvLayer(**{**_layer().__dict__, "shift": np.array([-1, 24])})  # acc 100..111 << 24 < 2^31
    write_rtl_vectors(wide, tmp_path / "fits")
    over = QConvLayer(**{**_layer().__dict__, "shift": np.array([-1, 25])})  # 100 << 25 > 2^31 - 1
    with pytest.raises(RtlVectorError, match=r"acc << shift leaves int32 at 4 output\(s\), first \(k=1, oy=0, ox=0\)"):
        write_rtl_vectors(over, tmp_path / "over")
    skip = np.zeros((2, 2, 2), bool)
    skip[1] = True  # the overflowing outputs masked: nothing shifts
    masked = QConvLayer(**{**_layer(skip=skip).__dict__, "shift": np.array([-1, 25])})
    assert write_rtl_vectors(masked, tmp_path / "masked")["counts"]["tiles"] >= 1


def test_arrays_below_2x2_are_refused(tmp_path):
    with pytest.raises(RtlVectorError, match=r"array rows: expected an integer in \[2, 256\], found 1"):
        write_rtl_vectors(_layer(), tmp_path, rows=1, cols=4)


def test_reading_a_directory_without_vectors_says_so(tmp_path):
    with pytest.raises(RtlVectorError, match="manifest.json: expected an RTL vector manifest, found no file"):
        read_rtl_vectors(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "velcro-golden"}))
    with pytest.raises(RtlVectorError, match="format: expected velcro-rtl-vectors, found velcro-golden"):
        read_rtl_vectors(tmp_path)
    (tmp_path / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(RtlVectorError, match=r"expected JSON, found an unreadable file \(nested too deeply"):
        read_rtl_vectors(tmp_path)
    write_rtl_vectors(_layer(), tmp_path / "v", rows=2, cols=2)
    (tmp_path / "v" / "tile_acc.hex").unlink()
    with pytest.raises(RtlVectorError, match="file 'tile_acc'"):
        read_rtl_vectors(tmp_path / "v")


def test_rewriting_a_directory_replaces_its_manifest_last(tmp_path, monkeypatch):
    write_rtl_vectors(_layer(), tmp_path, rows=2, cols=2)

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(rv, "pack_words", fail)  # the rewrite dies before its first hex file
    with pytest.raises(OSError):
        write_rtl_vectors(_layer(zx=2), tmp_path, rows=2, cols=2)
    with pytest.raises(RtlVectorError, match="found no file"):
        read_rtl_vectors(tmp_path)


@pytest.mark.parametrize("text", ["\u00b2x8", "\uff18x8", "8x"])
def test_an_array_of_other_than_ascii_digits_is_a_usage_error(text):
    """'²' is a digit to str.isdigit, which int() then refused in a traceback."""
    from velcro_ref.errors import UsageError

    with pytest.raises(UsageError, match="--array expects ROWSxCOLS"):
        rv.parse_array(text)


def test_counts_of_a_grouped_masked_layer_are_counted_element_by_element(tmp_path):
    """counts (docs/formats.md): masked output elements, and MACs dense and executed, counted here one
    output element and one weight tap at a time for a conv of two groups on an array with unused PEs."""
    x = np.arange(4 * 3 * 3, dtype=np.int8).reshape(4, 3, 3) % 7
    w = (np.arange(4 * 2 * 2 * 2, dtype=np.int8).reshape(4, 2, 2, 2) % 5) - 2
    k, oh, ow = 4, 2, 2
    skip = np.zeros((k, oh, ow), bool)
    skip[0, 0, 0] = skip[3, 1, 1] = skip[1, 0, 1] = True
    acc = np.arange(k * oh * ow, dtype=np.int32).reshape(k, oh, ow)
    const = np.full((k, oh, ow), 3, np.int8)
    y = np.where(skip, const, (acc % 9).astype(np.int8))
    layer = QConvLayer(
        name="g", x=x, weight=w, bias=np.zeros(k, np.int32), x_zero_point=0, x_scale=1.0, y_zero_point=0,
        y_scale=1.0, multiplier=np.full(k, 2**30, np.int32), shift=np.zeros(k, np.int64), acc=acc, y=y,
        groups=2, skip=skip, constants=const,
    )  # fmt: skip
    m = write_rtl_vectors(layer, tmp_path, rows=3, cols=2)
    taps = w.shape[1] * w.shape[2] * w.shape[3]  # C / groups x kh x kw per output element
    dense = sum(taps for _ in np.ndindex(k, oh, ow))
    executed = sum(taps for e in np.ndindex(k, oh, ow) if not skip[e])
    assert m["counts"]["masked_elements"] == 3
    assert m["counts"]["output_elements"] == 16
    assert (m["counts"]["macs_dense"], m["counts"]["macs_executed"]) == (dense, executed) == (128, 104)
