"""``qvl chat``: ask a model (a merged export, or a base model with an adapter) about an image
from the terminal, with the answer streamed token by token as it is generated."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .data.records import Record, image_part, text_part
from .errors import DatasetError
from .evaluate import generate_answers, image_limits, load_for_eval

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


class Chat:
    """A loaded model and processor, answering one question at a time."""

    def __init__(self, model: str, adapter: str | Path | None = None,
                 quantization: str = "none", max_new_tokens: int = 256) -> None:
        from .config import choose_model, ensure_model

        path = ensure_model(choose_model(model, "--model"))
        self.model, self.processor = load_for_eval(path, adapter, quantization)
        self.limits = image_limits(adapter, self.processor)
        self.max_new_tokens = max_new_tokens
        self.has_adapter = adapter is not None

    def answer(self, image: str | Path, question: str, stream: bool = False,
               adapter: bool = True) -> str:
        """The greedy answer; with ``stream`` it is also printed as it is generated. With
        ``adapter=False`` the adapter is switched off: the base model answers."""
        from contextlib import nullcontext

        from transformers import TextStreamer

        streamer = TextStreamer(self.processor.tokenizer, skip_prompt=True,
                                skip_special_tokens=True) if stream else None
        lo, hi = self.limits
        off = self.model.disable_adapter() if self.has_adapter and not adapter else nullcontext()
        with off:
            return generate_answers(self.model, self.processor, [ask(image, question)],
                                    max_new_tokens=self.max_new_tokens, min_pixels=lo,
                                    max_pixels=hi, streamer=streamer)[0]


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
