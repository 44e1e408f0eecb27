"""Test probes on a training run, through the Trainer's own callback mechanism (the package has
no test-only code): a per-process report that shows every rank worked, and a SIGKILL while a
checkpoint is being saved.

In another process, ``python tests/probes.py [--kill-while-saving STEP] ARGS`` is ``qvl ARGS``
with the probes on every training it starts (``torchrun --nproc_per_node 2 tests/probes.py
train ...`` runs it in each process).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from transformers import TrainerCallback


class RankReport(TrainerCallback):
    """At the end of training, ``RUN/ranks/rank-N.json``: this process's rank, the world size,
    the samples its collator made and the step it ended at."""

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        collator = kwargs["train_dataloader"].collate_fn
        ranks = Path(args.output_dir) / "ranks"
        ranks.mkdir(parents=True, exist_ok=True)
        report = {"rank": args.process_index, "world_size": args.world_size,
                  "samples_collated": collator.samples_seen, "steps": state.global_step}
        (ranks / f"rank-{args.process_index}.json").write_text(json.dumps(report))


class KillWhileSaving(TrainerCallback):
    """SIGKILL this process while checkpoint ``step`` is saved, leaving it as a kill between the
    weights and the optimizer would: the adapter's weights written, the optimizer, scheduler,
    RNG and trainer state not yet, and no completion marker (the course writes it after every
    callback's ``on_save``, which is where this one runs)."""

    #: What the Trainer writes after the weights (transformers' _save_checkpoint order).
    LATER = ("optimizer.pt", "scheduler.pt", "scaler.pt", "trainer_state.json", "rng_state*.pth")

    def __init__(self, step: int) -> None:
        self.step = step

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step != self.step:
            return
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        for pattern in self.LATER:
            for path in checkpoint.glob(pattern):
                path.unlink()
        os.kill(os.getpid(), signal.SIGKILL)


def install(*probes: TrainerCallback) -> None:
    """Every ``qvl_helpers.train.train`` call in this process gets ``probes`` as callbacks."""
    import qvl_helpers.train as module

    original = module.train

    def probed(cfg: Any, **kwargs: Any) -> Any:
        return original(cfg, **{**kwargs, "callbacks": [*kwargs.get("callbacks", ()), *probes]})

    module.train = probed


def main(argv: list[str]) -> int:
    probes: list[TrainerCallback] = [RankReport()]
    if argv[:1] == ["--kill-while-saving"]:
        probes.append(KillWhileSaving(int(argv[1])))
        argv = argv[2:]
    install(*probes)
    from qvl_helpers.cli import main as qvl

    return qvl(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
