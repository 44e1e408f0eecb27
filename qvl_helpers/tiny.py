"""Build a tiny random Qwen2.5-VL offline: the real classes, processor, tokens and chat template.

Nothing in the course can download weights on a CPU-only machine, so this module builds a model
that is *structurally* Qwen/Qwen2.5-VL-3B-Instruct at a size that trains in seconds:

* tokenizer: a byte-level BPE trained (Hugging Face ``tokenizers``) on a small built-in English and
  Chinese corpus, wrapped in the real ``Qwen2Tokenizer`` class, with all of Qwen2.5-VL's special
  tokens in their real order (their ids differ: the vocabulary is small), eos ``<|im_end|>``,
  pad ``<|endoftext|>``;
* chat template: Qwen2.5-VL's own, so rendering is identical character for character;
* image processor: the hub settings (patch 14, merge 2, temporal patch 2, CLIP mean/std,
  min/max pixels 3136 / 12845056);
* model: ``Qwen2_5_VLForConditionalGeneration`` with M-RoPE sections summing to head_dim/2,
  window attention plus one full-attention block, tied embeddings and tokens_per_second 2, every
  layer size a multiple of 64 (bitsandbytes' CPU 4-bit kernels need that), initialised with
  std 0.2 instead of 0.02 so that LoRA alone can move the outputs.

The build is deterministic: the same seed gives byte-identical files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ModelError
from .model import quiet_loading
from .outputs import build_in_place
from .qwen import SPECIAL_TOKENS
from .real_tokenizer import REGULAR_TOKENS, qwen2_tokenizer, qwen_processor
from .stand_in import BUILDER_VERSION, MARKER_FILE, is_stand_in

if TYPE_CHECKING:
    from .config import ModelChoice


#: Qwen2.5-VL's special tokens, in the order of their real ids (151643 ... 151656).

#: Preprocessor settings of Qwen/Qwen2.5-VL-3B-Instruct on the hub.

#: Sizes of the stand-in. Real 3B values in comments.
TINY_SIZES: dict[str, Any] = {
    "bpe_vocab": 1000,           # 151643 byte-level BPE tokens
    "hidden_size": 128,          # 2048
    "intermediate_size": 256,    # 11008
    "num_hidden_layers": 2,      # 36
    "num_attention_heads": 4,    # 16 (head dim 32; real 128)
    "num_key_value_heads": 2,    # 2
    "mrope_section": [4, 6, 6],  # [16, 24, 24]: same 2:3:3 split, sum = head_dim / 2
    "vision_depth": 2,           # 32
    "vision_hidden_size": 64,    # 1280
    "vision_intermediate_size": 128,  # 3420
    "vision_num_heads": 2,       # 16
    "fullatt_block_indexes": [1],     # [7, 15, 23, 31]: block 0 uses window attention
    "initializer_range": 0.2,    # 0.02: too small for LoRA alone to move a random model
}


#: The real Qwen2.5-VL-3B-Instruct's config.json values, to compare with the stand-in.
REAL_3B: dict[str, Any] = {
    "hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36,
    "num_attention_heads": 16, "num_key_value_heads": 2, "vocab_size": 151936,
    "mrope_section": [16, 24, 24], "vision_depth": 32, "vision_hidden_size": 1280,
    "vision_intermediate_size": 3420, "vision_num_heads": 16,
    "fullatt_block_indexes": [7, 15, 23, 31], "window_size": 112, "patch_size": 14,
    "spatial_merge_size": 2, "tokens_per_second": 2, "tie_word_embeddings": True,
}


def architecture_rows(config: Any) -> list[tuple[str, Any, Any]]:
    """``(setting, this model, real 3B)`` rows for a loaded ``Qwen2_5_VLConfig``."""
    text, vision = config.text_config, config.vision_config
    mine = {
        "hidden_size": text.hidden_size, "intermediate_size": text.intermediate_size,
        "num_hidden_layers": text.num_hidden_layers,
        "num_attention_heads": text.num_attention_heads,
        "num_key_value_heads": text.num_key_value_heads, "vocab_size": text.vocab_size,
        "mrope_section": list(text.rope_parameters["mrope_section"]),
        "vision_depth": vision.depth, "vision_hidden_size": vision.hidden_size,
        "vision_intermediate_size": vision.intermediate_size, "vision_num_heads": vision.num_heads,
        "fullatt_block_indexes": list(vision.fullatt_block_indexes),
        "window_size": vision.window_size, "patch_size": vision.patch_size,
        "spatial_merge_size": vision.spatial_merge_size,
        "tokens_per_second": vision.tokens_per_second,
        "tie_word_embeddings": bool(config.tie_word_embeddings),
    }
    return [(key, mine[key], REAL_3B[key]) for key in REAL_3B]


def _corpus() -> list[str]:
    """A small deterministic English/Chinese corpus covering the course's tasks."""
    colours = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white", "grey"]
    colours_zh = ["红色", "绿色", "蓝色", "黄色", "紫色", "橙色", "黑色", "白色", "灰色"]
    shapes = ["circle", "square", "triangle", "star", "rectangle"]
    shapes_zh = ["圆形", "正方形", "三角形", "星形", "长方形"]
    places = ["left", "right", "top", "bottom", "centre", "top left", "bottom right"]
    places_zh = ["左边", "右边", "上面", "下面", "中间", "左上角", "右下角"]
    items = ["coffee", "tea", "bread", "milk", "apples", "rice", "noodles", "water", "sandwich"]
    items_zh = ["咖啡", "茶", "面包", "牛奶", "苹果", "米饭", "面条", "水", "三明治"]
    lines = [
        "You are a helpful assistant.",
        "Describe this image.", "What is in the picture?", "Read the text in this scan.",
        "Extract the total as JSON.", "Return the fields store, date and total as JSON.",
        "请描述图片内容。", "图片里有什么？", "请把收据的总金额提取为 JSON。", "这是一张收据。",
        "The quick brown fox jumps over the lazy dog.", "0123456789 +-*/=%.,:;!?()[]{}\"'",
        "我们用自己的图片和问答数据微调视觉语言模型。", "模型学会了看图回答问题。",
    ]
    for i, (c, czh) in enumerate(zip(colours, colours_zh, strict=True)):
        for j, (s, szh) in enumerate(zip(shapes, shapes_zh, strict=True)):
            p, pzh = places[(i + j) % len(places)], places_zh[(i + j) % len(places)]
            lines += [
                f"What colour is the {s}? The {s} is {c}.",
                f"There is a {c} {s} at the {p} of the image.",
                f"How many {s}s are there? There are {i + j + 1}.",
                f"图中{pzh}有一个{czh}的{szh}。", f"这个{szh}是什么颜色？{czh}。",
            ]
    for i, (item, item_zh) in enumerate(zip(items, items_zh, strict=True)):
        price = f"{(i + 1) * 3.25:.2f}"
        lines += [
            f'{{"store": "Corner Shop", "date": "2024-0{i % 9 + 1}-1{i}", "total": "{price}"}}',
            f"{item} x{i + 1}  {price}", f"TOTAL {price}", f"Thank you for shopping with us! #{i}",
            f"{item_zh} {i + 1}份 合计 {price} 元", f'{{"商店": "街角小店", "总计": "{price}"}}',
        ]
    return lines


