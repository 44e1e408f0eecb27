"""Merging a run's LoRA adapter into a standalone model folder, and proving it works (``qvl export``).

Merging is where fine-tunes are quietly lost, so every step here is explicit:

- **16-bit, never 4-bit.** The base is loaded in its own saved precision (bf16 for
  Qwen2.5-VL-3B, fp32 for the tiny stand-in), never quantized, even when training was QLoRA: adding
  ``B·A`` to 4-bit weights would round the fine-tune away, and the result could not be loaded as
  an ordinary model. (A QLoRA adapter was trained against 4-bit weights, so the merged 16-bit
  model differs slightly from the 4-bit training model; the verification compares it with the
  16-bit base plus the adapter, which is what the merge promises.)
- **Everything needed to use it.** Safetensors shards, ``config.json``, a ``generation_config.json``
  that stops at ``<|im_end|>`` and is greedy (sampling only when asked), the processor with its
  chat template and the image limits the run was trained with, and a model card (``README.md``).
- **Verified in a fresh process.** The merged folder is loaded with the Auto classes in another
  Python process and compared with base + adapter on held-out samples: the prompt and the visual
  token counts its processor renders, the logits (within a tolerance per precision), and the
  greedy answers (token for token; where the two first differ, the two tokens must have been
  tied within that tolerance in both models, or it is a failure). A failed check is an error,
  and the folder is marked ``UNVERIFIED.txt``.
- **Memory first.** The merge says how much memory it needs before it loads anything, runs on the
  CPU when the GPU is too small, and writes shards of at most 2 GB, so a 3B merge fits in 16 GB of
  RAM (7.5 GB of bf16 weights, once: the reference answers are taken from the same loaded model
  before merging).

The folder is written under a temporary name and renamed into place at the end: a crash never
leaves a folder that looks finished, and an existing export is only replaced with ``force``.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import processes
from .data.records import Record, answers_of
from .errors import ConfigError, QVLError, count
from .evaluate import answer_budget, image_limits, make_greedy, plan_for_run
from .outputs import human_size

EXPORT_INFO = "export.json"   # what was merged from what, and the verification result
UNVERIFIED = "UNVERIFIED.txt"  # present when the last verification failed
MAX_SHARD = "2GB"
TOP_CANDIDATES = 5  # the largest logits kept per generated step
#: Largest |logit difference| allowed, relative to the largest |logit|, per precision: merging
#: rounds W + B·A once, where the unmerged model rounds W·x and B·A·x separately, and a busy
#: CPU may sum in another order (MKL uses fewer threads under load): with large random adapters
#: that reached 2.8e-4 in float32 on a loaded 2-core machine; trained adapters stay near 1e-6.
#: A merge that goes wrong (a lost module, a wrong scale) differs by 1e-2 or more.
TOLERANCE = {"float32": 1e-3, "bfloat16": 3e-2, "float16": 1e-2}
REQUIRED_FILES = ("config.json", "generation_config.json", "tokenizer.json",
                  "tokenizer_config.json", "README.md")


class VerificationError(QVLError):
    """The merged folder does not behave like base + adapter (exit status 1)."""

    exit_code = 1


@dataclass
class ExportRequest:
    """What to merge and where (``qvl export``'s arguments)."""

    model: str
    adapter: Path
    out_dir: Path
    samples: Path | None = None        # held-out records for the verification
    run: Path | None = None            # for the model card (data, settings, evaluation)
    verify: bool = True
    force: bool = False
    n_verify: int = 4
    temperature: float = 0.0           # 0: greedy; > 0 writes sampling settings instead
    gguf: bool = False                 # also llama.cpp's GGUF pair, verified in llama.cpp
    quantize: tuple[str, ...] = ()     # with gguf: quantized language models (Q8_0, Q4_K_M)


@dataclass
class Reference:
    """What base + adapter does on the verification samples (taken before merging)."""

    records: list[Record]
    input_ids: list[list[int]] = field(default_factory=list)
    grids: list[list[list[int]]] = field(default_factory=list)
    logits: list[Any] = field(default_factory=list)       # at the answer positions only
    base_logits: list[Any] = field(default_factory=list)  # the same with the adapter off
    answers: list[str] = field(default_factory=list)
    tokens: list[list[int]] = field(default_factory=list)     # the greedy answers' token ids
    margins: list[list[float]] = field(default_factory=list)  # top-1 minus top-2 logit per step
    #: per step, the TOP_CANDIDATES largest logits as {token id: logit} (GGUF verification)
    top: list[list[dict[int, float]]] = field(default_factory=list)


def plan_export(run: str | Path | None = None, *, model: str | None = None,
                adapter: str | Path | None = None, out_dir: str | Path | None = None,
                **settings: Any) -> ExportRequest:
    """An export of a run (its model, adapter and held-out test split) or of a model and an
    adapter given directly. ``out_dir`` defaults to ``<output_dir>/export/<run name>``.

    Raises:
        ConfigError: neither a run nor both a model and an adapter.
    """
    from .config import load_config

    if run is not None:
        plan = plan_for_run(run)
        model, adapter = model or plan.model, adapter or plan.adapter
        samples, name = plan.data, Path(run).resolve().name
        default = Path(run).resolve().parent.parent / "export" / name
    elif adapter is not None:
        model = model or adapter_base_model(adapter)
        samples, name = None, Path(adapter).resolve().parent.name or "export"
        default = Path(load_config().output_dir) / "export" / name
    else:
        raise ConfigError("nothing to export.", fix="pass --run outputs/runs/NAME, or --model "
                                                    "and --adapter.")
    return ExportRequest(model=str(model), adapter=Path(adapter),
                         out_dir=Path(out_dir) if out_dir else default, samples=samples,
                         run=Path(run) if run else None, **settings)


def adapter_base_model(adapter: str | Path) -> str:
    """The base model an adapter was trained on, as its ``adapter_config.json`` records it
    (``base_model_name_or_path``), for an export given only ``--adapter``.

    Raises:
        ConfigError: the adapter folder records no base model (or has no adapter_config.json).
    """
    from .outputs import read_json

    config = read_json(Path(adapter) / "adapter_config.json") or {}
    base = config.get("base_model_name_or_path")
    if not isinstance(base, str) or not base:
        raise ConfigError("this adapter does not record its base model (no "
                          "base_model_name_or_path in adapter_config.json).", file=adapter,
                          fix="pass the base model with --model (tiny, a hub id or a folder).")
    return base


# --------------------------------------------------------------------------- memory

def merge_dtype(model_path: str) -> Any:
    """The precision the base was saved in (bf16 for the real model), never a quantized one."""
    import torch
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path)
    saved = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "float32"
    name = saved if isinstance(saved, str) else str(saved).removeprefix("torch.")
    return {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(name, torch.float32)


def weight_bytes(model_path: str, dtype: Any) -> int:
    """Bytes of every weight in ``dtype`` (counted on a weightless copy built from the config):
    what the merged safetensors files take on disk."""
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForImageTextToText

    with init_empty_weights():
        skeleton = AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(model_path))
    params = sum(p.numel() for p in skeleton.parameters())
    return params * torch.empty((), dtype=dtype).element_size()


