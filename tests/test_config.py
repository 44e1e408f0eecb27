"""course.yaml + QVL_* overrides, validation with useful errors, and the one model decision."""

from __future__ import annotations

import re
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


@pytest.mark.parametrize(("text", "line", "words"), [
    ("model: tiny\nbatch_size: two\n", 2, "batch_size: Input should be a valid integer"),
    ("min_pixels: 500000\nmax_pixels: 1000\n", 1, "above max_pixels"),
    ("seed: 3\nmin_pixels: 500000\n", 2, "min_pixels (500000) is above max_pixels (401408)"),
    ("save_total_limit: 1\n", 1, "save_total_limit"),
    ("lora_dropout: 1.5\n", 1, "lora_dropout"),
    ("max_length: 0\n", 1, "max_length: Input should be greater than 0"),
    ("lr: .nan\n", 1, "finite"),
    ("lr: .inf\n", 1, "finite"),
    ("lr: -0.001\n", 1, "lr: Input should be greater than 0"),
    ("seed: 1\nlora_alpha: 0\n", 2, "lora_alpha"),
    ("max_steps: 0\n", 1, "max_steps must be -1"),
    ("logging_steps: 0\n", 1, "logging_steps"),
    ("save_total_limit: 0\n", 1, "save_total_limit"),
    ("warmup: 1.0\n", 1, "warmup"),
    ("run_name: ../../elsewhere\n", 1, "not a plain folder name"),
    ("run_name: /tmp/abs\n", 1, "not a plain folder name"),
    ("run_name: a/b\n", 1, "not a plain folder name"),
    ("trained: '(('\n", 1, "neither a preset nor a valid regular expression"),
    ("quantization: 3bit\n", 1, "quantization"),
    ("model: tiny\n\nmodle: tiny\n", 3, "did you mean model?"),
])
def test_bad_values_are_refused_with_file_and_line(clean_env: Path, text: str, line: int,
                                                   words: str) -> None:
    (clean_env / "course.yaml").write_text(text)
    with pytest.raises(ConfigError, match=re.escape(words)) as info:
        load_config()
    assert info.value.line == line, str(info.value)
    assert str(info.value).startswith(f"{clean_env / 'course.yaml'}:{line}: ")
    assert info.value.fix


def test_a_list_is_refused(clean_env: Path) -> None:
    (clean_env / "course.yaml").write_text("- a list\n")
    with pytest.raises(ConfigError, match="key: value pairs"):
        load_config()


def test_chinese_run_name_is_a_plain_name(clean_env: Path) -> None:
    (clean_env / "course.yaml").write_text("run_name: 收据-实验1\n", encoding="utf-8")
    assert load_config().run_name == "收据-实验1"


