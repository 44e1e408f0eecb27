"""Lean QLoRA: the frozen parts that 4-bit does not quantize kept in 16 bits (the course's
default) against PEFT's float32 upcast (``frozen_fp32: true``), side by side in one run.

* **memory** (exact, no GPU needed): the real Qwen2.5-VL-3B's weights in training memory and the
  estimated peak under every GPU preset, both ways (:func:`qvl_helpers.memory.preset_estimates`).
* **numerics** (the tiny stand-in on this CPU): the shipped ``tiny_cpu`` preset on the 4-bit
  path with bf16 mixed precision (what a bf16 GPU runs), per seed (two) once lean and
  :data:`REPEATS` times upcast. CPU training is not bit-reproducible and small differences grow
  over 160 steps, so the upcast runs' distances from one another are the noise floor that the
  lean run's distances from them are read against. Each run is scored as
  ``benchmarks/learning.py`` scores it (held-out exact match of base, prompt, tuned, tuned with
  blank images).

Per pair of runs: the loss at step 1 (one forward pass of the same initial weights, before any
update: the frozen dtype's own effect), the mean absolute difference of the logged training
losses, the final validation loss and the tuned model's held-out answers. The two ways agree
when the step-1 loss is within :data:`FIRST_LOSS_TOLERANCE` and, on average over the upcast
runs, the lean run is no further from them than :data:`NOISE_FACTOR` times their average
distance from one another (curve and final validation loss). The tiny task saturates (nearly
every held-out answer is right), so the answers show that both ways learn, not that they differ
little. fp16 is not trained here (the Trainer has no fp16 autocast on a CPU); in fp16 the lean
path keeps the language model's stream in float32 as the upcast does (``tests/test_lean.py``).

    python -m benchmarks.lean_qlora      # about 3 minutes on 2 quiet cores
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from .common import REPO
from .learning import _course_env, keeps_margins

SEEDS = (0, 1)
#: Upcast runs per seed (their pairwise distances are the noise floor).
REPEATS = 3
#: Largest relative difference of the step-1 loss between the two ways (same weights, no update).
FIRST_LOSS_TOLERANCE = 0.01
#: The lean run may be this many times further from the upcast runs than they are from one
#: another, on average (the loss curve, and the final validation loss).
NOISE_FACTOR = 1.5
DISTANCES = ("mean_loss_difference", "final_eval_loss_difference")


def memory_rows() -> list[dict[str, Any]]:
    """Per GPU preset: the 3B's weights and estimated peak, lean and upcast."""
    from dataclasses import replace

    from qvl_helpers import memory
    from qvl_helpers.tiny import real_3b_config

    config, rows = real_3b_config(), []
    for preset, est in memory.preset_estimates().items():
        upcast = memory.estimate(config, replace(est.setup, frozen_fp32=True), est.work,
                                 model=est.model)
        lean = memory.estimate(config, replace(est.setup, frozen_fp32=False), est.work,
                               model=est.model)
        rows.append({"preset": preset, "quantization": est.setup.quantization,
                     "workload": f"{est.work.batch_size} x {est.work.padded_length}",
                     "weights_lean": lean.parts["weights"],
                     "weights_upcast": upcast.parts["weights"],
                     "peak_lean": lean.peak, "peak_upcast": upcast.peak,
                     "needed_lean": lean.needed, "needed_upcast": upcast.needed,
                     "peak_ratio": round(lean.peak / upcast.peak, 3),
                     "verdicts_lean": {g.name: lean.fits(g) for g in memory.GPUS},
                     "verdicts_upcast": {g.name: upcast.fits(g) for g in memory.GPUS}})
    return rows


def train_and_score(seed: int, frozen_fp32: bool, name: str, output_dir: str) -> dict[str, Any]:
    """In this process: the tiny preset, 4-bit, bf16 mixed precision, trained and scored."""
    from qvl_helpers.config import PRESETS_DIR, load_config
    from qvl_helpers.evaluate import evaluate_run, read_predictions
    from qvl_helpers.train import train

    cfg = load_config(presets=[PRESETS_DIR / "tiny_cpu.yaml"],
                      sets={"seed": seed, "quantization": "4bit", "dtype": "bf16",
                            "frozen_fp32": frozen_fp32, "output_dir": output_dir,
                            "run_name": name})
    seen: dict[str, str] = {}

    class Probe:  # a 4-bit projection's output dtype: its input's, the residual stream's
        def __call__(self, module: Any, args: Any, out: Any) -> None:
            seen.setdefault("language_stream", str(out.dtype).removeprefix("torch."))

    import qvl_helpers.train as course_train

    prepare = course_train.prepare_model

    def probed(*args: Any, **kwargs: Any) -> Any:
        model = prepare(*args, **kwargs)
        frozen = {str(p.dtype).removeprefix("torch.") for p in model.parameters()
                  if not p.requires_grad and p.is_floating_point()}
        seen["frozen_dtypes"] = ",".join(sorted(frozen))
        layer = next(m for n, m in model.named_modules() if n.endswith("layers.0.mlp.up_proj"))
        layer.register_forward_hook(Probe())
        return model

    course_train.prepare_model = probed
    result = train(cfg, verbose=False)
    eval_dir = Path(output_dir) / "eval" / name
    report = evaluate_run(result.run_dir, eval_dir, systems="base,prompt,tuned",
                          image_ablation="blank")
    score = {k: s["metrics"]["exact_match"]["value"] for k, s in report["systems"].items()}
    log = [json.loads(line) for line in
           (result.run_dir / "train_log.jsonl").read_text(encoding="utf-8").splitlines()]
    return {"seed": seed, "frozen_fp32": frozen_fp32, "name": name, "steps": result.steps,
            "train_seconds": round(result.seconds, 1), **seen,
            "tuned": score["tuned"], "base": score["base"], "prompt": score["prompt"],
            "tuned_blank": score["tuned-blank"], "majority": report["most_common_answer_rate"],
            "n": report["n"], "final_train_loss": result.train_loss,
            "losses": {str(r["step"]): r["loss"] for r in log if "loss" in r},
            "final_eval_loss": [r["eval_loss"] for r in log if "eval_loss" in r][-1],
            "answers": [p["prediction"] for p in read_predictions(eval_dir, "tuned")]}


