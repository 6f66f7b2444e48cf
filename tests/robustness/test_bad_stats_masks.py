"""Bad stats and mask files, ratios and classes: one line naming the file, the site and what was found."""

import dataclasses
import tracemalloc

import h5py
import numpy as np
import pytest
from robust_util import edited_copy, zoo_graph

from velcro_ref import h5io
from velcro_ref.engine import load_model
from velcro_ref.errors import InputError, MaskError, StatsError, UsageError
from velcro_ref.masks import check_ratio, load_masks
from velcro_ref.model_io import save_model
from velcro_ref.stats import FIELDS, SiteStats, _check_moments, load_stats, save_stats

SITE = "layer2.0.relu1"


@pytest.fixture(scope="module")
def other_model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("other") / "other.h5"
    save_model(zoo_graph("resnet18", input_size=16, width=0.125, num_classes=4, seed=1), path)
    return path


@pytest.fixture(scope="module")
def x_file(tmp_path_factory, images):
    path = tmp_path_factory.mktemp("x") / "x.npy"
    np.save(path, images[0][:3])
    return path


def replace_dataset(path_in_file, make):
    def edit(f):
        old = f[path_in_file][()]
        del f[path_in_file]
        group, name = path_in_file.rsplit("/", 1)
        f[group].create_dataset(name, data=make(old))

    return edit


def copy_site(new_name):
    def edit(f):
        f["sites"].copy(SITE, new_name)
        f[f"sites/{new_name}"].attrs["name"] = new_name

    return edit