def memory_needed(model_path: str, dtype: Any) -> int:
    """Bytes the merge holds at once: every weight in ``dtype``, plus one shard (at most 2 GB)
    being written."""
    weights = weight_bytes(model_path, dtype)
    return weights + min(weights, 2 * 1024 ** 3)  # a shard is at most MAX_SHARD


def choose_device(needed: int) -> tuple[str, str]:
    """``(device, why)``: the GPU when its free memory holds the merge with 20% to spare, the CPU
    otherwise (merging is additions: slow on a CPU only for the verification's forward passes)."""
    import torch

    if torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info()
        if free > needed * 1.2:
            return "cuda", f"the GPU has {free / 2**30:.1f} GB free"
        return "cpu", f"the GPU has only {free / 2**30:.1f} GB free"
    return "cpu", "there is no CUDA GPU"


def available_ram() -> int | None:
    """Bytes of memory the system can still give (None where it cannot tell)."""
    import os

    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


# --------------------------------------------------------------------------- reference and merge

def verification_records(request: ExportRequest) -> list[Record]:
    """The held-out records the verification answers (up to ``n_verify``)."""
    from .data import load_records

    if request.samples is None or request.n_verify == 0:
        return []
    return load_records(request.samples)[:request.n_verify]


def _answer_logits(model: Any, batch: dict[str, Any], device: Any) -> Any:
    """Logits at the positions that predict the reference answer (where training has labels):
    the part of the output the fine-tune is about, and a small fraction of the sequence."""
    inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
    predicts = batch["labels"][0, 1:] != -100
    return model(**inputs).logits[0, :-1][predicts.to(device)].float().cpu()


