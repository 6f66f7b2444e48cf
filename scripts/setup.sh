#!/usr/bin/env bash
# Install velcro-ref into ./.venv with every extra, the Fashion-MNIST data set from Debian, and the
# simulators of the RTL tests (Icarus Verilog; Verilator, which compiles with g++ and make).
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
[ -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ] || need+=(dataset-fashion-mnist)
command -v iverilog >/dev/null || need+=(iverilog)
command -v verilator >/dev/null || need+=(verilator)
command -v g++ >/dev/null || need+=(g++)
command -v make >/dev/null || need+=(make)
if [ ${#need[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq "${need[@]}"
fi
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[all]'
# compiled now, in C's default floating-point environment: Python reads a decimal literal in the
# rounding mode of the process that first compiles the module (velcro_ref/fpenv.py); force: a
# module compiled earlier under another mode is compiled again
.venv/bin/python -c 'import velcro_ref.fpenv as f, compileall, sys; f.set_default(); sys.exit(not all(compileall.compile_dir(d, quiet=1, force=True) for d in ("velcro_ref", "simulator")))'
echo "installed: $(.venv/bin/velcro --help | head -1)"
