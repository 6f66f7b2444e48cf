"""SIMD blocks of the conv and linear kernels, as Numba intrinsics written in LLVM IR.

Numba vectorises a sum only when fastmath lets LLVM reorder it, which the style rules out. These
intrinsics write the order of docs/kernels.md down instead: `<8 x float>` vectors and the
`llvm.fma` intrinsic, a fused multiply-add rounded once, as IEEE 754 defines it (a plain fmul
and fadd without fast-math flags are never contracted, so nothing else fuses).

An output element is the sum of its taps in a fixed order. With CHAINS chains, tap j (taps
numbered in the filter's (fy, fx, c) order) belongs to chain j mod CHAINS; each chain is a
sequence of fused multiply-adds from +0 in increasing j, and the chains are combined as
((s0 + s4) + (s2 + s6)) + ((s1 + s5) + (s3 + s7)); the bias is added to that. With one chain
(filters of few taps) the taps are one sequence. The blocks below compute that order whatever
vectors carry it:

- `tile_pass`: output positions in lanes (8 consecutive output pixels of one row, or of a
  flat plane), a tile of a few filters by a few such segments: a run of taps of one chain (a
  vector of input pixels times a broadcast weight), the sums kept in memory between runs;
  `store_tile` combines a tile's chains, adds the bias, an optional residual tensor and an
  optional ReLU / ReLU6, and stores to the NCHW output (fewer lanes at a row's end).
  `direct_tile` does both in one call, with `<16 x float>` segments of 16, its chains one
  after another (their sums in the stack).
- `lane_pass` / `store_lanes`: the same with 16 filters in the lanes and a few positions
  (a broadcast input pixel times a vector of weights); `depth_pass` / `store_depth` with 8
  depthwise channels in the lanes (a vector of 8 channels' pixels times their weights);
  `interleave8` copies 8 channels' pixels into that layout, 8 pixels at a time. Given a word
  of bits per position (`keep`), `store_lanes` and `store_depth` store only the lanes it names
  (a masked conv's unmasked outputs) and return how many they stored.
- `dot_taps` / `dot_store`: taps in lanes, for outputs chosen one by one (the masked kernels,
  the linear layer): lane l of a vector accumulator is chain l, so a tap run must start at a
  multiple of 8 in j; the lanes are combined by the same tree (halves: lane l + lane l + 4,
  then + 2, then + 1; `dot_store` does that for 8 accumulators at once and stores the outputs
  with their epilogue, worked on the 8 in one vector). With 16-float vectors two accumulators
  share one `<16 x float>` (`_pairs16`), each half the chains of its own output.
- `fma32`: the scalar fused multiply-add, for loops LLVM vectorises across outputs.
- `pad_copy`: a zero-padded row of the dense kernels' input copy in whole vectors;
  `prefetch_write`: a hint that a line is about to be written (no value changes).
- `clamp_moment_rows`: a profiled relu / relu6 site's pass over 8 images (`moments.py`), 16
  elements in the lanes: the clamp, the min and max of the input and Welford's update in float64
  (`<16 x double>`, where LLVM's own vectorisation of that loop took 4 doubles at a time), each
  lane the operations of the scalar code in its order.

The intrinsics read raw data: their typing accepts only C-contiguous float32 arrays and intp
indices, and they trust the indices they are given.
"""

from __future__ import annotations

import struct

from llvmlite import ir
from numba import types
from numba.core import cgutils, config
from numba.core.codegen import get_host_cpu_features
from numba.extending import intrinsic

VEC = 8  # floats per vector: one AVX2 register (LLVM splits or joins it on other targets)
CHAINS = 8  # chains of an output's taps; equal to VEC so that `dot_taps` lanes are chains

_F32 = ir.FloatType()
_I8 = ir.IntType(8)
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_V8 = ir.VectorType(_F32, VEC)
DVEC = 2 * VEC  # lanes of `direct_tile`'s vectors: one AVX-512 register (two halves with AVX2)
_V16 = ir.VectorType(_F32, DVEC)
_F64 = ir.DoubleType()
_D16 = ir.VectorType(_F64, DVEC)


def wide_vectors() -> bool:
    """Whether the CPU Numba compiles for has 16-float vectors (AVX-512F): its features as Numba
    takes them (NUMBA_CPU_FEATURES, else the host's). Only speed depends on it, never a value."""
    features = config.CPU_FEATURES if config.CPU_FEATURES is not None else get_host_cpu_features()
    return "+avx512f" in features.split(",")


WIDE = wide_vectors()  # `_tap_sums` pairs its accumulators in 16-lane vectors


def _int_tuple(t, n=None):
    return isinstance(t, types.UniTuple) and t.dtype == types.intp and (n is None or t.count == n)


def _f32_c(t, ndim=1):
    """A C-contiguous float32 array type of ndim dimensions: the IR below indexes raw data."""
    return isinstance(t, types.Array) and t.dtype == types.float32 and t.layout == "C" and t.ndim == ndim


def _f64_c(t):
    return isinstance(t, types.Array) and t.dtype == types.float64 and t.layout == "C" and t.ndim == 1


def _i64_c(t):
    return isinstance(t, types.Array) and t.dtype == types.int64 and t.layout == "C" and t.ndim == 1


def _zero(vt=_V8):
    return ir.Constant(vt, [0.0] * vt.count)


def _splat(builder, value, vt=_V8):
    one = builder.insert_element(ir.Constant(vt, ir.Undefined), value, _I32(0))
    lanes = ir.Constant(ir.VectorType(_I32, vt.count), [0] * vt.count)
    return builder.shuffle_vector(one, ir.Constant(vt, ir.Undefined), lanes)


def _vec_ptr(builder, base, index, vt=_V8):
    return builder.bitcast(builder.gep(base, [index]), vt.as_pointer())


def _load_vec(builder, base, index, vt=_V8):
    return builder.load(_vec_ptr(builder, base, index, vt), align=4)


def _tree(builder, s):
    """The combination of the 8 chain sums s[0..7] (scalars or vectors), as docs/kernels.md
    defines it: ((s0 + s4) + (s2 + s6)) + ((s1 + s5) + (s3 + s7))."""
    a = [builder.fadd(s[i], s[i + 4]) for i in range(4)]
    return builder.fadd(builder.fadd(a[0], a[2]), builder.fadd(a[1], a[3]))


def _halves(builder, v):
    """The lanes of v (lane l = chain l) combined by `_tree`: lane l + lane l + 4, then l + 2,
    then l + 1."""
    width = VEC
    while width > 1:
        width //= 2
        lo = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, width), list(range(width))))
        hi = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, width), list(range(width, 2 * width))))
        v = builder.fadd(lo, hi)
    return builder.extract_element(v, _I32(0))


def _fma(builder, a, b, c):
    """a * b + c rounded once: the llvm.fma intrinsic on float or a vector of floats."""
    name = f"llvm.fma.v{a.type.count}f32" if isinstance(a.type, ir.VectorType) else "llvm.fma.f32"
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(a.type, [a.type] * 3), name)
    return builder.call(fn, [a, b, c])


def _array(context, builder, ty, value):
    return context.make_array(ty)(context, builder, value)


def _arrays(context, builder, sig, args, *which):
    """The array structures of the intrinsic's arguments number `which`."""
    return [_array(context, builder, sig.args[i], args[i]) for i in which]


def _pass_codegen(builder, blocks, span, parts, body, vt=_V8):
    """A run of taps (one chain's, or part of it): blocks is a list of (accumulators, at), each
    block's accumulators (vectors of type vt) from parts[at + i * width] (span[2] set) or +0;
    body(t) for t in span[0] .. span[1] - 1; then back to parts."""
    t0, t1, resume = span
    width = vt.count
    with builder.if_else(builder.icmp_signed("!=", resume, _I64(0))) as (cont, fresh):
        with cont:
            for accs, at in blocks:
                first = builder.gep(parts, [at])
                for i, acc in enumerate(accs):
                    builder.store(_load_vec(builder, first, _I64(i * width), vt), acc)
        with fresh:
            for accs, _ in blocks:
                for acc in accs:
                    builder.store(_zero(vt), acc)
    with cgutils.for_range_slice(builder, t0, t1, _I64(1)) as (t, _):
        body(t)
    for accs, at in blocks:
        first = builder.gep(parts, [at])
        for i, acc in enumerate(accs):
            builder.store(builder.load(acc), _vec_ptr(builder, first, _I64(i * width), vt), align=4)


