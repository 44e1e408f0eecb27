"""What an evaluation suggests doing next, from its report, its predictions and the run's log.

The rules are the ones an experienced practitioner applies by eye, written down so a learner sees
the reasoning: is the fine-tune clearly better than the base and than a good prompt (if not:
train more, or the prompt is enough); does it use the image (if not: more pixels, train the
vision side); what kind of errors remain (format errors: more epochs or examples; confusions
between answers: more examples of those, more pixels for fine detail); what the loss did
(still falling at the end: more epochs or a larger LoRA rank; validation loss rising: fewer
epochs, more data); and whether the test split is big enough to tell.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from . import metrics as M
from .evaluate import SMALL_N, read_predictions
from .gallery import lead_system


def error_types(report: dict[str, Any], out_dir: str | Path) -> Counter[str]:
    """How the lead system's answers went wrong, by kind (right answers counted too)."""
    rows = read_predictions(out_dir, lead_system(report))
    references = {M.normalise_text(r["reference"]) for r in rows}
    kinds: Counter[str] = Counter()
    for row in rows:
        prediction, score = row["prediction"], row["metrics"][report["headline"]]
        if report["task"] == "json":
            parsed = M.parse_json_answer(prediction)[1] is not None
            kinds["right" if score >= 1 else "JSON, some fields wrong" if parsed else "not JSON"] += 1
        elif not prediction.strip():
            kinds["empty"] += 1
        elif report["task"] == "short":
            kinds["right" if score >= 1 else "another answer of the set"
                  if M.normalise_text(prediction) in references else "outside the answer set"] += 1
        else:
            good = 1 - score if report["headline"] in report["lower_is_better"] else score
            kinds["close (>= 0.9)" if good >= 0.9 else "partly right" if good >= 0.5
                  else "far off"] += 1
    return kinds


def confusions(report: dict[str, Any], out_dir: str | Path, k: int = 5) -> list[tuple]:
    """The ``k`` most frequent (reference, prediction, count) mix-ups of the lead system: wrong
    answers that are another valid answer (answers outside the set are format errors)."""
    rows = read_predictions(out_dir, lead_system(report))
    valid = {M.normalise_text(r["reference"]) for r in rows}
    wrong = Counter((r["reference"], r["prediction"]) for r in rows
                    if r["metrics"][report["headline"]] < 1
                    and M.normalise_text(r["prediction"]) in valid)
    return [(ref, pred, n) for (ref, pred), n in wrong.most_common(k)]


def loss_trend(run: str | Path) -> dict[str, Any] | None:
    """First and last training loss, whether it was still falling (the last three logged values
    10% below the three before), and the lowest and last validation loss, of a run's log."""
    path = Path(run) / "train_log.jsonl"
    if not path.is_file():
        return None
    log = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    train = [e["loss"] for e in log if "loss" in e]
    val = [e["eval_loss"] for e in log if "eval_loss" in e]
    if not train:
        return None
    trend: dict[str, Any] = {"train_first": train[0], "train_last": train[-1]}
    if len(train) >= 6:  # the last three logged losses against the three before them
        trend["still_falling"] = sum(train[-3:]) < 0.9 * sum(train[-6:-3])
    if val:
        trend.update(val_best=min(val), val_last=val[-1])
    return trend


def _comparison(report: dict[str, Any], first: str, second: str) -> dict[str, Any] | None:
    return next((c for c in report["comparisons"]
                 if c["first"] == first and c["second"] == second), None)


def next_steps(report: dict[str, Any], out_dir: str | Path) -> list[str]:
    """Suggestions, most important first, each with the reason taken from the numbers."""
    lead = lead_system(report)
    steps = _comparison_steps(report, lead) + _error_steps(report, out_dir) + _loss_steps(report)
    if report["n"] < SMALL_N:
        steps.append(f"Only {report['n']} test samples: add test data before trusting "
                     "differences smaller than the intervals.")
    ahead = _comparison(report, lead, "base")
    if not steps and ahead and ahead["better"]:
        steps.append("The fine-tune is clearly ahead and uses the image: try harder and more "
                     "varied test data, or a smaller max_pixels to go faster.")
    return steps


