"""Simulator against layers worked out by hand, for each dataflow, dense and VELCRO-compressed.

The model: input (2, 4, 4) -> conv "c" (3 filters 3x3, pad 1) -> relu "r". So k=3, c=2,
oy=ox=4, fy=fx=3: Sr = 16 output pixels, T = 2*3*3 = 18, Sc = 3 filters, 48 outputs x 18 = 864
MACs. The array is 4 rows x 2 cols, so filters form two column chunks: {0, 1} and {2}.
Operands are 1 byte, accumulators 4; buffers 1 KiB (512-byte halves); DRAM 4 bytes per cycle.
Each PE holds one weight unless a test says otherwise (pe_weights).
Energy table (pJ): mac 1, rf 0.5 (3 accesses per MAC), ifmap_sram 2, filter_sram 3,
ofmap_sram 4, dram 100, mask_table 10, vector_op 0.25, leakage 0.125 per cycle.
"""

import json
import re

import numpy as np
import pytest
from sim_util import arch_toml

from simulator import parse_arch, simulate
from simulator.arch import with_changes
from velcro_ref.engine import Model
from velcro_ref.graph import INPUT, Graph, Node
from velcro_ref.masks import MaskSet

# the energies the hand-worked figures below use
ENERGY = {
    "mac": 1,
    "rf": 0.5,
    "ifmap_sram": 2,
    "filter_sram": 3,
    "ofmap_sram": 4,
    "dram": 100,
    "mask_table": 10,
    "vector_op": 0.25,
    "leakage": 0.125,
}


def tiny_arch(dataflow, bw=4, pe=1):
    text = arch_toml(4, 2, dataflow, bw=bw, pe=pe, lanes=4, energy=ENERGY, name="tiny")
    return parse_arch(text, "tiny.toml")


@pytest.fixture(scope="module")
def model():
    rng = np.random.default_rng(0)
    conv = Node("c", "conv2d", (INPUT,), {"out_channels": 3, "kernel": 3, "pads": 1}, {"weight": "c.w"})
    relu = Node("r", "relu", ("c",))
    params = {"c.w": rng.standard_normal((3, 2, 3, 3)).astype(np.float32)}
    return Model(Graph((conv, relu), (2, 4, 4), "r", params))


def masks_of(model):
    """Filter 1 masked everywhere, filter 0 masked on its first row (oy=0): 16 + 4 = 20 elements."""
    mask = np.zeros((3, 4, 4), bool)
    mask[1] = True
    mask[0, 0, :] = True
    return MaskSet(model.fingerprint, {"r": (mask, np.zeros((3, 4, 4), np.float32))})


def by_name(result, side="dense"):
    return {layer.name: s for layer, s in zip(result.layers, getattr(result, side), strict=True)}


def test_output_stationary_dense(model):
    s = by_name(simulate(model, tiny_arch("output_stationary")))
    c, r = s["c"], s["r"]
    # Each chunk: ceil(16 / 4) = 4 row folds of (R + C + T - 2) = 4 + 2 + 18 - 2 = 22 cycles.
    assert c.compute_cycles == 2 * 4 * 22 == 176
    assert c.macs == 864
    # ifmap reads: 16 pixels x T per chunk = 2 x 288 = 576; DRAM fill 32 (the 2x4x4 input once).
    assert c.ifmap_sram_bytes == 576 + 32
    # filter reads: folds x T x filters = 4*18*2 + 4*18*1 = 216; DRAM fill 3*18 = 54.
    assert c.filter_sram_bytes == 216 + 54
    # ofmap: 48 outputs written by the array, 48 drained to DRAM.
    assert c.ofmap_sram_bytes == 48 + 48
    # DRAM 32 + 54 + 48 = 134 bytes = 34 cycles at 4 B/cycle, hidden under 176 compute cycles.
    assert c.dram_bytes == 134 and c.stall_cycles == 0 and c.cycles == 176
    assert c.energy == {
        "mac": 864.0,
        "rf": 0.5 * 3 * 864,  # 1296
        "ifmap_sram": 2 * 608,
        "filter_sram": 3 * 270,
        "ofmap_sram": 4 * 96,
        "dram": 100 * 134,
        "mask": 0.0,
        "vector": 0.0,
        "leakage": 0.125 * 176,
    }
    assert c.energy_pj == pytest.approx(17992.0)
    # The relu runs on the conv's output path: 48 vector ops, no cycles, no traffic.
    assert (r.cycles, r.dram_bytes, r.energy_pj) == (0, 0, pytest.approx(48 * 0.25))


