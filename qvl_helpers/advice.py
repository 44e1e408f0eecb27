"""What an evaluation suggests doing next, from its report, its predictions and the run's log.

The rules are the ones an experienced practitioner applies by eye, written down so a learner sees
the reasoning: is the fine-tune clearly better than the base and than a good prompt (if not:
train more, or the prompt is enough); does it use the image (if not: more pixels, train the
vision side); what kind of errors remain (format errors: more epochs or examples; confusions
between answers: more examples of those, more pixels for fine detail); what the loss did
(still falling at the end: more epochs or a larger LoRA rank; validation loss rising: fewer
epochs, more data). The test split's size is the report's own warning, not repeated here.

Every setting a step names is read from the run (``run_config.yaml`` beside its adapter, else
``run.json``): a step never recommends the value already in use, says "raise" only when the
value can still be raised, and quotes the value in use. A comparison that is not clear is read
by its ``status``: when the interval shows a difference but there are too few samples for the
exact test, the step says so (more test data), never that the two do "about as well".
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from . import answers as A
from . import verdicts as V
from .evaluate import read_predictions
from .gallery import lead_system
from .qwen import HUB_MAX_PIXELS
from .runs import IDENTITY, RUN_CONFIG

#: The largest max_pixels the model's processor accepts (Qwen2.5-VL's own default).
MAX_PIXELS_LIMIT = HUB_MAX_PIXELS
VISION = "language+vision"


def error_types(report: dict[str, Any], out_dir: str | Path) -> Counter[str]:
    """How the lead system's answers went wrong, by kind (right answers counted too)."""
    rows = read_predictions(out_dir, lead_system(report))
    references = {A.normalise_text(r["reference"]) for r in rows}
    kinds: Counter[str] = Counter()
    for row in rows:
        prediction, score = row["prediction"], row["metrics"][report["headline"]]
        if report["task"] == "json":
            parsed = A.parse_json_answer(prediction)[1] is not None
            kinds["right" if score >= 1 else "JSON, some fields wrong" if parsed else "not JSON"] += 1
        elif not prediction.strip():
            kinds["empty"] += 1
        elif report["task"] == "short":
            kinds["right" if score >= 1 else "another answer of the set"
                  if A.normalise_text(prediction) in references else "outside the answer set"] += 1
        else:
            good = 1 - score if report["headline"] in report["lower_is_better"] else score
            kinds["close (>= 0.9)" if good >= 0.9 else "partly right" if good >= 0.5
                  else "far off"] += 1
    return kinds


def confusions(report: dict[str, Any], out_dir: str | Path, k: int = 5) -> list[tuple]:
    """The ``k`` most frequent (reference, prediction, count) mix-ups of the lead system: wrong
    answers that are another valid answer (answers outside the set are format errors)."""
    rows = read_predictions(out_dir, lead_system(report))
    valid = {A.normalise_text(r["reference"]) for r in rows}
    wrong = Counter((r["reference"], r["prediction"]) for r in rows
                    if r["metrics"][report["headline"]] < 1
                    and A.normalise_text(r["prediction"]) in valid)
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


def run_settings(report: dict[str, Any]) -> dict[str, Any]:
    """The settings of the run that made the evaluated adapter (``report["adapter"]``): its
    ``run_config.yaml``, else the run folder's ``run.json`` settings; empty when unknown."""
    if not report.get("adapter"):
        return {}
    adapter = Path(report["adapter"])
    for path, read in ((adapter / RUN_CONFIG, lambda t: yaml.safe_load(t)),
                       (adapter.parent / IDENTITY, lambda t: json.loads(t).get("settings"))):
        try:
            found = read(path.read_text(encoding="utf-8")) if path.is_file() else None
        except (OSError, ValueError, yaml.YAMLError, AttributeError):
            found = None
        if isinstance(found, dict):
            return found
    return {}


def _now(settings: dict[str, Any], key: str) -> str:
    return f" (now {settings[key]})" if key in settings else ""


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) \
        else None


