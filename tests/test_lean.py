"""Lean training: each switch saves memory or padding without changing what is learned."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from qvl_helpers import memory
from qvl_helpers.collate import make_collator
from qvl_helpers.data import load_records
from qvl_helpers.lora import add_lora
from qvl_helpers.model import load_model
from qvl_helpers.trainer import CourseTrainer, answer_loss, answer_positions

SHAPES = Path(__file__).resolve().parent.parent / "data_samples" / "shapes" / "shapes.jsonl"


@pytest.fixture(scope="module")
def batch(processor):
    records = load_records(SHAPES)[:4]
    return make_collator(processor, "train", max_pixels=12544)(records)


def _lora_model(tiny_dir, **kwargs):
    torch.manual_seed(0)  # the same LoRA initialisation for every variant
    model = load_model(str(tiny_dir), "none", torch.float32)
    settings = {"trained": "language", "r": 4, "alpha": 8, "dropout": 0.0,
                "gradient_checkpointing": True, **kwargs}
    model = add_lora(model, **settings)
    for name, p in model.named_parameters():  # LoRA B starts at zero: give it a value
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)
    return model.train()


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_answer_positions_point_one_before_each_trained_label():
    labels = torch.tensor([[-100, -100, 5, 6, -100], [-100, 7, -100, -100, -100]])
    assert answer_positions(labels).tolist() == [[False, True, True, False, False],
                                                 [True, False, False, False, False]]


def test_answer_logits_give_the_models_own_loss_and_gradients(tiny_dir, batch):
    model = _lora_model(tiny_dir)
    full = model(**batch).loss
    full.backward()
    expected = _grads(model)
    model.zero_grad()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    outputs = model(**inputs, logits_to_keep=answer_positions(batch["labels"]))
    trained = int((batch["labels"] != -100).sum())
    assert outputs.logits.shape[0] == trained  # one row of logits per trained token, no more
    loss = answer_loss(outputs, batch["labels"])
    loss.backward()
    assert loss.item() == pytest.approx(full.item(), rel=1e-5)
    got = _grads(model)
    assert got.keys() == expected.keys() and expected
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6)


def test_answer_loss_divides_by_the_tokens_of_the_whole_accumulated_batch(tiny_dir, batch):
    model = _lora_model(tiny_dir)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    outputs = model(**inputs, logits_to_keep=answer_positions(batch["labels"]))
    mean = answer_loss(outputs, batch["labels"])
    trained = int((batch["labels"] != -100).sum())
    scaled = answer_loss(outputs, batch["labels"], num_items_in_batch=torch.tensor(3 * trained))
    assert scaled.item() == pytest.approx(mean.item() / 3, rel=1e-6)


@pytest.mark.parametrize("answer_logits", [False, True])
def test_the_trainer_computes_the_same_loss_either_way(tiny_dir, batch, tmp_path, answer_logits):
    from transformers import TrainingArguments

    model = _lora_model(tiny_dir)
    expected = model(**batch).loss.item()
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none",
                             remove_unused_columns=False)
    trainer = CourseTrainer(model=model, args=args, answer_logits=answer_logits)
    assert trainer.compute_loss(model, dict(batch)).item() == pytest.approx(expected, rel=1e-5)


def test_accumulated_gradients_are_the_same_either_way(tiny_dir, processor, tmp_path):
    """Two micro-batches with very different answer lengths (colours, then receipt JSON), one
    optimizer step of gradient accumulation, as the Trainer's loop does it."""
    from transformers import TrainingArguments

    collate = make_collator(processor, "train", max_pixels=12544)
    receipts = SHAPES.parent.parent / "receipts" / "receipts.jsonl"
    micro = [collate(load_records(SHAPES)[:2]), collate(load_records(receipts)[:2])]
    grads = {}
    for switch in (False, True):
        model = _lora_model(tiny_dir)
        args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none",
                                 remove_unused_columns=False, gradient_accumulation_steps=2)
        trainer = CourseTrainer(model=model, args=args, answer_logits=switch)
        trainer.current_gradient_accumulation_steps = 2  # what the training loop sets
        count = trainer._get_num_items_in_batch(micro, torch.device("cpu"))
        for batch in micro:
            trainer.training_step(model, dict(batch), count)
        grads[switch] = _grads(model)
    assert grads[True].keys() == grads[False].keys() and grads[False]
    for name in grads[False]:
        torch.testing.assert_close(grads[True][name], grads[False][name], rtol=1e-4, atol=1e-6)


