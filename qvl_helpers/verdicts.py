"""Honest intervals for evaluation scores, and the sentences the evaluation says about them.

Intervals are percentile bootstrap intervals over samples (:func:`bootstrap_interval`), and a
comparison of two systems is the *paired* bootstrap interval of their difference
(:func:`paired_difference`): the same resampled samples for both, which is what makes small test
sets usable. Where both systems are scored 0/1 per sample and the pairs are few, McNemar's exact
test decides instead (:func:`uses_exact_test`). :func:`judge` turns a comparison into its
status, reason, verdict and samples-needed figure: the one source of every sentence the
evaluation prints about it (``tests/test_verdicts.py`` holds each to its numbers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from .metrics import Metric

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
