"""Evaluation metrics against hand-computed values (English and Chinese, nested and malformed
JSON, numbers as strings, empty predictions), task detection, and the bootstrap intervals."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from qvl_helpers import answers as A
from qvl_helpers import metrics as M
from qvl_helpers import verdicts as V
from qvl_helpers.errors import ConfigError, DatasetError


@pytest.mark.parametrize(("prediction", "reference", "normalised", "raw"), [
    ("red", "red", 1, 1),
    ("Red.", "red", 1, 0),                  # case and the final stop
    ("ＲＥＤ", "red", 1, 0),                  # full-width letters
    ("  light   blue ", "light blue", 1, 0),  # inner spacing (raw strips the ends only)
    ("红色。", "红色", 1, 0),                  # Chinese full stop
    ("１２，５", "12,5", 1, 0),                # full-width digits and comma
    ("red!", "red", 0, 0),
    ("", "red", 0, 0),                      # an empty prediction is a miss
])
def test_exact_match(prediction: str, reference: str, normalised: int, raw: int) -> None:
    assert M.exact_match(prediction, reference) == normalised
    assert M.exact_match_raw(prediction, reference) == raw


@pytest.mark.parametrize(("prediction", "reference", "expected"), [
    ("hello", "hello", 1.0),
    ("helo", "hello", 0.8),          # 1 edit / 5 characters
    ("HELLO ", "hello", 1.0),        # lower-cased and stripped, as in DocVQA
    ("abxy", "abcd", 0.0),           # distance 0.5 reaches the threshold: 0
    ("abcx", "abcd", 0.75),
    ("你好世", "你好世界", 0.75),       # 1 deletion / 4 characters
    ("", "total", 0.0),
])
def test_anls(prediction: str, reference: str, expected: float) -> None:
    assert M.anls(prediction, reference) == pytest.approx(expected)


def cer(prediction: str, reference: str) -> float:
    metric = M.METRICS["cer"]
    return metric.sample_value(M.cer_counts(prediction, reference))


@pytest.mark.parametrize(("prediction", "reference", "expected"), [
    ("你好", "你们好", 1 / 3),          # one deletion in three characters
    ("abcd", "abc", 1 / 3),           # one insertion
    ("axc", "abc", 1 / 3),            # one substitution
    ("a  b", "a b", 0.0),             # runs of whitespace count once
    ("", "abc", 1.0),                 # everything deleted
    ("abcdef", "ab", 2.0),            # four insertions: CER exceeds 1
    ("", "", 0.0),
    ("x", "   ", 1.0),                # nothing expected, something said
])
def test_cer(prediction: str, reference: str, expected: float) -> None:
    assert cer(prediction, reference) == pytest.approx(expected)
    assert not M.METRICS["cer"].higher_is_better


def test_cer_is_pooled_over_the_split() -> None:
    """A wrong one-character answer does not weigh as much as a perfect 100-character page."""
    page = "x" * 100
    values = np.array([M.cer_counts("b", "a"), M.cer_counts(page, page)], dtype=float)
    assert M.METRICS["cer"].summarise(values[None, ...])[0] == pytest.approx(1 / 101)


def test_chrf_means_the_same_for_chinese_and_english() -> None:
    assert M.chrf("a cat on a mat", "a cat on a mat") == pytest.approx(1.0)
    assert M.chrf("xyz", "abc") == pytest.approx(0.0)
    assert M.chrf("", "abc") == pytest.approx(0.0)
    assert M.chrf("", "") == pytest.approx(1.0)  # nothing expected, nothing said
    # The same edit on the same number of characters scores the same in either script.
    english, chinese = M.chrf("abdcef", "abcdef"), M.chrf("甲乙丁丙戊己", "甲乙丙丁戊己")
    assert 0.2 < english < 0.9
    assert chinese == pytest.approx(english)


@pytest.mark.parametrize(("prediction", "reference", "expected"), [
    ("the cat sat", "the cat sat down", 2 * 3 / 7),    # LCS 3 words of 3 and 4
    ("The cat, sat.", "the cat sat", 1.0),             # case and punctuation do not count
    ("sat the cat", "the cat sat", 2 * 2 / 6),
    ("一只猫", "一只狗", 2 * 2 / 6),                     # characters for Chinese
    ("猫 in 图", "猫 in 图", 1.0),
    ("", "the cat", 0.0),
])
def test_rouge_l(prediction: str, reference: str, expected: float) -> None:
    assert M.rouge_l(prediction, reference) == pytest.approx(expected)


RECEIPT = '{"total": "12.50", "items": [{"name": "Tea", "price": 3}], "store": {"name": "ABC"}}'


def test_json_counts_nested_lists_and_numbers_as_strings() -> None:
    prediction = ('{"total": 12.5, "items": [{"name": "tea", "price": "3.00"}], '
                  '"store": {"name": "XYZ"}, "extra": 1}')
    # Reference leaves: total, items[0].name, items[0].price, store.name (4).
    # Predicted: those four and extra (5). Right: total (a number), name (case), price (3.00 = 3).
    assert M.json_counts(prediction, RECEIPT) == (3, 5, 4)
    sample = M.METRICS["json_f1"].sample_value((3, 5, 4))
    assert sample == pytest.approx(2 * 3 / (5 + 4))
    assert M.METRICS["json_precision"].sample_value((3, 5, 4)) == pytest.approx(3 / 5)
    assert M.METRICS["json_recall"].sample_value((3, 5, 4)) == pytest.approx(3 / 4)


def test_malformed_json_is_a_counted_miss() -> None:
    assert M.json_counts('{"total": 12.5, "items": [', RECEIPT) == (0, 0, 4)
    assert M.json_counts("", RECEIPT) == (0, 0, 4)
    assert M.json_parse_rate('{"total": 12.5', RECEIPT) == 0.0
    assert M.json_exact("not json", RECEIPT) == 0.0
    # Micro averaging sums the counts: one perfect sample and one malformed one.
    values = np.array([[4, 4, 4], [0, 0, 4]], dtype=float)
    f1 = M.METRICS["json_f1"].summarise(values[None, ...])[0]
    assert f1 == pytest.approx(2 * 4 / (4 + 8))
    # Nothing parsed at all: precision is 0, not a perfect score for saying nothing.
    nothing = np.array([[0, 0, 4], [0, 0, 2]], dtype=float)[None, ...]
    assert M.METRICS["json_precision"].summarise(nothing)[0] == 0.0
    assert M.METRICS["json_precision"].sample_value((0, 0, 4)) == 0.0
    assert M.METRICS["json_precision"].sample_value((0, 0, 0)) == 1.0  # nothing expected


def test_fenced_json_parses_and_is_reported_as_fenced() -> None:
    fenced = "```json\n" + RECEIPT + "\n```"
    assert A.parse_json_answer(fenced)[1] == "fenced"
    assert M.json_parse_rate(fenced, RECEIPT) == 1.0
    assert M.json_exact(fenced, RECEIPT) == 1.0
    assert M.json_counts(fenced, RECEIPT) == (4, 4, 4)


@pytest.mark.parametrize(("a", "b", "equal"), [
    ("12.50", 12.5, True), ("1,234.50", 1234.5, True), ("１２.５", "12.5", True),
    (3, "3.00", True), ("12.5", "12.51", False), ("$12.50", 12.5, False),
    (True, "true", False), (None, None, True), ({"a": [1, "x"]}, {"a": ["1", "X"]}, True),
    ([1, 2], [2, 1], False),
    (4155550123, 4155550124, False),                 # phone numbers, invoice numbers: exact
    ("12345678901234567", "12345678901234568", False),  # beyond float precision
    ("0123", "123", False),                           # leading zeros: an ID, not a number
    ("0.5", 0.5, True), ("-3", -3.0, True),
])
def test_values_equal(a: object, b: object, equal: bool) -> None:
    assert A.values_equal(a, b) is equal


def test_field_accuracy_per_top_level_key() -> None:
    references = [RECEIPT, '{"total": "5", "store": {"name": "B"}}']
    predictions = ['{"total": "12.5", "items": [], "store": {"name": "abc"}}', "oops"]
    fields = M.field_accuracy(predictions, references)
    assert fields["total"] == {"exact_match": 0.5, "n": 2}
    assert fields["items"] == {"exact_match": 0.0, "n": 1}
    assert fields["store"] == {"exact_match": 0.5, "n": 2}


@pytest.mark.parametrize(("references", "task"), [
    (['{"a": 1}', '[1, 2]'], "json"),
    (["red", "light blue", "12.50"], "short"),
    (["红色", "蓝色"], "short"),
    (["A cat sits on a mat.", "Two dogs play in the park."], "description"),
    (["一只猫坐在垫子上。", "两只狗在公园里玩耍。"], "description"),
    (["TOTAL 12.50\nTAX 1.00\nTHANK YOU", "Invoice 0042 Date 2024-01-02 Amount 99"], "reading"),
    (["这是一张很长的收据上面写着总计十二元五角", "另一张发票的全部文字内容在这里"], "reading"),
    (['{"a": 1}', "plain"], "short"),
])
def test_detect_task(references: list[str], task: str) -> None:
    found, why = M.detect_task(references)
    assert found == task, why


def test_json_task_names_the_sample_whose_reference_is_not_json() -> None:
    with pytest.raises(DatasetError) as err:
        M.resolve_task("json", ['{"a": 1}', "nope"], ["r-1", "r-2"])
    assert "r-2" in str(err.value) and "eval_task" in str(err.value)
    with pytest.raises(ConfigError, match="not a task"):
        M.resolve_task("ocr", ["x"])
    assert M.resolve_task("reading", ["red"])[0] == "reading"


def test_a_learner_registers_a_metric_by_name(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    @M.register_metric("mentions_total")
    def mentions_total(prediction: str, reference: str) -> float:
        """1 if the answer mentions a total."""
        return float("total" in prediction.lower())

    try:
        chosen = M.metrics_for("short", ["mentions_total"])
        assert [m.name for m in chosen] == ["exact_match", "exact_match_raw", "anls",
                                            "mentions_total"]
        values = M.score_samples(chosen[-1], ["The total is 3", "3"], ["3", "3"])
        assert list(values) == [1.0, 0.0]
        assert chosen[-1].description == "1 if the answer mentions a total."
    finally:
        del M.METRICS["mentions_total"]
    for bad in (float("nan"), "0.5", None):
        M.register_metric("broken", lambda p, r, bad=bad: bad)
        with pytest.raises(ConfigError, match="'broken' returned") as err:
            M.score_samples(M.METRICS["broken"], ["a", "b"], ["a", "b"], ["s-1", "s-2"])
        assert "s-1" in str(err.value)
    del M.METRICS["broken"]
    with pytest.raises(ConfigError, match="no metric named 'nope'"):
        M.get_metric("nope")
    # module:function, as `qvl eval --metric my_metrics:longer` gives it
    (tmp_path / "my_metrics.py").write_text(
        "def longer(prediction, reference):\n    return float(len(prediction) > len(reference))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert M.get_metric("my_metrics:longer").score("abc", "a") == 1.0
        with pytest.raises(ConfigError, match="cannot import"):
            M.get_metric("my_metrics:missing")
    finally:
        M.METRICS.pop("my_metrics:longer", None)
        sys.modules.pop("my_metrics", None)


# --------------------------------------------------------------------------- intervals

def test_bootstrap_interval_covers_the_mean_at_the_stated_rate() -> None:
    """Percentile intervals from many seeded samples of Bernoulli(0.3) contain 0.3 about 95% of
    the time (binomial noise over 300 trials allows roughly 0.92 to 0.98)."""
    rng = np.random.default_rng(12345)
    metric = M.METRICS["exact_match"]
    hits = 0
    trials = 300
    for trial in range(trials):
        values = (rng.random(80) < 0.3).astype(float)
        interval = V.bootstrap_interval(metric, values, resamples=1000, seed=trial)
        hits += interval.low <= 0.3 <= interval.high
    assert 0.91 <= hits / trials <= 0.985, hits / trials


def test_intervals_are_seeded_and_paired() -> None:
    metric = M.METRICS["exact_match"]
    a = np.array([1, 1, 0, 1, 0, 1, 1, 1, 0, 1], dtype=float)
    first = V.bootstrap_interval(metric, a, seed=3)
    assert first == V.bootstrap_interval(metric, a, seed=3)
    assert first.value == pytest.approx(0.7)
    assert first.low < 0.7 < first.high
    same = V.paired_difference(metric, a, a.copy())
    assert (same.value, same.low, same.high) == (0.0, 0.0, 0.0)
    # b is right exactly where a is, plus everywhere: the paired difference is never negative,
    # while unpaired intervals of the two would overlap.
    b = np.ones_like(a)
    diff = V.paired_difference(metric, b, a)
    assert diff.value == pytest.approx(0.3) and diff.low >= 0


@pytest.mark.parametrize(("wins", "clear"), [(1, False), (5, False), (6, True)])
def test_few_samples_are_not_called_better(wins: int, clear: bool) -> None:
    """All n discordant pairs won: the bootstrap interval is [1, 1] even for n=1, but the exact
    McNemar test needs six wins out of six for p < 0.05 (five give p = 0.0625)."""
    metric = M.METRICS["exact_match"]
    a, b = np.ones(wins), np.zeros(wins)
    diff = V.paired_difference(metric, a, b)
    assert diff.excludes_zero()
    assert V.is_clear(metric, diff, a, b) is clear
    text = V.verdict(metric, "tuned", "base", diff, wins, V.is_clear(metric, diff, a, b))
    assert text.startswith("tuned is better") if clear else "too few samples" in text

def test_verdicts_say_better_only_when_the_interval_excludes_zero() -> None:
    em, cer = M.METRICS["exact_match"], M.METRICS["cer"]
    clear = V.Interval(0.4, 0.2, 0.6)
    unclear = V.Interval(0.05, -0.1, 0.2)
    assert V.verdict(em, "tuned", "base", clear, 50).startswith("tuned is better than base")
    assert "no clear difference" in V.verdict(em, "tuned", "base", unclear, 50)
    # For CER lower is better: a negative difference means the first system is better.
    assert "is better" in V.verdict(cer, "tuned", "base", V.Interval(-0.3, -0.5, -0.1), 50)
    # half-width 0.15 for a difference of 0.05 at n=50: 9x the samples for the half-width to
    # reach the difference, times ((1.96 + 0.84) / 1.96)^2 for an 80% chance of a clear result
    assert V.samples_needed(unclear, 50) == 920
