"""The real Qwen2.5-VL tokenizer, built offline from llama.cpp's Qwen2 vocabulary file: held to
llama.cpp's own reference tokenizations, the added tokens' real ids and the chat template."""

from __future__ import annotations

import pytest

from qvl_helpers.qwen import EXTRA_TOKENS, SPECIAL_TOKENS, ImageLimits
from qvl_helpers.real_tokenizer import REGULAR_TOKENS, VOCAB_DIR, real_processor

SEPARATOR = "\n__ggml_vocab_test__\n"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One cache folder for the module: the real tokenizer is built once (about 10 s)."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def real(cache):
    return real_processor(cache)


def test_every_reference_line_of_llama_cpp_gives_its_ids(real):
    texts = (VOCAB_DIR / "ggml-vocab-qwen2.gguf.inp").read_text(encoding="utf-8").split(SEPARATOR)
    expected = (VOCAB_DIR / "ggml-vocab-qwen2.gguf.out").read_text(encoding="utf-8").splitlines()
    assert texts[-1] == "" and len(texts) - 1 == len(expected) == 46  # the file ends with one
    for text, ids in zip(texts, expected, strict=False):
        assert real.tokenizer.encode(text, add_special_tokens=False) == [int(i) for i in
                                                                          ids.split()], text


def test_llama_cpp_is_told_the_real_tokenizer_splits_text_by_qwen2_rules(cache) -> None:
    """What qvl export --gguf tells llama.cpp's converter (qvl_helpers.gguf_export)."""
    from qvl_helpers.gguf_export import pre_tokenizer_name
    from qvl_helpers.real_tokenizer import ensure_real_tokenizer

    assert pre_tokenizer_name(ensure_real_tokenizer(cache)) == "qwen2"


def test_the_added_tokens_sit_at_their_real_ids(real):
    tok = real.tokenizer
    for offset, token in enumerate(SPECIAL_TOKENS + EXTRA_TOKENS):
        assert tok.convert_tokens_to_ids(token) == REGULAR_TOKENS + offset, token
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>",
                                      "<|vision_start|>", "<|image_pad|>", "<|video_pad|>"]) \
        == [151643, 151644, 151645, 151652, 151655, 151656]
    assert len(tok) == 151665 and tok.eos_token == "<|im_end|>" and tok.pad_token_id == 151643
    assert tok.decode([151652, 151655, 151653]) == "<|vision_start|><|image_pad|><|vision_end|>"


def test_a_chinese_multi_turn_multi_image_chat_gives_the_same_ids_as_through_the_processor(real):
    from PIL import Image

    image = {"type": "image"}
    messages = [
        {"role": "user", "content": [image, image, {"type": "text", "text": "两张收据的合计？"}]},
        {"role": "assistant", "content": [{"type": "text", "text": '{"total": "35.50"}'}]},
        {"role": "user", "content": [{"type": "text", "text": "And the store?"}, image]},
        {"role": "assistant", "content": [{"type": "text", "text": "全家便利店"}]},
    ]
    direct = real.tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)
    text = real.apply_chat_template(messages, tokenize=False)
    pictures = [Image.new("RGB", (56 * k, 56), "white") for k in (1, 2, 3)]
    ids = real(text=[text], images=pictures, return_tensors="pt")["input_ids"][0].tolist()
    pad = real.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    collapsed = [t for i, t in enumerate(ids) if t != pad or ids[i - 1] != pad]  # one per image
    assert collapsed == list(direct)
    assert ids.count(pad) == sum(4 * k for k in (1, 2, 3))  # 56 x 56k px: 2 x 2k tokens of 28 px
    assert direct.count(real.tokenizer.convert_tokens_to_ids("<|vision_start|>")) == 3


RECEIPTS = VOCAB_DIR.parent.parent / "data_samples" / "receipts" / "receipts.jsonl"


