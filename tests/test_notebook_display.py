"""What notebooks show a learner: records of every shape read through the package (never by
position), and course errors shown as their one line instead of a stack."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from qvl_helpers.chat import compare_text, terminal_question, with_question
from qvl_helpers.collate import prompt_messages
from qvl_helpers.data.records import images_of, scored_turn


def _png(folder: Path, name: str, colour: str) -> str:
    path = folder / name
    Image.new("RGB", (56, 56), colour).save(path)
    return str(path)


def _text(t: str) -> dict[str, str]:
    return {"type": "text", "text": t}


def _image(p: str) -> dict[str, str]:
    return {"type": "image", "image": p}


def shapes(folder: Path) -> dict[str, dict[str, Any]]:
    """Every shape the readers accept, as canonical records."""
    red, blue = _png(folder, "red.png", "red"), _png(folder, "blue.png", "blue")
    a = {"role": "assistant", "content": [_text("red")]}
    return {
        "image first": {"id": "first", "messages": [
            {"role": "user", "content": [_image(red), _text("Colour?")]}, a]},
        "question before the image": {"id": "before", "messages": [
            {"role": "user", "content": [_text("Colour?"), _image(red)]}, a]},
        "two images": {"id": "two", "messages": [
            {"role": "user", "content": [_image(red), _text("Which is red?"), _image(blue)]}, a]},
        "system and two turns": {"id": "turns", "messages": [
            {"role": "system", "content": [_text("Answer in one word.")]},
            {"role": "user", "content": [_image(blue), _text("Colour?")]},
            {"role": "assistant", "content": [_text("blue")]},
            {"role": "user", "content": [_text("And this one?"), _image(red)]}, a]},
        "text-only last turn": {"id": "textonly", "messages": [
            {"role": "user", "content": [_image(red), _text("Colour?")]},
            {"role": "assistant", "content": [_text("red")]},
            {"role": "user", "content": [_text("Say it again.")]}, a]},
    }


SHAPES = ("image first", "question before the image", "two images", "system and two turns",
          "text-only last turn")


class FakeChat:
    """Records what :func:`compare_text` and the widget ask, without a model."""

    has_adapter = True

    def __init__(self) -> None:
        self.asked: list[tuple[Any, bool]] = []

    def answer_record(self, record: Any, stream: bool = False, adapter: bool = True) -> str:
        self.asked.append((record, adapter))
        return "tuned" if adapter else "base"

    def answer(self, image: str, question: str, stream: bool = False,
               adapter: bool = True) -> str:
        self.asked.append(((image, question), adapter))
        return "tuned" if adapter else "base"


# --------------------------------------------------------------------------- records, every shape


@pytest.mark.parametrize("shape", SHAPES)
def test_the_plain_transformers_demo_reads_every_shape(shape: str, tmp_path: Path,
                                                       processor: Any) -> None:
    """Notebook 05's cell 4 (prompt_messages + images_of through the processor): every image
    reaches the model, and every earlier turn and the system message are in the prompt."""
    record = shapes(tmp_path)[shape]
    messages = prompt_messages(record)
    images = [Image.open(p).convert("RGB") for p in images_of(record)]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    batch = processor(text=[prompt], images=images or None, return_tensors="pt")
    assert prompt.count("<|vision_start|>") == len(images_of(record))
    assert len(batch.get("image_grid_thw", [])) == len(images_of(record))
    for turn in record["messages"][:-1]:
        for part in turn["content"]:
            if part["type"] == "text":
                assert part["text"] in prompt
    assert prompt.endswith("<|im_start|>assistant\n")  # the answer is what is generated


@pytest.mark.parametrize("shape", SHAPES)
def test_with_question_keeps_the_conversation_and_images(shape: str, tmp_path: Path) -> None:
    record = shapes(tmp_path)[shape]
    asked = with_question(record, "What else?")
    assert images_of(asked) == images_of(record)
    assert scored_turn(asked).question == "What else?"
    assert asked["messages"][:-2] == record["messages"][:-2]  # system and earlier turns as they were
    kinds = [p["type"] for p in record["messages"][-2]["content"]]
    new_kinds = [p["type"] for p in asked["messages"][-2]["content"]]
    assert new_kinds == [k for i, k in enumerate(kinds) if k == "image" or kinds.index("text") == i]


@pytest.mark.parametrize("shape", SHAPES)
def test_compare_text_asks_the_whole_record_both_ways(shape: str, tmp_path: Path) -> None:
    record = shapes(tmp_path)[shape]
    chat = FakeChat()
    text = compare_text(chat, record)
    assert chat.asked == [(record, False), (record, True)]
    turn = scored_turn(record)
    assert text.splitlines()[0].startswith(f"{record['id']}: {turn.question} (")
    assert "base:       'base'" in text and "fine-tuned: 'tuned'" in text
    assert f"reference:  {turn.answer!r}" in text
    n = len(images_of(record))
    assert (f"{n} image" if n else "no image") in text.splitlines()[0]
    assert ("earlier turn" in text) == (turn.number > 1)


def test_terminal_question_prefers_a_one_image_one_turn_sample(tmp_path: Path) -> None:
    s = shapes(tmp_path)
    assert terminal_question([s["two images"], s["question before the image"]]) == (
        images_of(s["question before the image"])[0], "Colour?")
    image, question = terminal_question([s["system and two turns"]])
    assert image == images_of(s["system and two turns"])[0] and question == "And this one?"


def test_terminal_question_without_any_image_says_what_to_do() -> None:
    from qvl_helpers.errors import DatasetError

    text_only = {"id": "t", "messages": [{"role": "user", "content": [_text("Hi")]},
                                         {"role": "assistant", "content": [_text("Hello")]}]}
    with pytest.raises(DatasetError, match="--image"):
        terminal_question([text_only])


def test_chat_answers_a_record_in_its_conversation(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Chat.answer_record hands generation the whole record (evaluation's path), and
    Chat.answer a one-turn record about the image."""
    import qvl_helpers.chat as chat_module

    given: list[Any] = []

    def fake_generate(model: Any, processor: Any, records: list[Any], **kw: Any) -> list[str]:
        given.extend(records)
        return ["ok"]

    monkeypatch.setattr(chat_module, "generate_answers", fake_generate)
    chat = chat_module.Chat.__new__(chat_module.Chat)
    chat.model, chat.processor, chat.limits = object(), object(), (None, None)
    chat.max_new_tokens, chat.has_adapter = 8, False
    record = shapes(tmp_path)["system and two turns"]
    assert chat.answer_record(record) == "ok" and given == [record]
    red = images_of(record)[1]
    assert chat.answer(red, "Colour?") == "ok"
    assert images_of(given[1]) == [red] and scored_turn(given[1]).question == "Colour?"


