#!/usr/bin/env bash
# The GGUF export's own checks (`qvl export --gguf`, tests marked gguf): installs the gguf extra
# into .venv first (pip builds llama.cpp from source once, about 6 minutes on 2 quiet cores, and keeps
# the wheel in its cache), then runs them. .ci/run calls this after scripts/test.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/stage.sh"
source "$(dirname "${BASH_SOURCE[0]}")/env.sh" >/dev/null
cd "$ROOT"
export QVL_OUTPUT_DIR="$(mktemp -d "${TMPDIR:-/tmp}/qvl-test-outputs.XXXXXX")"
export QVL_CACHE_DIR="${QVL_CACHE_DIR:-$ROOT/.cache/qvl}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false MPLBACKEND=Agg
trap 'rm -rf "$QVL_OUTPUT_DIR"' EXIT
install_gguf() {
    local attempt
    for attempt in 1 2 3; do
        python -m pip install --quiet --retries 10 -e "$ROOT[gguf]" -c "$ROOT/constraints.txt" \
            && return 0
        echo "== installing the gguf extra failed (attempt $attempt of 3)"
        sleep 10
    done
    return 1
}
if ! python -c "from qvl_helpers.gguf_export import require_llama_cpp; require_llama_cpp()" 2>/dev/null; then
    stage "gguf extra (llama.cpp build)" install_gguf
fi
export QVL_REQUIRE_GGUF=1  # here a missing extra fails the tests instead of skipping them
stage "gguf tests" python -m pytest tests/test_gguf.py -q -m gguf --durations=5 "$@"
