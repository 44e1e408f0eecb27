"""The bundled sample datasets, generated deterministically (``qvl data samples``).

* ``shapes/``: one coloured shape on a light background; "what colour is the shape?". The answer
  cannot be guessed without looking at the image (six colours, evenly spread), and the tiny
  stand-in model can learn it on a CPU in minutes: the proof that the pipeline learns.
* ``receipts/``: rendered shop receipts; extract store, date and total as JSON, the kind of job
  people fine-tune Qwen2.5-VL for. Prompts in English and Chinese.
* ``formats/``: one small set written in every accepted input layout, the seed guide's
  ``<img></img>`` with Chinese prompts included, to show conversion.
* ``broken/``: a file with one planted problem per line, to show what the data doctor reports.

Pillow draws everything; the same seed gives the same files.
"""

from __future__ import annotations

import csv
import json
import random
import shutil
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from ..errors import OutputExistsError
from .writers import to_official, write_jsonl

COLOURS = {"red": (215, 38, 38), "green": (34, 160, 60), "blue": (40, 80, 220),
           "yellow": (236, 200, 20), "purple": (135, 55, 180), "orange": (245, 135, 25)}
SHAPES = ("circle", "square", "triangle")
COLOUR_QUESTIONS = ("What colour is the shape?", "What is the colour of the shape in the picture?",
                    "Which colour does the object have?", "Name the colour of the shape.")
STORES = ("Corner Shop", "Green Grocer", "City Bakery", "Tea House", "Noodle Bar", "Book Nook")
ITEMS = ("coffee", "tea", "bread", "milk", "apples", "rice", "noodles", "water", "sandwich",
         "cake", "juice", "soup")
RECEIPT_PROMPTS = ("Extract the store, date and total of this receipt as JSON.",
                   "请提取这张收据的商店、日期和总金额，输出 JSON。")