def compare(row: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    """How far ``row``'s losses and tuned answers are from ``reference``'s."""
    steps = sorted(set(row["losses"]) & set(reference["losses"]), key=int)
    gaps = [abs(row["losses"][s] - reference["losses"][s]) for s in steps]
    same = sum(a == b for a, b in zip(row["answers"], reference["answers"], strict=True))
    first = steps[0]
    return {"against": reference["name"], "steps_compared": len(steps),
            "first_loss_relative_difference": round(
                abs(row["losses"][first] / reference["losses"][first] - 1), 5),
            "mean_loss_difference": round(sum(gaps) / len(gaps), 4),
            "max_loss_difference": round(max(gaps), 4),
            "final_eval_loss_difference": round(
                abs(row["final_eval_loss"] - reference["final_eval_loss"]), 4),
            "answers_agree": round(same / len(row["answers"]), 4)}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def seed_summary(lean: dict[str, Any], upcast: list[dict[str, Any]]) -> dict[str, Any]:
    """The lean run against each upcast run, and the upcast runs against one another."""
    from itertools import combinations

    to_lean = [compare(lean, u) for u in upcast]
    noise = [compare(a, b) for a, b in combinations(upcast, 2)]
    summary = {"seed": lean["seed"], "lean_vs_upcast": to_lean, "upcast_vs_upcast": noise,
               "first_loss_relative_difference": max(c["first_loss_relative_difference"]
                                                     for c in to_lean)}
    for key in DISTANCES:
        summary[key] = {"lean": round(_mean([c[key] for c in to_lean]), 4),
                        "noise": round(_mean([c[key] for c in noise]), 4)}
    summary["agrees"] = (summary["first_loss_relative_difference"] <= FIRST_LOSS_TOLERANCE
                         and all(summary[k]["lean"] <= NOISE_FACTOR * summary[k]["noise"]
                                 for k in DISTANCES))
    return summary


def run() -> dict[str, Any]:
    """The memory table, then every training variant, each in its own process."""
    variants = [(seed, False, f"s{seed}-lean") for seed in SEEDS]
    variants += [(seed, True, f"s{seed}-upcast-{i}") for seed in SEEDS
                 for i in range(1, REPEATS + 1)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        env = _course_env(Path(tmp))
        for seed, fp32, name in variants:
            out = subprocess.run([sys.executable, "-m", "benchmarks.lean_qlora", "--one",
                                  json.dumps([seed, fp32, name, tmp])], cwd=REPO, env=env,
                                 capture_output=True, text=True, timeout=1800)
            if out.returncode != 0:
                raise RuntimeError(f"{name} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
            row = json.loads(out.stdout.strip().splitlines()[-1])
            row["keeps_margins"] = keeps_margins(row)
            print(json.dumps({k: v for k, v in row.items() if k not in ("losses", "answers")}),
                  file=sys.stderr)
            rows.append(row)
    seeds = [seed_summary(next(r for r in rows if r["name"] == f"s{seed}-lean"),
                          [r for r in rows if r["seed"] == seed and r["frozen_fp32"]])
             for seed in SEEDS]
    lean = [r for r in rows if not r["frozen_fp32"]]
    upcast = [r for r in rows if r["frozen_fp32"]]
    return {"memory": memory_rows(), "rows": rows, "seeds": seeds,
            "mean_train_seconds": {"lean": round(_mean([r["train_seconds"] for r in lean]), 1),
                                   "upcast": round(_mean([r["train_seconds"] for r in upcast]), 1)},
            "tolerance": {"first_loss_relative": FIRST_LOSS_TOLERANCE,
                          "noise_factor": NOISE_FACTOR, "repeats": REPEATS},
            "agree": all(s["agrees"] for s in seeds) and all(r["keeps_margins"] for r in rows)}


if __name__ == "__main__":
    if sys.argv[1:2] == ["--one"]:
        seed, fp32, name, tmp = json.loads(sys.argv[2])
        print(json.dumps(train_and_score(seed, fp32, name, tmp)))
    else:
        from .common import write_result

        print(write_result("lean_qlora", run()))
