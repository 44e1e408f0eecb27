"""What an evaluation suggests next: each rule fires on the numbers it is about, in the right
direction (a clear loss is not a win), and stays quiet otherwise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qvl_helpers.advice import error_types, loss_trend, next_steps


def comparison(second: str, clear: bool, better: bool | None) -> dict:
    return {"first": "tuned", "second": second, "clear": clear, "better": better,
            "verdict": f"tuned vs {second}: ({'clear' if clear else 'unclear'})"}


def evaluation(folder: Path, answers: list[tuple[str, str]], comparisons: list[dict],
               adapter: Path | None = None) -> dict:
    """A report of a short-answer task whose tuned predictions are ``answers`` (answer,
    reference) pairs, written with its predictions file into ``folder``."""
    rows = [{"id": f"s-{i}", "prediction": p, "reference": r,
             "metrics": {"exact_match": float(p == r)}} for i, (p, r) in enumerate(answers)]
    (folder / "predictions-tuned.jsonl").write_text(
        "".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return {"n": len(rows), "task": "short", "headline": "exact_match", "lower_is_better": [],
            "systems": {"tuned": {}}, "comparisons": comparisons,
            "adapter": str(adapter) if adapter else None}


ALL_RIGHT = [("red", "red"), ("blue", "blue")] * 20


def test_a_clear_lead_with_nothing_wrong_says_so(tmp_path: Path) -> None:
    report = evaluation(tmp_path, ALL_RIGHT, [comparison("base", True, True),
                                              comparison("prompt", True, True),
                                              comparison("tuned-blank", True, True)])
    (step,) = next_steps(report, tmp_path)
    assert step.startswith("The fine-tune is clearly ahead")


@pytest.mark.parametrize(("second", "words"), [
    ("base", "worse than the base model"),
    ("prompt", "A prompt alone does better"),
    ("tuned-blank", "With blank images the model does better"),
])
def test_a_clear_loss_is_not_read_as_a_win(tmp_path: Path, second: str, words: str) -> None:
    others = [comparison(s, True, True) for s in ("base", "prompt", "tuned-blank") if s != second]
    report = evaluation(tmp_path, ALL_RIGHT, [comparison(second, True, False), *others])
    steps = next_steps(report, tmp_path)
    assert any(words in s for s in steps), steps
    assert not any("clearly ahead" in s for s in steps)


def test_unclear_differences_get_their_own_advice(tmp_path: Path) -> None:
    report = evaluation(tmp_path, ALL_RIGHT, [comparison("base", False, None),
                                              comparison("prompt", False, None),
                                              comparison("tuned-blank", False, None)])
    steps = next_steps(report, tmp_path)
    assert [s.split(" ")[0] for s in steps] == ["tuned", "A", "The"]
    assert "not clearly better than the base" in steps[0]
    assert "may not depend on the image" in steps[2]


def test_error_kinds_and_confusions(tmp_path: Path) -> None:
    answers = [("red", "red")] * 30 + [("orange", "red")] * 3 + [("I think it is red", "red")] * 5
    answers += [("", "blue"), ("orange", "orange")]
    report = evaluation(tmp_path, answers, [comparison("base", True, True)])
    kinds = error_types(report, tmp_path)
    assert kinds == {"right": 31, "another answer of the set": 3, "outside the answer set": 5,
                     "empty": 1}
    steps = next_steps(report, tmp_path)
    assert any(s.startswith("6 of 40 answers are not in the expected form") for s in steps)
    assert any("Most mixed up: red -> orange (3x)" in s for s in steps)


def test_the_loss_curve_is_read_from_the_run(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    falling = [3.0, 2.5, 2.0, 1.6, 1.2, 0.9, 0.6]
    log = [{"step": 10 * (i + 1), "loss": v} for i, v in enumerate(falling)]
    log += [{"step": 30, "eval_loss": 1.0}, {"step": 70, "eval_loss": 1.5}]
    (run / "train_log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in log))
    trend = loss_trend(run)
    assert trend is not None and trend["still_falling"]
    report = evaluation(tmp_path, ALL_RIGHT, [comparison("base", True, True)], run / "adapter")
    steps = next_steps(report, tmp_path)
    assert any("still falling" in s for s in steps)
    assert any("over-fitting" in s for s in steps)  # 1.5 is more than 1.2 x the best 1.0
    flat = [{"step": 10 * (i + 1), "loss": v} for i, v in enumerate([3, 1, *[0.5] * 6])]
    (run / "train_log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in flat))
    assert not any("still falling" in s for s in next_steps(report, tmp_path))
