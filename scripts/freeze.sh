#!/usr/bin/env bash
# Rewrite constraints.txt (and hosted-constraints.txt) from the current .venv after an upgrade that the tests passed with.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
{
    echo "# Exact versions CI tested (Python 3.11, Linux x86_64). Install with:"
    echo "#   pip install -e \".[course,test]\" -c constraints.txt"
    echo "# Regenerate after a tested upgrade: bash scripts/freeze.sh"
    "$ROOT/.venv/bin/python" -m pip freeze --exclude-editable | grep -v '^qvl-helpers' | sort -f |
        # soupsieve 3+ needs Python 3.11.5+; Debian 12's python3 is 3.11.2 (the Docker test base)
        sed 's/^\(soupsieve==.*\)$/\1; python_full_version >= "3.11.5"\nsoupsieve==2.8.3; python_full_version < "3.11.5"/'
} > "$ROOT/constraints.txt"
echo "wrote $ROOT/constraints.txt"
# What Colab/Kaggle sessions pin (the course's own packages, never the platform's PyTorch).
"$ROOT/.venv/bin/python" -c "from qvl_helpers.bundle import write_hosted_constraints as w; print('wrote', w())"
