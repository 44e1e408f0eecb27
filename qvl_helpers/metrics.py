"""Task metrics for evaluation, and honest intervals for them.

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

Intervals are percentile bootstrap intervals over samples (:func:`bootstrap_interval`), and a
comparison of two systems is the *paired* bootstrap interval of their difference
(:func:`paired_difference`): the same resampled samples for both, which is what makes small test
sets usable. :func:`judge` turns a comparison into its status, reason, verdict and samples-needed
figure: the one source of every sentence the evaluation prints about it.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from numbers import Real
from typing import Any

import numpy as np

from .errors import ConfigError, DatasetError

TASKS = ("short", "json", "reading", "description")


# --------------------------------------------------------------------------- normalisation

_TRAILING_STOPS = ".。"


def normalise_text(text: str) -> str:
    """The form that normalised exact match compares: Unicode NFKC (full-width letters, digits and
    punctuation become half-width), case folded, runs of whitespace as one space, no trailing
    full stop (``.`` or ``。``)."""
    text = " ".join(unicodedata.normalize("NFKC", text).casefold().split())
    return text.rstrip(_TRAILING_STOPS).rstrip()


def is_cjk(char: str) -> bool:
    """Whether a character is a CJK ideograph (Chinese characters, kana excluded)."""
    return "\u4e00" <= char <= "\u9fff" or "\u3400" <= char <= "\u4dbf" or \
        "\uf900" <= char <= "\ufaff"


def tokens_for_overlap(text: str) -> list[str]:
    """Words for space-separated text, single characters for CJK ideographs, punctuation dropped:
    the units ROUGE-L counts."""
    return re.findall(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|[^\W\u3400-\u9fff]+",
                      normalise_text(text))


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


# --------------------------------------------------------------------------- JSON answers

def parse_json_answer(text: str) -> tuple[Any, str | None]:
    """``(value, how)``: how is ``"json"``, ``"fenced"`` (inside a Markdown code fence, as chat
    models like to answer) or ``None`` when the text is not JSON (then value is None)."""
    text = text.strip()
    how = "json"
    fence = re.fullmatch(r"```[A-Za-z]*\s*\n?(.*?)\n?\s*```", text, flags=re.DOTALL)
    if fence:
        text, how = fence.group(1).strip(), "fenced"
    try:
        return json.loads(text), how
    except (ValueError, RecursionError):
        return None, None


def flatten_json(value: Any, prefix: str = "") -> dict[str, Any]:
    """Leaves by key path: ``{"a": {"b": 1}, "c": [2]}`` -> ``{"a.b": 1, "c[0]": 2}``. An empty
    object or list is a leaf of its own."""
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flatten_json(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, list) and value:
        out = {}
        for i, item in enumerate(value):
            out.update(flatten_json(item, f"{prefix}[{i}]"))
        return out
    return {prefix: value}


_NUMBER = re.compile(r"[+-]?(0|[1-9]\d*|[1-9]\d{0,2}(,\d{3})+)(\.\d+)?|[+-]?\.\d+")


def as_number(value: Any) -> Decimal | None:
    """A JSON number, or a string that is one (``"12.50"``, ``"1,234.5"``), as an exact decimal.
    Text with leading zeros (``"0123"``: an ID, a ZIP code) is not a number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return Decimal(str(value)) if math.isfinite(value) else None
    if isinstance(value, str):
        text = unicodedata.normalize("NFKC", value).strip()
        if _NUMBER.fullmatch(text):
            return Decimal(text.replace(",", ""))
    return None


