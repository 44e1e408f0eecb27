# Sourced by lab.sh and test.sh: make .venv hold exactly what constraints.txt pins.
# Re-installs only when pyproject.toml or constraints.txt changed since the last install.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${QVL_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"

if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "error: the course needs Python 3.11 or newer ($PY is $("$PY" --version 2>&1))." >&2
    echo "Fix: install Python 3.11+ and run again with PYTHON=/path/to/python3." >&2
    exit 2
fi
if [ ! -x "$VENV/bin/python" ]; then
    echo "== creating the virtual environment $VENV"
    "$PY" -m venv "$VENV"
fi
stamp="$VENV/.qvl-installed"
want="$(cat "$ROOT/pyproject.toml" "$ROOT/constraints.txt" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "== installing the course (pinned versions from constraints.txt)"
    # Packages this machine's disk lacks come over the network, which can drop mid-download
    # (seen in CI: a 47 MB wheel cut off six times in a row). pip resumes a cut download up to
    # --resume-retries times and keeps every finished wheel in its cache, so a second or third
    # attempt only fetches what is still missing.
    pip_install() { "$VENV/bin/python" -m pip install --quiet --retries 10 "$@"; }
    pip_install --upgrade pip || pip_install --upgrade pip || true
    resume=()  # pip 25.1 and newer; an older pip that could not upgrade goes without
    if [[ "$("$VENV/bin/python" -m pip install --help)" == *--resume-retries* ]]; then
        resume=(--resume-retries 20)
    fi
    for attempt in 1 2 3; do
        if pip_install "${resume[@]}" -e "$ROOT[course,test]" -c "$ROOT/constraints.txt"; then
            echo "$want" > "$stamp"
            break
        fi
        if [ "$attempt" = 3 ]; then
            echo "error: installing the course failed three times (see pip's message above)." >&2
            echo "Fix: check the network connection, then run the same command again." >&2
            exit 2
        fi
        echo "== the install failed (attempt $attempt of 3); trying again in 10 s"
        sleep 10
    done
fi
export PATH="$VENV/bin:$PATH"
