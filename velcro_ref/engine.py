"""The only graph walk: dense, instrumented (observer) and masked (VELCRO) inference.

The model's plan (velcro_ref/plan.py) holds every node ready to run; the engine walks it, calling
each op's `run` from the registry (velcro_ref/ops). Kernels never see a node.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import itertools
import operator
import os
import threading
import weakref
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from . import graph as G
from .errors import InputError, MaskError, UsageError
from .fpenv import default_env
from .kernels.conv.layouts import aligned_floats
from .kernels.jit import check_compiled
from .kernels.moments import value_range
from .kernels.overwrite import put_at
from .masks import MaskSet, check_bool_bytes
from .model_io import load_graph
from .plan import build_plan
from .quant import dequantize_linear, quantize_linear
from .threads import check_not_forked, run_threads

# Shared-buffer plans a Model keeps (`_shared_buffers`): a dense and a profiling run taking turns.
# Each holds its buffers (ResNet-18 224x224 at batch 256: 1.15 GB), so only a few.
SHARED_PLANS = 2

# A run without observer on more images than `Model.sub_batch` runs them in sub-batches of about
# that many, one after another (`Model._run_split`): an image's outputs do not depend on the other
# images of its batch, so the bits are those of one run, and each tensor of a sub-batch stays in
# the caches between the node that writes it and the ones that read it. sub_batch is what keeps
# the model's largest tensor within SUB_BATCH_BYTES, at most SUB_BATCH_MAX (docs/design.md,
# "Sub-batches"; measured in docs/kernels.md).
SUB_BATCH_BYTES = 16 << 20
SUB_BATCH_MAX = 64


@dataclass(frozen=True)
class _MaskPlan:
    """A MaskSet as a run uses it: the set, its site names and arrays (to know it again), node
    -> skip (what its op's `plan_skip` made of the site's mask), masked site -> flat mask, and
    node -> (flat indices, values) its buffer holds for the whole plan: 0 at a chain node's
    skipped outputs, the constants at a site's masked elements."""

    masks: object
    names: tuple
    arrays: list
    marks: tuple  # `_mark` of each array when the plan was made
    skips: dict
    site_masks: dict
    fixed: dict


# The arrays Models made read-only for their mask plans, by id: (a weak reference to the array,
# the count of freezes when it was last made read-only). A plan is kept only while each of its
# arrays has the stamp it had then: an array made writeable, edited and frozen again by another
# Model's run (which works its own plan out anew) is then seen by this Model too.
_FROZEN: dict = {}
_FREEZES = itertools.count(1)


def _stamp_frozen(a) -> None:
    """Record that a Model has just made `a` read-only."""
    key = id(a)
    _FROZEN[key] = (weakref.ref(a, lambda _, k=key: _FROZEN.pop(k, None)), next(_FREEZES))


def _thaw(arrays) -> None:
    """Make the arrays a run froze writeable again (each owns its memory: `_own`)."""
    for a in arrays:
        a.flags.writeable = True


def _own(a) -> bool:
    """Whether `a` owns its memory. A plan is kept only for arrays that do: a view may be written
    through its base, or another view, and its base made writeable and frozen again elsewhere,
    without a sign on the view itself."""
    return isinstance(a, np.ndarray) and a.base is None


def _stamp(a) -> int:
    """The freeze count when a Model last made `a` read-only, 0 if none has."""
    entry = _FROZEN.get(id(a))
    return entry[1] if entry is not None and entry[0]() is a else 0


def _mark(a) -> tuple:
    """What a kept plan needs unchanged in `a`: its `_stamp` and how its memory is read (NumPy lets
    a read-only array's dtype and strides be set in place)."""
    return _stamp(a), a.dtype, a.shape, a.strides, a.__array_interface__["data"][0]


_MODELS = weakref.WeakSet()  # every Model of this process, for `_fresh_locks`


def _fresh_locks():
    """In a forked child, a lock for each model: a thread of the parent may have held one at the
    fork, and the child has no such thread to release it (its runs waited for ever)."""
    for model in list(_MODELS):
        model.run_lock = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_fresh_locks)


