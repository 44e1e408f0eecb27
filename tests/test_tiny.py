"""The tiny stand-in must be structurally Qwen2.5-VL: classes, tokens, template, image settings."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from qvl_helpers.qwen import EXTRA_TOKENS, SPECIAL_TOKENS
from qvl_helpers.tiny import build_tiny_model

SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
IMG = "<|vision_start|><|image_pad|><|vision_end|>"


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_cli_build_is_byte_identical_to_an_in_process_build(tmp_path: Path, tiny_dir: Path) -> None:
    """`qvl tiny` in a fresh process gives the same bytes, file by file, as this session's build."""
    done = subprocess.run([sys.executable, "-m", "qvl_helpers.cli", "tiny", "--out",
                           str(tmp_path / "cli")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    cli, in_process = _files(tmp_path / "cli"), _files(tiny_dir)
    assert {"model.safetensors", "tokenizer.json", "config.json", "chat_template.jinja",
            "processor_config.json", "tokenizer_config.json"} <= set(cli)
    assert cli == in_process


def test_seed_changes_weights_only(tmp_path: Path, tiny_dir: Path) -> None:
    other = _files(build_tiny_model(tmp_path / "seed1", seed=1))
    base = _files(tiny_dir)
    assert other["model.safetensors"] != base["model.safetensors"]
    assert other["tokenizer.json"] == base["tokenizer.json"]


def test_refuses_to_overwrite_foreign_folder(tmp_path: Path) -> None:
    from qvl_helpers.errors import ModelError

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("learner's file")
    with pytest.raises(ModelError, match="not an earlier tiny-model build"):
        build_tiny_model(tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "learner's file"


def test_auto_classes(processor, model) -> None:
    assert type(processor).__name__ == "Qwen2_5_VLProcessor"
    assert type(processor.tokenizer).__name__ == "Qwen2Tokenizer"
    assert type(processor.image_processor).__name__.startswith("Qwen2VLImageProcessor")
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    # transformers 5.x module tree (the 4.x shortcuts model.visual / model.language_model are gone)
    assert hasattr(model.model, "visual") and hasattr(model.model, "language_model")


def test_special_tokens(processor) -> None:
    tok = processor.tokenizer
    ids = tok.convert_tokens_to_ids(SPECIAL_TOKENS + EXTRA_TOKENS)
    first = ids[0]
    assert ids == list(range(first, first + len(ids))), "special tokens keep Qwen's order"
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert tok.pad_token_id != tok.eos_token_id
    for token in SPECIAL_TOKENS:
        assert tok(token, add_special_tokens=False)["input_ids"] == [tok.convert_tokens_to_ids(token)]
    assert set(SPECIAL_TOKENS[1:]) <= set(tok.all_special_tokens)


@pytest.mark.parametrize("text", ["What colour is the circle?", "请描述图片内容。", '{"total": "12.50"}',
                                  "emoji 🙂 and tabs\tand\nnewlines"])
def test_byte_level_round_trip(processor, text: str) -> None:
    tok = processor.tokenizer
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


def test_template_multi_turn_multi_image(processor) -> None:
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "image"},
                                     {"type": "text", "text": "Compare the two receipts."}]},
        {"role": "assistant", "content": [{"type": "text", "text": "The first total is 12.50."}]},
        {"role": "user", "content": [{"type": "text", "text": "And the second?"}]},
        {"role": "assistant", "content": "The second total is 8.00."},
    ]
    expected = (
        SYSTEM
        + "<|im_start|>user\n" + IMG + IMG + "Compare the two receipts.<|im_end|>\n"
        + "<|im_start|>assistant\nThe first total is 12.50.<|im_end|>\n"
        + "<|im_start|>user\nAnd the second?<|im_end|>\n"
        + "<|im_start|>assistant\nThe second total is 8.00.<|im_end|>\n"
    )
    assert processor.apply_chat_template(messages, tokenize=False) == expected
    prompt = processor.apply_chat_template(messages[:3], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>user\nAnd the second?<|im_end|>\n<|im_start|>assistant\n")


def test_template_system_prompt_and_vision_ids(processor) -> None:
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "Answer in JSON."}]},
        {"role": "user", "content": [{"type": "image", "image": "a.png"},
                                     {"type": "text", "text": "总计？"}]},
    ]
    assert processor.apply_chat_template(messages, tokenize=False) == (
        "<|im_start|>system\nAnswer in JSON.<|im_end|>\n"
        "<|im_start|>user\n" + IMG + "总计？<|im_end|>\n")
    with_ids = processor.apply_chat_template(messages, tokenize=False, add_vision_id=True)
    assert "Picture 1: " + IMG in with_ids


def test_image_processor_has_hub_settings(processor) -> None:
    ip = processor.image_processor
    assert (ip.patch_size, ip.merge_size, ip.temporal_patch_size) == (14, 2, 2)
    assert (ip.size["shortest_edge"], ip.size["longest_edge"]) == (3136, 12845056)
    assert list(ip.image_mean) == pytest.approx([0.4815, 0.4578, 0.4082], abs=1e-4)
    assert list(ip.image_std) == pytest.approx([0.2686, 0.2613, 0.2758], abs=1e-4)


# (width, height) -> visual tokens, worked out by hand from the resize rule (multiples of 28,
# area within [3136, 12845056]): 300 px rounds to 308 = 11 * 28; 28x28 is scaled up to 56x56.
@pytest.mark.parametrize(("size", "tokens"), [((112, 112), 16), ((224, 224), 64),
                                              ((100, 300), 44), ((28, 28), 4), ((640, 480), 391)])
def test_image_token_counts(processor, size: tuple[int, int], tokens: int) -> None:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}]
    text = processor.apply_chat_template(messages, tokenize=False)
    batch = processor(text=[text], images=[Image.new("RGB", size, "red")], return_tensors="pt")
    image_id = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert int((batch["input_ids"] == image_id).sum()) == tokens
    t, h, w = batch["image_grid_thw"][0].tolist()
    assert t == 1 and h * w == tokens * 4  # the vision tower sees 4 patches of 14 px per token
    assert tuple(batch["pixel_values"].shape) == (tokens * 4, 3 * 2 * 14 * 14)
    assert "mm_token_type_ids" in batch


def test_config_structure(model) -> None:
    text, vision = model.config.text_config, model.config.vision_config
    head_dim = text.hidden_size // text.num_attention_heads
    assert sum(text.rope_parameters["mrope_section"]) == head_dim // 2
    assert vision.spatial_merge_size == 2 and vision.patch_size == 14
    assert vision.tokens_per_second == 2 and vision.window_size == 112
    full = list(vision.fullatt_block_indexes)
    assert full and all(0 <= i < vision.depth for i in full) and len(full) < vision.depth
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.language_model.embed_tokens.weight.data_ptr()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            assert module.in_features % 64 == 0 and module.out_features % 64 == 0, name
    q = model.model.language_model.layers[0].self_attn.q_proj.weight
    assert 0.15 < float(q.detach().std()) < 0.25, "init std 0.2 so that LoRA can move a random model"


def test_forward_backward_reaches_the_vision_tower(processor, model) -> None:
    """One training step's forward and backward on an image: a finite loss, and gradients as far
    as the patch embedding (how fast it is, is the benchmarks' business: no duration here)."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "red"}]}]
    text = processor.apply_chat_template(messages, tokenize=False)
    batch = processor(text=[text], images=[Image.new("RGB", (112, 112), "red")], return_tensors="pt")
    model.zero_grad()
    loss = model(**batch, labels=batch["input_ids"]).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert model.model.visual.patch_embed.proj.weight.grad is not None
