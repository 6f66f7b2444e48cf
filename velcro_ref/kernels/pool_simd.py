"""SIMD blocks of the float max pool (`kernels/pool.py`), Numba intrinsics written in LLVM IR.

An output is its window's taps folded by one rule, `_keep_max`: a tap v replaces the running
value m where v > m or v is NaN. A NaN therefore wins (of several, the last one folded), and of
equal values (-0.0 and +0.0) the first folded stays. The order: each window column's taps over
the window rows in increasing order (a column's maximum), then those column maxima in
increasing column order. A tap outside the input is -inf, which the rule never takes where
m was set, so padding leaves every result as the taps inside give it.

Outputs lie in the lanes of vectors of PW floats: 16 where the CPU's vectors are that wide
(AVX-512), else 8 (`<8 x float>`); each output's fold is the same either way. A block is the
column maxima of PW consecutive input columns; the PW outputs of a step read a few consecutive
blocks, and tap fx of them is
those blocks shifted by fx lanes (stride 1) or their even or odd lanes shifted by fx // 2
(stride 2). The blocks a step shares with the next are kept, not computed again.

- `max_row`: one output row, stride 1 (kw <= PW + 1) or 2 (kw <= 2 PW + 1), blocks along the input row.
- `max_plane`: a whole plane at stride 1 when output rows are as wide as the input's (a same
  padding, GoogLeNet's 3x3 pad 1 pools): its positions are one flat run, a block's lanes may
  cross a row's end, and a tap whose column leaves its output's row is -inf.

The common windows (3x3 and 2x2) are compiled unrolled, the others with loops. The intrinsics
read raw data: their typing accepts only C-contiguous float32 arrays and intp tuples, and they
trust the geometry they are given.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .simd import VEC, _arrays, _f32_c, _int_tuple, _vec_ptr, wide_vectors

# Outputs per step, the lanes of a vector: 16 where vectors are 16 floats wide (AVX-512), else 8.
PW = 2 * VEC if wide_vectors() else VEC
ROW_KW = (PW + 1, 2 * PW + 1)  # widest window `max_row` takes at stride 1, 2
PLANE_KW = PW + 1  # widest window `max_plane` takes

# Unrolled forms: (kh, kw, pl) of `max_plane`, (window rows, kw, sw) of `max_row`.
_PLANE_FORMS = ((3, 3, 1), (3, 3, 0), (2, 2, 0), (2, 2, 1))
_ROW_FORMS = ((3, 3, 2), (2, 2, 2), (3, 3, 1), (2, 3, 2))

_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_VP = ir.VectorType(ir.FloatType(), PW)
_VPI = ir.VectorType(_I32, PW)
_MASK = ir.VectorType(ir.IntType(1), PW)
_NEG = ir.Constant(_VP, [float("-inf")] * PW)
_LANES = ir.Constant(_VPI, list(range(PW)))


def _splat_i32(builder, value):
    one = builder.insert_element(ir.Constant(_VPI, ir.Undefined), builder.trunc(value, _I32), _I32(0))
    return builder.shuffle_vector(one, ir.Constant(_VPI, ir.Undefined), ir.Constant(_VPI, [0] * PW))


def _i32s(k):
    return ir.Constant(_VPI, [k] * PW)


def _int(value):
    """value as an i64 IR value (a Python int becomes a constant)."""
    return _I64(value) if isinstance(value, int) else value


def _keep_max(builder, v, m):
    """v where v > m or v is NaN, else m."""
    take = builder.or_(builder.fcmp_ordered(">", v, m), builder.fcmp_unordered("uno", v, v))
    return builder.select(take, v, m)


def _between(builder, idx, lo, hi):
    """Lanes of the i32 vector idx with lo <= idx < hi (lo, hi i32 vectors)."""
    return builder.and_(builder.icmp_signed(">=", idx, lo), builder.icmp_signed("<", idx, hi))


def _masked_load(builder, base, index, mask):
    """base[index + l] in lanes l of mask, -inf in the others (which are not read)."""
    ptr = _vec_ptr(builder, base, index, _VP)
    fnty = ir.FunctionType(_VP, [ptr.type, _I32, _MASK, _VP])
    fn = cgutils.get_or_insert_function(builder.module, fnty, f"llvm.masked.load.v{PW}f32.p0")
    # the -inf goes in with a select: AVX2's masked load fills zeros, LLVM would add one per load anyway
    return builder.select(mask, builder.call(fn, [ptr, _I32(4), mask, ir.Constant(_VP, [0.0] * PW)]), _NEG)


def _store_first(builder, v, base, index, count, room):
    """base[index + l] = v[l] for the lanes l < count, as one vector store when index + PW <= room
    (floats from count on are overwritten), else float by float (masked stores are slow on the
    AMD CPUs before Zen 4)."""
    with builder.if_else(builder.icmp_signed("<=", builder.add(index, _I64(PW)), room)) as (whole, part):
        with whole:
            builder.store(v, _vec_ptr(builder, base, index, _VP), align=4)
        with part:
            for lane in range(PW):
                with builder.if_then(builder.icmp_signed(">", count, _I64(lane))):
                    ptr = builder.gep(base, [builder.add(index, _I64(lane))])
                    builder.store(builder.extract_element(v, _I32(lane)), ptr)


def _shuffle(builder, a, b, lanes):
    return builder.shuffle_vector(a, b, ir.Constant(_VPI, list(lanes)))


def _each(builder, start, stop, body):
    """body(r) for r in start .. stop - 1 (an i64 value): unrolled when stop is a Python int."""
    if isinstance(stop, int):
        for r in range(start, stop):
            body(_I64(r))
        return
    with cgutils.for_range_slice(builder, _I64(start), stop, _I64(1)) as (r, _):
        body(r)


def _first_of(builder, cases, default):
    """The body of the first case (condition, body) whose condition holds, else default()."""
    if not cases:
        default()
        return
    (cond, body), rest = cases[0], cases[1:]
    with builder.if_else(cond) as (yes, no):
        with yes:
            body()
        with no:
            _first_of(builder, rest, default)


class _Blocks:
    """Column maxima of PW consecutive input columns: block at index c (of xbase) is, per lane l,
    the fold of xbase[c + r * w + l] over the rows r < n_rows. `inside(c)` says whether every lane
    of every row lies in the input (plain loads), `valid(c, at)` which lanes of the row at index
    at do (the others are -inf)."""

    def __init__(self, builder, xbase, w, n_rows, inside, valid):
        self.builder, self.xbase, self.w, self.n_rows = builder, xbase, w, n_rows
        self.inside, self.valid = inside, valid
        self.acc = cgutils.alloca_once_value(builder, _NEG)

    def at(self, c):
        b, acc = self.builder, self.acc
        with b.if_else(self.inside(c)) as (whole, part):
            with whole:
                b.store(b.load(_vec_ptr(b, self.xbase, c, _VP), align=4), acc)

                def row(r):
                    v = b.load(_vec_ptr(b, self.xbase, b.add(c, b.mul(r, self.w)), _VP), align=4)
                    b.store(_keep_max(b, v, b.load(acc)), acc)

                _each(b, 1, self.n_rows, row)
            with part:
                b.store(_NEG, acc)

                def masked_row(r):
                    at = b.add(c, b.mul(r, self.w))
                    b.store(_keep_max(b, _masked_load(b, self.xbase, at, self.valid(c, at)), b.load(acc)), acc)

                _each(b, 0, self.n_rows, masked_row)
        return b.load(acc)


def _steps(builder, blocks, first, count, sw, kw, kw_max, tap_ok, store):
    """The outputs 0 .. count - 1, PW a step: step o's blocks start at index first + o * sw, tap fx
    of its lane l reads column fx + sw * l of them; the taps folded in increasing fx; tap_ok(fx)
    (or None) the lanes where tap fx is inside the input; store(o, v) stores the step's outputs.
    sw is 1 or 2; kw an int (unrolled) or an IR value below kw_max."""
    b = builder
    span = sw * (PW - 1) + (kw if isinstance(kw, int) else kw_max)  # columns a step reads
    n_blocks = -(-span // PW)
    kept = [cgutils.alloca_once_value(b, _NEG) for _ in range(max(n_blocks - sw, 0))]
    for j, slot in enumerate(kept):
        b.store(blocks.at(b.add(first, _I64(j * PW))), slot)
    res = cgutils.alloca_once_value(b, _NEG)
    with cgutils.for_range_slice(b, _I64(0), count, _I64(PW)) as (o, _):
        c0 = b.add(first, b.mul(o, _I64(sw)))
        blk = [b.load(slot) for slot in kept]
        blk += [blocks.at(b.add(c0, _I64(j * PW))) for j in range(len(kept), n_blocks)]
        blk += [_NEG] * (2 * sw - n_blocks)
        # per phase p (column parity at stride 2), two vectors of the columns p, p + sw, ...
        if sw == 1:
            phases = [(blk[0], blk[1])]
        else:
            even, odd = range(0, 2 * PW, 2), range(1, 2 * PW, 2)
            phases = [(_shuffle(b, blk[0], blk[1], lanes), _shuffle(b, blk[2], blk[3], lanes)) for lanes in (even, odd)]
        for fx in range(kw if isinstance(kw, int) else kw_max):
            lo, hi = phases[fx % sw]
            shift = fx // sw
            v = lo if shift == 0 else _shuffle(b, lo, hi, range(shift, shift + PW))
            if tap_ok is not None:
                ok = tap_ok(fx)
                if ok is not None:
                    v = b.select(ok, v, _NEG)
            if fx == 0:
                b.store(v, res)
            elif isinstance(kw, int):
                b.store(_keep_max(b, v, b.load(res)), res)
            else:
                with b.if_then(b.icmp_signed("<", _I64(fx), kw)):
                    b.store(_keep_max(b, v, b.load(res)), res)
        store(o, b.load(res))
        for j, slot in enumerate(kept):
            b.store(blk[j + sw], slot)


def _pool_sig(x, out, at, geom, n_geom):
    """The signature of `max_row` / `max_plane` (x, out float32 flat; at 3 ints; geom n_geom
    ints), or None for other types."""
    if not (_f32_c(x) and _f32_c(out) and _int_tuple(at, 3) and _int_tuple(geom, n_geom)):
        return None
    return types.void(x, out, at, geom)


def _pool_args(context, b, sig, args):
    """(pointer to x[xa], pointer to out[oa], room, geom's values) of a `_pool_sig` call."""
    arr_x, arr_o = _arrays(context, b, sig, args, 0, 1)
    xa, oa, room = cgutils.unpack_tuple(b, args[2])
    return b.gep(arr_x.data, [xa]), b.gep(arr_o.data, [oa]), room, cgutils.unpack_tuple(b, args[3])


@intrinsic
def max_row(typingctx, x, out, at, geom):
    """One output row: out[oa + ox] for ox < ow is the fold over fx < kw (increasing) of the
    fold over rows r < n_rows (increasing) of x[xa + r * w + col0 + ox * sw + fx], a column
    outside 0 .. w - 1 -inf. at = (xa, oa, room): the floats out[oa + ow .. oa + room - 1] may
    be overwritten (a later row's, stored after); geom = (w, n_rows, col0, sw, kw, ow): n_rows >=
    1, sw 1 with kw <= PW + 1 or sw 2 with kw <= 2 PW + 1 (`ROW_KW`)."""
    sig = _pool_sig(x, out, at, geom, 6)
    if sig is None:
        return None

    def codegen(context, builder, sig, args):
        b = builder
        xbase, obase, room, (w, n_rows, col0, sw, kw, ow) = _pool_args(context, b, sig, args)
        w32 = _splat_i32(b, w)

        def inside(c):
            return b.and_(b.icmp_signed(">=", c, _I64(0)), b.icmp_signed("<=", b.add(c, _I64(PW)), w))

        def valid(c, _at):
            return _between(b, b.add(_splat_i32(b, c), _LANES), _i32s(0), w32)

        def store(o, v):
            _store_first(b, v, obase, o, b.sub(ow, o), room)

        def body(rows, kw_s, sw_s):
            blocks = _Blocks(b, xbase, w, n_rows if rows is None else rows, inside, valid)
            _steps(b, blocks, col0, ow, sw_s, kw if kw_s is None else kw_s, ROW_KW[sw_s - 1], None, store)

        def form(rows, kw_s, sw_s):
            cond = b.and_(b.icmp_signed("==", n_rows, _I64(rows)), b.icmp_signed("==", kw, _I64(kw_s)))
            return b.and_(cond, b.icmp_signed("==", sw, _I64(sw_s)))

        cases = [(form(*f), lambda f=f: body(*f)) for f in _ROW_FORMS]
        cases.append((b.icmp_signed("==", sw, _I64(1)), lambda: body(None, None, 1)))
        _first_of(b, cases, lambda: body(None, None, 2))
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def max_plane(typingctx, x, out, at, geom):
    """A stride-1 max pool of one plane whose output rows are as wide as its input rows: out[oa +
    oy * w + ox] for oy < oh, ox < w is the fold over fx < kw (increasing) of the fold over ky <
    kh (increasing) of x[xa + (oy - pt + ky) * w + ox - pl + fx], a tap outside the h x w input
    -inf. at = (xa, oa, room): the floats out[oa + oh * w .. oa + room - 1] may be overwritten (a
    later plane's); geom = (h, w, oh, kh, kw, pt, pl): kw <= PW + 1 (`PLANE_KW`)."""
    sig = _pool_sig(x, out, at, geom, 7)
    if sig is None:
        return None

    def codegen(context, builder, sig, args):
        b = builder
        xbase, obase, room, (h, w, oh, kh, kw, pt, pl) = _pool_args(context, b, sig, args)
        n_in, n_out = b.mul(h, w), b.mul(oh, w)
        n32, w32 = _splat_i32(b, n_in), _splat_i32(b, w)
        # the lanes' output columns, (o + l) mod w at step o, advanced by PW mod w a step
        cols = cgutils.alloca_once_value(b, b.srem(_LANES, w32))
        advance = _splat_i32(b, b.srem(_I64(PW), w))

        def valid(_c, at):
            return _between(b, b.add(_splat_i32(b, at), _LANES), _i32s(0), n32)

        def store(o, v):
            _store_first(b, v, obase, o, b.sub(n_out, o), room)
            nxt = b.add(b.load(cols), advance)
            b.store(b.select(b.icmp_signed(">=", nxt, w32), b.sub(nxt, w32), nxt), cols)

        def body(kh_s, kw_s, pl_s):
            rows = kh if kh_s is None else kh_s
            span = b.mul(b.sub(_int(rows), _I64(1)), w)

            def inside(c):
                return b.and_(
                    b.icmp_signed(">=", c, _I64(0)), b.icmp_signed("<=", b.add(b.add(c, span), _I64(PW)), n_in)
                )

            def tap_ok(fx):
                """Lanes whose tap fx lies in their output's row: 0 <= col + fx - pl < w."""
                if pl_s is not None and fx == pl_s:
                    return None
                shift = _splat_i32(b, b.sub(_I64(fx), _int(pl if pl_s is None else pl_s)))
                col = b.add(b.load(cols), shift)
                return _between(b, col, _i32s(0), w32)

            blocks = _Blocks(b, xbase, w, rows, inside, valid)
            first = b.sub(b.mul(b.sub(_I64(0), pt), w), _int(pl if pl_s is None else pl_s))
            _steps(b, blocks, first, n_out, 1, kw if kw_s is None else kw_s, PLANE_KW, tap_ok, store)

        def form(kh_s, kw_s, pl_s):
            cond = b.and_(b.icmp_signed("==", kh, _I64(kh_s)), b.icmp_signed("==", kw, _I64(kw_s)))
            return b.and_(cond, b.icmp_signed("==", pl, _I64(pl_s)))

        _first_of(b, [(form(*f), lambda f=f: body(*f)) for f in _PLANE_FORMS], lambda: body(None, None, None))
        return context.get_dummy_value()

    return sig, codegen
