"""Every sentence the evaluation prints, held to its own numbers over many generated score
vectors (a seeded RNG: n from 3 to 500, ties, all right, all wrong, each direction, right/wrong
and continuous metrics, a metric where lower is better), and the learner's report that started
it (n = 4: tuned 0.750, base 0.000, prompt 0.000).

The generated part checks 1440 comparisons (counted by ``test_the_generated_cases_are_many``)
and 432 combinations of run settings; it takes a few seconds (300 bootstrap resamples instead of
2000: the sentences must be true of whatever interval comes out)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

import qvl_helpers.evaluate as E
from qvl_helpers import metrics as M
from qvl_helpers import prompts as P
from qvl_helpers import verdicts as V
from qvl_helpers.advice import MAX_PIXELS_LIMIT, _comparison_steps, change, next_steps
from qvl_helpers.data.prepare import split_warnings
from qvl_helpers.data.records import scored_turn, turns_of
from qvl_helpers.gallery import gallery_rows, gallery_table

REPO = Path(__file__).resolve().parent.parent
SHAPES = REPO / "data_samples" / "shapes"
RESAMPLES = 300
SIZES = (3, 4, 5, 6, 7, 9, 10, 12, 16, 25, 40, 64, 100, 180, 300, 500)
PATTERNS = ("random", "tie", "all right", "all wrong", "first all right", "second all right",
            "first ahead", "second ahead", "one differs")
METRIC_NAMES = ("exact_match", "anls", "cer")


def scores_for(metric: M.Metric, pattern: str, n: int, rng: np.random.Generator
               ) -> tuple[np.ndarray, np.ndarray]:
    """Paired per-sample values of two systems (``(n,)``; ``(n, 2)`` counts for CER)."""
    p, q = rng.random(2)
    if pattern == "first ahead":
        p, q = max(p, q), min(p, q) * 0.5
    elif pattern == "second ahead":
        p, q = min(p, q) * 0.5, max(p, q)
    a, b = rng.random(n) < p, rng.random(n) < q
    if pattern == "tie":
        b = a.copy()
    elif pattern == "all right":
        a = b = np.ones(n, bool)
    elif pattern == "all wrong":
        a = b = np.zeros(n, bool)
    elif pattern == "first all right":
        a, b = np.ones(n, bool), rng.random(n) < 0.2
    elif pattern == "second all right":
        a, b = rng.random(n) < 0.2, np.ones(n, bool)
    elif pattern == "one differs":
        a, b = np.zeros(n, bool), np.zeros(n, bool)
        a[0] = True
    if metric.name == "exact_match":
        return a.astype(float), b.astype(float)
    if metric.name == "anls":  # right answers 1, others a partial similarity
        partial = rng.uniform(0, 0.9, (2, n)) * (rng.random((2, n)) < 0.7)
        return np.where(a, 1.0, partial[0]), np.where(b, 1.0, partial[1])
    chars = rng.integers(1, 12, (2, n))  # CER counts: (edits, reference characters)
    edits = np.where([a, b], 0, rng.integers(1, 6, (2, n)))
    if pattern == "tie":
        edits[1], chars[1] = edits[0], chars[0]
    chars[1] = chars[0]  # the same references for both systems
    return np.stack([edits[0], chars[0]], 1).astype(float), \
        np.stack([edits[1], chars[1]], 1).astype(float)


def exact_p(wins: int, losses: int) -> float:
    """The two-sided exact binomial test of wins against losses, written out independently."""
    d = wins + losses
    if d == 0:
        return 1.0
    probs = [math.comb(d, k) / 2 ** d for k in range(d + 1)]
    seen = probs[wins]
    return min(1.0, sum(pr for pr in probs if pr <= seen + 1e-15))


def generated() -> list[tuple[M.Metric, V.Judgement, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(2026)
    cases = []
    for name in METRIC_NAMES:
        metric = M.METRICS[name]
        for n in SIZES:
            for pattern in PATTERNS:
                for _ in range(8 if pattern in ("random", "first ahead", "second ahead") else 1):
                    a, b = scores_for(metric, pattern, n, rng)
                    judged = V.judge(metric, "tuned", "base", a, b, resamples=RESAMPLES,
                                     seed=int(rng.integers(1000)))
                    cases.append((metric, judged, a, b))
    return cases


@pytest.fixture(scope="module")
def cases() -> list[tuple[M.Metric, V.Judgement, np.ndarray, np.ndarray]]:
    return generated()


def test_the_generated_cases_are_many(cases: list) -> None:
    assert len(cases) == 1440
    statuses = {j.status for _, j, _, _ in cases}
    assert statuses == {V.CLEAR, V.INTERVAL, V.FEW}  # every kind of verdict is exercised
    assert {j.better for _, j, _, _ in cases} == {True, False, None}


def test_every_verdict_states_its_own_reason(cases: list) -> None:
    for metric, judged, a, b in cases:
        d = judged.difference
        includes = d.low <= 0 <= d.high
        assert ("includes 0" in judged.reason) == includes, judged.reason
        assert judged.reason in judged.verdict  # the verdict says the reason it was given
        shown = (d.value > 0 and d.low > 0) or (d.value < 0 and d.high < 0)
        exact = metric.name != "cer" and set(np.unique(np.r_[a, b])) <= {0.0, 1.0}
        if exact:
            p = exact_p(int(np.sum(a > b)), int(np.sum(a < b)))
            few = shown and p >= 0.05
        else:
            few = shown and len(a) < V.MIN_PAIRS
        assert ("too few samples to tell" in judged.reason) == few, judged.reason
        assert judged.clear == (shown and not few), judged.verdict
        if exact and shown:
            assert f"p={exact_p(int(np.sum(a > b)), int(np.sum(a < b))):.3f}" in judged.reason
        assert f"[{d.low:+.3f}, {d.high:+.3f}]" in judged.verdict
        assert f"n={len(a)}" in judged.verdict


def test_better_and_worse_follow_the_sign_and_the_metric_sense(cases: list) -> None:
    for metric, judged, _, _ in cases:
        d, text = judged.difference, judged.verdict
        if not judged.clear:
            assert judged.better is None
            assert " is better than " not in text and " is worse than " not in text
            continue
        better = (d.value > 0) == metric.higher_is_better
        assert judged.better is better
        assert text.startswith(f"tuned is {'better' if better else 'worse'} than base")
        assert f"by {abs(d.value):.3f}" in text


def test_a_samples_needed_figure_is_always_more_than_n(cases: list) -> None:
    figures = 0
    for _, judged, a, _b in cases:
        needed, n = judged.samples_needed, len(a)
        if judged.clear:
            assert needed is None and judged.warning is None
            continue
        if needed is None:
            assert judged.warning is None
            continue
        figures += 1
        assert needed > n, (judged.verdict, needed)
        assert f"about {needed} samples" in judged.warning and f"n={n}" in judged.warning
    assert figures > 500


def test_no_figure_where_no_honest_one_exists() -> None:
    em = M.METRICS["exact_match"]
    for a, b in [(np.ones(8), np.ones(8)), (np.zeros(40), np.zeros(40)),
                 (np.array([1, 0, 1, 0.]), np.array([0, 1, 1, 0.]))]:  # a tie either way
        judged = V.judge(em, "tuned", "base", a, b, resamples=RESAMPLES)
        assert judged.samples_needed is None and judged.warning is None


@pytest.mark.parametrize(("wins", "losses", "n"), [(3, 0, 4), (4, 1, 12), (6, 2, 40)])
def test_the_exact_tests_figure_gives_it_its_power(wins: int, losses: int, n: int) -> None:
    """At the figure, samples winning and losing at the observed rates pass the exact test in
    about 80% of simulated test sets (and one sample fewer than that would not be enough)."""
    needed = V.samples_needed(V.Interval(0.1, -0.1, 0.3), n, (wins, losses))
    assert needed is not None and needed > n
    rng = np.random.default_rng(7)
    win, lose = wins / n, losses / n
    draws = rng.multinomial(needed, [win, lose, 1 - win - lose], size=4000)
    power = np.mean([exact_p(w, lo) < 0.05 for w, lo, _ in draws])
    assert power >= 0.77, power


# --------------------------------------------------------------------------- the advice

SETTINGS = [{"trained": trained, "max_pixels": pixels, "min_pixels": 3136, "num_epochs": epochs,
             "max_steps": steps, "lora_r": 8, "lr": 2e-4, "lora_dropout": dropout}
            for trained in ("language", "language+vision", "language+merger")
            for pixels in (3136, 401408, MAX_PIXELS_LIMIT)
            for epochs in (1, 3) for steps in (-1, 40)
            for dropout in (0.0, 0.05, 0.6) for _ in range(4)]


def recommended_values(steps: list[str]) -> list[tuple[str, str]]:
    return re.findall(r"\b(\w+)=([\w+.\-]+)", " ".join(steps))


def assert_not_the_value_in_use(steps: list[str], settings: dict[str, Any]) -> None:
    text = " ".join(steps)
    for key, value in recommended_values(steps):
        assert str(settings.get(key)) != value, (key, value, text)
    if settings["max_pixels"] >= MAX_PIXELS_LIMIT:
        assert "raise max_pixels" not in text, text
    if settings["max_pixels"] <= settings["min_pixels"]:
        assert "smaller max_pixels" not in text, text
    moved = "max_steps" if settings["max_steps"] > 0 else "num_epochs"
    if settings[moved] <= 1:
        assert "fewer epochs" not in text and "fewer steps" not in text, text
    if settings["max_steps"] > 0:  # max_steps overrides num_epochs: num_epochs would do nothing
        assert "num_epochs" not in text, text
    if settings["lora_dropout"] >= 0.5:
        assert "more lora_dropout" not in text, text


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 8, 13, 40, 100, 500])
@pytest.mark.parametrize("all_right", [True, False])
def test_a_constant_score_states_the_bound_its_n_allows(n: int, all_right: bool) -> None:
    """All right (or all wrong) on n samples: the bound the sentence names is the rate at which
    that outcome still has a 5% chance, inside (0, 1) for every n (the rule of three's 3/n
    passes 1 below n = 3 and overstates the bound at small n)."""
    text = V.constant_score_warning("tuned", all_right, n)
    bound = float(re.search(r"as (?:low|high) as (\d\.\d{3})", text).group(1))
    lo, hi = 0.0, 1.0  # bisect for the true rate at which n alike results have a 5% chance
    for _ in range(60):
        mid = (lo + hi) / 2
        chance = mid ** n if all_right else (1 - mid) ** n
        lo, hi = (mid, hi) if (chance < 0.05) == all_right else (lo, mid)
    assert 0 < bound < 1 and abs(bound - lo) <= 0.0005  # the sentence rounds to 3 decimals
    assert f"n={n}" in text and ("as low as" in text) == all_right


def test_advice_never_says_about_as_well_of_a_difference_the_interval_shows(cases: list) -> None:
    rng = np.random.default_rng(5)
    checked = 0
    for _metric, judged, _, _ in cases:
        comparisons = []
        for second in ("base", "prompt", "tuned-blank"):
            c = judged.as_dict()
            comparisons.append({**c, "second": second,
                                "verdict": c["verdict"].replace("base", second, 1)})
        settings = SETTINGS[int(rng.integers(len(SETTINGS)))]
        report = {"comparisons": comparisons}
        steps = _comparison_steps(report, "tuned", settings)
        text = " ".join(steps)
        d = judged.difference
        if not d.low <= 0 <= d.high:
            assert "about as well" not in text and "may do as well" not in text, text
            assert "about the same" not in text and "not told apart" not in text, text
        assert ("Too few test samples" in text) == (judged.status == V.FEW), text
        if judged.clear:
            assert "may do as well" not in text and "Too few" not in text
        assert_not_the_value_in_use(steps, settings)
        checked += 1
    assert checked == len(cases)


@pytest.mark.parametrize("settings", SETTINGS[::4])
def test_advice_never_recommends_the_value_in_use(tmp_path: Path, settings: dict) -> None:
    """The whole of next_steps on a run whose log, predictions and comparisons trigger every
    step that names a setting."""
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "run_config.yaml").write_text(yaml.safe_dump(settings))
    log = [{"step": i, "loss": v} for i, v in enumerate([3, 2.5, 2, 1.5, 1.1, 0.8, 0.5])]
    log += [{"step": 3, "eval_loss": 1.0}, {"step": 6, "eval_loss": 1.6}]
    (run / "train_log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in log))
    rows = [("red", "red")] * 10 + [("blue", "red")] * 4 + [("maybe", "blue")] * 3
    (tmp_path / "predictions-tuned.jsonl").write_text("".join(json.dumps(
        {"id": f"s{i}", "prediction": p, "reference": r, "metrics": {"exact_match": float(p == r)}})
        + "\n" for i, (p, r) in enumerate(rows)))
    for statuses in ([V.INTERVAL] * 3, [V.CLEAR] * 3):
        comparisons = [{"first": "tuned", "second": s, "clear": st == V.CLEAR,
                        "better": False if st == V.CLEAR else None, "status": st,
                        "verdict": f"tuned vs {s}"} for s, st in
                       zip(("base", "prompt", "tuned-blank"), statuses, strict=True)]
        report = {"n": len(rows), "task": "short", "headline": "exact_match",
                  "lower_is_better": [], "systems": {"tuned": {}}, "comparisons": comparisons,
                  "adapter": str(run / "adapter")}
        steps = next_steps(report, tmp_path)
        assert any("still falling" in s for s in steps) and any("over-fitting" in s for s in steps)
        assert_not_the_value_in_use(steps, settings)


def test_change_quotes_the_value_in_use_and_only_moves_where_it_can() -> None:
    for settings in SETTINGS[::4]:
        for key in ("trained", "max_pixels", "num_epochs", "lora_r", "lr", "lora_dropout"):
            for direction in ("raise", "lower"):
                words = change(settings, key, direction)
                if words is None:
                    continue
                assert_not_the_value_in_use([words], settings)
                moved = "max_steps" if key == "num_epochs" and settings["max_steps"] > 0 else key
                assert str(settings[moved]) in words, words
    assert change({"trained": "language+vision"}, "trained", "raise") is None
    assert change({}, "trained", "raise") == "train the vision side too (trained=language+vision)"


# --------------------------------------------------------------------------- the learner's n = 4

def learners_report(tmp_path: Path, trained: str = "language+vision") -> tuple[dict, list]:
    """The learner's numbers through compare() and a run folder with its settings."""
    systems = E.parse_systems("base,prompt,tuned,tuned-blank", has_adapter=True)
    scores = E.Scores(M.metrics_for("short"))
    refs, ids = ["红色", "绿色", "蓝色", "1"], list("abcd")
    tuned = ["红色", "绿色", "蓝色", "2"]
    for system, answers in (("base", ["x"] * 4), ("prompt", ["x"] * 4), ("tuned", tuned),
                            ("tuned-blank", ["红色", "x", "蓝色", "2"])):
        scores.add(system, answers, refs, ids)
    comparisons, warnings = E.compare(scores, systems, 4, 0)
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True, exist_ok=True)
    (run / "adapter" / "run_config.yaml").write_text(yaml.safe_dump(
        {"trained": trained, "max_pixels": 401408, "min_pixels": 3136, "num_epochs": 3,
         "max_steps": -1, "lora_r": 8, "lr": 2e-4, "lora_dropout": 0.05}))
    (tmp_path / "predictions-tuned.jsonl").write_text("".join(json.dumps(
        {"id": i, "prediction": p, "reference": r, "metrics": {"exact_match": float(p == r)}},
        ensure_ascii=False) + "\n" for i, p, r in zip(ids, tuned, refs, strict=True)))
    report = {"n": 4, "task": "short", "headline": "exact_match", "lower_is_better": [],
              "systems": {"tuned": {}}, "comparisons": comparisons, "warnings": warnings,
              "adapter": str(run / "adapter")}
    return report, warnings


