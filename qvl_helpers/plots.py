"""Figures for the notebooks (matplotlib). Each function returns the figure it draws, so a
notebook shows it and a script can ``savefig`` it."""

from __future__ import annotations

import re
import textwrap
import unicodedata
import warnings
from collections.abc import Sequence
from functools import cache
from typing import Any

import matplotlib.pyplot as plt
from matplotlib import font_manager
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure

from .data.records import Record, images_of
from .images import load_rgb
from .qwen import HUB_MIN_PIXELS, tokens_in

CJK_FONTS = ("Noto Sans CJK SC", "Noto Sans Mono CJK SC", "WenQuanYi Zen Hei", "SimHei",
             "Microsoft YaHei", "PingFang SC", "Source Han Sans SC")
_CJK = re.compile(r"[\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef]")


def _known_cjk_fonts() -> list[str]:
    """The CJK fonts of :data:`CJK_FONTS` in matplotlib's font list, in that order."""
    installed = {f.name for f in font_manager.fontManager.ttflist}
    return [name for name in CJK_FONTS if name in installed]


def refresh_font_list() -> list[str]:
    """Add the system's font files that matplotlib's font list lacks, and save the list.

    matplotlib reads its font list from a cache (``fontlist-*.json`` under its cache folder)
    built the first time it ran, so a font installed afterwards (``apt-get install
    fonts-noto-cjk``, then a kernel restart) stays unknown to it. Each missing file is added to
    the running font manager (the one every figure uses) and the cache is written again, so the
    next process finds it at once. Returns the files added."""
    from pathlib import Path

    import matplotlib

    manager = font_manager.fontManager
    known = {f.fname for f in manager.ttflist}
    added = []
    for path in sorted(font_manager.findSystemFonts()):
        if path in known:
            continue
        try:
            manager.addfont(path)
        except (OSError, RuntimeError, ValueError):  # a file FreeType cannot read: skipped
            continue
        added.append(path)
    if added:
        cache = Path(matplotlib.get_cachedir(),
                     f"fontlist-v{font_manager.FontManager.__version__}.json")
        font_manager.json_dump(manager, cache)
    return added


@cache
def text_fonts() -> list[str]:
    """A monospace font plus the first installed CJK font as fallback, so that Chinese text
    renders where such a font exists (the HTML sample browser shows it everywhere). A CJK font
    installed after matplotlib built its font cache is found too (:func:`refresh_font_list`)."""
    found = _known_cjk_fonts()
    if not found and refresh_font_list():
        found = _known_cjk_fonts()
    return ["DejaVu Sans Mono", *found[:1]]


def fonts_for(text: str) -> list[str]:
    """:func:`text_fonts` for ``text``; the first time CJK text meets a machine without a CJK
    font, one clear hint instead of a warning per missing glyph at every draw."""
    fonts = text_fonts()
    if len(fonts) == 1 and _CJK.search(text):
        _no_cjk_font_hint()
    return fonts


@cache
def _no_cjk_font_hint() -> None:
    print("Note: no CJK font is installed, so Chinese/Japanese/Korean text shows as boxes in "
          "figures (the HTML views show it properly). Install one (Debian/Ubuntu/Colab: "
          "apt-get install fonts-noto-cjk), then restart the kernel.")
    # The hint says it all; matplotlib would repeat "Glyph ... missing from font" per character.
    warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from font")


