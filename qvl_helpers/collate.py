"""Batches for training and generation, with the label mask that decides what is learned.

Training batches (``mode="train"``):

* each conversation is rendered with the processor's own chat template, and its images are loaded
  with :func:`~qvl_helpers.images.load_rgb` (EXIF rotation applied, RGB, transparency on white) and
  resized into the configured ``[min_pixels, max_pixels]``;
* ``labels`` train exactly the assistant answers and each answer's closing ``<|im_end|>`` (so
  the model learns to stop), in every assistant turn; system and user text, the role headers,
  every vision token and all padding are ``-100``;
* padding is on the right with ``<|endoftext|>``, which is never the eos ``<|im_end|>``;
* every key the model needs is kept, ``mm_token_type_ids`` included (without it, transformers
  5.3+ gives image tokens text positions: no error, worse results);
* a sample longer than ``max_length`` is never cut (a cut inside the image pads breaks the
  model): it is refused with the data doctor's ``too_long`` message, or dropped and counted if
  ``on_too_long="drop"``.

Generation batches (``mode="generate"``) render everything up to the last assistant answer with
the generation prompt, pad on the left (batched generation continues from the right edge), and
carry no labels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from .data.records import Message, Record, image_parts
from .errors import ConfigError, DatasetError
from .images import load_rgb, shorten, size_problem

IGNORE_INDEX = -100


def _images(record: Record, messages: list[Message],
            transform: Callable[[Any], Any] | None = None) -> list[Any]:
    """The images of ``messages`` as the model sees them; one that cannot be decoded (changed or
    damaged since the data was checked) is an error naming the sample and the file."""
    images = []
    fix = ("run `qvl data check` on the data, then fix or replace the image; training resumes "
           "from the last checkpoint (`qvl train --resume`).")
    for part in image_parts({"messages": messages}):
        try:
            image = load_rgb(part["image"])
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise DatasetError(f"unreadable_image: {shorten(part['image'])} cannot be read "
                               f"({type(exc).__name__}: {exc}).", sample_id=record.get("id"),
                               fix=fix) from None
        problem = size_problem(image.width, image.height, part["image"])  # the doctor's rule
        if problem is not None:
            raise DatasetError(f"{problem.code}: {problem.message}.", sample_id=record.get("id"),
                               fix=fix)
        images.append(image)
    return [transform(i) for i in images] if transform else images


def prompt_messages(record: Record) -> list[Message]:
    """The conversation up to (not including) its last assistant answer."""
    messages = record["messages"]
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return messages[:last]


def answer_mask(input_ids: Sequence[int], tokenizer: Any) -> list[bool]:
    """True at the positions to train: each assistant answer and its closing ``<|im_end|>``.

    Found in token space: after every ``<|im_start|>`` followed by the tokens of ``assistant``
    and the newline that ends the role header, up to and including the next ``<|im_end|>``. If
    the answer begins with a newline that the tokenizer merged into the header's newline, that
    merged token is trained (it holds answer text).
    """
    start_id = tokenizer.convert_tokens_to_ids("<|im_start|>")
    end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    role = tokenizer.encode("assistant", add_special_tokens=False)
    newline = tokenizer.encode("\n", add_special_tokens=False)
    ids = list(input_ids)
    mask = [False] * len(ids)
    i = 0
    while i < len(ids):
        if ids[i] == start_id and ids[i + 1:i + 1 + len(role)] == role:
            j = i + 1 + len(role)
            if ids[j:j + len(newline)] == newline:
                j += len(newline)
            k = j
            while k < len(ids) and ids[k] != end_id:
                k += 1
            for p in range(j, min(k + 1, len(ids))):  # the answer and its <|im_end|>
                mask[p] = True
            i = k + 1
        else:
            i += 1
    return mask


@dataclass
class Collator:
    """Callable that turns a list of canonical records (image paths resolved, as returned by
    :func:`~qvl_helpers.data.load_records`) into a model batch. Build it with
    :func:`make_collator`."""

    processor: Any
    mode: str = "train"
    min_pixels: int | None = None
    max_pixels: int | None = None
    max_length: int | None = None
    on_too_long: str = "error"
    dropped: list[str] = field(default_factory=list)  # ids dropped as too long
    samples_seen: int = 0  # records this collator has batched (per process)
    image_transform: Callable[[Any], Any] | None = None  # e.g. the blank-image ablation

    def __post_init__(self) -> None:
        if self.mode not in ("train", "generate"):
            raise ConfigError(f"mode must be 'train' or 'generate', not {self.mode!r}.")
        if self.on_too_long not in ("error", "drop"):
            raise ConfigError(f"on_too_long must be 'error' or 'drop', not {self.on_too_long!r}.")
        tok = self.processor.tokenizer
        if tok.pad_token_id is None or tok.pad_token_id == tok.eos_token_id:
            raise ConfigError(
                f"the tokenizer's pad token ({tok.pad_token!r}) must exist and differ from its "
                f"eos ({tok.eos_token!r}): masking padding would also mask the stop token.",
                fix="keep Qwen's pad <|endoftext|>; never set pad_token = eos_token.")

    def reset_counts(self) -> None:
        """Forget what was batched so far (a check before training is not training)."""
        self.samples_seen = 0
        self.dropped.clear()

    def _image_kwargs(self) -> dict[str, Any]:
        ip = self.processor.image_processor
        size = {"shortest_edge": self.min_pixels or ip.size["shortest_edge"],
                "longest_edge": self.max_pixels or ip.size["longest_edge"]}
        return {"size": size}

    def _process(self, records: list[Record]) -> dict[str, torch.Tensor]:
        generate = self.mode == "generate"
        texts, images = [], []
        for record in records:
            messages = prompt_messages(record) if generate else record["messages"]
            texts.append(self.processor.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=generate))
            images.extend(_images(record, messages, self.image_transform))
        return self.processor(
            text=texts, images=images or None, padding=True, return_tensors="pt",
            padding_side="left" if generate else "right", images_kwargs=self._image_kwargs())

    def __call__(self, records: Sequence[Record]) -> dict[str, torch.Tensor]:
        records = list(records)
        self.samples_seen += len(records)
        batch = self._process(records)
        if self.max_length is not None:
            lengths = batch["attention_mask"].sum(dim=1).tolist()
            too_long = [(r, n) for r, n in zip(records, lengths, strict=True)
                        if n > self.max_length]
            if too_long and self.on_too_long == "error":
                record, n = too_long[0]
                raise DatasetError(
                    f"too_long: {n} tokens > max_length {self.max_length}; a sample is never cut "
                    "inside an image.", sample_id=record["id"],
                    fix="lower max_pixels or raise max_length (see `qvl tokens`), or pass "
                        "on_too_long='drop' to skip such samples.")
            if too_long:
                self.dropped.extend(r["id"] for r, _ in too_long)
                keep = [r for r, n in zip(records, lengths, strict=True) if n <= self.max_length]
                if not keep:
                    raise DatasetError("every sample of this batch is longer than max_length.",
                                       fix="lower max_pixels or raise max_length.")
                records = keep
                batch = self._process(records)
        batch = dict(batch)
        if self.mode == "train":
            labels = torch.full_like(batch["input_ids"], IGNORE_INDEX)
            tokenizer = self.processor.tokenizer
            for row, ids in enumerate(batch["input_ids"].tolist()):
                mask = answer_mask(ids, tokenizer)
                keep = torch.tensor(mask) & batch["attention_mask"][row].bool()
                labels[row][keep] = batch["input_ids"][row][keep]
            batch["labels"] = labels
        return batch


def make_collator(processor: Any, mode: str = "train", *, min_pixels: int | None = None,
                  max_pixels: int | None = None, max_length: int | None = None,
                  on_too_long: str = "error",
                  image_transform: Callable[[Any], Any] | None = None) -> Collator:
    """The collator for ``mode="train"`` (right padding, labels) or ``"generate"`` (left padding,
    prompt only). ``min_pixels``/``max_pixels`` default to the processor's own settings;
    ``image_transform`` is applied to every image after loading (used by ablations)."""
    return Collator(processor, mode, min_pixels, max_pixels, max_length, on_too_long,
                    image_transform=image_transform)
