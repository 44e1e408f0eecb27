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
  with the course's Qwen2.5-VL chat handler (:mod:`qvl_helpers.llama_run`), and asked the
  held-out samples with their images, greedy. The merged folder answers the same prompts in
  transformers in a fresh process. Both get the same pixels (each image resized beforehand, with
  the export's image limits, to the size the processor would choose), so only the two runtimes
  differ. f16 must give the same prompt length (in M-RoPE positions) and the same answer tokens;
  where an answer parts, it may part only at a near tie: where transformers picked token A and
  llama.cpp token B, how much each prefers its own pick over the other's, added up, is within
  ``gguf_compare.TIE_TOLERANCE`` logits. Anything else fails. Quantized files report how often they
  give the same answer (they are expected to differ sometimes).

Everything is recorded in ``export.json`` (``gguf``) and the model card. The comparison's rules
live in :mod:`qvl_helpers.gguf_compare`; running llama.cpp in :mod:`qvl_helpers.llama_run`.
"""

from __future__ import annotations

import json
import os
import sys
import tarfile
from pathlib import Path
from typing import Any

from .data.records import Record, answers_of
from .errors import ConfigError, ModelError, count
from .gguf_compare import TIE_TOLERANCE, compare, observe_transformers, verdict_line
from .llama_run import (
    EXTRA,
    LLAMA_CPP_PYTHON,
    GGUFSetupError,
    course_handler,
    observe_llama_cpp,
    require_llama_cpp,
    same_pixels,
)
from .qwen import ImageLimits

__all__ = ["GGUFSetupError", "LLAMA_CPP_PYTHON", "add_gguf", "check_gguf", "convert",
           "converter_dir", "gguf_files", "quantize", "serve", "verdict_line", "verify_gguf"]

GGUF_FOLDER = "gguf"
CONVERTER = "convert_hf_to_gguf.py"
#: What the converter needs from the source distribution's vendor/llama.cpp.
CONVERTER_PARTS = (CONVERTER, "conversion/", "gguf-py/gguf/", "LICENSE")
QUANT_TYPES = ("Q8_0", "Q4_K_M")


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
        tail = processes.stderr_tail(done, lines=2, limit=400)
        raise GGUFSetupError(f"fetching llama.cpp's converter failed: {tail}",
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
            raise ModelError(f"llama.cpp's converter failed on this folder: "
                             f"{processes.stderr_tail(done)}",
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


# --------------------------------------------------------------------------- the step

def is_verified_export(folder: Path) -> bool:
    """An export whose merge passed its verification (export.json says so)."""
    from .outputs import read_json
    from .verify import EXPORT_INFO

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

    from .inference import answer_budget, load_processor_for
    from .verify import VerificationError

    files = gguf_files(folder)
    processor = load_processor_for(folder)
    limits = ImageLimits.of(processor)
    budget = answer_budget(processor.tokenizer, [answers_of(r)[-1] for r in records])
    with tempfile.TemporaryDirectory() as tmp:
        same = same_pixels(records, limits, Path(tmp))
        say(f"GGUF: the merged model answers {count(len(same), 'held-out sample')} in "
            "transformers (a fresh process) ...")
        reference = observe_transformers(folder, same, facts)
        n_ctx = max(reference.prompt_tokens) + budget + 64  # llama.cpp keeps every token
        results = {}
        for kind, path in files.items():
            if kind == "mmproj":
                continue
            say(f"GGUF: {path.name} with {files['mmproj'].name} answers them in llama.cpp ...")
            seen = observe_llama_cpp(path, files["mmproj"], same, limits, budget, n_ctx)
            results[kind] = compare(reference, seen, same, exact=kind == "f16")
    problems = results["f16"]["problems"]
    summary = {"samples": len(records), "tie_tolerance": TIE_TOLERANCE,
               "image_tokens": list(limits.token_range),
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

    from .outputs import install_folder, read_json, staging_folder
    from .verify import EXPORT_INFO, verification_records

    require_llama_cpp()
    info = read_json(folder / EXPORT_INFO) or {}
    if not info.get("verified"):
        raise ConfigError("GGUF files are made only from a verified merge, and this export is not "
                          f"verified ({info.get('problem', 'no export.json')}).", file=folder,
                          fix="verify it first with held-out samples: qvl export --out FOLDER "
                              "--check-only --data TEST.jsonl (or export with --run).")
    records = verification_records(request.samples, request.n_verify)
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
    from .model import attention_implementation
    from .modelcard import write_model_card
    from .outputs import write_json
    from .verify import EXPORT_INFO, VerificationError

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
    from .outputs import write_text
    from .verify import UNVERIFIED

    return write_text(gguf_folder / UNVERIFIED, f"These GGUF files are not verified: {why}\n"
                      "Check them with: qvl export --out EXPORT_FOLDER --check-only --gguf "
                      "--run RUN (or --data TEST.jsonl)\n")


def check_gguf(folder: Path, request: Any, say: Any = print) -> dict[str, Any]:
    """Verify an export's existing GGUF files again (``qvl export --check-only --gguf``).

    Raises:
        ConfigError: the export has no GGUF files, or no held-out samples were given.
        VerificationError: the f16 pair failed (recorded in the folder).
    """
    from .outputs import read_json
    from .verify import EXPORT_INFO, verification_records

    require_llama_cpp()
    files = gguf_files(folder)
    if "f16" not in files or "mmproj" not in files:
        raise ConfigError("this export has no GGUF pair to check.", file=folder / GGUF_FOLDER,
                          fix="make one with: qvl export --out FOLDER --gguf (add --run or "
                              "--data for the verification).")
    records = verification_records(request.samples, request.n_verify)
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
    from .inference import load_processor_for
    from .outputs import read_json
    from .verify import EXPORT_INFO

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
    limits = ImageLimits.of(load_processor_for(folder))
    # The server builds its handler by this name for chat_format qwen2.5-vl.
    llama_chat_format.Qwen25VLChatHandler = course_handler(limits)
    app = create_app(server_settings=ServerSettings(host=host, port=port), model_settings=[
        ModelSettings(model=str(files[kind]), clip_model_path=str(files["mmproj"]),
                      chat_format="qwen2.5-vl", n_ctx=n_ctx, n_gpu_layers=-1,
                      model_alias=folder.name, verbose=False)])
    print(f"serving {files[kind].name} with {files['mmproj'].name} on http://{host}:{port}/v1 "
          "(OpenAI chat completions; Ctrl+C stops it)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
