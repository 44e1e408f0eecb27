"""Padding efficiency: useful tokens / processed tokens of the course's length-grouped batches
against plain random batches, on the bundled receipts and on a generated set with a realistic
spread of image sizes and answer lengths.

Every row of a batch is padded to its longest sample, so a batch processes
``batch_size x longest`` tokens; the useful ones are the samples' own. The lengths are the
course's own token counts (``qvl tokens``), visual tokens included; the sampler is the one the
trainer uses.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from torch.utils.data import RandomSampler

from qvl_helpers.qwen import PIXELS_PER_TOKEN
from qvl_helpers.tokens import visual_tokens
from qvl_helpers.trainer import GroupedSampler

from .common import REPO

BATCH_SIZES = (2, 4, 8)


def efficiency(lengths: Sequence[int], order: Sequence[int], batch_size: int) -> float:
    """Useful / processed tokens when ``order`` is cut into batches of ``batch_size``."""
    useful = processed = 0
    for start in range(0, len(order), batch_size):
        batch = [lengths[i] for i in order[start:start + batch_size]]
        useful += sum(batch)
        processed += len(batch) * max(batch)
    return useful / processed


def compare(lengths: Sequence[int], batch_size: int, seed: int = 0) -> dict[str, float]:
    import torch

    grouped = list(GroupedSampler(lengths, batch_size, seed))
    plain = list(RandomSampler(range(len(lengths)), generator=torch.Generator().manual_seed(seed)))
    ours, random_ = efficiency(lengths, grouped, batch_size), efficiency(lengths, plain, batch_size)
    return {"batch_size": batch_size, "grouped": round(ours, 4), "random": round(random_, 4),
            "ratio": round(ours / random_, 3)}


def receipts_lengths(max_pixels: int) -> list[int]:
    """Token counts of the bundled receipts with the tiny stand-in's processor."""
    from qvl_helpers.config import default_cache_dir
    from qvl_helpers.data import load_records
    from qvl_helpers.model import load_processor
    from qvl_helpers.qwen import HUB_MIN_PIXELS, ImageLimits
    from qvl_helpers.tiny import ensure_tiny_model
    from qvl_helpers.tokens import token_budget

    processor = load_processor(ensure_tiny_model(default_cache_dir() / "tiny-qwen2_5_vl-v1"))
    records = load_records(REPO / "data_samples" / "receipts" / "receipts.jsonl")
    budget = token_budget(records, processor, max_length=100_000,
                          limits=ImageLimits(HUB_MIN_PIXELS, max_pixels))
    return budget.totals


def generated_lengths(n: int, max_pixels: int, seed: int = 0) -> list[int]:
    """A mixed set: phone photos, tall receipts, document scans and small crops, with short
    answers, JSON answers and long descriptions (lengths drawn log-normally)."""
    rng = random.Random(seed)
    kinds: list[tuple[tuple[int, int], float, float]] = [  # (size, answer median, spread)
        ((4032, 3024), 40, 0.8), ((1080, 3400), 120, 0.5), ((2480, 3508), 300, 0.6),
        ((320, 240), 8, 0.5), ((1920, 1080), 60, 0.9)]
    lengths = []
    for _ in range(n):
        (w, h), median, spread = rng.choice(kinds)
        scale = rng.uniform(0.4, 1.0)
        vis = visual_tokens(int(w * scale), int(h * scale), 4 * PIXELS_PER_TOKEN, max_pixels)
        answer = int(rng.lognormvariate(0, spread) * median)
        lengths.append(vis + 30 + answer)  # + chat template and question
    return lengths


def run() -> dict[str, Any]:
    max_pixels = 401408  # the 24 GB preset: 512 visual tokens per image at most
    sets = {"receipts (bundled)": receipts_lengths(max_pixels),
            "generated mixed set (2000)": generated_lengths(2000, max_pixels)}
    return {"what": "useful / processed tokens per epoch, batches of the course's "
                    "length-grouped sampler vs plain random batches (higher is better)",
            "max_pixels": max_pixels,
            "sets": {name: {"samples": len(lengths),
                            "results": [compare(lengths, b) for b in BATCH_SIZES]}
                     for name, lengths in sets.items()}}
