"""Training on the tiny model: it provably learns a task that needs the image, on both the 4-bit
and the 16-bit path; every LoRA parameter gets a gradient; killed runs resume; two processes
train together; broken runs stop with an explanation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch
import yaml
from inprocess import run_main
from limits import HANG_GUARD_S

from qvl_helpers.collate import make_collator
from qvl_helpers.data import load_records
from qvl_helpers.lora import add_lora, load_adapter
from qvl_helpers.model import load_model

if TYPE_CHECKING:
    from conftest import TrainedRun

REPO = Path(__file__).resolve().parent.parent
PRESET = str(REPO / "configs" / "tiny_cpu.yaml")
SHAPES = REPO / "data_samples" / "shapes"
PROBES = Path(__file__).resolve().parent / "probes.py"  # `qvl` with per-rank reports, kill points


def qvl(*args: str, env: dict | None = None, timeout: int = HANG_GUARD_S) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qvl_helpers.cli", *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=timeout)


def outputs(tmp_path: Path) -> dict:
    return {"QVL_OUTPUT_DIR": str(tmp_path / "outputs")}


@pytest.mark.slow
def test_tiny_model_learns_the_colour_task(trained_run: TrainedRun,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """The suite's one full training (conftest's ``trained_run``: the shipped tiny preset) learns
    the held-out shapes task, needs the image for it, and survives export and chat."""
    run = trained_run.run
    for name in ("adapter", "loss.png", "train_log.jsonl", "run_config.yaml", "run.json"):
        assert (run / name).exists(), name
    # The preset's whole schedule: every training sample in batches of `batch_size`, each epoch.
    preset = yaml.safe_load(Path(PRESET).read_text(encoding="utf-8"))
    split = json.loads((run / "run.json").read_text())["where"]["splits"]["train"]
    samples = len(Path(split).read_text(encoding="utf-8").splitlines())
    steps = preset["num_epochs"] * -(-samples // preset["batch_size"])
    assert _steps(run) == steps and f"Trained {steps} steps" in trained_run.stdout
    # `qvl eval --run` finds the run's model, adapter, held-out split and image limits itself.
    code, stdout, err = run_main(capsys, "eval", "--run", run, "--compare", "base,prompt,tuned",
                                 "--image-ablation", "blank")
    assert code == 0, err[-3000:]
    report = json.loads((trained_run.outputs / "eval" / "tiny_cpu" / "report.json").read_text())
    assert Path(report["data"]).parent.parent == trained_run.outputs / "data"
    score = {name: s["metrics"]["exact_match"]["value"] for name, s in report["systems"].items()}
    majority = report["most_common_answer_rate"]
    print(f"exact match {score} (most common answer {majority:.3f}, n={report['n']})")
    # The margins benchmarks/learning.py measured the preset's schedule against, with room.
    assert score["tuned"] >= 0.9
    assert score["base"] < 0.1
    # Ahead of both the base and the prompted base by more than the interval of the difference.
    ahead = {c["second"]: c for c in report["comparisons"] if c["first"] == "tuned"}
    for other in ("base", "prompt"):
        assert ahead[other]["clear"] and ahead[other]["difference"]["low"] > 0, ahead[other]
    # Without the images the adapter is no better than always giving the most common answer.
    assert score["tuned-blank"] <= majority + 0.1
    assert "tuned is better than base" in stdout
    _exported_model_scores_the_same(trained_run.outputs, run, report, capsys)


def _exported_model_scores_the_same(outputs: Path, run: Path, report: dict,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    """The run merged by `qvl export` (verified there, in a fresh process: the boundary that
    export promises), then loaded by `qvl eval` and `qvl chat`, answers as the adapter did; its
    model card quotes this run's evaluation."""
    code, stdout, err = run_main(capsys, "export", "--run", run)
    assert code == 0, err[-3000:]
    assert "Verified in a fresh process on 4 held-out samples" in stdout
    merged = outputs / "export" / "tiny_cpu"
    tuned = report["systems"]["tuned"]["metrics"]["exact_match"]
    card = (merged / "README.md").read_text(encoding="utf-8")
    assert f"| tuned | {tuned['value']:.3f} [{tuned['low']:.3f}, {tuned['high']:.3f}] |" in card
    code, _, err = run_main(capsys, "eval", "--model", merged, "--data", report["data"],
                            "--compare", "base", "--out", outputs / "eval-merged")
    assert code == 0, err[-3000:]
    again = json.loads((outputs / "eval-merged" / "report.json").read_text())
    assert again["systems"]["base"]["metrics"]["exact_match"]["value"] == tuned["value"]
    # One held-out question from the terminal (its image through the split's image root).
    first = json.loads(Path(report["data"]).read_text(encoding="utf-8").splitlines()[0])
    root = json.loads((Path(report["data"]).parent / "split_info.json").read_text())["image_root"]
    image = Path(root) / first["messages"][0]["content"][0]["image"]
    question = first["messages"][0]["content"][1]["text"]
    code, stdout, err = run_main(capsys, "chat", "--model", merged, "--image", image, question)
    assert code == 0, err[-3000:]
    assert stdout.strip() == first["messages"][1]["content"][0]["text"]