def test_qvl_tokens_counts_the_3b_offline_as_its_processor_does(real, cache, clean_env,
                                                                  monkeypatch, capsys):
    """No weights, no download (HF_HUB_OFFLINE, an empty cache): the counts are those of the real
    processor expanding the chat itself, sample by sample."""
    from PIL import Image

    from qvl_helpers.data import load_records
    from qvl_helpers.data.records import images_of
    from qvl_helpers.qwen import REAL_MODEL_ID
    from qvl_helpers.tokens import token_budget
    from tests.inprocess import run_main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("QVL_CACHE_DIR", str(cache))  # holds no model: nothing to load weights from
    code, out, err = run_main(capsys, "tokens", RECEIPTS, "--model", REAL_MODEL_ID)
    assert code == 0, err
    records = load_records(RECEIPTS)[:6]
    budget = token_budget(records, real, max_length=2048, limits=ImageLimits(3136, 401408))
    for record, sample in zip(records, budget.samples, strict=True):
        text = real.apply_chat_template(record["messages"], tokenize=False)
        images = [Image.open(p).convert("RGB") for p in images_of(record)]
        ids = real(text=[text], images=images, return_tensors="pt",
                   images_kwargs={"size": {"shortest_edge": 3136, "longest_edge": 401408}})
        assert sample.total == ids["input_ids"].shape[1], record["id"]
    assert f"max {max(load_budget_totals(real))}" in out


def load_budget_totals(real) -> list[int]:
    from qvl_helpers.data import load_records
    from qvl_helpers.tokens import token_budget

    return token_budget(load_records(RECEIPTS), real, max_length=2048,
                        limits=ImageLimits(3136, 401408)).totals


def test_the_dry_run_counts_the_3b_text_with_the_real_tokenizer(real, cache, tiny_dir, clean_env,
                                                               monkeypatch, capsys, tmp_path):
    from qvl_helpers.config import PRESETS_DIR
    from tests.inprocess import run_main

    monkeypatch.setenv("QVL_OUTPUT_DIR", str(tmp_path / "out"))
    monkeypatch.setenv("QVL_DATA", str(RECEIPTS))
    monkeypatch.setenv("QVL_CACHE_DIR", str(cache))
    code, out, err = run_main(capsys, "train", "--config", PRESETS_DIR / "24gb_qlora.yaml",
                              "--dry-run", "--set", f"model={tiny_dir}")
    assert code == 0, err
    real_block = out.split("On a GPU, with these settings and this data (text counted with "
                           "Qwen's own tokenizer):")[1]
    here = out.split("On a GPU")[0]
    longest_real = max(load_budget_totals(real))  # the training split's longest is at most this
    longest = int(real_block.split("longest batch: 1 x ")[1].split(" tokens")[0])
    tiny = int(here.split("longest batch: 1 x ")[1].split(" tokens")[0])
    assert longest <= longest_real < tiny  # Qwen's tokenizer needs fewer tokens than the stand-in's


def test_without_gguf_the_build_says_how_to_get_it(monkeypatch):
    import importlib.util

    from qvl_helpers.errors import ModelError
    from qvl_helpers.real_tokenizer import read_vocabulary

    real_find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gguf" else real_find(name, *a))
    with pytest.raises(ModelError) as refused:
        read_vocabulary()
    assert "gguf package is not installed" in refused.value.message
    assert "scripts/env.sh" in refused.value.fix and refused.value.file.endswith(".gguf")


@pytest.mark.parametrize("text", ["合计 ¥59.50，谢谢惠顾 🧾", '{"store": "全家便利店", "total": "35.50"}',
                                  "What colour is the shape?"])
def test_token_pieces_are_readable_and_give_back_the_text_and_the_ids(real, text):
    from qvl_helpers.tokens import token_pieces, tokens_side_by_side

    pieces = token_pieces(real.tokenizer, text)
    assert "".join(piece for piece, _ in pieces) == text
    assert [i for _, ids in pieces for i in ids] == real.tokenizer.encode(text,
                                                                          add_special_tokens=False)
    assert all("\ufffd" not in piece for piece, _ in pieces)
    count = len(real.tokenizer.encode(text, add_special_tokens=False))
    assert f"Qwen2.5-VL  {count:>4} token" in tokens_side_by_side(text, {"Qwen2.5-VL": real})


def test_a_damaged_cache_folder_is_named_not_overwritten(tmp_path):
    from qvl_helpers.errors import ModelError
    from qvl_helpers.real_tokenizer import BUILDER_VERSION, ensure_real_tokenizer

    folder = tmp_path / f"qwen2_5_vl-tokenizer-v{BUILDER_VERSION}"
    folder.mkdir()
    (folder / "tokenizer.json").write_text("{}", encoding="utf-8")  # no marker: not our build
    with pytest.raises(ModelError) as refused:
        ensure_real_tokenizer(tmp_path)
    assert refused.value.file == str(folder) and "delete that folder" in refused.value.fix
    assert (folder / "tokenizer.json").read_text(encoding="utf-8") == "{}"
