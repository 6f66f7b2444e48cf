"""Fashion-MNIST loader tests on the installed Debian files (velcro_ref.data)."""

import array
import collections
import gzip
import os
import pathlib
import time
import warnings

import numpy as np
import pytest

from velcro_ref import data
from velcro_ref.errors import DataError, InputError

SRC = pathlib.Path(data.DEBIAN_DIR)
ALL_FILES = [name for pair in data.SPLIT_FILES.values() for name in pair]


def _linked_copy(tmp_path, skip=()):
    """A directory with symlinks to the real files, except those in `skip`."""
    for name in ALL_FILES:
        if name not in skip:
            (tmp_path / name).symlink_to(SRC / name)
    return tmp_path


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv(data.ENV_VAR, raising=False)


@pytest.mark.parametrize("split, n", [("train", 60000), ("test", 10000)])
def test_split_shapes_dtypes_and_class_balance(split, n):
    images, labels = data.load_fashion_mnist(split)
    assert images.shape == (n, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (n,) and labels.dtype == np.int64
    # Fashion-MNIST is balanced: 6000 train and 1000 test images per class.
    assert np.bincount(labels, minlength=10).tolist() == [n // 10] * 10


def test_first_train_image_is_an_ankle_boot():
    # Checked by hand from the raw label file: byte 8 (after the 8-byte header) is 9.
    images, labels = data.load_fashion_mnist("train")
    assert labels[0] == 9 and data.CLASS_NAMES[9] == "Ankle boot"
    assert images[0].max() > 0


def test_repeated_load_is_cached_and_read_only():
    first = data.load_fashion_mnist("test")
    second = data.load_fashion_mnist("test")
    assert first[0] is second[0] and first[1] is second[1]
    with pytest.raises(ValueError):
        first[0][0, 0, 0] = 1


def test_a_file_written_again_is_read_again(tmp_path):
    """The arrays were cached by directory and split alone: a long-lived process (a Dask worker) kept
    the images it first read after the file was changed or put back, and refused runs whose client
    read the same files as "other images or labels". Here every version has one size and one
    modification time, as a copy that keeps the time (`cp -p`) gives."""
    d = _linked_copy(tmp_path, skip=data.SPLIT_FILES["test"])
    image_file, label_file = (d / name for name in data.SPLIT_FILES["test"])
    label_file.symlink_to(SRC / label_file.name)
    original = gzip.decompress((SRC / image_file.name).read_bytes())

    def write(payload):
        time.sleep(0.05)  # past the clock tick of the last write: its status change time differs
        image_file.write_bytes(gzip.compress(payload, compresslevel=0, mtime=0))
        os.utime(image_file, ns=(1, 1))

    write(original)
    first = data.load_fashion_mnist("test", data_dir=d)[0]
    assert data.load_fashion_mnist("test", data_dir=d)[0] is first  # unchanged: the cached arrays
    changed = bytearray(original)
    changed[16] ^= 0xFF  # the first pixel of the first image
    write(bytes(changed))
    again = data.load_fashion_mnist("test", data_dir=d)[0]
    assert again[0, 0, 0] == first[0, 0, 0] ^ 0xFF and np.array_equal(again[1:], first[1:])
    write(original)  # put back
    assert np.array_equal(data.load_fashion_mnist("test", data_dir=d)[0], first)


def test_env_var_and_argument_override_default(tmp_path, monkeypatch):
    assert data.resolve_data_dir() == pathlib.Path(data.DEBIAN_DIR)
    (tmp_path / "env").mkdir()
    env_dir = _linked_copy(tmp_path / "env")
    monkeypatch.setenv(data.ENV_VAR, str(env_dir))
    assert data.resolve_data_dir() == env_dir
    _, labels = data.load_fashion_mnist("test")
    assert labels.shape == (10000,)
    (tmp_path / "arg").mkdir()
    arg_dir = _linked_copy(tmp_path / "arg")
    assert data.resolve_data_dir(arg_dir) == arg_dir
    assert data.load_fashion_mnist("test", data_dir=arg_dir)[1][0] == 9


def test_missing_dir_names_dir_file_and_setup_command(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as err:
        data.load_fashion_mnist("train", data_dir=missing)
    message = str(err.value)
    assert str(missing) in message and "train-images-idx3-ubyte.gz" in message
    assert data.SETUP_COMMAND in message and "\n" not in message
    assert "directory given" in message and "give a directory holding it" in message


def test_missing_file_of_the_environment_s_directory_names_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv(data.ENV_VAR, str(tmp_path))
    with pytest.raises(DataError, match=rf"not found in {tmp_path} \(\${data.ENV_VAR}\); set \${data.ENV_VAR} to a"):
        data.load_fashion_mnist("train")


def test_missing_single_file_is_named(tmp_path):
    _linked_copy(tmp_path, skip=("t10k-labels-idx1-ubyte.gz",))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz"):
        data.load_fashion_mnist("test", data_dir=tmp_path)


def test_a_directory_in_place_of_a_file_is_named_as_such(tmp_path):
    _linked_copy(tmp_path, skip=("t10k-labels-idx1-ubyte.gz",))
    (tmp_path / "t10k-labels-idx1-ubyte.gz").mkdir()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz is not a regular file in"):
        data.load_fashion_mnist("test", data_dir=tmp_path)


def test_truncated_payload_reports_expected_and_found(tmp_path):
    _linked_copy(tmp_path, skip=("t10k-labels-idx1-ubyte.gz",))
    raw = gzip.decompress((SRC / "t10k-labels-idx1-ubyte.gz").read_bytes())
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(raw[:-100]))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz.*expected 10000 .*found 9900"):
        data.load_fashion_mnist("test", data_dir=tmp_path)


def test_bytes_past_the_payload_are_refused(tmp_path):
    _linked_copy(tmp_path, skip=("t10k-labels-idx1-ubyte.gz",))
    raw = gzip.decompress((SRC / "t10k-labels-idx1-ubyte.gz").read_bytes())
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(raw + b"\0"))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz.*expected 10000 data bytes, found 10001"):
        data.load_fashion_mnist("test", data_dir=tmp_path)


def test_a_label_past_the_ten_classes_is_refused(tmp_path):
    _linked_copy(tmp_path, skip=("t10k-labels-idx1-ubyte.gz",))
    raw = bytearray(gzip.decompress((SRC / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    raw[-1] = 10  # the first label no class has
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(DataError, match=r"labels must be 0-9, found 10"):
        data.load_fashion_mnist("test", data_dir=tmp_path)


def test_cut_gzip_stream_is_a_data_error(tmp_path):
    _linked_copy(tmp_path, skip=("t10k-labels-idx1-ubyte.gz",))
    packed = (SRC / "t10k-labels-idx1-ubyte.gz").read_bytes()
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(packed[: len(packed) // 2])
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz"):
        data.load_fashion_mnist("test", data_dir=tmp_path)


def test_wrong_magic_is_a_data_error(tmp_path):
    _linked_copy(tmp_path, skip=("t10k-labels-idx1-ubyte.gz",))
    # An image file under the label file's name: magic 0x803 where 0x801 is expected.
    (tmp_path / "t10k-labels-idx1-ubyte.gz").symlink_to(SRC / "t10k-images-idx3-ubyte.gz")
    with pytest.raises(DataError, match="expected IDX magic 0x00000801, found 0x00000803"):
        data.load_fashion_mnist("test", data_dir=tmp_path)


def test_unknown_split_lists_choices():
    with pytest.raises(DataError, match="train, test"):
        data.load_fashion_mnist("validation")


def test_parse_classes_by_number_and_name():
    assert data.parse_classes("5,7,9") == (5, 7, 9)
    assert data.parse_classes("sandal, SNEAKER, Ankle boot") == (5, 7, 9)
    assert data.parse_classes("t-shirt/top,ankle_boot, 1") == (0, 9, 1)


@pytest.mark.parametrize("text", ["", "5,5", "sandal,5", "10", "-1", "sock", "5,,x"])
def test_parse_classes_rejects_bad_lists_with_choices(text):
    with pytest.raises(DataError) as err:
        data.parse_classes(text)
    message = str(err.value)
    assert "duplicate" in message or "Ankle boot" in message or "valid" in message


def test_select_classes_keeps_order_and_first_n():
    images, labels = data.load_fashion_mnist("test")
    sub_images, sub_labels = data.select_classes(images, labels, (5, 7, 9), n=50)
    expected = [i for i, label in enumerate(labels) if label in (5, 7, 9)][:50]
    assert sub_labels.tolist() == labels[expected].tolist()
    assert np.array_equal(sub_images, images[expected])
    assert len(data.select_classes(images, labels, (1, 8))[1]) == 2000


def test_preprocess_scales_and_adds_channel_axis():
    images = np.array([[[0, 255], [51, 102]]], dtype=np.uint8)
    out = data.preprocess(images, {"scale": 1 / 255, "mean": [0.5], "std": [0.25]})
    assert out.shape == (1, 1, 2, 2) and out.dtype == np.float32
    np.testing.assert_allclose(out[0, 0], [[-2.0, 2.0], [-1.2, -0.4]], rtol=1e-6)


def test_preprocess_takes_mean_and_std_as_any_sequence_and_numpy_numbers():
    images = np.array([[[0, 255], [51, 102]]], dtype=np.uint8)
    want = data.preprocess(images, {"scale": 1 / 255, "mean": [0.5], "std": [0.25]})
    for pre in (
        {"scale": 1 / 255, "mean": (0.5,), "std": np.array([0.25])},
        {"scale": np.float32(1 / 255), "mean": 0.5, "std": [np.float32(0.25)]},
    ):
        np.testing.assert_array_equal(data.preprocess(images, pre), want)
    for bytes_like in (bytearray(b"\x80"), memoryview(b"\x80")):  # its bytes are no numbers (128 was the mean)
        with pytest.raises(DataError, match="mean expects"):
            data.preprocess(images, {"scale": 1 / 255, "mean": bytes_like, "std": [0.25]})
    for mean in (array.array("d", [0.5]), collections.deque([0.5]), range(0, 1)):  # any sequence
        got = data.preprocess(images, {"scale": 1 / 255, "mean": mean, "std": [0.25]})
        np.testing.assert_array_equal(
            got, data.preprocess(images, {"scale": 1 / 255, "mean": list(mean), "std": [0.25]})
        )
    with pytest.raises(DataError, match=r"^preprocessing: mean expects"):  # a bool is no number
        data.preprocess(images, {"scale": 1.0, "mean": [True], "std": [1.0]})
    with pytest.raises(DataError, match=r"^preprocessing: scale expects"):  # it would round twice through a float
        data.preprocess(images, {"scale": np.longdouble(1 + 2**-24 + 2**-60), "mean": [0.0], "std": [1.0]})


def test_a_model_of_three_channels_on_fashion_mnist_is_named_as_such(tmp_path):
    """The refusal read as if the model's preprocessing were invalid ("mean expects a list of 1 number")."""
    from robust_util import zoo_graph

    from velcro_ref.engine import Model

    model = Model(zoo_graph("resnet18", input_size=28, in_channels=3, width=0.25, num_classes=10), path="z3.h5")
    with pytest.raises(DataError, match=r"^z3.h5: preprocessing of 3 input channels; Fashion-MNIST images have 1$"):
        data.task_images(model, (5, 7), "test", 4)


def test_a_tiny_std_overflows_without_a_warning_for_the_input_check_to_refuse():
    """A std that makes the pixels overflow printed two NumPy warning lines before the CLI's one-line
    refusal of the non-finite input; a subnormal one, which can only overflow, is refused with the model."""
    images = np.full((1, 2, 2), 200, np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x = data.preprocess(images, {"scale": 1.0, "mean": [0.0], "std": [float(np.finfo(np.float32).tiny)]})
    assert np.isinf(x).all()
    with pytest.raises(DataError, match="std expects a list of 1 positive normal number"):
        data.preprocess(images, {"scale": 1 / 255, "mean": [0.0], "std": [1e-40]})


def test_preprocess_rejects_bad_dict():
    images = np.zeros((1, 28, 28), np.uint8)
    with pytest.raises(DataError, match="keys"):
        data.preprocess(images, {"scale": 1.0, "mean": [0.0]})
    with pytest.raises(DataError, match="std"):
        data.preprocess(images, {"scale": 1.0, "mean": [0.0], "std": [0.0]})


def test_shipped_tasks_have_two_to_four_distinct_valid_classes():
    tasks = data.load_tasks()
    assert len(tasks) >= 5
    assert tasks["footwear"]["classes"] == (5, 7, 9)
    for name, task in tasks.items():
        classes = task["classes"]
        assert 2 <= len(classes) <= 4 and len(set(classes)) == len(classes), name
        assert all(0 <= c < 10 for c in classes), name
        assert task["description"], name


def test_bad_task_names_file_and_task(tmp_path):
    path = tmp_path / "tasks.toml"
    path.write_text('format = "velcro-tasks/1"\n[tasks.solo]\nclasses = ["Bag"]\ndescription = "x"\n')
    with pytest.raises(DataError, match=r"tasks.toml: task 'solo': needs 2-4 classes"):
        data.load_tasks(path)
    five = '["Bag", "Coat", "Dress", "Sandal", "Shirt"]'
    path.write_text(f'format = "velcro-tasks/1"\n[tasks.many]\nclasses = {five}\ndescription = "x"\n')
    with pytest.raises(DataError, match=r"tasks.toml: task 'many': needs 2-4 classes"):
        data.load_tasks(path)
    path.write_text('format = "velcro-tasks/1"\n[tasks.odd]\nclasses = ["Bag", "Sock"]\ndescription = "x"\n')
    with pytest.raises(DataError, match=r"task 'odd': unknown class 'Sock'"):
        data.load_tasks(path)
    path.write_bytes(b'format = "velcro-tasks/1"\n# \xff\n')  # not UTF-8
    with pytest.raises(DataError, match=r"tasks.toml: invalid TOML \('utf-8' codec can't decode"):
        data.load_tasks(path)
    path.write_text("x = " + "[" * 100_000 + "]" * 100_000)
    with pytest.raises(DataError, match=r"tasks.toml: invalid TOML \(arrays or tables nested too deeply"):
        data.load_tasks(path)


def test_golden_vectors_record_which_images_of_the_data_set_they_hold(tmp_path):
    """`velcro golden --data` stores the split, classes, each image's position in the split's files
    and its label: read here from the raw IDX bytes (8-byte label header, 16-byte image header)."""
    import json

    import h5py

    from velcro_ref import cli
    from velcro_ref.engine import load_model

    root = pathlib.Path(__file__).resolve().parents[2]
    out = tmp_path / "g.h5"
    args = ["golden", root / "weights" / "resnet18.h5", "--data", "fashion-mnist", "--classes", "9,5,7"]
    assert cli.main([str(a) for a in [*args, "--split", "test", "--samples", "4", "-o", out]]) == 0
    raw_labels = np.frombuffer(gzip.open(SRC / data.SPLIT_FILES["test"][1]).read()[8:], np.uint8)
    want = np.flatnonzero(np.isin(raw_labels, (5, 7, 9)))[:4]
    raw_images = np.frombuffer(gzip.open(SRC / data.SPLIT_FILES["test"][0]).read()[16:], np.uint8)
    pre = load_model(root / "weights" / "resnet18.h5").meta["preprocessing"]
    with h5py.File(out, "r") as f:
        source = json.loads(f.attrs["input_source"])
        want_source = {"data": "fashion-mnist", "directory": str(SRC.resolve()), "split": "test", "classes": [9, 5, 7]}
        assert source == {**want_source, "indices": want.tolist()}
        assert f["labels"][()].tolist() == raw_labels[want].tolist()
        pixels = raw_images.reshape(-1, 28, 28)[want].astype(np.float32) * np.float32(pre["scale"])
        x = (pixels - np.float32(pre["mean"][0])) / np.float32(pre["std"][0])
        np.testing.assert_allclose(f["input"][:, 0], x, rtol=0, atol=1e-6)


def test_a_prefix_digest_equals_the_digest_of_the_whole_prefix():
    """A profile's checkpoints hash each image once; what --resume compares is the sha256 of the
    first n images' bytes, whatever steps led to n."""
    import hashlib

    x = np.random.default_rng(0).standard_normal((50, 3, 4, 4)).astype(np.float32)
    prefix = data.PrefixDigest(x)
    for n in (0, 3, 3, 17, 50):
        assert prefix.of(n) == hashlib.sha256(x[:n].tobytes()).hexdigest()[:16] == data.digest(x[:n])


def test_golden_refuses_more_samples_than_the_classes_hold(tmp_path, capsys):
    """`--samples N` is "the first N images of the classes": class 9 of the test split has 1000, and
    1005 asked wrote a file of 1000 with exit 0."""
    from velcro_ref import cli

    root = pathlib.Path(__file__).resolve().parents[2]
    args = ["golden", root / "weights" / "resnet18.h5", "--data", "fashion-mnist", "--classes", "9", "--split", "test"]
    assert cli.main([str(a) for a in [*args, "--samples", "1005", "-o", tmp_path / "g.h5"]]) == 2
    assert "hold 1000 images" in capsys.readouterr().err
    assert not (tmp_path / "g.h5").exists()


def test_a_big_endian_npy_input_gives_the_bits_of_the_same_values_in_native_order(tmp_path, capsys):
    from velcro_ref import cli

    root = pathlib.Path(__file__).resolve().parents[2]
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)
    np.save(tmp_path / "le.npy", x)
    np.save(tmp_path / "be.npy", x.astype(">f4"))
    for name in ("le", "be"):
        argv = [
            "infer",
            root / "weights" / "resnet18.h5",
            "--input",
            tmp_path / f"{name}.npy",
            "-o",
            tmp_path / f"y{name}.npy",
        ]
        assert cli.main([str(a) for a in argv]) == 0, capsys.readouterr().err
    assert np.load(tmp_path / "ybe.npy").tobytes() == np.load(tmp_path / "yle.npy").tobytes()


def test_preprocessed_images_without_a_value_below_zero_are_not_taken_for_raw_pixels():
    """No pixel below the mean gives no value below 0; float32's rounding puts a white pixel of MNIST's
    preprocessing (2.8214867) above the largest value worked out in float64 (2.8214865)."""
    from types import SimpleNamespace

    pre = {"scale": 1 / 255, "mean": [0.1307], "std": [0.3081]}
    model = SimpleNamespace(meta={"preprocessing": pre})
    bright = np.full((2, 28, 28), 255, np.uint8)
    bright[1] = 40  # above the mean (0.1307 * 255 = 33.3)
    x = data.preprocess(bright, pre)
    assert x.min() >= 0 and float(x.max()) > (255 / 255 - 0.1307) / 0.3081
    data.check_not_raw_pixels(x, model, "set")
    with pytest.raises(InputError, match="raw pixels"):
        data.check_not_raw_pixels(bright[:, None].astype(np.float32) * np.float32(0.999), model, "set")
