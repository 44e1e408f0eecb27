"""The collator: exactly the answers (and their <|im_end|>) are trained; nothing is cut; every key
the model needs is kept; it matches a reference built independently here."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from qvl_helpers.collate import make_collator
from qvl_helpers.data import load_records
from qvl_helpers.errors import ConfigError, DatasetError

REPO = Path(__file__).resolve().parent.parent / "data_samples"


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    folder = tmp_path_factory.mktemp("img")
    paths = []
    for i, (size, colour) in enumerate([((112, 112), "red"), ((200, 90), "blue"),
                                        ((64, 160), "green")]):
        Image.new("RGB", size, colour).save(folder / f"{i}.png")
        paths.append(str(folder / f"{i}.png"))
    return paths


def user(*parts: str) -> dict:
    return {"role": "user", "content": [{"type": "image", "image": p} if p.endswith(".png")
                                        else {"type": "text", "text": p} for p in parts]}


def bot(text: str) -> dict:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def cases(images: list[str]) -> dict[str, dict]:
    return {
        "single": {"id": "s", "messages": [user(images[0], "Colour?"), bot("red")]},
        "multi_turn": {"id": "m", "messages": [user(images[0], "Colour?"), bot("red"),
                                               user("Shape?"), bot("a big square"),
                                               user("Sure?"), bot("yes, 是的")]},
        "multi_image": {"id": "i", "messages": [user(images[0], images[1], images[2],
                                                     "Which is blue?"), bot("the second")]},
        "system": {"id": "y", "messages": [
            {"role": "system", "content": [{"type": "text", "text": "Answer in JSON."}]},
            user(images[1], "Total?"), bot('{"total": "12.50"}')]},
    }


def trained_segments(labels: torch.Tensor) -> list[list[int]]:
    segments, current = [], []
    for value in labels.tolist() + [-100]:
        if value == -100:
            if current:
                segments.append(current)
            current = []
        else:
            current.append(value)
    return segments


@pytest.mark.parametrize("name", ["single", "multi_turn", "multi_image", "system"])
def test_exactly_answers_and_im_end_are_trained(processor, images, name: str) -> None:
    record = cases(images)[name]
    tok = processor.tokenizer
    batch = make_collator(processor, max_pixels=50176)([record])
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    answers = [m["content"][0]["text"] for m in record["messages"] if m["role"] == "assistant"]
    expected = [tok.encode(a, add_special_tokens=False) + [im_end] for a in answers]
    assert trained_segments(batch["labels"][0]) == expected


def test_mixed_batch_masks_padding_vision_and_keeps_stop_token(processor, images) -> None:
    records = list(cases(images).values())
    batch = make_collator(processor, max_pixels=50176)(records)
    tok = processor.tokenizer
    labels, attn = batch["labels"], batch["attention_mask"]
    vision = [tok.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|vision_start|>",
                                                     "<|vision_end|>")]
    assert not torch.isin(labels, torch.tensor(vision + [tok.pad_token_id])).any()
    assert (labels[attn == 0] == -100).all() and (attn == 0).any()  # padding exists, masked
    assert (attn[:, 0] == 1).all()  # right padding for training
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    n_answers = [sum(m["role"] == "assistant" for m in r["messages"]) for r in records]
    assert ((labels == im_end).sum(dim=1) == torch.tensor(n_answers)).all()
    assert tok.pad_token_id != tok.eos_token_id == im_end


def test_generation_batch_is_left_padded_prompt(processor, images) -> None:
    records = list(cases(images).values())
    batch = make_collator(processor, "generate", max_pixels=50176)(records)
    assert "labels" not in batch and "mm_token_type_ids" in batch
    assert (batch["attention_mask"][:, -1] == 1).all() and (batch["attention_mask"][:, 0] == 0).any()
    tail = processor.tokenizer.encode("<|im_start|>assistant\n")
    for row in batch["input_ids"].tolist():
        assert row[-len(tail):] == tail
    multi = processor.tokenizer.decode(batch["input_ids"][1])
    assert "a big square" in multi and "yes, 是的" not in multi  # up to the last answer


def test_mm_token_type_ids_is_kept_and_matters(processor, model, images) -> None:
    batch = make_collator(processor, max_pixels=50176)([cases(images)["multi_image"]])
    image_pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert (batch["mm_token_type_ids"] == (batch["input_ids"] == image_pad).long()).all()
    model.eval()
    with torch.no_grad():
        full = model(**batch).logits
        without = model(**{k: v for k, v in batch.items() if k != "mm_token_type_ids"}).logits
    assert not torch.allclose(full, without, atol=1e-4)


def test_too_long_is_refused_or_dropped_never_cut(processor, images) -> None:
    records = list(cases(images).values())
    lengths = make_collator(processor, max_pixels=50176)(records)["attention_mask"].sum(1).tolist()
    limit = sorted(lengths)[1]
    with pytest.raises(DatasetError, match="too_long") as info:
        make_collator(processor, max_pixels=50176, max_length=limit)(records)
    assert info.value.sample_id in {r["id"] for r in records}
    dropping = make_collator(processor, max_pixels=50176, max_length=limit, on_too_long="drop")
    batch = dropping(records)
    assert batch["input_ids"].shape[0] == sum(n <= limit for n in lengths)
    assert len(dropping.dropped) == sum(n > limit for n in lengths)


def test_pad_equal_to_eos_is_refused(tiny_dir: Path) -> None:
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_dir)
    processor.tokenizer.pad_token = processor.tokenizer.eos_token
    with pytest.raises(ConfigError, match="pad"):
        make_collator(processor)


def _reference(processor, record: dict, max_pixels: int) -> dict:
    """Built here without the collator: processor per sample, masks from the token ids."""
    from qvl_helpers.images import load_rgb

    text = processor.apply_chat_template(record["messages"], tokenize=False)
    imgs = [load_rgb(p["image"]) for m in record["messages"] for p in m["content"]
            if p["type"] == "image"]
    out = processor(text=[text], images=imgs or None, return_tensors="pt",
                     images_kwargs={"size": {"shortest_edge": 3136, "longest_edge": max_pixels}})
    ids = out["input_ids"][0].tolist()
    tok = processor.tokenizer
    start, end = tok.convert_tokens_to_ids("<|im_start|>"), tok.convert_tokens_to_ids("<|im_end|>")
    header = tok.encode("<|im_start|>assistant\n", add_special_tokens=False)
    labels = [-100] * len(ids)
    inside = False
    for i in range(len(ids)):
        if ids[i - len(header) + 1:i + 1] == header and i >= len(header) - 1:
            inside = True
            continue
        if inside:
            labels[i] = ids[i]
            if ids[i] == end:
                inside = False
    assert start in ids
    out["labels"] = torch.tensor([labels])
    return out


@pytest.mark.parametrize("dataset", ["shapes/shapes.jsonl", "receipts/receipts.jsonl",
                                     "formats/messages.jsonl"])
def test_matches_independent_reference(processor, dataset: str) -> None:
    records = load_records(REPO / dataset)[:12]
    max_pixels = 200704
    batch = make_collator(processor, max_pixels=max_pixels)(records)
    offset = 0
    for row, record in enumerate(records):
        ref = _reference(processor, record, max_pixels)
        n = ref["input_ids"].shape[1]
        assert torch.equal(batch["input_ids"][row, :n], ref["input_ids"][0])
        assert torch.equal(batch["labels"][row, :n], ref["labels"][0])
        assert (batch["labels"][row, n:] == -100).all()
        assert torch.equal(batch["mm_token_type_ids"][row, :n], ref["mm_token_type_ids"][0])
        k = ref["image_grid_thw"].shape[0]
        assert torch.equal(batch["image_grid_thw"][offset:offset + k], ref["image_grid_thw"])
        patches = int(ref["image_grid_thw"].prod(dim=1).sum())
        start = int(batch["image_grid_thw"][:offset].prod(dim=1).sum()) if offset else 0
        assert torch.equal(batch["pixel_values"][start:start + patches], ref["pixel_values"])
        offset += k


def test_length_grouped_batches() -> None:
    """transformers' sampler, reseeded per epoch: grouped, longest first, reproducible."""
    from qvl_helpers.trainer import GroupedSampler

    lengths = [5, 100, 7, 90, 6, 95, 8, 99] * 10
    sampler = GroupedSampler(lengths, batch_size=4, seed=0)
    order = list(sampler)
    assert sorted(order) == list(range(len(lengths)))
    assert lengths[order[0]] == max(lengths)
    batches = [order[i:i + 4] for i in range(0, len(order), 4)]
    spread = sum(max(lengths[j] for j in b) - min(lengths[j] for j in b) for b in batches)
    random_spread = sum(max(lengths[j] for j in range(i, i + 4)) - min(lengths[j] for j in
                                                                      range(i, i + 4))
                        for i in range(0, len(lengths), 4))
    assert spread < random_spread / 3
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != order  # a new order each epoch
    sampler.set_epoch(0)
    assert list(sampler) == order  # the same epoch, the same batches (a resume sees them again)
    assert list(GroupedSampler(lengths, batch_size=4, seed=0)) == order
