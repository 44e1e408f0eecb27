"""`qvl env`: never fails on a CPU machine, and recommends sensible settings for each GPU class."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from qvl_helpers.env import (
    FAIL,
    OK,
    WARN,
    GpuInfo,
    check_bnb_4bit,
    check_packages,
    load_tested_versions,
    recommend,
)

REPO = Path(__file__).resolve().parent.parent


def test_cli_json_on_this_cpu_machine() -> None:
    done = subprocess.run([sys.executable, "-m", "qvl_helpers.cli", "env", "--json"],
                          capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    statuses = {c["name"]: c["status"] for c in report["checks"]}
    assert report["ok"] is True and FAIL not in statuses.values()
    assert report["gpus"] == [] and statuses["gpu"] == WARN
    assert report["recommendation"]["model"] == "tiny"
    assert statuses["bitsandbytes 4-bit"] == OK


def test_text_report_has_one_status_per_line() -> None:
    done = subprocess.run([sys.executable, "-m", "qvl_helpers.cli", "env"], capture_output=True,
                          text=True, cwd=REPO)
    checks = done.stdout.split("\n\n")[0].splitlines()
    assert checks and all(line.startswith(("[OK] ", "[WARN] ", "[FAIL] ")) for line in checks)
    assert "Recommended setup for this machine:" in done.stdout


def test_installed_versions_are_the_tested_ones() -> None:
    tested = load_tested_versions()
    assert tested["transformers"].startswith("5.")
    assert all(c.status == OK for c in check_packages(tested)), check_packages(tested)


def test_version_drift_is_a_warning() -> None:
    checks = {c.name: c for c in check_packages({"torch": "0.0.1"})}
    assert checks["torch"].status == WARN and "tested with 0.0.1" in checks["torch"].detail


def test_bnb_failure_is_reported_not_raised() -> None:
    check = check_bnb_4bit(device="no-such-device")
    assert check.status == FAIL and "no-such-device" in check.detail


@pytest.mark.parametrize(("gpu", "dtype", "four_bit", "preset"), [
    (GpuInfo("Tesla T4", 14.7, (7, 5)), "float16", True, "t4_qlora"),
    (GpuInfo("Tesla V100-SXM2-32GB", 31.7, (7, 0)), "float16", True, "t4_qlora"),
    (GpuInfo("NVIDIA A10G", 22.0, (8, 6)), "bfloat16", True, "24gb_qlora"),
    (GpuInfo("NVIDIA GeForce RTX 4090", 23.6, (8, 9)), "bfloat16", True, "24gb_qlora"),
    (GpuInfo("NVIDIA A100-SXM4-80GB", 79.1, (8, 0)), "bfloat16", False, "80gb_lora"),
])
def test_recommendations_per_gpu_class(gpu: GpuInfo, dtype: str, four_bit: bool,
                                       preset: str) -> None:
    rec = recommend([gpu])
    assert (rec.dtype, rec.load_in_4bit, rec.preset) == (dtype, four_bit, preset)
    assert rec.model == "Qwen/Qwen2.5-VL-3B-Instruct"
    assert rec.max_pixels % (28 * 28) == 0


def test_smaller_cards_get_smaller_images() -> None:
    sizes = [recommend([GpuInfo("g", mem, (8, 0))]).max_pixels for mem in (16, 24, 48, 80)]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]


def test_several_gpus_mention_accelerate() -> None:
    import re

    rec = recommend([GpuInfo("NVIDIA L4", 22.5, (8, 9))] * 2)
    assert any("accelerate" in note for note in rec.notes)
    named = [m for note in rec.notes for m in re.findall(r"configs/[\w./-]+\.yaml", note)]
    assert named and all((REPO / path).is_file() for path in named), named