def test_the_learners_report_says_too_few_samples_not_interval_includes_0(tmp_path: Path) -> None:
    report, warnings = learners_report(tmp_path)
    base = next(c for c in report["comparisons"] if c["second"] == "base")
    assert base["difference"]["value"] == 0.75 and base["difference"]["low"] > 0
    assert base["status"] == V.FEW
    assert base["reason"].startswith("too few samples to tell")
    assert "includes 0" not in base["reason"] and "p=0.250" in base["reason"]
    assert base["reason"] in base["verdict"]
    assert base["samples_needed"] == 9  # 6 of 6 discordant pairs won: P(Bin(9, 0.75) >= 6) > 0.8
    assert all(c["samples_needed"] is None or c["samples_needed"] > 4
               for c in report["comparisons"])
    steps = next_steps(report, tmp_path)
    text = " ".join(steps)
    assert "about as well" not in text
    assert "Too few test samples to tell tuned from a prompt alone" in text
    assert "trained=language+vision" not in text  # the run already trained the vision side


def test_the_small_split_is_said_once_and_by_one_function(tmp_path: Path) -> None:
    report, warnings = learners_report(tmp_path)
    sentence = V.small_test_warning(4)
    assert sentence is not None and sentence.startswith("the test split has only 4 sample(s)")
    shown = warnings + next_steps(report, tmp_path)
    assert sum("only 4" in s.lower() for s in shown) == 1
    assert sentence in warnings
    assert split_warnings({"train": 30, "val": 3, "test": 4}, 0.1, 0.1) == [sentence]
    assert V.small_test_warning(V.SMALL_N) is None