def change(settings: dict[str, Any], key: str, direction: str) -> str | None:
    """The words for moving one setting (``direction`` ``"raise"`` or ``"lower"``; for
    ``trained``, to ``language+vision``), or ``None`` when that move is not possible from the
    value in use: never the value already in use, "raise" only below the setting's limit."""
    value = settings.get(key)
    if key == "trained":
        if value == VISION:
            return None
        return f"train the vision side too (trained={VISION}" + \
            (f"; now {value})" if value is not None else ")")
    if key == "num_epochs":  # max_steps > 0 overrides num_epochs: that is the one to move
        steps = _number(settings.get("max_steps"))
        key = "max_steps" if steps is not None and steps > 0 else "num_epochs"
        value = _number(settings.get(key))
        if direction == "raise":
            return f"train longer ({key}" + \
                (f" above {settings[key]})" if key in settings else ")")
        if value is not None and value <= 1:
            return None
        return f"fewer {'steps' if key == 'max_steps' else 'epochs'} ({key}" + \
            (f" below {settings[key]})" if key in settings else ")")
    number = _number(value)
    if key == "max_pixels":
        if direction == "raise":
            if number is not None and number >= MAX_PIXELS_LIMIT:
                return None
            return f"raise max_pixels{_now(settings, key)}"
        low = _number(settings.get("min_pixels")) or 0
        if number is not None and number <= low:
            return None
        return f"a smaller max_pixels{_now(settings, key)}"
    if key == "lora_dropout":
        if direction == "raise" and number is not None and number >= 0.5:
            return None
        return f"{'more' if direction == 'raise' else 'less'} lora_dropout{_now(settings, key)}"
    if direction == "lower" and number is not None and number <= 0:
        return None
    return f"a {'larger' if direction == 'raise' else 'lower'} {key}{_now(settings, key)}"


def _either(*parts: str | None) -> str | None:
    """``a, b or c`` of the parts that are possible (``None`` when none is)."""
    kept = [p for p in parts if p]
    if not kept:
        return None
    return kept[0] if len(kept) == 1 else ", ".join(kept[:-1]) + " or " + kept[-1]


def _comparison(report: dict[str, Any], first: str, second: str) -> dict[str, Any] | None:
    return next((c for c in report["comparisons"]
                 if c["first"] == first and c["second"] == second), None)


def next_steps(report: dict[str, Any], out_dir: str | Path) -> list[str]:
    """Suggestions, most important first, each with the reason taken from the numbers (the
    test split's size is the report's own warning: see
    :func:`~qvl_helpers.verdicts.small_test_warning`)."""
    lead, settings = lead_system(report), run_settings(report)
    steps = _comparison_steps(report, lead, settings) + _error_steps(report, out_dir, settings) \
        + _loss_steps(report, settings)
    ahead = _comparison(report, lead, "base")
    blank = _comparison(report, lead, f"{lead}-blank")
    if not steps and ahead and ahead["better"]:
        looks = " and uses the image" if blank and blank["better"] else ""
        faster = change(settings, "max_pixels", "lower")
        steps.append(f"The fine-tune is clearly ahead{looks}: try harder and more varied test "
                     "data" + (f", or {faster} to go faster." if faster else "."))
    return steps


def _status(comparison: dict[str, Any]) -> str:
    """A comparison's status (reports made before it was recorded: from the interval)."""
    if "status" in comparison:
        return comparison["status"]
    if comparison["clear"]:
        return V.CLEAR
    d = comparison.get("difference")
    shown = d is not None and ((d["value"] > 0 and d["low"] > 0) or
                               (d["value"] < 0 and d["high"] < 0))
    return V.FEW if shown else V.INTERVAL


def _too_few(lead: str, other: str, comparison: dict[str, Any]) -> str:
    """The step for a difference the interval shows but the exact test cannot call yet."""
    return (f"Too few test samples to tell {lead} from {other} ({comparison['verdict']}): add "
            "test data before changing the training; the warnings say about how many samples "
            "would tell.")


