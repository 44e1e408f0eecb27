"""Evaluation (``qvl eval``): greedy, left-padded batched generation and exact match.

The model answers every sample of a JSONL file from its prompt (the conversation up to the last
answer); predictions are compared with the reference answers. ``image_ablation="blank"`` replaces
every image with a white one of the same size: a model that still scores well without the images
learned to guess from the text, not to look. The evaluation notebook extends the metrics.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from .collate import make_collator
from .data.records import Record, answers_of
from .errors import ConfigError, DatasetError
from .runs import RUN_CONFIG

ABLATIONS = ("blank",)


def normalise_answer(text: str) -> str:
    """Whitespace-normalised answer (exact match ignores spacing differences only)."""
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> bool:
    return normalise_answer(prediction) == normalise_answer(reference)


def blank_like(image: Any) -> Any:
    from PIL import Image

    return Image.new("RGB", image.size, (255, 255, 255))


def image_limits(adapter: str | Path | None, processor: Any) -> tuple[int, int]:
    """The min/max pixels a run was trained with (its run_config.yaml), else the processor's:
    inference must use the same image limits as training."""
    if adapter is not None and (Path(adapter) / RUN_CONFIG).is_file():
        saved = yaml.safe_load((Path(adapter) / RUN_CONFIG).read_text(encoding="utf-8"))
        return int(saved["min_pixels"]), int(saved["max_pixels"])
    size = processor.image_processor.size
    return int(size["shortest_edge"]), int(size["longest_edge"])


def load_for_eval(model_path: str, adapter: str | Path | None = None,
                  quantization: str = "none") -> tuple[Any, Any]:
    """The base model (optionally with a LoRA adapter, checked to fit: see
    :func:`~qvl_helpers.model.load_adapter`) and the processor saved with the adapter (or the
    base's), in eval mode."""
    from .model import load_adapter, load_model, load_processor, read_adapter_config

    if adapter is not None:
        read_adapter_config(adapter)  # a broken adapter folder fails before the model loads
    processor_dir = adapter if adapter and (Path(adapter) / "processor_config.json").is_file() \
        else model_path
    processor = load_processor(processor_dir)
    device_map = "auto" if torch.cuda.is_available() else None
    model = load_model(model_path, quantization, device_map=device_map)
    if adapter is not None:
        model = load_adapter(model, adapter)
    model.eval()
    # Evaluation is greedy: drop the hub's sampling defaults (temperature, top_p, top_k) from the
    # model's generation config, or every generate() warns that they are ignored.
    settings = model.generation_config
    settings.do_sample, settings.temperature, settings.top_p, settings.top_k = False, None, None, None
    return model, processor


def generate_answers(model: Any, processor: Any, records: Sequence[Record], *,
                     batch_size: int = 8, max_new_tokens: int = 64, min_pixels: int | None = None,
                     max_pixels: int | None = None, image_ablation: str | None = None) -> list[str]:
    """Greedy answers for each record's last turn, generated in left-padded batches."""
    from transformers import GenerationConfig

    tok = processor.tokenizer
    collate = make_collator(processor, "generate", min_pixels=min_pixels, max_pixels=max_pixels,
                            image_transform=blank_like if image_ablation == "blank" else None)
    # A fresh config: greedy and nothing else (the hub's sampling settings would otherwise apply).
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                              eos_token_id=[tok.eos_token_id, tok.pad_token_id],
                              pad_token_id=tok.pad_token_id)
    device = next(model.parameters()).device
    answers = []
    with torch.no_grad():
        for i in range(0, len(records), batch_size):
            batch = {k: v.to(device) for k, v in collate(records[i:i + batch_size]).items()}
            out = model.generate(**batch, generation_config=config)
            new = out[:, batch["input_ids"].shape[1]:]
            answers += tok.batch_decode(new, skip_special_tokens=True)
    return answers


def evaluate_records(model: Any, processor: Any, records: Sequence[Record], *,
                     image_ablation: str | None = None, batch_size: int = 8,
                     min_pixels: int | None = None, max_pixels: int | None = None
                     ) -> dict[str, Any]:
    """Metrics and predictions (the report layout of the design, without model names).

    Raises:
        DatasetError: there are no records (an empty split has no score).
    """
    if not records:
        raise DatasetError("there are no samples to evaluate: a score of nothing would mean "
                           "nothing.", fix="evaluate a split with samples (add data if the test "
                                           "split is empty).")
    references = [answers_of(r)[-1] for r in records]
    longest = max((len(processor.tokenizer.encode(r)) for r in references), default=16)
    predictions = generate_answers(model, processor, records, batch_size=batch_size,
                                   max_new_tokens=min(512, longest + 8), min_pixels=min_pixels,
                                   max_pixels=max_pixels, image_ablation=image_ablation)
    hits = [exact_match(p, r) for p, r in zip(predictions, references, strict=True)]
    counts = Counter(normalise_answer(r) for r in references)
    n = len(records)
    return {
        "n": n, "image_ablation": image_ablation,
        "metrics": {"exact_match": sum(hits) / n if n else 0.0,
                    "most_common_answer_rate": max(counts.values()) / n if n else 0.0},
        "predictions": [{"id": r["id"], "prediction": p, "reference": ref, "correct": h}
                        for r, p, ref, h in zip(records, predictions, references, hits,
                                                strict=True)],
    }


