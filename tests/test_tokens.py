"""Token arithmetic matches the processor (and Qwen's own helper); the budget finds what won't fit."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from qvl_helpers.cli import main
from qvl_helpers.data import load_records
from qvl_helpers.qwen import MAX_ASPECT, TOKEN_SIDE, ImageLimits
from qvl_helpers.tokens import oriented_size, smart_resize, token_budget, visual_tokens

REPO = Path(__file__).resolve().parent.parent
TRAINING_RANGES = [(3136, 12845056), (256 * 784, 1280 * 784), (3136, 12544), (3136, 401408)]


def _random_sizes(n: int, seed: int) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    sizes = []
    while len(sizes) < n:
        w, h = (int(10 ** rng.uniform(1.18, 3.9)) for _ in range(2))  # 15 px .. ~8000 px
        if max(w, h) / min(w, h) <= 200:
            sizes.append((w, h))
    return sizes


def test_matches_qwen_vl_utils_on_random_sizes() -> None:
    """Qwen's helper package agrees on every realistic size. Known divergences (see
    test_known_divergences): sides of 14 px or less, and very elongated images shrunk so far
    that qwen-vl-utils floors the short side to 0."""
    from qwen_vl_utils import smart_resize as qwen_smart_resize

    compared = 0
    for w, h in _random_sizes(300, seed=0):
        for lo, hi in TRAINING_RANGES:
            theirs = qwen_smart_resize(h, w, 28, lo, hi)
            ours = smart_resize(h, w, lo, hi)
            if 0 in theirs:
                assert min(ours) == 28
                continue
            assert ours == theirs, (w, h, lo, hi)
            compared += 1
    assert compared >= 200 * len(TRAINING_RANGES)


def test_matches_the_processor(processor) -> None:
    """What the model really gets: image_grid_thw from the processor itself."""
    ip = processor.image_processor
    sizes = _random_sizes(40, seed=1) + [(28, 28), (16, 600), (5000, 30), (4000, 3000), (1, 1)]
    for w, h in sizes:
        for lo, hi in [(3136, 12544), (3136, 401408)]:
            try:
                expected = smart_resize(h, w, lo, hi)
            except ValueError:  # aspect > 200: the processor refuses it too
                with pytest.raises(ValueError):
                    ip(Image.new("RGB", (w, h)), size={"shortest_edge": lo, "longest_edge": hi})
                continue
            out = ip(Image.new("RGB", (w, h)), size={"shortest_edge": lo, "longest_edge": hi})
            _, gh, gw = out["image_grid_thw"][0].tolist()
            assert (gh * 14, gw * 14) == expected, (w, h, lo, hi)
            assert visual_tokens(w, h, lo, hi) == gh * gw // 4


def test_known_divergences() -> None:
    """Where qwen-vl-utils and transformers differ, we follow transformers (the model's input).
    Both cases are refused by the data doctor anyway (image_too_small under 28 px)."""
    from qwen_vl_utils import smart_resize as qwen_smart_resize

    assert smart_resize(321, 14, 3136, 12845056) == (280, 28)      # 14 px side rounds to 0
    assert qwen_smart_resize(321, 14, 28, 3136, 12845056) == (308, 28)  # clamped to 28 first
    assert smart_resize(603317, 4532, 3136, 12544) == (1288, 28)
    assert qwen_smart_resize(603317, 4532, 28, 3136, 12544) == (1288, 0)


def _transformers_resize(height: int, width: int, lo: int, hi: int) -> tuple[int, int]:
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize as theirs

    return theirs(height, width, factor=TOKEN_SIDE, min_pixels=lo, max_pixels=hi)


def _outcome(resize, height: int, width: int, lo: int, hi: int) -> object:
    """A resize's result, or the type and message of what it raised."""
    try:
        return resize(height, width, lo, hi)
    except (ValueError, ZeroDivisionError) as exc:
        return type(exc), str(exc)


def _sweep_cases(n: int, seed: int) -> list[tuple[int, int, int, int]]:
    """(height, width, min_pixels, max_pixels): the edges (1 px sides, halves that round to even,
    exact multiples of 28, aspect ratios at and just over 200, min == max, a range below one
    token), then sizes and limits drawn log-uniformly."""
    sides = [1, 2, 13, 14, 15, 27, 28, 29, 41, 42, 43, 70, 98, 112, 999, 28 * 143, 8192]
    limits = TRAINING_RANGES + [(784, 784), (3136, 3136), (12544, 12544), (1, 1), (1, 784),
                                (5000, 5000), (784 * 7 + 1, 784 * 7 + 1)]
    pairs = [(h, w) for h in sides for w in sides]
    pairs += [(s, s * MAX_ASPECT + d) for s in (1, 2, 14, 28, 100) for d in (-1, 0, 1)]
    pairs += [(w, h) for h, w in pairs]
    cases = [(h, w, lo, hi) for h, w in pairs for lo, hi in limits]
    rng = random.Random(seed)
    while len(cases) < len(pairs) * len(limits) + n:
        h, w = (max(1, int(10 ** rng.uniform(0, 4.3))) for _ in range(2))  # 1 px .. ~20000 px
        lo = int(10 ** rng.uniform(0, 7.2))
        hi = lo if rng.random() < 0.1 else lo + int(10 ** rng.uniform(0, 7.2))
        cases.append((h, w, lo, hi))
    return cases


def test_matches_transformers_smart_resize_on_a_sweep() -> None:
    """The plain-Python arithmetic (qwen.py) gives exactly what transformers' ``smart_resize``
    gives, refusals included (same error type and message), over thousands of sizes and limits."""
    cases = _sweep_cases(4000, seed=2)
    refused = 0
    for h, w, lo, hi in cases:
        theirs = _outcome(_transformers_resize, h, w, lo, hi)
        assert _outcome(smart_resize, h, w, lo, hi) == theirs, (h, w, lo, hi)
        refused += isinstance(theirs[0], type)
    assert refused > 0 and len(cases) - refused > 4000  # both outcomes, thousands resized


@settings(max_examples=1500, derandomize=True, deadline=None)
@given(st.integers(1, 30_000), st.integers(1, 30_000), st.integers(1, 20_000_000),
       st.integers(0, 20_000_000))
def test_matches_transformers_smart_resize_property(height: int, width: int, lo: int,
                                                    extra: int) -> None:
    """Any size and any range with min_pixels <= max_pixels: the same outcome as transformers."""
    theirs = _outcome(_transformers_resize, height, width, lo, lo + extra)
    assert _outcome(smart_resize, height, width, lo, lo + extra) == theirs


def test_refuses_what_transformers_refuses() -> None:
    """Over 200:1 is refused with transformers' ValueError (the data doctor's
    extreme_aspect_ratio); exactly 200:1 is resized; a 0 px side fails as in transformers."""
    lo, hi = TRAINING_RANGES[0]
    for h, w in [(10, 3000), (3000, 10), (1, MAX_ASPECT + 1), (28, 28 * MAX_ASPECT + 1)]:
        with pytest.raises(ValueError) as ours:
            smart_resize(h, w, lo, hi)
        with pytest.raises(ValueError) as theirs:
            _transformers_resize(h, w, lo, hi)
        assert str(ours.value) == str(theirs.value)
    assert smart_resize(1, MAX_ASPECT, lo, hi) == _transformers_resize(1, MAX_ASPECT, lo, hi)
    with pytest.raises(ZeroDivisionError):
        smart_resize(0, 28, lo, hi)


def test_tokens_delegates_to_the_lowest_layer() -> None:
    """tokens.py keeps its public names; they are qwen.py's plain-Python functions."""
    from qvl_helpers import qwen, tokens

    assert tokens.smart_resize is qwen.smart_resize
    assert tokens.visual_tokens is qwen.visual_tokens
    assert tokens.sample_length is qwen.sample_length


def test_known_values() -> None:
    assert visual_tokens(112, 112, 3136, 12845056) == 16
    assert visual_tokens(4000, 3000, 3136, 1280 * 784) <= 1280
    assert visual_tokens(10, 10, 3136, 12845056) == 4  # scaled up to min_pixels
    with pytest.raises(ValueError):
        smart_resize(10, 3000, 3136, 12845056)


def test_oriented_size_reads_exif(tmp_path: Path) -> None:
    img = Image.new("RGB", (80, 40))
    exif = img.getexif()
    exif[0x0112] = 6
    img.save(tmp_path / "r.jpg", exif=exif)
    assert oriented_size(tmp_path / "r.jpg") == (40, 80)


def test_budget_and_advice(processor) -> None:
    records = load_records(REPO / "data_samples" / "receipts" / "receipts.jsonl")
    fits = token_budget(records, processor, max_length=4096, limits=ImageLimits(3136, 401408))
    assert fits.too_long == [] and fits.advice() == []
    tight = token_budget(records, processor, max_length=fits.percentile(50),
                         limits=ImageLimits(3136, 401408))
    assert 0 < len(tight.too_long) < len(records)
    pixels = tight.fitting_max_pixels()
    assert pixels is not None and pixels < 401408
    smaller = token_budget(records, processor, max_length=tight.max_length,
                           limits=ImageLimits(3136, pixels))
    assert smaller.too_long == []  # the advice really works
    assert any(str(pixels) in line for line in tight.advice())


def test_sample_length_agrees_with_the_collator(processor) -> None:
    from qvl_helpers.collate import make_collator

    records = load_records(REPO / "data_samples" / "formats" / "messages.jsonl")
    budget = token_budget(records, processor, max_length=9999, limits=ImageLimits(3136, 50176))
    batch = make_collator(processor, max_pixels=50176)(records)
    assert batch["attention_mask"].sum(dim=1).tolist() == budget.totals


def test_tokens_cli(tiny_dir: Path, tmp_path: Path) -> None:
    data = str(REPO / "data_samples" / "receipts" / "receipts.jsonl")
    assert main(["tokens", data, "--model", str(tiny_dir), "--max-length", "4096"]) == 0
    report = tmp_path / "t.json"
    assert main(["tokens", data, "--model", str(tiny_dir), "--max-length", "100",
                 "--json", str(report)]) == 1
    assert report.exists()
