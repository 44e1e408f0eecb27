"""Proving that an exported model folder behaves like base + adapter (``qvl export``'s check).

Before merging, :func:`observe` records what base + adapter does on held-out samples: the
prompt and visual token counts its processor renders, the logits at the answer positions (also
with the adapter off), and the greedy answers with each step's margins. :func:`verify` then loads
the merged folder with the Auto classes in a fresh Python process, the way a user will, observes
it the same way, and compares: the same prompts and visual tokens, logits within a tolerance per
precision, and the same greedy answers (where two first differ, the two tokens must have tied
within that tolerance in both models). The GGUF export compares llama.cpp's run of its files with
the same observations (:mod:`~qvl_helpers.gguf_compare`).
"""

from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import processes
from .data.records import Record, answers_of
from .errors import QVLError, count
from .inference import answer_budget, greedy_config

EXPORT_INFO = "export.json"   # what was merged from what, and the verification result
UNVERIFIED = "UNVERIFIED.txt"  # present when the last verification failed
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


def verification_records(samples: Path | None, n_verify: int) -> list[Record]:
    """The held-out records the verification answers (the first ``n_verify`` of ``samples``)."""
    from .data import load_records

    if samples is None or n_verify == 0:
        return []
    return load_records(samples)[:n_verify]


def _answer_logits(model: Any, batch: dict[str, Any], device: Any) -> Any:
    """Logits at the positions that predict the reference answer (where training has labels):
    the part of the output the fine-tune is about, and a small fraction of the sequence."""
    inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
    predicts = batch["labels"][0, 1:] != -100
    return model(**inputs).logits[0, :-1][predicts.to(device)].float().cpu()


def observe(model: Any, processor: Any, records: list[Record], *, base_too: bool = False,
            own_settings: bool = False) -> Reference:
    """Prompt ids, visual grids, logits at the answer positions (``base_too``: also with the
    adapter switched off) and greedy answers with each step's top-1/top-2 margin, with images
    resized into the processor's limits. ``own_settings`` generates with the model's saved
    generation config (greedy enforced)."""
    import torch

    from .collate import make_collator

    seen = Reference(records)
    if not records:  # nothing to observe (no held-out samples): no generation settings either
        return seen
    collate = make_collator(processor, "train")
    generate = make_collator(processor, "generate")
    device = next(model.parameters()).device
    budget = answer_budget(processor.tokenizer, [answers_of(r)[-1] for r in records])
    settings = {"max_new_tokens": budget, "output_scores": True, "return_dict_in_generate": True,
                "do_sample": False}
    if not own_settings:
        config = greedy_config(processor.tokenizer)
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
        done = processes.run([sys.executable, "-m", "qvl_helpers.verify", str(folder), tmp],
                             capture_output=True, text=True)  # ends if this process is stopped
        if done.returncode != 0:
            raise VerificationError(f"loading and running the merged folder in a fresh process "
                                    f"failed: {processes.stderr_tail(done)}", file=folder,
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
    seen = observe(model, processor, records, own_settings=True)  # its own generation_config.json
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


if __name__ == "__main__":  # the fresh process of observe_in_fresh_process
    _fresh_process_main(sys.argv[1], sys.argv[2])