def predictions_path(report: str | Path) -> Path:
    """Where the predictions of a report go: ``NAME.predictions.jsonl`` beside ``NAME.json``, so
    evaluations of different systems never share a predictions file."""
    report = Path(report)
    return report.with_name(f"{report.stem}.predictions.jsonl")


def run_eval(model: str, data: str | Path, out: str | Path, *, adapter: str | Path | None = None,
             image_root: str | Path | None = None, image_ablation: str | None = None,
             quantization: str = "none", batch_size: int = 8, force: bool = False
             ) -> dict[str, Any]:
    """``qvl eval``: evaluate ``model`` (+ ``adapter``) on a data file; writes the report to
    ``out`` and its predictions beside it (:func:`predictions_path`).

    Both outputs are claimed before any work: neither may be an input, and neither is replaced
    unless ``force``. ``image_root`` defaults to the one recorded with prepared splits.

    Raises:
        ConfigError, OutputExistsError: the outputs cannot be written as asked.
        DatasetError: the data is empty or has a bad record or a missing image.
        ModelError: the model or the adapter cannot be loaded, or the adapter does not fit.
    """
    from .config import choose_model, ensure_model
    from .data import load_records
    from .outputs import claim_output, write_json, write_text

    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, not {batch_size}.",
                          fix="use --batch-size 8 (or lower if memory is short).")
    out = Path(out)
    inputs = [data, model, adapter]
    if adapter is not None and Path(adapter).is_dir():
        inputs += list(Path(adapter).iterdir())
    claim_output(out, inputs=inputs, force=force)
    claim_output(predictions_path(out), inputs=inputs, force=force)
    records = load_records(data, image_root=image_root)
    if not records:  # before minutes of model loading
        raise DatasetError("there are no samples to evaluate: a score of nothing would mean "
                           "nothing.", file=data, fix="evaluate a file with samples (add data if "
                                                      "the test split is empty).")
    model_path = ensure_model(choose_model(model, "--model"))
    net, processor = load_for_eval(model_path, adapter, quantization)
    lo, hi = image_limits(adapter, processor)
    result = evaluate_records(net, processor, records, image_ablation=image_ablation,
                              batch_size=batch_size, min_pixels=lo, max_pixels=hi)
    report = {"model": model, "adapter": str(adapter) if adapter else None,
              "data": str(data), "min_pixels": lo, "max_pixels": hi, **result}
    write_json(out, report)
    write_text(predictions_path(out), "".join(json.dumps(row, ensure_ascii=False) + "\n"
                                              for row in report["predictions"]))
    return report


def run_eval_plan(run: str | Path) -> dict[str, Any]:
    """What ``qvl eval --run RUN`` evaluates, read from the run's ``run.json``: the model it was
    trained from, its adapter, its held-out test split and that split's image root.

    Raises:
        ConfigError: the folder is not a finished run made by ``qvl train``.
    """
    from .runs import ADAPTER, read_identity

    run = Path(run)
    identity = read_identity(run)
    if identity is None:
        raise ConfigError("this is not a run folder (no readable run.json).", file=run,
                          fix="pass a folder under outputs/runs/ made by `qvl train`.")
    if not (run / ADAPTER).is_dir():
        raise ConfigError("the run has no adapter yet (it did not finish).", file=run,
                          fix="finish it with `qvl train ... --resume` first.")
    try:
        where, name = identity["where"], identity["model"]["name"]
        test = Path(where["splits"]["test"])
    except (KeyError, TypeError):
        raise ConfigError("run.json lacks the model or the splits (made by an older version?).",
                          file=run / "run.json",
                          fix="pass --model, --adapter, --data and --out yourself.") from None
    beside = run.resolve().parent.parent / "data" / test.parent.name / test.name
    if beside.is_file():  # the run's own outputs folder (the project may have been moved)
        test = beside
    model = where.get("model_path") or name
    return {"model": model if Path(model).is_dir() else name, "adapter": run / ADAPTER,
            "data": test, "image_root": None}  # the split's split_info.json knows its root
