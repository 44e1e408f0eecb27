"""A learner's own small dataset, not the bundled one: the seed guide's layout (``image`` +
``conversations`` with ``from: user/assistant`` and ``<img></img>``), Chinese questions and
answers, images in a folder of another name, and a Chinese file name."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

SHAPES = Path(__file__).resolve().parent.parent / "data_samples" / "shapes"
COLOURS = {"red": "红色", "green": "绿色", "blue": "蓝色", "yellow": "黄色", "purple": "紫色",
           "orange": "橙色", "black": "黑色", "white": "白色", "grey": "灰色", "gray": "灰色"}
FILE_NAME = "我的标注.jsonl"


def make_seed_dataset(folder: Path, n: int = 40, long_ids: tuple[int, ...] = (),
                      start: int = 0) -> Path:
    """Write ``n`` seed-layout records about the bundled shape images into ``folder``.

    Records whose index is in ``long_ids`` get an answer far over the tiny preset's
    ``max_length`` (256 tokens). Returns the annotation file.
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pics").mkdir(exist_ok=True)
    bundled = [json.loads(line) for line in
               (SHAPES / "shapes.jsonl").read_text(encoding="utf-8").splitlines()]
    lines = []
    for i, record in enumerate(bundled[start:start + n]):
        image = record["messages"][0]["content"][0]["image"]
        answer = record["messages"][1]["content"][0]["text"]
        name = f"图片_{start + i:03d}.png"
        shutil.copy(SHAPES / image, folder / "pics" / name)
        reply = COLOURS.get(answer, answer)
        if i in long_ids:
            reply = "，".join([reply] * 300)
        lines.append(json.dumps({"id": f"样本-{start + i}", "image": f"pics/{name}",
                                 "conversations": [
                                     {"from": "user", "value": "<img></img>图中形状是什么颜色？"},
                                     {"from": "assistant", "value": reply}]},
                                ensure_ascii=False))
    path = folder / FILE_NAME
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` with its bytes: compare before and after to prove that
    nothing was changed, removed or added."""
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


HARD_FILE_NAME = "我的数据.json"
#: The English colour names of the Chinese answers, for the second turn of a conversation.
ENGLISH = {chinese: english for english, chinese in COLOURS.items() if english != "gray"}


def _colour(record: dict) -> str:
    return record["messages"][1]["content"][0]["text"]


def make_hard_dataset(folder: Path, n: int = 40) -> Path:
    """Write ``n`` records in the LLaVA / Qwen-official layout (a JSON array, ``from:
    human/gpt``, ``<image>`` placeholders) with every shape the readers accept and notebooks must
    handle: the question before ``<image>`` in one sample in three, one question in four in
    English, two images in one sample in seven (the answer is about the second), a second,
    text-only turn in one sample in five (the colour again, in English), Chinese answers and a
    Chinese file name. Returns the annotation file."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "图片").mkdir(exist_ok=True)
    bundled = [json.loads(line) for line in
               (SHAPES / "shapes.jsonl").read_text(encoding="utf-8").splitlines()]
    records = []
    for i in range(n):
        first, second = bundled[i], bundled[n + i]
        images = [first] + ([second] if i % 7 == 6 else [])
        names = []
        for record in images:
            name = f"图片/{record['id']}.png"
            shutil.copy(SHAPES / record["messages"][0]["content"][0]["image"], folder / name)
            names.append(name)
        colour = COLOURS[_colour(images[-1])]
        question = ("What colour is the shape?" if i % 4 == 3 else "图中形状是什么颜色？")
        if len(images) == 2:
            question = ("What colour is the shape in the second picture?" if i % 4 == 3
                        else "第二张图中的形状是什么颜色？")
        tags = "<image>" * len(images)
        value = f"{question}\n{tags}" if i % 3 == 1 else f"{tags}\n{question}"
        turns = [{"from": "human", "value": value}, {"from": "gpt", "value": colour}]
        if i % 5 == 0 and len(images) == 1:
            turns += [{"from": "human", "value": "请用英文再说一遍。"},
                      {"from": "gpt", "value": ENGLISH[colour]}]
        records.append({"id": f"样本-{i:02d}", "image": names if len(names) > 1 else names[0],
                        "conversations": turns})
    path = folder / HARD_FILE_NAME
    path.write_text(json.dumps(records, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return path


def write_learner_course(folder: Path) -> Path:
    """A learner's course folder: the hard dataset in ``my_data/`` and a ``course.yaml`` that
    points at it (the tiny stand-in, outputs in ``outputs/``). Returns the ``course.yaml``."""
    data = make_hard_dataset(folder / "my_data")
    config = folder / "course.yaml"
    config.write_text(f"model: auto\ndata: my_data/{data.name}\noutput_dir: outputs\n",
                      encoding="utf-8")
    return config


if __name__ == "__main__":  # python tests/learner_data.py FOLDER: what scripts/test.sh runs
    import sys

    print(write_learner_course(Path(sys.argv[1])))
