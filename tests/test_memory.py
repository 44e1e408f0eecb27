"""The memory estimate: its exact parts against the bytes of real objects (a loaded tiny model, a
real optimizer, the real 3B configuration built on the meta device), its modelled parts against
what autograd keeps, and the verdicts and advice on top."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from qvl_helpers import memory
from qvl_helpers.lora import add_lora
from qvl_helpers.memory import GIB, GPUS, Setup, Workload, estimate, model_shape
from qvl_helpers.model import load_model, quiet_upstream_deprecations
from qvl_helpers.tiny import real_3b_config

SAMPLES = Path(__file__).resolve().parent.parent / "data_samples"


@pytest.fixture(scope="module")
def shapes_records():
    from qvl_helpers.data import load_records

    return load_records(SAMPLES / "shapes" / "shapes.jsonl")[:8]


def _storage_bytes(tensors) -> int:
    """Bytes of the distinct storages behind ``tensors``."""
    seen = {}
    for t in tensors:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())


def _base_bytes(model) -> int:
    """Every frozen parameter of a (PEFT-wrapped) model, with bitsandbytes' quantization state."""
    tensors = []
    for _, p in model.named_parameters():
        if p.requires_grad:
            continue
        tensors.append(p)
        state = getattr(p, "quant_state", None)
        if state is not None:
            tensors += [state.absmax, state.code, state.offset, state.state2.absmax,
                        state.state2.code]
        if getattr(p, "SCB", None) is not None:
            tensors.append(p.SCB)
    return _storage_bytes(tensors)


def _lora(tiny_dir, quantization: str, trained: str, r: int = 4, dropout: float = 0.0,
          dtype=torch.float32, frozen_fp32: bool = False):
    model = load_model(str(tiny_dir), quantization, dtype)
    return add_lora(model, trained=trained, r=r, alpha=2 * r, dropout=dropout,
                    gradient_checkpointing=False, frozen_fp32=frozen_fp32)


TRAINED = ["language", "language+vision", "language+merger"]
#: (quantization, compute dtype, frozen_fp32): 16-bit LoRA in float32 (the CPU's), and the
#: 4/8-bit paths loaded in bf16 (a GPU's compute dtype), lean and with PEFT's float32 upcast.
LAYOUTS = [("none", torch.float32, False), ("4bit", torch.bfloat16, False),
           ("4bit", torch.bfloat16, True), ("4bit", torch.float16, False),
           ("8bit", torch.bfloat16, False), ("8bit", torch.bfloat16, True)]


#: every trained-part preset on 16-bit and 4-bit; 8-bit (the same code) with one
CASES = [(*layout, trained) for layout in LAYOUTS for trained in TRAINED
         if layout[0] != "8bit" or trained == "language"]


@pytest.mark.parametrize(("quantization", "dtype", "frozen_fp32", "trained"), CASES,
                         ids=[f"{q}-{str(d)[6:]}{'-fp32frozen' * f}-{t}" for q, d, f, t in CASES])
def test_weights_and_adapters_are_byte_exact_on_the_tiny_model(tiny_dir, quantization, dtype,
                                                               frozen_fp32, trained):
    model = _lora(tiny_dir, quantization, trained, dtype=dtype, frozen_fp32=frozen_fp32)
    config = model.base_model.model.config
    setup = Setup(quantization=quantization, compute_bytes=dtype.itemsize, trained=trained,
                  lora_r=4, frozen_fp32=frozen_fp32, fp16=dtype == torch.float16)
    shape = model_shape(config)
    train = memory.trainable(shape, setup)
    trainable = [p for p in model.parameters() if p.requires_grad]
    # modules_to_save keeps the original merger too (frozen): the estimate counts it in weights
    assert memory.weight_bytes(shape, setup) == _base_bytes(model)
    assert train.bytes == _storage_bytes(trainable)
    assert train.params == sum(p.numel() for p in trainable)
    assert train.tensors == len(trainable)
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad and p.is_floating_point()}
    if frozen_fp32 or quantization == "none":
        assert frozen == {torch.float32}
    else:  # as loaded; an fp16 input embedding in float32 (it carries the residual stream)
        assert frozen == {dtype} | ({torch.float32} if dtype == torch.float16 else set())
        embedding = model.get_input_embeddings().weight.dtype
        assert embedding == (torch.float32 if dtype == torch.float16 else dtype)
    assert {p.dtype for p in trainable} == {torch.float32}  # LoRA and the merger's copy