def test_side_by_side_asks_a_sample_in_its_conversation(tmp_path: Path) -> None:
    from qvl_helpers.widgets import side_by_side

    s = shapes(tmp_path)
    chat = FakeChat()
    app = side_by_side(chat, [s["system and two turns"], s["two images"]])
    picker = app.children[0].children[0]
    asked, button = app.children[1], app.children[2]
    assert asked.value == "And this one?"  # the sample's own scored question
    button.click()
    record, adapter = chat.asked[-1]
    assert adapter and record["messages"][:-1] == s["system and two turns"]["messages"][:-1]
    picker.value = s["two images"]
    assert asked.value == "Which is red?"
    asked.value = "Which is blue?"
    button.click()
    record, _ = chat.asked[-1]
    assert images_of(record) == images_of(s["two images"])
    assert scored_turn(record).question == "Which is blue?"


# --------------------------------------------------------------------------- course errors


NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


@pytest.fixture
def shell() -> Any:
    """An in-process IPython shell, as a notebook's kernel runs cells."""
    from IPython.core.interactiveshell import InteractiveShell

    InteractiveShell.clear_instance()
    yield InteractiveShell.instance()
    InteractiveShell.clear_instance()


def _opening(shell: Any, notebook: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A fresh kernel's first import of the package, then the notebook's setup and config cells."""
    from nbcheck import load, source

    assert shell.run_cell("import importlib, qvl_helpers\nimportlib.reload(qvl_helpers)").success
    for cell in load(notebook)["cells"][1:3]:
        assert shell.run_cell(source(cell)).success
    capsys.readouterr()


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_a_course_error_shows_as_its_line_in_every_notebook(
        notebook: Path, shell: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from qvl_helpers.errors import TRACEBACK_HINT

    _opening(shell, notebook, capsys)
    bad = tmp_path / "course.yaml"
    bad.write_text("model: tiny\nnum_epoch: 3\n", encoding="utf-8")
    result = shell.run_cell(f"load_config({str(bad)!r})")
    out = capsys.readouterr()
    shown = (out.out + out.err).strip().splitlines()
    assert not result.success  # "Run all" still stops at the failing cell
    assert len(shown) == 2, shown
    assert shown[0].startswith(f"error: {bad}:2: ") and "num_epoch" in shown[0]
    assert "Fix: " in shown[0] and shown[1] == TRACEBACK_HINT
    assert shell.run_cell("%tb").success  # the stack is still there for whoever asks
    stack = capsys.readouterr().out
    assert "Traceback" in stack and "ConfigError" in stack and "load_config" in stack


def test_other_errors_keep_their_traceback(shell: Any, capsys: pytest.CaptureFixture[str]) -> None:
    _opening(shell, NOTEBOOKS[0], capsys)
    result = shell.run_cell("def broken():\n    return {}['missing']\nbroken()")
    out = capsys.readouterr()
    shown = re.sub(r"\x1b\[[0-9;]*m", "", out.out + out.err)  # without the colours
    assert not result.success
    assert "Traceback" in shown and "KeyError" in shown
    assert "return {}['missing']" in shown  # the line that failed, in its stack


def test_a_handler_the_learner_set_is_left_alone(shell: Any) -> None:
    from qvl_helpers.errors import show_in_notebooks

    shell.set_custom_exc((ZeroDivisionError,), lambda *a, **k: None)
    assert show_in_notebooks(shell) is False
    assert shell.custom_exceptions == (ZeroDivisionError,)


# --------------------------------------------------------------------------- one number, one place


def _code(notebook: str) -> str:
    from nbcheck import load, source

    cells = load(NOTEBOOKS[0].parent / notebook)["cells"]
    return "\n".join(source(c) for c in cells if c["cell_type"] == "code")


def _markdown(notebook: str) -> str:
    from nbcheck import load, source

    cells = load(NOTEBOOKS[0].parent / notebook)["cells"]
    return "\n".join(source(c) for c in cells if c["cell_type"] == "markdown")


def test_the_3b_weights_in_00_and_03_are_one_figure() -> None:
    """00 prints the preset estimates, 03 the weights on their own: both from
    memory.real_3b_weights, and 03's prose states no figure of its own."""
    from qvl_helpers import memory

    assert "memory.preset_estimates(" in _code("00_environment_check.ipynb")
    assert "weights_text(" in _code("03_qlora_training.ipynb")
    estimates = memory.preset_estimates()
    shown = memory.weights_text(["4bit", "none"]).splitlines()
    for preset, est in estimates.items():
        figure = memory.human(memory.real_3b_weights(est.setup.quantization, fp16=est.setup.fp16))
        four_bit = est.setup.quantization == "4bit"
        upcast = memory.human(memory.real_3b_weights("4bit", frozen_fp32=True))
        tail = f"; {upcast} with frozen_fp32: true)" if four_bit else ")"
        assert f"weights{' ' * 25}{figure:>10}  (exact{tail}" in est.text(), preset
        assert any(figure in line and (upcast in line) == four_bit
                   for line in shown if ("NF4" in line) == four_bit), preset
    assert not re.search(r"\d(\.\d+)?\s*Gi?B of weights", _markdown("03_qlora_training.ipynb"))
