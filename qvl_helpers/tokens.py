"""Token arithmetic: how many tokens a sample costs, computed without running the model.

An image of H×W pixels is resized to multiples of 28 with its area kept inside
[min_pixels, max_pixels] (:func:`smart_resize`, Qwen's rule) and becomes (H/28)·(W/28) visual
tokens. A sample's length is its rendered chat text in tokens, where each image placeholder
expands to its visual tokens. The data doctor's ``too_long`` check and the token budget use this.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

PATCH = 14
MERGE = 2
FACTOR = PATCH * MERGE  # 28 pixels per visual token side
MAX_RATIO = 200


def smart_resize(height: int, width: int, min_pixels: int, max_pixels: int,
                 factor: int = FACTOR) -> tuple[int, int]:
    """The (height, width) the Qwen2.5-VL image processor resizes an image to.

    This follows transformers' ``Qwen2VLImageProcessor`` (what the model really gets).
    Both sides become multiples of ``factor`` (rounded to nearest), then the area is scaled
    down into ``max_pixels`` (flooring) or up into ``min_pixels`` (ceiling), aspect kept.

    Raises:
        ValueError: aspect ratio over 200 (the processor refuses those too).
    """
    if max(height, width) / max(1, min(height, width)) > MAX_RATIO:
        raise ValueError(f"aspect ratio over {MAX_RATIO}: {width}x{height}")
    h_bar = round(height / factor) * factor  # transformers' rule; qwen-vl-utils clamps this to
    w_bar = round(width / factor) * factor   # >= factor, which differs only for sides < 14 px
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
    """Visual tokens for one image of ``width``×``height`` pixels."""
    h, w = smart_resize(height, width, min_pixels, max_pixels)
    return (h // FACTOR) * (w // FACTOR)


@dataclass(frozen=True)
class SampleLength:
    text_tokens: int
    visual_tokens: int

    @property
    def total(self) -> int:
        return self.text_tokens + self.visual_tokens


def sample_length(processor: Any, messages: list[dict[str, Any]],
                  image_sizes: list[tuple[int, int]], min_pixels: int,
                  max_pixels: int) -> SampleLength:
    """Tokens of one conversation as the collator will build it (chat template included).

    ``image_sizes`` are the (width, height) of its images as the model sees them (after EXIF
    orientation), in order.
    """
    text = processor.apply_chat_template(messages, tokenize=False)
    ids = processor.tokenizer(text, add_special_tokens=False)["input_ids"]
    pads = len(image_sizes)  # one <|image_pad|> per image before expansion
    vis = sum(visual_tokens(w, h, min_pixels, max_pixels) for w, h in image_sizes)
    return SampleLength(len(ids) - pads, vis)
