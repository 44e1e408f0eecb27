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
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -e "$ROOT[course,test]" -c "$ROOT/constraints.txt"
    echo "$want" > "$stamp"
fi
export PATH="$VENV/bin:$PATH"
