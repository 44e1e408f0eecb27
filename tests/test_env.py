"""`qvl env`: never fails on a CPU machine, and recommends sensible settings for each GPU class."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from qvl_helpers.cli import main
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
    assert report["ok"] is (FAIL not in statuses.values())
    # True of this machine, whichever it is (CI has no GPU; benchmarks/gpu_check.sh runs the
    # suite on one, where the 3B may be missing from an offline cache: a true FAIL).
    import torch

    if torch.cuda.is_available():
        assert len(report["gpus"]) == torch.cuda.device_count()
        assert {f"gpu {i}" for i in range(len(report["gpus"]))} <= set(statuses)
        assert report["recommendation"]["model"] != "tiny"
    else:
        assert report["ok"] is True
        assert report["gpus"] == [] and statuses["gpu"] == WARN
        assert report["recommendation"]["model"] == "tiny"
    assert statuses["bitsandbytes 4-bit"] == OK


def test_text_report_has_one_status_per_line(monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(REPO)
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    checks = out.split("\n\n")[0].splitlines()
    assert checks and all(line.startswith(("[OK] ", "[WARN] ", "[FAIL] ")) for line in checks)
    assert "Recommended setup for this machine:" in out


def test_installed_versions_are_the_tested_ones() -> None:
    tested = load_tested_versions()
    assert tested["transformers"].startswith("5.")
    assert all(c.status == OK for c in check_packages(tested)), check_packages(tested)


def test_version_drift_is_a_warning() -> None:
    checks = {c.name: c for c in check_packages({"torch": "0.0.1"})}
    assert checks["torch"].status == WARN and "tested with 0.0.1" in checks["torch"].detail


def test_on_colab_and_kaggle_versions_are_held_to_the_hosted_pins() -> None:
    """A hosted session pins the course's packages only (hosted-constraints.txt): PyTorch and the
    generic packages are the platform's, and no advice replaces them or names a checkout."""
    from qvl_helpers.env import HOSTED_CONSTRAINTS_FILE, KEY_PACKAGES

    pinned = load_tested_versions(HOSTED_CONSTRAINTS_FILE)
    checks = {c.name: c for c in check_packages(hosted=True)}
    assert set(checks) == set(KEY_PACKAGES)
    for name, check in checks.items():
        if name in pinned:
            assert check.detail.endswith("(tested)"), check
        else:
            assert "the platform's own" in check.detail and check.status == OK, check
    assert "torch" not in pinned and "transformers" in pinned
    drift = {c.name: c for c in check_packages({"transformers": "0.0.1"}, hosted=True)}
    assert drift["transformers"].status == WARN
    assert drift["transformers"].detail.endswith("pip install transformers==0.0.1")


def test_bnb_failure_is_reported_not_raised() -> None:
    check = check_bnb_4bit(device="no-such-device")
    assert check.status == FAIL and "no-such-device" in check.detail


@pytest.mark.parametrize(("gpu", "dtype", "four_bit", "preset"), [
    (GpuInfo("Tesla T4", 14.7, (7, 5)), "float16", True, "t4_qlora"),
    (GpuInfo("Tesla V100-SXM2-32GB", 31.7, (7, 0)), "float16", True, "t4_qlora"),
    (GpuInfo("NVIDIA A10G", 22.0, (8, 6)), "bfloat16", True, "24gb_qlora"),
    (GpuInfo("NVIDIA GeForce RTX 4090", 23.6, (8, 9)), "bfloat16", True, "24gb_qlora"),
    (GpuInfo("NVIDIA RTX A6000", 47.5, (8, 6)), "bfloat16", False, "40gb_lora"),
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


def _table(path: Path, header: str) -> list[dict[str, str]]:
    """The rows of the Markdown table whose header row starts with ``header``."""
    lines = path.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    names = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(names, (c.strip() for c in line.strip("|").split("|")), strict=True)))
    return rows


def _preset(name: str) -> dict:
    import yaml

    return yaml.safe_load((REPO / "configs" / f"{name.strip('`').removesuffix('.yaml')}.yaml")
                          .read_text(encoding="utf-8"))


def _pixels_cell(values: dict) -> str:
    """How the tables write max_pixels: "401 408 (512)"."""
    return f"{values['max_pixels']:,} ({values['max_pixels'] // 784})".replace(",", " ")


@pytest.mark.parametrize(("path", "header", "key"), [
    ("README.md", "| hardware |", "preset"), ("configs/README.md", "| preset |", "preset")])
def test_hardware_tables_match_the_preset_files(path: str, header: str, key: str) -> None:
    rows = _table(REPO / path, header)
    assert rows
    for row in rows:
        values = _preset(row[key])
        assert row["max_pixels (visual tokens)" if "hardware" in header else "max_pixels (tokens)"] \
            == _pixels_cell(values), row
        assert row["batch × accumulation"] == f"{values['batch_size']} × {values['grad_accum']}"
        weights = "4-bit NF4" if values["quantization"] == "4bit" else "16-bit"
        assert row["weights"].startswith(weights), row
    assert {r[key].strip("`").removesuffix(".yaml") for r in rows} == {
        p.stem for p in (REPO / "configs").glob("*.yaml")}  # every preset, once at least


def test_recommendations_are_the_preset_files_values() -> None:
    for gpus in ([], [GpuInfo("T4", 14.7, (7, 5))], [GpuInfo("A6000", 47.5, (8, 6))],
                 [GpuInfo("H100", 79.1, (9, 0))]):
        rec = recommend(gpus)
        values = _preset(rec.preset)
        assert (rec.max_pixels, rec.batch_size, rec.grad_accum) == (
            values["max_pixels"], values["batch_size"], values["grad_accum"])
        assert rec.load_in_4bit == (values["quantization"] == "4bit")
