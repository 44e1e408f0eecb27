"""Token arithmetic: how many tokens a sample costs, computed without running the model.

An image of H×W pixels is resized to multiples of 28 with its area kept inside
[min_pixels, max_pixels] (:func:`smart_resize`, Qwen's rule) and becomes (H/28)·(W/28) visual
tokens. A sample's length is its rendered chat text in tokens, where each image placeholder
expands to its visual tokens. That arithmetic is plain Python in :mod:`~qvl_helpers.qwen` (the
lowest layer, which the data doctor's ``too_long`` check uses without torch or transformers);
this module re-exports it and builds the token budget on it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import DatasetError
from .qwen import (  # the arithmetic lives in the lowest layer; its names stay importable here
    PIXELS_PER_TOKEN,
    ImageLimits,
    SampleLength,
    sample_length,
    smart_resize,
    tokens_in,
    visual_tokens,
)

if TYPE_CHECKING:
    from .data.records import Record

__all__ = ["SampleBudget", "SampleLength", "TokenBudget", "label_mask_html", "oriented_size",
           "sample_length", "smart_resize", "token_budget", "token_pieces", "tokens_side_by_side",
           "visual_tokens"]


def oriented_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image as the model sees it, read from the header only."""
    from PIL import Image

    from .images import EXIF_ORIENTATION, QUARTER_TURNS

    with Image.open(path) as img:
        width, height = img.size
        turned = img.getexif().get(EXIF_ORIENTATION, 1) in QUARTER_TURNS
    return (height, width) if turned else (width, height)


@dataclass(frozen=True)
class SampleBudget:
    id: str
    text_tokens: int
    image_sizes: tuple[tuple[int, int], ...]
    visual_tokens: int

    @property
    def total(self) -> int:
        return self.text_tokens + self.visual_tokens


@dataclass
class TokenBudget:
    """Lengths of every sample against ``max_length``, and what to change when some don't fit."""

    samples: list[SampleBudget]
    min_pixels: int
    max_pixels: int
    max_length: int

    @property
    def limits(self) -> ImageLimits:
        """The image limits the samples were measured at."""
        return ImageLimits(self.min_pixels, self.max_pixels)

    @property
    def totals(self) -> list[int]:
        return [s.total for s in self.samples]

    @property
    def too_long(self) -> list[SampleBudget]:
        return [s for s in self.samples if s.total > self.max_length]

    def percentile(self, q: float) -> int:
        """Nearest-rank percentile of the total lengths."""
        values = sorted(self.totals)
        if not values:
            return 0
        rank = max(1, math.ceil(q / 100 * len(values)))
        return values[rank - 1]

    def longest(self, k: int = 5) -> list[SampleBudget]:
        return sorted(self.samples, key=lambda s: -s.total)[:k]

    def fitting_max_pixels(self) -> int | None:
        """The largest common training ``max_pixels`` (a multiple of 28·28) at which every
        sample fits ``max_length``, or None if even 4 visual tokens per image are too many."""
        for tokens in (16384, 4096, 2048, 1280, 1024, 768, 512, 384, 256, 192, 128, 64, 16, 4):
            pixels = tokens * PIXELS_PER_TOKEN
            if pixels > self.max_pixels or pixels < self.min_pixels:
                continue
            if all(s.text_tokens + sum(visual_tokens(w, h, self.min_pixels, pixels)
                                       for w, h in s.image_sizes) <= self.max_length
                   for s in self.samples):
                return pixels
        return None

    def advice(self) -> list[str]:
        """What to change so that every sample fits (empty when they all do)."""
        over = self.too_long
        if not over:
            return []
        needed = -(-max(self.totals) // 128) * 128
        lines = [f"{len(over)} of {len(self.samples)} samples exceed max_length "
                 f"{self.max_length}; they would be refused at training time (never cut)."]
        pixels = self.fitting_max_pixels()
        if pixels is not None and pixels < self.max_pixels:
            lines.append(f"lower max_pixels to {pixels} ({tokens_in(pixels)} visual tokens per "
                         "image at most): every sample then fits")
        lines.append(f"or raise max_length to {needed} (costs memory: activations grow with it)")
        return lines

    def text(self) -> str:
        lines = [f"{len(self.samples)} samples; tokens per sample (text + visual): "
                 f"median {self.percentile(50)}, p90 {self.percentile(90)}, "
                 f"p99 {self.percentile(99)}, max {max(self.totals, default=0)}; "
                 f"max_length {self.max_length}; max_pixels {self.max_pixels}",
                 "longest: " + ", ".join(f"{s.id} ({s.total})" for s in self.longest(3))]
        return "\n".join(lines + self.advice())

    def to_dict(self) -> dict[str, Any]:
        return {"samples": len(self.samples), "max_length": self.max_length,
                "min_pixels": self.min_pixels, "max_pixels": self.max_pixels,
                "percentiles": {str(q): self.percentile(q) for q in (50, 90, 99, 100)},
                "too_long": [s.id for s in self.too_long],
                "fitting_max_pixels": self.fitting_max_pixels(), "advice": self.advice(),
                "lengths": [{"id": s.id, "text": s.text_tokens, "visual": s.visual_tokens,
                             "total": s.total} for s in self.samples]}


def token_budget(records: Sequence[Record], processor: Any, *, max_length: int,
                 limits: ImageLimits | None = None) -> TokenBudget:
    """Measure every sample (records with resolved image paths, as from ``load_records``) at
    the image limits ``processor`` carries (``limits``: at these instead, to compare settings).

    Raises:
        DatasetError: an image the data doctor refuses too (unreadable, over the pixel cap, or
            over the 200:1 aspect limit), named with its sample; ``qvl data check`` lists all.
    """
    from .data.records import images_of

    limits = limits or ImageLimits.of(processor)
    samples = []
    for record in records:
        sizes = tuple(_checked_size(path, record) for path in images_of(record))
        try:
            length = sample_length(processor, record["messages"], list(sizes), limits)
        except ValueError as exc:
            raise DatasetError(f"extreme_aspect_ratio: {exc}; the processor cannot resize it.",
                               sample_id=record.get("id"),
                               fix="crop or pad the image (run `qvl data check` to see every "
                                   "problem).") from None
        samples.append(SampleBudget(record["id"], length.text_tokens, sizes, length.visual_tokens))
    return TokenBudget(samples, limits.min_pixels, limits.max_pixels, max_length)


def _checked_size(path: str, record: Record) -> tuple[int, int]:
    """An image's oriented size, refusing what the data doctor refuses from the header."""
    from .images import DEFAULT_PIXEL_CAP

    try:
        width, height = oriented_size(path)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"unreadable_image: {path} ({exc}).", sample_id=record.get("id"),
                           fix="re-export it as PNG or JPEG (`qvl data check` lists every "
                               "problem).") from None
    if width * height > DEFAULT_PIXEL_CAP:
        raise DatasetError(f"image_too_large: {path} is {width}x{height} = {width * height:,} "
                           f"px, over the cap of {DEFAULT_PIXEL_CAP:,} px.",
                           sample_id=record.get("id"),
                           fix="downscale it (training resizes to max_pixels anyway).")
    return width, height