def test_output_stationary_stalls_when_dram_bound(model):
    c = by_name(simulate(model, tiny_arch("output_stationary", bw=0.5)))["c"]
    # 134 bytes at 0.5 B/cycle = 268 cycles of transfer against 176 of compute.
    assert (c.compute_cycles, c.stall_cycles, c.cycles) == (176, 92, 268)


def test_a_decimal_bandwidth_is_taken_as_written(model):
    # A batch of 8 moves 256 + 54 + 384 = 694 bytes (see the batch tests below); at 0.347 B/cycle
    # that is 694000 / 347 = 2000 cycles exactly, against 1408 of compute. The float quotient of
    # 694 by the binary 0.347 is 2000.0000000000002, whose ceiling would be 2001.
    assert 694 / 0.347 > 2000
    c = by_name(simulate(model, tiny_arch("output_stationary", bw=0.347), batch=8))["c"]
    assert (c.compute_cycles, c.stall_cycles, c.cycles) == (176, 74, 250)  # per image: / 8
    # a NumPy float (a sweep over np.linspace, say) is the same decimal
    arch = with_changes(tiny_arch("output_stationary"), dram_bytes_per_cycle=np.float64(0.347))
    assert by_name(simulate(model, arch, batch=8))["c"].cycles == 250


def test_weight_stationary_dense(model):
    c = by_name(simulate(model, tiny_arch("weight_stationary")))["c"]
    # T = 18 on 4 rows: 5 row folds per chunk, each 2R + C + Sr - 2 = 8 + 2 + 16 - 2 = 24 cycles.
    assert c.compute_cycles == 2 * 5 * 24 == 240
    # Each weight is read once: 18 x 3 = 54, plus its DRAM fill 54.
    assert c.filter_sram_bytes == 54 + 54
    assert c.ifmap_sram_bytes == 576 + 32
    # Partial sums of 48 outputs go out and back between the 5 row folds: 2 x 4 x 48 x 4 bytes.
    # The largest chunk's tile (16 pixels x 2 filters x 4 B = 128) fits the 512-byte ofmap half.
    assert c.ofmap_sram_bytes == 48 + 2 * 4 * 48 * 4 + 48 == 1632
    assert c.dram_bytes == 134 and c.cycles == 240
    assert c.energy_pj == pytest.approx(864 + 1296 + 2 * 608 + 3 * 108 + 4 * 1632 + 100 * 134 + 0.125 * 240)


def test_output_stationary_compressed(model):
    masks = masks_of(model)
    result = simulate(model, tiny_arch("output_stationary"), masks)
    c, r = by_name(result, "compressed")["c"], by_name(result, "compressed")["r"]
    # Chunk {0, 1}: filter 1 dead, filter 0 keeps 12 pixels -> needed 12, 3 folds.
    # Chunk {2}: nothing masked -> needed 16, 4 folds. 7 folds x 22 cycles.
    assert c.compute_cycles == 7 * 22 == 154
    assert c.macs == 28 * 18 == 504
    assert c.ifmap_sram_bytes == (12 + 16) * 18 + 32
    assert c.filter_sram_bytes == (3 * 18 * 1 + 4 * 18 * 1) + 2 * 18  # filter 1 never loaded
    assert c.ofmap_sram_bytes == 28 + 28  # masked outputs are neither computed nor written
    # DRAM: input 32 + live filters 36 + 28 outputs + the 6-byte bitmap of 48 elements.
    assert c.dram_bytes == 32 + 36 + 28 + 6 and c.mask_bytes == 6
    # Mask table: the bitmap written once and read by the conv (6 + 6), read again by the relu (6).
    assert c.energy["mask"] == pytest.approx(100 * 6 + 10 * 12)
    assert c.energy_pj == pytest.approx(504 + 756 + 2 * 536 + 3 * 162 + 4 * 56 + 100 * 96 + 720 + 0.125 * 154)
    assert r.energy_pj == pytest.approx(28 * 0.25 + 10 * 6)
    assert result.mask_storage_bytes == 6 + 20  # bitmap + one int8 constant per masked element
    # One source of truth: the engine executes the same MACs.
    model.run(np.zeros((1, 2, 4, 4), np.float32), masks)
    assert model.last_macs["c"] == 504


