"""The GPU check's measurements (``benchmarks/gpu_check.sh`` runs this after the GPU tests).

For each GPU preset, a randomly initialised model with the real Qwen2.5-VL-3B configuration (no
download: :func:`qvl_helpers.tiny.real_3b_config`, with the stand-in's tokenizer) is saved once,
then trained for a few steps by the course's own ``train()`` on records with realistic image sizes,
twice side by side:

* **course recipe**: the preset as shipped (LoRA on the language model by pattern, length
  grouping, answer-only logits, a frozen vision tower without a graph);
* **public recipe**: what the popular notebooks do, on the same loader and data: LoRA on the bare
  projection names (which also hit the vision tower's MLP), full-vocabulary logits, random batches.

* **course recipe, upcast**: the 4-bit presets once more with ``frozen_fp32: true`` (PEFT's
  float32 copy of what 4-bit does not quantize), so that the lean default's saving is measured.

Each run records the peak of ``torch.cuda.max_memory_allocated`` and ``max_memory_reserved``,
tokens/s, and the memory estimate of :mod:`qvl_helpers.memory` for the same settings and data,
with the ratio measured / estimated. ``--smoke`` runs the same code on the CPU with a tiny
"3B-shaped" configuration (the real structure and vocabulary, small widths) and 2 steps.

Last, the vision tower in fp16 (:func:`vision_fp16`): what a T4 runs, at the image sizes where
Qwen2.5-VL-3B's tower is reported to overflow, with its weights in fp16 (the lean default) and in
float32 (PEFT's), under autocast as training runs it, against float32 compute. Random weights say
nothing about overflow (the real model's outlier activations do it): ``QVL_REAL_MODEL=FOLDER``
points it at the real weights where they exist (a Colab or Kaggle T4 after ``hf download``).
Even then one picture proves little: the reported overflow depends on the image's content (the
same picture at 1083x512 stayed finite), so a finite row is evidence, not a guarantee.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from .common import environment

PRESETS = ("t4_qlora", "24gb_qlora", "40gb_lora", "80gb_lora")
#: Image sizes of real data (phone photo, receipt, A4 scan, screenshot), cycled over the records.
IMAGE_SIZES = ((3024, 4032), (1080, 3400), (2480, 3508), (1920, 1080))
ANSWER = ('{"store": "Corner Shop", "date": "2024-05-17", "items": [{"name": "coffee", '
          '"price": "3.25"}, {"name": "bread", "price": "2.10"}], "total": "5.35"}')
#: The 4-bit presets once more with PEFT's float32 upcast of what is not quantized.
UPCAST_RECIPE = {"frozen_fp32": True}
#: Image sizes (width, height) for the fp16 vision check: the size reported to overflow
#: (llama.cpp issue 17534), that image within the T4 preset's max_pixels (200704), and a large
#: scan (a learner's own max_pixels).
OVERFLOW_SIZES = ((1024, 484), (644, 308), (1792, 1344))
PUBLIC_RECIPE = {"trained": r".*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)",
                 "answer_logits": False, "vision_no_grad": False, "group_by_length": False}
SMOKE_SIZES = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
               "num_attention_heads": 4, "num_key_value_heads": 2, "mrope_section": [4, 6, 6],
               "vision_depth": 2, "vision_hidden_size": 64, "vision_intermediate_size": 128,
               "vision_num_heads": 2, "fullatt_block_indexes": [1], "initializer_range": 0.02}


def make_model(folder: Path, smoke: bool) -> Path:
    """A random model of the real 3B configuration (``smoke``: 3B-shaped, tiny widths) with the
    stand-in's processor, saved in ``folder`` in bf16 (float32 for the smoke run)."""
    import torch
    from transformers import AutoModelForImageTextToText

    from qvl_helpers.qwen import SPECIAL_TOKENS
    from qvl_helpers.tiny import REAL_3B, build_processor, qwen25vl_config

    processor = build_processor()
    ids = {t: processor.tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    sizes = SMOKE_SIZES if smoke else {**REAL_3B, "initializer_range": 0.02}
    config = qwen25vl_config(sizes, REAL_3B["vocab_size"], ids)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float32 if smoke else torch.bfloat16
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(config, dtype=dtype)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return folder


def make_data(folder: Path, n: int = 32) -> Path:
    """``n`` receipt-like records whose images have the sizes of real data (noise, so that PNG
    does not shrink them into something unrealistic for the decoder)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for i, (w, h) in enumerate(IMAGE_SIZES):
        pixels = rng.integers(0, 255, (h // 4, w // 4, 3), dtype=np.uint8)
        Image.fromarray(pixels).resize((w, h)).save(folder / "images" / f"size{i}.jpg")
    with open(folder / "data.jsonl", "w", encoding="utf-8") as fh:
        for i in range(n):
            record = {"id": f"r{i}", "messages": [
                {"role": "user", "content": [
                    {"type": "image", "image": f"images/size{i % len(IMAGE_SIZES)}.jpg"},
                    {"type": "text", "text": "Extract store, date, items and total as JSON."}]},
                {"role": "assistant", "content": [{"type": "text", "text": ANSWER}]}]}
            fh.write(json.dumps(record) + "\n")
    return folder / "data.jsonl"


def measure(preset: str, recipe: str, model: Path, data: Path, out: Path, steps: int,
            smoke: bool) -> dict[str, Any]:
    """Train once with the course's ``train()`` and compare the peak with the estimate."""
    import torch

    from qvl_helpers import memory
    from qvl_helpers.config import PRESETS_DIR, load_config
    from qvl_helpers.model import load_processor
    from qvl_helpers.tokens import token_budget
    from qvl_helpers.train import train

    sets: dict[str, Any] = {"model": str(model), "data": str(data), "output_dir": str(out),
                            "run_name": f"{preset}-{recipe}", "max_steps": steps,
                            "grad_accum": 1, "eval_steps": 10_000, "save_steps": 10_000,
                            "logging_steps": 10_000, "max_length": 8192}
    if recipe == "public":
        sets.update(PUBLIC_RECIPE)
    elif recipe == "upcast":
        sets.update(UPCAST_RECIPE)
    if smoke:  # the same code paths with images small enough for two CPU cores
        sets.update(max_pixels=50176)
    cfg = load_config(presets=[PRESETS_DIR / f"{preset}.yaml"], sets=sets)
    from qvl_helpers.data import load_records

    budget = token_budget(load_records(data), load_processor(model), max_length=cfg.max_length,
                          limits=cfg.image_limits)
    cuda = torch.cuda.is_available()
    estimate = memory.estimate(memory.read_config(str(model)), memory.Setup.from_config(cfg, gpu=cuda),
                               memory.Workload.from_budget(budget, cfg.batch_size), gpu=cuda)
    if cuda:  # the previous run's model must be gone before this run's peak is taken
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = train(cfg, verbose=False)
    seconds = time.perf_counter() - start
    row: dict[str, Any] = {
        "preset": preset, "recipe": recipe, "steps": result.steps,
        "train_seconds": round(result.seconds, 2), "wall_seconds": round(seconds, 2),
        "tokens_per_second": round(result.steps * cfg.batch_size * sum(budget.totals)
                                   / len(budget.totals) / result.seconds, 1),
        "estimate": {"peak": estimate.peak, "needed": estimate.needed, "parts": estimate.parts},
        "train_loss": result.train_loss}
    if cuda:
        allocated, reserved = torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()
        row.update(peak_allocated=allocated, peak_reserved=reserved,
                   allocated_over_estimate=round(allocated / estimate.peak, 3),
                   reserved_over_needed=round(reserved / estimate.needed, 3))
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return row


def run(out_dir: Path, *, smoke: bool, steps: int, presets: tuple[str, ...] = PRESETS,
        say: Any = print) -> Path:
    """Every preset x recipe; one JSON file in ``out_dir`` (written after each run, so that a
    time limit still leaves what was measured)."""
    import torch

    out_dir.mkdir(parents=True, exist_ok=True)
    name = "gpu_check-smoke.json" if smoke else "gpu_check.json"
    result: dict[str, Any] = {
        "benchmark": "gpu_check", **environment(), "smoke": smoke,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "model": "tiny 3B-shaped random model" if smoke else "random Qwen2.5-VL-3B (real config)",
        "steps": steps, "image_sizes": IMAGE_SIZES, "public_recipe": PUBLIC_RECIPE, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        model = make_model(folder / "model", smoke)
        data = make_data(folder / "data")
        say(f"model and data ready in {time.perf_counter() - t0:.0f} s")
        for preset in presets:
            four_bit = preset.endswith("qlora")
            for recipe in ("course", "public", *(("upcast",) if four_bit else ())):
                t0 = time.perf_counter()
                row = measure(preset, recipe, model, data, folder / "outputs", steps, smoke)
                result["runs"].append(row)
                say(f"{preset:<12} {recipe:<7} {time.perf_counter() - t0:5.0f} s  "
                    + json.dumps({k: v for k, v in row.items() if k != "estimate"}))
                (out_dir / name).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        real = os.environ.get("QVL_REAL_MODEL")
        result["vision_fp16"] = vision_fp16(Path(real) if real else model, real_weights=bool(real),
                                            sizes=SMOKE_OVERFLOW_SIZES if smoke else OVERFLOW_SIZES)
        say("vision tower in fp16: " + json.dumps(result["vision_fp16"]["rows"]))
        (out_dir / name).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return out_dir / name


SMOKE_OVERFLOW_SIZES = ((224, 112),)


def vision_fp16(model_path: Path, *, real_weights: bool,
                sizes: tuple[tuple[int, int], ...] = OVERFLOW_SIZES) -> dict[str, Any]:
    """The vision tower on one bundled receipt resized to each size, three ways: fp16 weights and
    float32 weights under fp16 autocast (training on a T4, lean and upcast), and float32
    compute. Per way: finite or not, the largest absolute value of the features and of any
    block's output."""
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText

    from qvl_helpers.model import load_processor, quiet_loading

    device = "cuda" if torch.cuda.is_available() else "cpu"
    processor = load_processor(model_path)
    with quiet_loading():
        model = AutoModelForImageTextToText.from_pretrained(str(model_path), dtype=torch.bfloat16,
                                                            use_safetensors=True)
    towers = {torch.float32: model.model.visual.float().to(device).eval()}
    del model
    towers[torch.float16] = copy.deepcopy(towers[torch.float32]).half()
    receipt = Image.open(Path(__file__).resolve().parent.parent / "data_samples" / "receipts"
                         / "images" / "receipt_000.png").convert("RGB")
    largest: dict[str, float] = {}

    def keep_largest(module: Any, args: Any, out: Any) -> None:
        finite = torch.isfinite(out)
        if finite.any():
            largest["block"] = max(largest.get("block", 0.0), float(out[finite].float().abs().max()))
        largest["bad"] = largest.get("bad", 0) + int(not bool(finite.all()))

    hooks = [b.register_forward_hook(keep_largest) for t in towers.values() for b in t.blocks]
    rows = []
    for width, height in sizes:
        area = {"shortest_edge": width * height, "longest_edge": width * height}
        pixels = processor.image_processor(images=[receipt.resize((width, height))], size=area,
                                           return_tensors="pt")
        grid = pixels["image_grid_thw"].to(device)
        for way, weights, autocast in (("fp16 weights, fp16 autocast", torch.float16, True),
                                       ("fp32 weights, fp16 autocast", torch.float32, True),
                                       ("fp32 compute", torch.float32, False)):
            largest.clear()
            with torch.no_grad(), torch.autocast(device, dtype=torch.float16, enabled=autocast):
                out = towers[weights](pixels["pixel_values"].to(device, weights),
                                      grid_thw=grid).pooler_output
            finite = torch.isfinite(out)
            rows.append({"size": f"{width}x{height}", "visual_tokens": int(grid.prod()) // 4,
                         "way": way, "non_finite_features": int((~finite).sum()),
                         "max_abs_finite_feature": float(out[finite].float().abs().max())
                         if finite.any() else None,
                         "max_abs_finite_block_output": largest.get("block"),
                         "blocks_with_non_finite_output": largest.get("bad", 0)})
    for hook in hooks:
        hook.remove()
    return {"model": str(model_path) if real_weights else "random weights (the 3B's shape)",
            "real_weights": real_weights, "image": "data_samples/receipts/images/receipt_000.png",
            "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny 3B-shaped model, 2 steps")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--presets", default=",".join(PRESETS))
    args = parser.parse_args()
    steps = args.steps or (2 if args.smoke else 20)
    path = run(args.out_dir, smoke=args.smoke, steps=steps,
               presets=tuple(p for p in args.presets.split(",") if p))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