def test_notebook_04_shows_the_packages_reasons_as_they_are() -> None:
    notebook = json.loads((REPO / "notebooks" / "04_evaluation.ipynb").read_text("utf-8"))
    code = "\n".join(line for c in notebook["cells"] if c["cell_type"] == "code"
                     for line in "".join(c["source"]).splitlines()
                     if not line.lstrip().startswith("#"))  # the code, not its comments
    assert re.search(r"""c\[["']reason["']\]""", code)
    assert "includes 0" not in code and "not clear (" not in code  # no sentence of its own
    assert "answers_of(" not in code and "content[0]" not in code


# --------------------------------------------------------------------------- multi-turn samples

COLOUR_Q, SIDES_Q = "图中形状是什么颜色？", "它有几条边？"
COLOURS = ["红色", "绿色", "蓝色", "黄色"]


def conversation(rid: str, turns: list[tuple[str, str, str | None]]) -> dict:
    messages = []
    for question, answer, image in turns:
        content = ([{"type": "image", "image": image}] if image else []) + \
            [{"type": "text", "text": question}]
        messages += [{"role": "user", "content": content},
                     {"role": "assistant", "content": [{"type": "text", "text": answer}]}]
    return {"id": rid, "messages": messages}


def mixed_records(rng: np.random.Generator, k: int, prefix: str) -> list[dict]:
    """Single-turn colour questions and two-turn ones whose 2nd turn asks for a digit."""
    out = []
    for i in range(k):
        colour = COLOURS[int(rng.integers(len(COLOURS)))]
        image = str(SHAPES / "images" / f"shape_{i % 20:04d}.png")
        turns = [(COLOUR_Q, colour, image)]
        if rng.random() < 0.5:
            turns.append((SIDES_Q, str(int(rng.integers(3, 9))), None))
        out.append(conversation(f"{prefix}-{i}", turns))
    return out


