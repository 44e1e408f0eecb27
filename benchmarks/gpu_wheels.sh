#!/usr/bin/env bash
# Download, here, the wheels that benchmarks/gpu_check.sh needs on a GPU machine with no network
# (Python 3.12, Linux x86_64), at the versions CI tested (constraints.txt), into .whl/ (git-ignored;
# carry that folder along). The device carries 64 MiB in all and bitsandbytes alone is 43 MB, so
# the notebook runner's packages are a second set, for a second call:
#   bash benchmarks/gpu_wheels.sh              # tests and measurements (about 50 MB)
#   bash benchmarks/gpu_wheels.sh notebooks    # nbmake and its kernel, instead (about 20 MB)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
CORE="bitsandbytes pydantic pydantic-core annotated-types typing-inspection rapidfuzz"
NOTEBOOKS="pydantic pydantic-core annotated-types typing-inspection rapidfuzz
nbmake nbclient nbformat fastjsonschema jsonschema jsonschema-specifications referencing rpds-py
ipykernel jupyter-client jupyter-core traitlets tornado pyzmq comm debugpy nest-asyncio
matplotlib-inline ipython ipython-pygments-lexers jedi parso pexpect ptyprocess
prompt-toolkit wcwidth stack-data asttokens executing pure-eval platformdirs ipywidgets
widgetsnbextension jupyterlab-widgets"
case "${1:-core}" in
    core) NAMES=$CORE ;;
    notebooks) NAMES=$NOTEBOOKS ;;
    *) echo "usage: gpu_wheels.sh [core|notebooks]" >&2; exit 2 ;;
esac
rm -rf .whl
pins=()
for name in $NAMES; do
    pin=$(grep -i -E "^${name//-/[-_]}==" constraints.txt || true)
    [ -n "$pin" ] || { echo "error: $name is not in constraints.txt" >&2; exit 2; }
    pins+=("$pin")
done
mkdir -p .whl
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any \
    -d .whl "${pins[@]}"
du -sh .whl
