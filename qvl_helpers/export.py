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

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .evaluate import plan_for_run
from .inference import greedy_config, load_for_generation
from .outputs import human_size
from .qwen import ImageLimits
from .verify import (
    EXPORT_INFO,
    UNVERIFIED,
    Reference,
    VerificationError,
    observe,
    verdict_line,
    verification_records,
    verify,
)

MAX_SHARD = "2GB"


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


def plan_export(run: str | Path | None = None, *, model: str | None = None,
                adapter: str | Path | None = None, out_dir: str | Path | None = None,
                **settings: Any) -> ExportRequest:
    """An export of a run (its model, adapter and held-out test split) or of a model and an
    adapter given directly. ``out_dir`` defaults to ``<output_dir>/export/<run name>``.

    Raises:
        ConfigError: neither a run nor both a model and an adapter.
    """
    from .config import load_config
    from .runs import Outputs

    if run is not None:
        plan = plan_for_run(run)
        model, adapter = model or plan.model, adapter or plan.adapter
        samples, name = plan.data, Path(run).resolve().name
        default = Outputs.of_run(run).folder("export", name)
    elif adapter is not None:
        model = model or adapter_base_model(adapter)
        samples, name = None, Path(adapter).resolve().parent.name or "export"
        default = Outputs.of(load_config()).folder("export", name)
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


def load_reference(request: ExportRequest, model_path: str, device: str) -> tuple[Any, Any]:
    """Base + adapter in the base's own 16-bit precision, greedy, and the processor the run
    was trained with, carrying its image limits
    (:func:`~qvl_helpers.inference.load_for_generation`)."""
    return load_for_generation(model_path, request.adapter, "none", dtype=merge_dtype(model_path),
                               device_map=device if device == "cuda" else None)


def merge(request: ExportRequest, model_path: str, folder: Path,
          say: Any = print) -> tuple[Reference, dict[str, Any]]:
    """Load base + adapter in 16-bit, observe them on the verification records, merge, and save
    the model, its generation settings and its processor (with the training image limits)."""
    from .model import attention_implementation, free_memory, quiet_loading

    dtype = merge_dtype(model_path)
    needed = memory_needed(model_path, dtype)
    device, why = choose_device(needed)
    ram = available_ram()
    say(f"Merging in {str(dtype).removeprefix('torch.')} on the {device} ({why}); it needs about "
        f"{human_size(needed)}" + (f" ({human_size(ram)} of RAM free)." if ram else "."))
    model, processor = load_reference(request, model_path, device)
    records = verification_records(request.samples, request.n_verify)
    reference = observe(model, processor, records, base_too=True)
    merged = model.merge_and_unload()
    merged.generation_config = greedy_config(processor.tokenizer, temperature=request.temperature)
    with quiet_loading():
        merged.save_pretrained(folder, max_shard_size=MAX_SHARD)
    processor.save_pretrained(folder)  # with the image limits it carries
    del model, merged
    free_memory()  # before the fresh process loads its own copy
    return reference, {"dtype": str(dtype).removeprefix("torch."), "device": device,
                       "attention": attention_implementation(),
                       **ImageLimits.of(processor).to_dict(), "memory_bytes": needed}


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
    from .model import attention_implementation, free_memory
    from .outputs import read_json
    from .tiny import ensure_model

    folder = Path(request.out_dir)
    model_path = ensure_model(choose_model(request.model, "--model"))
    device, _ = choose_device(memory_needed(model_path, merge_dtype(model_path)))
    model, processor = load_reference(request, model_path, device)
    records = verification_records(request.samples, request.n_verify)
    reference = observe(model, processor, records, base_too=True)
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