def observe(model: Any, processor: Any, records: list[Record], lo: int, hi: int, *,
            base_too: bool = False, own_settings: bool = False) -> Reference:
    """Prompt ids, visual grids, logits at the answer positions (``base_too``: also with the
    adapter switched off) and greedy answers with each step's top-1/top-2 margin.
    ``own_settings`` generates with the model's saved generation config (greedy enforced)."""
    import torch

    from .collate import make_collator

    seen = Reference(records)
    if not records:  # nothing to observe (no held-out samples): no generation settings either
        return seen
    collate = make_collator(processor, "train", min_pixels=lo, max_pixels=hi)
    generate = make_collator(processor, "generate", min_pixels=lo, max_pixels=hi)
    device = next(model.parameters()).device
    budget = answer_budget(processor.tokenizer, [answers_of(r)[-1] for r in records])
    settings = {"max_new_tokens": budget, "output_scores": True, "return_dict_in_generate": True,
                "do_sample": False}
    if not own_settings:
        config = generation_settings(processor.tokenizer, 0.0)
        config.update(**settings)
        settings = {"generation_config": config}
    with torch.no_grad():
        for record in records:
            batch = collate([record])
            seen.input_ids.append(batch["input_ids"][0].tolist())
            seen.grids.append(batch["image_grid_thw"].tolist() if "image_grid_thw" in batch
                              else [])
            seen.logits.append(_answer_logits(model, batch, device))
            if base_too:
                with model.disable_adapter():
                    seen.base_logits.append(_answer_logits(model, batch, device))
            asked = {k: v.to(device) for k, v in generate([record]).items()}
            out = model.generate(**asked, **settings)
            tokens = out.sequences[0, asked["input_ids"].shape[1]:].tolist()
            seen.tokens.append(tokens)
            seen.margins.append([float(v[0] - v[1]) for v in
                                 (step[0].float().topk(2).values for step in out.scores)])
            seen.top.append([dict(zip(c.indices.tolist(), c.values.tolist(), strict=True))
                             for c in (step[0].float().topk(TOP_CANDIDATES)
                                       for step in out.scores)])
            seen.answers.append(processor.tokenizer.decode(tokens, skip_special_tokens=True))
    return seen


def first_difference(a: list[int], b: list[int]) -> int | None:
    """The first position where two token sequences differ (None when they are equal)."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def generation_settings(tokenizer: Any, temperature: float) -> Any:
    """Greedy (or sampling at ``temperature``), stopping at ``<|im_end|>`` or end of text."""
    from transformers import GenerationConfig

    stop = [tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.pad_token_id]
    if temperature > 0:
        return GenerationConfig(do_sample=True, temperature=temperature, top_p=0.9,
                                eos_token_id=stop, pad_token_id=tokenizer.pad_token_id)
    return GenerationConfig(do_sample=False, num_beams=1, repetition_penalty=1.0,
                            eos_token_id=stop, pad_token_id=tokenizer.pad_token_id)


def load_reference(request: ExportRequest, model_path: str, device: str) -> tuple[Any, Any, int, int]:
    """Base + adapter in the base's own 16-bit precision, greedy, and the processor and image
    limits the run was trained with (the adapter's, else the base's)."""
    from .model import load_adapter, load_model, load_processor

    processor_dir = request.adapter if (request.adapter / "processor_config.json").is_file() \
        else model_path
    processor = load_processor(processor_dir)
    lo, hi = image_limits(request.adapter, processor)
    model = load_adapter(load_model(model_path, "none", dtype=merge_dtype(model_path),
                                    device_map=device if device == "cuda" else None),
                         request.adapter)
    return make_greedy(model.eval()), processor, lo, hi


def merge(request: ExportRequest, model_path: str, folder: Path,
          say: Any = print) -> tuple[Reference, dict[str, Any]]:
    """Load base + adapter in 16-bit, observe them on the verification records, merge, and save
    the model, its generation settings and its processor (with the training image limits)."""
    from .model import attention_implementation, quiet_loading

    dtype = merge_dtype(model_path)
    needed = memory_needed(model_path, dtype)
    device, why = choose_device(needed)
    ram = available_ram()
    say(f"Merging in {str(dtype).removeprefix('torch.')} on the {device} ({why}); it needs about "
        f"{human_size(needed)}" + (f" ({human_size(ram)} of RAM free)." if ram else "."))
    model, processor, lo, hi = load_reference(request, model_path, device)
    reference = observe(model, processor, verification_records(request), lo, hi, base_too=True)
    merged = model.merge_and_unload()
    merged.generation_config = generation_settings(processor.tokenizer, request.temperature)
    with quiet_loading():
        merged.save_pretrained(folder, max_shard_size=MAX_SHARD)
    processor.image_processor.size = {"shortest_edge": lo, "longest_edge": hi}
    processor.save_pretrained(folder)
    del model, merged
    free_memory()
    return reference, {"dtype": str(dtype).removeprefix("torch."), "device": device,
                       "attention": attention_implementation(), "min_pixels": lo,
                       "max_pixels": hi, "memory_bytes": needed}


def free_memory() -> None:
    """Give back what the merge held before the fresh process loads its own copy."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------- verification

