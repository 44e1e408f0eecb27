"""Task metrics for evaluation (their intervals and verdicts: :mod:`~qvl_helpers.verdicts`).

Every metric is a plain function ``(prediction, reference) -> float`` scored per sample; the split's
score is the mean (the JSON F1 family sums per-sample counts instead: micro averaging). Which
metrics apply depends on the task, detected from the references or set in ``course.yaml``
(``eval_task``):

=============  ============================================  ====================================
task           metrics (the first is the headline)            for
=============  ============================================  ====================================
short          exact_match, exact_match_raw, anls             labels, numbers, yes/no
json           json_f1, json_precision, json_recall,          receipts to JSON, forms
               json_parse_rate, json_exact (+ per field)
reading        cer (lower is better), anls, exact_match       scans to text, OCR (Chinese too)
description    chrf, rouge_l                                  photos to descriptions
=============  ============================================  ====================================

Libraries, each chosen because it is well kept, offline and exact for this job:

- `rapidfuzz <https://github.com/rapidfuzz/RapidFuzz>`_: Levenshtein distance (C++) for ANLS (the
  DocVQA definition) and the character error rate, and the longest common subsequence for ROUGE-L.
- `sacrebleu <https://github.com/mjpost/sacrebleu>`_: chrF, a character n-gram F-score that needs no
  word segmentation, so it means the same for Chinese and English. (Hub-hosted metric loaders
  download their code at run time, which cannot work offline; none is used.)

CER is pooled over the split (all edits / all reference characters, as OCR papers report it), so
a one-character answer does not weigh as much as a page; JSON precision/recall/F1 pool their
counts the same way (micro averaging). chrF is the mean of sentence-level chrF (corpus chrF pools
n-gram counts instead; the mean is what the bootstrap resamples). ROUGE-L is computed over words
for space-separated text and over characters for Chinese (a word tokenizer would see a Chinese
sentence as one word). BLEU is left out: on single short answers it is mostly zero and says little.

JSON answers are compared leaf by leaf along key paths (``items[0].price``): list items by
position (``["b", "a"]`` against ``["a", "b"]`` matches nothing), numbers as exact decimals
(``"12.50"`` equals ``12.5``; ``"0123"`` is text, as IDs and ZIP codes are), other text after
normalisation.

A learner adds a metric with :func:`register_metric`::

    @register_metric("mentions_total")
    def mentions_total(prediction: str, reference: str) -> float:
        return float("total" in prediction.lower())
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from numbers import Real
from typing import Any

import numpy as np

from .answers import flatten_json, is_cjk, normalise_text, parse_json_answer, tokens_for_overlap, values_equal
from .errors import ConfigError, DatasetError

TASKS = ("short", "json", "reading", "description")


# --------------------------------------------------------------------------- per-sample metrics

@dataclass(frozen=True)
class Metric:
    """A named per-sample score. ``counts`` metrics return a tuple of counts per sample, summed
    over the split before ``combine`` turns the sums into the score (micro averaging)."""

    name: str
    score: Callable[[str, str], Any]
    higher_is_better: bool = True
    counts: bool = False
    combine: Callable[[np.ndarray], np.ndarray] | None = None
    description: str = ""

    def summarise(self, values: np.ndarray) -> np.ndarray:
        """The split score of each row of ``values``: shape (B, n) or (B, n, k) to (B,)."""
        if self.counts:
            assert self.combine is not None
            return self.combine(values.sum(axis=1))
        return values.mean(axis=1)

    def sample_value(self, value: Any) -> float:
        """One sample's score as a number (for the gallery and sorting)."""
        if self.counts:
            assert self.combine is not None
            return float(self.combine(np.asarray(value, dtype=float)[None, :])[0])
        return float(value)


METRICS: dict[str, Metric] = {}


def register_metric(name: str, score: Callable[[str, str], float] | None = None, *,
                    higher_is_better: bool = True, description: str = "") -> Any:
    """Register ``score(prediction, reference) -> float`` under ``name`` (a decorator when
    ``score`` is omitted). Its split score is the mean over samples, with a bootstrap interval.
    Registering a name again replaces the earlier metric (handy when editing it in a notebook)."""
    def add(fn: Callable[[str, str], float]) -> Callable[[str, str], float]:
        METRICS[name] = Metric(name, fn, higher_is_better, description=description or
                               (fn.__doc__ or "").strip().split("\n")[0])
        return fn

    return add if score is None else add(score)


def get_metric(name: str) -> Metric:
    """The registered metric ``name``.

    Raises:
        ConfigError: there is none (the message lists those there are).
    """
    if name not in METRICS and ":" in name:
        _import_metric(name)
    if name not in METRICS:
        raise ConfigError(f"there is no metric named {name!r}.",
                          fix=f"use one of {', '.join(sorted(METRICS))}, or register yours with "
                              "qvl_helpers.metrics.register_metric.")
    return METRICS[name]