def values_equal(prediction: Any, reference: Any) -> bool:
    """Leaf (or subtree) equality: numbers as numbers, text after :func:`normalise_text`."""
    if isinstance(reference, dict) or isinstance(prediction, dict):
        return isinstance(reference, dict) and isinstance(prediction, dict) and \
            reference.keys() == prediction.keys() and \
            all(values_equal(prediction[k], reference[k]) for k in reference)
    if isinstance(reference, list) or isinstance(prediction, list):
        return isinstance(reference, list) and isinstance(prediction, list) and \
            len(reference) == len(prediction) and \
            all(values_equal(p, r) for p, r in zip(prediction, reference, strict=True))
    a, b = as_number(prediction), as_number(reference)
    if a is not None and b is not None:
        return a == b  # exact: 4155550123 is not 4155550124
    if isinstance(reference, str) and isinstance(prediction, str):
        return normalise_text(prediction) == normalise_text(reference)
    return type(prediction) is type(reference) and prediction == reference


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


# --------------------------------------------------------------------------- intervals

@dataclass(frozen=True)
class Interval:
    """A statistic and its bootstrap interval."""

    value: float
    low: float
    high: float
    level: float = 0.95

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def as_dict(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high, "level": self.level}

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"


RESAMPLES = 2000


def resample_indices(n: int, *, resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """``resamples`` bootstrap samples of ``range(n)`` drawn with replacement, shape (B, n)."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def _interval(point: float, draws: np.ndarray, level: float) -> Interval:
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail])
    return Interval(float(point), float(low), float(high), level)


def bootstrap_interval(metric: Metric, values: np.ndarray, *, resamples: int = RESAMPLES,
                       seed: int = 0, level: float = 0.95) -> Interval:
    """The split score of ``values`` with its percentile bootstrap interval (seeded)."""
    if len(values) == 0:
        raise ValueError("no samples to score")
    idx = resample_indices(len(values), resamples=resamples, seed=seed)
    point = float(metric.summarise(values[None, ...])[0])
    return _interval(point, metric.summarise(values[idx]), level)


def paired_difference(metric: Metric, a: np.ndarray, b: np.ndarray, *,
                      resamples: int = RESAMPLES, seed: int = 0, level: float = 0.95) -> Interval:
    """Score(a) - score(b) on the same samples, with the paired bootstrap interval: each resample
    draws the same samples for both systems, so the noise they share cancels."""
    if len(a) != len(b) or len(a) == 0:
        raise ValueError("paired systems must be scored on the same, non-empty samples")
    idx = resample_indices(len(a), resamples=resamples, seed=seed)
    point = float(metric.summarise(a[None, ...])[0] - metric.summarise(b[None, ...])[0])
    return _interval(point, metric.summarise(a[idx]) - metric.summarise(b[idx]), level)


def mcnemar_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided exact McNemar test for paired 0/1 scores: the chance of a split of the
    discordant pairs at least this uneven if neither system were better."""
    wins, losses = int(np.sum(a > b)), int(np.sum(a < b))
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(wins, losses) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


MIN_PAIRS = 10  # below this many samples only an exact test can call a difference
SMALL_N = 30  # below this many test samples, every interval is wide: the report says so


def small_test_warning(n: int) -> str | None:
    """The one sentence about a test split too small to tell much (``None`` from SMALL_N on):
    the evaluation report, the split step and the data preparation all show this one."""
    if not 0 < n < SMALL_N:
        return None
    return (f"the test split has only {n} sample(s): one answer moves a right/wrong score by "
            f"{100 / n:.0f} points and every interval is wide. Treat differences smaller than "
            "the intervals as unknown, and add test data if you can.")


def constant_score_warning(system: str, all_right: bool, n: int) -> str:
    """The sentence for a system that scored the same on every one of ``n`` right/wrong samples:
    its bootstrap interval has no width, so give the exact one-sided 95% bound instead (the rate
    ``p`` at which ``n`` identical results have a 5% chance: ``(1 - p) ** n = 0.05``; the "rule of
    three", 3/n, approximates it for large n only and passes 1 below n = 3)."""
    bound = 0.05 ** (1 / n)
    edge = f"as low as {bound:.3f}" if all_right else f"as high as {1 - bound:.3f}"
    return (f"{system} scored {int(all_right)} on every sample, so its bootstrap interval has no "
            f"width; with n={n} the true rate can still be {edge} (exact one-sided 95% bound).")


def uses_exact_test(metric: Metric, a: np.ndarray, b: np.ndarray) -> bool:
    """Whether a comparison is of right/wrong scores (every value 0 or 1, not pooled counts):
    those are judged by the exact McNemar test as well as the bootstrap interval."""
    return not metric.counts and set(np.unique(np.concatenate([a, b])).tolist()) <= {0.0, 1.0}


def _shown(diff: Interval) -> bool:
    """The interval excludes 0 on the side of the point estimate (a difference it shows)."""
    return (diff.value > 0 and diff.low > 0) or (diff.value < 0 and diff.high < 0)


def is_clear(metric: Metric, diff: Interval, a: np.ndarray, b: np.ndarray) -> bool:
    """Whether a paired difference is told apart from noise: the bootstrap interval excludes
    zero (on the side of the difference), and for right/wrong scores the exact McNemar test
    agrees (p < 0.05); a percentile bootstrap alone is over-confident when few pairs differ.
    Other metrics need MIN_PAIRS."""
    return judge_status(metric, diff, a, b) == CLEAR


CLEAR, INTERVAL, FEW = "clear", "interval_includes_zero", "too_few_samples"


def judge_status(metric: Metric, diff: Interval, a: np.ndarray, b: np.ndarray) -> str:
    """``CLEAR``; ``INTERVAL`` (the interval does not show a difference); or ``FEW`` (it does,
    but the exact test, or for other metrics MIN_PAIRS, says there are too few samples)."""
    if not _shown(diff):
        return INTERVAL
    if uses_exact_test(metric, a, b):
        return CLEAR if mcnemar_p(a, b) < 1 - diff.level else FEW
    return CLEAR if len(a) >= MIN_PAIRS else FEW


def _bounds(diff: Interval) -> str:
    return f"{diff.level:.0%} interval of the difference [{diff.low:+.3f}, {diff.high:+.3f}]"


def reason(metric: Metric, diff: Interval, a: np.ndarray, b: np.ndarray) -> str:
    """Why a comparison is (not) clear, as a phrase with its numbers: the one reason the report,
    the notebook and the advice show."""
    status = judge_status(metric, diff, a, b)
    exact = uses_exact_test(metric, a, b)
    wins, losses = int(np.sum(a > b)), int(np.sum(a < b))
    test = (f"the exact McNemar test on the {wins + losses} samples where they differ "
            f"({wins} won, {losses} lost) gives p={mcnemar_p(a, b):.3f}")
    if status == INTERVAL:
        if diff.low <= 0 <= diff.high:
            return f"the {_bounds(diff)} includes 0"
        return f"the {_bounds(diff)} lies on the other side of 0 from the difference"
    if status == FEW:
        if exact:
            return (f"too few samples to tell: the {_bounds(diff)} excludes 0, but {test}, not "
                    f"below {1 - diff.level:.2f}, at n={len(a)}")
        return (f"too few samples to tell: the {_bounds(diff)} excludes 0, but a bootstrap "
                f"interval is not trusted below {MIN_PAIRS} samples (n={len(a)})")
    return f"the {_bounds(diff)} excludes 0" + (f" and {test}" if exact else "")


def verdict(metric: Metric, first: str, second: str, diff: Interval, n: int,
            clear: bool | None = None, why: str | None = None) -> str:
    """One honest sentence on ``first`` vs ``second``: better, worse, not told apart (the
    interval includes 0), or too few samples to tell (it excludes 0, the exact test cannot call
    it yet), with ``why`` (from :func:`reason`; without it, what the interval alone says)."""
    clear = _shown(diff) if clear is None else clear
    if why is None:
        why = (f"the {_bounds(diff)} {'excludes' if _shown(diff) else 'includes'} 0"
               if clear or not _shown(diff) else "too few samples to tell")
    at = "" if "n=" in why else f"; n={n}"
    if clear:
        return (f"{first} is {'better' if first_is_better(metric, diff) else 'worse'} than "
                f"{second} in {metric.name} by {abs(diff.value):.3f} ({why}{at})")
    if _shown(diff):
        return f"{first} vs {second}: {metric.name} {diff.value:+.3f}, {why}{at}"
    return (f"{first} vs {second}: no clear difference in {metric.name} "
            f"({diff.value:+.3f}; {why}{at})")


def first_is_better(metric: Metric, diff: Interval) -> bool:
    """The direction of a difference (first - second), with the metric's sense."""
    return (diff.value > 0) == metric.higher_is_better


#: (z for 95% two-sided + z for 80% power) / z: the usual sample-size factor, squared below.
_Z_LEVEL, _Z_POWER = 1.959964, 0.841621
_POWER = (_Z_LEVEL + _Z_POWER) / _Z_LEVEL
EXACT_UP_TO = 1000  # the exact test's power is computed up to this many samples, then approximated


def samples_needed(diff: Interval, n: int, pairs: tuple[int, int] | None = None) -> int | None:
    """Roughly how many samples would give an 80% chance of a clear result for a difference this
    large, if it is the true one; always more than ``n``, or ``None`` when no honest figure
    exists (no difference, or nothing to scale).

    Right/wrong scores (``pairs``: the samples ``(won, lost)`` by the first system) are judged by
    the exact McNemar test, so the figure is the smallest sample count whose exact test has 80%
    power when the samples win and lose at the observed rates (computed exactly up to
    EXACT_UP_TO samples; beyond, Connor's normal approximation). Other metrics: the bootstrap
    interval's side towards 0 shrinks as 1/sqrt(n) until it is smaller than the difference, and
    no fewer than MIN_PAIRS samples.
    """
    if pairs is not None:
        found = _mcnemar_samples(*pairs, n)
    else:
        side = diff.value - diff.low if diff.value > 0 else diff.high - diff.value
        if diff.value == 0 or side < 0:
            return None
        scaled = math.ceil(round(n * (side * _POWER / abs(diff.value)) ** 2, 6))
        found = max(scaled, MIN_PAIRS)
    return found if found is not None and found > n else None


@lru_cache(maxsize=1)
def _exact_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Log binomial coefficients C(d, k) for d, k <= EXACT_UP_TO, and for each d the largest k
    whose two-sided exact test (p = 0.5) rejects at 5% (-1: none)."""
    top = EXACT_UP_TO
    log_fact = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, top + 1)))])
    d, k = np.arange(top + 1)[:, None], np.arange(top + 1)[None, :]
    valid = k <= d
    log_comb = np.where(valid, log_fact[d] - log_fact[k] - log_fact[np.where(valid, d - k, 0)],
                        -np.inf)
    cdf = np.cumsum(np.exp(log_comb - d * math.log(2)), axis=1)
    critical = np.where(valid & (2 * cdf < 0.05), k, -1).max(axis=1)
    return log_comb, critical, k


def _log_pmf(log_comb: np.ndarray, k: np.ndarray, p: float) -> np.ndarray:
    """log Binomial(d, p) at k for every row d (with 0 log 0 = 0)."""
    d = np.arange(log_comb.shape[0])[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        hits = np.where(k > 0, k * math.log(p) if p > 0 else -np.inf, 0.0)
        misses = np.where(d - k > 0, (d - k) * math.log(1 - p) if p < 1 else -np.inf, 0.0)
    return log_comb + hits + misses


def _connor(wins: int, losses: int, n: int) -> float:
    """Connor's (1987) normal-approximation sample size for McNemar's test (95%, 80% power)."""
    discordant, delta = (wins + losses) / n, abs(wins - losses) / n
    spread = max(discordant - delta ** 2, 0.0)
    return (_Z_LEVEL * math.sqrt(discordant) + _Z_POWER * math.sqrt(spread)) ** 2 / delta ** 2


@lru_cache(maxsize=4096)
def _mcnemar_samples(wins: int, losses: int, n: int) -> int | None:
    """See :func:`samples_needed` (right/wrong scores)."""
    if wins == losses or n == 0:
        return None
    approx = _connor(wins, losses, n)
    beyond = max(math.ceil(approx), EXACT_UP_TO + 1, n + 1)
    if approx > 2 * EXACT_UP_TO:  # far beyond the exact table: the approximation it is
        return beyond
    discordant, share = (wins + losses) / n, wins / (wins + losses)
    log_comb, critical, k = _exact_tables()
    top = min(max(2 * n, 64, math.ceil(1.5 * approx)), EXACT_UP_TO)
    while True:  # the power for every sample count up to top (small answers stay cheap)
        comb, kk, crit = log_comb[:top + 1, :top + 1], k[:, :top + 1], critical[:top + 1, None]
        with np.errstate(under="ignore"):
            at_share = np.exp(_log_pmf(comb, kk, share))  # wins among d discordant pairs
            rows = np.arange(top + 1)[:, None]
            rejected = np.where((kk <= crit) | (kk >= rows - crit), at_share, 0.0).sum(axis=1)
            power = np.exp(_log_pmf(comb, kk, discordant)) @ np.where(crit[:, 0] >= 0,
                                                                      rejected, 0.0)
        enough = np.nonzero((power >= 0.8) & (np.arange(top + 1) > n))[0]
        if len(enough):
            return int(enough[0])
        if top == EXACT_UP_TO:
            return beyond
        top = min(2 * top, EXACT_UP_TO)


@dataclass(frozen=True)
class Judgement:
    """A comparison of two systems on one metric, every sentence from its own numbers."""

    first: str
    second: str
    metric: str
    difference: Interval
    status: str  # CLEAR, INTERVAL or FEW
    better: bool | None  # the direction when clear
    reason: str
    verdict: str
    samples_needed: int | None
    warning: str | None  # the samples-needed sentence, when there is a figure

    @property
    def clear(self) -> bool:
        return self.status == CLEAR

    def as_dict(self) -> dict[str, Any]:
        """The comparison as report.json holds it."""
        return {"first": self.first, "second": self.second, "metric": self.metric,
                "difference": self.difference.as_dict(), "clear": self.clear,
                "better": self.better, "status": self.status, "reason": self.reason,
                "verdict": self.verdict, "samples_needed": self.samples_needed}


def judge(metric: Metric, first: str, second: str, a: np.ndarray, b: np.ndarray, *,
          resamples: int = RESAMPLES, seed: int = 0, level: float = 0.95) -> Judgement:
    """Compare ``first`` (scores ``a``) with ``second`` (``b``) on the same samples: the paired
    interval, whether it is clear and why, the verdict, and how many samples would tell."""
    diff = paired_difference(metric, a, b, resamples=resamples, seed=seed, level=level)
    n, status = len(a), judge_status(metric, diff, a, b)
    why = reason(metric, diff, a, b)
    needed = None
    if status != CLEAR:
        pairs = (int(np.sum(a > b)), int(np.sum(a < b))) if uses_exact_test(metric, a, b) \
            else None
        needed = samples_needed(diff, n, pairs)
    warning = None if needed is None else (
        f"{first} vs {second}: a difference of {diff.value:+.3f} cannot be told from noise with "
        f"n={n}; about {needed} samples would give an 80% chance of telling a true difference "
        "that size.")
    return Judgement(first, second, metric.name, diff, status,
                     first_is_better(metric, diff) if status == CLEAR else None, why,
                     verdict(metric, first, second, diff, n, status == CLEAR, why), needed,
                     warning)
