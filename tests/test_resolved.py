"""The settings' auto choices and the step count are made in one place (qvl_helpers.resolved),
and the dry run, the memory estimate and `qvl env` report the same choices training makes."""

from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace

import pytest

from qvl_helpers import memory
from qvl_helpers.config import PRESETS_DIR, load_config
from qvl_helpers.env import GPU_PRESETS, GpuInfo, preset_for, recommend
from qvl_helpers.resolved import optimizer_steps, resolve

MACHINES = {"cpu": dict(cuda=False, bf16_supported=False),
            "t4": dict(cuda=True, bf16_supported=False),
            "a100": dict(cuda=True, bf16_supported=True)}


def trainer_steps(records: int, batch: int, accum: int, epochs: float, world: int) -> int:
    """transformers' own count (``Trainer.set_initial_training_values``) for a dataloader of
    ``ceil(records / (batch x world))`` batches per process, as accelerate shards it."""
    from transformers import Trainer

    loader = [None] * -(-records // (batch * world))
    owner = SimpleNamespace(get_total_train_batch_size=lambda args: batch * accum * world,
                            get_sp_size=lambda: 1, num_examples=lambda loader: records)
    args = SimpleNamespace(max_steps=-1, gradient_accumulation_steps=accum,
                           num_train_epochs=epochs)
    return Trainer.set_initial_training_values(owner, args, loader)[-1]


def test_the_step_count_is_the_trainer_s_over_many_cases() -> None:
    rng = random.Random(0)
    for _ in range(2000):
        records, batch, accum = rng.randint(1, 500), rng.randint(1, 8), rng.randint(1, 16)
        epochs, world = rng.choice([1, 2, 3, 5, 0.5, 1.5, 2.25]), rng.choice([1, 2, 4])
        cfg = SimpleNamespace(max_steps=0, batch_size=batch, grad_accum=accum, num_epochs=epochs)
        case = (records, batch, accum, epochs, world)
        assert optimizer_steps(cfg, records, world) == trainer_steps(*case), case
    fixed = SimpleNamespace(max_steps=37, batch_size=2, grad_accum=4, num_epochs=3)
    assert optimizer_steps(fixed, 1000, 2) == 37


@pytest.mark.parametrize("preset", sorted(p.stem for p in PRESETS_DIR.glob("*.yaml")))
@pytest.mark.parametrize("machine", sorted(MACHINES))
def test_memory_estimate_and_training_make_the_same_choices(preset: str, machine: str) -> None:
    cfg = load_config(presets=[PRESETS_DIR / f"{preset}.yaml"])
    facts = MACHINES[machine]
    resolved = resolve(cfg, **facts, world_size=2, train_records=100)
    setup = memory.Setup.from_config(cfg, gpu=facts["cuda"],
                                     bf16_supported=facts["bf16_supported"])
    assert (setup.quantization, setup.compute_name) == (resolved.quantization, resolved.dtype)
    assert memory.Setup.from_resolved(cfg, resolved) == setup
    assert resolved.samples_per_step == cfg.batch_size * cfg.grad_accum * 2
    assert f"about {resolved.steps} " in "\n".join(resolved.lines())


@pytest.mark.parametrize("gpus", [[], [GpuInfo("Tesla T4", 14.7, (7, 5))],
                                  [GpuInfo("NVIDIA L4", 22.0, (8, 9))],
                                  [GpuInfo("NVIDIA A100-SXM4-40GB", 39.4, (8, 0))],
                                  [GpuInfo("NVIDIA H100", 79.1, (9, 0))] * 2])
def test_qvl_env_recommends_what_training_would_resolve(gpus: list[GpuInfo]) -> None:
    advice = recommend(gpus)
    cfg = load_config(presets=[PRESETS_DIR / f"{advice.preset}.yaml"])
    resolved = resolve(cfg, cuda=bool(gpus), bf16_supported=bool(gpus) and gpus[0].bf16)
    assert advice.dtype == resolved.torch_dtype_name
    assert advice.load_in_4bit == (resolved.quantization == "4bit")


def test_each_gpu_preset_is_chosen_for_its_own_gpus_and_named_in_the_table() -> None:
    assert [p.name for p in GPU_PRESETS] == list(memory.PRESET_GPUS)
    for preset in GPU_PRESETS:
        assert (PRESETS_DIR / f"{preset.name}.yaml").is_file()
    low = 0.0
    for preset in GPU_PRESETS:  # just under each threshold picks that preset
        memory_gib = min(preset.below_gib - 0.5, low + 200.0)
        assert preset_for([GpuInfo("x", memory_gib, (8, 0))])[0] == preset.name
        low = preset.below_gib
    assert preset_for([GpuInfo("old", 80.0, (7, 0))])[0] == GPU_PRESETS[0].name  # no bf16


def test_the_dry_run_prints_the_plan_s_choices(tmp_path: Path) -> None:
    resolved = resolve(load_config(), cuda=False, train_records=10)
    assert resolved.lines()[:2] == ["quantization none (16-bit LoRA)", "compute      float32"]
