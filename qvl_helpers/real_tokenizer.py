"""The real Qwen2.5-VL tokenizer, built offline: exact text-token counts for the 3B on any machine.

Qwen2.5-VL tokenizes text with Qwen2's byte-level BPE unchanged (151,643 regular tokens) plus
added tokens at ids 151643-151664 (:data:`~qvl_helpers.qwen.SPECIAL_TOKENS`,
:data:`~qvl_helpers.qwen.EXTRA_TOKENS`). The vocabulary and merges come from llama.cpp's test file
``models/ggml-vocab-qwen2.gguf`` (llama.cpp is MIT-licensed; the vocabulary is Qwen2's, Apache-2.0),
which ships in ``qvl_helpers/vocab/`` with its reference tokenizations and ``NOTICE``.

Why the file is committed rather than extracted during set-up from PyPI's ``llama-cpp-python``
source distribution (which vendors it): 5.9 MB in the repository against a 76 MB download on every
fresh machine, and no network step in set-up, so that the offline, hosted and Docker paths all
have it. It is read with the ``gguf`` package (through transformers' GGUF loader) once and cached
as an ordinary tokenizer folder, like the tiny model.

The Qwen2Tokenizer class supplies Qwen2's normaliser (NFC) and pre-tokeniser; the added tokens go
at their real ids; the chat template is the hub's (:data:`~qvl_helpers.qwen.CHAT_TEMPLATE`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .outputs import build_in_place
from .qwen import (
    CHAT_TEMPLATE,
    CLIP_MEAN,
    CLIP_STD,
    EXTRA_TOKENS,
    MERGE,
    PATCH,
    SPECIAL_TOKENS,
    ImageLimits,
)

VOCAB_DIR = Path(__file__).resolve().parent / "vocab"
VOCAB_FILE = "ggml-vocab-qwen2.gguf"
#: Regular BPE tokens of Qwen2's vocabulary: the added tokens start here.
REGULAR_TOKENS = 151643
BUILDER_VERSION = 1
#: Hub models whose processor (tokenizer, chat template, image settings) this builds exactly:
#: Qwen2.5-VL-Instruct in every size shares them.
SAME_PROCESSOR = frozenset(f"Qwen/Qwen2.5-VL-{size}-Instruct" for size in ("3B", "7B", "32B", "72B"))
MARKER_FILE = "qvl_real_tokenizer.json"


def qwen2_tokenizer(vocab: dict[str, int], merges: list[tuple[str, str]]) -> Any:
    """A ``Qwen2Tokenizer`` over a byte-level BPE ``vocab`` (ids 0..n-1) and its ``merges``, with
    Qwen2.5-VL's added tokens after it in their real order (ids n, n+1, ...: 151643... for the
    real vocabulary), its eos and pad, and its chat template. The tiny stand-in and the real
    tokenizer are both made here."""
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer

    vocab = dict(vocab)
    for token in SPECIAL_TOKENS + EXTRA_TOKENS:
        vocab[token] = len(vocab)
    tokenizer = Qwen2Tokenizer(
        vocab=vocab, merges=[tuple(m) for m in merges],
        eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None, bos_token=None,
        extra_special_tokens=SPECIAL_TOKENS[1:], errors="replace", model_max_length=131072,
    )
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in EXTRA_TOKENS])
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def qwen_processor(tokenizer: Any) -> Any:
    """The ``Qwen2_5_VLProcessor`` with the hub's image settings around ``tokenizer``."""
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    image_kwargs = dict(**ImageLimits().to_dict(), patch_size=PATCH, temporal_patch_size=2,
                        merge_size=MERGE, image_mean=CLIP_MEAN, image_std=CLIP_STD)
    return Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(**image_kwargs),
        video_processor=Qwen2VLVideoProcessor(**image_kwargs),
        tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)


def read_vocabulary(folder: Path = VOCAB_DIR) -> tuple[dict[str, int], list[Any]]:
    """Qwen2's regular BPE tokens (ids 0..151642) and merges from llama.cpp's vocabulary file.

    transformers' GGUF loader (with the ``gguf`` package) fills the added-token slots with
    placeholders; those are dropped here and the real tokens added by :func:`qwen2_tokenizer`."""
    import importlib.util

    from transformers import AutoTokenizer

    from .errors import ModelError
    from .model import quiet_loading

    if importlib.util.find_spec("gguf") is None:
        raise ModelError("Qwen's real tokenizer is built from a GGUF vocabulary file, and the "
                         "gguf package is not installed.", file=folder / VOCAB_FILE,
                         fix="install the course's dependencies again (bash scripts/env.sh, or "
                             "pip install -e . -c constraints.txt), which include gguf.")
    with quiet_loading():
        loaded = AutoTokenizer.from_pretrained(str(folder), gguf_file=VOCAB_FILE)
    model = json.loads(loaded.backend_tokenizer.to_str())["model"]
    vocab = {t: i for t, i in model["vocab"].items() if i < REGULAR_TOKENS}
    if len(vocab) != REGULAR_TOKENS:
        raise ModelError(f"the vocabulary file has {len(vocab)} regular tokens, not "
                         f"{REGULAR_TOKENS}.", file=folder / VOCAB_FILE,
                         fix="restore qvl_helpers/vocab/ from the repository.")
    return vocab, model["merges"]


def build_real_tokenizer() -> Any:
    """The real Qwen2.5-VL tokenizer (151,665 tokens) from the committed vocabulary file."""
    return qwen2_tokenizer(*read_vocabulary())


def ensure_real_tokenizer(cache_dir: str | Path) -> Path:
    """The cached real processor folder under ``cache_dir`` (built the first time, in seconds),
    safe when several processes build it at once: each builds privately and moves its build
    into place in one rename; the first complete one wins."""
    folder = Path(cache_dir).expanduser().resolve() / f"qwen2_5_vl-tokenizer-v{BUILDER_VERSION}"
    if (folder / MARKER_FILE).is_file():
        return folder
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        from .errors import ModelError

        raise ModelError("the real tokenizer's cache folder holds something else (no "
                         f"{MARKER_FILE}: not a complete build of this course).", file=folder,
                         fix="delete that folder (the course rebuilds it in seconds) or set "
                             "QVL_CACHE_DIR to another place.")

    def build(tmp: Path) -> None:
        qwen_processor(build_real_tokenizer()).save_pretrained(tmp)
        marker = {"builder": "qvl_helpers.real_tokenizer", "builder_version": BUILDER_VERSION,
                  "source": f"qvl_helpers/vocab/{VOCAB_FILE} (llama.cpp; Qwen2's vocabulary)"}
        (tmp / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")

    return build_in_place(folder, build, lambda f: (f / MARKER_FILE).is_file())


def real_processor(cache_dir: str | Path) -> Any:
    """The Qwen2.5-VL processor with the real tokenizer (no model weights needed)."""
    from .model import load_processor

    return load_processor(ensure_real_tokenizer(cache_dir))