def _cells(text: str) -> int:
    """Columns ``text`` takes in a monospace font: two for each wide (CJK) character."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def wrap_cells(text: str, width: int) -> list[str]:
    """``text`` in lines of at most ``width`` columns (:func:`_cells`): words are kept whole
    where they fit, Chinese may break between any two characters (as it is typeset)."""
    lines, line = [], ""
    for token in re.findall(rf"{_CJK.pattern}|[^\s\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff"
                            rf"\uff00-\uffef]+|\s+", text):
        if token.isspace():
            line += " " if line else ""
            continue
        while _cells(token) > width:  # a word longer than a line: cut it
            cut = max(1, max(i for i in range(len(token) + 1)
                             if _cells(line + token[:i]) <= width))
            lines.append(line + token[:cut])
            line, token = "", token[cut:]
        if _cells(line + token) > width:
            lines.append(line.rstrip())
            line = ""
        line += token
    return [*lines, line.rstrip()] if line.strip() else lines


def conversation_text(record: Record, width: int = 38, limit: int = 6, max_lines: int = 6) -> str:
    """A short text rendering of a record's turns ("[image]" for each image part), each turn in
    at most two lines of ``width`` columns: whole turns, at most ``limit`` of them in at most
    ``max_lines`` lines, the last line saying how many turns were left out."""
    blocks = []
    for message in record["messages"]:
        text = "".join("[image] " if p["type"] == "image" else p["text"] for p in message["content"])
        lines = wrap_cells(f"{message['role'][0].upper()}: {' '.join(text.split())}", width)
        if len(lines) > 2:
            lines = [lines[0], wrap_cells(lines[1], width - 2)[0] + " …"]
        blocks.append(lines)
    if len(blocks) <= limit and sum(map(len, blocks)) <= max_lines:
        return "\n".join(line for block in blocks for line in block)
    kept: list[str] = []
    shown = 0
    for block in blocks[:limit]:
        if len(kept) + len(block) > max_lines - 1:  # one line kept for the note
            break
        kept += block
        shown += 1
    hidden = len(blocks) - shown
    return "\n".join([*kept, f"… (+{hidden} more turn{'s' if hidden != 1 else ''})"])


def sample_grid(records: Sequence[Record], cols: int = 4,
                captions: Sequence[str] | None = None) -> Figure:
    """Images of ``records`` (their first image, as the model sees it) with the conversation
    under each, or a custom caption. Cells are laid out by hand, in inches: a layout engine
    does not see where a caption under an aspect-locked image ends, so each row gets the
    room its longest caption needs."""
    title_h, image_h, cell_w, line_h = 0.3, 2.6, 3.2, 8 * 1.25 / 72  # inches; 8 pt captions
    texts = list(captions) if captions is not None else [conversation_text(r) for r in records]
    rows = max(1, -(-len(records) // cols))
    heights = [title_h + image_h + 0.15 + line_h * max(
        [t.count("\n") + 1 for t in texts[r * cols:(r + 1) * cols]] or [0]) for r in range(rows)]
    width, height = cell_w * cols, sum(heights)
    fig = plt.figure(figsize=(width, height))
    for i, (record, caption) in enumerate(zip(records, texts, strict=False)):
        row, col = divmod(i, cols)
        bottom = height - sum(heights[:row]) - title_h - image_h
        ax = fig.add_axes((((col * cell_w) + 0.1) / width, bottom / height,
                           (cell_w - 0.2) / width, image_h / height))
        ax.axis("off")
        ax.set_anchor("NW")  # the image in its cell's top left corner: a caption only moves up
        images = images_of(record)
        try:
            ax.imshow(load_rgb(images[0]) if images else [[[1.0, 1.0, 1.0]]])
        except Exception as exc:
            ax.text(0.5, 0.5, f"cannot show image:\n{type(exc).__name__}", ha="center",
                    va="center", color="crimson", transform=ax.transAxes)
        extra = f" (+{len(images) - 1} more)" if len(images) > 1 else ""
        title = f"{record['id']}{extra}"
        ax.set_title(title, fontsize=9, family=fonts_for(title))
        ax.annotate(caption, (0, 0), xycoords="axes fraction", xytext=(0, -4),
                    textcoords="offset points", va="top", fontsize=8, family=fonts_for(caption))
    return fig


def problem_samples(path: str, report: Any, image_root: str | None = None,
                    limit: int = 8) -> Figure:
    """The samples the data doctor complained about, each shown with what is wrong with it."""
    from pathlib import Path

    from .data.readers import read_records

    root = Path(image_root) if image_root else Path(path).parent
    by_line: dict[int, list[str]] = {}
    for p in report.problems:
        if p.line is not None:
            by_line.setdefault(p.line, []).append(f"{p.code}")
    shown, captions = [], []
    for raw in read_records(path):
        if raw.line not in by_line or len(shown) >= limit:
            continue
        record = raw.record or _displayable(raw.draft) or {
            "id": raw.source_id or f"line {raw.line}", "messages": []}
        record = {"id": record["id"], "messages": [
            {"role": m["role"], "content": [_confined_part(c, root) for c in m["content"]]}
            for m in record["messages"]]}
        shown.append(record)
        problems = ", ".join(by_line[raw.line])
        captions.append(textwrap.fill(f"line {raw.line}: {problems}", width=36) + "\n"
                        + conversation_text(record, limit=2))
    return sample_grid(shown, cols=4, captions=captions)


def _confined_part(part: dict[str, Any], root: Any) -> dict[str, Any]:
    """An image part with its path resolved inside ``root``; a path that escapes it is never
    opened, not even for display."""
    from .images import ImageProblem, resolve_confined

    if part["type"] != "image":
        return part
    try:
        return {"type": "image", "image": str(resolve_confined(part["image"], root))}
    except ImageProblem:
        return {"type": "text", "text": f"[image outside the root: {part['image']}]"}


def _displayable(draft: dict[str, Any] | None) -> dict[str, Any] | None:
    """A draft record (converted, but invalid) in the part layout, if it has one."""
    if draft is None:
        return None
    try:
        from .data.records import normalise

        record = normalise(draft)
        for m in record["messages"]:
            for c in m["content"]:
                if c.get("type") not in ("text", "image") or not isinstance(
                        c.get("text", c.get("image")), str):
                    return None
        return record
    except (KeyError, TypeError, AttributeError):
        return None


def visual_tokens_plot(max_pixels_options: Sequence[int], min_pixels: int = HUB_MIN_PIXELS,
                       sides: Sequence[int] = tuple(range(28, 2017, 28)),
                       aspect: float = 4 / 3) -> Figure:
    """Visual tokens of a ``aspect``:1 image against its width, for several max_pixels: tokens
    grow with the area until max_pixels caps them."""
    from .tokens import visual_tokens

    fig, ax = plt.subplots(figsize=(7, 4))
    for cap in max_pixels_options:
        ax.plot(sides, [visual_tokens(w, max(1, round(w / aspect)), min_pixels, cap)
                        for w in sides], label=f"max_pixels {cap:,} ({tokens_in(cap)} tokens)")
    ax.set_xlabel(f"image width in pixels (aspect {aspect:.2f}:1)")
    ax.set_ylabel("visual tokens per image")
    ax.set_title("Visual tokens grow with image area until max_pixels caps them")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def length_histogram(budget: Any) -> Figure:
    """Histogram of sample lengths (text + visual tokens) with the max_length line."""
    fig, ax = plt.subplots(figsize=(7, 3.5))
    totals = budget.totals
    ax.hist(totals, bins=min(40, max(5, len(set(totals)))), color="#5c6bc0", alpha=0.85)
    ax.axvline(budget.max_length, color="crimson", linestyle="--",
               label=f"max_length {budget.max_length}")
    ax.set_xlabel("tokens per sample (text + visual)")
    ax.set_ylabel("samples")
    over = len(budget.too_long)
    ax.set_title(f"{len(totals)} samples, {over} longer than max_length")
    ax.legend()
    fig.tight_layout()
    return fig


def resize_view(path: str, min_pixels: int, max_pixels: int) -> Figure:
    """An image before and after the processor's resize, with the grid of visual tokens (28 px,
    red) and vision patches (14 px, dotted blue: visible on white documents) drawn on the resized one."""
    from .qwen import PATCH, TOKEN_SIDE
    from .tokens import smart_resize

    img = load_rgb(path)
    height, width = smart_resize(img.height, img.width, min_pixels, max_pixels)
    resized = img.resize((width, height))
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 5))
    left.imshow(img)
    left.set_title(f"original {img.width}×{img.height} px")
    right.imshow(resized)
    for x in range(0, width + 1, PATCH):
        right.axvline(x - 0.5, color="royalblue" if x % TOKEN_SIDE else "crimson",
                      lw=0.5 if x % TOKEN_SIDE else 0.8, ls=":" if x % TOKEN_SIDE else "-")
    for y in range(0, height + 1, PATCH):
        right.axhline(y - 0.5, color="royalblue" if y % TOKEN_SIDE else "crimson",
                      lw=0.5 if y % TOKEN_SIDE else 0.8, ls=":" if y % TOKEN_SIDE else "-")
    tokens = (height // TOKEN_SIDE) * (width // TOKEN_SIDE)
    right.set_title(f"resized {width}×{height} px → {tokens} visual tokens\n"
                    f"(red: 28 px token cells; blue dots: 14 px patches, 4 per token)")
    for ax in (left, right):
        ax.axis("off")
    fig.tight_layout()
    return fig


def loss_curves(log: Sequence[dict[str, Any]]) -> Figure:
    """Training loss (and validation loss where logged) against the step."""
    train = [(e["step"], e["loss"]) for e in log if "loss" in e]
    val = [(e["step"], e["eval_loss"]) for e in log if "eval_loss" in e]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    if train:
        ax.plot(*zip(*train, strict=True), label="training loss", color="#3949ab")
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="validation loss", color="#e53935")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3, which="both")
    if train or val:
        ax.legend()
    ax.set_title("Loss (log scale)")
    fig.tight_layout()
    return fig


#: The validation loss within this factor of the training loss (or this close in absolute
#: terms, for losses near zero) is no gap worth a word; a validation loss this far above its
#: own lowest point has risen.
GAP_RATIO, GAP_ABSOLUTE, RISE = 1.5, 0.05, 1.2


def _times(ratio: float) -> str:
    return f"{ratio:.1f}×" if ratio < 10 else f"{ratio:.0f}×"


def loss_gap(log: Sequence[dict[str, Any]]) -> str:
    """What the gap between the training and the validation loss of a run means, in one
    sentence made from its numbers (the log :func:`loss_curves` draws): no gap, a gap, over-
    fitting (validation rising again), or no validation loss to compare with."""
    train = [(e["step"], e["loss"]) for e in log if "loss" in e]
    val = [(e["step"], e["eval_loss"]) for e in log if "eval_loss" in e]
    if not train:
        return "No training loss has been logged yet: there is nothing to compare."
    if not val:
        return (f"No validation loss was logged (no validation split, or the run ended at step "
                f"{train[-1][0]} before its first evaluation): the training loss "
                f"({train[-1][1]:.4f}) alone cannot tell learning the task from memorising the "
                "training samples; judge it on held-out data (notebook 04).")
    step, v = val[-1]
    t = min(train, key=lambda e: (abs(e[0] - step), -e[0]))[1]  # logged nearest that step
    best_step, best = min(val, key=lambda e: e[1])
    if v <= t * GAP_RATIO or v - t <= GAP_ABSOLUTE:
        return (f"No gap to worry about: at step {step} the validation loss {v:.4f} is close to "
                f"the training loss {t:.4f}, so what the model learned carries over to samples "
                "it never saw.")
    times = _times(v / t) if t > 0 else "far above"
    if v > best * RISE and best_step < step:
        return (f"Over-fitting: at step {step} the validation loss {v:.4f} is {times} the "
                f"training loss {t:.4f}, and it has risen since its lowest, {best:.4f} at step "
                f"{best_step}: the model is memorising its training samples. Train fewer epochs "
                "(or steps), lower lr, or add data.")
    return (f"A gap: at step {step} the validation loss {v:.4f} is {times} the training loss "
            f"{t:.4f} (not rising again yet): the model fits its training samples much better "
            "than new ones. Held-out evaluation (notebook 04) tells whether it learned the task; "
            "more data, or fewer epochs, narrow the gap.")


def metric_bars(report: dict[str, Any], metric: str | None = None) -> Figure:
    """One bar per evaluated system for ``metric`` (default: the report's headline) with its 95%
    bootstrap interval as error bars, and the most-common-answer rate as a dashed line where the
    metric is a rate of right answers."""
    metric = metric or report["headline"]
    names = list(report["systems"])
    cells = [report["systems"][s]["metrics"][metric] for s in names]
    values = [c["value"] for c in cells]
    errors = [[c["value"] - c["low"] for c in cells], [c["high"] - c["value"] for c in cells]]
    # Grey for the base model's systems, blue for the fine-tuned; paler for image ablations.
    colours = [to_rgba("#9e9e9e" if s.startswith(("base", "prompt")) else "#3949ab",
                       0.45 if "-" in s else 1.0) for s in names]
    fig, ax = plt.subplots(figsize=(1.6 * len(names) + 2.5, 3.6))
    ax.bar(names, values, yerr=errors, capsize=6, color=colours)
    for x, value in enumerate(values):
        ax.annotate(f"{value:.2f}", (x, value), textcoords="offset points", xytext=(14, 3),
                    fontsize=9)
    if metric in ("exact_match", "exact_match_raw"):
        ax.axhline(report["most_common_answer_rate"], ls="--", color="#e53935",
                   label="always the most common answer")
        ax.legend(loc="upper left", fontsize=8)
    lower = metric in report.get("lower_is_better", [])
    ax.set_ylabel(metric + (" (lower is better)" if lower else ""))
    top = max([1.0] + [c["high"] for c in cells])
    ax.set_ylim(0, top * 1.08)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(f"{metric} on {report['n']} held-out samples, with 95% intervals")
    fig.tight_layout()
    return fig