def _comparison_steps(report: dict[str, Any], lead: str) -> list[str]:
    """What the comparisons with the base, the prompted base and the blank images say; a clear
    difference is read with its direction (``better``)."""
    steps = []
    base, prompt = _comparison(report, lead, "base"), _comparison(report, lead, "prompt")
    blank = _comparison(report, lead, f"{lead}-blank")
    if base and not base["clear"]:
        steps.append(f"{lead} is not clearly better than the base model ({base['verdict']}): "
                     "train longer (num_epochs), check that the loss fell, and check the data "
                     "(qvl data check).")
    elif base and base["better"] is False:
        steps.append(f"{lead} is worse than the base model ({base['verdict']}): the fine-tune "
                     "hurt. Check the answers in your data (qvl data check, the gallery), then "
                     "try a lower lr or fewer epochs.")
    if prompt and not prompt["clear"]:
        steps.append(f"A prompt alone does about as well ({prompt['verdict']}): try a better "
                     "prompt before spending GPU hours, or give the fine-tune more data.")
    elif prompt and prompt["better"] is False:
        steps.append(f"A prompt alone does better ({prompt['verdict']}): use the prompt, or find "
                     "out from the gallery what the fine-tune got wrong.")
    if blank and not blank["clear"]:
        steps.append("The answers barely depend on the image (the blank-image control scores "
                     "about the same): raise max_pixels so the details are visible, train "
                     "trained=language+vision, and check that your answers need the picture.")
    elif blank and blank["better"] is False:
        steps.append("With blank images the model does better than with the real ones: it has "
                     "learned to answer from the question; check that the answers need the "
                     "picture, and raise max_pixels.")
    return steps


def _error_steps(report: dict[str, Any], out_dir: str | Path) -> list[str]:
    kinds, total, steps = error_types(report, out_dir), report["n"], []
    off_format = kinds["not JSON"] + kinds["outside the answer set"] + kinds["empty"]
    if off_format > total * 0.1:
        steps.append(f"{off_format} of {total} answers are not in the expected form (not JSON, "
                     "outside the answer set, or empty): the format is not learned yet; more "
                     "epochs or more examples help.")
    mixed = confusions(report, out_dir, k=3)
    if report["task"] == "short" and mixed and mixed[0][2] > 1:
        pairs = ", ".join(f"{ref} -> {pred} ({n}x)" for ref, pred, n in mixed)
        steps.append(f"Most mixed up: {pairs}. Add examples of these; if they differ in fine "
                     "detail, raise max_pixels.")
    fields = report.get("fields", {}).get(lead_system(report), {})
    if fields:
        name, worst = min(fields.items(), key=lambda kv: kv[1]["exact_match"])
        if worst["exact_match"] < 0.9:
            steps.append(f"The field {name!r} is right in only {worst['exact_match']:.0%} of "
                         "answers: add examples where it is hard to read, or raise max_pixels.")
    return steps


def _loss_steps(report: dict[str, Any]) -> list[str]:
    if not report.get("adapter"):
        return []
    trend = loss_trend(Path(report["adapter"]).parent)
    if trend is None:
        return []
    steps = []
    if trend.get("still_falling"):
        steps.append(f"The training loss was still falling at the end ({trend['train_first']:.3f}"
                     f" at the start, {trend['train_last']:.3f} at the end): the model is still "
                     "learning; train more epochs, or try a larger lora_r (or lr).")
    if "val_last" in trend and trend["val_last"] > 1.2 * trend["val_best"]:
        steps.append(f"The validation loss rose from its best {trend['val_best']:.3f} to "
                     f"{trend['val_last']:.3f}: the model is over-fitting; use fewer epochs, "
                     "more data, or lora_dropout.")
    return steps
