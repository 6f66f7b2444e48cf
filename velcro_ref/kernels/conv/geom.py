"""A convolution's geometry as one record, built once when a model loads."""

from __future__ import annotations

from typing import NamedTuple

from ..simd import VEC

# Filters with fewer taps than this (depthwise 3x3: 9; a 1x1 conv on 16 to 48 channels) sum them
# in one chain; every other conv in CHAINS chains (docs/kernels.md, "Order of summation"). With
# few taps, combining CHAINS chain sums would cost about as much as the taps themselves.
FEW_TAPS = 64


class ConvGeom(NamedTuple):
    """Geometry of a conv on one image: input (c_in, h, w), k_out filters of (c_in / groups, kh,
    kw), strides (sh, sw), pads (top pt, left pl, bottom pb, right pr), dilations (dh, dw) and the
    output (k_out, oh, ow). Numba takes it as a tuple of ints; kernels read it by field name."""

    c_in: int
    h: int
    w: int
    k_out: int
    kh: int
    kw: int
    sh: int
    sw: int
    pt: int
    pl: int
    pb: int
    pr: int
    dh: int
    dw: int
    groups: int
    oh: int
    ow: int


def conv_geom(c_in, h, w, k_out, kernel, stride=(1, 1), pads=(0, 0, 0, 0), dilation=(1, 1), groups=1) -> ConvGeom:
    """The ConvGeom of a conv; oh and ow follow PyTorch's floor rule."""
    (kh, kw), (sh, sw), (dh, dw), (pt, pl, pb, pr) = kernel, stride, dilation, pads
    oh = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
    ow = (w + pl + pr - dw * (kw - 1) - 1) // sw + 1
    fields = (c_in, h, w, k_out, kh, kw, sh, sw, pt, pl, pb, pr, dh, dw, groups, oh, ow)
    return ConvGeom(*(int(v) for v in fields))


def group_taps(g: ConvGeom) -> int:
    """Taps of one filter: (c_in / groups) * kh * kw, the MACs of one output element."""
    return g.c_in // g.groups * g.kh * g.kw


def subsampled(g: ConvGeom) -> ConvGeom:
    """A 1x1 conv with strides and no padding is the conv of stride 1 on every sh-th row and
    sw-th column of its input (rows and columns 0, sh, 2 sh, ...): the geometry of that conv, g
    itself for any other conv."""
    if g.kh == g.kw == 1 and (g.sh > 1 or g.sw > 1) and g.pt == g.pl == 0:
        return g._replace(h=g.oh, w=g.ow, sh=1, sw=1, pb=0, pr=0)
    return g


def one_chain(g: ConvGeom) -> bool:
    """Whether the conv's filters sum their taps in one chain (fewer than FEW_TAPS taps)."""
    return group_taps(g) < FEW_TAPS


def in_place(g: ConvGeom) -> bool:
    """Whether the masked sampled kernels read a conv's taps from the padded channels-last input:
    every tap's C/groups channels, or every whole filter row (KW adjacent pixels, all C
    channels), must be a whole number of VEC-float vectors starting at a multiple of VEC taps.
    Other convs read im2col rows, image by image."""
    cg = g.c_in // g.groups
    return cg % VEC == 0 or (g.groups == 1 and g.dw == 1 and g.kw * cg % VEC == 0)