def label_mask_html(processor: Any, batch: dict[str, Any], row: int = 0) -> str:
    """One sample of a training batch as HTML: trained tokens highlighted, masked tokens dimmed,
    each run of image pads collapsed to one marker with its count."""
    import html

    tokenizer = processor.tokenizer
    ids = batch["input_ids"][row].tolist()
    trained = (batch["labels"][row] != -100).tolist()
    real = batch["attention_mask"][row].bool().tolist()
    image_pad = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    pieces, i = [], 0
    while i < len(ids):
        if not real[i]:
            j = i
            while j < len(ids) and not real[j]:
                j += 1
            pieces.append(f"<span style='color:#bbb'>[padding × {j - i}]</span>")
            i = j
            continue
        if ids[i] == image_pad:
            j = i
            while j < len(ids) and ids[j] == image_pad:
                j += 1
            pieces.append("<span style='background:#e3f2fd;color:#1565c0;border-radius:3px'>"
                          f"[&lt;|image_pad|&gt; × {j - i}]</span>")
            i = j
            continue
        j = i
        while j < len(ids) and real[j] and ids[j] != image_pad and trained[j] == trained[i]:
            j += 1
        text = html.escape(tokenizer.decode(ids[i:j], skip_special_tokens=False))
        text = text.replace("\n", "↵<br>")
        style = ("background:#c8e6c9;color:#1b5e20;font-weight:bold" if trained[i]
                 else "color:#9e9e9e")
        pieces.append(f"<span style='{style}'>{text}</span>")
        i = j
    legend = ("<p><span style='background:#c8e6c9;color:#1b5e20;font-weight:bold'>trained</span>"
              " · <span style='color:#9e9e9e'>masked (-100)</span> · "
              "<span style='background:#e3f2fd;color:#1565c0'>visual tokens (masked)</span></p>")
    return (legend + "<div style='font-family:monospace;white-space:normal;line-height:1.6'>"
            + "".join(pieces) + "</div>")


def token_pieces(tokenizer: Any, text: str) -> list[tuple[str, list[int]]]:
    """``text`` as ``tokenizer`` splits it: (piece, its ids) in order. A byte-level BPE may split
    one character (a Chinese one, an emoji) over several tokens; such tokens stay together as
    one piece, so every piece is readable and the pieces join back into ``text``."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    pieces: list[tuple[str, list[int]]] = []
    start = 0
    for end in range(1, len(ids) + 1):
        piece = tokenizer.decode(ids[start:end])
        if "\ufffd" not in piece or end == len(ids):
            pieces.append((piece, ids[start:end]))
            start = end
    return pieces


def tokens_side_by_side(text: str, tokenizers: dict[str, Any]) -> str:
    """``text`` in each named tokenizer's tokens (a processor's tokenizer is taken from it): the
    count, then each piece with its id(s), pieces separated by ``|``."""
    lines = [f"{text!r}"]
    for name, tok in tokenizers.items():
        tok = getattr(tok, "tokenizer", tok)
        pieces = token_pieces(tok, text)
        count = sum(len(ids) for _, ids in pieces)
        shown = " | ".join(f"{piece}:{','.join(map(str, ids))}" for piece, ids in pieces)
        lines.append(f"  {name:<12}{count:>4} token{'s' if count != 1 else ' '}  {shown}")
    return "\n".join(lines)