@pytest.mark.slow
def test_the_4bit_path_trains_and_evaluates(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """QLoRA (4-bit NF4 base, bitsandbytes on the CPU) on a few steps: the answer loss falls and
    `qvl eval --run --quantization 4bit` generates with the 4-bit base and the adapter, as it
    trained (by default eval loads the 16-bit base, which export merges into). How well the
    4-bit path learns on the full schedule is benchmarks/learning.py's job (learning.json)."""
    out = tmp_path / "outputs"
    code, _, err = run_main(capsys, "train", "--config", PRESET, "--set", "quantization=4bit",
                            "--set", "max_steps=24", "--set", f"output_dir={out}")
    assert code == 0, err[-3000:]
    run = out / "runs" / "tiny_cpu"
    logged = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in logged if "loss" in r]
    assert len(losses) >= 2 and losses[-1] < losses[0], losses
    assert yaml.safe_load((run / "adapter" / "run_config.yaml").read_text())[
        "quantization"] == "4bit"
    code, _, err = run_main(capsys, "eval", "--run", run, "--compare", "base,tuned",
                            "--quantization", "4bit")
    assert code == 0, err[-3000:]
    report = json.loads((out / "eval" / "tiny_cpu" / "report.json").read_text())
    assert set(report["systems"]) == {"base", "tuned"} and report["n"] == 32
    assert report["generation"]["quantization"] == "4bit"


@pytest.mark.parametrize("trained", ["language", "language+vision", "language+merger"])
def test_every_lora_parameter_gets_a_gradient(tiny_dir: Path, trained: str) -> None:
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_dir)
    torch.manual_seed(0)
    model = add_lora(load_model(str(tiny_dir), "none"), trained=trained, r=4, alpha=8,
                     dropout=0.0, gradient_checkpointing=True)
    model.train()
    base = model.get_base_model()
    assert getattr(base, "is_activation_checkpointing", None) or base.is_gradient_checkpointing
    batch = make_collator(processor, max_pixels=12544)(
        load_records(SHAPES / "shapes.jsonl")[:4])
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.SGD(trainable.values(), lr=0.1)
    for _ in range(2):  # lora_B starts at zero, so lora_A's gradient is zero until one step
        optimizer.zero_grad()
        model(**batch).loss.backward()
        optimizer.step()
    names = {n for n in trainable if "lora_" in n}
    assert names, "no LoRA parameters"
    if trained == "language":
        assert all("visual" not in n for n in names), "the vision MLP must not be caught"
    if trained == "language+vision":
        assert any("visual.blocks" in n for n in names)
    if trained == "language+merger":
        assert any("merger" in n and "lora_" not in n for n in trainable)
    for name, param in trainable.items():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def _steps(run: Path) -> int:
    """The step the run finished at, as its run.json records it."""
    return json.loads((run / "run.json").read_text())["finished"]["steps"]


@pytest.mark.slow
def test_sigkill_mid_run_then_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    from qvl_helpers.lessons import simulate_disconnect

    monkeypatch.setenv("QVL_OUTPUT_DIR", str(tmp_path / "outputs"))
    run = simulate_disconnect(PRESET, {"max_steps": 80, "save_steps": 20}, after_step=40)
    assert run == tmp_path / "outputs" / "runs" / "tiny_cpu"
    assert (run / "checkpoint-40").is_dir() and not (run / "adapter").exists()
    # Only the killed run needs its own process; the resume runs here.
    code, stdout, err = run_main(capsys, "train", "--config", PRESET, "--set", "max_steps=80",
                                 "--set", "save_steps=20", "--resume")
    assert code == 0, err[-3000:]
    assert "Resuming from" in stdout
    assert "Trained 40 steps (resumed from step 40; the run is at step 80)" in stdout
    assert _steps(run) == 80
    _assert_loadable(run / "adapter")


