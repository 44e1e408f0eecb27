"""The course's figures: Chinese text finds a CJK font even when matplotlib's font cache was
built before the font was installed; the loss plot and what it says about the run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import pytest
from matplotlib import font_manager
from matplotlib.ft2font import FT2Font
from PIL import Image

from qvl_helpers import plots

LABEL = "发票总额是多少"  # "what is the invoice total", as a learner's caption


@pytest.fixture
def stale_font_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """matplotlib as a kernel restarted after ``apt-get install fonts-noto-cjk`` finds it: its
    cache folder holds a font list written before the CJK font existed, and that is the list
    loaded (into the one font manager every figure uses)."""
    manager = font_manager.fontManager
    cjk_files = {f.fname for f in manager.ttflist if f.name in plots.CJK_FONTS}
    cjk_files |= {p for p in font_manager.findSystemFonts() if "CJK" in Path(p).name}
    cache_dir = tmp_path / "mplcache"
    cache_dir.mkdir()
    cache = cache_dir / f"fontlist-v{font_manager.FontManager.__version__}.json"
    before = font_manager.FontManager.__new__(font_manager.FontManager)
    before.__dict__.update(manager.__dict__)
    before.ttflist = [f for f in manager.ttflist if f.fname not in cjk_files]
    font_manager.json_dump(before, cache)
    monkeypatch.setattr(matplotlib, "get_cachedir", lambda: str(cache_dir))
    monkeypatch.setattr(manager, "ttflist", font_manager.json_load(cache).ttflist)
    manager._findfont_cached.cache_clear()
    plots.text_fonts.cache_clear()
    plots._no_cjk_font_hint.cache_clear()
    yield cache
    manager._findfont_cached.cache_clear()
    plots.text_fonts.cache_clear()
    plots._no_cjk_font_hint.cache_clear()


def _record(tmp_path: Path) -> dict[str, Any]:
    image = tmp_path / "receipt.png"
    Image.new("RGB", (64, 48), "white").save(image)
    return {"id": "发票-1", "messages": [
        {"role": "user", "content": [{"type": "image", "image": str(image)},
                                     {"type": "text", "text": LABEL}]},
        {"role": "assistant", "content": [{"type": "text", "text": "12.50"}]}]}


def _missing_glyphs(text_artist: Any) -> list[str]:
    """Characters of a drawn text that no font of its fallback chain has a glyph for."""
    files = font_manager.fontManager._find_fonts_by_props(text_artist.get_fontproperties())
    fonts = [FT2Font(str(f)) for f in files]
    return [c for c in text_artist.get_text() if not c.isspace() and not any(
        f.get_char_index(ord(c)) for f in fonts)]


def test_chinese_finds_a_font_installed_after_the_cache(
        stale_font_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert not any(f.name in plots.CJK_FONTS for f in font_manager.fontManager.ttflist)
    fig = plots.sample_grid([_record(tmp_path)], cols=1)
    fig.canvas.draw()
    texts = [t for ax in fig.axes for t in [ax.title, *ax.texts] if LABEL in t.get_text()
             or "发票" in t.get_text()]
    plt.close(fig)
    fonts = plots.text_fonts()
    assert len(fonts) == 2, ("no CJK font on this machine (fc-list :lang=zh is empty): install "
                             "one, e.g. apt-get install fonts-noto-cjk")
    assert len(texts) == 2 and all(_missing_glyphs(t) == [] for t in texts)
    assert "no CJK font" not in capsys.readouterr().out
    # The cache is written again, so the next kernel knows the font from the start.
    assert any(f.name == fonts[1] for f in font_manager.json_load(stale_font_cache).ttflist)


def test_without_any_cjk_font_the_note_comes_once(
        stale_font_cache: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(font_manager, "findSystemFonts", lambda *a, **k: [])
    assert plots.fonts_for(LABEL) == ["DejaVu Sans Mono"]
    assert plots.fonts_for(LABEL + "？") == ["DejaVu Sans Mono"]
    note = capsys.readouterr().out
    assert note.count("no CJK font is installed") == 1 and "fonts-noto-cjk" in note
    assert plots.fonts_for("plain English") == ["DejaVu Sans Mono"]
    assert capsys.readouterr().out == ""


# --------------------------------------------------------------------------- the loss gap


def _log(train: list[float], val: list[float], every: int = 10, val_every: int = 30) -> list[dict]:
    """A train_log.jsonl as the Trainer writes it: training losses every ``every`` steps and
    validation losses every ``val_every``."""
    log = [{"step": every * (i + 1), "loss": x} for i, x in enumerate(train)]
    log += [{"step": val_every * (i + 1), "eval_loss": x} for i, x in enumerate(val)]
    return sorted(log, key=lambda e: e["step"])


@pytest.mark.parametrize("train_loss", [2.0, 0.6, 0.05, 0.004])
@pytest.mark.parametrize("factor", [0.8, 1.0, 1.3, 1.49])
def test_no_gap_when_validation_follows_training(train_loss: float, factor: float) -> None:
    log = _log([3.0, 1.0, train_loss], [train_loss * factor])
    said = plots.loss_gap(log)
    assert said.startswith("No gap")
    assert f"validation loss {train_loss * factor:.4f}" in said
    assert f"training loss {train_loss:.4f}" in said and "step 30" in said


@pytest.mark.parametrize("train_loss,val_loss", [(0.005, 1.26), (0.3, 0.9), (1.0, 4.0)])
def test_a_gap_not_rising_says_so_with_its_numbers(train_loss: float, val_loss: float) -> None:
    """The learner's run: training 0.005, one validation point 1.26."""
    said = plots.loss_gap(_log([2.0, 0.5, train_loss], [val_loss]))
    assert said.startswith("A gap:")
    ratio = val_loss / train_loss
    assert (f"{ratio:.1f}×" if ratio < 10 else f"{ratio:.0f}×") in said
    assert f"{val_loss:.4f}" in said and f"{train_loss:.4f}" in said


