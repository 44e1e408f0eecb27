"""How long the tiny stand-in must train to learn the bundled shapes task: the learning curve
of the shipped `tiny_cpu` preset over shorter schedules (epochs), each trained and evaluated
like `qvl train` + `qvl eval --run --compare base,prompt,tuned --image-ablation blank` (which,
for a 4-bit run too, generates with the 16-bit base that `qvl export` merges into), on two
training seeds and on both the 16-bit and the 4-bit path. The seed also draws the held-out split
(its most-common-answer rate is 0.281 with seed 0, 0.25 with seed 1), so two seeds vary the data
as well as the training.

The margins the course relies on (the stand-in is a measuring instrument): exact match of the
tuned model >= 0.9 on the held-out split, the base model < 0.1, and the tuned model with blank
images at most the most-common-answer rate + 0.1 (it must need the image). The shortest
schedule that keeps all three with room on every seed and path is the preset's `num_epochs`.

    python -m benchmarks.learning            # all 24 variants (about 6 minutes on 2 quiet cores)
    python -m benchmarks.learning --quick    # 16-bit only, one seed -> results/learning_quick.json

Each variant runs in its own process on the tiny model and the bundled shapes task, whatever the
course.yaml and QVL_* variables of this machine say.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from itertools import pairwise
from pathlib import Path
from typing import Any

from .common import REPO

EPOCHS = (2, 3, 4, 5, 6, 8)
SEEDS = (0, 1)
QUANTIZATIONS = ("none", "4bit")
#: The margins the course relies on (tests/test_train.py asserts them, and also that the tuned
#: model is ahead of the base and the prompted base by more than the interval of the difference).
TUNED_AT_LEAST, BASE_BELOW, BLANK_ABOVE_MAJORITY = 0.9, 0.1, 0.1


def train_and_score(epochs: float, seed: int, quantization: str, output_dir: str,
                    model: str | None = None, name: str | None = None) -> dict[str, Any]:
    """In this process: train the preset for ``epochs`` and evaluate it as the tests do
    (``model``: another stand-in folder than the course.yaml's)."""
    from qvl_helpers.config import PRESETS_DIR, load_config
    from qvl_helpers.evaluate import evaluate_run
    from qvl_helpers.train import train

    name = name or f"e{epochs}-s{seed}-{quantization}"
    sets: dict[str, Any] = {"num_epochs": epochs, "seed": seed, "quantization": quantization,
                            "output_dir": output_dir, "run_name": name}
    if model is not None:
        sets["model"] = model
    cfg = load_config(presets=[PRESETS_DIR / "tiny_cpu.yaml"], sets=sets)
    result = train(cfg, verbose=False)
    report = evaluate_run(result.run_dir, systems="base,prompt,tuned", image_ablation="blank")
    score = {k: s["metrics"]["exact_match"]["value"] for k, s in report["systems"].items()}
    return {"epochs": epochs, "seed": seed, "quantization": quantization,
            "steps": result.steps, "train_seconds": round(result.seconds, 1),
            "tuned": score["tuned"], "base": score["base"], "prompt": score["prompt"],
            "tuned_blank": score["tuned-blank"], "majority": report["most_common_answer_rate"],
            "n": report["n"], "final_train_loss": result.train_loss}


def keeps_margins(row: dict[str, Any]) -> bool:
    """All three margins hold for one trained variant."""
    return (row["tuned"] >= TUNED_AT_LEAST and row["base"] < BASE_BELOW
            and row["tuned_blank"] <= row["majority"] + BLANK_ABOVE_MAJORITY)


def _course_env(folder: Path) -> dict[str, str]:
    """This environment without QVL_* settings, pointed at a course.yaml of the tiny model on
    the bundled shapes task."""
    course = folder / "course.yaml"
    course.write_text(f"model: tiny\ndata: {REPO / 'data_samples' / 'shapes' / 'shapes.jsonl'}\n",
                      encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("QVL_")}
    return {**env, "QVL_CONFIG": str(course), "HF_HUB_OFFLINE": "1"}


def run(quick: bool = False) -> dict[str, Any]:
    """Every (quantization, seed, epochs) variant, each in its own process."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        env = _course_env(Path(tmp))
        for quantization in QUANTIZATIONS[:1] if quick else QUANTIZATIONS:
            for seed in SEEDS[:1] if quick else SEEDS:
                for epochs in EPOCHS:
                    out = subprocess.run(
                        [sys.executable, "-m", "benchmarks.learning", "--one",
                         json.dumps([epochs, seed, quantization, tmp])], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=1800)
                    if out.returncode != 0:
                        raise RuntimeError(f"e{epochs} seed {seed} {quantization} failed "
                                           f"(exit {out.returncode}):\n{out.stderr[-3000:]}")
                    row = json.loads(out.stdout.strip().splitlines()[-1])
                    row["keeps_margins"] = keeps_margins(row)
                    print(json.dumps(row), file=sys.stderr)
                    rows.append(row)
    holding = [e for e in EPOCHS
               if all(r["keeps_margins"] for r in rows if r["epochs"] == e)]
    # "With room": the shortest schedule whose next shorter one measured also keeps them.
    with_room = next((e for shorter, e in pairwise(EPOCHS)
                      if e in holding and shorter in holding), None)
    return {"quick": quick,
            "margins": {"tuned_at_least": TUNED_AT_LEAST, "base_below": BASE_BELOW,
                        "blank_above_majority_at_most": BLANK_ABOVE_MAJORITY},
            "rows": rows, "shortest_keeping_margins": holding[0] if holding else None,
            "shortest_with_room": with_room}


if __name__ == "__main__":
    if sys.argv[1:2] == ["--one"]:
        epochs, seed, quantization, tmp = json.loads(sys.argv[2])
        print(json.dumps(train_and_score(epochs, seed, quantization, tmp)))
    else:
        from .common import write_result

        quick = "--quick" in sys.argv
        print(write_result("learning_quick" if quick else "learning", run(quick=quick)))