def test_weight_stationary_compressed(model):
    c = by_name(simulate(model, tiny_arch("weight_stationary"), masks_of(model)), "compressed")["c"]
    # Chunk {0, 1}: 5 x (8 + 2 + 12 - 2) = 100; chunk {2}: 5 x 24 = 120.
    assert c.compute_cycles == 220
    assert c.filter_sram_bytes == 18 * 2 + 36
    assert c.ofmap_sram_bytes == 28 + 2 * 4 * 28 * 4 + 28


def test_output_stationary_ignores_weight_registers(model):
    # Output stationary never holds a weight in a PE across cycles: pe_weights changes nothing.
    one = by_name(simulate(model, tiny_arch("output_stationary")))["c"]
    assert by_name(simulate(model, tiny_arch("output_stationary", pe=8)))["c"] == one


def test_weight_stationary_two_weights_per_pe(model):
    c = by_name(simulate(model, tiny_arch("weight_stationary", pe=2)))["c"]
    # The 5 row folds run in groups of 2 weights per PE: {1, 2}, {3, 4}, {5}. A group loads its
    # weights (2 x 4 rows = 8 cycles), streams each pixel through both folds (2 x 16 = 32), then
    # pays skew R - 1 = 3 and drain C - 1 = 1 once: 44 + 44 + (4 + 16 + 4 = 24) = 112 per chunk.
    assert c.compute_cycles == 2 * 112 == 224
    assert c.ifmap_sram_bytes == 576 + 32 and c.filter_sram_bytes == 54 + 54
    # Partial sums leave the array only between groups: 2 boundaries, out and back, 48 outputs of
    # 4 bytes = 2 x 2 x 48 x 4 = 768 bytes; plus 48 outputs written and 48 drained.
    assert c.ofmap_sram_bytes == 48 + 768 + 48 == 864
    assert c.dram_bytes == 134 and c.stall_cycles == 0
    # Inside a group the column-foot output register is read and written once per fold after
    # the first: (1 + 1 + 0) boundaries x 2 accesses x 48 outputs = 192, beside 3 x 864 per MAC.
    assert c.energy["rf"] == pytest.approx(0.5 * (2592 + 192))  # 1392
    assert c.energy["ofmap_sram"] == pytest.approx(4 * 864)
    # 864 + 1392 + 1216 + 324 + 3456 + 13400 + 0.125 x 224 = 20680.
    assert c.energy_pj == pytest.approx(20680.0)


def test_weight_stationary_all_folds_in_the_pe_registers(model):
    c = by_name(simulate(model, tiny_arch("weight_stationary", pe=8)))["c"]
    # 8 weights per PE hold all 5 folds: one group per chunk, 5 x 4 + 5 x 16 + 3 + 1 = 104 cycles.
    assert c.compute_cycles == 2 * 104 == 208
    # No partial sum reaches the ofmap buffer: 48 outputs written, 48 drained.
    assert c.ofmap_sram_bytes == 96
    # Column-foot register: 4 boundaries x 2 accesses x 48 outputs = 384.
    assert c.energy["rf"] == pytest.approx(0.5 * (2592 + 384))  # 1488
    # 864 + 1488 + 1216 + 324 + 384 + 13400 + 0.125 x 208 = 17702.
    assert c.energy_pj == pytest.approx(17702.0)


def test_weight_stationary_all_folds_in_the_pe_registers_compressed(model):
    c = by_name(simulate(model, tiny_arch("weight_stationary", pe=8), masks_of(model)), "compressed")["c"]
    # Chunk {0, 1}: filter 0 keeps 12 pixels: 5 x 4 + 5 x 12 + 4 = 84; chunk {2}: 104.
    assert c.compute_cycles == 84 + 104 == 188
    assert c.macs == 504
    assert c.ifmap_sram_bytes == (12 + 16) * 18 + 32 == 536
    assert c.filter_sram_bytes == 18 * 2 + 36
    assert c.ofmap_sram_bytes == 28 + 28
    assert c.dram_bytes == 32 + 36 + 28 + 6 and c.stall_cycles == 0
    # rf: 0.5 x (3 x 504 + 4 x 2 x 28 = 1736) = 868; mask: 100 x 6 + 10 x 12 = 720.
    assert c.energy["rf"] == pytest.approx(868.0)
    # 504 + 868 + 2 x 536 + 3 x 72 + 4 x 56 + 100 x 96 + 720 + 0.125 x 188 = 13227.5.
    assert c.energy_pj == pytest.approx(13227.5)


