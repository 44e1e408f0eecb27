"""Qwen2.5-VL facts the package relies on, written once (see the shared facts file).

The vision encoder cuts an image into 14×14-pixel patches and merges each 2×2 group into one
visual token, so one token covers 28×28 = 784 pixels; the image processor refuses an aspect ratio
over 200:1. The special tokens are those of the real tokenizer (the tiny stand-in copies them).
"""

from __future__ import annotations

REAL_MODEL_ID = "Qwen/Qwen2.5-VL-3B-Instruct"
PATCH = 14                      # pixels per vision patch side
MERGE = 2                       # patches merged per visual token side
TOKEN_SIDE = PATCH * MERGE      # 28 pixels per visual token side
PIXELS_PER_TOKEN = TOKEN_SIDE ** 2  # 784
MAX_ASPECT = 200                # longer:shorter side; the processor refuses more

#: The real tokenizer's special tokens (ids 151643 ... 151656), in order.
SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>",
    "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>",
    "<|quad_start|>", "<|quad_end|>",
    "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]
#: Tokens the real tokenizer adds after the special ones (151657 ... 151664), not marked special.
EXTRA_TOKENS = [
    "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
    "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
]


def tokens_in(pixels: int) -> int:
    """Visual tokens that ``pixels`` (a max_pixels or min_pixels value) allows per image."""
    return pixels // PIXELS_PER_TOKEN
