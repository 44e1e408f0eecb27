"""README.zh.md says what README.md says: the same commands and code, the same hardware table."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^```(bash|python)\n(.*?)^```", re.S | re.M)


def commands(path: Path) -> list[str]:
    """Every line of the bash and python blocks, without comments (those are translated)."""
    found = []
    for _, body in FENCE.findall(path.read_text(encoding="utf-8")):
        for line in body.splitlines():
            code = re.sub(r"\s+#.*$", "", line).rstrip() if not line.startswith("#") else ""
            if code:
                found.append(code)
    return found


def hardware_rows(path: Path) -> list[list[str]]:
    """dtype, weights, numbers and preset of each row of the hardware table (its last five cells): the
    rows whose last cell names a preset file."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        preset = re.fullmatch(r"`(\w+)`", cells[-1])
        if line.startswith("| ") and preset and (REPO / "configs" / f"{preset[1]}.yaml").is_file():
            rows.append(cells[-5:])
    return rows


def test_both_readmes_show_the_same_commands() -> None:
    english, chinese = commands(REPO / "README.md"), commands(REPO / "README.zh.md")
    assert len(english) > 20
    assert chinese == english


def test_both_hardware_tables_give_the_same_presets_and_numbers() -> None:
    english = hardware_rows(REPO / "README.md")
    assert len(english) == 5
    assert hardware_rows(REPO / "README.zh.md") == english


def test_the_readmes_link_each_other_and_only_to_files_that_exist() -> None:
    for name, other in (("README.md", "README.zh.md"), ("README.zh.md", "README.md")):
        text = (REPO / name).read_text(encoding="utf-8")
        assert f"]({other})" in text
        for target in re.findall(r"\]\(([^)#:]+)\)", text):
            assert (REPO / target).exists(), f"{name} links to {target}, which does not exist"


def test_the_scanner_sees_a_changed_command(tmp_path: Path) -> None:
    text = (REPO / "README.zh.md").read_text(encoding="utf-8")
    changed = tmp_path / "README.zh.md"
    changed.write_text(text.replace("qvl env --json", "qvl env --jsn", 1), encoding="utf-8")
    assert commands(changed) != commands(REPO / "README.md")