@pytest.mark.slow
def test_sigkill_while_saving_then_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "outputs" / "runs" / "tiny_cpu"
    killed = subprocess.run(
        [sys.executable, str(PROBES), "--kill-while-saving", "40", "train", "--config", PRESET,
         "--set", "max_steps=60", "--set", "save_steps=20"], capture_output=True, text=True,
        env={**os.environ, **outputs(tmp_path)}, timeout=HANG_GUARD_S)
    assert killed.returncode == -signal.SIGKILL
    assert (run / "checkpoint-40").exists()
    assert not (run / "checkpoint-40" / "qvl_checkpoint_complete.json").exists()
    # killed between the weights and the optimizer, as a crash in the middle of the save would
    assert (run / "checkpoint-40" / "adapter_model.safetensors").exists()
    assert not (run / "checkpoint-40" / "optimizer.pt").exists()
    monkeypatch.setenv("QVL_OUTPUT_DIR", str(tmp_path / "outputs"))
    code, stdout, err = run_main(capsys, "train", "--config", PRESET, "--set", "max_steps=60",
                                 "--set", "save_steps=20", "--resume")
    assert code == 0, err[-3000:]
    assert "checkpoint-40 cannot be used (incomplete" in stdout
    assert "checkpoint-20" in stdout.split("Resuming from", 1)[1].splitlines()[0]
    assert any(p.name.startswith("incomplete-checkpoint-40") for p in run.iterdir())
    assert _steps(run) == 60
    _assert_loadable(run / "adapter")


def _assert_loadable(adapter: Path) -> None:
    """The adapter loads onto its base, every saved weight in place (``load_adapter`` checks)."""
    config = json.loads((adapter / "adapter_config.json").read_text())
    base = load_model(config["base_model_name_or_path"], "none")
    model = load_adapter(base, adapter)
    assert any("lora_" in n for n, _ in model.named_parameters())


@pytest.mark.slow
def test_two_cpu_processes(tmp_path: Path) -> None:
    torchrun = Path(sys.executable).with_name("torchrun")
    done = subprocess.run(
        [str(torchrun), "--nproc_per_node", "2", str(PROBES), "train",
         "--config", PRESET, "--set", "max_steps=12", "--set", "save_steps=6"],
        capture_output=True, text=True, env={**os.environ, **outputs(tmp_path)}, timeout=HANG_GUARD_S)
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "outputs" / "runs" / "tiny_cpu"
    reports = [json.loads(p.read_text()) for p in sorted((run / "ranks").glob("rank-*.json"))]
    assert [r["rank"] for r in reports] == [0, 1]
    assert all(r["world_size"] == 2 and r["steps"] == 12 for r in reports)
    assert all(r["samples_collated"] >= 12 * 8 for r in reports)  # both ranks trained
    marker = json.loads((run / "checkpoint-12" / "qvl_checkpoint_complete.json").read_text())
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= set(marker["files"])  # both ranks saved
    adapters = [p for p in run.rglob("adapter_model.safetensors") if "checkpoint" not in str(p)]
    assert adapters == [run / "adapter" / "adapter_model.safetensors"]
    assert not (run / ".adapter.saving").exists()