def has_chat_template(folder: Path) -> bool:
    """transformers 5 saves it as chat_template.jinja; older saves kept it in a config file."""
    if (folder / "chat_template.jinja").is_file():
        return True
    for name in ("tokenizer_config.json", "processor_config.json", "chat_template.json"):
        path = folder / name
        if path.is_file() and "chat_template" in path.read_text(encoding="utf-8",
                                                                errors="replace"):
            return True
    return False


def check_files(folder: Path) -> list[str]:
    """What a usable model folder lacks: the required files, weights, a chat template and a
    processor configuration."""
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if not list(folder.glob("*.safetensors")):
        missing.append("*.safetensors weights")
    if not has_chat_template(folder):
        missing.append("a chat template")
    if not any((folder / n).is_file() for n in ("processor_config.json",
                                                 "preprocessor_config.json")):
        missing.append("processor_config.json")
    return missing


def observe_in_fresh_process(folder: Path, records: list[Record],
                             facts: dict[str, Any]) -> dict[str, Any]:
    """Load ``folder`` with the Auto classes in a new Python process, on the device and with the
    attention implementation of the reference, and observe it there: the way a user will load
    it, with nothing of this process's state to help."""
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "records.json").write_text(json.dumps(records, ensure_ascii=False),
                                                encoding="utf-8")
        (Path(tmp) / "how.json").write_text(json.dumps(
            {"device": facts.get("device", "cpu"), "attention": facts.get("attention", "sdpa")}))
        done = processes.run([sys.executable, "-m", "qvl_helpers.export", str(folder), tmp],
                             capture_output=True, text=True)  # ends if this process is stopped
        if done.returncode != 0:
            tail = " / ".join(done.stderr.strip().splitlines()[-3:]) or "(no message)"
            raise VerificationError(f"loading and running the merged folder in a fresh process "
                                    f"failed: {tail[:600]}", file=folder,
                                    fix="read the message: out of memory means closing other "
                                        "programs (or running on the CPU); otherwise export "
                                        "again, and report it with QVL_DEBUG=1 if it repeats.")
        return torch.load(Path(tmp) / "observed.pt", weights_only=True)


