"""Running a model for answers: the one place that decides which processor goes with a model and
an adapter, loads them for generation, and says what greedy decoding is.

Evaluation (``qvl eval``), export (its reference and its verification) and ``qvl chat`` all load
through :func:`load_for_generation` and decode with :func:`greedy_config`, so the three cannot
drift apart. The image limits travel inside the processor: training sets them on the processor
it saves with every checkpoint and the adapter (:func:`load_processor_for`), and everything after
it reads them back from there (:meth:`~qvl_helpers.qwen.ImageLimits.of`); no caller passes them
by hand.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from .data.records import Record
from .qwen import ImageLimits
from .runs import RUN_CONFIG

#: The files a saved processor leaves (transformers 5 writes the first; older saves the second).
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")


def processor_folder(model_path: str | Path, adapter: str | Path | None = None) -> str:
    """Where the processor comes from: the adapter's folder when training saved one there (with
    the run's image limits), else the base model's."""
    if adapter is not None and any((Path(adapter) / name).is_file() for name in PROCESSOR_FILES):
        return str(adapter)
    return str(model_path)


def load_processor_for(model_path: str | Path, adapter: str | Path | None = None, *,
                       limits: ImageLimits | None = None) -> Any:
    """The processor for ``model_path`` (+ ``adapter``), carrying its image limits: ``limits``
    when given (training sets the run's; a flag overrides), else the ones saved with it.

    An adapter saved before processors carried the limits kept them only in its
    ``run_config.yaml``; those are applied, so an older run is evaluated as it was trained.
    """
    from .model import load_processor

    processor = load_processor(processor_folder(model_path, adapter))
    if limits is None and ImageLimits.of(processor) == ImageLimits():  # the hub's: saved before
        limits = _recorded_limits(adapter)                              # processors carried them
    return limits.apply_to(processor) if limits is not None else processor


def _recorded_limits(adapter: str | Path | None) -> ImageLimits | None:
    """The limits an adapter's ``run_config.yaml`` records (None without one)."""
    config = Path(adapter) / RUN_CONFIG if adapter is not None else None
    if config is None or not config.is_file():
        return None
    saved = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
    if "min_pixels" not in saved or "max_pixels" not in saved:
        return None
    return ImageLimits(int(saved["min_pixels"]), int(saved["max_pixels"]))


def greedy_config(tokenizer: Any, max_new_tokens: int | None = None,
                  temperature: float = 0.0) -> Any:
    """Plain greedy decoding (sampling only with ``temperature`` > 0), stopping at
    ``<|im_end|>`` or end of text: what evaluation, export and chat all generate with, and what
    an export's ``generation_config.json`` holds."""
    from transformers import GenerationConfig

    stop = [tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.pad_token_id]
    budget = {} if max_new_tokens is None else {"max_new_tokens": max_new_tokens}
    if temperature > 0:
        return GenerationConfig(do_sample=True, temperature=temperature, top_p=0.9,
                                eos_token_id=stop, pad_token_id=tokenizer.pad_token_id, **budget)
    return GenerationConfig(do_sample=False, num_beams=1, repetition_penalty=1.0,
                            eos_token_id=stop, pad_token_id=tokenizer.pad_token_id, **budget)


def make_greedy(model: Any) -> Any:
    """Make the model's own generation config plain greedy decoding. transformers 5 fills every
    setting a call leaves unset from ``model.generation_config``, so the hub's defaults
    (Qwen's: temperature 0.1, top_p 0.001, top_k 1, repetition_penalty 1.05) would otherwise
    apply, or warn, in every generate(); the exported model's generation_config.json has none
    of them either, so base + adapter and the export decode alike."""
    settings = model.generation_config
    settings.do_sample, settings.temperature, settings.top_p, settings.top_k = False, None, None, None
    settings.repetition_penalty = None
    return model


def load_for_generation(model_path: str, adapter: str | Path | None = None,
                        quantization: str = "none", *, limits: ImageLimits | None = None,
                        dtype: Any = None, device_map: Any = "auto") -> tuple[Any, Any]:
    """The base model (with the LoRA adapter, checked to fit: see
    :func:`~qvl_helpers.lora.load_adapter`), greedy and in eval mode, and its processor
    (:func:`load_processor_for`). ``device_map="auto"`` places it on the GPU when there is one."""
    import torch

    from .lora import load_adapter, read_adapter_config
    from .model import load_model

    if adapter is not None:
        read_adapter_config(adapter)  # a broken adapter folder fails before the model loads
    processor = load_processor_for(model_path, adapter, limits=limits)
    if device_map == "auto" and not torch.cuda.is_available():
        device_map = None
    model = load_model(model_path, quantization, dtype, device_map=device_map)
    if adapter is not None:
        model = load_adapter(model, adapter)
    return make_greedy(model.eval()), processor


def answer_budget(tokenizer: Any, references: Sequence[str]) -> int:
    """``max_new_tokens``: the longest reference in tokens plus a quarter (at least 8) of slack,
    so a right answer always fits and a rambling one stops."""
    longest = max(len(tokenizer.encode(r)) for r in references)
    return longest + max(8, longest // 4)


def blank_like(image: Any) -> Any:
    """A white page of the image's size: what the ``blank`` image ablation shows instead."""
    from PIL import Image

    return Image.new("RGB", image.size, (255, 255, 255))


#: Image ablations: what each shows the model instead of the real images.
ABLATIONS: dict[str, Callable[[Any], Any]] = {"blank": blank_like}


def generate_answers(model: Any, processor: Any, records: Sequence[Record], *,
                     batch_size: int = 8, max_new_tokens: int = 64,
                     image_ablation: str | None = None, streamer: Any = None) -> list[str]:
    """Greedy answers for each record's last turn, generated in left-padded batches (one at a
    time with a ``streamer``, which receives the tokens as they come); images are resized into
    the processor's limits (``image_ablation``: replaced first, see :data:`ABLATIONS`)."""
    import torch

    from .collate import make_collator

    tok = processor.tokenizer
    transform = ABLATIONS[image_ablation] if image_ablation else None
    collate = make_collator(processor, "generate", image_transform=transform)
    config = greedy_config(tok, max_new_tokens)
    device = next(model.parameters()).device
    answers = []
    batch_size = 1 if streamer is not None else batch_size
    with torch.no_grad():
        for i in range(0, len(records), batch_size):
            batch = {k: v.to(device) for k, v in collate(records[i:i + batch_size]).items()}
            out = model.generate(**batch, generation_config=config, streamer=streamer)
            new = out[:, batch["input_ids"].shape[1]:]
            answers += tok.batch_decode(new, skip_special_tokens=True)
    return [a.strip() for a in answers]