def test_a_frozen_vision_tower_keeps_no_activations_with_vision_no_grad(tiny_dir, batch):
    kept, grads = {}, {}
    for switch in (False, True):
        model = _lora_model(tiny_dir, vision_no_grad=switch)
        params = list(model.parameters())
        kept[switch] = memory.saved_activation_bytes(lambda m=model: m(**batch).loss.backward(),
                                                     exclude=params)
        grads[switch] = _grads(model)
    shape = memory.model_shape(model.config)
    patches = 4 * int((batch["input_ids"] == model.config.image_token_id).sum())
    # with checkpointing on, the tower keeps at least each block's input when it builds a graph
    assert kept[False] - kept[True] >= shape.vision_depth * patches * shape.vision_hidden * 4
    for name in grads[True]:  # and the LoRA gradients are the same
        torch.testing.assert_close(grads[True][name], grads[False][name], rtol=1e-4, atol=1e-6)


def test_lean_switches_are_settings(clean_env):
    from qvl_helpers.config import load_config

    cfg = load_config(sets={"answer_logits": "false", "vision_no_grad": "false"})
    assert cfg.answer_logits is False and cfg.vision_no_grad is False
    assert load_config().answer_logits is True


# ----------------------------------------------------------------------------- frozen parts, 16-bit


def _tower(tiny_dir, dtype):
    model = load_model(str(tiny_dir), "none", torch.float32)
    return model.model.visual.to(dtype).eval()


@pytest.mark.parametrize("compute", [torch.float16, torch.bfloat16])
def test_a_float32_copy_of_the_vision_tower_computes_in_16_bit_under_autocast(
        tiny_dir, batch, compute):
    """Why the lean path keeps the frozen tower in 16 bits: under the Trainer's mixed precision
    (autocast) a float32 copy gives the same features, its stream runs in the compute dtype, and
    it overflows where the 16-bit one does."""
    pixels, grid = batch["pixel_values"], batch["image_grid_thw"]
    streams, features = {}, {}
    for weights in (torch.float32, compute):
        tower = _tower(tiny_dir, weights)
        hook = tower.blocks[-1].register_forward_hook(
            lambda m, a, out, w=weights: streams.__setitem__(w, out.dtype))
        with torch.no_grad(), torch.autocast("cpu", dtype=compute):
            features[weights] = tower(pixels, grid_thw=grid).pooler_output.float()
            big = tower(pixels * 3000, grid_thw=grid).pooler_output
        hook.remove()
        # fp16 overflows with float32 weights too; bf16 has float32's range
        assert bool(torch.isfinite(big).all()) == (compute == torch.bfloat16)
    assert streams == {torch.float32: compute, compute: compute}
    scale = features[compute].abs().max()
    eps = torch.finfo(compute).eps
    assert (features[torch.float32] - features[compute]).abs().max() <= 4 * eps * scale


def _nan_pixel(batch):
    spoilt = batch["pixel_values"].clone()
    spoilt[0, 0] = float("nan")  # no dtype overflows here: as if the weights held a NaN
    return {**batch, "pixel_values": spoilt}


@pytest.mark.parametrize(("dtype", "said"), [(torch.float16, "float16 overflowed"),
                                             (torch.float32, "in float32, whose range")])
def test_non_finite_vision_features_stop_with_the_cause_and_a_fix_for_the_command(
        tiny_dir, batch, dtype, said):
    from qvl_helpers.errors import TrainingError
    from qvl_helpers.fixes import running
    from qvl_helpers.lora import check_vision_features

    model = _lora_model(tiny_dir).to(dtype)
    handle = check_vision_features(model)
    inputs = {**batch, "pixel_values": batch["pixel_values"].to(dtype)}
    model(**inputs)  # finite features pass
    spoilt = ({**inputs, "pixel_values": inputs["pixel_values"] * 3000}  # beyond fp16's range
              if dtype == torch.float16 else _nan_pixel(inputs))
    with running("train", ["--set", "--config"]), pytest.raises(TrainingError) as caught:
        model(**spoilt)
    assert said in caught.value.message
    # the batch's four 112x112 shapes, resized within max_pixels 12544 (112 x 112): unchanged
    assert "4 image(s) of 112x112, 112x112, 112x112, 112x112 pixels" in caught.value.message
    if dtype == torch.float16:
        assert "set dtype: fp32 in course.yaml (or pass --set dtype=fp32)" in caught.value.fix
    handle.remove()
    model(**spoilt)  # unchecked: no error


