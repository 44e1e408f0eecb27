"""The turn view of a record (``turns_of``): every shape the readers accept gives the same
questions, images and answers, wherever the image stood and however many there are."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qvl_helpers.data import read_records
from qvl_helpers.data.records import Turn, scored_turn, system_text, turns_of


def _write(folder: Path, name: str, payload: object) -> Path:
    (folder / "images").mkdir(exist_ok=True)
    path = folder / name
    if isinstance(payload, str):
        path.write_text(payload, encoding="utf-8")
    elif name.endswith(".jsonl"):
        path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in payload) + "\n",
                        encoding="utf-8")
    else:
        path.write_text(json.dumps(payload, ensure_ascii=False), encoding="utf-8")
    return path


#: One two-turn conversation (question before the image in turn 1, two images in turn 2,
#: Chinese) in each layout the readers accept, and the turns it must give.
IMAGES = ["images/a.png", "images/b.png", "images/c.png"]


def _turns(who: str, said: str, user: str, assistant: str, tag: str,
           sep: str = "") -> list[dict[str, str]]:
    """The conversation with the layout's key names, role names and image placeholder ``tag``
    (``sep`` between the first question and its image)."""
    lines = [f"图中是什么颜色？{sep}{tag}", "红色", f"{tag}{tag}Which digit?", "6"]
    return [{who: role, said: text} for role, text in zip([user, assistant] * 2, lines, strict=True)]


LAYOUTS = {
    "official.json": [{"id": "s1", "image": IMAGES,
                       "conversations": _turns("from", "value", "human", "gpt", "<image>", "\n")}],
    "seed.jsonl": [{"id": "s1", "image": IMAGES,
                    "conversations": _turns("from", "value", "user", "assistant", "<img></img>")}],
    "sharegpt.json": [{"id": "s1", "images": IMAGES,
                       "messages": _turns("role", "content", "user", "assistant", "<image>")}],
    "canonical.jsonl": [{"id": "s1", "messages": [
        {"role": "user", "content": [{"type": "text", "text": "图中是什么颜色？"},
                                     {"type": "image", "image": "images/a.png"}]},
        {"role": "assistant", "content": "红色"},
        {"role": "user", "content": [{"type": "image", "image": "images/b.png"},
                                     {"type": "image", "image": "images/c.png"},
                                     {"type": "text", "text": "Which digit?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "6"}]}]}],
}
EXPECTED = [Turn(1, "图中是什么颜色？", ("images/a.png",), "红色"),
            Turn(2, "Which digit?", ("images/b.png", "images/c.png"), "6")]


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_every_layout_gives_the_same_turns(tmp_path: Path, name: str) -> None:
    path = _write(tmp_path, name, LAYOUTS[name])
    (record,) = [raw.record for raw in read_records(path)]
    assert record is not None
    assert turns_of(record) == EXPECTED
    assert scored_turn(record) == EXPECTED[-1]
    assert system_text(record) is None


def test_csv_rows_are_one_turn_each(tmp_path: Path) -> None:
    path = _write(tmp_path, "data.csv", "id,image,prompt,response\n"
                                        "c1,images/a.png,这是什么？,圆形\n")
    (raw,) = read_records(path)
    assert turns_of(raw.record) == [Turn(1, "这是什么？", ("images/a.png",), "圆形")]


def test_system_message_text_only_turns_and_image_anywhere() -> None:
    record = {"id": "r", "messages": [
        {"role": "system", "content": "只回答颜色。"},
        {"role": "user", "content": [{"type": "text", "text": "First look: "},
                                     {"type": "image", "image": "x.png"},
                                     {"type": "text", "text": " what colour?"}]},
        {"role": "assistant", "content": "蓝色"},
        {"role": "user", "content": "And without a picture, what is 2+2?"},
        {"role": "assistant", "content": "4"}]}
    turns = turns_of(record)
    assert system_text(record) == "只回答颜色。"
    assert turns[0] == Turn(1, "First look: what colour?", ("x.png",), "蓝色")
    assert turns[1] == Turn(2, "And without a picture, what is 2+2?", (), "4")
    assert scored_turn(record).number == 2


def test_a_record_without_an_answer_has_no_scored_turn() -> None:
    with pytest.raises(ValueError, match="no question"):
        scored_turn({"id": "q", "messages": [{"role": "user", "content": "hi"}]})