# ---------------------------------------------------------------- batch
# A batch of B images runs as one GEMM of B x 16 output pixels per chunk; the filters (54 bytes) and
# the site's bitmap come from DRAM once per batch. Figures are per image: the batch's / B.


def test_batch_of_8_fetches_the_weights_once_output_stationary(model):
    one = by_name(simulate(model, tiny_arch("output_stationary")))["c"]
    c = by_name(simulate(model, tiny_arch("output_stationary"), batch=8))["c"]
    # Per batch: ifmap 8 x 32 = 256 bytes, filters 54 (both fit their 512-byte halves, so each is
    # fetched once), outputs 8 x 48 = 384: 694 bytes, 86.75 per image = 32 + 54 / 8 + 48.
    assert one.dram_bytes == 32 + 54 + 48
    assert c.dram_bytes == 32 + 54 / 8 + 48 == 86.75
    assert one.dram_bytes - c.dram_bytes == 54 - 54 / 8  # only the weight traffic shrinks, by 8
    # 128 pixels per chunk: 32 folds of 22 cycles, 2 chunks = 1408 per batch, 176 per image.
    assert (c.compute_cycles, c.stall_cycles, c.cycles) == (176, 0, 176)
    # Filter buffer: 32 folds x 18 x (2 + 1) filters = 1728 reads plus the 54-byte fill, per batch.
    assert c.filter_sram_bytes == (1728 + 54) / 8
    assert c.ifmap_sram_bytes == 608 and c.ofmap_sram_bytes == 96 and c.macs == 864
    assert c.energy["dram"] == pytest.approx(100 * 86.75)
    # 864 + 1296 + 2 x 608 + 3 x 222.75 + 4 x 96 + 100 x 86.75 + 0.125 x 176 = 13125.25.
    assert c.energy_pj == pytest.approx(13125.25)


def test_batch_of_8_loads_each_weight_fold_once_weight_stationary(model):
    c = by_name(simulate(model, tiny_arch("weight_stationary"), batch=8))["c"]
    # 5 row folds per chunk, each loads its weights (R = 4 cycles) once and streams 128 pixels:
    # 5 x (4 + 128) + 5 x (R + C - 2 = 4) = 680 per chunk, 1360 per batch, 170 per image (240 at 1).
    assert c.compute_cycles == 170
    # The partial-sum tile grows with the batch: 128 pixels x 2 filters x 4 B = 1024 bytes no longer
    # fits the 512-byte ofmap half, so the 2 x 4 x 384 x 4 = 12288 bytes of partial sums go to DRAM:
    # 256 + 54 + 384 + 12288 = 12982 bytes per batch = 3246 cycles at 4 B/cycle.
    assert c.dram_bytes == 12982 / 8
    assert c.cycles == 3246 / 8 and c.stall_cycles == (3246 - 1360) / 8
    # The ofmap buffer sees the partial sums go in and out twice: from the array and back to it
    # (12288), and out to DRAM and back in (12288), besides the 384 outputs written and drained.
    assert c.ofmap_sram_bytes == (384 + 12288 + 384 + 12288) / 8


def test_batch_totals_are_the_batch_counts_divided_once():
    # At a batch of 3 a layer's per-image count is its batch count / 3, often a fraction; the total
    # is the batch's total divided by 3 once (an int where 3 divides it), not the sum of the
    # layers' quotients, which float rounding leaves a hair off (7192.999999999996 for 7193 here).
    from simulator.simulate import COUNT_FIELDS
    from velcro_ref.zoo import build_zoo

    net = Model(build_zoo("googlenet", input_size=28, in_channels=1, num_classes=10, width=0.125))
    result = simulate(net, "ws32", batch=3)
    for field in COUNT_FIELDS:
        batch_count = sum(round(getattr(s, field) * 3) for s in result.dense)  # each an int / 3
        total = getattr(result.total_dense, field)
        assert total == batch_count / 3, field
        assert isinstance(total, int) == (batch_count % 3 == 0), field