def _blocks(t):
    """An integer, or a tuple of integers (one per block of filters)."""
    return isinstance(t, types.Integer) or _int_tuple(t)


def _n_blocks(t):
    return t.count if isinstance(t, types.UniTuple) else 1


def _block_values(context, builder, ty, value):
    """The entries of an integer or a tuple of integers (`_blocks`), as intp."""
    if isinstance(ty, types.UniTuple):
        return cgutils.unpack_tuple(builder, value)
    return [context.cast(builder, value, ty, types.intp)]


@intrinsic
def tile_pass(typingctx, wp, w0s, x, xb, offs, span, parts, at):
    """A run of taps of a tile of M filters by V segments of VEC output positions (outputs in
    lanes): acc[m, v] (+)= w[m, t] * x[xb[v] + offs[t] + lane] for t in span, fused multiply-adds
    in increasing t.

    wp float32 (flat): tap t (summation order) of filter m at wp[w0s[m] + t * M]; x float32
    (flat) the input; offs int64 (taps,); span = (t0, t1, resume): the taps, which must lie in one
    chain, and whether the accumulators go on from parts (else start at +0); parts float32
    (flat): the M * V accumulators at parts[at + (m * V + v) * VEC], read (resume) and written.
    M = len(w0s), V = len(xb).
    """
    if not (_f32_c(wp) and _f32_c(x) and _f32_c(parts) and _i64_c(offs)):
        return None
    if not (_int_tuple(w0s) and _int_tuple(xb) and _int_tuple(span, 3) and isinstance(at, types.Integer)):
        return None
    sig = types.none(wp, w0s, x, xb, offs, span, parts, at)
    n_m, n_v = w0s.count, xb.count

    def codegen(context, builder, sig, args):
        arr_w, arr_x, arr_o, arr_p = _arrays(context, builder, sig, args, 0, 2, 4, 6)
        w0 = cgutils.unpack_tuple(builder, args[1])
        xbase = [builder.gep(arr_x.data, [b]) for b in cgutils.unpack_tuple(builder, args[3])]
        accs = [cgutils.alloca_once_value(builder, _zero()) for _ in range(n_m * n_v)]

        def body(t):
            o = builder.load(builder.gep(arr_o.data, [t]))
            xs = [_load_vec(builder, base, o) for base in xbase]
            wt = builder.mul(t, _I64(n_m))
            for m in range(n_m):
                wv = _splat(builder, builder.load(builder.gep(arr_w.data, [builder.add(w0[m], wt)])))
                for v in range(n_v):
                    acc = accs[m * n_v + v]
                    builder.store(_fma(builder, wv, xs[v], builder.load(acc)), acc)

        at = context.cast(builder, args[7], sig.args[7], types.intp)
        _pass_codegen(builder, [(accs, at)], cgutils.unpack_tuple(builder, args[5]), arr_p.data, body)
        return context.get_dummy_value()

    return sig, codegen


def _lane_pass(name, h_n, x_vectors):
    """The typing and codegen of `lane_pass` (h_n = 2, x broadcast) and `depth_pass` (h_n = 1, x
    a vector of 8 channels). lane_pass's 16 filters are one vector of 16 lanes: two `<8 x float>`
    halves where the CPU's vectors are 8 floats wide, one register with AVX-512; each lane's fused
    multiply-adds are the same either way. w0 and at may be tuples of one entry per block of
    filters: the blocks share each input value (one load, or one broadcast) and keep their own
    accumulators, the same operations per lane as one block at a time."""
    vt = ir.VectorType(_F32, VEC * h_n)

    def typer(typingctx, wp, w0, x, pb, offs, span, parts, at):
        if not (_f32_c(wp) and _f32_c(x) and _f32_c(parts) and _i64_c(offs) and _int_tuple(pb)):
            return None
        if not (_int_tuple(span, 3) and _blocks(w0) and _blocks(at) and _n_blocks(w0) == _n_blocks(at)):
            return None
        sig = types.none(wp, w0, x, pb, offs, span, parts, at)
        n_p, n_b = pb.count, _n_blocks(w0)

        def codegen(context, builder, sig, args):
            arr_w, arr_x, arr_o, arr_p = _arrays(context, builder, sig, args, 0, 2, 4, 6)
            w0s = _block_values(context, builder, sig.args[1], args[1])
            wbases = [builder.gep(arr_w.data, [w]) for w in w0s]
            xbase = [builder.gep(arr_x.data, [b]) for b in cgutils.unpack_tuple(builder, args[3])]
            accs = [cgutils.alloca_once_value(builder, _zero(vt)) for _ in range(n_b * n_p)]

            def body(t):
                o = builder.load(builder.gep(arr_o.data, [t]))
                ws = [_load_vec(builder, wb, builder.mul(t, _I64(vt.count)), vt) for wb in wbases]
                for i, base in enumerate(xbase):
                    if x_vectors:
                        xv = _load_vec(builder, base, o, vt)
                    else:
                        xv = _splat(builder, builder.load(builder.gep(base, [o])), vt)
                    for h, wv in enumerate(ws):
                        acc = accs[h * n_p + i]
                        builder.store(_fma(builder, wv, xv, builder.load(acc)), acc)

            ats = _block_values(context, builder, sig.args[7], args[7])
            blocks = [(accs[h * n_p : (h + 1) * n_p], at) for h, at in enumerate(ats)]
            _pass_codegen(builder, blocks, cgutils.unpack_tuple(builder, args[5]), arr_p.data, body, vt)
            return context.get_dummy_value()

        return sig, codegen

    typer.__name__ = typer.__qualname__ = name
    return typer


lane_pass = intrinsic(_lane_pass("lane_pass", 2, False))
lane_pass.__doc__ = """A run of taps of a tile of 16 filters (in the lanes of one 16-lane vector) by P positions:
acc[p, j] (+)= w[j, t] * x[pb[p] + offs[t]] for t in span, fused multiply-adds in increasing t;
the order of `tile_pass`, the other way round in the registers.

lane_pass(wp, w0, x, pb, offs, span, parts, at): wp float32 (flat), tap t of filter j at
wp[w0 + t * 16 + j]; pb the P positions' bases; offs, span, parts as `tile_pass` takes them,
the P accumulators at parts[at + p * 16] (filters 0 .. 15 of position p; as 8-lane halves, filters
8 h .. 8 h + 7 at parts[at + (p * 2 + h) * VEC]). w0 and at may be tuples of one length, one entry
per block of 16 filters: each block's taps from its w0, its accumulators at its at, every input
value read once for all the blocks.
"""

depth_pass = intrinsic(_lane_pass("depth_pass", 1, True))
depth_pass.__doc__ = """`lane_pass` for a depthwise conv: 8 channels (each its own filter) in
the lanes of one vector, by P positions: acc[p, c] (+)= w[c, t] * x[pb[p] + offs[t] + c], the
input a vector of the 8 channels (channels-last blocks of 8); weights at wp[w0 + t * 8 + c],
accumulator p at parts[at + p * VEC].
"""


def _combined(builder, parts, slots, index):
    """Vector `index` (an i64 value) of a tile combined over its chains: the partial sums at
    parts[slot + index * VEC] for each chain's slot, by `_tree` (one slot: that sum)."""
    off = builder.mul(index, _I64(VEC))
    s = [_load_vec(builder, parts, builder.add(slot, off)) for slot in slots]
    return _tree(builder, s) if len(s) == CHAINS else s[0]


def _epilogue(builder, y, act):
    """y (bias and residual added) then ReLU (act 1), ReLU6 (act 2) or a ReLU to float32's
    largest value (act 3) as NumPy's maximum(y, 0) and minimum(y, 6) or minimum(y, largest):
    NaN stays NaN, -0.0 becomes +0.0."""

    def splat(v):
        if isinstance(y.type, ir.VectorType):
            return ir.Constant(y.type, [v] * y.type.count)
        return ir.Constant(y.type, v)

    zero, six, largest = splat(0.0), splat(6.0), splat(FLOAT32_MAX)
    top = builder.select(builder.icmp_signed("==", act, act.type(3)), largest, six)
    relu = builder.select(builder.fcmp_unordered(">", y, zero), y, zero)
    clamped = builder.select(builder.fcmp_unordered("<", relu, top), relu, top)
    is_relu = builder.icmp_signed("==", act, act.type(1))
    is_clamped = builder.icmp_signed(">=", act, act.type(2))
    return builder.select(is_clamped, clamped, builder.select(is_relu, relu, y))


