"""The inference layer: which processor goes with a model and an adapter, the image limits it
carries through a save and a load, and what greedy decoding is (no model weights load here)."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from qvl_helpers.inference import greedy_config, load_processor_for, processor_folder
from qvl_helpers.qwen import HUB_MAX_PIXELS, HUB_MIN_PIXELS, ImageLimits


def adapter_folder(tmp_path: Path, processor=None, run_config: dict | None = None) -> Path:
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text("{}")
    if processor is not None:
        processor.save_pretrained(folder)
    if run_config is not None:
        (folder / "run_config.yaml").write_text(yaml.safe_dump(run_config))
    return folder


def test_the_adapter_s_own_processor_comes_first(tiny_dir: Path, tmp_path: Path) -> None:
    bare = adapter_folder(tmp_path)
    assert processor_folder(tiny_dir, bare) == str(tiny_dir)
    assert processor_folder(tiny_dir, None) == str(tiny_dir)
    saved = load_processor_for(tiny_dir)
    saved.save_pretrained(bare)
    assert processor_folder(tiny_dir, bare) == str(bare)


def test_the_limits_training_sets_come_back_from_the_saved_processor(tiny_dir: Path,
                                                                     tmp_path: Path) -> None:
    trained = ImageLimits(6272, 50176)
    adapter = adapter_folder(tmp_path, load_processor_for(tiny_dir, limits=trained))
    assert ImageLimits.of(load_processor_for(tiny_dir, adapter)) == trained
    assert ImageLimits.of(load_processor_for(tiny_dir)) == ImageLimits(HUB_MIN_PIXELS,
                                                                      HUB_MAX_PIXELS)
    wider = ImageLimits(3136, 100352)  # a flag overrides what was saved
    assert ImageLimits.of(load_processor_for(tiny_dir, adapter, limits=wider)) == wider


def test_an_older_adapter_is_read_at_the_limits_its_run_config_records(tiny_dir: Path,
                                                                       tmp_path: Path) -> None:
    """Adapters saved before processors carried the limits kept the hub's in their processor
    and the run's in run_config.yaml: the run's win, so an older run is evaluated as trained."""
    adapter = adapter_folder(tmp_path, load_processor_for(tiny_dir),
                             {"min_pixels": 3136, "max_pixels": 12544, "lr": 1e-4})
    assert ImageLimits.of(load_processor_for(tiny_dir, adapter)) == ImageLimits(3136, 12544)
    shutil.rmtree(adapter)
    other = adapter_folder(tmp_path, load_processor_for(tiny_dir), {"lr": 1e-4})
    assert ImageLimits.of(load_processor_for(tiny_dir, other)) == ImageLimits(HUB_MIN_PIXELS,
                                                                            HUB_MAX_PIXELS)


def test_greedy_is_one_configuration(processor) -> None:
    tok = processor.tokenizer
    greedy = greedy_config(tok, 40)
    assert (greedy.do_sample, greedy.num_beams, greedy.max_new_tokens) == (False, 1, 40)
    assert greedy.eos_token_id == [tok.convert_tokens_to_ids("<|im_end|>"), tok.pad_token_id]
    sampled = greedy_config(tok, temperature=0.7)
    assert sampled.do_sample and sampled.temperature == 0.7