def _import_metric(spec: str) -> None:
    """Register ``module:function`` (importable from the current folder) under that name."""
    import importlib
    import sys

    module_name, _, attr = spec.partition(":")
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")  # `--metric my_metrics:fn` finds my_metrics.py here, like python -m
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot import the metric {spec!r} ({exc}).",
                          fix="give module:function for a module importable from this folder, "
                              "e.g. my_metrics:mentions_total for my_metrics.py.") from None
    register_metric(spec, fn)


@register_metric("exact_match")
def exact_match(prediction: str, reference: str) -> float:
    """1 if the answers agree after normalisation (case, spacing, full-/half-width, final stop)."""
    return float(normalise_text(prediction) == normalise_text(reference))


@register_metric("exact_match_raw")
def exact_match_raw(prediction: str, reference: str) -> float:
    """1 if the answers are identical apart from surrounding whitespace."""
    return float(prediction.strip() == reference.strip())


@register_metric("anls")
def anls(prediction: str, reference: str, threshold: float = 0.5) -> float:
    """Average normalised Levenshtein similarity as in DocVQA: 1 - distance / longer length on
    lower-cased, stripped text, and 0 when that distance is ``threshold`` or more."""
    from rapidfuzz.distance import Levenshtein

    a, b = " ".join(prediction.lower().split()), " ".join(reference.lower().split())
    distance = Levenshtein.normalized_distance(a, b)
    return 0.0 if distance >= threshold else 1.0 - distance


def cer_counts(prediction: str, reference: str) -> tuple[int, int]:
    """``(edits, reference characters)``: the Levenshtein distance (substitutions, deletions and
    insertions) after collapsing runs of whitespace, and the reference's length."""
    from rapidfuzz.distance import Levenshtein

    a, b = " ".join(prediction.split()), " ".join(reference.split())
    return Levenshtein.distance(a, b), len(b)


def _error_rate(sums: np.ndarray) -> np.ndarray:
    # An empty reference: no error for an empty answer, every inserted character an error.
    return np.where(sums[:, 1] > 0, sums[:, 0] / np.maximum(sums[:, 1], 1),
                    np.minimum(sums[:, 0], 1.0))


@lru_cache(maxsize=1)
def _chrf_scorer() -> Any:
    from sacrebleu.metrics import CHRF

    return CHRF()  # character 6-grams, beta 2: sacrebleu's defaults


@register_metric("chrf")
def chrf(prediction: str, reference: str) -> float:
    """chrF (sacrebleu's) scaled to 0..1: character n-grams need no word segmentation, so it
    means the same for Chinese as for English."""
    if not prediction.strip() and not reference.strip():
        return 1.0  # nothing expected, nothing said (as rouge_l)
    return _chrf_scorer().sentence_score(prediction, [reference]).score / 100