def test_all_masked_labels_refuse_to_start(tmp_path: Path, tiny_dir: Path,
                                           monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    from qvl_helpers.cli import main

    other = tmp_path / "other_template"
    shutil.copytree(tiny_dir, other)
    template = (other / "chat_template.jinja").read_text()
    # A template from another model family: the assistant turn is called "bot".
    template = template.replace("{{ message['role'] }}",
                                "{{ message['role'] | replace('assistant', 'bot') }}")
    (other / "chat_template.jinja").write_text(template)
    monkeypatch.setenv("QVL_OUTPUT_DIR", str(tmp_path / "outputs"))
    code = main(["train", "--config", PRESET, "--set", f"model={other}", "--set", "max_steps=2"])
    assert code == 2
    assert "every label is masked" in capsys.readouterr().err


def test_out_of_memory_becomes_advice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from qvl_helpers.config import load_config
    from qvl_helpers.train import train
    from qvl_helpers.trainer import CourseTrainer, TrainingError

    def boom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(CourseTrainer, "train", boom)
    monkeypatch.setenv("QVL_OUTPUT_DIR", str(tmp_path))
    cfg = load_config(presets=[PRESET], max_steps=2)
    with pytest.raises(TrainingError) as info:
        train(cfg, verbose=False)
    text = str(info.value)
    assert "max_pixels 12544" in text and "batch_size 8" in text and "lower max_pixels" in text


def test_4bit_keeps_vision_and_lm_head_unquantized(tiny_dir: Path) -> None:
    import bitsandbytes as bnb

    model = load_model(str(tiny_dir), "4bit")
    quantized = {n for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    assert any("language_model.layers" in n for n in quantized)
    assert not any("visual" in n or "lm_head" in n for n in quantized), sorted(quantized)[:5]


def test_8bit_path_trains(tiny_dir: Path) -> None:
    import bitsandbytes as bnb
    from transformers import AutoProcessor

    model = add_lora(load_model(str(tiny_dir), "8bit"), trained="language", r=4, alpha=8,
                     dropout=0.0)
    assert any(isinstance(m, bnb.nn.Linear8bitLt) for m in model.modules())
    processor = AutoProcessor.from_pretrained(tiny_dir)
    batch = make_collator(processor, max_pixels=12544)(load_records(SHAPES / "shapes.jsonl")[:2])
    loss = model(**batch).loss
    loss.backward()
    assert torch.isfinite(loss)
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.grad is not None for p in lora_b)


class _Args:
    """What one_device_per_process reads of TrainingArguments (n_gpu is computed from the
    visible GPUs; none are visible here)."""

    def __init__(self, gpus: int) -> None:
        self._n_gpu = gpus

    @property
    def n_gpu(self) -> int:
        return self._n_gpu


def test_one_process_seeing_two_gpus_trains_on_one_and_says_how_to_use_both() -> None:
    from qvl_helpers.trainer import one_device_per_process

    said: list[str] = []
    args = _Args(2)  # a notebook on Kaggle's 2 x T4
    one_device_per_process(args, world=1, say=said.append)
    assert args.n_gpu == 1  # no batch x 2 on one GPU, no DataParallel
    assert said and "accelerate launch --num_processes 2" in said[0]
    for gpus, world in ((1, 1), (1, 2)):  # one GPU, or one process per GPU: left alone
        args, said = _Args(gpus), []
        one_device_per_process(args, world=world, say=said.append)
        assert args.n_gpu == gpus and said == []


# --------------------------------------------------------------------------- what a run says


@pytest.mark.parametrize("start,steps,loss", [(0, 60, 0.5), (20, 60, 0.1234), (59, 60, None)])
def test_the_summary_counts_the_steps_this_process_trained(start: int, steps: int,
                                                           loss: float | None) -> None:
    from qvl_helpers.train import TrainResult

    said = TrainResult(Path("r"), Path("r/adapter"), steps, loss, 4.6, start_step=start).summary()
    n = steps - start
    assert said.startswith(f"Trained {n} step{'s' if n != 1 else ''}")
    assert (f"(resumed from step {start}; the run is at step {steps})" in said) == bool(start)
    assert " in 5 s" in said and said.endswith("adapter: r/adapter")
    if loss is None:
        assert "loss" not in said
    else:
        assert f"average training loss over them {loss:.4f}" in said


@pytest.mark.parametrize("total", [1, 7, 24, 60, 256, 5000])
def test_logging_is_dense_enough_for_a_curve(total: int) -> None:
    from qvl_helpers.run_plan import LOSS_POINTS, VAL_POINTS, log_every

    logging, evaluation = log_every(total, 10, 50)
    assert 1 <= logging <= 10 and 1 <= evaluation <= 50
    assert total // logging >= min(total, LOSS_POINTS) or logging == 10
    assert total // evaluation >= min(total, VAL_POINTS) or evaluation == 50
    assert log_every(total, 10 ** 9, 10 ** 9)[0] == max(1, total // LOSS_POINTS)


def test_a_resumed_run_says_how_many_steps_it_trained(monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str],
                                                      tmp_path: Path) -> None:
    """train() after resuming from checkpoint-20 of a 60-step run: 40 steps trained here; the
    trainer logs densely enough for a curve. (Model, Trainer and planning stubbed.)"""
    from types import SimpleNamespace

    import qvl_helpers.train as train_module
    from qvl_helpers.config import load_config
    from qvl_helpers.runs import ResumePoint

    cfg = load_config(output_dir=tmp_path, max_steps=60)
    plan = SimpleNamespace(
        cfg=cfg, model_path="m", quantization="none", dtype=torch.float32, extra={
            "resolved": {"world_size": 1}}, records={"train": [], "val": []}, collator=None,
        processor=None, budgets={"train": SimpleNamespace(totals=[10, 20])}, identity={},
        world_size=1, lengths=[10, 20], resolved=SimpleNamespace(steps=60),
        resume_from=ResumePoint(tmp_path / "checkpoint-20"))
    built: dict = {}

    def fake_trainer(*args, every=None, **kwargs):
        built["every"] = every
        return SimpleNamespace(state=SimpleNamespace(global_step=60),
                               is_world_process_zero=lambda: False)

    monkeypatch.setattr(train_module, "plan_and_check", lambda *a, **k: plan)
    monkeypatch.setattr(train_module, "open_run_folder", lambda *a, **k: None)
    monkeypatch.setattr(train_module, "prepare_model", lambda *a, **k: object())
    monkeypatch.setattr(train_module, "build_trainer", fake_trainer)
    monkeypatch.setattr(train_module, "fit", lambda *a: SimpleNamespace(training_loss=0.25))
    result = train_module.train(cfg, resume=True)
    assert (result.steps, result.steps_trained, result.start_step) == (60, 40, 20)
    assert "Trained 40 steps (resumed from step 20; the run is at step 60)" in capsys.readouterr().out
    assert built["every"] == (3, 7)  # 60 steps: a training loss every 3, validation every 7


def test_a_4bit_model_trains_on_after_an_evaluation(tiny_dir: Path, processor) -> None:
    """QLoRA on a CPU: an evaluation (eval mode, no gradients) between two training steps
    leaves the 4-bit layers trainable. bitsandbytes repacks them for inference on CPUs with
    AVX512-BF16 and the next step failed; the course turns that off for training."""
    from qvl_helpers.lora import keep_4bit_training_layout

    records = load_records(REPO / "data_samples" / "shapes" / "shapes.jsonl")[:2]
    batch = make_collator(processor, "train", min_pixels=3136, max_pixels=12544)(records)
    model = add_lora(load_model(str(tiny_dir), quantization="4bit", dtype=torch.float32),
                     r=4, alpha=8, dropout=0.0)
    four_bit = [m for m in model.modules() if type(m).__name__ == "Linear4bit"]
    assert four_bit and not any(getattr(m, "support_avx512bf16_for_cpu", False) for m in four_bit)
    assert keep_4bit_training_layout(model) == 0  # already done by add_lora
    for step in range(2):
        model.train()
        model(**batch).loss.backward()
        model.eval()
        with torch.no_grad():
            assert torch.isfinite(model(**batch).loss), step


def test_the_live_loss_figure_is_redrawn_at_most_every_few_seconds(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A notebook's live loss figure: the first log entry draws it, later ones only once
    LIVE_PLOT_EVERY_S has passed, and the end of training draws it once more with every point."""
    from types import SimpleNamespace

    import IPython.display

    import qvl_helpers.trainer as T

    shown: list[int] = []  # the number of log entries each drawing had

    class Handle:
        def update(self, fig) -> None:
            shown.append(len(T.read_log(tmp_path / T.LOG)))

    def display(fig, display_id: bool) -> Handle:
        shown.append(len(T.read_log(tmp_path / T.LOG)))
        return Handle()

    clock = [1000.0]
    monkeypatch.setattr(T, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    monkeypatch.setattr(IPython.display, "display", display)
    callback = T.RunFilesCallback(tmp_path, processor=None, cfg=None, extra={}, live=True)
    step = T.LIVE_PLOT_EVERY_S / 4
    for i in range(1, 11):  # ten entries, a quarter of the interval apart
        state = SimpleNamespace(is_world_process_zero=True, global_step=i, epoch=i / 10)
        callback.on_log(None, state, None, logs={"loss": 5.0 / i})
        clock[0] += step
    callback.on_train_end(None, state, None)
    assert shown == [1, 5, 9, 10]
    assert (tmp_path / "loss.png").is_file()
