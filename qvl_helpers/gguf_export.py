"""The merged model as llama.cpp's two GGUF files, verified by running them (``qvl export --gguf``).

llama.cpp, LM Studio and Ollama-style runtimes read GGUF; a vision model needs two files there:
the language model (``NAME-f16.gguf``) and the vision projector (``mmproj-NAME-f16.gguf``).

- **From the verified 16-bit merge only.** The files are converted from the export folder after
  its own verification passed, never from 4-bit weights; quantized language models (``Q8_0``,
  ``Q4_K_M``) are made from the f16 file by llama.cpp's own quantizer. The projector stays f16.
- **llama.cpp's own converter.** ``convert_hf_to_gguf.py`` and its ``gguf-py`` come from the
  source distribution of the pinned ``llama-cpp-python`` (which vendors llama.cpp), fetched once
  into the course's cache (or from a llama.cpp checkout named by ``QVL_LLAMA_CPP``).
  :mod:`qvl_helpers.gguf_convert` runs it with two adaptations the tiny stand-in needs.
- **Verified by running it.** The pair is loaded in llama.cpp (``llama-cpp-python``, on the CPU)
  with ``Qwen25VLChatHandler``, the chat format its OpenAI-compatible server uses, and asked the
  held-out samples with their images, greedy. The merged folder answers the same prompts in
  transformers in a fresh process. Both get the same pixels (each image resized beforehand, with
  the export's image limits, to the size the processor would choose), so only the two runtimes
  differ. f16 must give the same prompt length (in M-RoPE positions) and the same answer tokens;
  where an answer parts, it may part only at a near tie: where transformers picked token A and
  llama.cpp token B, how much each prefers its own pick over the other's, added up, is within
  :data:`TIE_TOLERANCE` logits. Anything else fails. Quantized files report how often they
  give the same answer (they are expected to differ sometimes).

Everything is recorded in ``export.json`` (``gguf``) and the model card.
"""

from __future__ import annotations

import base64
import io
import json
import os
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .data.records import Record, answers_of, image_parts, parts_of
from .errors import ConfigError, ModelError, QVLError, count
from .qwen import tokens_in

#: The llama-cpp-python release verified here (its llama.cpp converts and runs Qwen2.5-VL).
LLAMA_CPP_PYTHON = "0.3.36"
GGUF_FOLDER = "gguf"
CONVERTER = "convert_hf_to_gguf.py"
#: What the converter needs from the source distribution's vendor/llama.cpp.
CONVERTER_PARTS = (CONVERTER, "conversion/", "gguf-py/gguf/", "LICENSE")
QUANT_TYPES = ("Q8_0", "Q4_K_M")
#: Where an f16 answer parts from the merged model's (transformers picked A, llama.cpp B): the
#: largest logit(A) - logit(B) in transformers plus logit(B) - logit(A) in llama.cpp for the
#: parting to count as a near tie. f16 rounds each weight to 11 significant bits and llama.cpp
#: sums in its own order; a broken file disagrees by whole logits.
TIE_TOLERANCE = 0.1
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


# --------------------------------------------------------------------------- converting

def converter_dir() -> Path:
    """The folder holding llama.cpp's ``convert_hf_to_gguf.py``: ``$QVL_LLAMA_CPP`` (a llama.cpp
    checkout), else the course's cache, filled once from the pinned source distribution.

    Raises:
        GGUFSetupError: ``QVL_LLAMA_CPP`` has no converter, or it cannot be fetched.
    """
    from .config import load_config
    from .outputs import build_in_place

    given = os.environ.get("QVL_LLAMA_CPP")
    if given:
        if not (Path(given) / CONVERTER).is_file():
            raise GGUFSetupError(f"QVL_LLAMA_CPP names a folder without {CONVERTER}.", file=given,
                                 fix="point it at a llama.cpp checkout, or unset it to use the "
                                     "course's own copy.")
        return Path(given)
    out = load_config().cache_dir / f"llama.cpp-{LLAMA_CPP_PYTHON}"
    if (out / CONVERTER).is_file():
        return out
    return build_in_place(out, fetch_converter, lambda p: (p / CONVERTER).is_file())


