"""``qvl eval`` without the model: systems, prompts, the leakage check, the report layout, the
gallery. The model layer is a stub that answers by a script, so that every number in the report
can be checked; the real tiny model is evaluated in test_train.py and test_trust.py."""

from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import qvl_helpers.evaluate as E
from qvl_helpers import overlap as O
from qvl_helpers import prompts as P
from qvl_helpers.data import load_records
from qvl_helpers.errors import ConfigError, DatasetError, OutputExistsError

REPO = Path(__file__).resolve().parent.parent
SHAPES = REPO / "data_samples" / "shapes"
RECEIPTS = REPO / "data_samples" / "receipts"


def subset(source: Path, out: Path, first: int, last: int, edit: Any = None) -> Path:
    """Lines ``first:last`` of a bundled data file, with their images copied beside ``out``."""
    lines = source.read_text(encoding="utf-8").splitlines()[first:last]
    records = []
    for line in lines:
        record = json.loads(line)
        for message in record["messages"]:
            for part in message["content"]:
                if part["type"] == "image":
                    (out.parent / part["image"]).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(source.parent / part["image"], out.parent / part["image"])
        records.append(edit(record) if edit else record)
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
                   encoding="utf-8")
    return out


class FakeModel:
    """Answers by script; remembers whether the adapter was on for each call."""

    def __init__(self) -> None:
        self.adapter_on = True
        self.calls: list[dict[str, Any]] = []

    @contextmanager
    def disable_adapter(self):  # PEFT's context manager
        self.adapter_on = False
        try:
            yield
        finally:
            self.adapter_on = True


PROCESSOR = SimpleNamespace(tokenizer=SimpleNamespace(encode=lambda text: list(text)),
                            image_processor=SimpleNamespace(size={"shortest_edge": 3136,
                                                                  "longest_edge": 12544}))


def scripted(model: FakeModel, processor: Any, records: list, *, image_ablation: str | None,
             max_new_tokens: int, **kwargs: Any) -> list[str]:
    """tuned: right with images, 'red' without; prompted base: right on every third sample;
    base: a rambling non-answer."""
    prompted = records[0]["messages"][0]["role"] == "system"
    model.calls.append({"adapter": model.adapter_on, "prompted": prompted,
                        "ablation": image_ablation, "max_new_tokens": max_new_tokens})
    answers = []
    for record in records:
        right = record["messages"][-1]["content"][0]["text"]
        if model.adapter_on:
            answers.append("red" if image_ablation else right)
        elif prompted:
            answers.append(right if int(record["id"].split("-")[1]) % 3 == 0 else "maybe")
        else:
            answers.append("I see a shape")
    return answers


@pytest.fixture
def stub(monkeypatch: pytest.MonkeyPatch, tiny_dir: Path) -> FakeModel:
    fake = FakeModel()
    monkeypatch.setattr(E, "load_for_generation", lambda *args, **kwargs: (fake, PROCESSOR))
    monkeypatch.setattr(E, "generate_answers", scripted)
    return fake


def request(tmp_path: Path, data: Path, **fields: Any) -> E.EvalRequest:
    adapter = tmp_path / "adapter"
    adapter.mkdir(exist_ok=True)
    return E.EvalRequest(**{"model": str(tmp_path / "model"), "data": data, "adapter": adapter,
                            "out_dir": tmp_path / "eval", **fields})


@pytest.fixture
def model_folder(tmp_path: Path, tiny_dir: Path) -> Path:
    shutil.copytree(tiny_dir, tmp_path / "model")
    return tmp_path / "model"


# --------------------------------------------------------------------------- systems and prompts

def test_systems_default_to_everything_that_applies() -> None:
    names = [s.name for s in E.parse_systems(None, has_adapter=True)]
    assert names == ["base", "prompt", "tuned", "tuned-blank"]
    assert [s.name for s in E.parse_systems(None, has_adapter=False)] == ["base", "prompt"]
    chosen = E.parse_systems("base, tuned", has_adapter=True, image_ablation="blank")
    assert [(s.name, s.adapter, s.prompt, s.ablation) for s in chosen] == [
        ("base", False, False, None), ("tuned", True, False, None),
        ("tuned-blank", True, False, "blank")]
    assert [s.name for s in E.parse_systems("prompt", has_adapter=False,
                                            image_ablation="blank")] == ["prompt", "prompt-blank"]