def test_a_multi_turn_samples_prompt_describes_its_scored_turn() -> None:
    rng = np.random.default_rng(11)
    request = E.EvalRequest(model="m", data=Path("d"), out_dir=Path("o"))
    checked = 0
    for _ in range(40):
        trained = mixed_records(rng, int(rng.integers(4, 30)), "train")
        evaluated = mixed_records(rng, int(rng.integers(2, 12)), "test")
        prompts = P.task_prompts(request, "short", evaluated, trained)
        for record, prompt in zip(evaluated, prompts, strict=True):
            turn = scored_turn(record)
            offered = set(re.split("、|, ", re.search(r"(?:之一：|one of: )(.*?)(?:。|\. Reply)",
                                                     prompt).group(1)))
            same = {t.answer for r in trained for t in turns_of(r) if t.question == turn.question}
            if same:  # the answers to the same question, and only those
                assert offered == same, (turn.question, prompt)
            checked += 1
    assert checked > 200
    # A question the training split never asked: the answers of turns at the same position.
    trained = [conversation("t1", [(COLOUR_Q, "红色", None), (SIDES_Q, "6", None)]),
               conversation("t2", [(COLOUR_Q, "蓝色", None)])]
    unseen = conversation("e1", [(COLOUR_Q, "红色", None), ("角有几个？", "6", None)])
    digits = "Answer with one of: 6. Reply with the answer only."
    assert P.task_prompts(request, "short", [unseen], trained) == [digits]
    # No training split: the evaluated samples' scored turns asking the same question.
    alone = P.task_prompts(request, "short", [unseen, *trained[:1]], None)
    assert alone == [digits] * 2
    summary = P.prompt_summary([unseen, *trained], P.task_prompts(request, "short",
                                                                  [unseen, *trained], trained))
    assert [(s["prompt"], s["question"], s["turn"], s["samples"]) for s in summary] == [
        (digits, "角有几个？", 2, 2), ("只回答以下之一：红色、蓝色。只输出答案。", COLOUR_Q, 1, 1)]