def test_batch_of_8_loads_the_bitmap_once(model):
    result = simulate(model, tiny_arch("output_stationary"), masks_of(model), batch=8)
    c, r = by_name(result, "compressed")["c"], by_name(result, "compressed")["r"]
    # Chunk {0, 1}: 8 x 12 = 96 needed pixels, 24 folds; chunk {2}: 32 folds; 56 x 22 / 8 = 154.
    assert c.compute_cycles == 154
    # Per batch: ifmap 256 + live filters 36 + 8 x 28 outputs + the 6-byte bitmap once = 522.
    assert c.dram_bytes == 522 / 8 and c.mask_bytes == 6 / 8
    # Mask table: the bitmap written (6) and read for each of the 8 images by the conv (48) and the relu (48).
    assert c.energy["mask"] == pytest.approx((100 * 6 + 10 * (6 + 48)) / 8)
    assert r.energy["mask"] == pytest.approx(10 * 48 / 8)
    assert result.mask_storage_bytes == 6 + 20 and result.batch == 8


def test_a_site_of_27_elements_has_a_bitmap_of_4_bytes():
    """Every site above holds a multiple of 8 elements; here 3 filters on a 3x3 output, 27 of
    them: its bitmap is ceil(27 / 8) = 4 bytes, in DRAM, in the mask table and in each read of it."""
    rng = np.random.default_rng(1)
    conv = Node("c", "conv2d", (INPUT,), {"out_channels": 3, "kernel": 3, "pads": 1}, {"weight": "c.w"})
    params = {"c.w": rng.standard_normal((3, 2, 3, 3)).astype(np.float32)}
    small = Model(Graph((conv, Node("r", "relu", ("c",))), (2, 3, 3), "r", params))
    mask = np.zeros((3, 3, 3), bool)
    mask[1] = True
    result = simulate(small, tiny_arch("output_stationary"), MaskSet(small.fingerprint, {"r": (mask, mask * 0.0)}))
    c, r = by_name(result, "compressed")["c"], by_name(result, "compressed")["r"]
    assert c.mask_bytes == 4 and result.mask_storage_bytes == 4 + 9
    assert c.energy["mask"] == pytest.approx(100 * 4 + 10 * (4 + 4))  # written once, read by the conv
    assert r.energy["mask"] == pytest.approx(10 * 4)


@pytest.mark.parametrize("kib, spilled", [(0.25, False), (0.248, True)])
def test_a_partial_sum_tile_of_exactly_the_ofmap_half_stays_on_chip(model, kib, spilled):
    """Weight stationary: the largest chunk's tile of partial sums, 16 pixels x 2 filters x 4 B = 128
    bytes, against an ofmap half of int(0.25 x 512) = 128 bytes (fits) and int(0.248 x 512) = 126
    (spills: the 2 x 4 x 48 x 4 = 1536 bytes of partial sums go out to DRAM and back)."""
    c = by_name(simulate(model, with_changes(tiny_arch("weight_stationary"), ofmap_kib=kib)))["c"]
    assert c.dram_bytes == 134 + 1536 * spilled
    assert c.ofmap_sram_bytes == 1632 + 1536 * spilled


# ---------------------------------------------------------------- compute-only view
# mac, register files, the three buffers, vector ops and mask-table bytes; no DRAM, no leakage.


def test_compute_only_energy_leaves_out_dram_and_leakage(model):
    result = simulate(model, tiny_arch("output_stationary"), masks_of(model))
    d, c = by_name(result)["c"], by_name(result, "compressed")["c"]
    # Dense conv: 864 + 1296 + 2 x 608 + 3 x 270 + 4 x 96 = 4570; the relu's 48 ops x 0.25 = 12.
    assert d.compute_energy_pj == pytest.approx(4570.0)
    assert result.total_dense.compute_energy_pj == pytest.approx(4582.0)
    # Compressed conv: 504 + 756 + 2 x 536 + 3 x 162 + 4 x 56 + mask table 10 x 12 = 3162;
    # relu: 28 x 0.25 + 10 x 6 = 67.
    assert c.compute_energy_pj == pytest.approx(3162.0)
    assert result.total_compressed.compute_energy_pj == pytest.approx(3229.0)
    assert result.total_comparison.compute_energy_saving == pytest.approx(1 - 3229 / 4582)


@pytest.fixture(scope="module")
def files(tmp_path_factory, model):
    from velcro_ref.masks import save_masks
    from velcro_ref.model_io import save_model

    d = tmp_path_factory.mktemp("handworked")
    save_model(model.graph, d / "m.h5")
    save_masks(masks_of(model), d / "masks.h5")
    (d / "tiny.toml").write_text(arch_toml(4, 2, "output_stationary", lanes=4, energy=ENERGY, name="tiny"))
    zero_vector = {**ENERGY, "vector_op": 0}
    (d / "novec.toml").write_text(arch_toml(4, 2, "output_stationary", lanes=4, energy=zero_vector, name="novec"))
    return d


