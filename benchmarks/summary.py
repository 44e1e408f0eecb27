"""The latest results as one Markdown table per benchmark: ``benchmarks/results/README.md``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _load(folder: Path, name: str) -> dict[str, Any] | None:
    path = folder / f"{name}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _header(result: dict[str, Any]) -> str:
    v = result.get("versions", {})
    return (f"*{result.get('date', '?')}, commit {result.get('commit')}, {result.get('cpus')} "
            f"CPUs, torch {v.get('torch')}, transformers {v.get('transformers')}*")


def padding_table(r: dict[str, Any]) -> list[str]:
    lines = ["## Padding efficiency (useful / processed tokens)", "", _header(r), "",
             "| data | batch | length-grouped | random | ratio |", "|---|---:|---:|---:|---:|"]
    for name, data in r["sets"].items():
        for row in data["results"]:
            lines.append(f"| {name} | {row['batch_size']} | {row['grouped']:.1%} | "
                         f"{row['random']:.1%} | {row['ratio']:.2f}x |")
    return lines


def collator_table(r: dict[str, Any]) -> list[str]:
    lines = ["## Collator throughput (samples/s, receipts, batch "
             f"{r['batch_size']})", "", _header(r), "", "| collator | samples/s |", "|---|---:|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in r["samples_per_second"].items()]
    lines += [f"| TRL | {r['trl']} |", "",
              f"Course / reference: **{r['ratio_course_to_reference']:.2f}x**"]
    return lines


def training_table(r: dict[str, Any]) -> list[str]:
    lines = ["## Lean-training switches (tiny stand-in, CPU)", "", _header(r), "",
             "| variant | steps/s | vs all on | RSS added by training | vs all on |",
             "|---|---:|---:|---:|---:|"]
    for name, row in r["variants"].items():
        lines.append(f"| {name} | {row['steps_per_second']:.2f} | "
                     f"{row['steps_per_second_ratio']:.2f}x | {row['training_rss_mib']:.0f} MiB | "
                     f"{row['training_rss_ratio']:.2f}x |")
    return lines + ["", r.get("note", "")]


def doctor_table(r: dict[str, Any]) -> list[str]:
    """Before and after side by side per size, then after / before (older results: one row per
    size)."""
    if "after_to_before" not in r:
        lines = ["## Data doctor at scale", "", _header(r), "",
                 "| records | seconds | records/s | peak RSS |", "|---:|---:|---:|---:|"]
        return lines + [f"| {row['records']:,} | {row['seconds']} | {row['records_per_second']:,} "
                        f"| {row['peak_rss_mib']} MiB |" for row in r["runs"]]
    imports = r["imports"]
    lines = ["## Data doctor at scale (before / after)", "", _header(r), "",
             f"Before: {r['before']}. After: {r['after']}.", "",
             "| records | code | seconds | records/s | peak RSS | imports torch / transformers |",
             "|---:|---|---:|---:|---:|---|"]
    for row in r["runs"]:
        seen = imports[row["code"]]
        lines.append(f"| {row['records']:,} | {row['code']} | {row['seconds']} | "
                     f"{row['records_per_second']:,} | {row['peak_rss_mib']} MiB | "
                     f"{'yes' if seen['imports_torch'] else 'no'} / "
                     f"{'yes' if seen['imports_transformers'] else 'no'} |")
    lines += ["", "| records | rate, after / before | peak RSS, after / before |",
              "|---:|---:|---:|"]
    lines += [f"| {int(n):,} | {v['records_per_second']:.2f}x | {v['peak_rss']:.2f}x |"
              for n, v in r["after_to_before"].items()]
    return lines + ["", r.get("note", "")]


def learning_table(r: dict[str, Any]) -> list[str]:
    m = r["margins"]
    lines = ["## Learning curve of the tiny preset (held-out exact match)", "", _header(r), "",
             f"Margins: tuned >= {m['tuned_at_least']}, base < {m['base_below']}, blank images "
             f"<= most-common-answer rate + {m['blank_above_majority_at_most']}.", "",
             "| path | seed | epochs | steps | train s | tuned | base | tuned, blank images | "
             "most common + margin | margins |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for row in r["rows"]:
        limit = row["majority"] + m["blank_above_majority_at_most"]
        lines.append(f"| {row['quantization']} | {row['seed']} | {row['epochs']} | {row['steps']} | "
                     f"{row['train_seconds']} | {row['tuned']:.3f} | {row['base']:.3f} | "
                     f"{row['tuned_blank']:.3f} | {limit:.3f} | "
                     f"{'kept' if row['keeps_margins'] else 'missed'} |")
    return lines + ["", f"Shortest schedule keeping every margin on every path and seed: "
                        f"{r['shortest_keeping_margins']} epochs; with the next shorter one also keeping "
                        f"them (room): **{r['shortest_with_room']} epochs**."]


def lean_qlora_table(r: dict[str, Any]) -> list[str]:
    def gib(n: int) -> str:
        return f"{n / 1024 ** 3:.2f} GiB"

    lines = ["## Lean QLoRA: frozen parts in 16 bits vs PEFT's float32 upcast", "", _header(r), "",
             "Real Qwen2.5-VL-3B (exact weights; peak = the estimate for one typical sample):", "",
             "| preset | quantization | weights lean | weights upcast | peak lean | peak upcast | "
             "peak ratio |", "|---|---|---:|---:|---:|---:|---:|"]
    for m in r["memory"]:
        lines.append(f"| {m['preset']} | {m['quantization']} | {gib(m['weights_lean'])} | "
                     f"{gib(m['weights_upcast'])} | {gib(m['peak_lean'])} | "
                     f"{gib(m['peak_upcast'])} | {m['peak_ratio']:.2f}x |")
    t = r["tolerance"]
    lines += ["", "Tiny stand-in, 4-bit, bf16 mixed precision on the CPU, the `tiny_cpu` preset; "
              "the upcast way is run several times per seed (CPU training is not "
              "bit-reproducible):", "",
              "| run | frozen dtype | language stream | train s | final val loss | tuned | base | "
              "tuned, blank | margins |", "|---|---|---|---:|---:|---:|---:|---:|---|"]
    for row in r["rows"]:
        lines.append(f"| {row['name']} | {row['frozen_dtypes']} | {row['language_stream']} | "
                     f"{row['train_seconds']} | {row['final_eval_loss']:.4f} | {row['tuned']:.3f} | "
                     f"{row['base']:.3f} | {row['tuned_blank']:.3f} | "
                     f"{'kept' if row['keeps_margins'] else 'missed'} |")
    lines += ["", f"Per seed, the lean run against each of the {t['repeats']} upcast runs, and the "
              "upcast runs against one another (the noise floor), averaged. Agreement: step-1 loss "
              f"(same weights, no update yet) within {t['first_loss_relative']:.0%}, and the lean "
              f"run at most {t['noise_factor']}x as far from the upcast runs as they are from one "
              "another.", "",
              "| seed | step-1 loss, largest | mean loss diff over the curve: lean / noise | "
              "final val loss diff: lean / noise | agrees |", "|---:|---:|---:|---:|---|"]
    for sd in r["seeds"]:
        curve, final = sd["mean_loss_difference"], sd["final_eval_loss_difference"]
        lines.append(f"| {sd['seed']} | {sd['first_loss_relative_difference']:.2%} | "
                     f"{curve['lean']:.4f} / {curve['noise']:.4f} | "
                     f"{final['lean']:.4f} / {final['noise']:.4f} | "
                     f"{'yes' if sd['agrees'] else 'no'} |")
    secs = r["mean_train_seconds"]
    agree = "yes" if r["agree"] else "no"
    return lines + ["", f"Mean training time: lean {secs['lean']} s, upcast {secs['upcast']} s.",
                    "", f"bf16: the two ways agree and every run keeps the margins: **{agree}**. "
                        "fp16 is not trained on the CPU (see `benchmarks/lean_qlora.py`)."]


def real_vocab_table(r: dict[str, Any]) -> list[str]:
    lines = ["## The tiny stand-in with Qwen's real tokenizer (151,936-row embedding)", "",
             _header(r), "", f"The `tiny_cpu` preset, 16-bit, {r['epochs']} epochs; margins as in "
             "the learning curve above.", "",
             "| stand-in | seed | steps | s per step | tuned | base | tuned, blank | margins |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for row in r["rows"]:
        lines.append(f"| {row['variant']} | {row['seed']} | {row['steps']} | "
                     f"{row['seconds_per_step']:.4f} | {row['tuned']:.3f} | {row['base']:.3f} | "
                     f"{row['tuned_blank']:.3f} | {'kept' if row['keeps_margins'] else 'missed'} |")
    sizes = r.get("model_folder_bytes", {})
    lines += ["", "Saved model folder: " + ", ".join(f"{k} {v / 2 ** 20:.1f} MiB"
                                                    for k, v in sizes.items()) + "."] if sizes else []
    return lines + ["", f"Time per step, real tokenizer / shipped: **{r['real_over_shipped']:.2f}x**; "
                        f"the real-tokenizer stand-in keeps every margin: "
                        f"**{'yes' if r['real_keeps_margins'] else 'no'}**."]


def gguf_cost_table(r: dict[str, Any]) -> list[str]:
    plain, gguf = r["export"], r["export_with_gguf"]
    lines = ["## What `qvl export --gguf` adds (tiny stand-in, CPU)", "", _header(r), "",
             "One training of `tiny_cpu`, then the same run exported without and with "
             "`--gguf --quantize Q8_0 --quantize Q4_K_M` (each in its own process; CPU seconds "
             "include the fresh processes the verifications start).", "",
             "| command | wall s | CPU s |", "|---|---:|---:|",
             f"| qvl export | {plain['wall_seconds']} | {plain['cpu_seconds']} |",
             f"| qvl export --gguf (+ Q8_0, Q4_K_M) | {gguf['wall_seconds']} | "
             f"{gguf['cpu_seconds']} |", "",
             f"CPU time with GGUF / without: **{r['gguf_over_export_cpu']:.2f}x**. Files: "
             + ", ".join(f"{k} {v / 2 ** 10:.0f} KiB" for k, v in r["files"].items())
             + "; same greedy answers as the merged model: "
             + ", ".join(f"{k} {v:.0%}" for k, v in r["agreement"].items())
             + f" (verified: {'yes' if r['verified'] else 'no'})."]
    if "build" in r:
        b = r["build"]
        lines += ["", f"The gguf extra's one-off build (`pip wheel --no-cache-dir {b['package']}`, "
                      f"compiling llama.cpp): {b['wall_seconds'] / 60:.1f} minutes wall, "
                      f"{b['cpu_seconds'] / 60:.1f} minutes of CPU."]
    return lines


TABLES = {"padding": padding_table, "collator": collator_table, "training": training_table,
          "doctor_scale": doctor_table, "learning": learning_table, "lean_qlora": lean_qlora_table,
          "real_vocab": real_vocab_table, "gguf_cost": gguf_cost_table}


def write_summary(folder: Path) -> Path:
    lines = ["# Benchmark results", "",
             "Written by `python -m benchmarks` from the JSON files next to this one; read the "
             "ratios (variants run side by side in one run on a shared, noisy machine).", ""]
    for name, table in TABLES.items():
        result = _load(folder, name)
        if result is not None:
            lines += table(result) + [""]
    gpu = sorted(folder.glob("gpu_check*.json"))
    lines.append("## GPU check" if gpu else "## GPU check: not run yet (no GPU lent so far)")
    lines += [f"- [{p.name}]({p.name})" for p in gpu]
    path = folder / "README.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