@register_metric("rouge_l")
def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1: the longest common subsequence of words (characters for Chinese)."""
    from rapidfuzz.distance import LCSseq

    p, r = tokens_for_overlap(prediction), tokens_for_overlap(reference)
    if not p or not r:
        return float(p == r)
    common = LCSseq.similarity(p, r)
    return 0.0 if common == 0 else 2 * common / (len(p) + len(r))


def json_counts(prediction: str, reference: str) -> tuple[int, int, int]:
    """``(matched, predicted, expected)`` leaves: a predicted leaf matches when the reference has
    the same key path with an equal value. Malformed JSON predicts nothing (every expected leaf
    is missed)."""
    ref, _ = parse_json_answer(reference)
    pred, how = parse_json_answer(prediction)
    expected = flatten_json(ref)
    if how is None:
        return 0, 0, len(expected)
    predicted = flatten_json(pred)
    matched = sum(1 for path, value in predicted.items()
                  if path in expected and values_equal(value, expected[path]))
    return matched, len(predicted), len(expected)


def _ratio(num: np.ndarray, den: np.ndarray, empty: Any) -> np.ndarray:
    return np.where(den > 0, num / np.where(den > 0, den, 1), empty)


def _precision(sums: np.ndarray) -> np.ndarray:
    # Nothing predicted: perfect only if nothing was expected (malformed JSON scores 0).
    return _ratio(sums[:, 0], sums[:, 1], np.where(sums[:, 2] > 0, 0.0, 1.0))


def _recall(sums: np.ndarray) -> np.ndarray:
    return _ratio(sums[:, 0], sums[:, 2], 1.0)


def _f1(sums: np.ndarray) -> np.ndarray:
    return _ratio(2 * sums[:, 0], sums[:, 1] + sums[:, 2], 1.0)


METRICS["cer"] = Metric("cer", cer_counts, higher_is_better=False, counts=True,
                        combine=_error_rate, description="character error rate: edits / "
                        "reference characters, pooled over the split (lower is better)")

for _name, _combine, _text in (
        ("json_f1", _f1, "micro F1 over JSON key paths (matched leaves vs predicted and expected)"),
        ("json_precision", _precision, "share of predicted JSON leaves that are right"),
        ("json_recall", _recall, "share of expected JSON leaves that were predicted right")):
    METRICS[_name] = Metric(_name, json_counts, counts=True, combine=_combine, description=_text)


@register_metric("json_parse_rate")
def json_parse_rate(prediction: str, reference: str) -> float:
    """1 if the prediction parses as JSON (a Markdown code fence around it is accepted)."""
    return float(parse_json_answer(prediction)[1] is not None)


@register_metric("json_exact")
def json_exact(prediction: str, reference: str) -> float:
    """1 if the whole predicted JSON equals the reference (numbers as numbers)."""
    pred, how = parse_json_answer(prediction)
    return float(how is not None and values_equal(pred, parse_json_answer(reference)[0]))


def field_accuracy(predictions: Sequence[str], references: Sequence[str]) -> dict[str, dict]:
    """Per top-level field of the references: how often the prediction has it exactly right
    (the whole subtree, numbers as numbers), over the samples whose reference has it."""
    tally: dict[str, list[int]] = {}
    for prediction, reference in zip(predictions, references, strict=True):
        ref, _ = parse_json_answer(reference)
        pred, how = parse_json_answer(prediction)
        if not isinstance(ref, dict):
            continue
        for key, value in ref.items():
            right = how is not None and isinstance(pred, dict) and key in pred and \
                values_equal(pred[key], value)
            hits = tally.setdefault(str(key), [0, 0])
            hits[0] += right
            hits[1] += 1
    return {key: {"exact_match": hits / n, "n": n} for key, (hits, n) in tally.items()}


TASK_METRICS: dict[str, tuple[str, ...]] = {
    "short": ("exact_match", "exact_match_raw", "anls"),
    "json": ("json_f1", "json_precision", "json_recall", "json_parse_rate", "json_exact"),
    "reading": ("cer", "anls", "exact_match"),
    "description": ("chrf", "rouge_l"),
}


# --------------------------------------------------------------------------- the task

SHORT_CHARS, SHORT_WORDS = 32, 4


def detect_task(references: Sequence[str]) -> tuple[str, str]:
    """``(task, why)`` from the reference answers: JSON if every one parses as an object or a
    list, short if every one is at most 32 characters and 4 words (8 Chinese characters),
    description if most end
    like a sentence, reading (transcription) otherwise."""
    n = len(references)
    if n and all(isinstance(parse_json_answer(r)[0], dict | list) and parse_json_answer(r)[1]
                 == "json" for r in references):
        return "json", f"all {n} references are JSON"
    if n and all(len(r) <= SHORT_CHARS and len(r.split()) <= SHORT_WORDS and
                 sum(map(is_cjk, r)) <= SHORT_WORDS * 2 for r in references):
        return "short", f"all {n} references are short (<= {SHORT_CHARS} characters, " \
                        f"<= {SHORT_WORDS} words or {SHORT_WORDS * 2} Chinese characters)"
    sentences = sum(r.rstrip().endswith((".", "。", "!", "?", "！", "？")) for r in references)
    if sentences > n / 2:
        return "description", f"{sentences} of {n} references end like a sentence"
    return "reading", f"the references are longer text and {n - sentences} of {n} do not end " \
                      "like a sentence (a transcription)"


def resolve_task(task: str, references: Sequence[str],
                 ids: Sequence[str] | None = None) -> tuple[str, str]:
    """The task to score (``auto`` detects it), and why.

    Raises:
        ConfigError: ``task`` is not a known task.
        DatasetError: the task is ``json`` but a reference is not JSON (names the sample).
    """
    if task == "auto":
        return detect_task(references)
    if task not in TASKS:
        raise ConfigError(f"eval_task {task!r} is not a task.",
                          fix=f"use auto or one of {', '.join(TASKS)}.")
    if task == "json":
        for i, reference in enumerate(references):
            if parse_json_answer(reference)[1] is None:
                raise DatasetError("eval_task is json, but this sample's reference answer is "
                                   f"not JSON: {reference[:60]!r}.",
                                   sample_id=ids[i] if ids else str(i),
                                   fix="fix the answer, or set eval_task to auto.")
    return task, "set in the configuration"


def metrics_for(task: str, extra: Iterable[str] = ()) -> list[Metric]:
    """The task's metrics (headline first), then the ``extra`` ones by name."""
    names = list(TASK_METRICS[task]) + [m for m in extra if m not in TASK_METRICS[task]]
    return [get_metric(name) for name in names]


def score_samples(metric: Metric, predictions: Sequence[str], references: Sequence[str],
                  ids: Sequence[str] | None = None) -> np.ndarray:
    """Per-sample values, shape (n,) (or (n, k) for counts metrics).

    Raises:
        ConfigError: the metric returned something other than a finite number (names the
            metric and the sample).
    """
    values = []
    for i, (prediction, reference) in enumerate(zip(predictions, references, strict=True)):
        value = metric.score(prediction, reference)
        parts = value if metric.counts and isinstance(value, tuple | list) else [value]
        ok = all(isinstance(x, Real) for x in parts)  # not "0.5", not None
        number = np.asarray(value, dtype=float) if ok else None
        ok = ok and bool(np.all(np.isfinite(number)))
        if not ok:
            raise ConfigError(f"the metric {metric.name!r} returned {value!r}, not a finite "
                              "number.", sample_id=ids[i] if ids else str(i),
                              fix="make it return a float for every (prediction, reference), "
                                  "empty strings included.")
        values.append(number)
    return np.asarray(values, dtype=float)
