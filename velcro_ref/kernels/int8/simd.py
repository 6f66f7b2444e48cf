"""The int8 conv micro-kernel as a Numba intrinsic written in LLVM IR.

Exact integer products of int8 data fit in int16 x int16 -> int32 multiplies whose adjacent
pairs are summed (x86's vpmaddwd, which LLVM selects for the pattern below). AVX2 without VNNI
has no exact 8-bit dot product (vpmaddubsw saturates pairs at int16, which is why onnxruntime
can differ there), so the data are widened to int16 with the zero point subtracted. Integer sums
are exact in any order: the kernel is free to vectorise.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

# Output channels per tile (two vectors of 8 int32) and output positions per tile.
TILE_K = 16
TILE_P = 4


@intrinsic
def fma32(typingctx, x, y, z):
    """float32 x * y + z rounded once (LLVM's llvm.fma: a fused multiply-add, never split)."""
    if not all(t == types.float32 for t in (x, y, z)):
        return None
    sig = types.float32(types.float32, types.float32, types.float32)

    def codegen(context, builder, sig, args):
        f32 = ir.FloatType()
        fn = builder.module.declare_intrinsic("llvm.fma", [f32], ir.FunctionType(f32, [f32, f32, f32]))
        return builder.call(fn, args)

    return sig, codegen


def _i16_c(t):
    return isinstance(t, types.Array) and t.dtype == types.int16 and t.layout == "C" and t.ndim == 1


def _i32_c(t):
    return isinstance(t, types.Array) and t.dtype == types.int32 and t.layout == "C" and t.ndim == 1


def _int_tuple(t, n):
    return isinstance(t, types.UniTuple) and t.dtype == types.intp and t.count == n


def _lanes(indices):
    i32 = ir.IntType(32)
    return ir.Constant(ir.VectorType(i32, len(indices)), [i32(i) for i in indices])


def _pmadd(builder, a, b):
    """<16 x i16> a, b -> <8 x i32>: lane i = a[2i] * b[2i] + a[2i+1] * b[2i+1] (exact)."""
    v32 = ir.VectorType(ir.IntType(32), 16)
    m = builder.mul(builder.sext(a, v32), builder.sext(b, v32))
    even = builder.shuffle_vector(m, m, _lanes(range(0, 16, 2)))
    odd = builder.shuffle_vector(m, m, _lanes(range(1, 16, 2)))
    return builder.add(even, odd)


@intrinsic
def conv_tile(typingctx, w, w0, x, offs, geom, acc):
    """TILE_P output positions x TILE_K output channels of a conv, int32 sums written to acc.

    w: packed filters (int16, C-contiguous 1-D): for channel pair cp of tap t = (fy * kw + fx),
    the TILE_K channels' two taps interleaved, 2 * TILE_K values at w0 + (t * cpairs + cp) *
    2 * TILE_K. x: the padded channels-last input (int16, zero point subtracted); offs: the
    offset of tap (0, 0), channel 0 of each position; geom = (kh, step_y, kw, step_x, cpairs):
    tap (fy, fx) of a position lies fy * step_y + fx * step_x further, channel pair cp at 2 * cp.
    acc[p * TILE_K + k] = sum over taps and channels of x * w for position p, channel k.
    Indices are trusted (no checks).
    """
    if not (_i16_c(w) and _i16_c(x) and _i32_c(acc) and _int_tuple(offs, TILE_P) and _int_tuple(geom, 5)):
        return None
    if not isinstance(w0, types.Integer):
        return None
    sig = types.none(w, w0, x, offs, geom, acc)

    def codegen(context, builder, sig, args):
        i16, i32, i64 = ir.IntType(16), ir.IntType(32), ir.IntType(64)
        v16 = ir.VectorType(i16, 16)
        v8 = ir.VectorType(i32, 8)
        arr_w = context.make_array(sig.args[0])(context, builder, args[0])
        arr_x = context.make_array(sig.args[2])(context, builder, args[2])
        arr_a = context.make_array(sig.args[5])(context, builder, args[5])
        w0 = context.cast(builder, args[1], sig.args[1], types.intp)
        kh, step_y, kw, step_x, cpairs = cgutils.unpack_tuple(builder, args[4])
        offs = cgutils.unpack_tuple(builder, args[3])
        zero = ir.Constant(v8, [0] * 8)
        accs = [[cgutils.alloca_once_value(builder, zero) for _ in range(2)] for _ in range(TILE_P)]
        splat_idx = ir.Constant(ir.VectorType(i32, 8), [0] * 8)
        with cgutils.for_range(builder, kh) as fy:
            with cgutils.for_range(builder, kw) as fx:
                t = builder.add(builder.mul(fy.index, kw), fx.index)
                wt = builder.add(w0, builder.mul(builder.mul(t, cpairs), i64(2 * TILE_K)))
                tap = builder.add(builder.mul(fy.index, step_y), builder.mul(fx.index, step_x))
                bases = [builder.gep(arr_x.data, [builder.add(o, tap)]) for o in offs]
                with cgutils.for_range(builder, cpairs) as cp:
                    wi = builder.add(wt, builder.mul(cp.index, i64(2 * TILE_K)))
                    wptr = builder.gep(arr_w.data, [wi])
                    wv = [
                        builder.load(builder.bitcast(builder.gep(wptr, [i64(16 * h)]), v16.as_pointer()), align=2)
                        for h in range(2)
                    ]
                    c2 = builder.mul(cp.index, i64(2))
                    for p in range(TILE_P):
                        xp = builder.bitcast(builder.gep(bases[p], [c2]), i32.as_pointer())
                        xs = builder.load(xp, align=2)
                        xv = builder.insert_element(ir.Constant(v8, ir.Undefined), xs, i32(0))
                        xv = builder.shuffle_vector(xv, ir.Constant(v8, ir.Undefined), splat_idx)
                        xv = builder.bitcast(xv, v16)
                        for h in range(2):
                            a = accs[p][h]
                            builder.store(builder.add(builder.load(a), _pmadd(builder, xv, wv[h])), a)
        for p in range(TILE_P):
            for h in range(2):
                dst = builder.bitcast(builder.gep(arr_a.data, [i64(p * TILE_K + 8 * h)]), v8.as_pointer())
                builder.store(builder.load(accs[p][h]), dst, align=4)
        return context.get_dummy_value()

    return sig, codegen
