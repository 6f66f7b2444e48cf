"""Convolution kernels: one entry (`conv2d`), the geometry record, weights prepared at load and
the mask schedule. docs/kernels.md describes the paths, layouts and order of summation."""

from .dispatch import ACT_NONE, ACT_RELU, ACT_RELU6, ACT_RELU_MAX, Epilogue, conv2d, scratch_floats
from .geom import ConvGeom, conv_geom
from .prepare import ConvWeights, prepare_conv
from .schedule import SkipPlan, plan_skip

__all__ = [
    "ACT_NONE",
    "ACT_RELU",
    "ACT_RELU6",
    "ACT_RELU_MAX",
    "ConvGeom",
    "ConvWeights",
    "Epilogue",
    "SkipPlan",
    "conv2d",
    "conv_geom",
    "plan_skip",
    "prepare_conv",
    "scratch_floats",
]