@pytest.mark.parametrize("lowest_at", [1, 2, 3])
def test_over_fitting_when_validation_rises_from_its_lowest(lowest_at: int) -> None:
    val = [1.5, 1.2, 1.0, 1.1][:lowest_at] + [0.6] + [0.9, 1.3]
    train = [2.0 / (i + 1) ** 2 for i in range(3 * len(val))]
    said = plots.loss_gap(_log(train, val))
    assert said.startswith("Over-fitting:")
    assert f"lowest, 0.6000 at step {30 * (lowest_at + 1)}" in said
    assert f"validation loss {val[-1]:.4f}" in said and f"training loss {train[-1]:.4f}" in said


def test_a_rise_within_the_noise_is_no_over_fitting() -> None:
    said = plots.loss_gap(_log([2.0, 1.0, 0.1, 0.05, 0.04, 0.03], [0.50, 0.55]))
    assert said.startswith("A gap:")


def test_validation_missing_or_nothing_logged() -> None:
    said = plots.loss_gap(_log([2.0, 1.0, 0.5], []))
    assert said.startswith("No validation loss was logged") and "step 30" in said
    assert "0.5000" in said
    assert plots.loss_gap([]).startswith("No training loss")


def test_the_training_loss_compared_is_the_one_logged_nearest_the_evaluation() -> None:
    log = _log([2.0, 1.0, 0.5, 0.1, 0.01, 0.001], [0.45], val_every=30)
    assert "training loss 0.5000" in plots.loss_gap(log)  # step 30's, not the last one


def _conversation(rng: Any, image: Path) -> dict[str, Any]:
    """A record of a generated shape: a system message or not, one to four turns, questions of
    one to sixty characters (Chinese or English), one or two images, the image anywhere."""
    def text() -> str:
        return "".join(rng.choice(["发票", "总额", "what ", "is the ", "合计", "date "])
                       for _ in range(rng.randint(1, 30)))
    messages = [{"role": "system", "content": [{"type": "text", "text": text()}]}] \
        if rng.random() < 0.3 else []
    for turn in range(rng.randint(1, 4)):
        parts = [{"type": "text", "text": text()}]
        if turn == 0:
            for _ in range(rng.randint(1, 2)):
                parts.insert(rng.randint(0, len(parts)), {"type": "image", "image": str(image)})
        messages += [{"role": "user", "content": parts},
                     {"role": "assistant", "content": [{"type": "text", "text": text()}]}]
    return {"id": f"样本-{rng.randint(0, 999)}", "messages": messages}


@pytest.mark.parametrize("seed", range(6))
def test_captions_stay_in_their_cell_whatever_the_records_shape(tmp_path: Path,
                                                                 seed: int) -> None:
    """The sample grid of notebook 01 on records of every shape and images of every aspect: no
    title or caption runs into another cell's text or image or out of the figure (wide Chinese
    characters count double), and a cut caption says how many turns it left out."""
    import random

    rng = random.Random(seed)
    images = []
    for i, size in enumerate([(64, 64), (48, 96), (120, 40)]):
        images.append(tmp_path / f"receipt-{i}.png")
        Image.new("RGB", size, "grey").save(images[-1])
    records = [_conversation(rng, rng.choice(images)) for _ in range(8)]
    fig = plots.sample_grid(records, cols=4)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts = [(i, t.get_window_extent(renderer)) for i, ax in enumerate(fig.axes)
             for t in [ax.title, *ax.texts]]
    pictures = [(i, ax.get_window_extent(renderer)) for i, ax in enumerate(fig.axes)]
    page = fig.bbox
    plt.close(fig)
    for i, box in texts:
        assert page.x0 <= box.x0 and box.x1 <= page.x1 and page.y0 <= box.y0 and \
            box.y1 <= page.y1, f"seed {seed}: cell {i}'s text leaves the figure"
        for j, other in texts + pictures:
            assert i == j or not box.overlaps(other), f"seed {seed}: cell {i} runs into cell {j}"
    for record in records:
        caption = plots.conversation_text(record)
        lines = caption.splitlines()
        assert len(lines) <= 6 and all(plots._cells(line) <= 38 for line in lines)
        if lines[-1].startswith("… (+"):
            hidden = int(lines[-1][4:].split()[0])
            shown = sum(line[1:3] == ": " and line[0] in "SUA" for line in lines[:-1])
            assert hidden == len(record["messages"]) - shown
        else:
            assert sum(line[1:3] == ": " for line in lines) == len(record["messages"])