def fetch_converter(into: Path) -> None:
    """Download the pinned llama-cpp-python source distribution with pip and keep only the
    converter's parts of the llama.cpp it vendors (about 2 MB of the 76 MB archive)."""
    from . import processes

    done = processes.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                          "--no-binary", ":all:", f"llama-cpp-python=={LLAMA_CPP_PYTHON}",
                          "-d", str(into / "download")], capture_output=True, text=True)
    archives = sorted((into / "download").glob("llama_cpp_python-*.tar.gz"))
    if done.returncode != 0 or not archives:
        tail = " / ".join(done.stderr.strip().splitlines()[-2:]) or "(no message)"
        raise GGUFSetupError(f"fetching llama.cpp's converter failed: {tail[:400]}",
                             fix="this needs the package index once; connect, or set "
                                 "QVL_LLAMA_CPP to a llama.cpp checkout, then run it again.")
    prefix = f"llama_cpp_python-{LLAMA_CPP_PYTHON}/vendor/llama.cpp/"
    with tarfile.open(archives[0]) as archive:
        members = []
        for member in archive.getmembers():
            inner = member.name.removeprefix(prefix)
            if member.name.startswith(prefix) and inner.startswith(CONVERTER_PARTS) and \
                    (member.isfile() or member.isdir()):
                member.name = inner
                members.append(member)
        archive.extractall(into, members=members, filter="data")
    for archive_path in archives:
        archive_path.unlink()
    (into / "download").rmdir()


def qwen2_rules() -> dict[str, Any]:
    """Qwen2's normaliser and pre-tokenizer, as ``tokenizer.json`` writes them."""
    from .real_tokenizer import qwen2_tokenizer

    saved = json.loads(qwen2_tokenizer({"a": 0}, []).backend_tokenizer.to_str())
    return {key: saved[key] for key in ("normalizer", "pre_tokenizer")}


def pre_tokenizer_name(folder: Path) -> str | None:
    """``qwen2`` when the folder's tokenizer splits text by Qwen2's rules (the real tokenizer and
    the stand-in's both do), else None (llama.cpp then decides by its own hash)."""
    saved = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    rules = {key: saved.get(key) for key in ("normalizer", "pre_tokenizer")}
    return "qwen2" if rules == qwen2_rules() else None


def convert(folder: Path, out: Path, name: str) -> tuple[Path, Path]:
    """Convert the merged ``folder`` into ``out/NAME-f16.gguf`` and ``out/mmproj-NAME-f16.gguf``.

    Raises:
        ModelError: the converter refused the folder (its last lines say why).
    """
    from . import processes

    converter = converter_dir()
    pre = pre_tokenizer_name(folder) or "-"
    text, mmproj = out / f"{name}-f16.gguf", out / f"mmproj-{name}-f16.gguf"
    driver = Path(__file__).with_name("gguf_convert.py")
    env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}
    for target, extra in ((text, []), (mmproj, ["--mmproj"])):
        done = processes.run([sys.executable, str(driver), str(converter), pre, str(folder),
                              "--outfile", str(target), "--outtype", "f16", *extra],
                             capture_output=True, text=True, env=env)
        if done.returncode != 0 or not target.is_file():
            tail = " / ".join(done.stderr.strip().splitlines()[-3:]) or "(no message)"
            raise ModelError(f"llama.cpp's converter failed on this folder: {tail[:600]}",
                             file=folder, fix="read the converter's message; report it with the "
                                              "folder's config.json if it is not about space.")
    return text, mmproj


