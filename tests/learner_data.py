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