@pytest.mark.parametrize(("names", "adapter", "words"), [
    ("base,finetuned", True, "'finetuned' is not a system"),
    ("tuned-noise", True, "'tuned-noise' is not a system"),
    ("tuned", False, "needs an adapter"),
    (",", True, "no system"),
])
def test_bad_systems_are_refused(names: str, adapter: bool, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        E.parse_systems(names, has_adapter=adapter)


def test_the_task_prompt_states_the_answer_format() -> None:
    assert P.task_prompt("short", ["red", "blue", "red"]) == \
        "Answer with one of: red, blue. Reply with the answer only."
    assert P.task_prompt("short", ["红", "蓝"]) == "只回答以下之一：红、蓝。只输出答案。"
    json_prompt = P.task_prompt("json", ['{"total": 1, "date": "x"}', '{"total": 2}'])
    assert json_prompt == 'Answer with JSON only, no other text. Use the keys "total", "date".'
    assert "Transcribe" in P.task_prompt("reading", ["TOTAL 12.50 THANK YOU FOR SHOPPING"])


def test_the_prompt_is_added_to_a_copy() -> None:
    (record,) = load_records(SHAPES / "shapes.jsonl")[:1]
    before = json.dumps(record)
    prompted = P.with_system_prompt(record, "Answer with one word.")
    assert json.dumps(record) == before
    assert prompted["messages"][0] == {"role": "system", "content": [
        {"type": "text", "text": "Answer with one word."}]}
    again = P.with_system_prompt(prompted, "Be brief.")
    assert [p["text"] for p in again["messages"][0]["content"]] == [
        "Answer with one word.", "\n\nBe brief."]
    assert len(again["messages"]) == len(prompted["messages"])


# --------------------------------------------------------------------------- the leakage check

def test_overlap_by_image_content_and_by_identical_sample(tmp_path: Path) -> None:
    train = subset(SHAPES / "shapes.jsonl", tmp_path / "train.jsonl", 0, 10)
    copy = tmp_path / "renamed.png"  # the same picture under another name

    def renamed(record: dict) -> dict:
        record["messages"][0]["content"][0]["image"] = copy.name
        record["messages"][0]["content"][1]["text"] = "A question of my own?"
        return record

    same = subset(SHAPES / "shapes.jsonl", tmp_path / "same.jsonl", 5, 6)
    shared = subset(SHAPES / "shapes.jsonl", tmp_path / "shared.jsonl", 20, 21, renamed)
    shutil.copy(SHAPES / "images" / "shape_0003.png", copy)
    clean = subset(SHAPES / "shapes.jsonl", tmp_path / "clean.jsonl", 20, 30)
    trained = load_records(train)
    assert O.find_overlap(load_records(same), trained) == [
        "shape-0005: identical to training sample shape-0005"]
    assert O.find_overlap(load_records(shared), trained) == [
        "shape-0020: shares an image with training sample shape-0003"]
    assert O.find_overlap(load_records(clean), trained) == []


def test_overlap_is_refused_before_the_model_loads(tmp_path: Path, model_folder: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the model was loaded: the check came too late")

    monkeypatch.setattr(E, "load_for_generation", forbidden)
    train = subset(SHAPES / "shapes.jsonl", tmp_path / "train.jsonl", 0, 10)
    data = subset(SHAPES / "shapes.jsonl", tmp_path / "test.jsonl", 8, 14)
    with pytest.raises(DatasetError) as err:
        E.evaluate(request(tmp_path, data, train_split=train))
    message = str(err.value)
    assert err.value.exit_code == 1
    for words in ("2 evaluation samples also appear in the training split",
                  "shape-0008: identical to training sample shape-0008", "--allow-overlap",
                  str(data)):
        assert words in message
    assert not (tmp_path / "eval" / E.REPORT).exists()


def test_allowed_overlap_is_recorded(tmp_path: Path, model_folder: Path, stub: FakeModel) -> None:
    train = subset(SHAPES / "shapes.jsonl", tmp_path / "train.jsonl", 0, 10)
    data = subset(SHAPES / "shapes.jsonl", tmp_path / "test.jsonl", 8, 14)
    report = E.evaluate(request(tmp_path, data, train_split=train, allow_overlap=True,
                                systems="tuned"))
    assert report["allow_overlap"] is True and len(report["overlap"]) == 2
    assert any("overlap the training split" in w for w in report["warnings"])


# --------------------------------------------------------------------------- the report

def test_report_predictions_and_gallery(tmp_path: Path, model_folder: Path,
                                        stub: FakeModel) -> None:
    data = subset(SHAPES / "shapes.jsonl", tmp_path / "test.jsonl", 0, 40)
    report = E.evaluate(request(tmp_path, data))
    out = tmp_path / "eval"
    assert sorted(p.name for p in out.iterdir()) == [
        "gallery.html", "predictions-base.jsonl", "predictions-prompt.jsonl",
        "predictions-tuned-blank.jsonl", "predictions-tuned.jsonl", "report.json"]
    assert json.loads((out / "report.json").read_text()) == report
    # The model was loaded once and the adapter switched per system.
    assert [(c["adapter"], c["prompted"], c["ablation"]) for c in stub.calls] == [
        (False, False, None), (False, True, None), (True, False, None), (True, False, "blank")]
    longest = max(len(r) for r in ("red", "green", "yellow", "purple", "orange", "blue"))
    assert {c["max_new_tokens"] for c in stub.calls} == {longest + 8}
    assert report["n"] == 40 and report["task"] == "short" and report["headline"] == "exact_match"
    assert report["prompt"].startswith("Answer with one of: ")
    systems = report["systems"]
    assert systems["tuned"]["metrics"]["exact_match"]["value"] == 1.0
    assert systems["base"]["metrics"]["exact_match"]["value"] == 0.0
    assert systems["prompt"]["metrics"]["exact_match"]["value"] == pytest.approx(14 / 40)
    reds = sum(r["reference"] == "red" for r in E.read_predictions(out, "tuned"))
    assert systems["tuned-blank"]["metrics"]["exact_match"]["value"] == pytest.approx(reds / 40)
    for summary in systems.values():
        interval = summary["metrics"]["exact_match"]
        assert interval["low"] <= interval["value"] <= interval["high"]
    verdicts = {(c["first"], c["second"]): c for c in report["comparisons"]}
    assert set(verdicts) == {("tuned", "base"), ("tuned", "prompt"), ("tuned", "tuned-blank")}
    assert verdicts["tuned", "base"]["clear"]
    assert verdicts["tuned", "base"]["verdict"].startswith("tuned is better than base")
    assert report["data_sha256"] and report["versions"]["transformers"]
    assert report["generation"]["do_sample"] is False
    assert any("not checked for overlap" in w for w in report["warnings"])
    # All 40 right: the bootstrap interval has no width, and the report says what it means.
    assert any(w.startswith("tuned scored 1 on every sample") and "as low as 0.928" in w
               for w in report["warnings"])
    rows = E.read_predictions(out, "prompt")
    assert rows[0]["id"] == "shape-0000" and set(rows[0]) == {"id", "prediction", "reference",
                                                             "metrics"}
    assert "prompt" in E.format_report(report) and "tuned is better" in E.format_report(report)


def test_the_gallery_shows_failures_first_and_never_runs_the_data(
        tmp_path: Path, model_folder: Path, stub: FakeModel,
        monkeypatch: pytest.MonkeyPatch) -> None:
    def half_right(model: FakeModel, processor: Any, records: list, **kwargs: Any) -> list[str]:
        answers = scripted(model, processor, records, **kwargs)
        return [a if int(r["id"].split("-")[1]) % 2 else "maybe"
                for a, r in zip(answers, records, strict=True)]

    def hostile(record: dict) -> dict:
        record["messages"][0]["content"][1]["text"] = "<script>alert('x')</script> colour?"
        return record

    data = subset(SHAPES / "shapes.jsonl", tmp_path / "test.jsonl", 0, 12, hostile)
    monkeypatch.setattr(E, "generate_answers", half_right)
    report = E.evaluate(request(tmp_path, data, systems="base,tuned", image_ablation="blank"))
    page = (tmp_path / "eval" / "gallery.html").read_text(encoding="utf-8")
    assert "<script>alert" not in page and "&lt;script&gt;alert" in page
    assert page.count("data:image/jpeg;base64,") == 12  # embedded: opens without a server
    from qvl_helpers.gallery import gallery_rows

    rows = gallery_rows(report, load_records(data), tmp_path / "eval")
    scores = [r["answers"]["tuned"]["metrics"]["exact_match"] for r in rows]
    assert scores == [0.0] * 6 + [1.0] * 6  # the fine-tuned system's failures come first
    first_ids = [r["id"] for r in rows]
    assert page.index(first_ids[0]) < page.index(first_ids[-1])


def test_an_earlier_evaluation_is_kept_unless_forced(tmp_path: Path, model_folder: Path,
                                                     stub: FakeModel) -> None:
    data = subset(SHAPES / "shapes.jsonl", tmp_path / "test.jsonl", 0, 6)
    E.evaluate(request(tmp_path, data, systems="tuned"))
    report = tmp_path / "eval" / "report.json"
    before = report.read_bytes()
    with pytest.raises(OutputExistsError, match="--force"):
        E.evaluate(request(tmp_path, data, systems="tuned", seed=1))
    assert report.read_bytes() == before
    E.evaluate(request(tmp_path, data, systems="tuned", seed=1, force=True))
    assert json.loads(report.read_text())["bootstrap"]["seed"] == 1
    with pytest.raises(ConfigError, match="also an input"):
        E.evaluate(request(tmp_path, data, systems="tuned", out_dir=tmp_path / "adapter"))


def test_json_answers_get_field_scores(tmp_path: Path, model_folder: Path,
                                       stub: FakeModel) -> None:
    data = subset(RECEIPTS / "receipts.jsonl", tmp_path / "test.jsonl", 0, 8)
    report = E.evaluate(request(tmp_path, data, systems="base,tuned"))
    assert report["task"] == "json" and report["headline"] == "json_f1"
    assert report["systems"]["tuned"]["metrics"]["json_f1"]["value"] == 1.0
    assert report["systems"]["base"]["metrics"]["json_parse_rate"]["value"] == 0.0
    assert report["fields"]["tuned"]["total"] == {"exact_match": 1.0, "n": 8}
    assert '"store"' in report["prompt"]


def test_a_small_split_is_said_to_be_small(tmp_path: Path, model_folder: Path,
                                           stub: FakeModel) -> None:
    data = subset(SHAPES / "shapes.jsonl", tmp_path / "test.jsonl", 0, 6)
    report = E.evaluate(request(tmp_path, data, systems="prompt,tuned"))
    assert report["warnings"][0].startswith("the test split has only 6 sample(s)")