def flip_stored_bit(src, dst, path_in_file, bit):
    """Copy `src` to `dst` with one bit flipped in the middle of the stored data of a dataset (its first
    chunk), as a bad disk or transfer would, leaving the HDF5 structure intact."""
    with h5py.File(src, "r") as f:
        ds = f[path_in_file]
        if ds.chunks:
            chunk = ds.id.get_chunk_info(0)
            start, size = chunk.byte_offset, chunk.size
        else:
            start, size = ds.id.get_offset(), ds.id.get_storage_size()
    data = bytearray(src.read_bytes())
    data[start + size // 2] ^= 1 << bit
    dst.write_bytes(data)
    return dst


def set_element(path_in_file, value):
    def edit(f):
        a = f[path_in_file][()]
        a.flat[5] = value
        f[path_in_file][...] = a

    return edit


def move_mean(by):
    """Element 5's mean moved by `by`, shifted_mean and the mean written for other readers alike
    (a file consistent in itself whose mean no values in [min, max] can have)."""

    def edit(f):
        for fld in ("shifted_mean", "mean"):
            a = f[f"sites/{SITE}/{fld}"][()]
            a.flat[5] += by
            f[f"sites/{SITE}/{fld}"][...] = a

    return edit


# ---------------------------------------------------------------- stats files


@pytest.mark.parametrize(
    "edit, needles",
    [
        (set_element(f"sites/{SITE}/shifted_mean", np.nan), [f"site '{SITE}': shifted_mean holds 1 NaN/Inf value(s)"]),
        (set_element(f"sites/{SITE}/mean", np.nan), [f"site '{SITE}': mean differs from shift + shifted_mean"]),
        (set_element(f"sites/{SITE}/m2", np.inf), [f"site '{SITE}': m2 holds 1 NaN/Inf"]),
        (set_element(f"sites/{SITE}/m2", -1.0), [f"site '{SITE}': m2 expects values >= 0"]),
        (set_element(f"sites/{SITE}/count", 3.0), [f"site '{SITE}': count expects 40 (n_images)", "3.0"]),
        (set_element(f"sites/{SITE}/min", 1e30), [f"site '{SITE}': min exceeds max at 1 element(s)"]),
        (move_mean(100.0), [f"site '{SITE}': mean lies outside [min, max] at 1 element(s)"]),
        (set_element(f"sites/{SITE}/m2", 1e9), [f"site '{SITE}': variance exceeds (max - min)^2 / 4", "at 1 element"]),
        (
            replace_dataset(f"sites/{SITE}/shift", lambda a: a.astype(np.float32)),
            [f"site '{SITE}': shift expects dtype float64, found float32"],
        ),
        (
            replace_dataset(f"sites/{SITE}/m2", lambda a: a[:, :1]),
            [f"site '{SITE}': count/shift/shifted_mean/m2/min/max expect one shape", "m2 (16, 1, 2)"],
        ),
        (lambda f: f[f"sites/{SITE}"].__delitem__("max"), [f"site '{SITE}': 'max' is missing"]),
        (lambda f: f.__delitem__("sites"), ["group 'sites' is missing"]),
        (lambda f: f.attrs.__setitem__("format_version", 7), ["format_version 7 is newer than supported"]),
        (lambda f: f.attrs.__setitem__("format", "velcro-masks"), ["format attribute expects 'velcro-stats'"]),
        (lambda f: f.attrs.__setitem__("n_images", 0), ["n_images expects a positive integer, found 0"]),
        (lambda f: f.attrs.__setitem__("classes", '["sandal"]'), ["'classes' expects a list of class numbers"]),
        (lambda f: f.attrs.__setitem__("provenance", "not json"), ["attribute 'provenance' is not valid JSON"]),
        (lambda f: f.attrs.__setitem__("classes", "[5, -1]"), ["'classes' expects a list of class numbers (>= 0)"]),
    ],
    ids=[
        "nan-shifted-mean",
        "mean-disagrees",
        "inf-m2",
        "negative-m2",
        "count-not-n-images",
        "min-above-max",
        "mean-outside-range",
        "variance-above-range",
        "float32-field",
        "fields-of-different-shapes",
        "missing-field",
        "no-sites",
        "newer-version",
        "other-format",
        "no-images",
        "class-names-not-numbers",
        "provenance-not-json",
        "negative-class",
    ],
)
def test_bad_stats_file_is_one_line_naming_the_site(velcro, tmp_path, stats_file, edit, needles):
    bad = edited_copy(stats_file, tmp_path / "bad_stats.h5", edit)
    velcro("compress", bad, "--ratio", "0.3", "-o", tmp_path / "m.h5").error_line(f"error: {bad}: ", *needles)
    assert not (tmp_path / "m.h5").exists()


@pytest.mark.parametrize("field", ["shifted_mean", "m2", "max"])
def test_flipped_bit_in_stats_data_is_found_by_the_checksum(velcro, tmp_path, stats_file, field):
    # the lowest mantissa bit: a value that every other check of the loader would accept
    bad = flip_stored_bit(stats_file, tmp_path / "flipped.h5", f"sites/{SITE}/{field}", bit=0)
    res = velcro("compress", bad, "--ratio", "0.3", "-o", tmp_path / "m.h5")
    res.error_line(f"error: {bad}: site '{SITE}': {field} cannot be read")
    assert not (tmp_path / "m.h5").exists()


def test_stats_files_are_version_3(stats_file):
    with h5py.File(stats_file, "r") as f:
        assert f.attrs["format_version"] == 3
        assert {"shift", "shifted_mean", "mean"} <= set(f[f"sites/{SITE}"])
        assert "input" in f["ranges"]  # version 3: ranges of the tensors that are not sites


@pytest.mark.parametrize(
    "classes, error",
    [((np.float64(5.0),), InputError), ((np.bool_(True),), InputError), ((5, True), InputError), ((-1,), StatsError)],
)
def test_stats_whose_classes_load_stats_refuses_are_not_written(tmp_path, model, stats_file, classes, error):
    stats = dataclasses.replace(load_stats(stats_file, model), classes=classes)
    with pytest.raises(error, match="classes"):
        save_stats(stats, tmp_path / "s.h5")
    assert not (tmp_path / "s.h5").exists()


def test_stats_classes_of_numpy_integers_are_written_as_numbers(tmp_path, model, stats_file):
    stats = dataclasses.replace(load_stats(stats_file, model), classes=(np.int16(7), np.uint8(2)))
    save_stats(stats, tmp_path / "s.h5")
    assert load_stats(tmp_path / "s.h5", model).classes == (7, 2)


def test_version_2_stats_without_ranges_are_read(tmp_path, model, stats_file):
    def to_version_2(f):
        f.attrs["format_version"] = 2
        del f["ranges"]

    old = edited_copy(stats_file, tmp_path / "v2.h5", to_version_2)
    stats = load_stats(old, model)
    assert stats.ranges == {} and set(stats.sites) == set(model.sites)


def test_a_range_with_min_above_max_is_refused(tmp_path, stats_file):
    def swap(f):
        f["ranges/input"][...] = [1.0, -1.0]

    bad = edited_copy(stats_file, tmp_path / "swapped.h5", swap)
    with pytest.raises(StatsError, match="range of tensor 'input'"):
        load_stats(bad)


def test_a_range_stored_twice_is_refused(tmp_path, stats_file):
    """Two datasets of `ranges` naming one tensor: which one a reader kept followed the group's link order
    (`velcro quantize` took either range); refused as a site stored twice is."""

    def twice(f):
        ds = f["ranges"].create_dataset("zz_again", data=np.array([-100.0, 100.0]))
        ds.attrs["name"] = "input"

    bad = edited_copy(stats_file, tmp_path / "twice.h5", twice)
    with pytest.raises(StatsError, match="range of tensor 'input': stored twice"):
        load_stats(bad)


def test_stats_arrays_of_another_byte_order_are_written_as_native_float64(tmp_path, model, stats_file):
    """A Stats made by hand with big-endian arrays (the same values): `save_stats` wrote them as they were,
    and `load_stats` then refused its own file ("count expects dtype float64, found >f8")."""
    stats = load_stats(stats_file, model)
    big = {n: SiteStats(*(getattr(s, f).astype(">f8") for f in FIELDS)) for n, s in stats.sites.items()}
    save_stats(dataclasses.replace(stats, sites=big), tmp_path / "s.h5")
    back = load_stats(tmp_path / "s.h5", model)
    for name, s in stats.sites.items():
        for f in FIELDS:
            assert getattr(back.sites[name], f).dtype == np.float64
            assert np.array_equal(getattr(back.sites[name], f), getattr(s, f))


def test_masks_whose_bool_bytes_are_not_0_or_1_are_refused_before_a_run_or_a_file(tmp_path, model, stats_file):
    """A bool mask viewed from 0/255 bytes ran as the 0/1 mask, but `save_masks` and golden files stored
    its bytes as they were, which `load_masks` then refused: it is refused in one line where it is used."""
    from velcro_ref.api import compress
    from velcro_ref.masks import MaskSet, save_masks

    masks = compress(load_stats(stats_file, model), 0.5)
    mask, const = masks.sites[SITE]
    odd = MaskSet(masks.fingerprint, {**masks.sites, SITE: ((mask.view(np.uint8) * 255).view(bool), const)}, "x")
    with pytest.raises(MaskError, match=f"site '{SITE}': mask holds .* neither 0 nor 1"):
        save_masks(odd, tmp_path / "m.h5", model=model)
    assert not (tmp_path / "m.h5").exists()
    with pytest.raises(MaskError, match=f"site '{SITE}': mask holds .* neither 0 nor 1"):
        model.run(np.zeros((1, *model.input_shape), np.float32), masks=odd)


def test_version_1_stats_are_read_as_mean_with_shift_0(tmp_path, model, stats_file):
    def to_version_1(f):
        f.attrs["format_version"] = 1
        for site in f["sites"].values():
            del site["shift"], site["shifted_mean"]

    old = edited_copy(stats_file, tmp_path / "v1.h5", to_version_1)
    back, now = load_stats(old, model), load_stats(stats_file, model)
    with h5py.File(old, "r") as f:
        for name, s in back.sites.items():
            stored = f[f"sites/{name}"]
            np.testing.assert_array_equal(s.shift, 0.0)
            np.testing.assert_array_equal(s.shifted_mean, stored["mean"][()])
            np.testing.assert_array_equal(s.m2, stored["m2"][()])
            np.testing.assert_array_equal(s.variance, now.sites[name].variance)
    assert (back.n_images, back.classes) == (now.n_images, now.classes)


@pytest.mark.parametrize("x0", [1.738, 5.651548e10, 3e38, -2.5e-30])
def test_moments_of_two_neighbouring_floats_merged_from_raw_means_are_accepted(x0):
    # a version 1 file has no shift: its writer merged batches' raw means by Chan's formula, and
    # means rounded at the values' magnitude put the variance of values one float32 step apart a
    # little above (max - min)^2 / 4; the reader must take it as the profile it is
    rng = np.random.default_rng(1)
    lo = np.float32(x0)
    hi = np.nextafter(lo, np.float32(np.inf))
    n_el, batch, n_n = 512, 6, 24
    y = np.where(rng.permuted(np.tile(np.arange(n_n) % 2, (n_el, 1)), axis=1).T == 1, hi, lo).astype(np.float64)
    count, mean, m2 = np.zeros(n_el), np.zeros(n_el), np.zeros(n_el)
    for i in range(0, n_n, batch):
        part = y[i : i + batch]
        nb, mb = len(part), part.mean(axis=0)
        m2b = ((part - mb) ** 2).sum(axis=0)
        n = count + nb
        delta = mb - mean
        mean, m2 = mean + delta * (nb / n), m2 + m2b + delta * delta * (count * nb / n)
        count = n
    assert np.any(m2 / count > (float(hi) - float(lo)) ** 2 / 4)  # the rounding this is about
    site = SiteStats(count, np.zeros(n_el), mean, m2, y.min(axis=0), y.max(axis=0))
    _check_moments(site, "")


def test_version_1_stats_without_mean_are_refused(velcro, tmp_path, stats_file):
    def edit(f):
        f.attrs["format_version"] = 1
        del f[f"sites/{SITE}/mean"]

    bad = edited_copy(stats_file, tmp_path / "v1.h5", edit)
    velcro("compress", bad, "--ratio", "0.3", "-o", tmp_path / "m.h5").error_line(f"site '{SITE}': 'mean' is missing")


def test_stats_of_another_model_are_refused_naming_both_fingerprints(model, other_model_file, stats_file):
    other = load_model(other_model_file)
    with pytest.raises(StatsError) as e:
        load_stats(stats_file, other)
    msg = str(e.value)
    assert msg.startswith(f"{stats_file}: stats were made for model {model.fingerprint}")
    assert other.fingerprint in msg and str(other_model_file) in msg


def test_resume_from_partial_stats_of_another_model_is_refused(velcro, tmp_path, other_model_file, stats_file):
    out = tmp_path / "s.h5"
    (tmp_path / "s.h5.partial").write_bytes(stats_file.read_bytes())
    x = tmp_path / "x.npz"
    np.savez(x, x=np.zeros((4, 3, 16, 16), np.float32), y=np.zeros(4, np.int64))
    res = velcro("profile", other_model_file, "--images", x, "-o", out, "--resume")
    res.error_line(f"{out}.partial: stats were made for model", str(other_model_file))
    assert not out.exists()


@pytest.mark.parametrize(
    "edit, needles",
    [
        (lambda f: f["sites"].__delitem__(SITE), [f"no statistics for site(s) {SITE} of the model"]),
        (copy_site("zz"), ["site(s) zz are not activation sites of the model"]),
        (
            lambda f: [replace_dataset(f"sites/{SITE}/{k}", lambda a: a[:8])(f) for k in f[f"sites/{SITE}"]],
            [f"site '{SITE}' expects shape (16, 2, 2), found (8, 2, 2)"],
        ),
    ],
    ids=["missing-site", "extra-site", "wrong-shape"],
)  # fmt: skip
def test_stats_that_do_not_fit_the_model_are_refused(tmp_path, model, stats_file, edit, needles):
    bad = edited_copy(stats_file, tmp_path / "bad_stats.h5", edit)
    with pytest.raises(StatsError) as e:
        load_stats(bad, model)
    for needle in [str(bad), *needles]:
        assert needle in str(e.value)


def test_huge_declared_stats_field_is_refused_before_allocation(tmp_path, monkeypatch, stats_file):
    monkeypatch.setattr(h5io, "ISOLATE", False)  # measure the loader here, not in a child process

    def edit(f):
        for k in ("count", "mean", "m2", "min", "max"):
            del f[f"sites/{SITE}/{k}"]
            f[f"sites/{SITE}"].create_dataset(k, shape=(10**5, 10**5), dtype=np.float64)

    bad = edited_copy(stats_file, tmp_path / "huge.h5", edit)
    tracemalloc.start()
    try:
        with pytest.raises(StatsError, match=r"count shape \(100000, 100000\) exceeds"):
            load_stats(bad)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20


# ---------------------------------------------------------------- mask files


@pytest.mark.parametrize(
    "edit, needles",
    [
        (
            replace_dataset(f"sites/{SITE}/mask", lambda a: a.astype(np.uint8)),
            [f"site '{SITE}': mask expects dtype bool, found uint8"],
        ),
        (
            replace_dataset(f"sites/{SITE}/constants", lambda a: a.astype(np.float64)),
            [f"site '{SITE}': constants expect float32, found float64"],
        ),
        (
            replace_dataset(f"sites/{SITE}/mask", lambda a: a[:, :1]),
            [f"site '{SITE}': mask (16, 1, 2) and constants (16, 2, 2) differ in shape"],
        ),
        (
            lambda f: f[f"sites/{SITE}/constants"].__setitem__(Ellipsis, np.float32(np.nan)),
            [f"site '{SITE}': ", "NaN/Inf constant(s) at masked elements"],
        ),
        (lambda f: f["sites"].__delitem__(SITE), [f"no masks for site(s) {SITE}"]),
        (copy_site("zz"), ["site 'zz' is not an activation site of this model"]),
        (
            lambda f: [replace_dataset(f"sites/{SITE}/{k}", lambda a: a[:8]) (f) for k in ("mask", "constants")],
            [f"site '{SITE}' expects shape (16, 2, 2), found mask (8, 2, 2)"],
        ),
        (lambda f: f.attrs.__setitem__("policy", '{"name": "uniform", "ratio": 1.5}'), ["policy ratio", "1.5"]),
        (lambda f: f.attrs.__setitem__("format_version", 2), ["format_version 2 is newer than supported"]),
        (lambda f: f.attrs.__setitem__("fingerprint", "0" * 64), ["masks were made for model 0000"]),
        (lambda f: f[f"sites/{SITE}"].attrs.__setitem__("name", "relu"), ["site 'relu' is stored twice"]),
    ],
    ids=[
        "non-boolean-mask",
        "float64-constants",
        "mask-and-constants-differ",
        "nan-constants",
        "missing-site",
        "extra-site",
        "wrong-shape",
        "ratio-outside-unit-interval",
        "newer-version",
        "another-model",
        "site-stored-twice",
    ],
)  # fmt: skip
def test_bad_mask_file_is_one_line_naming_the_site(velcro, tmp_path, model_file, mask_file, x_file, edit, needles):
    bad = edited_copy(mask_file, tmp_path / "bad_masks.h5", edit)
    velcro("infer", model_file, "--input", x_file, "--masks", bad).error_line(f"error: {bad}: ", *needles)


def test_nan_constants_at_unmasked_elements_are_harmless(velcro, tmp_path, model_file, mask_file, x_file):
    def edit(f):
        m = f[f"sites/{SITE}/mask"][()]
        c = f[f"sites/{SITE}/constants"][()]
        c[~m] = np.nan
        f[f"sites/{SITE}/constants"][...] = c

    ok = edited_copy(mask_file, tmp_path / "ok.h5", edit)
    res = velcro("infer", model_file, "--input", x_file, "--masks", ok, "-o", tmp_path / "y.npy")
    assert res.code == 0, res.err
    assert np.all(np.isfinite(np.load(tmp_path / "y.npy")))


def test_load_masks_with_a_model_checks_fit(tmp_path, model, other_model_file, mask_file):
    assert load_masks(mask_file, model).fingerprint == model.fingerprint
    with pytest.raises(MaskError, match="masks were made for model"):
        load_masks(mask_file, load_model(other_model_file))


def test_a_model_made_in_memory_is_named_so_where_masks_or_stats_are_not_its_own(model, mask_file):
    """The messages read "this model (None) is ..." for a model with no file."""
    from velcro_ref.engine import Model
    from velcro_ref.stats import check_stats, collect_stats

    key, value = next(iter(model.graph.params.items()))
    other = Model(dataclasses.replace(model.graph, params={**model.graph.params, key: value + 1}))
    with pytest.raises(MaskError, match=r"this model \(made in memory\) is [0-9a-f]{64}$"):
        other.check_masks(load_masks(mask_file))
    stats = collect_stats(model, np.zeros((1, *model.input_shape), np.float32))
    with pytest.raises(StatsError, match=r"this model \(made in memory\) is [0-9a-f]{64}$"):
        check_stats(stats, other)


@pytest.mark.parametrize("dataset", ["mask", "constants"])
def test_flipped_bit_in_mask_data_is_found_by_the_checksum(velcro, tmp_path, model_file, mask_file, x_file, dataset):
    # bit 0 of a mask byte turns a kept element into a masked one (or back): a valid mask, but not this one
    bad = flip_stored_bit(mask_file, tmp_path / "flipped.h5", f"sites/{SITE}/{dataset}", bit=0)
    res = velcro("infer", model_file, "--input", x_file, "--masks", bad)
    res.error_line(f"error: {bad}: site '{SITE}': {dataset} cannot be read")


def test_eval_refuses_a_bad_mask_file_before_the_dense_pass(
    velcro, tmp_path, monkeypatch, model_file, images_file, mask_file
):
    from velcro_ref import evaluation

    def no_pass(*args, **kwargs):
        raise AssertionError("an image was evaluated before the mask file was checked")

    monkeypatch.setattr(evaluation, "evaluate", no_pass)
    bad = edited_copy(mask_file, tmp_path / "bad_masks.h5", lambda f: f.attrs.__setitem__("fingerprint", "0" * 64))
    res = velcro("eval", model_file, "--images", images_file, "--masks", bad)
    res.error_line(f"error: {bad}: masks were made for model 0000")


def test_huge_declared_mask_is_refused_before_allocation(tmp_path, monkeypatch, mask_file):
    monkeypatch.setattr(h5io, "ISOLATE", False)  # measure the loader here, not in a child process

    def edit(f):
        for k, dtype in (("mask", bool), ("constants", np.float32)):
            del f[f"sites/{SITE}/{k}"]
            f[f"sites/{SITE}"].create_dataset(k, shape=(10**6, 10**6), dtype=dtype)

    bad = edited_copy(mask_file, tmp_path / "huge.h5", edit)
    tracemalloc.start()
    try:
        with pytest.raises(MaskError, match=r"mask shape \(1000000, 1000000\) exceeds"):
            load_masks(bad)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20


# ---------------------------------------------------------------- ratios and classes


@pytest.mark.parametrize("ratio", ["1.5", "-0.1", "nan", "inf"])
def test_ratio_outside_unit_interval_is_a_usage_error(velcro, tmp_path, stats_file, ratio):
    res = velcro("compress", stats_file, "--ratio", ratio, "-o", tmp_path / "m.h5")
    res.error_line(f"ratio must be in [0, 1], got {float(ratio)}", code=2)
    assert not (tmp_path / "m.h5").exists()


def test_ratio_outside_unit_interval_in_ratios_file_names_the_site(velcro, tmp_path, stats_file):
    toml = tmp_path / "r.toml"
    toml.write_text(f'[ratios]\ndefault = 0.2\n"{SITE}" = 1.25\n')
    res = velcro("compress", stats_file, "--ratios", toml, "-o", tmp_path / "m.h5")
    res.error_line(f"ratio of site '{SITE}' must be in [0, 1], got 1.25", code=2)


def test_boolean_ratio_in_ratios_file_is_refused(velcro, tmp_path, stats_file):
    toml = tmp_path / "r.toml"
    toml.write_text(f'[ratios]\n"{SITE}" = true\n')
    velcro("compress", stats_file, "--ratios", toml, "-o", tmp_path / "m.h5").error_line(SITE, code=2)


@pytest.mark.parametrize(
    "toml, needles",
    [
        ('default = "0.5"', ["default ratio must be a number in [0, 1], got '0.5'"]),
        ('default = 0.2\n"{site}" = [0.5]', ["ratio of site '{site}' must be a number in [0, 1], got [0.5]"]),
        ('default = 0.2\n"{site}" = nan', ["ratio of site '{site}' must be in [0, 1], got nan"]),
        ("ratios = 0.5", ["[ratios] must be a table"]),
        ('default = 0.5\n[ratios]\n"{site}" = 0.1', ["key(s) 'default' outside the [ratios] table"]),
        ('"{site}" = 0.9\n[ratios]\ndefault = 0.1', ["key(s) '{site}' outside the [ratios] table"]),
        ('[ratios]\n"{site} " = 0.1', ["unknown site(s) '{site} '"]),
        ("[ratios]\n{site} = 0.1", ["unknown site(s) 'layer2'; a site name with dots is quoted"]),
        ("ratios = 0.5\ndefault = 0.2", ["[ratios] must be a table"]),
    ],
    ids=[
        "string-default",
        "list-for-a-site",
        "nan-for-a-site",
        "ratios-not-a-table",
        "default-outside-the-table",
        "site-outside-the-table",
        "site-name-with-a-space",
        "dotted-site-name-unquoted",
        "ratios-not-a-table-beside-a-default",
    ],
)
def test_ratios_file_that_is_not_numbers_in_the_unit_interval(velcro, tmp_path, stats_file, toml, needles):
    path = tmp_path / "r.toml"
    path.write_text(toml.format(site=SITE) + "\n")
    res = velcro("compress", stats_file, "--ratios", path, "-o", tmp_path / "m.h5")
    res.error_line(f"error: {path}: ", *(n.format(site=SITE) for n in needles), code=2)
    assert not (tmp_path / "m.h5").exists()


@pytest.mark.parametrize("ratio", [True, np.bool_(False), "0.5", None, 1 + 0j])
def test_check_ratio_refuses_what_is_not_a_real_number(ratio):
    with pytest.raises(UsageError, match=r"--ratio must be a number in \[0, 1\], got "):
        check_ratio(ratio, "--ratio")


def test_check_ratio_accepts_numpy_and_integer_ratios():
    assert check_ratio(np.float32(0.5)) == 0.5 and check_ratio(1) == 1.0 and check_ratio(np.int64(0)) == 0.0


def test_classes_absent_from_the_image_set_are_an_error(velcro, tmp_path, model_file, images_file):
    res = velcro("profile", model_file, "--images", images_file, "--classes", "7,9", "-o", tmp_path / "s.h5")
    res.error_line("empty", str(images_file), "[7, 9]", "no images of class(es) 7, 9; labels found: 0, 1, 2, 3")
    assert not (tmp_path / "s.h5").exists()


def test_some_classes_absent_from_the_image_set_are_named(velcro, tmp_path, model_file, images_file):
    res = velcro("profile", model_file, "--images", images_file, "--classes", "1,7", "-o", tmp_path / "s.h5")
    res.error_line("7", str(images_file))
    assert not (tmp_path / "s.h5").exists()


def test_missing_classes_and_the_labels_found_are_named(velcro, tmp_path, model_file, images_file):
    res = velcro("eval", model_file, "--images", images_file, "--classes", "8,1,6")
    res.error_line(f"error: {images_file}: no images of class(es) 8, 6; labels found: 0, 1, 2, 3")


@pytest.mark.parametrize("classes", ["12", "sandal,shoe", "5,5", "-1"])
def test_classes_not_in_fashion_mnist_are_an_error_listing_the_valid_ones(velcro, tmp_path, model_file, classes):
    res = velcro("profile", model_file, "--data", "fashion-mnist", "--classes", classes, "-o", tmp_path / "s.h5")
    line = res.error_line("--classes: ", code=2)  # a value of the option: usage
    assert "valid" in line or "duplicate" in line, line


def test_a_variance_above_popovicius_bound_is_refused_and_the_bound_itself_accepted():
    """Values in [0, 2] have a variance of at most (2 - 0)^2 / 4 = 1 (half of them 0, half 2); a
    check without the / 4 let through variances up to 4."""

    def site(variance):
        one = np.ones(1)
        return SiteStats(4 * one, 0 * one, one.copy(), 4 * variance * one, 0 * one, 2 * one)

    _check_moments(site(1.0), "")
    with pytest.raises(StatsError, match="variance exceeds"):
        _check_moments(site(1.5), "")
