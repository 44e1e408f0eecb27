"""Tiny-model training on the CPU, each lean-training switch on and off: steps/s and the
resident memory that training adds. Every variant trains in its own process, in an interleaved
order repeated twice; the best steps/s of the two is kept.

    python -m benchmarks.training            # all variants (about 5 minutes on 2 cores)
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
from typing import Any

import psutil
from transformers import TrainerCallback

from .common import REPO

STEPS = 64  # two epochs of the shapes task's 256 training samples
#: Shared by every variant: the real 3B's usual choice (LoRA on the language model only, so the
#: vision tower is frozen) and every image scaled to 64 visual tokens.
BASE = {"trained": "language", "min_pixels": 50176, "max_pixels": 50176, "max_steps": STEPS,
        "batch_size": 8, "eval_steps": 1000, "save_steps": 1000, "logging_steps": 1000}
VARIANTS: dict[str, dict[str, Any]] = {
    "all lean switches on": {},
    "group_by_length off": {"group_by_length": False},
    "vision_no_grad off": {"vision_no_grad": False},
    "answer_logits off": {"answer_logits": False},
    "gradient_checkpointing off": {"gradient_checkpointing": False},
}


class RssProbe(TrainerCallback):
    """The process's resident memory sampled every 5 ms while training: its growth over the
    value at the first step is what training itself adds (the model and data are loaded)."""

    def __init__(self) -> None:
        self.start = self.peak = 0
        self._stop = threading.Event()

    def _sample(self) -> None:
        process = psutil.Process()
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, process.memory_info().rss)

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = self.peak = psutil.Process().memory_info().rss
        threading.Thread(target=self._sample, daemon=True).start()

    def on_train_end(self, args, state, control, **kwargs):
        self._stop.set()


def train_once(name: str, sets: dict[str, Any], output_dir: str) -> dict[str, Any]:
    """In this process: train the tiny model and report steps/s and the RSS training adds."""
    from qvl_helpers.config import PRESETS_DIR, load_config
    from qvl_helpers.train import train

    cfg = load_config(presets=[PRESETS_DIR / "tiny_cpu.yaml"],
                      sets={**BASE, **sets, "output_dir": output_dir, "run_name": name})
    probe = RssProbe()
    result = train(cfg, verbose=False, callbacks=[probe])
    return {"steps": result.steps, "seconds": round(result.seconds, 2),
            "steps_per_second": round(result.steps / result.seconds, 3),
            "training_rss_mib": round((probe.peak - probe.start) / 2 ** 20, 1),
            "train_loss": result.train_loss}


def run(repeats: int = 2) -> dict[str, Any]:
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        for attempt in range(repeats):
            for i, (name, sets) in enumerate(VARIANTS.items()):
                run_name = f"v{i}-{attempt}"
                out = subprocess.run([sys.executable, "-m", "benchmarks.training", "--one",
                                      json.dumps([run_name, sets, tmp])], cwd=REPO,
                                     capture_output=True, text=True, check=True)
                rows[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    best = {name: max(r, key=lambda x: x["steps_per_second"]) for name, r in rows.items()}
    base = best["all lean switches on"]
    return {"what": f"tiny stand-in, CPU, {STEPS} steps of batch 8 per variant; ratios are "
                    "variant / all-on (steps/s: above 1 is faster; training RSS, the memory "
                    "training adds over the loaded model: above 1 uses more)",
            "note": "the shapes task's samples all have the same length, so group_by_length "
                    "cannot save padding here (padding.json measures it on mixed data); the "
                    "tiny vocabulary (1024) makes answer_logits' saving small, unlike the 3B's "
                    "151936",
            "settings": BASE,
            "variants": {name: {**b, "steps_per_second_ratio": round(
                b["steps_per_second"] / base["steps_per_second"], 3),
                "training_rss_ratio": round(b["training_rss_mib"]
                                            / max(base["training_rss_mib"], 0.1), 3),
                "all_attempts": [r["steps_per_second"] for r in rows[name]]}
                for name, b in best.items()}}


if __name__ == "__main__":
    if sys.argv[1:2] == ["--one"]:
        name, sets, output_dir = json.loads(sys.argv[2])
        print(json.dumps(train_once(name, sets, output_dir)))
    else:
        print(json.dumps(run(), indent=2))
