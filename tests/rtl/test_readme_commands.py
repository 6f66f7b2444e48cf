"""The README's "Using golden vectors in your testbench" commands, run as written in a copy of the
files a fresh clone has (the shipped int8 model, the RTL, the replay script and the cocotb bench)."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import rtl_runner

ROOT = Path(__file__).resolve().parents[2]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Using golden vectors in your testbench", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


def test_the_readme_goes_from_a_model_to_a_passing_rtl_run_in_three_commands(tmp_path):
    rtl_runner.require("icarus")
    commands = readme_commands()
    assert len(commands) == 3
    (tmp_path / "weights").mkdir()
    shutil.copy(ROOT / "weights" / "resnet18_int8.h5", tmp_path / "weights")
    for folder in ("rtl", "scripts", "tests/rtl"):
        shutil.copytree(ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__", "sim_build"))
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    outputs = []
    for command in commands:
        p = subprocess.run(shlex.split(command), cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, f"{command}\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}"
        outputs.append(p.stdout)
    assert "wrote golden.h5" in outputs[0]
    assert (tmp_path / "vectors" / "stem.0" / "manifest.json").exists()
    assert re.search(r"stem\.0: 196 tiles, 1568 result rows bit-exact", outputs[2]), outputs[2][-1000:]
