"""Run llama.cpp's ``convert_hf_to_gguf.py`` on a merged Qwen2.5-VL folder, with two adaptations
for the tiny stand-in (a real Qwen2.5-VL-3B folder needs neither, and gets neither).

Run as a script (``python gguf_convert.py CONVERTER PRE_TOKENIZER ARGS...``), never imported:
llama.cpp's converter must import its own ``gguf-py`` (newer than PyPI's ``gguf`` of the same
version number), so nothing of the course (which reads the vocabulary file with PyPI's) may be
imported first. ``qvl_helpers.gguf_export`` starts it.

1. **Pre-tokenizer.** llama.cpp recognises a BPE tokenizer by hashing the ids it gives a test
   string, and refuses one it does not know. The stand-in's tokenizer has Qwen2's normaliser and
   pre-tokenizer (the same split expression) over a small vocabulary, so the hash is unknown
   while the rules are Qwen2's. The caller compares the rules and passes ``qwen2``, which is used
   only when the hash is not recognised; ``-`` passes nothing (an unknown tokenizer fails as
   llama.cpp decides).
2. **Projector names with a shallow vision tower.** The converter maps the merger's
   ``visual.merger.mlp.{0,2}`` through a table built for the vision tower's block ids, so with
   fewer than three vision blocks (the stand-in has two) ``mlp.2`` has no name. The table is
   built for at least three ids; the names it gives are the real model's.
"""

from __future__ import annotations

import sys
from pathlib import Path

#: Block ids the projector's name table needs: the merger's last layer is ``mlp.2``.
MERGER_IDS = 3


def adapt(pre_tokenizer: str | None) -> None:
    """Patch the two places described above in the imported converter."""
    import gguf  # llama.cpp's own gguf-py: the converter put it first on sys.path
    from conversion import base, qwenvl

    if pre_tokenizer:
        recognise = base.TextModel.get_vocab_base_pre

        def named(self, tokenizer):
            try:
                return recognise(self, tokenizer)
            except NotImplementedError:
                return pre_tokenizer

        base.TextModel.get_vocab_base_pre = named

    init = qwenvl.Qwen2VLVisionModel.__init__

    def init_with_merger(self, *args, **kwargs):
        init(self, *args, **kwargs)
        if self.block_count < MERGER_IDS:
            self.tensor_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.MMPROJ, MERGER_IDS)

    qwenvl.Qwen2VLVisionModel.__init__ = init_with_merger


def main(argv: list[str]) -> None:
    """``CONVERTER PRE_TOKENIZER ARGS...``: the converter's folder, ``qwen2`` or ``-``, and the
    arguments for ``convert_hf_to_gguf.py``."""
    converter, pre_tokenizer, rest = Path(argv[0]), argv[1], argv[2:]
    sys.path.insert(0, str(converter))
    import convert_hf_to_gguf  # llama.cpp's converter (it puts its gguf-py on sys.path)

    adapt(None if pre_tokenizer == "-" else pre_tokenizer)
    sys.argv = [str(converter / "convert_hf_to_gguf.py"), *rest]
    convert_hf_to_gguf.main()


if __name__ == "__main__":
    main(sys.argv[1:])