def _store_one(builder, arrays, idx, y, has_res, act):
    """out[idx] = epilogue(y (+ res[idx])), one float."""
    arr_r, arr_o = arrays
    with builder.if_else(has_res) as (with_res, without):
        with with_res:
            r = builder.load(builder.gep(arr_r.data, [idx]))
            builder.store(_epilogue(builder, builder.fadd(y, r), act), builder.gep(arr_o.data, [idx]))
        with without:
            builder.store(_epilogue(builder, y, act), builder.gep(arr_o.data, [idx]))


@intrinsic
def store_tile(typingctx, parts, slots, bias, res, out, where, obases, lanes):
    """The epilogue of a `tile_pass` tile, stored into out: its sums combined over the chains
    (parts at each chain's slot, `_combined`), + bias, + the residual if has_res, then the
    activation (`_epilogue`).

    bias float32 (K,); res and out float32 (flat): the residual tensor (out itself when there
    is none) and the output, NCHW; where = (b0, m_n, kstride, has_res, act): filter m < m_n of
    the tile is output channel b0 + m (filters from m_n on pad the tile and are not stored),
    kstride the distance between two channels' planes; obases[v] the flat index in out of
    segment v's lane 0 for filter 0; lanes = (lo[0..V-1], hi[0..V-1]): its lanes lo .. hi - 1
    are outputs.
    """
    if not (_f32_c(parts) and _f32_c(bias) and _f32_c(res) and _f32_c(out) and _int_tuple(where, 5)):
        return None
    if not (_int_tuple(slots) and slots.count in (1, CHAINS) and _int_tuple(obases)):
        return None
    if not _int_tuple(lanes, 2 * obases.count):
        return None
    sig = types.none(parts, slots, bias, res, out, where, obases, lanes)
    n_v = obases.count

    def codegen(context, builder, sig, args):
        arr_p, arr_b, *arrays = _arrays(context, builder, sig, args, 0, 2, 3, 4)
        arr_o = arrays[1]
        slots = cgutils.unpack_tuple(builder, args[1])
        b0, m_n, kstride, has_res, act = cgutils.unpack_tuple(builder, args[5])
        has_res = builder.icmp_signed("!=", has_res, _I64(0))
        ob = cgutils.unpack_tuple(builder, args[6])
        lane_bounds = cgutils.unpack_tuple(builder, args[7])
        los, his = lane_bounds[:n_v], lane_bounds[n_v:]
        with cgutils.for_range(builder, m_n) as loop:
            m = loop.index
            bv = _splat(builder, builder.load(builder.gep(arr_b.data, [builder.add(b0, m)])))
            for v in range(n_v):
                at = builder.add(ob[v], builder.mul(kstride, m))
                index = builder.add(builder.mul(m, _I64(n_v)), _I64(v))
                y = builder.fadd(_combined(builder, arr_p.data, slots, index), bv)
                whole = builder.and_(
                    builder.icmp_signed("==", los[v], _I64(0)), builder.icmp_signed("==", his[v], _I64(VEC))
                )
                with builder.if_else(whole) as (full, part):
                    with full:
                        with builder.if_else(has_res) as (with_res, without):
                            with with_res:
                                r = _load_vec(builder, arrays[0].data, at)
                                y2 = _epilogue(builder, builder.fadd(y, r), act)
                                builder.store(y2, _vec_ptr(builder, arr_o.data, at), align=4)
                            with without:
                                builder.store(_epilogue(builder, y, act), _vec_ptr(builder, arr_o.data, at), align=4)
                    with part:
                        for lane in range(VEC):
                            after_lo = builder.icmp_signed("<=", los[v], _I64(lane))
                            inside = builder.and_(after_lo, builder.icmp_signed(">", his[v], _I64(lane)))
                            with builder.if_then(inside):
                                idx = builder.add(at, _I64(lane))
                                _store_one(builder, arrays, idx, builder.extract_element(y, _I32(lane)), has_res, act)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def direct_tile(typingctx, wp, w0s, wstep, x, xb, offs, starts, bias, res, out, where, obases, los):
    """A tile of M filters by V segments of DVEC consecutive output positions (outputs in the
    lanes, `<16 x float>`) of a conv read in place, summed and stored in one call.

    direct_tile(wp, w0s, wstep, x, xb, offs, starts, bias, res, out, where, obases, los): tap t
    (summation order) of filter m at wp[w0s[m] + t * wstep]; x float32 (flat), segment v's
    input for tap t at x[xb[v] + offs[t] + lane]; starts int64 (2,) or (CHAINS + 1,): where each
    chain's taps begin, and the end. Each chain is a sequence of fused multiply-adds from +0 in
    increasing t; CHAINS chains (their sums kept in the stack meanwhile) are combined by `_tree`.
    Then + bias, + the residual if has_res, and the activation (`_epilogue`), as `store_tile`
    finishes an output. where = (k0, m_n, kstride, has_res, act): filter m is output channel k0
    + m, stored for m < m_n; out and res (flat NCHW, res as `store_tile` takes it) hold segment
    v's lane 0 of filter 0 at obases[v], a channel kstride floats from the next; los[v] the first
    lane of segment v stored (0: all, DVEC: none, else a masked store of the lanes from los[v]
    on). M = len(w0s), V = len(xb).
    """
    if not (_f32_c(wp) and _f32_c(x) and _f32_c(bias) and _f32_c(res) and _f32_c(out) and _i64_c(offs)):
        return None
    if not (_int_tuple(w0s) and _int_tuple(xb) and isinstance(wstep, types.Integer) and _int_tuple(where, 5)):
        return None
    if not (_i64_c(starts) and _int_tuple(obases, xb.count) and _int_tuple(los, xb.count)):
        return None
    sig = types.none(wp, w0s, wstep, x, xb, offs, starts, bias, res, out, where, obases, los)
    n_m, n_v = w0s.count, xb.count
    n_a = n_m * n_v

    def codegen(context, builder, sig, args):
        arr_w, arr_x, arr_o, arr_s, arr_b, arr_r, arr_out = _arrays(context, builder, sig, args, 0, 3, 5, 6, 7, 8, 9)
        w0 = cgutils.unpack_tuple(builder, args[1])
        wstep = context.cast(builder, args[2], sig.args[2], types.intp)
        xbase = [builder.gep(arr_x.data, [b]) for b in cgutils.unpack_tuple(builder, args[4])]
        accs = [cgutils.alloca_once_value(builder, _zero(_V16)) for _ in range(n_a)]
        chains = builder.sub(arr_s.nitems, _I64(1))
        sums = cgutils.alloca_once(builder, _V16, size=CHAINS * n_a)  # the chains' sums (8 chains)
        with cgutils.for_range(builder, chains) as chain:
            for acc in accs:
                builder.store(_zero(_V16), acc)
            t0 = builder.load(builder.gep(arr_s.data, [chain.index]))
            t1 = builder.load(builder.gep(arr_s.data, [builder.add(chain.index, _I64(1))]))
            with cgutils.for_range_slice(builder, t0, t1, _I64(1)) as (t, _):
                o = builder.load(builder.gep(arr_o.data, [t]))
                xs = [_load_vec(builder, base, o, _V16) for base in xbase]
                wt = builder.mul(t, wstep)
                for m in range(n_m):
                    wv = _splat(builder, builder.load(builder.gep(arr_w.data, [builder.add(w0[m], wt)])), _V16)
                    for v in range(n_v):
                        acc = accs[m * n_v + v]
                        builder.store(_fma(builder, wv, xs[v], builder.load(acc)), acc)
            with builder.if_then(builder.icmp_signed("!=", chains, _I64(1))):
                for i, acc in enumerate(accs):
                    slot = builder.add(builder.mul(chain.index, _I64(n_a)), _I64(i))
                    builder.store(builder.load(acc), builder.gep(sums, [slot]))
        with builder.if_then(builder.icmp_signed("!=", chains, _I64(1))):
            for i, acc in enumerate(accs):
                chain_sums = [builder.load(builder.gep(sums, [_I64(c * n_a + i)])) for c in range(CHAINS)]
                builder.store(_tree(builder, chain_sums), acc)
        k0, m_n, kstride, has_res, act = cgutils.unpack_tuple(builder, args[10])
        has_res = builder.icmp_signed("!=", has_res, _I64(0))
        ob, los = cgutils.unpack_tuple(builder, args[11]), cgutils.unpack_tuple(builder, args[12])
        lanes = ir.Constant(ir.VectorType(_I64, DVEC), list(range(DVEC)))
        for m in range(n_m):
            with builder.if_then(builder.icmp_signed("<", _I64(m), m_n)):
                bv = _splat(builder, builder.load(builder.gep(arr_b.data, [builder.add(k0, _I64(m))])), _V16)
                for v in range(n_v):
                    at = builder.add(ob[v], builder.mul(kstride, _I64(m)))
                    y = builder.fadd(builder.load(accs[m * n_v + v]), bv)
                    with builder.if_then(builder.icmp_signed("<", los[v], _I64(DVEC))):
                        with builder.if_else(has_res) as (with_res, without):
                            with with_res:
                                r = _load_vec(builder, arr_r.data, at, _V16)
                                y_res = (_epilogue(builder, builder.fadd(y, r), act), builder.block)
                            with without:
                                y_own = (_epilogue(builder, y, act), builder.block)
                        y2 = _phi(builder, y_res, y_own)
                        ptr = _vec_ptr(builder, arr_out.data, at, _V16)
                        with builder.if_else(builder.icmp_signed("==", los[v], _I64(0))) as (whole, part):
                            with whole:
                                builder.store(y2, ptr, align=4)
                            with part:
                                lo = _splat(builder, los[v], lanes.type)
                                _masked_store(builder, y2, ptr, builder.icmp_signed(">=", lanes, lo))
        return context.get_dummy_value()

    return sig, codegen


