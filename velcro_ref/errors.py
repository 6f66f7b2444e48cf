"""The project's error types: every problem with user input is a VelcroError."""


class VelcroError(Exception):
    """Bad input from the user: a file, a flag or an array. The CLI prints it as one line, exit 1."""

    exit_code = 1


class ModelError(VelcroError):
    """A model file or graph is invalid."""


class UnsupportedOpError(ModelError):
    """The graph or ONNX file uses an op the engine does not implement."""


class InputError(VelcroError):
    """An input array or image set does not fit the model."""


class StatsError(VelcroError):
    """A statistics file is invalid or belongs to another model."""


class MaskError(VelcroError):
    """A mask file is invalid or belongs to another model."""


class DataError(VelcroError):
    """A data set is missing or malformed."""


class ArchError(VelcroError):
    """An accelerator description is invalid."""


class UsageError(VelcroError):
    """A command-line argument is invalid (exit 2, like argparse)."""

    exit_code = 2


class UnknownPresetError(ArchError, UsageError):
    """An accelerator name that names no preset: a usage error (exit 2), caught as an ArchError too."""


class AccumulatorOverflowError(ModelError):
    """An int8 layer whose int32 accumulator could overflow for some input."""


class ClusterError(VelcroError):
    """A Dask cluster cannot be reached or lost the work (docs/distributed.md)."""