def quantize(source: Path, target: Path, kind: str) -> Path:
    """``source`` (f16) quantized to ``kind`` (``Q8_0``, ``Q4_K_M``) by llama.cpp's quantizer.
    Tensors whose rows do not fit a type's block (the stand-in's 128 columns for K-quants) get
    llama.cpp's own fallback type.

    Raises:
        ModelError: llama.cpp's quantizer failed.
    """
    import ctypes

    llama_cpp = require_llama_cpp()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{kind}")
    params.nthread = os.cpu_count() or 1
    from llama_cpp._utils import suppress_stdout_stderr

    with suppress_stdout_stderr(disable=os.environ.get("QVL_DEBUG") == "1"):  # a line per tensor
        failed = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(),
                                                ctypes.byref(params)) != 0
    if failed or not target.is_file():
        raise ModelError(f"llama.cpp could not quantize {source.name} to {kind}.", file=source,
                         fix="free disk space if it is short, then run the same command again.")
    return target


# --------------------------------------------------------------------------- running

@dataclass
class Observed:
    """What one runtime answered on the verification samples."""

    answers: list[str] = field(default_factory=list)
    #: M-RoPE positions the prompt takes: its text tokens, plus each image's larger side in
    #: visual tokens (what llama.cpp counts; transformers gives the image one token per 28 px²)
    prompt_positions: list[int] = field(default_factory=list)
    prompt_tokens: list[int] = field(default_factory=list)  # transformers: the prompts' lengths
    tokens: list[list[int]] = field(default_factory=list)     # the answers' token ids
    #: per answer step, the largest logits as {token id: logit}
    top: list[list[dict[int, float]]] = field(default_factory=list)


def same_pixels(records: list[Record], lo: int, hi: int, into: Path) -> list[Record]:
    """The records with each image resized, as PNG in ``into``, to the size the processor picks
    within ``lo``..``hi`` pixels: both runtimes then see the same pixels and neither resizes."""
    import copy

    from PIL import Image

    from .images import load_rgb
    from .tokens import smart_resize

    resized = copy.deepcopy(records)
    for i, record in enumerate(resized):
        for j, part in enumerate(image_parts(record)):
            image = load_rgb(part["image"])
            height, width = smart_resize(image.height, image.width, lo, hi)
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


def course_handler(lo: int, hi: int) -> type:
    """llama-cpp-python's ``Qwen25VLChatHandler`` (the ``qwen2.5-vl`` chat format of its server)
    with two corrections, as a class taking the same arguments:

    - **the prompt ends in ``<|im_start|>assistant\\n``, as Qwen's chat template renders it.**
      The handler's template ends in that newline, but Jinja drops a template's last newline
      by default, so 0.3.36 sends ``<|im_start|>assistant`` and the model starts its answer
      where training never did (the stand-in answers nothing at all);
    - **images are resized within the export's limits** (``lo``..``hi`` pixels, as visual
      tokens) instead of llama.cpp's defaults for Qwen2.5-VL (8 to 4096 tokens).
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
            params.image_min_tokens = max(1, tokens_in(lo))
            params.image_max_tokens = max(1, tokens_in(hi))
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

        from .export import TOP_CANDIDATES

        best = np.argpartition(scores, -TOP_CANDIDATES)[-TOP_CANDIDATES:]
        self.tokens.append(int(np.argmax(scores)))
        self.top.append({int(t): float(scores[t]) for t in best})
        return scores


def observe_llama_cpp(text: Path, mmproj: Path, records: list[Record], lo: int, hi: int,
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
        handler = course_handler(lo, hi)(clip_model_path=str(mmproj), verbose=False)
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


def observe_transformers(folder: Path, records: list[Record], facts: dict[str, Any]) -> Observed:
    """The merged folder's greedy answers in transformers (a fresh process, as a user loads it),
    with the prompt length its processor renders and each step's top-two margin."""
    from .collate import make_collator
    from .export import observe_in_fresh_process
    from .model import load_processor

    processor = load_processor(folder)
    size = processor.image_processor.size
    ask = make_collator(processor, "generate", min_pixels=size["shortest_edge"],
                        max_pixels=size["longest_edge"])
    merged = observe_in_fresh_process(folder, records, facts)
    asked = [ask([r]) for r in records]
    return Observed(answers=merged["answers"], tokens=merged["tokens"], top=merged["top"],
                    prompt_positions=[prompt_positions(batch) for batch in asked],
                    prompt_tokens=[int(batch["input_ids"].shape[1]) for batch in asked])