def _phi(builder, *incoming):
    """The value of the branch taken: incoming (value, block) pairs."""
    y = builder.phi(incoming[0][0].type)
    for value, block in incoming:
        y.add_incoming(value, block)
    return y


def _keep_type(keep, dtype, n=None):
    """Whether keep is (bits, index): bits a C-contiguous array of dtype, index an integer (n
    None) or a tuple of n intp."""
    if not (isinstance(keep, types.BaseTuple) and len(keep) == 2):
        return False
    bits, index = keep
    if not (isinstance(bits, types.Array) and bits.dtype == dtype and bits.layout == "C"):
        return False
    return isinstance(index, types.Integer) if n is None else _int_tuple(index, n)


def _keep_bits(context, builder, ty, value):
    """The data pointer of a keep's bits and its index (an intp or a list of them)."""
    bits, index = cgutils.unpack_tuple(builder, value)
    data = _array(context, builder, ty[0], bits).data
    if isinstance(ty[1], types.Integer):
        return data, context.cast(builder, index, ty[1], types.intp)
    return data, cgutils.unpack_tuple(builder, index)


def _lane_on(builder, word, lane):
    """Whether bit `lane` of the integer (or vector of integers) word is set."""
    ty = word.type.element if isinstance(word.type, ir.VectorType) else word.type
    bit = 1 << lane
    bit -= (bit >> (ty.width - 1)) << ty.width  # the sign bit as a negative constant
    one, zero = ir.Constant(ty, bit), ir.Constant(ty, 0)
    if isinstance(word.type, ir.VectorType):
        one, zero = (ir.Constant(word.type, [v.constant] * word.type.count) for v in (one, zero))
    return builder.icmp_unsigned("!=", builder.and_(word, one), zero)


@intrinsic
def store_lanes(typingctx, parts, slots, bias, res, out, where, obases, keep):
    """The epilogue of a `lane_pass` tile, stored into out.

    store_lanes(parts, slots, bias, res, out, where, obases, keep): where = (k0, p_n, has_res,
    act), the tile's filters are output channels k0 .. k0 + 15, planes of p_n outputs in res
    and out (flat NCHW, res as `store_tile` takes it); position p's outputs at obases[p] + j *
    p_n. Each output is its sum combined over the chains (`_combined`), + bias, + the residual
    if has_res, then the activation (`_epilogue`). Where the positions are consecutive (all but
    a plane's short last tile) the sums are transposed in registers, 8 filters at a time, and
    each filter's outputs stored in pieces of 4 and 2 (its residual read likewise); else one by
    one. The same float32 operations either way.

    keep: None (every output stored) or (bits, index), bits a uint16 array whose element
    index[p] says which filters of position p are stored (bit j: filter k0 + j); the others
    are not written (consecutive positions: a filter's outputs in one masked store,
    `_masked_store`; else one by one). Returns the outputs stored (a position repeated at a
    short last tile counted once).
    """
    if not (_f32_c(parts) and _f32_c(bias) and _f32_c(res) and _f32_c(out) and _int_tuple(where, 4)):
        return None
    if not (_int_tuple(slots) and slots.count in (1, CHAINS) and _int_tuple(obases)):
        return None
    kept = keep != types.none
    if kept and not _keep_type(keep, types.uint16, obases.count):
        return None
    sig = types.int64(parts, slots, bias, res, out, where, obases, keep)
    n_p, h_n = obases.count, 2

    def codegen(context, builder, sig, args):
        arr_p, arr_b, *arrays = _arrays(context, builder, sig, args, 0, 2, 3, 4)
        slots = cgutils.unpack_tuple(builder, args[1])
        k0, p_n, has_res, act = cgutils.unpack_tuple(builder, args[5])
        has_res = builder.icmp_signed("!=", has_res, _I64(0))
        ob = cgutils.unpack_tuple(builder, args[6])
        words = [None] * n_p
        if kept:
            bits, index = _keep_bits(context, builder, sig.args[7], args[7])
            words = [builder.load(builder.gep(bits, [index[i]])) for i in range(n_p)]
        stored = _I64(0)
        for i in range(n_p):  # a position repeated at a short last tile counts once
            n_i = _ctpop(builder, words[i]) if kept else _I64(h_n * VEC)
            new = builder.icmp_signed("!=", ob[i], ob[i - 1]) if i else ir.Constant(ir.IntType(1), 1)
            stored = builder.add(stored, builder.select(new, n_i, _I64(0)))
        bv = [_load_vec(builder, arr_b.data, builder.add(k0, _I64(h * VEC))) for h in range(h_n)]
        ys = [
            [builder.fadd(_combined(builder, arr_p.data, slots, _I64(i * h_n + h)), bv[h]) for h in range(h_n)]
            for i in range(n_p)
        ]
        run = ir.Constant(ir.IntType(1), int(n_p <= VEC))
        for i in range(1, n_p):
            run = builder.and_(run, builder.icmp_signed("==", ob[i], builder.add(ob[0], _I64(i))))
        with builder.if_else(run) as (together, apart):
            with together:
                if kept and n_p <= VEC:
                    w16 = ir.VectorType(words[0].type, VEC)
                    tile_words = ir.Constant(w16, [0] * VEC)
                    for i, word in enumerate(words):
                        tile_words = builder.insert_element(tile_words, word, _I32(i))
                for h in range(h_n if n_p <= VEC else 0):
                    cols = _transpose8(builder, [ys[i][h] for i in range(n_p)] + [_zero()] * (VEC - n_p))
                    for c, y in enumerate(cols):
                        at = builder.add(ob[0], builder.mul(p_n, builder.add(k0, _I64(h * VEC + c))))
                        with builder.if_else(has_res) as (with_res, without):
                            with with_res:
                                r = _load_first(builder, arrays[0].data, at, n_p)
                                y_res = (_epilogue(builder, builder.fadd(y, r), act), builder.block)
                            with without:
                                y_own = (_epilogue(builder, y, act), builder.block)
                        y = _phi(builder, y_res, y_own)
                        if kept:
                            on = _lane_on(builder, tile_words, h * VEC + c)
                            _masked_store(builder, y, _vec_ptr(builder, arrays[1].data, at), on)
                        else:
                            _store_first(builder, y, arrays[1].data, at, n_p)
            with apart:
                for i in range(n_p):
                    for h in range(h_n):
                        for lane in range(VEC):
                            idx = builder.add(ob[i], builder.mul(p_n, builder.add(k0, _I64(h * VEC + lane))))
                            y = builder.extract_element(ys[i][h], _I32(lane))
                            if kept:
                                with builder.if_then(_lane_on(builder, words[i], h * VEC + lane)):
                                    _store_one(builder, arrays, idx, y, has_res, act)
                            else:
                                _store_one(builder, arrays, idx, y, has_res, act)
        return stored

    return sig, codegen


