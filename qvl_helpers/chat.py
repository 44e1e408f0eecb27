"""``qvl chat``: ask a model (a merged export, or a base model with an adapter) about an image
from the terminal, with the answer streamed token by token as it is generated."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .data.records import Record, image_part, images_of, parts_of, scored_turn, text_part
from .errors import DatasetError, count
from .inference import generate_answers, load_for_generation

PROMPT = "question> "
HELP = ("Ask about the image; '/image PATH' switches the image; an empty line, 'exit' or Ctrl-D "
        "ends.")


def ask(image: str | Path, question: str) -> Record:
    """A one-turn record: the image, the question, and an empty answer slot to generate.

    The image gets the data doctor's check (:func:`~qvl_helpers.images.check_image`).

    Raises:
        DatasetError: the image is missing, not a local file, or one the doctor refuses.
    """
    from .images import ImageProblem, check_image, not_a_local_path, shorten

    fix = "pass another image (--image FILE, or /image FILE while chatting)."
    problem = not_a_local_path(str(image))
    if problem is not None:
        raise DatasetError(f"{problem.code}: {problem.message}.", fix=fix)
    path = Path(image).expanduser().resolve()
    if not path.is_file():
        raise DatasetError("the image does not exist.", file=shorten(str(image)),
                           fix="check the path (relative paths start at the current folder).")
    try:
        check_image(path)
    except ImageProblem as exc:
        raise DatasetError(f"{exc.code}: {exc.message}.", fix=fix) from None
    return {"id": "chat", "messages": [
        {"role": "user", "content": [image_part(str(path)), text_part(question)]},
        {"role": "assistant", "content": [text_part("")]}]}


def with_question(record: Record, question: str) -> Record:
    """``record`` up to its scored turn, that turn's question replaced by ``question`` (its images
    kept where they stood, earlier turns and the system message kept), and an empty answer slot:
    what :meth:`Chat.answer_record` generates for."""
    messages = [dict(m) for m in record["messages"]]
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    asked = max(i for i in range(last) if messages[i]["role"] == "user")
    parts: list[Any] = []
    for part in parts_of(messages[asked]):  # the new question where the old text began
        if part["type"] == "image":
            parts.append(part)
        elif not any(p["type"] == "text" for p in parts):
            parts.append(text_part(question))
    if not any(p["type"] == "text" for p in parts):
        parts.append(text_part(question))
    messages[asked] = {"role": "user", "content": parts}
    return {"id": record["id"], "messages": [*messages[:last],
                                             {"role": "assistant", "content": [text_part("")]}]}


def terminal_question(records: list[Record]) -> tuple[str, str]:
    """An image and a question for ``qvl chat`` (one image, one question) taken from ``records``:
    the first record that is one turn about one image, else the first image of any record with
    its scored question."""
    with_images = [r for r in records if images_of(r)]
    if not with_images:
        raise DatasetError("none of these samples has an image; `qvl chat` asks about one.",
                           fix="pass --image with a picture of your own.")
    simple = [r for r in with_images if len(images_of(r)) == 1 and
              sum(m["role"] == "user" for m in r["messages"]) == 1]
    record = (simple or with_images)[0]
    return images_of(record)[0], scored_turn(record).question


class Chat:
    """A loaded model and processor, answering one question at a time."""

    def __init__(self, model: str, adapter: str | Path | None = None,
                 quantization: str = "none", max_new_tokens: int = 256) -> None:
        from .config import choose_model
        from .tiny import ensure_model

        path = ensure_model(choose_model(model, "--model"))
        self.model, self.processor = load_for_generation(path, adapter, quantization)
        self.max_new_tokens = max_new_tokens
        self.has_adapter = adapter is not None

    def answer(self, image: str | Path, question: str, stream: bool = False,
               adapter: bool = True) -> str:
        """The greedy answer; with ``stream`` it is also printed as it is generated. With
        ``adapter=False`` the adapter is switched off: the base model answers."""
        return self.answer_record(ask(image, question), stream=stream, adapter=adapter)

    def answer_record(self, record: Record, stream: bool = False, adapter: bool = True) -> str:
        """The greedy answer to ``record``'s scored (last) turn, asked in its conversation: the
        system message, the earlier turns and every image, wherever they stand, as evaluation
        asks it. ``stream`` and ``adapter`` as in :meth:`answer`."""
        from contextlib import nullcontext

        from transformers import TextStreamer

        streamer = TextStreamer(self.processor.tokenizer, skip_prompt=True,
                                skip_special_tokens=True) if stream else None
        off = self.model.disable_adapter() if self.has_adapter and not adapter else nullcontext()
        with off:
            return generate_answers(self.model, self.processor, [record],
                                    max_new_tokens=self.max_new_tokens, streamer=streamer)[0]


def compare_text(chat: Chat, record: Record) -> str:
    """The record's scored turn (its question, how many images and earlier turns it is asked
    with, the reference answer) and the base and fine-tuned answers, for printing."""
    turn = scored_turn(record)
    images, earlier = len(images_of(record)), turn.number - 1
    context = ", ".join(x for x in (count(images, "image") if images else "no image",
                                    count(earlier, "earlier turn") if earlier else "") if x)
    return (f"{record['id']}: {turn.question} ({context})\n"
            f"  reference:  {turn.answer!r}\n"
            f"  base:       {chat.answer_record(record, adapter=False)!r}\n"
            f"  fine-tuned: {chat.answer_record(record)!r}")


def interactive(chat: Chat, image: str | Path, read: Callable[[str], str] = input,
                say: Callable[..., Any] = print) -> int:
    """Answer questions about ``image`` until an empty line, 'exit' or end of input; returns how
    many were answered."""
    say(f"image: {image}\n{HELP}")
    answered = 0
    while True:
        try:
            line = read(PROMPT).strip()
        except EOFError:
            break
        if line.lower() in ("", "exit", "quit"):
            break
        if line.startswith("/image "):
            candidate = line.removeprefix("/image ").strip()
            try:
                ask(candidate, "")
            except DatasetError as exc:
                say(f"error: {exc}")
                continue
            image = candidate
            say(f"image: {image}")
            continue
        chat.answer(image, line, stream=True)
        answered += 1
    return answered
