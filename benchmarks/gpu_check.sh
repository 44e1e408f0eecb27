#!/usr/bin/env bash
# The GPU check: one command for a GPU machine with no network (under 8 minutes on one H200).
#
#   bash benchmarks/gpu_check.sh OUT_DIR            # on a GPU
#   bash benchmarks/gpu_check.sh --smoke OUT_DIR    # the same code paths on a CPU (CI runs this)
#
# (a) the GPU-marked tests and every notebook on the GPU with the tiny stand-in (--smoke: the
#     GPU-marked tests only, which skip without CUDA; CI runs the notebooks in scripts/test.sh);
# (b-d) benchmarks/gpu_check.py: a random model with the real 3B configuration, each GPU preset,
#     the course's recipe and the public one side by side (4-bit presets also with PEFT's float32
#     upcast, frozen_fp32: true), peaks against the memory estimate, then the vision tower in
#     fp16 at the sizes reported to overflow (decisive only with real weights:
#     QVL_REAL_MODEL=FOLDER), one JSON file in OUT_DIR.
# It installs nothing from the network. Packages the GPU machine lacks (bitsandbytes, pydantic,
# ...) travel as wheels in .whl/ (made by benchmarks/gpu_wheels.sh) and are put on PYTHONPATH.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
smoke=""
if [ "${1:-}" = "--smoke" ]; then smoke="--smoke"; shift; fi
out="${1:?usage: gpu_check.sh [--smoke] OUT_DIR}"
mkdir -p "$out"
start=$SECONDS
source scripts/stage.sh
if [ -z "$smoke" ] && [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    stage "carried wheels" python3 -m pip install -q --no-index --no-deps --no-compile \
        --no-cache-dir --upgrade --target /tmp/qvl-site .whl/*.whl
    export PYTHONPATH="/tmp/qvl-site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
    export PATH="/tmp/qvl-site/bin:$PATH"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export MPLBACKEND=Agg PYTHONUNBUFFERED=1
export QVL_OUTPUT_DIR="$(mktemp -d)" QVL_CACHE_DIR="${QVL_CACHE_DIR:-$(mktemp -d)}"
python3 - <<'PY'
import importlib.metadata as m, platform
names = ["torch", "transformers", "peft", "accelerate", "bitsandbytes", "pydantic"]
versions = {}
for n in names:
    try:
        versions[n] = m.version(n)
    except m.PackageNotFoundError:
        versions[n] = "missing"
import torch
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA"
print(f"python {platform.python_version()}, {gpu}, " + ", ".join(f"{k} {v}" for k, v in versions.items()))
PY
stage "GPU-marked tests" python3 -m pytest -q -m gpu tests -p no:cacheprovider
if [ -n "$smoke" ]; then
    echo "== notebooks: not in --smoke (scripts/test.sh runs them on the CPU)"
elif python3 -c "import nbmake, ipykernel" 2>/dev/null; then
    stage "notebooks on the GPU (tiny model)" env QVL_MODEL=tiny \
        python3 -m pytest -q --nbmake --nbmake-timeout=600 notebooks -p no:cacheprovider
else
    echo "== notebooks: skipped, nbmake is not installed (carry 'bash benchmarks/gpu_wheels.sh" \
         "notebooks' in a second call: bitsandbytes and the notebook runner exceed one carry)"
fi
if python3 -c "import bitsandbytes" 2>/dev/null || [ -n "$smoke" ]; then
    stage "presets: course vs public recipe, against the estimate" \
        python3 -m benchmarks.gpu_check "$out" $smoke
else
    echo "== presets: skipped, bitsandbytes is not installed (carry 'bash benchmarks/gpu_wheels.sh')"
fi
echo "== gpu check passed in $((SECONDS - start)) s; results in $out"