def _transpose8(builder, rows):
    """8 vectors r[i] (lane c) as 8 vectors c (lane i): unpacks within 128-bit halves, pairs of
    floats, then halves (the shuffles of an AVX 8 x 8 transpose)."""

    def sh(a, b, idx):
        return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(_I32, VEC), idx))

    lo = [sh(rows[2 * k], rows[2 * k + 1], [0, 8, 1, 9, 4, 12, 5, 13]) for k in range(4)]
    hi = [sh(rows[2 * k], rows[2 * k + 1], [2, 10, 3, 11, 6, 14, 7, 15]) for k in range(4)]
    a, b = [0, 1, 8, 9, 4, 5, 12, 13], [2, 3, 10, 11, 6, 7, 14, 15]
    s = [sh(lo[0], lo[1], a), sh(lo[0], lo[1], b), sh(hi[0], hi[1], a), sh(hi[0], hi[1], b)]
    s += [sh(lo[2], lo[3], a), sh(lo[2], lo[3], b), sh(hi[2], hi[3], a), sh(hi[2], hi[3], b)]
    low, high = [0, 1, 2, 3, 8, 9, 10, 11], [4, 5, 6, 7, 12, 13, 14, 15]
    return [sh(s[k], s[k + 4], low) for k in range(4)] + [sh(s[k], s[k + 4], high) for k in range(4)]


def _ctpop(builder, v):
    """The number of bits set in the integer v, as an i64."""
    name = f"llvm.ctpop.i{v.type.width}"
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(v.type, [v.type]), name)
    return builder.zext(builder.call(fn, [v]), _I64) if v.type.width < 64 else builder.call(fn, [v])


@intrinsic
def store_depth(typingctx, parts, bias, res, out, where, ob, keep):
    """The epilogue of a `depth_pass` tile of 8 channels by 8 consecutive positions (accumulator
    p at parts[p * VEC]), stored into out: where = (k0, p_n, has_res, act, n_valid): channels k0
    .. k0 + 7, planes of p_n outputs in res and out (flat NCHW, res as `store_tile` takes it),
    positions ob .. ob + n_valid - 1 of channel k0's plane (the rest are not stored). Each output
    is sum + bias, + the residual if has_res, then the activation (`_epilogue`); a whole tile
    without residual is transposed in registers and stored a channel's 8 outputs at a time.

    keep: None (every output stored) or (bits, b0), bits a uint8 array whose byte b0 + i says
    which channels of position i are stored (bit c: channel k0 + c); the others are not
    written (a whole tile stores a channel's kept outputs in one masked store, `_masked_store`).
    Returns the outputs stored.
    """
    if not (_f32_c(parts) and _f32_c(bias) and _f32_c(res) and _f32_c(out) and _int_tuple(where, 5)):
        return None
    if not isinstance(ob, types.Integer):
        return None
    kept = keep != types.none
    if kept and not _keep_type(keep, types.uint8):
        return None
    sig = types.int64(parts, bias, res, out, where, ob, keep)

    def codegen(context, builder, sig, args):
        arr_p, arr_b, *arrays = _arrays(context, builder, sig, args, 0, 1, 2, 3)
        k0, p_n, has_res, act, n_valid = cgutils.unpack_tuple(builder, args[4])
        ob = context.cast(builder, args[5], sig.args[5], types.intp)
        if kept:
            bits, b0 = _keep_bits(context, builder, sig.args[6], args[6])
        has_res = builder.icmp_signed("!=", has_res, _I64(0))
        bv = _load_vec(builder, arr_b.data, k0)
        ys = [builder.fadd(_load_vec(builder, arr_p.data, _I64(i * VEC)), bv) for i in range(VEC)]
        first = builder.add(ob, builder.mul(p_n, k0))
        fast = builder.and_(builder.icmp_signed("==", n_valid, _I64(VEC)), builder.not_(has_res))
        stored = cgutils.alloca_once_value(builder, _I64(0))
        with builder.if_else(fast) as (whole, part):
            with whole:
                cols = _transpose8(builder, [_epilogue(builder, y, act) for y in ys])
                if kept:
                    v8 = ir.VectorType(_I8, VEC)
                    tile_bits = builder.load(builder.bitcast(builder.gep(bits, [b0]), v8.as_pointer()), align=1)
                    builder.store(_ctpop(builder, builder.bitcast(tile_bits, _I64)), stored)
                else:
                    builder.store(_I64(VEC * VEC), stored)
                for c, col in enumerate(cols):
                    ptr = _vec_ptr(builder, arrays[1].data, builder.add(first, builder.mul(p_n, _I64(c))))
                    if kept:
                        _masked_store(builder, col, ptr, _lane_on(builder, tile_bits, c))
                    else:
                        builder.store(col, ptr, align=4)
            with part:
                for i, y in enumerate(ys):
                    with builder.if_then(builder.icmp_signed("<", _I64(i), n_valid)):
                        if kept:
                            byte = builder.load(builder.gep(bits, [builder.add(b0, _I64(i))]))
                            builder.store(builder.add(builder.load(stored), _ctpop(builder, byte)), stored)
                        else:
                            builder.store(builder.add(builder.load(stored), _I64(VEC)), stored)
                        for c in range(VEC):
                            idx = builder.add(first, builder.add(builder.mul(p_n, _I64(c)), _I64(i)))
                            value = builder.extract_element(y, _I32(c))
                            if kept:
                                with builder.if_then(_lane_on(builder, byte, c)):
                                    _store_one(builder, arrays, idx, value, has_res, act)
                            else:
                                _store_one(builder, arrays, idx, value, has_res, act)
        return builder.load(stored)

    return sig, codegen


@intrinsic
def interleave8(typingctx, src, s0, stride, dst, d0, dstride):
    """8 pixels of 8 channels side by side: dst[d0 + dstride * i + c] = src[s0 + c * stride + i]
    for i, c in 0 .. 7 (8 vector loads, the shuffles of `_transpose8`, 8 vector stores). src and
    dst float32 (flat); a copy, no arithmetic."""
    ints = (s0, stride, d0, dstride)
    if not (_f32_c(src) and _f32_c(dst) and all(isinstance(t, types.Integer) for t in ints)):
        return None
    sig = types.none(src, s0, stride, dst, d0, dstride)

    def codegen(context, builder, sig, args):
        arr_s, arr_d = _arrays(context, builder, sig, args, 0, 3)
        s0, stride, d0, dstride = (context.cast(builder, args[i], sig.args[i], types.intp) for i in (1, 2, 4, 5))
        rows = [_load_vec(builder, arr_s.data, builder.add(s0, builder.mul(stride, _I64(c)))) for c in range(VEC)]
        for i, col in enumerate(_transpose8(builder, rows)):
            builder.store(col, _vec_ptr(builder, arr_d.data, builder.add(d0, builder.mul(dstride, _I64(i)))), align=4)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def copy_floats(typingctx, src, s0, dst, d0, n):
    """dst[d0 : d0 + n] = src[s0 : s0 + n] (float32, flat; the ranges must not overlap): one
    llvm.memcpy, a copy, no arithmetic."""
    if not (_f32_c(src) and _f32_c(dst) and all(isinstance(t, types.Integer) for t in (s0, d0, n))):
        return None
    sig = types.none(src, s0, dst, d0, n)

    def codegen(context, builder, sig, args):
        arr_s, arr_d = _arrays(context, builder, sig, args, 0, 2)
        s0, d0, n = (context.cast(builder, args[i], sig.args[i], types.intp) for i in (1, 3, 4))
        cgutils.raw_memcpy(builder, builder.gep(arr_d.data, [d0]), builder.gep(arr_s.data, [s0]), n, 4)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def zero_floats(typingctx, dst, d0, n):
    """dst[d0 : d0 + n] = +0.0 (float32, flat): one llvm.memset."""
    if not (_f32_c(dst) and isinstance(d0, types.Integer) and isinstance(n, types.Integer)):
        return None
    sig = types.none(dst, d0, n)

    def codegen(context, builder, sig, args):
        (arr_d,) = _arrays(context, builder, sig, args, 0)
        d0, n = (context.cast(builder, args[i], sig.args[i], types.intp) for i in (1, 2))
        start = builder.bitcast(builder.gep(arr_d.data, [d0]), ir.IntType(8).as_pointer())
        cgutils.memset(builder, start, builder.mul(n, _I64(4)), 0)
        return context.get_dummy_value()

    return sig, codegen


