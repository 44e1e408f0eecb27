#!/usr/bin/env bash
# Rewrite constraints.txt (and hosted-constraints.txt) from the current .venv after an upgrade that the tests passed with.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
{
    echo "# Exact versions CI tested (Python 3.11, Linux x86_64). Install with:"
    echo "#   pip install -e \".[course,test]\" -c constraints.txt"
    echo "# Regenerate after a tested upgrade: bash scripts/freeze.sh"
    "$ROOT/.venv/bin/python" -m pip freeze --exclude-editable | grep -v '^qvl-helpers' | sort -f
} > "$ROOT/constraints.txt"
echo "wrote $ROOT/constraints.txt"
# What Colab/Kaggle sessions pin (the course's own packages, never the platform's PyTorch).
"$ROOT/.venv/bin/python" -c "from qvl_helpers.bundle import write_hosted_constraints as w; print('wrote', w())"
