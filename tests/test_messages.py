"""Every file a message of the package tells the learner to open or run exists."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
#: A path into the course written in the package's text (a literal file, not a pattern).
NAMED = re.compile(r"\b(?:configs|notebooks|data_samples|scripts|docker|benchmarks)/[\w./-]+\w")


def test_every_path_named_in_a_message_exists() -> None:
    named = {(path.name, m.group(0)) for path in sorted((REPO / "qvl_helpers").rglob("*.py"))
             for m in NAMED.finditer(path.read_text(encoding="utf-8"))}
    assert named  # the scan sees the messages (for example configs/accelerate/ddp.yaml)
    missing = sorted((where, p) for where, p in named if not (REPO / p).exists())
    assert missing == []


def test_every_preset_a_recommendation_names_exists() -> None:
    from qvl_helpers.env import GpuInfo, preset_for

    classes = [[], [GpuInfo("T4", 14.7, (7, 5))], [GpuInfo("A4000", 16.0, (8, 6))],
               [GpuInfo("L4", 22.5, (8, 9))], [GpuInfo("A6000", 47.5, (8, 6))],
               [GpuInfo("H100", 79.1, (9, 0))]]
    names = {preset_for(gpus)[0] for gpus in classes}
    assert names == {p.stem for p in (REPO / "configs").glob("*.yaml")}