# Floats per vector of `pad_copy`: an AVX-512 register where the CPU has one, else an AVX2 one.
PAD_LANES = DVEC if WIDE else VEC


@intrinsic
def pad_copy(typingctx, src, s0, lo, hi, dst, d0, n, room):
    """dst[d0 + j] = src[s0 + j] for lo <= j < hi, +0.0 for the other j < n (float32, flat; the
    ranges must not overlap): a padded row of a conv's input copy in whole vectors of PAD_LANES
    floats, each a masked load (the lanes outside lo .. hi - 1 are not read: s0 + j may lie
    before src's start there) and a plain store. A last vector reaching past d0 + n is stored
    whole where it ends within `room` floats after it (those floats get +0.0), else by a masked
    store of its first lanes. A copy, no arithmetic; n + PAD_LANES below 2**31 (lanes are
    compared in 32 bits)."""
    ints = (s0, lo, hi, d0, n, room)
    if not (_f32_c(src) and _f32_c(dst) and all(isinstance(t, types.Integer) for t in ints)):
        return None
    sig = types.none(src, s0, lo, hi, dst, d0, n, room)

    def codegen(context, builder, sig, args):
        arr_s, arr_d = _arrays(context, builder, sig, args, 0, 4)
        s0, lo, hi, d0, n, room = (context.cast(builder, args[i], sig.args[i], types.intp) for i in (1, 2, 3, 5, 6, 7))
        vt, iv = ir.VectorType(_F32, PAD_LANES), ir.VectorType(_I32, PAD_LANES)
        lanes = ir.Constant(iv, list(range(PAD_LANES)))

        def splat(v):  # in 32-bit lanes: a row's columns, one compare a vector
            return _splat(builder, builder.trunc(v, _I32), iv)

        load = cgutils.get_or_insert_function(
            builder.module,
            ir.FunctionType(vt, [vt.as_pointer(), _I32, ir.VectorType(ir.IntType(1), PAD_LANES), vt]),
            f"llvm.masked.load.v{PAD_LANES}f32.p0",
        )
        with cgutils.for_range_slice(builder, _I64(0), n, _I64(PAD_LANES)) as (v, _):
            j = builder.add(splat(v), lanes)
            inside = builder.and_(builder.icmp_signed(">=", j, splat(lo)), builder.icmp_signed("<", j, splat(hi)))
            src_ptr = builder.bitcast(builder.gep(arr_s.data, [builder.add(s0, v)]), vt.as_pointer())
            y = builder.call(load, [src_ptr, _I32(4), inside, ir.Constant(vt, [0.0] * PAD_LANES)])
            dst_ptr = builder.bitcast(builder.gep(arr_d.data, [builder.add(d0, v)]), vt.as_pointer())
            end = builder.add(v, _I64(PAD_LANES))
            with builder.if_else(builder.icmp_signed("<=", end, builder.add(n, room))) as (whole, part):
                with whole:
                    builder.store(y, dst_ptr, align=4)
                with part:
                    _masked_store(builder, y, dst_ptr, builder.icmp_signed("<", j, splat(n)))
        return context.get_dummy_value()

    return sig, codegen


def _masked_load(builder, base, index, lanes, fill=0.0):
    """The first `lanes` floats from base[index], `fill` (+0 or -0) in the other lanes
    (llvm.masked.load: the masked-off lanes are not read)."""
    i64v = ir.VectorType(_I64, VEC)
    n = builder.insert_element(ir.Constant(i64v, ir.Undefined), lanes, _I32(0))
    n = builder.shuffle_vector(n, ir.Constant(i64v, ir.Undefined), ir.Constant(ir.VectorType(_I32, VEC), [0] * VEC))
    mask = builder.icmp_signed("<", ir.Constant(i64v, list(range(VEC))), n)
    ptr = _vec_ptr(builder, base, index)
    fnty = ir.FunctionType(_V8, [ptr.type, _I32, mask.type, _V8])
    fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.masked.load.v8f32.p0")
    return builder.call(fn, [ptr, _I32(4), mask, ir.Constant(_V8, [fill] * VEC)])


def _masked_store(builder, y, ptr, mask):
    """ptr[l] = y[l] where mask[l] (<8 x i1>, or as many lanes as y has): llvm.masked.store; the
    other floats are neither read nor written (nor need they lie inside the array). One masked move with AVX-512
    (Zen 4, Intel), vmaskmovps with AVX2 (microcoded on AMD CPUs before Zen 4: slower there,
    the same values)."""
    fnty = ir.FunctionType(ir.VoidType(), [y.type, ptr.type, _I32, mask.type])
    fn = cgutils.get_or_insert_function(builder.module, fnty, f"llvm.masked.store.v{y.type.count}f32.p0")
    builder.call(fn, [y, ptr, _I32(4), mask])


def _pieces(lanes):
    """The first `lanes` lanes of a vector as pieces of 4, 2 and 1 lanes: (first lane, count)."""
    out, at = [], 0
    for size in (4, 2, 1):
        while lanes - at >= size:
            out.append((at, size))
            at += size
    return out


def _store_first(builder, y, base, index, lanes):
    """base[index + l] = y[l] for the first `lanes` (a constant) lanes, in plain stores of 4, 2
    and 1 floats (no other float of base is touched)."""
    for at, size in _pieces(lanes):
        sel = ir.Constant(ir.VectorType(_I32, size), list(range(at, at + size)))
        part = builder.shuffle_vector(y, ir.Constant(_V8, ir.Undefined), sel)
        ptr = builder.bitcast(builder.gep(base, [builder.add(index, _I64(at))]), part.type.as_pointer())
        builder.store(part, ptr, align=4)


def _load_first(builder, base, index, lanes):
    """The first `lanes` (a constant) floats from base[index] in the first lanes of a vector
    (the others undefined), read in pieces of 4, 2 and 1 floats (no other float is read)."""
    y = ir.Constant(_V8, ir.Undefined)
    for at, size in _pieces(lanes):
        ptr = builder.bitcast(builder.gep(base, [builder.add(index, _I64(at))]), ir.VectorType(_F32, size).as_pointer())
        part = builder.load(ptr, align=4)
        for k in range(size):
            y = builder.insert_element(y, builder.extract_element(part, _I32(k)), _I32(at + k))
    return y


def _pairs16(pairs):
    """The accumulators of `_tap_sums` (pairs (filter row, position)) grouped two to a 16-lane
    vector where the CPU has such vectors (`wide_vectors`): two filters at one position where
    there are two (one 8-lane load of each filter's taps, the input's 8 taps in both halves),
    else two positions of one filter; a group of one where none is left to pair. Returns groups
    of indices into pairs."""
    if not WIDE:
        return [(i,) for i in range(len(pairs))]
    free, groups = dict.fromkeys(range(len(pairs))), []
    for i, (ia, ib) in enumerate(pairs):
        if i not in free:
            continue
        del free[i]
        mate = next((j for j in free if pairs[j] == (ia + 1, ib)), None)
        if mate is None:
            mate = next((j for j in free if pairs[j][0] == ia), None)
        if mate is None:
            groups.append((i,))
        else:
            del free[mate]
            groups.append((i, mate))
    return groups


