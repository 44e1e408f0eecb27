#!/usr/bin/env bash
# Set up (first run only) and run every check CI runs: ruff, the unit tests, every notebook.
# Extra arguments go to the unit-test pytest run (e.g. -k tiny -x).
set -euo pipefail
start=$SECONDS
source "$(dirname "${BASH_SOURCE[0]}")/stage.sh"
t0=$SECONDS
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
echo "== environment: $((SECONDS - t0)) s"
cd "$ROOT"
# Keep the tests away from the learner's own outputs and model cache.
export QVL_OUTPUT_DIR="$(mktemp -d "${TMPDIR:-/tmp}/qvl-test-outputs.XXXXXX")"
export QVL_CACHE_DIR="${QVL_CACHE_DIR:-$ROOT/.cache/qvl}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false MPLBACKEND=Agg
trap 'rm -rf "$QVL_OUTPUT_DIR"' EXIT

stage "ruff" ruff check .
stage "unit tests" python -m pytest tests -q -m "not notebooks and not gguf" --durations=10 "$@"
# Every notebook in order, on a learner's own data with the hard record shapes (tests/learner_data.py);
# the Docker stage of CI runs them once more on the bundled data, inside the image.
stage "notebooks" python -m pytest tests/test_learner_course.py -q -m notebooks \
    --durations=0  # each notebook's time (docs/workshop.md quotes them)
echo "== all stages passed in $((SECONDS - start)) s"