def test_frozen_blocks_are_checked_at_every_batch_even_when_the_merger_trains(tiny_dir, batch):
    from qvl_helpers.errors import TrainingError
    from qvl_helpers.lora import check_vision_features

    model = _lora_model(tiny_dir, trained="language+merger")
    check_vision_features(model)
    for _ in range(2):  # training batches: the merger is updated, the blocks never are
        model(**batch)
    with pytest.raises(TrainingError, match="vision tower's features became NaN"):
        model(**_nan_pixel(batch))


def test_a_trained_tower_is_checked_before_its_first_update_only(tiny_dir, batch):
    """After updates, non-finite features of trained blocks may be divergence: the loss guard
    names that (with lr), not this check."""
    from qvl_helpers.errors import TrainingError
    from qvl_helpers.lora import check_vision_features

    model = _lora_model(tiny_dir, trained="language+vision")
    check_vision_features(model)
    with pytest.raises(TrainingError, match="vision tower's features became NaN"):
        model(**_nan_pixel(batch))  # as loaded: the weights or the input
    model(**batch)  # the first finite training batch ends the check
    assert not torch.isfinite(model(**_nan_pixel(batch)).loss)


def test_training_guards_the_vision_features_and_keeps_frozen_parts_as_loaded(tiny_dir, batch,
                                                                                clean_env):
    from qvl_helpers.config import load_config
    from qvl_helpers.errors import TrainingError
    from qvl_helpers.trainer import prepare_model

    cfg = load_config(sets={"trained": "language+merger", "lora_r": "4"})
    def plan(cfg):  # what prepare_model reads of a RunPlan
        return SimpleNamespace(cfg=cfg, model_path=str(tiny_dir), quantization="4bit",
                               dtype=torch.bfloat16)

    model = prepare_model(plan(cfg), 0, say=lambda *a: None)
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad and p.is_floating_point()}
    assert frozen == {torch.bfloat16}
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(TrainingError):
        model(**_nan_pixel(batch))  # check_vision_features is on
    upcast = prepare_model(plan(cfg.model_copy(update={"frozen_fp32": True})), 0,
                           say=lambda *a: None)
    assert {p.dtype for p in upcast.parameters() if p.is_floating_point()} == {torch.float32}


def _streams_and_loss(tiny_dir, batch, frozen_fp32: bool):
    torch.manual_seed(0)
    model = add_lora(load_model(str(tiny_dir), "4bit", torch.float16), trained="language", r=4,
                     alpha=8, dropout=0.0, frozen_fp32=frozen_fp32)
    streams = set()
    for layer in model.base_model.model.model.language_model.layers:
        layer.register_forward_hook(lambda m, a, out: streams.add(
            (out[0] if isinstance(out, tuple) else out).dtype))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
        loss = model(**batch).loss
    return streams, float(loss)


def test_lean_fp16_keeps_the_language_stream_in_float32_as_the_upcast_does(tiny_dir, batch):
    """On a T4 (fp16) the lean path keeps the input embedding in float32, so the language
    model's residual stream is float32 as with PEFT's upcast, and the loss is the same."""
    lean, upcast = (_streams_and_loss(tiny_dir, batch, f) for f in (False, True))
    assert lean[0] == upcast[0] == {torch.float32}
    assert lean[1] == pytest.approx(upcast[1], rel=1e-3)


def test_trained_copies_are_float32_so_the_fp16_gradient_scaler_steps(tiny_dir, batch):
    """A full copy (the merger) made from fp16 weights would stop the fp16 gradient scaler
    ("Attempting to unscale FP16 gradients"); add_lora trains it in float32."""
    model = add_lora(load_model(str(tiny_dir), "none", torch.float16), trained="language+merger",
                     r=4, alpha=8, dropout=0.0, gradient_checkpointing=False).train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert {p.dtype for p in trainable} == {torch.float32}
    before = [p.detach().clone() for p in trainable]
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)
    scaler = torch.amp.GradScaler("cpu")
    with torch.autocast("cpu", dtype=torch.float16):
        loss = model(**batch).loss
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    assert any(not torch.equal(b, p) for b, p in zip(before, trainable, strict=True))