def _tap_sums(context, builder, sig, args):
    """The sums of `dot_taps` (args a, rows_a, x, offs, runs first): one 8-lane vector per pair
    (filter row, position), filters outer, lane l holding chain l. Two pairs share one 16-lane
    accumulator where `_pairs16` groups them (each half the fused multiply-adds of its pair, in
    the same order)."""
    arr_a, arr_x = _arrays(context, builder, sig, args, 0, 2)
    n = builder.extract_value(arr_a.shape, 1)
    kh, step_y, kw, step_x, seg = cgutils.unpack_tuple(builder, args[4])
    bases_a = [builder.gep(arr_a.data, [builder.mul(r, n)]) for r in cgutils.unpack_tuple(builder, args[1])]
    offs_x = cgutils.unpack_tuple(builder, args[3])
    pairs = [(ia, ib) for ia in range(len(bases_a)) for ib in range(len(offs_x))]
    groups = _pairs16(pairs)
    accs = [cgutils.alloca_once_value(builder, _zero(_V16 if len(g) == 2 else _V8)) for g in groups]
    whole = builder.mul(builder.sdiv(seg, _I64(VEC)), _I64(VEC))
    both = ir.Constant(ir.VectorType(_I32, DVEC), list(range(DVEC)))

    def step(bases_j, bases_x, load, load_x):
        va, vb = [load(base) for base in bases_j], [load_x(base) for base in bases_x]
        joined = {}

        def join(v, i, k):  # v[i] in the low half, v[k] in the high one, each made once
            key = (id(v), i, k)
            if key not in joined:
                joined[key] = builder.shuffle_vector(v[i], v[k], both)
            return joined[key]

        for acc, g in zip(accs, groups, strict=True):
            if len(g) == 1:
                ia, ib = pairs[g[0]]
                builder.store(_fma(builder, va[ia], vb[ib], builder.load(acc)), acc)
            else:
                (ia, ib), (ja, jb) = pairs[g[0]], pairs[g[1]]
                builder.store(_fma(builder, join(va, ia, ja), join(vb, ib, jb), builder.load(acc)), acc)

    with cgutils.for_range(builder, kh) as fy:
        with cgutils.for_range(builder, kw) as fx:
            tap = builder.add(builder.mul(fy.index, step_y), builder.mul(fx.index, step_x))
            bases_x = [builder.gep(arr_x.data, [builder.add(o, tap)]) for o in offs_x]
            j0 = builder.mul(builder.add(builder.mul(fy.index, kw), fx.index), seg)
            bases_j = [builder.gep(base, [j0]) for base in bases_a]
            with cgutils.for_range_slice(builder, n.type(0), whole, n.type(VEC)) as (t, _):
                whole_vec = lambda base, t=t: _load_vec(builder, base, t)  # noqa: E731
                step(bases_j, bases_x, whole_vec, whole_vec)
            tail = builder.sub(seg, whole)
            with builder.if_then(builder.icmp_signed(">", tail, _I64(0))):
                # a lane past the run adds (-0) * (+0) = -0 to its chain, which leaves every sum as it
                # is (+0 * +0 would turn a chain sum of -0 into +0)
                step(
                    bases_j,
                    bases_x,
                    lambda base: _masked_load(builder, base, whole, tail, -0.0),
                    lambda base: _masked_load(builder, base, whole, tail),
                )
    sums = [None] * len(pairs)
    for acc, g in zip(accs, groups, strict=True):
        v = builder.load(acc)
        if len(g) == 1:
            sums[g[0]] = v
        else:
            for half, i in enumerate(g):
                sel = ir.Constant(ir.VectorType(_I32, VEC), list(range(half * VEC, (half + 1) * VEC)))
                sums[i] = builder.shuffle_vector(v, v, sel)
    return sums


@intrinsic
def dot_taps(typingctx, a, rows_a, x, offs, runs):
    """(a[i] . taps of x at o for i in rows_a for o in offs), taps in lanes, in the chain order.

    a (M, J) C-contiguous float32 filter rows; x a C-contiguous float32 1-D array; offs a tuple
    of ints; runs = (kh, step_y, kw, step_x, seg) with J >= kh * kw * seg. Tap j = (fy * kw +
    fx) * seg + t at o is x[o + fy * step_y + fx * step_x + t]: a padded channels-last image read
    where it lies, or with runs = (1, 0, 1, 0, J) rows of a matrix (im2col rows, a linear
    layer's inputs). Lane l of a pair's accumulator is chain l, so a run must start at a
    multiple of VEC in j: seg is a multiple of VEC when kh * kw > 1; a single run may end in a
    partial vector (read with masked loads, the missing lanes -0 in a and +0 in x: their
    products, -0, change no chain). The lanes are combined by `_halves`. Returns the sums (no
    bias) pair by pair, filters outer.
    """
    if not (_f32_c(a, 2) and _f32_c(x) and _int_tuple(rows_a) and _int_tuple(offs) and _int_tuple(runs, 5)):
        return None
    sig = types.UniTuple(types.float32, rows_a.count * offs.count)(a, rows_a, x, offs, runs)

    def codegen(context, builder, sig, args):
        sums = _tap_sums(context, builder, sig, args)
        return context.make_tuple(builder, sig.return_type, [_halves(builder, v) for v in sums])

    return sig, codegen


def _gathered(builder, values):
    """A vector of the scalars `values` in its first lanes, +0 in the others."""
    v = _zero()
    for i, value in enumerate(values):
        v = builder.insert_element(v, value, _I32(i))
    return v


def _store_scattered(builder, arrays, idx, y, has_res, act):
    """out[idx[l]] = epilogue(y[l] (+ res[idx[l]])) for the lanes l < len(idx): the residual
    gathered into a vector and the epilogue worked on the whole vector, lane by lane the float32
    operations of `_store_one`."""
    arr_r, arr_o = arrays
    with builder.if_else(has_res) as (with_res, without):
        with with_res:
            r = _gathered(builder, [builder.load(builder.gep(arr_r.data, [i])) for i in idx])
            y_res = (_epilogue(builder, builder.fadd(y, r), act), builder.block)
        with without:
            y_own = (_epilogue(builder, y, act), builder.block)
    y = _phi(builder, y_res, y_own)
    for lane, i in enumerate(idx):
        builder.store(builder.extract_element(y, _I32(lane)), builder.gep(arr_o.data, [i]))


def _reduce8(builder, accs):
    """Up to 8 accumulators (lane l = chain l) reduced at once by `_tree`: the lanes of the
    result are the accumulators' sums. Halves of pairs of accumulators (lane l + lane l + 4),
    then lanes 0 + 2 and 1 + 3 of each, then 0 + 1: the order of `_halves`, 8 sums per shuffle."""

    def sh(a, b, idx):
        return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(_I32, VEC), idx))

    v = list(accs) + [_zero()] * (8 - len(accs))
    u = [builder.fadd(sh(v[2 * k], v[2 * k + 1], [0, 1, 2, 3, 8, 9, 10, 11]),
                      sh(v[2 * k], v[2 * k + 1], [4, 5, 6, 7, 12, 13, 14, 15])) for k in range(4)]  # fmt: skip
    w = [builder.fadd(sh(u[2 * k], u[2 * k + 1], [0, 1, 4, 5, 8, 9, 12, 13]),
                      sh(u[2 * k], u[2 * k + 1], [2, 3, 6, 7, 10, 11, 14, 15])) for k in range(2)]  # fmt: skip
    return builder.fadd(sh(w[0], w[1], [0, 2, 4, 6, 8, 10, 12, 14]), sh(w[0], w[1], [1, 3, 5, 7, 9, 11, 13, 15]))


