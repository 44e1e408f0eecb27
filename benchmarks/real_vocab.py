"""Should the tiny stand-in use Qwen's real tokenizer? The shipped stand-in (its own 1,024-token
BPE) against the same tiny model with the real tokenizer and the real 151,936-row embedding
(:func:`qvl_helpers.tiny.build_tiny_model` with ``real_tokenizer=True``), side by side in one
run: the shipped ``tiny_cpu`` preset (16-bit, 5 epochs) on two seeds each, CPU seconds per
training step, the saved model folder's size (every export and merge writes one), and the learning
margins of ``benchmarks/learning.py`` (held-out exact match of
tuned >= 0.9, base < 0.1, blank images at most the most-common-answer rate + 0.1).

    python -m benchmarks.real_vocab      # about 1.5 minutes on 2 quiet cores
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
EPOCHS = 5


def run() -> dict[str, Any]:
    """Both stand-ins, each seed in its own process."""
    from qvl_helpers.tiny import build_tiny_model

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        env = _course_env(Path(tmp))
        real = str(build_tiny_model(Path(tmp) / "real-vocab", real_tokenizer=True))
        shipped = build_tiny_model(Path(tmp) / "shipped")
        folder_bytes = {name: sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
                        for name, path in (("shipped", shipped), ("real tokenizer", real))}
        for seed in SEEDS:
            for variant, model in (("shipped", None), ("real tokenizer", real)):
                out = subprocess.run(
                    [sys.executable, "-m", "benchmarks.real_vocab", "--one",
                     json.dumps([seed, model, f"{variant.replace(' ', '-')}-s{seed}", tmp])],
                    cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
                if out.returncode != 0:
                    raise RuntimeError(f"{variant} seed {seed} failed (exit {out.returncode}):\n"
                                       f"{out.stderr[-3000:]}")
                row = json.loads(out.stdout.strip().splitlines()[-1])
                row.update(variant=variant, keeps_margins=keeps_margins(row),
                           seconds_per_step=round(row["train_seconds"] / row["steps"], 4))
                print(json.dumps(row), file=sys.stderr)
                rows.append(row)
    per_step = {v: round(sum(r["seconds_per_step"] for r in rows if r["variant"] == v)
                         / len(SEEDS), 4) for v in ("shipped", "real tokenizer")}
    return {"epochs": EPOCHS, "rows": rows, "seconds_per_step": per_step,
            "model_folder_bytes": folder_bytes,
            "real_over_shipped": round(per_step["real tokenizer"] / per_step["shipped"], 3),
            "real_keeps_margins": all(r["keeps_margins"] for r in rows
                                      if r["variant"] == "real tokenizer")}


if __name__ == "__main__":
    if sys.argv[1:2] == ["--one"]:
        from .learning import train_and_score

        seed, model, name, tmp = json.loads(sys.argv[2])
        print(json.dumps(train_and_score(EPOCHS, seed, "none", tmp, model=model, name=name)))
    else:
        from .common import write_result

        print(write_result("real_vocab", run()))