def _comparison_steps(report: dict[str, Any], lead: str, settings: dict[str, Any]) -> list[str]:
    """What the comparisons with the base, the prompted base and the blank images say; a clear
    difference is read with its direction (``better``), an unclear one by its status."""
    steps = []
    base, prompt = _comparison(report, lead, "base"), _comparison(report, lead, "prompt")
    blank = _comparison(report, lead, f"{lead}-blank")
    if base and _status(base) == V.FEW:
        steps.append(_too_few(lead, "the base model", base))
    elif base and not base["clear"]:
        steps.append(f"{lead} is not clearly better than the base model ({base['verdict']}): "
                     f"{change(settings, 'num_epochs', 'raise')}, check that the loss fell, and "
                     "check the data (qvl data check).")
    elif base and base["better"] is False:
        gentler = _either(change(settings, "lr", "lower"),
                          change(settings, "num_epochs", "lower"))
        steps.append(f"{lead} is worse than the base model ({base['verdict']}): the fine-tune "
                     "hurt. Check the answers in your data (qvl data check, the gallery)" +
                     (f", then try {gentler}." if gentler else "."))
    if prompt and _status(prompt) == V.FEW:
        steps.append(_too_few(lead, "a prompt alone", prompt))
    elif prompt and not prompt["clear"]:
        steps.append(f"A prompt alone may do as well ({prompt['verdict']}): try a better "
                     "prompt before spending GPU hours, or give the fine-tune more data.")
    elif prompt and prompt["better"] is False:
        steps.append(f"A prompt alone does better ({prompt['verdict']}): use the prompt, or find "
                     "out from the gallery what the fine-tune got wrong.")
    see = _either(change(settings, "max_pixels", "raise"), change(settings, "trained", "raise"))
    if blank and _status(blank) == V.FEW:
        steps.append(_too_few(lead, "its blank-image control", blank))
    elif blank and not blank["clear"]:
        steps.append("The answers may not depend on the image (the blank-image control is not "
                     f"told apart: {blank['verdict']}): " + (f"{see}, and " if see else "") +
                     "check that your answers need the picture.")
    elif blank and blank["better"] is False:
        steps.append("With blank images the model does better than with the real ones: it has "
                     "learned to answer from the question; check that the answers need the "
                     "picture" + (f", and {see}." if see else "."))
    return steps


def _error_steps(report: dict[str, Any], out_dir: str | Path,
                 settings: dict[str, Any]) -> list[str]:
    kinds, total, steps = error_types(report, out_dir), report["n"], []
    off_format = kinds["not JSON"] + kinds["outside the answer set"] + kinds["empty"]
    if off_format > total * 0.1:
        steps.append(f"{off_format} of {total} answers are not in the expected form (not JSON, "
                     "outside the answer set, or empty): the format is not learned yet; more "
                     "epochs or more examples help.")
    mixed = confusions(report, out_dir, k=3)
    if report["task"] == "short" and mixed and mixed[0][2] > 1:
        pairs = ", ".join(f"{ref} -> {pred} ({n}x)" for ref, pred, n in mixed)
        finer = change(settings, "max_pixels", "raise")
        steps.append(f"Most mixed up: {pairs}. Add examples of these" +
                     (f"; if they differ in fine detail, {finer}." if finer else "."))
    fields = report.get("fields", {}).get(lead_system(report), {})
    if fields:
        name, worst = min(fields.items(), key=lambda kv: kv[1]["exact_match"])
        if worst["exact_match"] < 0.9:
            finer = change(settings, "max_pixels", "raise")
            steps.append(f"The field {name!r} is right in only {worst['exact_match']:.0%} of "
                         "answers: add examples where it is hard to read" +
                         (f", or {finer}." if finer else "."))
    return steps


def _loss_steps(report: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    if not report.get("adapter"):
        return []
    trend = loss_trend(Path(report["adapter"]).parent)
    if trend is None:
        return []
    steps = []
    if trend.get("still_falling"):
        steps.append(f"The training loss was still falling at the end ({trend['train_first']:.3f}"
                     f" at the start, {trend['train_last']:.3f} at the end): the model is still "
                     f"learning; {change(settings, 'num_epochs', 'raise')}, or try "
                     f"{change(settings, 'lora_r', 'raise')} (or {change(settings, 'lr', 'raise')}).")
    if "val_last" in trend and trend["val_last"] > 1.2 * trend["val_best"]:
        less = _either(change(settings, "num_epochs", "lower"), "more data",
                       change(settings, "lora_dropout", "raise"))
        steps.append(f"The validation loss rose from its best {trend['val_best']:.3f} to "
                     f"{trend['val_last']:.3f}: the model is over-fitting; use {less}.")
    return steps
