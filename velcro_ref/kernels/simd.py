"""SIMD building blocks of the masked conv kernels, as Numba intrinsics written in LLVM IR.

Numba vectorises a dot product only when fastmath lets LLVM reorder the sum, which STYLE rules
out. These intrinsics write the order down instead, with plain IEEE multiply and add:

- `dot_taps`: a few filter rows against the taps of a few output positions, read where they lie
  (a padded channels-last input, or im2col rows). LANES partial sums per pair (lane l adds the
  elements j = l mod LANES in increasing j), summed as a tree of halves (lane l plus lane
  l + LANES/2, and so on). Each loaded vector feeds every row of the other side, the register
  blocking that makes a GEMM fast; a pair's sum does not depend on the block, call or thread
  that computes it.
- `lanes_conv`: one output position of a few filters for BATCH_LANES images at once, one image
  per lane, the taps summed in (fy, fx, c) order and the bias added last.

Both read raw data: their typing accepts only C-contiguous float32 arrays and intp indices.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

# 16 float32 lanes: one AVX-512 register, two AVX2 registers; LLVM splits it on narrower targets.
LANES = 16


def _lane_indices(indices):
    """A constant lane-index vector for shufflevector."""
    i32 = ir.IntType(32)
    return ir.Constant(ir.VectorType(i32, len(indices)), [i32(i) for i in indices])


def _int_tuple(t):
    return isinstance(t, types.UniTuple) and t.dtype == types.intp


def _f32_c(t, ndim):
    """A C-contiguous float32 array type of ndim dimensions: the IR below indexes raw data."""
    return isinstance(t, types.Array) and t.dtype == types.float32 and t.layout == "C" and t.ndim == ndim


def _zero_accs(builder, vec, n):
    return [cgutils.alloca_once_value(builder, ir.Constant(vec, [0.0] * LANES)) for _ in range(n)]


def _load_vec(builder, vec, base, j):
    return builder.load(builder.bitcast(builder.gep(base, [j]), vec.as_pointer()), align=4)


def _accumulate(builder, vec, accs, pairs, bases_a, bases_b, j):
    """One vector step: every acc of pair (ia, ib) += a[ia][j:] * b[ib][j:], each loaded vector
    feeding every pair it belongs to."""
    va = [_load_vec(builder, vec, base, j) for base in bases_a]
    vb = [_load_vec(builder, vec, base, j) for base in bases_b]
    for acc, (ia, ib) in zip(accs, pairs, strict=True):
        builder.store(builder.fadd(builder.load(acc), builder.fmul(va[ia], vb[ib])), acc)


def _halves(builder, acc):
    """The lanes of a vector accumulator summed as a tree of halves: lane l adds lane l + w/2."""
    v = builder.load(acc)
    width = LANES
    while width > 1:
        width //= 2
        lo = builder.shuffle_vector(v, v, _lane_indices(range(width)))
        v = builder.fadd(lo, builder.shuffle_vector(v, v, _lane_indices(range(width, 2 * width))))
    return builder.extract_element(v, ir.IntType(32)(0))


@intrinsic
def dot_taps(typingctx, a, rows_a, x, offs, geom):
    """(a[i] . taps of x at o for i in rows_a for o in offs), read from the input as it lies.

    a (M, J) C-contiguous float32 filter rows; x a C-contiguous float32 1-D array; offs a tuple
    of ints; geom = (kh, step_y, kw, step_x, seg) with J = kh * kw * seg and seg a multiple of
    LANES. Element j = (fy * kw + fx) * seg + t of the taps at o is x[o + fy * step_y + fx *
    step_x + t]: a padded channels-last image, so no im2col copy; with geom = (1, 0, 1, 0, J),
    rows of a matrix (im2col rows) at offsets o. LANES partial sums per pair (lane l adds the
    elements j = l mod LANES in increasing j), summed as a tree of halves: the same bits for the
    same taps wherever they lie. Kernels trust the indices and geom (no checks).
    """
    if not (_f32_c(a, 2) and _f32_c(x, 1) and _int_tuple(rows_a) and _int_tuple(offs)):
        return None
    if not (_int_tuple(geom) and geom.count == 5):
        return None
    sig = types.UniTuple(types.float32, rows_a.count * offs.count)(a, rows_a, x, offs, geom)

    def codegen(context, builder, sig, args):
        vec = ir.VectorType(ir.FloatType(), LANES)
        arr_a = context.make_array(sig.args[0])(context, builder, args[0])
        arr_x = context.make_array(sig.args[2])(context, builder, args[2])
        n = builder.extract_value(arr_a.shape, 1)
        kh, step_y, kw, step_x, seg = cgutils.unpack_tuple(builder, args[4])
        bases_a = [builder.gep(arr_a.data, [builder.mul(r, n)]) for r in cgutils.unpack_tuple(builder, args[1])]
        offs_x = cgutils.unpack_tuple(builder, args[3])
        pairs = [(ia, ib) for ia in range(len(bases_a)) for ib in range(len(offs_x))]
        accs = _zero_accs(builder, vec, len(pairs))
        with cgutils.for_range(builder, kh) as fy:
            with cgutils.for_range(builder, kw) as fx:
                tap = builder.add(builder.mul(fy.index, step_y), builder.mul(fx.index, step_x))
                bases_x = [builder.gep(arr_x.data, [builder.add(o, tap)]) for o in offs_x]
                j0 = builder.mul(builder.add(builder.mul(fy.index, kw), fx.index), seg)
                bases_j = [builder.gep(base, [j0]) for base in bases_a]
                with cgutils.for_range_slice(builder, n.type(0), seg, n.type(LANES)) as (t, _):
                    _accumulate(builder, vec, accs, pairs, bases_j, bases_x, t)
        return context.make_tuple(builder, sig.return_type, [_halves(builder, acc) for acc in accs])

    return sig, codegen


# Images per lane block of `lanes_conv`: four AVX-512 registers per output element.
BATCH_LANES = 64


@intrinsic
def lanes_conv(typingctx, w, ks, xb, r0, geom, bias, outb, p):
    """One output position p of the channels ks for BATCH_LANES images at once.

    w (K, J) filters in (fy, fx, c) order; xb (rows, BATCH_LANES) the padded input with row
    (iy*WP + ix)*C + c and the images side by side; r0 the row of tap (0, 0) and the first
    input channel of p; geom = (kh, kw, rows per fy step, rows per fx step, cg); outb (K, P,
    BATCH_LANES). Writes outb[k, p] = sum over (fy, fx, c) in that order of w[k, j] * x, plus
    bias[k]: every image in its own lane, so the sum of an image is the same in any batch.
    """
    arrays_ok = _f32_c(w, 2) and _f32_c(xb, 2) and _f32_c(bias, 1) and _f32_c(outb, 3)
    if not (arrays_ok and _int_tuple(ks) and _int_tuple(geom) and geom.count == 5):
        return None
    if not (isinstance(r0, types.Integer) and isinstance(p, types.Integer)):
        return None
    sig = types.none(w, ks, xb, r0, geom, bias, outb, p)

    def codegen(context, builder, sig, args):
        n_vec = BATCH_LANES // LANES
        f32 = ir.FloatType()
        vec = ir.VectorType(f32, LANES)
        i64 = ir.IntType(64)
        arr_w = context.make_array(sig.args[0])(context, builder, args[0])
        arr_x = context.make_array(sig.args[2])(context, builder, args[2])
        arr_b = context.make_array(sig.args[5])(context, builder, args[5])
        arr_o = context.make_array(sig.args[6])(context, builder, args[6])
        j_n = builder.extract_value(arr_w.shape, 1)
        p_n = builder.extract_value(arr_o.shape, 1)
        kh, kw, dy, dx, cg = cgutils.unpack_tuple(builder, args[4])
        r0 = context.cast(builder, args[3], sig.args[3], types.intp)
        p_out = context.cast(builder, args[7], sig.args[7], types.intp)
        k_list = cgutils.unpack_tuple(builder, args[1])
        w_rows = [builder.gep(arr_w.data, [builder.mul(k, j_n)]) for k in k_list]
        accs = [_zero_accs(builder, vec, n_vec) for _ in k_list]

        def splat(value):
            return builder.shuffle_vector(
                builder.insert_element(ir.Constant(vec, ir.Undefined), value, ir.IntType(32)(0)),
                ir.Constant(vec, ir.Undefined),
                ir.Constant(ir.VectorType(ir.IntType(32), LANES), [0] * LANES),
            )

        def vec_at(base, index):
            return builder.bitcast(builder.gep(base, [index]), vec.as_pointer())

        with cgutils.for_range(builder, kh) as fy:
            with cgutils.for_range(builder, kw) as fx:
                row = builder.add(r0, builder.add(builder.mul(fy.index, dy), builder.mul(fx.index, dx)))
                j0 = builder.mul(builder.add(builder.mul(fy.index, kw), fx.index), cg)
                with cgutils.for_range(builder, cg) as c:
                    x_row = builder.mul(builder.add(row, c.index), i64(BATCH_LANES))
                    xs = [_load_vec(builder, vec, arr_x.data, builder.add(x_row, i64(v * LANES))) for v in range(n_vec)]
                    j = builder.add(j0, c.index)
                    for acc_k, w_row in zip(accs, w_rows, strict=True):
                        wv = splat(builder.load(builder.gep(w_row, [j])))
                        for acc, xv in zip(acc_k, xs, strict=True):
                            builder.store(builder.fadd(builder.load(acc), builder.fmul(wv, xv)), acc)
        for acc_k, k in zip(accs, k_list, strict=True):
            bv = splat(builder.load(builder.gep(arr_b.data, [k])))
            out_row = builder.mul(builder.add(builder.mul(k, p_n), p_out), i64(BATCH_LANES))
            for v, acc in enumerate(acc_k):
                dest = vec_at(arr_o.data, builder.add(out_row, i64(v * LANES)))
                builder.store(builder.fadd(builder.load(acc), bv), dest, align=4)
        return context.get_dummy_value()

    return sig, codegen