def prompt_positions(batch: dict[str, Any]) -> int:
    """The M-RoPE positions of a one-sample prompt batch: each image's ``t·h·w / 4`` visual
    tokens take ``max(t, h/2, w/2)`` positions, every other token one."""
    length = int(batch["input_ids"].shape[1])
    for t, h, w in batch.get("image_grid_thw", []).tolist() if "image_grid_thw" in batch else []:
        length += max(t, h // 2, w // 2) - t * h * w // 4
    return length


# --------------------------------------------------------------------------- comparing

def parting(reference: Observed, other: Observed, i: int) -> int | None:
    """The answer step where ``other``'s sample ``i`` first picks another token than
    ``reference``'s (one stopping earlier counts as parting there), or None when the two
    answers are the same tokens."""
    from .export import first_difference

    return first_difference(reference.tokens[i], other.tokens[i])


def preference(top: list[dict[int, float]], step: int, own: list[int],
               other: list[int]) -> float | None:
    """How much one runtime preferred its own token at ``step`` over the other runtime's:
    logit(own) - logit(other), from its largest logits there. None when it cannot be told (the
    other token is not among them, or one answer has ended)."""
    if step >= len(own) or step >= len(other) or step >= len(top):
        return None
    mine, theirs = top[step].get(own[step]), top[step].get(other[step])
    return None if mine is None or theirs is None else float(mine - theirs)


def compare(reference: Observed, other: Observed, records: list[Record],
            exact: bool) -> dict[str, Any]:
    """How ``other`` (a GGUF file in llama.cpp) answered against ``reference`` (the merged model
    in transformers): prompt lengths, same answers, and for each parting answer the step, the
    two answers and each runtime's preference for its own token there. ``exact`` (f16): a
    parting that is not a near tie (:data:`TIE_TOLERANCE`), or another prompt length, is a
    problem."""
    problems, partings, same = [], [], 0
    for i, record in enumerate(records):
        who = f"sample {record.get('id', i)}"
        if reference.prompt_positions[i] != other.prompt_positions[i]:
            problems.append(f"{who}: llama.cpp reads a prompt of {other.prompt_positions[i]} "
                            f"positions, transformers {reference.prompt_positions[i]}")
        step = parting(reference, other, i)
        if step is None:
            same += 1
            continue
        ref_tokens, other_tokens = reference.tokens[i], other.tokens[i]
        ours = preference(reference.top[i], step, ref_tokens, other_tokens)
        theirs = preference(other.top[i], step, other_tokens, ref_tokens)
        tie = ours is not None and theirs is not None and ours + theirs <= TIE_TOLERANCE
        partings.append({"sample": record.get("id", i), "step": step, "near_tie": tie,
                         "preferences": [None if v is None else round(v, 4)
                                         for v in (ours, theirs)],
                         "transformers": reference.answers[i], "llama_cpp": other.answers[i]})
        if exact and not tie:
            where = (f"where transformers prefers its token by {ours:.3f} logits and llama.cpp "
                     f"its own by {theirs:.3f} (a near tie is within {TIE_TOLERANCE} together)"
                     if ours is not None and theirs is not None else
                     "where one answer ends or picks a token far down the other's list")
            problems.append(f"{who}: another answer ({other.answers[i]!r} instead of "
                            f"{reference.answers[i]!r}), parting at step {step} {where}")
    answers = [{"sample": r.get("id", i), "transformers": reference.answers[i],
                "llama_cpp": other.answers[i]} for i, r in enumerate(records)]
    return {"samples": len(records), "same_answers": same, "agreement": same / len(records),
            "partings": partings, "problems": problems, "answers": answers}


# --------------------------------------------------------------------------- the step

def is_verified_export(folder: Path) -> bool:
    """An export whose merge passed its verification (export.json says so)."""
    from .export import EXPORT_INFO
    from .outputs import read_json

    return bool((read_json(Path(folder) / EXPORT_INFO) or {}).get("verified"))


def require_samples(records: Any, folder: Path | None = None) -> None:
    """The GGUF verification needs held-out samples.

    Raises:
        ConfigError: there are none (says how to give them).
    """
    if not records:
        raise ConfigError("--gguf verifies the GGUF files on held-out samples, and none were "
                          "given.", file=folder, fix="pass --run (its test split) or --data "
                                                     "TEST.jsonl.")


def gguf_files(folder: Path) -> dict[str, Path]:
    """The GGUF files an export holds, by kind (``f16``, ``mmproj``, ``Q8_0``, ...)."""
    found = {}
    for path in sorted((folder / GGUF_FOLDER).glob("*.gguf")):
        if path.name.startswith("mmproj-"):
            found["mmproj"] = path
        else:
            found[path.stem.rsplit("-", 1)[-1]] = path
    return dict(sorted(found.items(), key=lambda item: item[0] != "f16"))  # f16 first


def verify_gguf(folder: Path, records: list[Record], facts: dict[str, Any],
                say: Any = print) -> dict[str, Any]:
    """Run every GGUF file of the export ``folder`` in llama.cpp on ``records`` and compare it
    with the merged model in transformers (see the module's notes).

    Raises:
        VerificationError: the f16 pair answers otherwise than the merged model (says how).
    """
    import tempfile

    from .evaluate import answer_budget
    from .export import VerificationError
    from .model import load_processor

    files = gguf_files(folder)
    processor = load_processor(folder)
    size = processor.image_processor.size
    lo, hi = int(size["shortest_edge"]), int(size["longest_edge"])
    budget = answer_budget(processor.tokenizer, [answers_of(r)[-1] for r in records])
    with tempfile.TemporaryDirectory() as tmp:
        same = same_pixels(records, lo, hi, Path(tmp))
        say(f"GGUF: the merged model answers {count(len(same), 'held-out sample')} in "
            "transformers (a fresh process) ...")
        reference = observe_transformers(folder, same, facts)
        n_ctx = max(reference.prompt_tokens) + budget + 64  # llama.cpp keeps every token
        results = {}
        for kind, path in files.items():
            if kind == "mmproj":
                continue
            say(f"GGUF: {path.name} with {files['mmproj'].name} answers them in llama.cpp ...")
            seen = observe_llama_cpp(path, files["mmproj"], same, lo, hi, budget, n_ctx)
            results[kind] = compare(reference, seen, same, exact=kind == "f16")
    problems = results["f16"]["problems"]
    summary = {"samples": len(records), "tie_tolerance": TIE_TOLERANCE,
               "image_tokens": [max(1, tokens_in(lo)), max(1, tokens_in(hi))],
               "files": {kind: {"file": p.name, "bytes": p.stat().st_size}
                         for kind, p in files.items()},
               "results": results, "verified": not problems}
    if problems:
        error = VerificationError("the GGUF files do not answer like the merged model: "
                                  + "; ".join(problems) + ".", file=files["f16"],
                                  fix="do not use these files; export again with the same "
                                      "qvl export command and --force (with --run RUN, or "
                                      "--data TEST.jsonl).")
        error.summary = summary
        raise error
    return summary


def verdict_line(summary: dict[str, Any]) -> str:
    """What the GGUF files can be trusted for, in one line."""
    f16 = summary["results"]["f16"]
    line = (f"GGUF verified in llama.cpp on {count(f16['samples'], 'held-out sample')}: the f16 "
            f"pair gives {f16['same_answers']} of {f16['samples']} answers exactly as the "
            "merged model")
    ties = len(f16["partings"])
    if ties:
        line += f" (the other {ties} part only at a near tie)"
    for kind, result in summary["results"].items():
        if kind != "f16":
            line += (f"; {kind}: {result['same_answers']} of {result['samples']} the same "
                     f"({result['agreement']:.0%})")
    return line + "."


def add_gguf(folder: Path, request: Any, say: Any = print) -> dict[str, Any]:
    """Convert the verified export ``folder`` into ``folder/gguf/`` (f16 pair, then each of
    ``request.quantize``), verify the files in llama.cpp on the export's held-out samples, and
    record the outcome in ``export.json`` and the model card. The folder is written under a
    temporary name and moved into place whole.

    Raises:
        GGUFSetupError: llama.cpp is missing.
        ConfigError: the export is not verified, or there are no held-out samples.
        VerificationError: the f16 pair failed (the files stay, marked ``UNVERIFIED.txt``).
    """
    import shutil

    from .export import EXPORT_INFO, verification_records
    from .outputs import install_folder, read_json, staging_folder

    require_llama_cpp()
    info = read_json(folder / EXPORT_INFO) or {}
    if not info.get("verified"):
        raise ConfigError("GGUF files are made only from a verified merge, and this export is not "
                          f"verified ({info.get('problem', 'no export.json')}).", file=folder,
                          fix="verify it first with held-out samples: qvl export --out FOLDER "
                              "--check-only --data TEST.jsonl (or export with --run).")
    records = verification_records(request)
    require_samples(records, folder)
    target = folder / GGUF_FOLDER
    work = staging_folder(target, "converting")
    try:
        say(f"GGUF: converting {folder.name} with llama.cpp's converter ...")
        text, _ = convert(folder, work, folder.name)
        for kind in request.quantize:
            say(f"GGUF: quantizing to {kind} ...")
            quantize(text, work / f"{folder.name}-{kind}.gguf", kind)
        write_marker(work, "not verified yet (the export was interrupted)")
        install_folder(work, target)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return settle_gguf(folder, request, records, info, say)


def settle_gguf(folder: Path, request: Any, records: list[Record], info: dict[str, Any],
                say: Any = print) -> dict[str, Any]:
    """Verify the export's GGUF files and record the outcome (``export.json``'s ``gguf``, the
    model card, ``gguf/UNVERIFIED.txt`` while they are not verified).

    Raises:
        VerificationError: the f16 pair failed.
    """
    from .export import EXPORT_INFO, VerificationError
    from .model import attention_implementation
    from .modelcard import write_model_card
    from .outputs import write_json

    why = "not verified yet (the check was interrupted)"
    marker = write_marker(folder / GGUF_FOLDER, why)
    write_json(folder / EXPORT_INFO, {**info, "gguf": {"verified": False, "problem": why}})
    facts = {"device": "cpu", "attention": attention_implementation()}
    try:
        summary = verify_gguf(folder, records, facts, say)
    except VerificationError as exc:
        info["gguf"] = {**getattr(exc, "summary", {}), "verified": False, "problem": exc.message}
        write_json(folder / EXPORT_INFO, info)
        write_model_card(folder, request, info)
        write_marker(folder / GGUF_FOLDER, exc.message)
        raise
    info["gguf"] = summary
    write_json(folder / EXPORT_INFO, info)
    write_model_card(folder, request, info)
    marker.unlink()
    say(verdict_line(summary))
    return summary


def write_marker(gguf_folder: Path, why: str) -> Path:
    """``UNVERIFIED.txt`` in the GGUF folder, saying why (``qvl serve`` refuses such files)."""
    from .export import UNVERIFIED
    from .outputs import write_text

    return write_text(gguf_folder / UNVERIFIED, f"These GGUF files are not verified: {why}\n"
                      "Check them with: qvl export --out EXPORT_FOLDER --check-only --gguf "
                      "--run RUN (or --data TEST.jsonl)\n")


def check_gguf(folder: Path, request: Any, say: Any = print) -> dict[str, Any]:
    """Verify an export's existing GGUF files again (``qvl export --check-only --gguf``).

    Raises:
        ConfigError: the export has no GGUF files, or no held-out samples were given.
        VerificationError: the f16 pair failed (recorded in the folder).
    """
    from .export import EXPORT_INFO, verification_records
    from .outputs import read_json

    require_llama_cpp()
    files = gguf_files(folder)
    if "f16" not in files or "mmproj" not in files:
        raise ConfigError("this export has no GGUF pair to check.", file=folder / GGUF_FOLDER,
                          fix="make one with: qvl export --out FOLDER --gguf (add --run or "
                              "--data for the verification).")
    records = verification_records(request)
    require_samples(records, folder)
    info = {k: v for k, v in (read_json(folder / EXPORT_INFO) or {}).items() if k != "gguf"}
    return settle_gguf(folder, request, records, info, say)


# --------------------------------------------------------------------------- serving

def serve(folder: Path, kind: str = "f16", host: str = "127.0.0.1", port: int = 8000,
          n_ctx: int = 4096) -> None:
    """``qvl serve``: llama-cpp-python's OpenAI-compatible server (``/v1/chat/completions``) on
    the export's verified GGUF pair, with the ``qwen2.5-vl`` chat format the verification used
    (:func:`course_handler`: Qwen's prompt, the training image limits); on a GPU when
    llama.cpp was built for one. Runs until stopped.

    Raises:
        GGUFSetupError: llama.cpp or its server is missing.
        ConfigError: the export has no such GGUF file, or its files are not verified.
    """
    from .export import EXPORT_INFO
    from .model import load_processor
    from .outputs import read_json

    require_llama_cpp()
    try:
        import uvicorn
        from llama_cpp import llama_chat_format
        from llama_cpp.server.app import create_app
        from llama_cpp.server.settings import ModelSettings, ServerSettings
    except ImportError:
        raise GGUFSetupError("llama-cpp-python's server is not installed here.",
                             fix=f"add it with {EXTRA}, then run qvl serve again.") from None
    folder = Path(folder).resolve()
    files = gguf_files(folder)
    if kind not in files or "mmproj" not in files:
        raise ConfigError(f"this export has no {kind} GGUF file with a vision projector "
                          f"(it has: {', '.join(files) or 'none'}).", file=folder / GGUF_FOLDER,
                          fix="make them with qvl export --out FOLDER --gguf (--quantize TYPE "
                              "for a quantized one), or choose one it has with --file.")
    summary = (read_json(folder / EXPORT_INFO) or {}).get("gguf") or {}
    if not summary.get("verified"):
        raise ConfigError("these GGUF files are not verified "
                          f"({summary.get('problem', 'no verification recorded')}), so they are "
                          "not served.", file=folder / GGUF_FOLDER,
                          fix="check them: qvl export --out FOLDER --check-only --gguf --run RUN "
                              "(or --data TEST.jsonl).")
    size = load_processor(folder).image_processor.size
    # The server builds its handler by this name for chat_format qwen2.5-vl.
    llama_chat_format.Qwen25VLChatHandler = course_handler(int(size["shortest_edge"]),
                                                           int(size["longest_edge"]))
    app = create_app(server_settings=ServerSettings(host=host, port=port), model_settings=[
        ModelSettings(model=str(files[kind]), clip_model_path=str(files["mmproj"]),
                      chat_format="qwen2.5-vl", n_ctx=n_ctx, n_gpu_layers=-1,
                      model_alias=folder.name, verbose=False)])
    print(f"serving {files[kind].name} with {files['mmproj'].name} on http://{host}:{port}/v1 "
          "(OpenAI chat completions; Ctrl+C stops it)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
