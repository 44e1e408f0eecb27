"""Running a GGUF pair in llama.cpp (llama-cpp-python, the ``gguf`` extra): the course's
Qwen2.5-VL chat handler (also what ``qvl serve`` serves with), the requests it is asked, and the
observation of its greedy answers, step by step.
"""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path
from typing import Any

from .data.records import Record, image_parts, parts_of
from .errors import QVLError
from .gguf_compare import Observed
from .qwen import ImageLimits

#: The llama-cpp-python release verified here (its llama.cpp converts and runs Qwen2.5-VL).
LLAMA_CPP_PYTHON = "0.3.36"
EXTRA = ("pip install -e '.[gguf]' -c constraints.txt in the course's folder (it builds "
         "llama.cpp once, about 6 minutes on 2 quiet cores; pip keeps the build)")
EXTRA_FIX = f"add it with {EXTRA}, then run the same command again."


class GGUFSetupError(QVLError):
    """llama.cpp (the ``gguf`` extra) or its converter is missing: the command cannot run (2)."""

    exit_code = 2


def require_llama_cpp() -> Any:
    """The ``llama_cpp`` module at the verified version.

    Raises:
        GGUFSetupError: not installed, or another version (says how to add the extra).
    """
    try:
        import llama_cpp
    except ImportError:
        raise GGUFSetupError("GGUF export needs llama.cpp's Python package (llama-cpp-python), "
                             "which is not installed here.", fix=EXTRA_FIX) from None
    if llama_cpp.__version__ != LLAMA_CPP_PYTHON:
        raise GGUFSetupError(f"llama-cpp-python {llama_cpp.__version__} is installed; the course "
                             f"verified {LLAMA_CPP_PYTHON}.", fix=EXTRA_FIX)
    return llama_cpp


def same_pixels(records: list[Record], limits: ImageLimits, into: Path) -> list[Record]:
    """The records with each image resized, as PNG in ``into``, to the size the processor picks
    within ``limits``: both runtimes then see the same pixels and neither resizes."""
    import copy

    from PIL import Image

    from .images import load_rgb

    resized = copy.deepcopy(records)
    for i, record in enumerate(resized):
        for j, part in enumerate(image_parts(record)):
            image = load_rgb(part["image"])
            height, width = limits.resize(image.height, image.width)
            path = into / f"{i}-{j}.png"
            image.resize((width, height), Image.Resampling.BICUBIC).save(path)
            part["image"] = str(path)
    return resized


def openai_messages(record: Record) -> list[dict[str, Any]]:
    """The record's conversation up to its last answer as OpenAI chat messages, images inline as
    PNG data URLs in their places (what a client sends to the server)."""
    from .collate import prompt_messages

    messages = []
    for message in prompt_messages(record):
        content = []
        for part in parts_of(message):
            if part["type"] == "text":
                content.append({"type": "text", "text": part["text"]})
            else:
                content.append({"type": "image_url", "image_url": {"url": data_url(part["image"])}})
        if message["role"] == "system" or all(c["type"] == "text" for c in content):
            content = "".join(c["text"] for c in content)
        messages.append({"role": message["role"], "content": content})
    return messages


def data_url(path: str | Path) -> str:
    """An image file as a PNG data URL."""
    from .images import load_rgb

    buffer = io.BytesIO()
    load_rgb(path).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def course_handler(limits: ImageLimits) -> type:
    """llama-cpp-python's ``Qwen25VLChatHandler`` (the ``qwen2.5-vl`` chat format of its server)
    with two corrections, as a class taking the same arguments:

    - **the prompt ends in ``<|im_start|>assistant\\n``, as Qwen's chat template renders it.**
      The handler's template ends in that newline, but Jinja drops a template's last newline
      by default, so 0.3.36 sends ``<|im_start|>assistant`` and the model starts its answer
      where training never did (the stand-in answers nothing at all);
    - **images are resized within the export's limits** (``limits``, as visual tokens)
      instead of llama.cpp's defaults for Qwen2.5-VL (8 to 4096 tokens).
    """
    require_llama_cpp()
    from llama_cpp.llama_chat_format import Qwen25VLChatHandler

    class WithLimits:  # the handler's mtmd module, with the limits in its context parameters
        def __init__(self, mtmd: Any) -> None:
            self._mtmd = mtmd

        def __getattr__(self, name: str) -> Any:
            return getattr(self._mtmd, name)

        def mtmd_context_params_default(self) -> Any:
            params = self._mtmd.mtmd_context_params_default()
            params.image_min_tokens, params.image_max_tokens = limits.token_range
            return params

    class CourseQwen25VLChatHandler(Qwen25VLChatHandler):
        CHAT_FORMAT = Qwen25VLChatHandler.CHAT_FORMAT + "{{ '' }}"  # keeps the last newline

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._mtmd_cpp = WithLimits(self._mtmd_cpp)

    return CourseQwen25VLChatHandler


class StepRecorder:
    """A llama-cpp-python logits processor that notes, at each generated step, the token greedy
    decoding picks (the largest logit) and the largest logits, from the whole row: token ids
    themselves, since the text llama-cpp-python returns drops the bytes of an unfinished UTF-8
    character that transformers shows as U+FFFD."""

    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.top: list[dict[int, float]] = []

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import numpy as np

        from .verify import TOP_CANDIDATES

        best = np.argpartition(scores, -TOP_CANDIDATES)[-TOP_CANDIDATES:]
        self.tokens.append(int(np.argmax(scores)))
        self.top.append({int(t): float(scores[t]) for t in best})
        return scores


def observe_llama_cpp(text: Path, mmproj: Path, records: list[Record], limits: ImageLimits,
                      budget: int, n_ctx: int) -> Observed:
    """Greedy answers of the GGUF pair in llama.cpp: text, token ids, each step's margin."""
    require_llama_cpp()
    from llama_cpp import Llama, LogitsProcessorList
    from llama_cpp._utils import suppress_stdout_stderr

    # llama.cpp's C code logs every image it encodes to the terminal (mtmd's own logger, which
    # verbose=False does not reach); its failures still come back as Python exceptions.
    quiet = suppress_stdout_stderr(disable=os.environ.get("QVL_DEBUG") == "1")
    seen = Observed()
    with quiet:
        handler = course_handler(limits)(clip_model_path=str(mmproj), verbose=False)
        llm = Llama(model_path=str(text), chat_handler=handler, n_ctx=n_ctx, n_gpu_layers=0,
                    seed=0, verbose=False, n_threads=os.cpu_count() or 1)
    try:
        for record in records:
            steps = StepRecorder()
            with quiet:
                out = llm.create_chat_completion(
                    messages=openai_messages(record), temperature=0.0, top_k=1, top_p=1.0,
                    min_p=0.0, repeat_penalty=1.0, max_tokens=budget,
                    logits_processor=LogitsProcessorList([steps]))
            seen.answers.append(out["choices"][0]["message"]["content"] or "")
            seen.prompt_positions.append(out["usage"]["prompt_tokens"])  # positions, in fact
            # llama-cpp-python samples once more after the last token it returns
            seen.tokens.append(steps.tokens[:budget])
            seen.top.append(steps.top[:budget])
    finally:
        llm.close()
    return seen
