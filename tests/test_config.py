"""course.yaml + QVL_* overrides, validation with useful errors, and the one model decision."""

from __future__ import annotations

from pathlib import Path

import pytest

from qvl_helpers import ConfigError, load_config, model_banner
from qvl_helpers.config import REAL_MODEL_ID

REPO = Path(__file__).resolve().parent.parent


def test_repository_course_yaml_loads(clean_env: Path) -> None:
    cfg = load_config(REPO / "course.yaml")
    assert cfg.model == "auto"
    assert cfg.source == REPO / "course.yaml"
    assert cfg.output_dir == REPO / "outputs"  # relative paths are relative to the file
    assert cfg.lr == pytest.approx(2e-4) and cfg.lora_r == 8 and cfg.grad_accum == 4


def test_found_from_a_subfolder(clean_env: Path) -> None:
    (clean_env / "course.yaml").write_text("model: tiny\nmax_pixels: 50176\n")
    (clean_env / "notebooks").mkdir()
    import os

    os.chdir(clean_env / "notebooks")
    cfg = load_config()
    assert cfg.model == "tiny" and cfg.max_pixels == 50176
    assert cfg.source == clean_env / "course.yaml"


def test_environment_overrides_file(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (clean_env / "course.yaml").write_text("model: auto\nlr: 0.0001\n")
    monkeypatch.setenv("QVL_MODEL", "tiny")
    monkeypatch.setenv("QVL_LR", "3e-4")
    monkeypatch.setenv("QVL_BATCH_SIZE", "2")
    monkeypatch.setenv("QVL_OUTPUT_DIR", str(clean_env / "elsewhere"))
    cfg = load_config()
    assert (cfg.model, cfg.lr, cfg.batch_size) == ("tiny", 3e-4, 2)
    assert cfg.output_dir == clean_env / "elsewhere"
    assert load_config(use_env=False).model == "auto"


def test_unknown_key_suggests_the_right_one(clean_env: Path) -> None:
    (clean_env / "course.yaml").write_text("modle: tiny\n")
    with pytest.raises(ConfigError) as info:
        load_config()
    assert "course.yaml" in str(info.value) and "did you mean model?" in str(info.value)


def test_invalid_yaml_names_the_line(clean_env: Path) -> None:
    (clean_env / "course.yaml").write_text("model: tiny\nlr: [0.1\nseed: 1\n")
    with pytest.raises(ConfigError) as info:
        load_config()
    assert info.value.line is not None and info.value.line >= 2
    assert "course.yaml:" in str(info.value)


@pytest.mark.parametrize(("text", "words"), [
    ("batch_size: two\n", "batch_size must be a int"),
    ("min_pixels: 500000\nmax_pixels: 1000\n", "larger than max_pixels"),
    ("lora_dropout: 1.5\n", "lora_dropout"),
    ("max_length: 0\n", "max_length must be positive"),
    ("- a list\n", "key: value pairs"),
])
def test_bad_values_are_refused(clean_env: Path, text: str, words: str) -> None:
    (clean_env / "course.yaml").write_text(text)
    with pytest.raises(ConfigError, match=words):
        load_config()


def test_bad_environment_value_names_the_variable(clean_env: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QVL_MAX_PIXELS", "lots")
    with pytest.raises(ConfigError, match="QVL_MAX_PIXELS"):
        load_config()


def test_auto_resolves_by_hardware(clean_env: Path) -> None:
    cfg = load_config()
    gpu = cfg.resolve_model(cuda_available=True)
    cpu = cfg.resolve_model(cuda_available=False)
    assert (gpu.name, gpu.is_tiny) == (REAL_MODEL_ID, False)
    assert cpu.is_tiny and Path(cpu.path) == cfg.tiny_model_dir
    assert model_banner(gpu) == ""
    banner = model_banner(cpu)
    assert "TINY STAND-IN MODEL IN USE" in banner and REAL_MODEL_ID in banner


def test_explicit_models(clean_env: Path, tiny_dir: Path) -> None:
    assert load_config(model="tiny").resolve_model(cuda_available=True).is_tiny
    hub = load_config(model="Qwen/Qwen2.5-VL-7B-Instruct").resolve_model(cuda_available=False)
    assert (hub.path, hub.is_tiny) == ("Qwen/Qwen2.5-VL-7B-Instruct", False)
    local = load_config(model=str(tiny_dir)).resolve_model(cuda_available=True)
    assert local.is_tiny and Path(local.path) == tiny_dir  # a saved tiny build is still tiny


def test_cache_dir_follows_environment(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QVL_CACHE_DIR", str(clean_env / "cache"))
    cfg = load_config()
    assert cfg.tiny_model_dir.parent == clean_env / "cache"
