"""``python -m benchmarks``: every benchmark, one after the other, each writing its JSON under
``benchmarks/results/``, then the summary table ``benchmarks/results/README.md``.

    python -m benchmarks                 # all (the learning curve alone about 6 minutes on 2 quiet
                                         # cores, lean QLoRA about 2, real_vocab about 1.5)
    python -m benchmarks padding collator   # some
"""

from __future__ import annotations

import sys
import time

from . import collator, doctor_scale, gguf_cost, lean_qlora, learning, padding, real_vocab, training
from .common import RESULTS, write_result
from .summary import write_summary

BENCHMARKS = {"padding": padding.run, "collator": collator.run, "training": training.run,
              "doctor_scale": doctor_scale.run, "learning": learning.run,
              "lean_qlora": lean_qlora.run, "real_vocab": real_vocab.run,
              "gguf_cost": gguf_cost.run}


def main(names: list[str]) -> None:
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        sys.exit(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    from qvl_helpers.llama_run import GGUFSetupError

    for name in names or list(BENCHMARKS):
        start = time.perf_counter()
        try:
            path = write_result(name, BENCHMARKS[name]())
        except GGUFSetupError as exc:  # gguf_cost without the gguf extra
            print(f"{name}: not run ({exc})")
            continue
        print(f"{name}: {time.perf_counter() - start:.0f} s -> {path}")
    print(f"summary: {write_summary(RESULTS)}")


if __name__ == "__main__":
    main(sys.argv[1:])