def test_precedence_and_origins(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """course.yaml < preset < QVL_* < --set, and every value knows where it came from."""
    (clean_env / "course.yaml").write_text("data: mine/annotations.jsonl\nlr: 0.0001\n"
                                           "num_epochs: 2\nlora_r: 4\nseed: 7\n")
    preset = clean_env / "preset.yaml"
    preset.write_text("# a hardware preset\nlr: 0.001\nnum_epochs: 5\nlora_r: 16\n")
    monkeypatch.setenv("QVL_NUM_EPOCHS", "6")
    monkeypatch.setenv("QVL_LORA_R", "32")
    cfg = load_config(presets=[preset], sets={"lora_r": "64"})
    assert cfg.data == clean_env / "mine" / "annotations.jsonl"  # the learner's data is kept
    assert (cfg.seed, cfg.lr, cfg.num_epochs, cfg.lora_r) == (7, 0.001, 6, 64)
    assert str(cfg.origin("data")) == f"{clean_env / 'course.yaml'}:1"
    assert str(cfg.origin("seed")) == f"{clean_env / 'course.yaml'}:5"
    assert str(cfg.origin("lr")) == f"{preset}:2"
    assert str(cfg.origin("num_epochs")) == "environment variable QVL_NUM_EPOCHS"
    assert str(cfg.origin("lora_r")) == "--set lora_r=64"
    assert str(cfg.origin("weight_decay")) == "default"
    table = cfg.describe()
    assert "--set lora_r=64" in table and "environment variable QVL_NUM_EPOCHS" in table


@pytest.mark.parametrize("key", ["data", "model", "image_root", "output_dir"])
def test_a_preset_may_not_set_the_learners_choices(clean_env: Path, key: str) -> None:
    (clean_env / "course.yaml").write_text("data: mine.jsonl\n")
    preset = clean_env / "preset.yaml"
    preset.write_text(f"lr: 0.001\n{key}: somewhere\n")
    with pytest.raises(ConfigError, match="a preset holds hardware settings only") as info:
        load_config(presets=[preset])
    assert (info.value.file, info.value.line) == (str(preset), 2)


def test_shipped_presets_keep_the_learners_data(clean_env: Path) -> None:
    (clean_env / "course.yaml").write_text("data: my_data/annotations.jsonl\n")
    for preset in sorted((REPO / "configs").glob("*.yaml")):
        cfg = load_config(presets=[preset])
        assert cfg.data == clean_env / "my_data" / "annotations.jsonl", preset.name
        assert cfg.model == "auto", preset.name


def test_set_value_errors_blame_set_not_the_file(clean_env: Path) -> None:
    (clean_env / "course.yaml").write_text("lr: 0.0002\n")
    with pytest.raises(ConfigError) as info:
        load_config(sets={"lr": "fast"})
    assert str(info.value).startswith("--set lr=fast: lr:")
    assert "course.yaml" not in str(info.value)


def test_preset_value_errors_name_the_preset_line(clean_env: Path) -> None:
    preset = clean_env / "mine.yaml"
    preset.write_text("run_name: ok\nbatch_size: 0\n")
    with pytest.raises(ConfigError) as info:
        load_config(presets=[preset])
    assert (info.value.file, info.value.line) == (str(preset), 2)


def test_mistyped_variable_is_an_error_with_a_suggestion(clean_env: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QVL_MAX_PIXEL", "200704")
    with pytest.raises(ConfigError) as info:
        load_config()
    text = str(info.value)
    assert text.startswith("environment variable QVL_MAX_PIXEL:")
    assert "did you mean QVL_MAX_PIXELS?" in text and "unset QVL_MAX_PIXEL" in text


def test_the_course_own_variables_are_not_settings(clean_env: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from qvl_helpers.config import OTHER_VARIABLES

    for name in OTHER_VARIABLES:
        if name != "QVL_CONFIG":
            monkeypatch.setenv(name, "1")
    assert load_config().lr == pytest.approx(2e-4)


def test_missing_local_model_folder_names_its_origin(clean_env: Path) -> None:
    (clean_env / "course.yaml").write_text("model: ./models/my-finetune\n")
    with pytest.raises(ConfigError, match="does not exist") as info:
        load_config().resolve_model(cuda_available=False)
    assert info.value.line == 1 and "course.yaml" in info.value.file


def test_assignment_is_validated_and_undone(clean_env: Path) -> None:
    cfg = load_config()
    with pytest.raises(ConfigError, match="cfg.lr"):
        cfg.lr = float("nan")
    with pytest.raises(ConfigError, match="cfg.min_pixels"):
        cfg.min_pixels = 10**7
    assert (cfg.lr, cfg.min_pixels) == (2e-4, 3136)


def test_qvl_config_shows_origins(clean_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from qvl_helpers.cli import main

    (clean_env / "course.yaml").write_text("data: mine.jsonl\n")
    assert main(["config", "--config", str(REPO / "configs" / "tiny_cpu.yaml"),
                 "--set", "lr=0.01"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^lr\s+0\.01\s+--set lr=0\.01$", out, re.M), out
    assert re.search(r"^data\s+\S+mine\.jsonl\s+\S+course\.yaml:1$", out, re.M), out
    assert re.search(r"^max_pixels\s+12544\s+\S+tiny_cpu\.yaml:\d+$", out, re.M), out


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