def test_optimizer_state_is_byte_exact_with_the_trainers_own_optimizer(tiny_dir):
    from transformers import Trainer, TrainingArguments

    model = _lora(tiny_dir, "none", "language+merger")
    args = TrainingArguments(output_dir="unused", use_cpu=True, report_to="none")
    optimizer_class, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = optimizer_class(trainable, **kwargs)
    for p in trainable:
        p.grad = torch.ones_like(p)
    optimizer.step()
    state = [t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
    train = memory.trainable(model_shape(model.base_model.model.config),
                             Setup(quantization="none", compute_bytes=4, trained="language+merger",
                                   lora_r=4))
    assert memory.optimizer_bytes(train) == _storage_bytes(state)


@pytest.fixture(scope="module")
def real_3b():
    return real_3b_config()


def test_the_real_3b_counts_match_the_facts_and_a_peft_wrapped_meta_copy(real_3b):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    shape = model_shape(real_3b)
    total = sum(t.numel for t in shape.tensors)
    vision = sum(t.numel for t in shape.tensors if ".visual." in f".{t.name}")
    assert total == pytest.approx(3.75e9, rel=0.01)  # the facts file: about 3.75 B
    assert vision == pytest.approx(0.67e9, rel=0.01)  # of which the vision tower 0.67 B
    setup = Setup(quantization="none", compute_bytes=2, trained="language", lora_r=8)
    assert memory.weight_bytes(shape, setup) == 2 * total
    with torch.device("meta"):
        skeleton = AutoModelForImageTextToText.from_config(real_3b)
    pattern, _ = memory_targets("language")
    with quiet_upstream_deprecations():
        wrapped = get_peft_model(skeleton, LoraConfig(r=8, lora_alpha=16, target_modules=pattern))
    lora = [p for p in wrapped.parameters() if p.requires_grad]
    train = memory.trainable(shape, setup)
    assert train.params == sum(p.numel() for p in lora)
    assert train.tensors == len(lora) == 2 * 7 * 36
    assert train.bytes == 4 * train.params  # adapters stay float32 on a 16-bit base


def memory_targets(trained: str):
    from qvl_helpers.lora import lora_targets

    return lora_targets(trained)


def test_nf4_bytes_of_a_3b_projection():
    n = 2048 * 11008
    assert memory.nf4_bytes(n) == n // 2 + n // 64 + 4 * (n // 64 // 256) + 1092


def test_qlora_weights_keep_what_is_not_quantized_in_16_bit_unless_frozen_fp32(real_3b):
    shape = model_shape(real_3b)
    lean = memory.weight_bytes(shape, Setup(quantization="4bit"))
    upcast = memory.weight_bytes(shape, Setup(quantization="4bit", frozen_fp32=True))
    quantizable = sum(t.numel for t in shape.tensors if t.quantizable)
    other = sum(t.numel for t in shape.tensors if not t.quantizable)
    assert other == pytest.approx(0.67e9 + 151_936 * 2048, rel=0.01)  # tower + tied embedding
    assert upcast - lean == 2 * other  # float32 instead of bf16: 2 bytes more per parameter
    assert quantizable / 2 < lean - 2 * other < quantizable * 0.6  # NF4 and its statistics


# ----------------------------------------------------------------------------- modelled parts


def _tiny_batch(tiny_dir, shapes_records, n: int = 4):
    from qvl_helpers.collate import make_collator
    from qvl_helpers.model import load_processor

    processor = load_processor(tiny_dir)
    collator = make_collator(processor, "train", max_pixels=12544)
    return collator(shapes_records[:n])


@pytest.mark.parametrize(("checkpointing", "dropout"), [(False, 0.0), (False, 0.1), (True, 0.1)])
def test_modelled_activations_are_within_the_stated_error_of_what_autograd_keeps(
        tiny_dir, shapes_records, checkpointing, dropout):
    from qvl_helpers.trainer import answer_loss, answer_positions

    model = load_model(str(tiny_dir), "none", torch.float32)
    model = add_lora(model, trained="language", r=4, alpha=8, dropout=dropout,
                     gradient_checkpointing=checkpointing)
    model.train()
    batch = _tiny_batch(tiny_dir, shapes_records)
    params = list(model.parameters())
    kept = memory.saved_activation_bytes(lambda: model(**batch).loss, exclude=params)

    def answers_only():
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        outputs = model(**inputs, logits_to_keep=answer_positions(batch["labels"]))
        return answer_loss(outputs, batch["labels"])

    kept_answers = memory.saved_activation_bytes(answers_only, exclude=params)
    n, trained = batch["input_ids"].numel(), int((batch["labels"] != -100).sum())
    visual = int((batch["input_ids"] == model.config.image_token_id).sum())
    work = Workload(len(batch["input_ids"]), batch["input_ids"].shape[1], visual, n - visual)
    setup = Setup(quantization="none", compute_bytes=4, trained="language", lora_r=4,
                  lora_dropout=dropout, batch_size=work.batch_size,
                  gradient_checkpointing=checkpointing, answer_logits=False)
    shape = model_shape(model.config)
    parts = memory.activation_parts(shape, setup, work)
    log_probs = n * shape.vocab * 4  # cross-entropy keeps float32 log-probabilities
    modelled = parts["activations: language model"] + parts["activations: vision tower"]
    assert kept == pytest.approx(modelled + log_probs, rel=memory.CALIBRATION.error)
    # answer_logits: the log-probabilities of every position that predicts no answer are gone
    assert kept - kept_answers == pytest.approx((n - trained) * shape.vocab * 4, rel=0.05)


# ----------------------------------------------------------------------------- verdicts


def test_verdicts_follow_the_data_and_the_settings(real_3b):
    small = Workload(1, 600, 256, 344)
    big = Workload(4, 4096, 4 * 1280, 4 * 2816)
    qlora = Setup(quantization="4bit")
    t4, _, _, a100 = GPUS
    assert estimate(real_3b, qlora, small).fits(t4) == "fits"
    assert estimate(real_3b, replace(qlora, quantization="none", batch_size=4,
                                     gradient_checkpointing=False), big).fits(t4) == "does not fit"
    grows = [estimate(real_3b, qlora, Workload(1, n, n // 2, n // 2)).peak
             for n in (512, 1024, 2048)]
    assert grows == sorted(grows) and grows[2] > grows[0]
    assert estimate(real_3b, qlora, big).fits(a100) == "fits"


def test_the_first_change_is_the_cheapest_one_that_fits(real_3b):
    t4 = GPUS[0]
    work = Workload(2, 4000, 2 * 2560, 2 * 1440)
    no_ckpt = Setup(quantization="4bit", batch_size=2, gradient_checkpointing=False,
                    answer_logits=False)
    assert estimate(real_3b, no_ckpt, work).fits(t4) == "does not fit"  # full logits: 3 GiB
    advice = memory.first_change(real_3b, no_ckpt, work, t4)
    assert advice.startswith("set answer_logits: true (then also gradient_checkpointing: true")
    assert estimate(real_3b, replace(no_ckpt, answer_logits=True, gradient_checkpointing=True),
                    work).fits(t4) != "does not fit"  # and that is enough
    huge = Workload(1, 17000, 16384, 616)
    assert "max_pixels" in memory.first_change(real_3b, Setup(), huge, t4)


def test_frozen_fp32_is_the_first_change_when_the_upcast_is_what_does_not_fit(real_3b):
    t4 = GPUS[0]
    upcast = Setup(quantization="4bit", frozen_fp32=True)
    for visual in range(256, 40_000, 256):  # the largest workload the upcast still fits ...
        work = Workload(1, visual + 300, visual, 300)
        if estimate(real_3b, upcast, work).fits(t4) == "does not fit":
            break
    assert estimate(real_3b, replace(upcast, frozen_fp32=False), work).fits(t4) != "does not fit"
    assert memory.first_change(real_3b, upcast, work, t4) == "set frozen_fp32: false"
    plain = Setup(quantization="none", frozen_fp32=True)  # nothing to upcast: not advised
    assert "frozen_fp32" not in memory.first_change(real_3b, plain, Workload(1, 40000, 39700, 300),
                                                    t4)


def test_the_breakdown_names_every_part_and_says_which_are_exact(real_3b):
    est = estimate(real_3b, Setup(), Workload(1, 600, 256, 344), model="Qwen2.5-VL-3B")
    text = est.text()
    for part in est.parts:
        assert part in text
    assert "(exact)" in text and "±30%" in text
    assert all(g.name in text for g in GPUS)
    assert est.needed > est.peak > 2 * GIB


def test_every_gpu_preset_fits_the_gpu_it_is_made_for_with_a_typical_sample(clean_env):
    estimates = memory.preset_estimates(image=(1280, 960), text_tokens=200)
    gpus = {g.name: g for g in GPUS}
    for preset, gpu in memory.PRESET_GPUS.items():
        assert estimates[preset].fits(gpus[gpu]) == "fits", (preset, estimates[preset].text())
    table = memory.preset_table(estimates)
    assert all(p in table for p in memory.PRESET_GPUS)
    tokens = [estimates[p].work.padded_length for p in memory.PRESET_GPUS]
    assert tokens == sorted(tokens)  # larger images on larger GPUs
    lora = [estimates[p].needed for p in ("40gb_lora", "80gb_lora")]
    assert lora == sorted(lora)
    # the T4's fp16 keeps the input embedding and the residual stream in float32 (safe, not lean)
    t4, qlora24 = estimates["t4_qlora"], estimates["24gb_qlora"]
    assert t4.parts["weights"] - qlora24.parts["weights"] == 2 * 151_936 * 2048


# ----------------------------------------------------------------------------- qvl train --dry-run

PRESETS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_dry_run_of_every_preset_prints_the_breakdown_and_verdicts(
        preset, tmp_path, monkeypatch, capsys):
    from qvl_helpers.cli import main

    monkeypatch.setenv("QVL_OUTPUT_DIR", str(tmp_path))
    assert main(["train", "--config", str(preset), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "Memory estimate for the tiny stand-in" in out  # what trains here (CPU)
    real = out.split("On a GPU, with these settings and this data (text counted with Qwen's own "
                     "tokenizer):")[1]
    assert "Memory estimate for Qwen/Qwen2.5-VL-3B-Instruct" in real
    for part in ("weights", "LoRA adapters", "optimizer (AdamW)", "logits and loss"):
        assert part in real
    assert all(g.name in real for g in GPUS)
    assert "packing off:" in out and "answer_logits True" in out and "frozen_fp32 False" in out
    fp16 = "(4bit, fp16 compute)" in real  # the T4 preset
    lean, upcast = (memory.human(memory.real_3b_weights("4bit", frozen_fp32=f, fp16=fp16))
                    for f in (False, True))
    weights = next(line for line in real.splitlines() if line.strip().startswith("weights"))
    if "(4bit," in real:  # the 3B's weights, lean, then PEFT's way
        assert f"{lean:>10}  (exact; {upcast} with frozen_fp32: true)" in weights
    else:
        assert weights.endswith("(exact)")
    assert not (tmp_path / "runs" / "x").exists()


def test_time_estimate_measures_steps_here_and_writes_no_run(tmp_path, monkeypatch, capsys):
    from qvl_helpers.config import PRESETS_DIR, load_config
    from qvl_helpers.train import train

    monkeypatch.setenv("QVL_OUTPUT_DIR", str(tmp_path))
    cfg = load_config(presets=[PRESETS_DIR / "tiny_cpu.yaml"], run_name="timed", max_steps=40)
    result = train(cfg, dry_run=True, time_steps=2)
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("time "))
    assert "for 40 steps" in line and "median of 2 steps" in line
    assert result.trained is False and not (tmp_path / "runs" / "timed").exists()


def test_time_estimate_text_extrapolates_the_median_step():
    from qvl_helpers.timing import TimeEstimate

    est = TimeEstimate(steps=600, measured=[2.0, 1.0, 3.0])
    assert est.per_step == 2.0
    text = est.text()
    assert "about 20 min for 600 steps (10 min to 30 min)" in text


def test_time_needs_dry_run(capsys):
    from qvl_helpers.cli import main

    assert main(["train", "--time"]) == 2
    assert "--dry-run" in capsys.readouterr().err


def test_another_model_type_gets_a_sentence_not_a_traceback(tmp_path):
    import json

    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 100}))
    text = memory.report_for_run(None, str(tmp_path), None, resolved=None, is_tiny=False)
    assert "not available" in text and "llama" in text


def test_the_readmes_state_the_lean_qlora_savings_the_estimate_counts():
    upcast = memory.real_3b_weights("4bit", frozen_fp32=True)
    root = Path(__file__).resolve().parent.parent
    for fp16 in (False, True):
        saving = (upcast - memory.real_3b_weights("4bit", fp16=fp16)) / GIB
        for readme, words in (("README.md", "about {} GiB less"), ("README.zh.md", "约少 {} GiB")):
            text = " ".join((root / readme).read_text(encoding="utf-8").split())
            assert words.format(f"{saving:.1f}") in text, (readme, fp16)