def build_tokenizer() -> Any:
    """Train the byte-level BPE and wrap it in the real ``Qwen2Tokenizer`` class."""
    from tokenizers import (
        Regex,
        Tokenizer,
        models,
        normalizers,
        pre_tokenizers,
        trainers,
    )
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    bpe = Tokenizer(models.BPE())
    # The same normaliser and pre-tokeniser as Qwen2's tokenizer: NFC, Qwen's split regex, bytes.
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_SIZES["bpe_vocab"], show_progress=False, special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(_corpus() * 3, trainer)
    trained = json.loads(bpe.to_str())["model"]
    return qwen2_tokenizer(trained["vocab"], trained["merges"])


def build_processor() -> Any:
    """The ``Qwen2_5_VLProcessor`` with the hub's image settings and the tiny tokenizer."""
    return qwen_processor(build_tokenizer())


def build_config(tokenizer: Any, vocab_size: int | None = None) -> Any:
    """A ``Qwen2_5_VLConfig`` with the real structure at tiny size (``vocab_size``: the
    embedding's rows; default the tokenizer's, padded to a multiple of 64)."""
    tok = tokenizer.convert_tokens_to_ids
    vocab_size = vocab_size or -(-len(tokenizer) // 64) * 64  # padded: the real has 151936 rows
    ids = {token: tok(token) for token in SPECIAL_TOKENS}
    return qwen25vl_config(TINY_SIZES, vocab_size, ids)


def real_3b_config() -> Any:
    """The real Qwen2.5-VL-3B-Instruct's configuration, built offline from :data:`REAL_3B`
    (for the memory estimate and the GPU check's random 3B: no download)."""
    ids = {token: REGULAR_TOKENS + i for i, token in enumerate(SPECIAL_TOKENS)}
    return qwen25vl_config({**REAL_3B, "initializer_range": 0.02}, REAL_3B["vocab_size"], ids)


def qwen25vl_config(sizes: dict[str, Any], vocab_size: int, ids: dict[str, int]) -> Any:
    """A ``Qwen2_5_VLConfig`` of the real structure with the given sizes (keys as in
    :data:`TINY_SIZES`) and special-token ids."""
    from transformers import Qwen2_5_VLConfig

    s = sizes
    head_dim = s["hidden_size"] // s["num_attention_heads"]
    if sum(s["mrope_section"]) * 2 != head_dim:
        raise ValueError("M-RoPE sections must sum to head_dim / 2")
    return Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=vocab_size, hidden_size=s["hidden_size"],
            intermediate_size=s["intermediate_size"], num_hidden_layers=s["num_hidden_layers"],
            num_attention_heads=s["num_attention_heads"],
            num_key_value_heads=s["num_key_value_heads"], max_position_embeddings=32768,
            rope_parameters={"rope_type": "default", "mrope_section": s["mrope_section"],
                             "rope_theta": 1000000.0},
            rms_norm_eps=1e-6, initializer_range=s["initializer_range"], tie_word_embeddings=True,
            bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"], max_window_layers=s["num_hidden_layers"],
        ),
        vision_config=dict(
            depth=s["vision_depth"], hidden_size=s["vision_hidden_size"],
            intermediate_size=s["vision_intermediate_size"], num_heads=s["vision_num_heads"],
            out_hidden_size=s["hidden_size"], fullatt_block_indexes=s["fullatt_block_indexes"],
            patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
            tokens_per_second=2, initializer_range=s["initializer_range"],
        ),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )


