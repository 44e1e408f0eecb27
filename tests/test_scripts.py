"""The shell scripts CI runs: no pipeline whose reader may quit early under ``pipefail``.

With ``set -o pipefail``, ``producer | grep -q x`` fails with status 141 when grep quits at its
first match and the producer dies of SIGPIPE: an assignment then stops a ``set -e`` script, and
an ``if`` takes its "not found" branch although the text was found. Whether it happens depends
on timing (seen once in CI, in ``docker/test_image.sh``), so it is forbidden outright: read the
producer's output into a variable first and search that (``grep -q x <<< "$out"``).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted([ROOT / ".ci" / "run", *ROOT.glob("scripts/*.sh"), *ROOT.glob("docker/*.sh"),
                  *ROOT.glob("benchmarks/*.sh")])

#: Readers that can exit before their input ends: grep -q/-m, head, sed with a q command,
#: awk with exit.
EARLY_EXIT = re.compile(r"\|\s*(grep\s+(-\w*[qm]|--quiet|--max-count)|head\b|"
                        r"sed\b[^|]*(;\s*q|\{q|\bq\s*\}|\bq')|awk\b[^|]*\bexit\b)")


def early_exit_pipes(text: str) -> list[tuple[int, str]]:
    """(line number, line) of each pipeline into an early-exit reader, comments ignored."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        code = line.split("#", 1)[0] if not line.lstrip().startswith("#") else ""
        if EARLY_EXIT.search(code):
            found.append((number, line.strip()))
    return found


def test_the_scripts_are_the_ones_ci_runs() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in SCRIPTS}
    assert {".ci/run", "scripts/test.sh", "docker/test_image.sh",
            "benchmarks/gpu_check.sh"} <= names


def test_no_script_pipes_into_a_reader_that_may_quit_early() -> None:
    found = {p.relative_to(ROOT).as_posix(): early_exit_pipes(p.read_text(encoding="utf-8"))
             for p in SCRIPTS if "pipefail" in p.read_text(encoding="utf-8")}
    assert {name: lines for name, lines in found.items() if lines} == {}


def test_the_rule_fires_on_each_pattern_and_not_on_its_cure() -> None:
    planted = """set -euo pipefail
if docker logs "$c" 2>&1 | grep -qF "$token"; then echo leak; fi
token="$(docker logs "$c" | sed -n '/token/{n;p;q}')"
first="$(ls | head -1)"
n="$(cat f | awk '/x/ {print; exit}')"
docker logs "$c" | grep -m1 ready
# a comment | head -1 is not code
log="$(docker logs "$c" 2>&1)"; grep -qF "$token" <<< "$log"
docker logs "$c" | tail -20
"""
    assert [n for n, _ in early_exit_pipes(planted)] == [2, 3, 4, 5, 6]


def test_the_mechanism_is_real_under_pipefail() -> None:
    """Why the rule exists: the producer dies of SIGPIPE and the pipeline fails with 141."""
    done = subprocess.run(["bash", "-c", "set -o pipefail; yes | head -1 > /dev/null; echo $?"],
                          capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "141"
