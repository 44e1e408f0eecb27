"""What only a CUDA GPU can show. Skipped without one: ``benchmarks/gpu_check.sh`` runs them on
a GPU machine (``pytest -m gpu``), and its results are committed under ``benchmarks/results/``."""

from __future__ import annotations

import pytest
import torch

from qvl_helpers import memory
from qvl_helpers.lora import add_lora
from qvl_helpers.model import load_model

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU: run benchmarks/gpu_check.sh there")]


@pytest.mark.parametrize("quantization", ["4bit", "none"])
def test_weights_and_adapters_on_the_gpu_take_what_the_estimate_says(tiny_dir, quantization):
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    model = load_model(str(tiny_dir), quantization, dtype, device_map={"": 0})
    model = add_lora(model, trained="language", r=4, alpha=8)
    used = torch.cuda.memory_allocated() - before
    setup = memory.Setup(quantization=quantization, compute_bytes=2, trained="language", lora_r=4)
    shape = memory.model_shape(model.config)
    expected = memory.weight_bytes(shape, setup) + memory.trainable(shape, setup).bytes
    # the caching allocator rounds every tensor up to 512 bytes: a few percent on this tiny model
    assert used == pytest.approx(expected, rel=0.05)
    assert all(p.dtype != torch.uint8 for n, p in model.named_parameters() if ".visual." in n)


def test_a_few_training_steps_on_the_gpu_give_a_finite_loss(tiny_dir, tmp_path):
    from qvl_helpers.config import PRESETS_DIR, load_config
    from qvl_helpers.train import train

    cfg = load_config(presets=[PRESETS_DIR / "tiny_cpu.yaml"],
                      sets={"model": str(tiny_dir), "quantization": "4bit", "max_steps": 3,
                            "output_dir": str(tmp_path), "tuned_for": "any"})
    result = train(cfg, verbose=False)
    assert result.steps == 3 and result.train_loss is not None