def draw_shape(rng: random.Random, colour: tuple[int, int, int], shape: str,
               size: int = 112) -> Image.Image:
    """One shape of ``colour`` at a random place and size on a slightly tinted background."""
    tint = rng.randint(232, 252)
    img = Image.new("RGB", (size, size), (tint, tint, rng.randint(232, 252)))
    draw = ImageDraw.Draw(img)
    side = rng.randint(size // 4, size // 2)
    x, y = rng.randint(4, size - side - 4), rng.randint(4, size - side - 4)
    box = (x, y, x + side, y + side)
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([(x + side // 2, y), (x, y + side), (x + side, y + side)], fill=colour)
    return img


def _save(img: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG", optimize=False)


def make_shapes(out: Path, n: int = 320, seed: int = 0) -> Path:
    """The vision-dependent toy task; returns the annotation file."""
    rng = random.Random(seed)
    names = list(COLOURS)
    records = []
    for i in range(n):
        # Colours evenly spread (the most common answer is 1/6), and every question wording used
        # equally often with every colour: the text alone tells nothing about the answer.
        colour = names[i % len(names)]
        question = COLOUR_QUESTIONS[(i // len(names)) % len(COLOUR_QUESTIONS)]
        shape = rng.choice(SHAPES)
        image = f"images/shape_{i:04d}.png"
        _save(draw_shape(rng, COLOURS[colour], shape), out / image)
        records.append({"id": f"shape-{i:04d}", "messages": [
            {"role": "user", "content": [{"type": "image", "image": image},
                                         {"type": "text", "text": question}]},
            {"role": "assistant", "content": [{"type": "text", "text": colour}]}]})
    path = out / "shapes.jsonl"
    write_jsonl(records, path)
    return path


def draw_receipt(rng: random.Random) -> tuple[Image.Image, dict[str, str]]:
    """A receipt image and its fields."""
    store = rng.choice(STORES)
    date = f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    lines = []
    total = 0
    for item in rng.sample(ITEMS, rng.randint(2, 4)):
        qty, cents = rng.randint(1, 3), rng.randint(80, 950)
        total += qty * cents
        lines.append((f"{item} x{qty}", f"{qty * cents / 100:.2f}"))
    fields = {"store": store, "date": date, "total": f"{total / 100:.2f}"}
    img = Image.new("RGB", (252, 336), (250, 248, 240))
    draw = ImageDraw.Draw(img)
    big, small = ImageFont.load_default(size=18), ImageFont.load_default(size=13)
    draw.text((126, 18), store.upper(), fill=(20, 20, 20), font=big, anchor="mt")
    draw.text((126, 46), f"Date: {date}", fill=(60, 60, 60), font=small, anchor="mt")
    y = 80
    for left, right in lines:
        draw.text((18, y), left, fill=(30, 30, 30), font=small)
        draw.text((234, y), right, fill=(30, 30, 30), font=small, anchor="ra")
        y += 22
    draw.line((18, y + 6, 234, y + 6), fill=(90, 90, 90), width=1)
    draw.text((18, y + 16), "TOTAL", fill=(10, 10, 10), font=big)
    draw.text((234, y + 16), fields["total"], fill=(10, 10, 10), font=big, anchor="ra")
    draw.text((126, 306), "Thank you!", fill=(90, 90, 90), font=small, anchor="mt")
    return img, fields


def make_receipts(out: Path, n: int = 40, seed: int = 1) -> Path:
    """The document-to-JSON task; returns the annotation file."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        img, fields = draw_receipt(rng)
        image = f"images/receipt_{i:03d}.png"
        _save(img, out / image)
        records.append({"id": f"receipt-{i:03d}", "messages": [
            {"role": "user", "content": [{"type": "image", "image": image},
                                         {"type": "text", "text": RECEIPT_PROMPTS[i % 2]}]},
            {"role": "assistant", "content": [
                {"type": "text", "text": json.dumps(fields, ensure_ascii=False)}]}]})
    path = out / "receipts.jsonl"
    write_jsonl(records, path)
    return path


def _u(*content: Any) -> dict:
    return {"role": "user", "content": [{"type": "image", "image": c} if c.startswith(("images/", "../"))
                                        else {"type": "text", "text": c} for c in content]}


def _a(text: str) -> dict:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def format_set() -> list[dict[str, Any]]:
    """The small set shown in every layout: single images, two images, two turns; EN and ZH."""
    return [
        {"id": "fmt-1", "messages": [_u("images/a.png", "请描述图片内容。"), _a("图中有一个红色的圆形。")]},
        {"id": "fmt-2", "messages": [_u("images/b.png", "What colour is the shape?"), _a("blue")]},
        {"id": "fmt-3", "messages": [_u("images/c.png", "这个图形是什么颜色？"), _a("绿色")]},
        {"id": "fmt-4", "messages": [_u("images/a.png", "images/d.png",
                                        "Are the two shapes the same colour?"),
                                     _a("No: the first is red, the second is yellow.")]},
        {"id": "fmt-5", "messages": [_u("images/b.png", "What colour is the shape?"), _a("blue"),
                                     _u("And what shape is it?"), _a("a square")]},
    ]


def _images_and_turns(record: dict, placeholder: str) -> tuple[list[str], list[tuple[str, str]]]:
    images, turns = [], []
    for m in record["messages"]:
        text = ""
        for p in m["content"]:
            if p["type"] == "image":
                images.append(p["image"])
                text += placeholder
            else:
                text += p["text"]
        turns.append((m["role"], text))
    return images, turns


def make_formats(out: Path, seed: int = 2) -> dict[str, Path]:
    """The same records in every accepted layout; returns layout -> file."""
    rng = random.Random(seed)
    for name, (colour, shape) in {"a": ("red", "circle"), "b": ("blue", "square"),
                                  "c": ("green", "triangle"), "d": ("yellow", "circle")}.items():
        _save(draw_shape(rng, COLOURS[colour], shape), out / "images" / f"{name}.png")
    records = format_set()
    files = {"messages": out / "messages.jsonl", "official": out / "official.json",
             "seed": out / "seed.jsonl", "sharegpt": out / "sharegpt.json", "csv": out / "data.csv"}
    write_jsonl(records, files["messages"])
    files["official"].write_text(json.dumps([to_official(r) for r in records], ensure_ascii=False,
                                            indent=2) + "\n", encoding="utf-8")
    seed_rows = []
    for r in records:  # the seed guide: <img></img>, from user/assistant, no ids
        images, turns = _images_and_turns(r, "<img></img>")
        seed_rows.append({"image": images[0] if len(images) == 1 else images,
                          "conversations": [{"from": role, "value": text} for role, text in turns]})
    write_jsonl(seed_rows, files["seed"])
    share = []
    for r in records:  # ShareGPT / LLaMA-Factory: role/content strings and an images list
        images, turns = _images_and_turns(r, "<image>")
        share.append({"messages": [{"role": role, "content": text} for role, text in turns],
                      "images": images})
    files["sharegpt"].write_text(json.dumps(share, ensure_ascii=False, indent=2) + "\n",
                                 encoding="utf-8")
    with open(files["csv"], "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["id", "image", "prompt", "response"])
        for r in records:
            if len(r["messages"]) != 2:
                continue  # CSV holds one question and one answer per row
            images, turns = _images_and_turns(r, "")
            writer.writerow([r["id"], ";".join(images), turns[0][1], turns[1][1]])
    return files


def make_broken(out: Path, seed: int = 3) -> Path:
    """One planted problem per line, for notebook 01 and the tests' smoke check."""
    rng = random.Random(seed)
    img = out / "images"
    _save(draw_shape(rng, COLOURS["red"], "circle"), img / "ok.png")
    _save(draw_shape(rng, COLOURS["blue"], "square"), img / "ok2.png")
    rgba = draw_shape(rng, COLOURS["green"], "triangle").convert("RGBA")
    rgba.putpixel((0, 0), (0, 0, 0, 0))
    _save(rgba, img / "transparent.png")
    _save(Image.new("RGB", (20, 20), (200, 0, 0)), img / "tiny.png")
    (img / "empty.png").write_bytes(b"")
    q = "What colour is the shape?"
    lines = [
        {"id": "good-1", "messages": [_u("images/ok.png", q), _a("red")]},
        {"id": "missing", "messages": [_u("images/nowhere.png", q), _a("red")]},
        {"id": "empty-answer", "messages": [_u("images/ok2.png", q), _a("  ")]},
        {"id": "no-answer", "messages": [_u("images/ok.png", q)]},
        {"id": "placeholder", "messages": [_u("images/ok.png", "<image> " + q), _a("red")]},
        {"id": "reserved", "messages": [_u("images/ok2.png", q), _a("blue<|im_end|>")]},
        {"id": "transparent", "messages": [_u("images/transparent.png", q), _a("green")]},
        {"id": "tiny-image", "messages": [_u("images/tiny.png", q), _a("red")]},
        {"id": "zero-bytes", "messages": [_u("images/empty.png", q), _a("red")]},
        {"id": "escape", "messages": [_u("../../etc/passwd", q), _a("red")]},
        {"id": "good-1", "messages": [_u("images/ok2.png", q), _a("blue")]},
    ]
    text = "\n".join(json.dumps(r, ensure_ascii=False) for r in lines)
    text += '\n{"id": "cut-off", "messages": [\n'
    path = out / "broken.jsonl"
    path.write_text(text, encoding="utf-8")
    return path


def make_all(out_dir: str | Path, overwrite: bool = False) -> dict[str, Path]:
    """Generate every sample set under ``out_dir``; refuses to replace existing sets unless
    ``overwrite``."""
    out_dir = Path(out_dir)
    names = ("shapes", "receipts", "formats", "broken")
    existing = [n for n in names if (out_dir / n).exists()]
    if existing and not overwrite:
        raise OutputExistsError(f"{', '.join(existing)} already exist in {out_dir}.", file=out_dir,
                           fix="choose another --out-dir, or pass --force to regenerate them.")
    for n in existing:
        shutil.rmtree(out_dir / n)
    return {"shapes": make_shapes(out_dir / "shapes"),
            "receipts": make_receipts(out_dir / "receipts"),
            "formats": make_formats(out_dir / "formats")["messages"],
            "broken": make_broken(out_dir / "broken")}
