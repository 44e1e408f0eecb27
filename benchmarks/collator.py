"""Collator throughput (samples/s): the course's collator against a reference written the way
the popular public notebooks do it (render the chat template, load and resize the images with
qwen-vl-utils' ``process_vision_info``, call the processor on the whole batch, and mask the
labels by searching for the assistant header), and against TRL's vision collator where TRL is
installed. Same records, same image limits, same processor, interleaved, best of three."""

from __future__ import annotations

import copy
import importlib.util
from typing import Any

import torch

from qvl_helpers.collate import IGNORE_INDEX, make_collator

from .common import REPO, rate

MAX_PIXELS = 200704  # the T4 preset: 256 visual tokens per image at most
MIN_PIXELS = 3136


def reference_collate(processor: Any, records: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """The public-notebook way: template, ``process_vision_info``, processor, header search."""
    from qwen_vl_utils import process_vision_info

    conversations = []
    for record in records:
        messages = copy.deepcopy(record["messages"])
        for message in messages:
            for part in message["content"]:
                if part.get("type") == "image":
                    part.update(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
        conversations.append(messages)
    texts = [processor.apply_chat_template(m, tokenize=False) for m in conversations]
    images, _ = process_vision_info(conversations)
    batch = processor(text=texts, images=images, padding=True, return_tensors="pt")
    labels = batch["input_ids"].clone()
    header = processor.tokenizer.encode("<|im_start|>assistant\n", add_special_tokens=False)
    for row, ids in enumerate(batch["input_ids"].tolist()):
        starts = [i for i in range(len(ids)) if ids[i:i + len(header)] == header]
        labels[row, :starts[-1] + len(header) if starts else len(ids)] = IGNORE_INDEX
    labels[labels == processor.tokenizer.pad_token_id] = IGNORE_INDEX
    batch["labels"] = labels
    return batch


def trl_collator(processor: Any) -> Any | None:
    """TRL's vision-language collator, or None when TRL is not installed."""
    if importlib.util.find_spec("trl") is None:
        return None
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    return DataCollatorForVisionLanguageModeling(processor)


def run(batch_size: int = 8, batches: int = 8) -> dict[str, Any]:
    from qvl_helpers.config import default_cache_dir
    from qvl_helpers.data import load_records
    from qvl_helpers.model import load_processor
    from qvl_helpers.tiny import ensure_tiny_model

    processor = load_processor(ensure_tiny_model(default_cache_dir() / "tiny-qwen2_5_vl-v1"))
    records = load_records(REPO / "data_samples" / "receipts" / "receipts.jsonl")
    chunks = [records[i * batch_size:(i + 1) * batch_size] for i in range(batches)]
    chunks = [c for c in chunks if len(c) == batch_size]
    ours = make_collator(processor, "train", min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    chunks = chunks * 4  # a few seconds per timing: shorter ones are mostly noise here
    variants = {"course collator": lambda: [ours(c) for c in chunks],
                "public-notebook reference": lambda: [reference_collate(processor, c)
                                                      for c in chunks]}
    items = batch_size * len(chunks)
    rates = {name: 0.0 for name in variants}
    for _ in range(5):  # interleaved, best of five each
        for name, work in variants.items():
            rates[name] = max(rates[name], round(rate(work, items, repeats=1), 2))
    trl = trl_collator(processor)
    return {"what": "samples/s collating the bundled receipts (higher is better)",
            "batch_size": batch_size, "samples": items, "max_pixels": MAX_PIXELS,
            "samples_per_second": rates,
            "ratio_course_to_reference": round(rates["course collator"]
                                               / rates["public-notebook reference"], 3),
            "trl": "not installed" if trl is None else "installed but not compared: its "
                   "collator expects TRL's dataset columns"}