def cli(capsys, *argv):
    import velcro_ref.cli as vcli

    code = vcli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def strict_json(text):
    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_cli_compute_only_in_json_and_text(files, capsys):
    argv = ("simulate", files / "m.h5", "--masks", files / "masks.h5", "--accel", files / "tiny.toml")
    total = strict_json(cli(capsys, *argv, "--compute-only", "--json"))["total"]
    assert total["dense"]["compute_energy_pj"] == pytest.approx(4582.0)
    assert total["compressed"]["compute_energy_pj"] == pytest.approx(3229.0)
    assert total["compute_energy_saving"] == pytest.approx(1 - 3229 / 4582)
    text = cli(capsys, *argv)
    assert "4.582 nJ -> 3.229 nJ, saving 29.5%" in text  # 1 - 3229 / 4582 = 0.2953
    # --compute-only puts the view in the table: the total line's energies are the on-chip ones.
    total_line = next(ln for ln in cli(capsys, *argv, "--compute-only").splitlines() if ln.startswith("total"))
    assert "4.582 nJ" in total_line and "3.229 nJ" in total_line and "29.5%" in total_line


def test_cli_batch_in_json(files, capsys):
    argv = ("simulate", files / "m.h5", "--accel", files / "tiny.toml", "--json")
    one = strict_json(cli(capsys, *argv))
    eight = strict_json(cli(capsys, *argv, "--batch", "8"))
    assert "batch" not in one and eight["batch"] == 8
    assert one["total"]["dram_bytes"] == 134 and eight["total"]["dram_bytes"] == 32 + 54 / 8 + 48
    # 176 cycles per image at 100 MHz = 1.76 us; the batch of 8 takes 14.08 us.
    assert eight["total"]["latency_ms"] == pytest.approx(176 / 100e3)
    assert eight["total"]["batch_latency_ms"] == pytest.approx(8 * 176 / 100e3)


# ---------------------------------------------------------------- the table a person reads


def table_line(text, name):
    return next(ln for ln in text.splitlines() if ln.split("  ")[0].strip() == name)


def test_zero_to_zero_row_prints_no_percentage(files, capsys):
    # With vector ops free, the fused relu costs nothing dense or compressed: no cycles, no energy.
    text = cli(capsys, "simulate", files / "m.h5", "--masks", files / "masks.h5", "--accel", files / "novec.toml")
    relu = table_line(text, "r")
    assert relu.split()[1:] == ["relu", "0", "0", "0", "0", "0", "0", "0", "0"]  # no speedup, no saving
    assert "%" not in relu


def test_mask_overhead_is_a_line_of_its_own(files, capsys):
    text = cli(capsys, "simulate", files / "m.h5", "--masks", files / "masks.h5", "--accel", files / "tiny.toml")
    # The relu skips 20 of 48 outputs: 12 pJ of vector work -> 7 pJ, 41.7% saved. The mask table's
    # reads belong to the site's mask line, not to the relu (that would print (12 - 67) / 12 = -458.3%).
    assert table_line(text, "r").split()[-5:] == ["12.00", "pJ", "7.000", "pJ", "41.7%"]
    # Mask line: the 6-byte bitmap from DRAM (600 pJ), the table written once and read by the conv and
    # the relu (6 + 6 + 6 bytes x 10 pJ = 180 pJ): 780 pJ.
    assert table_line(text, "r mask").split()[2:] == ["mask", "0", "6", "B", "780.0", "pJ"]  # no stall here
    # The conv's own line: 17992 pJ dense; compressed 13381.25 pJ less its 720 pJ of mask overhead
    # (test_output_stationary_compressed) = 12661.25 pJ, 1 - 12661.25 / 17992 = 29.6% saved.
    conv = table_line(text, "c").split()
    assert conv[-5:] == ["17.99", "nJ", "12.66", "nJ", "29.6%"]
    assert not re.search(r"-\d{3,}\.\d%", text)