def _fresh_process_main(folder: str, tmp: str) -> None:
    """The other process: load the folder as a user would and observe it."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from .model import quiet_loading

    records = json.loads((Path(tmp) / "records.json").read_text(encoding="utf-8"))
    how = json.loads((Path(tmp) / "how.json").read_text())
    processor = AutoProcessor.from_pretrained(folder)
    with quiet_loading():
        model = AutoModelForImageTextToText.from_pretrained(
            folder, dtype="auto", attn_implementation=how["attention"], use_safetensors=True)
    model.to(how["device"]).eval()
    size = processor.image_processor.size
    seen = observe(model, processor, records, size["shortest_edge"], size["longest_edge"],
                   own_settings=True)  # its own generation_config.json, greedy enforced
    torch.save({"input_ids": seen.input_ids, "grids": seen.grids, "logits": seen.logits,
                "answers": seen.answers, "tokens": seen.tokens, "margins": seen.margins,
                "top": seen.top,
                "dtype": str(model.dtype).removeprefix("torch.")},
               Path(tmp) / "observed.pt")


def _sample_problems(reference: Reference, merged: dict[str, Any], i: int,
                     tolerance: float) -> tuple[list[str], float, bool]:
    """(problems, relative logit difference, greedy answers parted at a tie) for sample i."""
    who = f"sample {reference.records[i]['id']}"
    if reference.input_ids[i] != merged["input_ids"][i]:
        return [f"{who}: its processor renders another prompt (token ids differ)"], 0.0, False
    problems = []
    if reference.grids[i] != merged["grids"][i]:
        problems.append(f"{who}: other visual token counts ({merged['grids'][i]} instead of "
                        f"{reference.grids[i]}): the image limits were not saved")
    a, b = reference.logits[i], merged["logits"][i]
    measured = float((a - b).abs().max())
    relative = measured / max(1.0, float(a.abs().max()))
    if reference.base_logits:
        from_base = float((reference.base_logits[i] - a).abs().max())
        if from_base > 0 and measured > 0.5 * from_base:  # as far off as having no adapter
            problems.append(f"{who}: the merged model is about as far from base + adapter "
                            "as the base model is: the adapter was lost in the merge")
    # Up to the first differing token both models saw the same prefix, so there each one's
    # margin between its pick and the other's adds up to how much the two disagree about those
    # two tokens: within twice the logit tolerance, rounding explains the flip.
    step = first_difference(reference.tokens[i], merged["tokens"][i])
    ours, theirs = reference.margins[i], merged["margins"][i]
    tie = step is not None and step < min(len(ours), len(theirs)) and \
        ours[step] + theirs[step] <= 2 * tolerance * max(1.0, float(a.abs().max()))
    if step is not None and not tie:
        problems.append(f"{who}: another greedy answer ({merged['answers'][i]!r} instead of "
                        f"{reference.answers[i]!r})")
    return problems, relative, tie


def compare_observations(reference: Reference, merged: dict[str, Any]) -> tuple[list[str], dict]:
    """Every difference between base + adapter and the merged folder, and the measurements.
    Greedy answers may part only at a tie: where, after the same prefix, the two models' margins
    between the two tokens add up to less than twice the logit tolerance."""
    problems, worst, ties = [], 0.0, 0
    tolerance = TOLERANCE.get(merged["dtype"], 1e-4)
    for i in range(len(reference.records)):
        found, relative, tie = _sample_problems(reference, merged, i, tolerance)
        problems += found
        worst, ties = max(worst, relative), ties + tie
    if worst > tolerance:
        problems.insert(0, f"logits differ by up to {worst:.2e} of their scale (allowed "
                           f"{tolerance:.0e} in {merged['dtype']})")
    return problems, {"samples": len(reference.records), "max_logit_difference": worst,
                      "tolerance": tolerance, "dtype": merged["dtype"], "answer_ties": ties}


def verify(folder: Path, reference: Reference, facts: dict[str, Any]) -> dict[str, Any]:
    """Check the merged ``folder`` against ``reference`` (taken from base + adapter).

    Raises:
        VerificationError: files are missing, or the folder behaves differently (says how).
    """
    missing = check_files(folder)
    if missing:
        raise VerificationError(f"the merged folder lacks {', '.join(missing)}.", file=folder,
                                fix="export again with --force.")
    if not reference.records:
        return {"samples": 0}
    problems, measured = compare_observations(reference, observe_in_fresh_process(
        folder, reference.records, facts))
    if problems:
        raise VerificationError("the merged model does not behave like base + adapter: "
                                + "; ".join(problems) + ".", file=folder,
                                fix="do not use this folder; export again with --force, and "
                                    "report it if it fails again.")
    return measured


# --------------------------------------------------------------------------- the command

def is_export(folder: Path) -> bool:
    """A folder ``qvl export`` made (or an empty one): the only kind ``--force`` replaces."""
    return (folder / EXPORT_INFO).is_file() or (folder / UNVERIFIED).is_file() or \
        (folder.is_dir() and not any(folder.iterdir()))


def claim_export_folder(out: Path, inputs: list[Any], force: bool) -> None:
    """Refuse an output folder that is, or holds, one of the inputs; an existing one unless
    ``force``; and, even with ``force``, anything that is not an earlier export.

    Raises:
        ConfigError, OutputExistsError: as above (nothing is written).
    """
    from .outputs import OutputExistsError, refuse_inputs

    refuse_inputs(out, inputs)
    resolved = out.resolve()
    for item in filter(None, inputs):
        if resolved in Path(item).resolve().parents:
            raise ConfigError(f"the output {out} holds {item}, an input of this export: "
                              "replacing it would delete the input.", file=out,
                              fix="choose a new folder for --out, e.g. outputs/export/NAME.")
    if out.exists() and not force:
        raise OutputExistsError("already exists; nothing was overwritten.", file=out,
                                fix="choose another --out, or pass --force to replace it.")
    if out.exists() and not is_export(out):
        raise ConfigError("this folder exists and is not an export (no export.json): --force "
                          "only replaces earlier exports.", file=out,
                          fix="choose a new folder for --out.")


def export(request: ExportRequest, say: Any = print) -> Path:
    """``qvl export``: merge, write the model card, verify, and only then move the folder into
    place (an earlier export is replaced only after the new one passed, and only with ``force``).

    Raises:
        OutputExistsError, ConfigError: the output folder cannot be used (nothing written).
        ModelError: the base or the adapter cannot be loaded, or the adapter does not fit.
        VerificationError: the merged folder failed; it is kept for inspection (marked
            ``UNVERIFIED.txt``) at ``--out``, or beside an earlier export as ``NAME.unverified``.
    """
    from .config import choose_model
    from .modelcard import write_model_card
    from .outputs import disk_full, ensure_folder, install_folder, is_disk_full, staging_folder
    from .stand_in import is_stand_in
    from .tiny import ensure_model

    out = Path(request.out_dir)
    claim_export_folder(out, [request.adapter, request.model, request.run, request.samples],
                        request.force)
    model_path = ensure_model(choose_model(request.model, "--model"))
    ensure_folder(out.parent, what="export folder")
    work = staging_folder(out, "exporting")
    try:
        reference, facts = merge(request, model_path, work, say)
        info = {"base_model": request.model, "adapter": str(request.adapter),
                "run": str(request.run) if request.run else None,
                "base_is_tiny": is_stand_in(model_path), **facts}
        write_model_card(work, request, info)
        mark(work, info, "not verified yet (the export was interrupted)")
        measured = settle(work, out, info, reference if request.verify else None, facts)
        install_folder(work, out)
    except VerificationError:
        raise
    except BaseException as exc:
        shutil.rmtree(work, ignore_errors=True)  # a crash leaves nothing that looks finished
        if is_disk_full(exc):
            raise disk_full(out.parent, needed=weight_bytes(model_path, merge_dtype(model_path)),
                            fix="free space there (or choose another --out), then run the same "
                                "qvl export again; an earlier export is untouched.") from None
        raise
    say(verdict_line(measured, request.verify))
    if request.gguf:
        from .gguf_export import add_gguf

        add_gguf(out, request, say)
    return out


def mark(folder: Path, info: dict[str, Any], why: str) -> None:
    """Record in the folder that it is not verified, and why (export.json and UNVERIFIED.txt)."""
    from .outputs import write_json, write_text

    write_json(folder / EXPORT_INFO, {**info, "verified": False, "problem": why})
    write_text(folder / UNVERIFIED, f"This folder is not verified: {why}\n"
                                    "Check it with: qvl export --out THIS_FOLDER --check-only\n")


def settle(work: Path, out: Path, info: dict[str, Any], reference: Reference | None,
           facts: dict[str, Any]) -> dict[str, Any]:
    """Verify ``work`` and record the outcome. A pass removes the marker; a skipped or
    files-only check keeps it; a failure moves the folder where the learner can inspect it.

    Raises:
        VerificationError: it failed (says where the failed folder is).
    """
    from .outputs import install_folder, write_json

    try:
        measured = verify(work, reference, facts) if reference is not None else {}
    except VerificationError as exc:
        mark(work, info, exc.message)
        failed = out if not out.exists() else out.with_name(out.name + ".unverified")
        if failed != out:  # an earlier export stays as it was
            shutil.rmtree(failed, ignore_errors=True)
        install_folder(work, failed)
        exc.file = str(failed)
        exc.args = (str(exc),)
        raise
    if reference is None:
        mark(work, info, "exported with --no-verify")
    elif not measured["samples"]:
        mark(work, info, "only the files were checked (no held-out samples: pass --data)")
    else:
        write_json(work / EXPORT_INFO, {**info, "verified": True, "verification": measured})
        (work / UNVERIFIED).unlink(missing_ok=True)
    return measured


def verdict_line(measured: dict[str, Any], verified: bool) -> str:
    """What the export can be trusted for, in one line."""
    if not verified:
        return "NOT verified (--no-verify): the folder is marked UNVERIFIED.txt."
    if not measured.get("samples"):
        return ("Only the files were checked (no held-out samples, pass --data): the folder "
                "stays marked UNVERIFIED.txt.")
    ties = measured.get("answer_ties", 0)
    return (f"Verified in a fresh process on {count(measured['samples'], 'held-out sample')}: "
            "same prompts, visual tokens and greedy answers" +
            (f" ({ties} parted only where two tokens tied within rounding)" if ties else "") +
            f"; logits within {measured['max_logit_difference']:.1e} (allowed "
            f"{measured['tolerance']:.0e}).")


def check_request(folder: str | Path, **given: Any) -> ExportRequest:
    """What ``--check-only`` compares ``folder`` with: what its export.json recorded (base model,
    adapter, run), unless given.

    Raises:
        ConfigError: the folder is not an export, or names no adapter.
    """
    from .outputs import read_json

    folder = Path(folder)
    info = read_json(folder / EXPORT_INFO)
    if info is None:
        raise ConfigError("this is not a folder made by qvl export (no export.json).",
                          file=folder, fix="pass the --out of an export.")
    run = given.get("run") or info.get("run")
    if run and not given.get("model") and not given.get("adapter"):
        request = plan_export(run, out_dir=folder)
    else:
        request = ExportRequest(model=str(given.get("model") or info["base_model"]),
                                adapter=Path(given.get("adapter") or info["adapter"]),
                                out_dir=folder)
    request.samples = Path(given["data"]) if given.get("data") else request.samples
    request.n_verify = given.get("n_verify", request.n_verify)
    return request


def check_export(request: ExportRequest, say: Any = print) -> dict[str, Any]:
    """Verify an existing export against base + adapter again (``qvl export --check-only``), for
    a folder that was copied, edited or exported with ``--no-verify``; the outcome is recorded
    in the folder like an export's.

    Raises:
        VerificationError: it failed (the folder is marked ``UNVERIFIED.txt``).
    """
    from .config import choose_model
    from .model import attention_implementation
    from .outputs import read_json
    from .tiny import ensure_model

    folder = Path(request.out_dir)
    model_path = ensure_model(choose_model(request.model, "--model"))
    device, _ = choose_device(memory_needed(model_path, merge_dtype(model_path)))
    model, processor, lo, hi = load_reference(request, model_path, device)
    reference = observe(model, processor, verification_records(request), lo, hi, base_too=True)
    del model
    free_memory()
    info = {k: v for k, v in (read_json(folder / EXPORT_INFO) or {}).items()
            if k not in ("verification", "problem", "verified")}
    facts = {"device": device, "attention": attention_implementation()}
    try:
        measured = verify(folder, reference, facts)
    except VerificationError as exc:
        mark(folder, info, exc.message)
        raise
    if measured["samples"]:
        from .outputs import write_json

        write_json(folder / EXPORT_INFO, {**info, "verified": True, "verification": measured})
        (folder / UNVERIFIED).unlink(missing_ok=True)
    say(verdict_line(measured, True).replace("Verified", f"{folder}: verified", 1))
    return measured


if __name__ == "__main__":  # the fresh process of observe_in_fresh_process
    _fresh_process_main(sys.argv[1], sys.argv[2])