@intrinsic
def dot_store(typingctx, a, rows_a, x, offs, runs, io, where, oidx):
    """`dot_taps` of the filter rows rows_a by the positions offs, each sum then stored with its
    epilogue: out[oidx[i]] = epilogue(sum_i + bias[k_i] (+ res[oidx[i]])), pair i = (filter k_i =
    rows_a[i // len(offs)], position i % len(offs)). io = (bias, res, out) float32 1-D (res: out
    itself when there is no residual); where = (has_res, act). The sums are reduced 8 at a time
    (`_reduce8`), each in the order of `_tree`, and the 8 take their bias, residual and
    activation in one vector (`_store_scattered`) before they are stored one by one.
    """
    if not (_f32_c(a, 2) and _f32_c(x) and _int_tuple(rows_a) and _int_tuple(offs) and _int_tuple(runs, 5)):
        return None
    if not (isinstance(io, types.UniTuple) and io.count == 3 and _f32_c(io.dtype) and _int_tuple(where, 2)):
        return None
    if not _int_tuple(oidx, rows_a.count * offs.count):
        return None
    sig = types.none(a, rows_a, x, offs, runs, io, where, oidx)

    def codegen(context, builder, sig, args):
        arrays = [_array(context, builder, sig.args[5].dtype, v) for v in cgutils.unpack_tuple(builder, args[5])]
        sums = _tap_sums(context, builder, sig, args)
        ks = cgutils.unpack_tuple(builder, args[1])
        n_offs = len(cgutils.unpack_tuple(builder, args[3]))
        has_res, act = cgutils.unpack_tuple(builder, args[6])
        has_res = builder.icmp_signed("!=", has_res, _I64(0))
        oi = cgutils.unpack_tuple(builder, args[7])
        biases = [builder.load(builder.gep(arrays[0].data, [k])) for k in ks]
        for c0 in range(0, len(sums), 8):
            total = _reduce8(builder, sums[c0 : c0 + 8])
            lanes = range(min(8, len(sums) - c0))
            b = _gathered(builder, [biases[(c0 + i) // n_offs] for i in lanes])
            _store_scattered(builder, (arrays[1], arrays[2]), oi[c0 : c0 + 8], builder.fadd(total, b), has_res, act)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def fma32(typingctx, a, b, c):
    """float32 a * b + c rounded once (llvm.fma)."""
    if not all(t == types.float32 for t in (a, b, c)):
        return None
    sig = types.float32(a, b, c)

    def codegen(context, builder, sig, args):
        return _fma(builder, *args)

    return sig, codegen


@intrinsic
def range_lanes(typingctx, x, start, stop, out):
    """Per lane l, the min and max of x[start + l + 8 i] (start <= stop, stop - start a multiple
    of 8) by selects from the lanes of x[start:start + 8] (of equal values the first seen stays;
    a NaN never enters), into out[0:8] and out[8:16]; out[16:24] is 1 in lane l if one of its
    values is NaN, else 0. One pass of <8 x float> compares and selects."""
    if not (_f32_c(x) and _f32_c(out) and start == types.intp and stop == types.intp):
        return None
    sig = types.void(x, start, stop, out)

    def codegen(context, builder, sig, args):
        xa, oa = _arrays(context, builder, sig, args, 0, 3)
        _, t0, t1, _ = args
        first = _load_vec(builder, xa.data, t0)
        lo, hi = cgutils.alloca_once_value(builder, first), cgutils.alloca_once_value(builder, first)
        bad = cgutils.alloca_once_value(builder, ir.Constant(ir.VectorType(ir.IntType(1), VEC), [0] * VEC))
        with cgutils.for_range_slice(builder, t0, t1, _I64(VEC)) as (t, _):
            v = _load_vec(builder, xa.data, t)
            lv, hv = builder.load(lo), builder.load(hi)
            builder.store(builder.select(builder.fcmp_ordered("<", v, lv), v, lv), lo)
            builder.store(builder.select(builder.fcmp_ordered(">", v, hv), v, hv), hi)
            builder.store(builder.or_(builder.load(bad), builder.fcmp_unordered("uno", v, v)), bad)
        flags = builder.uitofp(builder.load(bad), _V8)
        for i, v in enumerate((builder.load(lo), builder.load(hi), flags)):
            builder.store(v, _vec_ptr(builder, oa.data, _I64(i * VEC)), align=4)
        return context.get_dummy_value()

    return sig, codegen


CLAMP_IMAGES = 8  # images per call of `clamp_moment_rows`
# float32's largest value, act 3's clamp: from its bits (a decimal literal or a conversion rounds in the
# process's rounding mode at import, and the kernels' cache would keep what it gave)
FLOAT32_MAX = struct.unpack("<f", struct.pack("<I", 0x7F7FFFFF))[0]


@intrinsic
def clamp_moment_rows(typingctx, x, out, n, e0, k, top, shift, mean, m2, xl, xh):
    """For i = 0 .. k - 1 (k a multiple of 16), 16 at a time, over images n .. n + 7 of x (N, E):
    out[n + r, e0 + i] = x[n + r, e0 + i] clamped to [0, top] (v <= 0: +0.0, then v > top: top;
    a NaN stays); xl[i] and xh[i] replaced by x's value where it is below (above) them, image
    after image; mean[i] and m2[i] by Welford's update with each clamped value in float64, in
    image order: d = v - shift[i], delta = d - mean, mean += delta * (1 / (n + r + 1)), m2 +=
    delta * (d - mean). Each lane the scalar operations (`moments._clamp_welford_range`) in
    their order. out may be x itself (every value is read before its clamp is stored)."""
    arrays = _f32_c(x, 2) and _f32_c(out, 2) and _f32_c(xl) and _f32_c(xh) and all(map(_f64_c, (shift, mean, m2)))
    if not (arrays and n == types.intp and e0 == types.intp and k == types.intp and top == types.float32):
        return None
    sig = types.void(x, out, n, e0, k, top, shift, mean, m2, xl, xh)

    def codegen(context, builder, sig, args):
        xa, oa, sa, ma, qa, la, ha = _arrays(context, builder, sig, args, 0, 1, 6, 7, 8, 9, 10)
        n, e0, k, top = args[2:6]
        width = cgutils.unpack_tuple(builder, xa.shape, 2)[1]
        zero, tops = _splat(builder, _F32(0.0), _V16), _splat(builder, top, _V16)
        rows = [builder.add(builder.mul(builder.add(n, _I64(r)), width), e0) for r in range(CLAMP_IMAGES)]
        invs = [
            _splat(builder, builder.fdiv(_F64(1.0), builder.sitofp(builder.add(n, _I64(r + 1)), _F64)), _D16)
            for r in range(CLAMP_IMAGES)
        ]
        with cgutils.for_range_slice(builder, _I64(0), k, _I64(DVEC)) as (i, _):
            lo, hi = (_load_vec(builder, a.data, i, _V16) for a in (la, ha))
            s, mu, q = (builder.load(_vec_ptr(builder, a.data, i, _D16), align=8) for a in (sa, ma, qa))
            values = [_load_vec(builder, xa.data, builder.add(row, i), _V16) for row in rows]
            for row, v, inv in zip(rows, values, invs, strict=True):
                lo = builder.select(builder.fcmp_ordered("<", v, lo), v, lo)
                hi = builder.select(builder.fcmp_ordered(">", v, hi), v, hi)
                c = builder.select(builder.fcmp_ordered("<=", v, zero), zero, v)
                c = builder.select(builder.fcmp_ordered(">", c, tops), tops, c)
                builder.store(c, _vec_ptr(builder, oa.data, builder.add(row, i), _V16), align=4)
                d = builder.fsub(builder.fpext(c, _D16), s)
                delta = builder.fsub(d, mu)
                mu = builder.fadd(mu, builder.fmul(delta, inv))
                q = builder.fadd(q, builder.fmul(delta, builder.fsub(d, mu)))
            for a, v in ((la, lo), (ha, hi)):
                builder.store(v, _vec_ptr(builder, a.data, i, _V16), align=4)
            for a, v in ((ma, mu), (qa, q)):
                builder.store(v, _vec_ptr(builder, a.data, i, _D16), align=8)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def prefetch_write(typingctx, arr, index):
    """A hint: the line of arr[index] (float32, flat) is about to be written (llvm.prefetch, rw 1,
    locality 3). Changes no value."""
    if not (_f32_c(arr) and isinstance(index, types.Integer)):
        return None
    sig = types.none(arr, index)

    def codegen(context, builder, sig, args):
        (a,) = _arrays(context, builder, sig, args, 0)
        i = context.cast(builder, args[1], sig.args[1], types.intp)
        ptr = builder.bitcast(builder.gep(a.data, [i]), _I8.as_pointer())
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [_I8.as_pointer(), _I32, _I32, _I32]), "llvm.prefetch.p0"
        )
        builder.call(fn, [ptr, _I32(1), _I32(3), _I32(1)])
        return context.get_dummy_value()

    return sig, codegen