def test_the_stall_a_bitmap_adds_is_the_mask_lines(model):
    """At 0.5 bytes a cycle the compressed conv (weight stationary, 8 weights per PE) waits for DRAM:
    102 bytes (32 + 36 + 28 and the 6-byte bitmap) take 204 cycles against 188 of compute; without the
    bitmap 96 bytes take 192. The 12 cycles the bitmap adds, and their leakage, are mask overhead."""
    result = simulate(model, tiny_arch("weight_stationary", bw=0.5, pe=8), masks_of(model))
    d, c = by_name(result)["c"], by_name(result, "compressed")["c"]
    assert (c.compute_cycles, c.stall_cycles, c.mask_stall_cycles, c.cycles) == (188, 16, 12, 204)
    assert c.energy["leakage"] == pytest.approx(0.125 * 192)
    assert c.energy["mask"] == pytest.approx(100 * 6 + 10 * 12 + 0.125 * 12)
    # Dense: 134 bytes at 0.5 a cycle, 268 cycles (208 of compute). The table's conv line compares
    # them with the compressed conv's own 192 cycles; the total keeps every cycle.
    assert d.cycles == 268 and d.mask_stall_cycles == 0
    lines = {ln.name: ln for ln in result.lines()}
    assert lines["c"].cycles_vc == 192 and lines["c"].speedup == pytest.approx(268 / 192)
    assert lines["r mask"].energy_pj_vc == pytest.approx(100 * 6 + 10 * 18 + 0.125 * 12)
    assert lines["r mask"].cycles_vc == 12  # the table's compressed cycles add up to the total
    assert sum(ln.cycles_vc for ln in lines.values() if ln.kind != "total") == result.total_compressed.cycles


def test_a_layer_without_dense_cycles_has_no_speedup():
    """conv -> max_pool -> relu: the relu's site has no producer chain, so the relu is its own record,
    free dense (a fused vector op on a free unit takes no cycles) and loading the bitmap compressed."""
    rng = np.random.default_rng(0)
    nodes = (
        Node("c", "conv2d", (INPUT,), {"out_channels": 4, "kernel": 3, "pads": 1}, {"weight": "c.w"}),
        Node("p", "max_pool", ("c",), {"kernel": 2, "stride": 2}),
        Node("r", "relu", ("p",)),
    )
    net = Model(Graph(nodes, (1, 8, 8), "r", {"c.w": rng.standard_normal((4, 1, 3, 3)).astype(np.float32)}))
    mask = rng.random(net.sites["r"]) < 0.3
    masks = MaskSet(net.fingerprint, {"r": (mask, np.zeros(mask.shape, np.float32))}, {}, complete=True)
    result = simulate(net, tiny_arch("output_stationary"), masks)
    relu = {ln.name: ln for ln in result.lines()}["r"]
    # Compressed, the relu's cycles are the stall of loading its 4 x 4 x 4 / 8 = 8-byte bitmap alone.
    assert relu.dense.cycles == 0 and relu.compressed.cycles == relu.compressed.mask_stall_cycles == 2
    assert relu.cycles_vc == 0 and relu.speedup is None  # the table prints none (it printed 0.000)
    entry = next(e for e in result.to_json()["layers"] if e["name"] == "r")
    assert entry["speedup"] == 1.0  # the JSON's undefined speedup


def test_numpy_numbers_as_batch_and_sweep_values_are_the_numbers_they_hold(model):
    """np.arange and np.linspace give NumPy scalars: np.int64(8) was refused as "not an integer"."""
    from simulator import sweep

    arch = tiny_arch("output_stationary")
    assert simulate(model, arch, batch=np.int64(8)).to_json(False) == simulate(model, arch, batch=8).to_json(False)
    grid = {"rows": list(np.arange(2, 4)), "clock_mhz": list(np.linspace(100, 200, 2, dtype=np.float32))}
    plain = {"rows": [2, 3], "clock_mhz": [100.0, 200.0]}
    got, want = sweep(model, arch, grid, batch=np.int64(2)), sweep(model, arch, plain, batch=2)
    assert json.dumps([p for p, _ in got]) == json.dumps([p for p, _ in want])
    assert [r.to_json(False) for _, r in got] == [r.to_json(False) for _, r in want]


