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


#: The hub's image processor settings (preprocessor_config.json): the pixel range images are
#: resized into when nothing narrower is asked for, and CLIP's normalisation.
HUB_MIN_PIXELS = 3136
HUB_MAX_PIXELS = 12845056
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

#: Qwen2.5-VL-Instruct's chat template (chat_template.json on the hub). Split over lines here for
#: reading only: the adjacent strings join into the exact original, which has no whitespace
#: control, so every character between the tags is output.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


# ----------------------------------------------------------------------------- what LoRA can train

#: The language model's attention and MLP projections, by full-name pattern: a bare list of names
#: would also catch the vision MLP's gate/up/down_proj.
LANGUAGE = r".*language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
VISION = r".*visual\.blocks\.\d+\.(attn\.(qkv|proj)|mlp\.(gate|up|down)_proj)"
TRAINED_PARTS = {
    "language": (LANGUAGE, []),
    "language+vision": (f"({LANGUAGE}|{VISION})", []),
    "language+merger": (LANGUAGE, ["merger"]),
}