class Model:
    """A validated model ready to run: `graph` as stored, `plan` as it runs (velcro_ref/plan.py)."""

    @default_env()
    def __init__(self, graph: G.Graph, path=None, *, _own: bool = False):
        check_compiled()
        self.path = path
        self.shapes = G.validate(graph, allow_nonfinite=True)  # first: its one-line errors name the node
        self.graph = graph if _own else _snapshot(graph)  # `_own`: nobody else holds the graph (load_model)
        self.fingerprint = self.graph.fingerprint()
        self.plan = build_plan(self.graph, self.shapes)
        self.steps = self.plan.nodes
        self.sites = dict(self.plan.sites)
        self.chains = self.plan.chains
        self.output = self.plan.output
        self.last_macs: dict[str, int] = {}
        self._buffers: dict = {}
        self._masks: _MaskPlan | None = None
        self._fixed: dict = {}  # node -> the mask plan whose `fixed` values its buffer holds
        self._col = aligned_floats(0)  # kernels' scratch, sized for the batch by `_scratch`
        self._col_images = 0
        self.fuse = True  # run the plan's fusions where a run allows (`_fusions`); False: every node apart
        self._fused = None  # (mask plan or None, fusions made, nodes they compute) of the last run
        self._shared = {}  # (fused, observed, over_input, images) -> (views, concats left out): SHARED_PLANS
        self.run_lock = threading.RLock()  # one run at a time: runs share the buffers above
        _MODELS.add(self)
        tensors = [(self.plan.shapes[st.name], st.dtype) for st in self.steps] + [(self.input_shape, np.float32)]
        per_image = max(int(np.prod(shape)) * np.dtype(dtype).itemsize for shape, dtype in tensors)
        self.sub_batch = max(1, min(SUB_BATCH_MAX, SUB_BATCH_BYTES // max(1, per_image)))

    @property
    def sub_batch(self) -> int:
        """Images per sub-batch of a run without observer (SUB_BATCH_BYTES); a user may set it (a
        positive int)."""
        return self._sub_batch

    @sub_batch.setter
    def sub_batch(self, n) -> None:
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
            raise UsageError(f"sub_batch: expects a positive number of images, found {n!r}")
        self._sub_batch = int(n)

    @property
    def input_shape(self) -> tuple:
        return tuple(self.graph.input_shape)

    @property
    def where(self) -> str:
        """A message's prefix naming the model's file, "" for a model made in memory."""
        return f"{self.path}: " if self.path else ""

    @property
    def meta(self) -> dict:
        return self.graph.meta

    def layer_macs(self) -> dict[str, int]:
        """Dense MACs per image of every node on a producer chain's skip list (conv2d, linear)."""
        return {st.name: st.macs for st in self.steps if st.opdef.chain == "skip"}

    def site_costs(self) -> dict[str, int]:
        """Site -> MACs per image that masking one of its elements skips (its whole chain)."""
        per_element = {st.name: st.macs // int(np.prod(st.out_shape)) for st in self.steps if st.opdef.chain == "skip"}
        return {site: sum(per_element[c] for c in chain) for site, chain in self.chains.items()}

    def check_input(self, x) -> np.ndarray:
        """x as a native float32 array; InputError unless x is a finite float32 (N, *input_shape) array."""
        if not isinstance(x, np.ndarray):
            raise InputError(f"input: expects a numpy array, found {type(x).__name__}")
        want = self.input_shape
        if x.ndim != len(want) + 1 or tuple(x.shape[1:]) != want:
            raise InputError(f"input: expects shape (N, {', '.join(map(str, want))}), found {tuple(x.shape)}")
        if not x.dtype.isnative and x.dtype.newbyteorder("=") == np.float32:  # from a machine of the other byte order
            x = x.astype(np.float32)
        if x.dtype != np.float32:
            raise InputError(f"input: expects dtype float32, found {x.dtype}")
        if x.shape[0] == 0:
            raise InputError("input: the batch is empty")
        x = np.ascontiguousarray(x)
        lo, hi = value_range(x)  # one pass, NaN if x holds one (a batch of 224x224 images is cold here)
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise InputError(f"input: {int(np.count_nonzero(~np.isfinite(x)))} NaN/Inf value(s) of {x.size}")
        return x

    def _scratch(self, n_n):
        """The kernels' scratch (ops with `scratch_floats`), large enough for a batch of n_n images."""
        if n_n != self._col_images:
            sizes = (st.opdef.scratch_floats(st.args, n_n) for st in self.steps if hasattr(st.opdef, "scratch_floats"))
            need = max(sizes, default=0)
            if need > self._col.size:
                self._col = aligned_floats(need)
            self._col_images = n_n
        return self._col

    def _buffer(self, name, shape, dtype):
        """Tensor `name`'s own buffer of that shape and dtype, made again when either changes."""
        buf = self._buffers.get(name)
        if buf is None or buf.shape != shape or buf.dtype != dtype:
            buf = np.empty(shape, dtype)
            self._buffers[name] = buf
            self._fixed.pop(name, None)
        return buf

    def _shared_buffers(self, fused, absorbed, room, observed=False, over=frozenset()) -> tuple[dict, frozenset]:
        """(step index -> the array, a view of a shared buffer, an unmasked run on room images
        (or on their first ones) writes that step's output into; the concat steps it leaves out). The tensors share
        a few buffers: a tensor's goes to the next one written after the last step that reads it
        (the one freed last first), so that the caches still hold it. One buffer per tensor, as
        masked runs keep them, wrote MobileNet-V2's 27 MB a run at batch 1 to memory
        the caches had let go. On one image, the steps a concat alone reads write straight into
        its channels (`_placed`), and the concat is not run, unless the run is observed (the
        observer sees every node). A site in `over` (an observer's run_site computes it over its
        input) and that input share one buffer, sized and named after the site: the input's step
        writes into it, and the site over it (`_written_over`). Worked out once for the convs
        fused, the observer's kind and sites, and the room, the buffers on cache lines; the
        last SHARED_PLANS such plans are kept, each with its buffers (dense and profiling runs
        taking turns in one process find their buffers again: with one plan, ResNet-18 224x224's
        fresh pages cost 40 - 50 ms a dense and a profiling run of 16 images at batch 8)."""
        key = (tuple(fused), observed, over, room)  # the fusions follow from the convs fused (`_fusions`)
        if key in self._shared:
            self._shared[key] = self._shared.pop(key)  # the last used last
        else:
            steps = [(i, st) for i, st in enumerate(self.steps) if st.name not in absorbed]
            written = {i: st.name if st.name not in fused else fused[st.name].output for i, st in steps}
            placed = self._placed(steps, written) if room == 1 and not observed else {}
            joins = frozenset(i for i, st in steps if st.name in placed.values())
            home = {**placed, **self._written_over(steps, written, over)}  # tensor -> the buffer it is written into
            reads = {i: _reads(st, fused.get(st.name)) for i, st in steps}
            last = {t: i for i, _ in steps for t in reads[i]}  # tensor -> the step that reads it last
            slot_of, outs, sizes, free = {}, {}, [], []  # free: slots, the last freed last
            for i, st in steps:
                name = home.get(written[i], written[i])
                if name not in slot_of:
                    shape, dtype = (room, *self.plan.shapes[name]), np.dtype(st.dtype)
                    slot = free.pop() if free else len(sizes)
                    if slot == len(sizes):
                        sizes.append(0)
                    sizes[slot] = max(sizes[slot], int(np.prod(shape)) * dtype.itemsize)
                    slot_of[name], outs[name] = slot, (slot, shape, dtype)
                free.extend(slot_of[t] for t in reads[i] if last[t] == i and t in slot_of and t != self.output)
            buffers = [aligned_floats(-(-n // 4)).view(np.uint8) for n in sizes]  # on cache lines
            whole = {
                name: buffers[slot][: int(np.prod(shape)) * dtype.itemsize].view(dtype).reshape(shape)
                for name, (slot, shape, dtype) in outs.items()
            }
            views = {}
            for i, t in written.items():
                if t in placed:  # its channels of the concat's buffer (contiguous: one image)
                    concat = self.plan.node(placed[t])
                    c0 = sum(self.plan.shapes[u][0] for u in concat.inputs[: concat.inputs.index(t)])
                    views[i] = whole[placed[t]][:, c0 : c0 + self.plan.shapes[t][0]]
                else:
                    views[i] = whole[home.get(t, t)]
            while len(self._shared) >= SHARED_PLANS:
                del self._shared[next(iter(self._shared))]
            self._shared[key] = (views, joins)
        return self._shared[key]

    def _placed(self, steps, written) -> dict:
        """Tensor -> the concat whose channels it is written into: every input of a float concat
        when each is written by a step of the run (not by a concat so left out itself) and read
        by that concat alone, once (`plan.readers` lists a reader at each of its inputs), which
        leaves out the graph output too."""
        by_tensor = {t: self.steps[i].name for i, t in written.items()}
        placed = {}
        for _, st in steps:
            if st.op == "concat" and all(
                by_tensor.get(t) not in (None, *placed.values()) and self.plan.readers[t] == [st.name]
                for t in st.inputs
            ):
                placed.update((t, st.name) for t in st.inputs)
        return placed

    def _over_into(self, steps, written, over) -> dict:
        """Tensor -> the site in `over` written over it: the input of each such site that a step
        of the run writes, of the site's shape and dtype, and that the site alone reads
        (`plan.overwritable`)."""
        dtypes = {written[i]: st.dtype for i, st in steps}
        into = {}
        for _, st in steps:
            t = st.inputs[0] if st.name in over else None
            if (
                t in dtypes
                and self.plan.overwritable(t, st.name)
                and (self.plan.shapes[t], dtypes[t]) == (self.plan.shapes[st.name], st.dtype)
            ):
                into[t] = st.name
        return into

    @functools.cached_property
    def _overwritable(self) -> frozenset:
        """The sites an observer may compute over their input on shared buffers (`_over_into` of
        an observed run, which fuses nothing): the observer's `over_input` is cut to these, so
        that observers listing the same usable sites share one plan (`_shared_buffers`)."""
        steps = list(enumerate(self.steps))
        return frozenset(self._over_into(steps, {i: st.name for i, st in steps}, set(self.sites)).values())

    def _written_over(self, steps, written, over) -> dict:
        """Tensor -> the site in `over` whose buffer it is written into (`_over_into`), followed
        along sites written over sites to the last."""
        into = self._over_into(steps, written, over)
        home = {}
        for t in into:
            s = into[t]
            while s in into:
                s = into[s]
            home[t] = s
        return home

    def site_skips(self, masks) -> dict[str, np.ndarray]:
        """Node name -> bool skip array for every node on a masked site's producer chain."""
        skips = {}
        for site, (mask, _) in masks.sites.items():
            if mask.any():
                for node in self.chains[site]:
                    skips[node] = mask
        return skips

    def _mask_plan(self, masks) -> _MaskPlan:
        """What a run needs from `masks`, worked out at the first run with them and kept while the
        same MaskSet comes back with the same sites holding the same array objects, each still
        read-only and read as it was (`_mark`). Where every array owns its memory (`_own`), the
        run makes them read-only, so writing into them raises instead of leaving a stale plan;
        one made writeable again (and perhaps edited) makes the next run of this and of every
        other Model work the plan out anew. A MaskSet holding a view is left as it came, and each
        run works its plan out. Not seen: an array made read-only again by hand after it was
        writeable, and a write through a view of it taken while it was writeable (replace the
        arrays instead)."""
        self.check_masks(masks)
        names, arrays = tuple(masks.sites), [a for pair in masks.sites.values() for a in pair]
        plan = self._masks
        if (
            plan is not None
            and plan.masks is masks
            and plan.names == names
            and all(map(operator.is_, plan.arrays, arrays))
            and not any(a.flags.writeable for a in arrays)  # made writeable again: maybe edited
            and tuple(map(_mark, arrays)) == plan.marks  # frozen again since by another Model's run, or recast
        ):
            return plan
        self._masks = None  # first: an interrupt below leaves no plan to trust
        keep = all(map(_own, arrays))
        frozen = [a for a in arrays if a.flags.writeable] if keep else []
        try:  # an interrupt between freezing an array and stamping it must not leave it frozen unstamped
            for a in frozen:
                a.flags.writeable = False
                _stamp_frozen(a)
            plan = self._new_mask_plan(masks, names, arrays, tuple(map(_mark, arrays)))
        except BaseException:
            _thaw(frozen)  # refused or interrupted: left as they came
            raise
        if keep:
            self._masks = plan
        return plan

    def _new_mask_plan(self, masks, names, arrays, marks) -> _MaskPlan:
        """`_mask_plan`'s plan of masks, worked out."""
        steps = {st.name: st for st in self.steps}
        skips = {}
        for node, mask in self.site_skips(masks).items():
            skips[node] = steps[node].opdef.plan_skip(steps[node].args, mask)
        site_masks, fixed = {}, {}
        for s, (m, c) in masks.sites.items():
            check_bool_bytes(m, f"{masks.source}: site '{s}': ")  # as written to a golden file
            idx = np.flatnonzero(m)
            if idx.size:
                site_masks[s] = np.ascontiguousarray(m).reshape(-1)
                with np.errstate(over="ignore"):  # float64 constants beyond float32: refused below
                    values = np.ascontiguousarray(c, np.float32).reshape(-1)[idx]
                if not np.isfinite(values).all():  # as a mask file's are checked (masks.load_masks)
                    bad = int(np.count_nonzero(~np.isfinite(values)))
                    raise MaskError(f"{masks.source}: site '{s}': {bad} constant(s) at masked elements are NaN or Inf")
                q = steps[s].q
                if q is not None:  # a quantized site holds its constants quantized with its own parameters
                    values = quantize_linear(values, q.scale, q.zero_point, q.dtype)
                fixed[s] = (idx, values)
                for node in self.chains[s]:  # skipped chain outputs read as zero
                    zq = steps[node].q
                    zero = np.zeros(idx.size, steps[node].dtype) + (0 if zq is None else zq.zero_point)
                    fixed[node] = (idx, zero.astype(steps[node].dtype))
        return _MaskPlan(masks, names, arrays, marks, skips, site_masks, fixed)

    def _fusions(self, mp) -> tuple[dict, frozenset]:
        """The plan's fusions a run without observer makes (conv -> plan.Fusion) and the nodes
        they compute. With a mask plan, a conv on a masked site's chain runs fused only when it
        writes that site itself: the site's buffer holds the constants at the outputs it skips
        (a fused add's output would be left unwritten there)."""
        if self._fused is None or self._fused[0] is not mp:
            made = {
                conv: f
                for conv, f in self.plan.fusions.items()
                if mp is None or conv not in mp.skips or f.output in mp.site_masks
            }
            self._fused = (mp, made, frozenset(a for f in made.values() for a in f.absorbed))
        return self._fused[1], self._fused[2]

    def run(self, x, masks=None, observer=None) -> np.ndarray:
        """Run a batch x (N, C, H, W) float32; return the output (N, ...) float32 (a new array).

        masks: a MaskSet of this model (velcro_ref.load_masks) or None for dense inference. Its
        mask and constant arrays become read-only at the first run where each owns its memory
        (see `_mask_plan`).
        observer: object with on_site(name, y) called with every activation site's output
        (N, C, H, W), after masked elements are overwritten; y is only valid during the call.
        An observer whose `keeps_arrays` is false keeps no array it is handed past the call:
        an unmasked run then writes its tensors into shared buffers, as a run without observer
        does, and writes a site listed in the observer's `over_input` (computed by its run_site
        over its input) into the buffer of that input.
        An observer may also define on_node(step, inputs, output, skip) to see every node. It
        must not write into the arrays it is given: skipped conv outputs are zeroed, and masked
        site elements set to their constants, once per MaskSet and trusted to stay so.
        An observer may also define run_site(step, x, out), called in place of running an
        unmasked site's op (x its input, out its output buffer): it may compute the site's output
        itself, observing it in the same pass, into out, or over x where
        `plan.overwritable(step.inputs[0], step.name)` (x is then the site's output, and on_node
        sees it as input and output), and return the array it wrote (then on_site is not called
        for that site; on_node is), or return None, leaving it to the engine. In a masked run it is
        not called for a site whose input holds what the masks fix (a masked site's constants, a
        skipped conv's zeros): the engine runs that site and calls on_site. On shared buffers
        it may write over x only at the sites in its `over_input`, where x is out (one buffer:
        out written is x written); any other array returned ends the run with RuntimeError.
        What it writes must be the op's bits (`stats.StatsCollector` computes relu / relu6
        sites so).
        After the run, `last_macs` maps every conv2d/linear node to the MACs its kernel executed.
        Without an observer (and with `fuse` true), a conv runs with the add and relu/relu6 after
        it in its epilogue where the plan allows (`plan.Fusion`): the same bits, the conv's and
        the add's outputs not written, and its tensors share a few buffers (`_shared_buffers`;
        on one image a concat's inputs are written into its channels and the concat not run).
        The thread pools are set for the run by `threads.run_threads` (observers run under it),
        and NumPy's floating-point errors are ignored (`np.errstate(all="ignore")`, observers too):
        float32 arithmetic as IEEE 754 gives it, an overflow inf, with no warning or exception
        whatever `np.seterr` says outside the run. Runs on one Model from several Python threads
        take turns (they share its buffers); Models of their own run side by side. `last_macs` is
        then the last run's, whichever thread ran it: `run_counted` returns a run's own.
        Without an observer, a batch of more than `sub_batch` images runs in sub-batches, one after
        another (`_run_split`): the same bits and MACs, its tensors kept in the caches.
        Raises InputError for a bad input and MaskError for masks of another model.
        """
        return self.run_counted(x, masks, observer)[0]

    def run_counted(self, x, masks=None, observer=None) -> tuple[np.ndarray, dict[str, int]]:
        """`run`, and the MACs each conv2d/linear node executed in this run (`last_macs` as this
        run left it, taken before another thread's run can replace it)."""
        with default_env():  # the masks' constants are quantized before the run, in it too
            check_not_forked()  # before the lock, which a thread of the parent may have held at the fork
            x = self.check_input(x)
            with self.run_lock:
                return self._run_checked(x, masks, observer), dict(self.last_macs)

    def _run_checked(self, x, masks, observer):
        mp = None if masks is None else self._mask_plan(masks)
        # float32 arithmetic as IEEE 754 defines it: an overflow gives inf, inf - inf NaN, with no NumPy
        # warning from the ops that NumPy computes (a batch norm, an add); the Numba kernels warn of none
        with run_threads(), np.errstate(all="ignore"):
            if observer is None and x.shape[0] > self.sub_batch:
                return self._run_split(x, mp)
            return self._run(x, mp, observer, x.shape[0])

    def _run_split(self, x, mp):
        """`_run` of x in sub-batches of at most `sub_batch` images, of sizes that differ by one at
        most, the larger ones first; the buffers are made for the first and the others use their
        first images. Returns the output of every image; `last_macs` sums the sub-batches'."""
        n_n = x.shape[0]
        k = -(-n_n // self.sub_batch)
        size, extra = divmod(n_n, k)  # the first `extra` sub-batches take size + 1 images
        room = size + (extra > 0)
        y, macs, i0, before = None, {}, 0, self.last_macs
        try:
            for j in range(k):
                m = size + (j < extra)
                part = self._run(x[i0 : i0 + m], mp, None, room)
                if y is None:
                    y = np.empty((n_n, *part.shape[1:]), part.dtype)
                y[i0 : i0 + m] = part
                for name, v in self.last_macs.items():
                    macs[name] = macs.get(name, 0) + v
                i0 += m
        except BaseException:  # a sub-batch's MACs are no run's: the last whole run's stay
            self.last_macs = before
            raise
        self.last_macs = macs
        return y

    def _run(self, x, mp, observer, room):
        """One run of the images x (at most room of them: the buffers are made for room images and
        the run uses their first ones)."""
        n_n = x.shape[0]
        col = self._scratch(n_n)
        env = {G.INPUT: x}
        macs = {}
        fused, absorbed = self._fusions(mp) if observer is None and self.fuse else ({}, frozenset())
        run_site = getattr(observer, "run_site", None)
        # tensors whose buffers hold values the mask plan writes once (constants, skipped zeros): no
        # run_site is handed one as its input, which it might write over
        kept = {} if mp is None else mp.fixed
        observed = observer is not None
        sharing = mp is None and not (observed and getattr(observer, "keeps_arrays", True))
        over = frozenset(getattr(observer, "over_input", ())) if sharing and run_site is not None else frozenset()
        over &= self._overwritable
        shared, joins = self._shared_buffers(fused, absorbed, room, observed, over) if sharing else (None, ())
        if shared is not None and n_n < room:  # a later, smaller sub-batch: no observer, no buffer shared by two names
            shared = {i: v[:n_n] for i, v in shared.items()}
        for i, st in enumerate(self.steps):
            if st.name in absorbed:
                continue
            if i in joins:  # its inputs were written into its channels
                env[st.name] = shared[i]
                continue
            f = fused.get(st.name)
            name = st.name if f is None else f.output  # the buffer written: a fused conv's last node's
            skip = None if mp is None else mp.skips.get(st.name)
            out = shared[i] if shared is not None else self._out(name, room, st.dtype, mp)[:n_n]
            if f is not None:  # act(conv + bias (+ residual)) into the last node's buffer
                res = None if f.residual is None else env[f.residual]
                macs[st.name] = int(
                    st.opdef.run_fused([env[t] for t in st.inputs], st.args, skip, out, col, res, f.act_op)
                )
                env[name] = out
                continue
            mask = None if mp is None else mp.site_masks.get(st.name)
            taken = False  # the observer computed this site itself (`run_site`)
            if mask is not None:  # a masked site: its activation at the unmasked elements only
                st.opdef.unmasked(env[st.inputs[0]].reshape(n_n, -1), mask, out.reshape(n_n, -1), st.args)
            elif (
                st.opdef.site
                and run_site is not None
                and st.inputs[0] not in kept
                and (y := run_site(st, env[st.inputs[0]], out)) is not None
            ):
                over_x = shared is None and y is env[st.inputs[0]] and self.plan.overwritable(st.inputs[0], st.name)
                if y is not out and not over_x:  # on shared buffers: over x only where planned (x is out)
                    raise RuntimeError(f"observer's run_site wrote site '{st.name}' into an array it may not use")
                out, taken = y, True
            else:
                for t in st.inputs:
                    if env[t] is out:  # a site planned over its input that run_site left to the engine
                        env[t] = out.copy()
                n_macs = st.opdef.run([env[t] for t in st.inputs], st.args, skip, out, col)
                if st.opdef.chain == "skip":
                    macs[st.name] = int(n_macs)
            if observer is not None:
                if st.opdef.site and not taken:  # a quantized site is seen as its real values
                    observer.on_site(
                        st.name, out if st.q is None else dequantize_linear(out, st.q.scale, st.q.zero_point)
                    )
                if hasattr(observer, "on_node"):
                    observer.on_node(st, [env[t] for t in st.inputs], out, getattr(skip, "skip", skip))
            env[st.name] = out
        self.last_macs = macs
        return env[self.output].copy()

    def _out(self, name, room, dtype, mp):
        """The buffer tensor `name` is written into where the run shares none (`_shared_buffers`):
        the tensor's own (`_buffer`) for room images, which holds the constants of a mask plan's
        `fixed` values, in all of them, while runs with that plan follow one another."""
        shape = (room, *self.plan.shapes[name])
        out = self._buffer(name, shape, dtype)
        fixed = None if mp is None else mp.fixed.get(name)
        if fixed is None:
            self._fixed.pop(name, None)
        elif self._fixed.get(name) is not mp:
            # skipped conv outputs read 0, masked site elements their constants; no kernel
            # changes them (an activation's `unmasked` leaves them as they are), so they stay
            # for later runs with the same mask plan
            put_at(out.reshape(shape[0], -1), *fixed)
            self._fixed[name] = mp
        return out

    def check_masks(self, masks) -> None:
        """Raise MaskError unless `masks` was made for this model and fits its sites (UsageError for
        an object that is no MaskSet)."""
        if not isinstance(masks, MaskSet):
            raise UsageError(
                f"masks expect a MaskSet (load_masks, compress or MaskSet(...)), found {type(masks).__name__}"
            )
        if not isinstance(masks.sites, Mapping):
            raise MaskError(
                f"{masks.source}: sites expect a dict of site -> (mask, constants), found {type(masks.sites).__name__}"
            )
        for site, pair in masks.sites.items():
            if not isinstance(pair, tuple | list) or len(pair) != 2:
                raise MaskError(f"{masks.source}: site '{site}' expects a (mask, constants) pair")
        if masks.fingerprint != self.fingerprint:
            raise MaskError(
                f"{masks.source}: masks were made for model {masks.fingerprint}, "
                f"this model ({self.path or 'made in memory'}) is {self.fingerprint}"
            )
        missing = sorted(set(self.sites) - set(masks.sites))
        if masks.complete and missing:
            raise MaskError(
                f"{masks.source}: no masks for site(s) {', '.join(missing)} (a mask file lists every site; "
                "save masks made by hand with save_masks(masks, path, model=model))"
            )
        for site, (mask, const) in masks.sites.items():
            if site in self.plan.dead:
                raise MaskError(
                    f"{masks.source}: site '{site}' is on a dead branch of this model (not on the path to the "
                    "output, never run); leave it out"
                )
            if site not in self.sites:
                raise MaskError(f"{masks.source}: site '{site}' is not an activation site of this model")
            if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_:  # 0/1 integers: ~1 is not False
                found = mask.dtype if isinstance(mask, np.ndarray) else type(mask).__name__
                raise MaskError(f"{masks.source}: site '{site}': mask expects a bool array, found {found}")
            if not isinstance(const, np.ndarray) or const.dtype.kind != "f":
                found = const.dtype if isinstance(const, np.ndarray) else type(const).__name__
                raise MaskError(f"{masks.source}: site '{site}': constants expect a float array, found {found}")
            if mask.shape != self.sites[site] or const.shape != self.sites[site]:
                raise MaskError(
                    f"{masks.source}: site '{site}' expects shape {self.sites[site]}, "
                    f"found mask {mask.shape} and constants {const.shape}"
                )


def _reads(step, fusion) -> tuple:
    """The tensors a step reads: its inputs and, fused, the residual its add takes (once each)."""
    extra = () if fusion is None or fusion.residual is None else (fusion.residual,)
    return tuple(dict.fromkeys((*step.inputs, *extra)))


def load_model(path, allow_nonfinite: bool = False) -> Model:
    """Load, validate and prepare an HDF5 model. Raises ModelError naming the file and node."""
    graph = load_graph(path, allow_nonfinite=allow_nonfinite)  # refuses a path that is none
    return Model(graph, path=os.fspath(path), _own=True)  # the arrays just read: no copy needed


def _snapshot(graph: G.Graph) -> G.Graph:
    """The graph with copies of its parameters, input shape, nodes' inputs, attributes and parameter
    names and its metadata: a Model runs, fingerprints, quantizes and writes golden files from the graph it was made
    with, whatever becomes of the caller's arrays and dicts. (Its own, `Model.graph.params`, are the
    ones its kernels read: not to be edited. Read-only arrays would be another type to the kernels.)"""
    params = {k: np.array(v) for k, v in graph.params.items()}
    nodes = tuple(
        dataclasses.replace(n, inputs=tuple(n.inputs), attrs=copy.deepcopy(n.attrs), params=dict(n.params))
        for n in graph.nodes
    )
    return G.Graph(nodes, tuple(graph.input_shape), graph.output, params, copy.deepcopy(graph.meta))