def test_the_gallery_shows_the_conversation_a_scored_turn_continues(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    records = mixed_records(rng, 12, "g")
    rows = [{"id": r["id"], "prediction": "x", "reference": scored_turn(r).answer,
             "metrics": {"exact_match": 0.0}} for r in records]
    (tmp_path / "predictions-tuned.jsonl").write_text(
        "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    report = {"headline": "exact_match", "comparisons": [], "lower_is_better": [],
              "systems": {"tuned": {"predictions": "predictions-tuned.jsonl",
                                    "image_ablation": None}}}
    for row, record in zip(gallery_rows(report, records, tmp_path), records, strict=True):
        turns = turns_of(record)
        assert row["question"] == turns[-1].question and row["turn"] == len(turns)
        assert row["reference"] == turns[-1].answer
        assert [(t["question"], t["answer"], tuple(t["images"])) for t in row["earlier"]] == \
            [(t.question, t.answer, t.images) for t in turns[:-1]]
        page = gallery_table([row], report)
        assert page.count("data:image/jpeg;base64,") == sum(len(t.images) for t in turns)
        if len(turns) > 1:
            assert f"scored question (turn {len(turns)})" in page
            assert COLOUR_Q in page and turns[0].answer in page
            assert "the images are in the earlier turns" in page
        else:
            assert "scored question" not in page