def _write_build(out: Path, seed: int, real_tokenizer: bool = False) -> None:
    """Build everything into ``out`` (an empty folder); ``real_tokenizer``: with Qwen's own
    tokenizer and the real 151,936-row embedding (a variant ``benchmarks/real_vocab.py``
    measures), instead of the stand-in's 1,024."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    if real_tokenizer:
        from .real_tokenizer import build_real_tokenizer

        processor = qwen_processor(build_real_tokenizer())
    else:
        processor = build_processor()
    tokenizer = processor.tokenizer
    config = build_config(tokenizer, REAL_3B["vocab_size"] if real_tokenizer else None)
    fork_devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=fork_devices):  # leave the caller's RNG untouched
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config)
    gen = model.generation_config  # as on the hub: stop at <|im_end|> or <|endoftext|>
    gen.bos_token_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    gen.pad_token_id = tokenizer.pad_token_id
    gen.eos_token_id = [tokenizer.eos_token_id, tokenizer.pad_token_id]
    gen.do_sample, gen.temperature, gen.top_p, gen.top_k = True, 0.1, 0.001, 1
    gen.repetition_penalty = 1.05
    with quiet_loading():
        model.save_pretrained(out)
    processor.save_pretrained(out)
    marker = {"builder": "qvl_helpers.tiny", "builder_version": BUILDER_VERSION, "seed": seed,
              "note": "random weights: a structural stand-in for Qwen/Qwen2.5-VL-3B-Instruct"}
    if real_tokenizer:
        marker["tokenizer"] = "real (qvl_helpers.real_tokenizer)"
    (out / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")


def _install_build(out: Path, seed: int, *, replace: bool, real_tokenizer: bool = False) -> Path:
    """Build into ``out`` through :func:`~qvl_helpers.outputs.build_in_place` (a killed build
    never leaves a half-written model; with ``replace`` an earlier build is replaced)."""
    return build_in_place(out, lambda tmp: _write_build(tmp, seed, real_tokenizer),
                          is_stand_in, replace=replace)


def build_tiny_model(out: str | Path, seed: int = 0, *, real_tokenizer: bool = False) -> Path:
    """Build the tiny model into ``out`` and return its path.

    An existing folder is replaced only when it is empty or holds an earlier tiny build.

    Raises:
        ModelError: ``out`` exists and holds something else (nothing is overwritten).
    """
    out = Path(out).expanduser().resolve()
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not is_stand_in(out))):
        raise ModelError("the output folder exists and is not an earlier tiny-model build.",
                         file=out, fix="choose a new or empty folder (nothing was overwritten).")
    return _install_build(out, seed, replace=True, real_tokenizer=real_tokenizer)


def ensure_tiny_model(folder: str | Path, seed: int = 0) -> Path:
    """Return ``folder`` holding a complete tiny build, building it first if it is missing.

    Safe when several processes call it at once: each builds privately and the first complete
    build to be moved into place wins.
    """
    folder = Path(folder).expanduser().resolve()
    if is_stand_in(folder):
        return folder
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise ModelError("the tiny-model cache folder holds something else.", file=folder,
                         fix="delete that folder or set QVL_CACHE_DIR to another place.")
    return _install_build(folder, seed, replace=False)


def ensure_model(choice: ModelChoice) -> str:
    """Make the chosen model loadable and return what to pass to ``from_pretrained``.

    Builds the tiny stand-in into its cache folder when it is missing (a few seconds, offline);
    a hub model is left to ``from_pretrained`` to download on first use.
    """
    if choice.is_tiny:
        return str(ensure_tiny_model(choice.path))
    return choice.path