def test_a_masked_add_reads_only_the_inputs_of_its_computed_outputs():
    """input (2, 4, 4) -> conv "c" (2 filters 3x3, pad 1) -> add "a" (c + input) -> relu "r", the
    site: filter 1 masked everywhere and filter 0 on its first row, 20 of 32 outputs. The add is a
    vector layer (docs/simulator.md): it reads its two inputs once and writes its output once, and
    a masked output is not computed, so it reads 2 x 12 operands, not 2 x 32. Reading every input
    priced the compressed add's ifmap at the dense 64 bytes (SRAM 128, DRAM 76)."""
    rng = np.random.default_rng(1)
    conv = Node("c", "conv2d", (INPUT,), {"out_channels": 2, "kernel": 3, "pads": 1}, {"weight": "c.w"})
    nodes = (conv, Node("a", "add", ("c", INPUT)), Node("r", "relu", ("a",)))
    model = Model(Graph(nodes, (2, 4, 4), "r", {"c.w": rng.standard_normal((2, 2, 3, 3)).astype(np.float32)}))
    mask = np.zeros((2, 4, 4), bool)
    mask[1] = True
    mask[0, 0, :] = True
    masks = MaskSet(model.fingerprint, {"r": (mask, np.zeros((2, 4, 4), np.float32))})
    result = simulate(model, tiny_arch("output_stationary"), masks)
    dense, comp = by_name(result)["a"], by_name(result, "compressed")["a"]
    # dense: 32 outputs, 2 x 32 operand bytes in (DRAM fill + read), 32 out (write + drain)
    assert (dense.ops, dense.compute_cycles) == (32, 8)
    assert (dense.ifmap_sram_bytes, dense.ofmap_sram_bytes, dense.dram_bytes) == (128, 64, 96)
    # compressed: 12 outputs computed, ceil(12 / 4) = 3 cycles; 2 x 12 bytes in, 12 out
    assert (comp.ops, comp.compute_cycles) == (12, 3)
    assert (comp.ifmap_sram_bytes, comp.ofmap_sram_bytes, comp.dram_bytes) == (2 * 24, 2 * 12, 24 + 12)
    # the conv of the chain computes the same 12 outputs, 18 taps each, as the engine
    assert by_name(result, "compressed")["c"].macs == 12 * 18
    model.run(np.zeros((1, 2, 4, 4), np.float32), masks)
    assert model.last_macs["c"] == 12 * 18


def test_a_mask_keeps_the_loop_order_of_the_dense_layer():
    """A 1x1 conv "c" of 32 filters on a (4, 4, 4) input, relu site "r" with filters 8..31 masked,
    on 64-byte ifmap and filter buffers (32-byte halves). Ifmap I = 64 bytes; filters W = 32 x 4 =
    128 dense, 8 x 4 = 32 live. Dense: filters outer 64 x ceil(128 / 32) + 128 = 384, ifmap outer
    64 + 128 x ceil(64 / 32) = 320: ifmap outer. docs/simulator.md: the order stays with masks, so
    the live filters are fetched twice (32 x 2 = 64 bytes); picking the order on the masked sizes
    (filters outer, 64 + 32 = 96 < 128) moved bytes between the operands (32 filter bytes)."""
    rng = np.random.default_rng(2)
    conv = Node("c", "conv2d", (INPUT,), {"out_channels": 32, "kernel": 1}, {"weight": "c.w"})
    params = {"c.w": rng.standard_normal((32, 4, 1, 1)).astype(np.float32)}
    model = Model(Graph((conv, Node("r", "relu", ("c",))), (4, 4, 4), "r", params))
    mask = np.zeros((32, 4, 4), bool)
    mask[8:] = True
    masks = MaskSet(model.fingerprint, {"r": (mask, np.zeros((32, 4, 4), np.float32))})
    text = arch_toml(4, 2, "output_stationary", ifmap_kib=0.0625, filter_kib=0.0625, lanes=4, energy=ENERGY)
    result = simulate(model, parse_arch(text, "small.toml"), masks)
    dense, comp = by_name(result)["c"], by_name(result, "compressed")["c"]
    # dense DRAM: ifmap 64 + filters 128 x 2 + 512 outputs
    assert dense.dram_bytes == 64 + 256 + 512
    # 16 chunks of 2 filters, 4 folds of 16 pixels each: filter reads 4 x 4 x 2 = 32 per chunk
    assert dense.filter_sram_bytes == 16 * 32 + 256
    # compressed: 4 live chunks; ifmap 64 + live filters 32 x 2 + 128 outputs + the 64-byte bitmap
    assert comp.dram_bytes == 64 + 64 + 128 + 64 and comp.mask_bytes == 64
    assert comp.filter_sram_bytes == 4 * 32 + 64
    assert comp.ifmap_sram_bytes == 4 * 16 * 4 + 64
