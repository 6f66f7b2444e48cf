"""Exit codes (cli.main's docstring): 0 ok, 1 bad data, 2 usage, 130/143 interrupted; no traceback unless --debug."""

import subprocess
import sys

import numpy as np
import pytest
from robust_util import ROOT, velcro_process


@pytest.mark.parametrize(
    "args",
    [
        ["frobnicate"],
        [],
        ["info"],
        ["zoo", "vgg", "-o", "x.h5"],
        ["profile", "{model}", "--images", "{images}", "-o", "s.h5", "--batch", "abc"],
        ["compress", "s.h5"],  # -o missing
        ["stats"],
    ],
    ids=["unknown-command", "no-command", "missing-argument", "bad-choice", "bad-int", "missing-option", "no-action"],
)
def test_argparse_usage_errors_exit_2(velcro, model_file, images_file, args):
    args = [a.format(model=model_file, images=images_file) for a in args]
    res = velcro(*args)
    res.error_line(code=2)
    assert "usage: velcro" in res.err


@pytest.mark.parametrize(
    "args, usage",
    [
        (["info", "{model}", "--bogus"], "usage: velcro info "),
        (["infer", "{model}", "--input", "{images}", "extra"], "usage: velcro infer "),
        (["stats", "merge", "a.h5", "-o", "b.h5", "--bogus"], "usage: velcro stats merge "),
    ],
    ids=["command-option", "command-argument", "action-option"],
)
def test_an_argument_no_command_takes_is_an_error_of_the_command_given(model_file, images_file, args, usage, capsys):
    """Its usage lines (README: a command-line error's line follows the command's usage lines), not
    velcro's; and cli.main, called in a process of the caller's, returns the exit code as it does for
    other errors (argparse would end that process)."""
    from velcro_ref import cli

    assert cli.main([a.format(model=model_file, images=images_file) for a in args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(usage) and err.splitlines()[-1].startswith("error: unrecognized arguments: ")
    assert "usage: velcro [-h]" not in err


def test_help_in_a_process_of_the_callers_returns_0(capsys):
    from velcro_ref import cli

    assert cli.main(["infer", "--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: velcro infer ")


@pytest.mark.parametrize(
    "args, needles",
    [
        (["profile", "{model}", "--images", "{images}", "-o", "{tmp}/s.h5", "--batch", "0"], ["--batch"]),
        (["profile", "{model}", "--images", "{images}", "-o", "{tmp}/s.h5", "--samples", "-3"], ["--samples"]),
        (["profile", "{model}", "-o", "{tmp}/s.h5"], ["--data", "--images"]),
        (["compress", "{stats}", "-o", "{tmp}/m.h5"], ["--ratio"]),
    ],
    ids=["zero-batch", "negative-samples", "no-image-set", "no-ratio"],
)
def test_usage_errors_found_after_parsing_exit_2(velcro, tmp_path, model_file, images_file, stats_file, args, needles):
    fmt = {"model": model_file, "images": images_file, "stats": stats_file, "tmp": tmp_path}
    velcro(*[a.format(**fmt) for a in args]).error_line(*needles, code=2)


def test_unwritable_output_is_one_line_exit_1(velcro, tmp_path, model_file, images_file):
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a directory")
    res = velcro("profile", model_file, "--images", images_file, "-o", blocker / "s.h5")
    res.error_line(str(blocker))


def test_user_error_in_a_real_process_has_no_traceback_and_debug_adds_it(tmp_path):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    plain = velcro_process("info", bad)
    plain.error_line(str(bad))
    assert plain.out == ""
    for res in (velcro_process("--debug", "info", bad), velcro_process("info", bad, env={"VELCRO_DEBUG": "1"})):
        assert res.code == 1
        assert "Traceback" in res.err and "ModelError" in res.err
        assert res.err.rstrip().splitlines()[-1].startswith(f"error: {bad}")


def test_closed_stdout_is_not_a_traceback(model_file):
    proc = subprocess.Popen(
        [sys.executable, "-m", "velcro_ref.cli", "info", str(model_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    proc.stdout.close()  # the reader goes away before the first line is printed
    err = proc.stderr.read().decode()
    proc.wait(timeout=60)
    assert "Traceback" not in err, err
    assert proc.returncode in (0, 1)


def test_success_exits_0(velcro, tmp_path, model_file):
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((1, 3, 16, 16), np.float32))
    res = velcro("infer", model_file, "--input", x)
    assert res.code == 0 and res.err == ""


def test_out_of_memory_is_one_line_exit_1_naming_batch_only_where_the_command_takes_it(
    velcro, tmp_path, model_file, images_file, monkeypatch
):
    from velcro_ref import engine, zoo

    def exhausted(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(zoo, "build_zoo", exhausted)
    res = velcro("zoo", "resnet18", "-o", tmp_path / "z.h5")
    res.error_line("out of memory", code=1)
    assert "--batch" not in res.err  # zoo has no --batch
    monkeypatch.setattr(engine.Model, "run", exhausted)
    res = velcro("profile", model_file, "--images", images_file, "-o", tmp_path / "s.h5")
    res.error_line("out of memory", "--batch", code=1)
