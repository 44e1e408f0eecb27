"""Qwen2.5-VL facts the package relies on, written once (see the shared facts file).

The vision encoder cuts an image into 14×14-pixel patches and merges each 2×2 group into one
visual token, so one token covers 28×28 = 784 pixels; the image processor refuses an aspect ratio
over 200:1. The special tokens are those of the real tokenizer (the tiny stand-in copies them).

The image arithmetic (:func:`smart_resize`, :func:`visual_tokens`, :func:`sample_length`) is
plain Python, so the lowest layer (the data doctor included) counts tokens without importing
torch or transformers; ``tests/test_tokens.py`` cross-checks it with transformers' own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

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

#: The hub's image processor settings (preprocessor_config.json): the pixel range images are
#: resized into when nothing narrower is asked for (4 and 16384 visual tokens), and CLIP's
#: normalisation.
HUB_MIN_PIXELS = 3136
HUB_MAX_PIXELS = 12845056
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def tokens_in(pixels: int) -> int:
    """Visual tokens that ``pixels`` (a max_pixels or min_pixels value) allows per image."""
    return pixels // PIXELS_PER_TOKEN


def smart_resize(height: int, width: int, min_pixels: int, max_pixels: int,
                 factor: int = TOKEN_SIDE) -> tuple[int, int]:
    """The (height, width) the Qwen2.5-VL image processor resizes an image to: transformers'
    ``smart_resize`` (what the model really gets) step for step, with the course's argument
    order.

    Both sides are rounded to the nearest multiple of ``factor`` (Python's ``round``: halves to
    even); if that area is over ``max_pixels`` both are scaled down and floored (to ``factor`` at
    least), if under ``min_pixels`` scaled up and ceiled; the aspect ratio is kept.

    Raises:
        ValueError: aspect ratio over 200 (the processor refuses those too), with transformers'
            message. A side of 0 pixels raises ``ZeroDivisionError``, as in transformers.
    """
    ratio = max(height, width) / min(height, width)
    if ratio > MAX_ASPECT:
        raise ValueError(f"absolute aspect ratio must be smaller than {MAX_ASPECT}, got {ratio}")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def visual_tokens(width: int, height: int, min_pixels: int, max_pixels: int) -> int:
    """Visual tokens for one image of ``width``×``height`` pixels (note: width first)."""
    h, w = smart_resize(height, width, min_pixels, max_pixels)
    return (h // TOKEN_SIDE) * (w // TOKEN_SIDE)


@dataclass(frozen=True)
class ImageLimits:
    """The pixel range every image is resized into (``[min_pixels, max_pixels]``, Qwen's
    :func:`smart_resize`). Set once from the settings on the processor that training uses and
    saves with the adapter; evaluation, export and chat read it back from the processor."""

    min_pixels: int = HUB_MIN_PIXELS
    max_pixels: int = HUB_MAX_PIXELS

    @classmethod
    def of(cls, processor: Any) -> ImageLimits:
        """The limits a loaded processor resizes into (its image processor's ``size``)."""
        size = processor.image_processor.size
        return cls(int(size["shortest_edge"]), int(size["longest_edge"]))

    def apply_to(self, processor: Any) -> Any:
        """Make ``processor`` resize into these limits (saved with it by ``save_pretrained``)."""
        processor.image_processor.size = {"shortest_edge": self.min_pixels,
                                          "longest_edge": self.max_pixels}
        return processor

    def tokens(self, width: int, height: int) -> int:
        """Visual tokens of one ``width``×``height`` image (:func:`visual_tokens`)."""
        return visual_tokens(width, height, self.min_pixels, self.max_pixels)

    def resize(self, height: int, width: int) -> tuple[int, int]:
        """The (height, width) an image is resized to (:func:`smart_resize`)."""
        return smart_resize(height, width, self.min_pixels, self.max_pixels)

    @property
    def token_range(self) -> tuple[int, int]:
        """(fewest, most) visual tokens per image, at least 1 each (llama.cpp's terms)."""
        return max(1, tokens_in(self.min_pixels)), max(1, tokens_in(self.max_pixels))

    def to_dict(self) -> dict[str, int]:
        """``{"min_pixels": ..., "max_pixels": ...}``, as reports and settings spell them."""
        return {"min_pixels": self.min_pixels, "max_pixels": self.max_pixels}


@dataclass(frozen=True)
class SampleLength:
    """One conversation's length in tokens: its text (chat template included) and its images."""

    text_tokens: int
    visual_tokens: int

    @property
    def total(self) -> int:
        """Tokens the model processes for the sample."""
        return self.text_tokens + self.visual_tokens


def sample_length(processor: Any, messages: list[dict[str, Any]],
                  image_sizes: list[tuple[int, int]], limits: ImageLimits) -> SampleLength:
    """Tokens of one conversation as the collator will build it (chat template included).

    ``processor`` is any loaded processor (only its ``apply_chat_template`` and ``tokenizer`` are
    used; nothing is imported here). ``image_sizes`` are the (width, height) of its images as the
    model sees them (after EXIF orientation), in order: each image's one ``<|image_pad|>``
    expands to :func:`visual_tokens` of it.
    """
    text = processor.apply_chat_template(messages, tokenize=False)
    ids = processor.tokenizer(text, add_special_tokens=False)["input_ids"]
    pads = len(image_sizes)  # one <|image_pad|> per image before expansion
    vis = sum(limits.tokens(w, h) for w, h in image_sizes)
    return SampleLength(len(ids) - pads, vis)


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
