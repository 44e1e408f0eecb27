"""Trust: the learner's data is used, runs are never corrupted, outputs are never overwritten,
and every failure is one clear message (exit 1 or 2, no traceback) that changes nothing.

Each test plays a learner with their own small dataset (the seed guide's layout, Chinese text,
images in ``pics/``; see ``learner_data.py``) and makes one thing go wrong. Refusals are tested
in-process through ``qvl_helpers.cli.main``; the few real training runs are 1-2 steps long.
"""

from __future__ import annotations

import errno
import json
import re
import shutil
from pathlib import Path

import pytest
from learner_data import FILE_NAME, make_seed_dataset, snapshot

from qvl_helpers.cli import main
from qvl_helpers.data.split import assign_splits
from qvl_helpers.images import file_hash

REPO = Path(__file__).resolve().parent.parent
PRESET = str(REPO / "configs" / "tiny_cpu.yaml")


class Learner:
    """A learner's project folder: ``data/`` (their dataset), ``course.yaml``, ``outputs/``."""

    def __init__(self, root: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.root, self.capsys = root, capsys
        self.data = root / "data" / FILE_NAME
        self.outputs = root / "outputs"

    def write_course(self, **settings: object) -> None:
        lines = [f"data: data/{FILE_NAME}", "output_dir: outputs", "model: tiny"]
        lines += [f"{k}: {v}" for k, v in settings.items()]
        (self.root / "course.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")

    def qvl(self, *args: str) -> tuple[int, str, str]:
        """Run ``qvl ARGS`` in-process; (exit code, stdout, stderr)."""
        self.capsys.readouterr()
        code = main([str(a) for a in args])
        out, err = self.capsys.readouterr()
        return code, out, err

    def train(self, *sets: str, flags: tuple[str, ...] = ()) -> tuple[int, str, str]:
        args = ["train", "--config", PRESET, *flags]
        for item in sets:
            args += ["--set", item]
        return self.qvl(*args)

    @property
    def run(self) -> Path:
        return self.outputs / "runs" / "tiny_cpu"


def one_clear_error(err: str, code: int, expected: int, *words: str) -> None:
    """The failure contract: the exit code, one or two lines, a fix, no traceback."""
    assert code == expected, err
    assert "Traceback" not in err, err
    # Progress bars may come before it (tqdm ends its lines with \r); the message is one line.
    lines = re.findall(r"qvl [a-z ]+: error: [^\r\n]*", err)
    assert len(lines) == 1, err
    assert "Fix:" in lines[0], err
    for word in words:
        assert word in lines[0], f"{word!r} not in: {lines[0]}"


@pytest.fixture
def learner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
            capsys: pytest.CaptureFixture[str]) -> Learner:
    make_seed_dataset(tmp_path / "data", n=40)
    person = Learner(tmp_path, capsys)
    person.write_course(seed=0)
    monkeypatch.setenv("QVL_CONFIG", str(tmp_path / "course.yaml"))
    monkeypatch.delenv("QVL_OUTPUT_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    return person


@pytest.fixture
def no_model_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail loudly if a refusal that should come before any work loads the weights."""
    import qvl_helpers.model

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded: the check came too late")

    monkeypatch.setattr(qvl_helpers.model, "load_model", forbidden)


@pytest.fixture(scope="module")
def trained_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A learner's project with a finished two-step run (checkpoints at steps 1 and 2)."""
    root = tmp_path_factory.mktemp("project")
    make_seed_dataset(root / "data", n=40)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QVL_CONFIG", str(root / "course.yaml"))
        mp.delenv("QVL_OUTPUT_DIR", raising=False)
        mp.chdir(root)
        (root / "course.yaml").write_text(
            f"model: tiny\ndata: data/{FILE_NAME}\noutput_dir: outputs\n", encoding="utf-8")
        code = main(["train", "--config", PRESET, "--set", "max_steps=2", "--set", "save_steps=1",
                     "--set", "logging_steps=1"])
    assert code == 0
    return root


@pytest.fixture
def project(trained_project: Path, learner: Learner) -> Learner:
    """A copy of the trained project, for a test to break."""
    shutil.rmtree(learner.root / "data")
    for name in ("data", "outputs", "course.yaml"):
        source = trained_project / name
        if source.is_dir():
            shutil.copytree(source, learner.root / name)
        else:
            shutil.copy(source, learner.root / name)
    for record in (learner.root / "outputs").rglob("*.json"):  # as if it had been made here
        text = record.read_text(encoding="utf-8")
        record.write_text(text.replace(str(trained_project), str(learner.root)), encoding="utf-8")
    return learner


def unfinish(run: Path) -> None:
    """Make a finished run look interrupted after its last checkpoint."""
    shutil.rmtree(run / "adapter")
    identity = json.loads((run / "run.json").read_text())
    identity.pop("finished", None)
    (run / "run.json").write_text(json.dumps(identity))


# ----------------------------------------------------------------------------- your data is used


def test_the_preset_trains_on_the_learners_data(learner: Learner) -> None:
    code, out, err = learner.train(flags=("--dry-run",))
    assert code == 0, err
    assert f"data         {learner.data}" in out
    assert "splits       train 32, val 4, test 4" in out
    assert FILE_NAME.removesuffix(".jsonl") in out  # the prepared folder is named after it
    assert not learner.run.exists()  # a dry run trains nothing


def _seed_putting(index: int, split: str, data: Path) -> int:
    records = [json.loads(line) for line in data.read_text(encoding="utf-8").splitlines()]
    hashes = [[file_hash(data.parent / r["image"])] for r in records]
    for seed in range(200):
        names, _ = assign_splits([{"id": r["id"]} for r in records], hashes, 0.1, 0.1, seed)
        if names[index] == split:
            return seed
    raise AssertionError(f"no seed puts sample {index} in {split}")


@pytest.mark.parametrize("split", ["val", "test"])
def test_over_long_sample_outside_train_stops_before_the_first_step(
        learner: Learner, split: str, no_model_loading: None) -> None:
    make_seed_dataset(learner.data.parent, n=40, long_ids=(5,))
    learner.write_course(seed=_seed_putting(5, split, learner.data))
    code, _, err = learner.train()
    one_clear_error(err, code, 1, f"the {split} split", "样本-5", "max_length 256",
                    "on_too_long: drop")
    assert not any(learner.run.glob("checkpoint-*")) and not (learner.run / "adapter").exists()


def test_drop_tolerates_the_same_sample_everywhere(learner: Learner) -> None:
    make_seed_dataset(learner.data.parent, n=40, long_ids=(5,))
    learner.write_course(seed=_seed_putting(5, "val", learner.data), on_too_long="drop")
    code, out, err = learner.train(flags=("--dry-run",))
    assert code == 0, err
    assert "1 sample(s) of the val split exceed max_length and will be skipped" in out


def test_a_damaged_image_is_found_before_training(learner: Learner,
                                                  no_model_loading: None) -> None:
    assert learner.train(flags=("--dry-run",))[0] == 0  # prepares the splits
    victim = learner.data.parent / "pics" / "图片_007.png"
    victim.write_bytes(victim.read_bytes()[:60])  # truncated after the splits were made
    code, _, err = learner.train()
    one_clear_error(err, code, 1, "unreadable_image", "样本-7", "train.jsonl")


def test_the_collator_names_the_sample_of_an_unreadable_image(tmp_path: Path,
                                                              processor: object) -> None:
    from qvl_helpers.collate import make_collator
    from qvl_helpers.errors import DatasetError

    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    record = {"id": "样本-x", "messages": [
        {"role": "user", "content": [{"type": "image", "image": str(bad)},
                                     {"type": "text", "text": "颜色？"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "红色"}]}]}
    with pytest.raises(DatasetError) as info:
        make_collator(processor, max_pixels=12544)([record])
    assert info.value.sample_id == "样本-x" and str(bad) in str(info.value)


# ----------------------------------------------------------------------------- runs are immutable


def test_resuming_a_finished_run_changes_nothing(project: Learner) -> None:
    before = snapshot(project.run)
    code, out, err = project.train("max_steps=2", "save_steps=1", "logging_steps=1",
                                   flags=("--resume",))
    assert code == 0, err
    assert "already finished (2 steps); nothing to do" in out
    assert snapshot(project.run) == before


def test_rerunning_without_resume_is_refused_and_force_makes_a_new_run(project: Learner) -> None:
    before = snapshot(project.run)
    code, _, err = project.train("max_steps=2")
    one_clear_error(err, code, 2, "already exists", "--force")
    assert snapshot(project.run) == before
    code, out, err = project.train("max_steps=1", flags=("--force",))
    assert code == 0, err
    assert "new run named 'tiny_cpu-2'" in out
    assert (project.outputs / "runs" / "tiny_cpu-2" / "adapter").is_dir()
    assert snapshot(project.run) == before


@pytest.mark.parametrize(("change", "words"), [
    (("lr=0.01",), "settings.lr: 0.003 (run) -> 0.01 (now, from --set lr=0.01)"),
    (("max_steps=4",), "settings.max_steps: 2 (run) -> 4"),
    (("max_pixels=6272",), "settings.max_pixels"),
])
def test_resume_refuses_changed_settings(project: Learner, change: tuple[str, ...],
                                         words: str) -> None:
    unfinish(project.run)
    before = snapshot(project.run)
    sets = {"max_steps": "2", "save_steps": "1", "logging_steps": "1"}
    sets.update(item.split("=", 1) for item in change)
    code, _, err = project.train(*(f"{k}={v}" for k, v in sets.items()), flags=("--resume",))
    one_clear_error(err, code, 2, "cannot resume", words, "--force")
    assert snapshot(project.run) == before


def test_resume_refuses_other_data(project: Learner, no_model_loading: None) -> None:
    unfinish(project.run)
    before = snapshot(project.run)
    other = make_seed_dataset(project.root / "other", n=40, start=50)
    code, _, err = project.train(f"data={other}", "max_steps=2", "save_steps=1",
                                 "logging_steps=1", flags=("--resume",))
    one_clear_error(err, code, 2, "cannot resume", f"data: {project.data} (run) -> {other} (now)")
    make_seed_dataset(project.data.parent, n=40, start=100)  # the learner swapped the data
    code, _, err = project.train("max_steps=2", "save_steps=1", "logging_steps=1",
                                 flags=("--resume",))
    one_clear_error(err, code, 2, "cannot resume", f"data: the content of {project.data} changed")
    assert snapshot(project.run) == before
    assert len(list((project.outputs / "data").iterdir())) == 1  # refused before preparing


def test_a_truncated_newest_checkpoint_falls_back_to_the_previous(project: Learner) -> None:
    unfinish(project.run)
    weights = project.run / "checkpoint-2" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # the disk filled up while copying
    code, out, err = project.train("max_steps=2", "save_steps=1", "logging_steps=1",
                                   flags=("--resume",))
    assert code == 0, err
    assert "checkpoint-2 cannot be used (adapter_model.safetensors is 1000 bytes" in out
    assert "Resuming from" in out and "checkpoint-1" in out.split("Resuming from", 1)[1]
    kept = [p for p in project.run.iterdir() if p.name.startswith("corrupt-checkpoint-2")]
    assert len(kept) == 1 and (kept[0] / "adapter_model.safetensors").stat().st_size == 1000
    log = [json.loads(line) for line in (project.run / "train_log.jsonl").read_text().splitlines()]
    marks = [i for i, e in enumerate(log) if e.get("event") == "resume"]
    assert len(marks) == 1 and log[marks[0]]["step"] == 1
    steps = [e["step"] for e in log[marks[0]:] if "loss" in e]
    assert steps == [2]  # step 2 is logged once after the mark, step 1 not again


def test_a_failed_attempts_log_is_kept_apart(learner: Learner) -> None:
    code, _, err = learner.train("lr=1e12", "max_steps=30", "logging_steps=1")
    one_clear_error(err, code, 2, "the loss became")
    failed = (learner.run / "train_log.jsonl").read_text()
    code, _, err = learner.train("max_steps=2", "logging_steps=1")
    assert code == 0, err
    attempts = list(learner.run.glob("train_log.attempt-*.jsonl"))
    assert len(attempts) == 1 and attempts[0].read_text() == failed
    steps = [json.loads(x)["step"] for x in (learner.run / "train_log.jsonl").read_text()
             .splitlines() if "loss" in json.loads(x)]
    assert steps == sorted(set(steps)) and steps[0] == 1


# ----------------------------------------------------------------------------- outputs are safe


def test_eval_refuses_to_write_over_its_inputs(project: Learner) -> None:
    before = snapshot(project.root)
    code, _, err = project.qvl("eval", "--run", project.run, "--out", project.run / "adapter",
                               "--force")
    one_clear_error(err, code, 2, "also an input", str(project.run / "adapter"))
    code, _, err = project.qvl("eval", "--run", project.run, "--out", project.data, "--force")
    one_clear_error(err, code, 2, "cannot create the evaluation folder", str(project.data))
    assert snapshot(project.root) == before


def test_eval_run_needs_nothing_else_and_never_replaces_a_report_unasked(
        project: Learner) -> None:
    code, out, err = project.qvl("eval", "--run", project.run)  # needs no other argument
    assert code == 0, err
    folder = project.outputs / "eval" / "tiny_cpu"
    assert sorted(p.name for p in folder.iterdir()) == [
        "gallery.html", "predictions-base.jsonl", "predictions-prompt.jsonl",
        "predictions-tuned-blank.jsonl", "predictions-tuned.jsonl", "report.json"]
    report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    # The run's own test split, its image limits and its training split for the leakage check.
    assert Path(report["data"]).name == "test.jsonl"
    assert Path(report["train_split"]).name == "train.jsonl"
    assert (report["min_pixels"], report["max_pixels"]) == (3136, 12544)
    assert "base" in out and "tuned-blank" in out and "95%" in out
    before = (folder / "report.json").read_bytes()
    code, _, err = project.qvl("eval", "--run", project.run)
    one_clear_error(err, code, 2, "already exists", "--force")
    assert (folder / "report.json").read_bytes() == before


def test_eval_refuses_data_that_was_trained_on(project: Learner,
                                               no_model_loading: None) -> None:
    (folder,) = (project.outputs / "data").iterdir()
    code, _, err = project.qvl("eval", "--run", project.run, "--data", folder / "train.jsonl")
    one_clear_error(err, code, 1, "also appear in the training split", "--allow-overlap")
    assert not (project.outputs / "eval" / "tiny_cpu" / "report.json").exists()


def test_a_full_disk_leaves_the_old_report_intact(project: Learner,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    report = project.root / "eval" / "report.json"
    report.parent.mkdir()
    report.write_text('{"earlier": true}\n')
    real = Path.replace

    def full(self: Path, target: Path) -> Path:
        if Path(target) == report:  # the new report is written, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device", str(target))
        return real(self, target)

    monkeypatch.setattr(Path, "replace", full)
    code, _, err = project.qvl("eval", "--run", project.run, "--out", report.parent,
                               "--compare", "tuned", "--force")
    one_clear_error(err, code, 2, "the disk is full", str(report))
    assert report.read_text() == '{"earlier": true}\n'
    assert not [p for p in report.parent.iterdir() if p.name.endswith(".tmp")]


def test_an_interrupted_write_keeps_the_previous_file(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from qvl_helpers.outputs import write_text

    target = tmp_path / "report.json"
    target.write_text("old")
    real = Path.write_text

    def half(self: Path, text: str, **kwargs: object) -> int:
        real(self, text[:3], **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_text", half)
    with pytest.raises(OSError):
        write_text(target, "a much longer new text")
    monkeypatch.undo()
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]  # no temporary file left


def test_other_data_never_replaces_earlier_splits(learner: Learner) -> None:
    assert learner.train(flags=("--dry-run",))[0] == 0
    (first,) = (learner.outputs / "data").iterdir()
    before = snapshot(first)
    other = learner.root / "other"
    make_seed_dataset(other, n=30, start=200)
    learner.write_course(seed=0)
    code, _, err = learner.train(f"data={other / FILE_NAME}", flags=("--dry-run",))
    assert code == 0, err
    assert len(list((learner.outputs / "data").iterdir())) == 2
    assert snapshot(first) == before


def test_check_tokens_and_split_refuse_to_overwrite_inputs(learner: Learner) -> None:
    before = learner.data.read_bytes()
    code, _, err = learner.qvl("data", "check", learner.data, "--json", learner.data)
    one_clear_error(err, code, 2, "also an input")
    train = learner.root / "train.jsonl"
    shutil.copy(learner.data, train)
    code, _, err = learner.qvl("data", "split", train, "--out-dir", learner.root,
                               "--image-root", learner.data.parent)
    one_clear_error(err, code, 2, "also an input")
    assert learner.data.read_bytes() == before and train.read_bytes() == before
    existing = learner.root / "tokens.json"
    existing.write_text("mine")
    code, _, err = learner.qvl("tokens", learner.data, "--json", existing)
    one_clear_error(err, code, 2, "already exists")
    assert existing.read_text() == "mine"


# ----------------------------------------------------------------------------- no silent wrong answers


def _broken_adapter(source: Path, target: Path, how: str) -> Path:
    from safetensors.torch import load_file, save_file

    shutil.copytree(source, target)
    weights = target / "adapter_model.safetensors"
    tensors = load_file(str(weights))
    if how == "names":  # saved under module names this model does not have
        tensors = {k.replace("layers.", "blocks_of_another_model."): v for k, v in tensors.items()}
    elif how == "shapes":  # the same names with another rank: another model's adapter
        tensors = {k: v[:, :2].contiguous() if "lora_B" in k else v[:2].contiguous()
                   for k, v in tensors.items()}
    save_file(tensors, str(weights), metadata={"format": "pt"})
    return target


@pytest.mark.parametrize(("how", "words"), [
    ("names", "find no module in this model"),
    ("shapes", "does not fit this model"),
])
def test_an_adapter_that_does_not_fit_is_refused(project: Learner, how: str, words: str) -> None:
    adapter = _broken_adapter(project.run / "adapter", project.root / f"adapter-{how}", how)
    code, _, err = project.qvl("eval", "--run", project.run, "--adapter", adapter,
                               "--out", project.root / "r")
    one_clear_error(err, code, 2, words)
    assert not (project.root / "r" / "report.json").exists()


@pytest.mark.parametrize(("breakage", "words"), [
    ("missing", "does not exist"),
    ("empty", "no adapter_config.json"),
    ("bad json", "adapter_config.json is unreadable"),
    ("no weights", "no adapter_model.safetensors"),
])
def test_a_broken_adapter_folder_is_one_line(project: Learner, breakage: str,
                                             words: str, no_model_loading: None) -> None:
    adapter = project.root / "my-adapter"
    if breakage != "missing":
        shutil.copytree(project.run / "adapter", adapter)
    if breakage == "empty":
        for item in adapter.iterdir():
            item.unlink()
    if breakage == "bad json":
        (adapter / "adapter_config.json").write_text("{not json")
    if breakage == "no weights":
        (adapter / "adapter_model.safetensors").unlink()
    code, _, err = project.qvl("eval", "--run", project.run, "--adapter", adapter,
                               "--out", project.root / "r")
    one_clear_error(err, code, 2, words)


def test_empty_data_is_not_a_score(learner: Learner) -> None:
    empty = learner.root / "empty.jsonl"
    empty.write_text("")
    code, _, err = learner.qvl("eval", "--model", "tiny", "--data", empty,
                               "--out", learner.root / "r")
    one_clear_error(err, code, 1, "no samples to evaluate")
    assert not (learner.root / "r" / "report.json").exists()


def test_a_tiny_dataset_is_said_to_be_tiny(learner: Learner) -> None:
    make_seed_dataset(learner.data.parent, n=1)
    code, out, err = learner.train(flags=("--dry-run",))
    assert code == 0, err
    assert "the val split is empty (1 record in all)" in out
    assert "the test split is empty (1 record in all)" in out
    (prepared,) = (learner.outputs / "data").iterdir()
    code, _, err = learner.qvl("eval", "--model", "tiny", "--data", prepared / "test.jsonl",
                               "--out", learner.root / "r")
    one_clear_error(err, code, 1, "no samples to evaluate")


def test_small_test_split_warns_that_scores_are_rough(learner: Learner) -> None:
    code, out, _ = learner.train(flags=("--dry-run",))
    assert code == 0 and "the test split has only 4 sample(s)" in out


@pytest.mark.parametrize("name", ["../../escaped", "/tmp/elsewhere", "a/../../b"])
def test_run_names_stay_inside_outputs(learner: Learner, name: str) -> None:
    code, _, err = learner.train(f"run_name={name}")
    one_clear_error(err, code, 2, "not a plain folder name", f"--set run_name={name}")
    assert not (learner.root.parent / "escaped").exists()
    assert not learner.outputs.exists()


def test_the_tiny_preset_refuses_the_real_model(learner: Learner,
                                               no_model_loading: None) -> None:
    # On a GPU machine, model: auto is the real 3B; the tiny preset's lr 3e-3 would wreck it.
    code, _, err = learner.train("model=Qwen/Qwen2.5-VL-3B-Instruct")
    one_clear_error(err, code, 2, "tuned for the tiny stand-in", "tiny_cpu.yaml:",
                    "set at --set model=Qwen/Qwen2.5-VL-3B-Instruct")


def test_a_lora_pattern_that_matches_nothing_is_refused(learner: Learner,
                                                        no_model_loading: None) -> None:
    code, _, err = learner.train(r"trained=.*\.attention\.query")
    one_clear_error(err, code, 2, "matches no linear layer", r"--set trained=.*\.attention")


# ----------------------------------------------------------------------------- one error path


def test_an_unwritable_output_folder_is_one_line(learner: Learner) -> None:
    blocker = learner.root / "a-file"
    blocker.write_text("not a folder")
    code, _, err = learner.train(f"output_dir={blocker / 'outputs'}")
    one_clear_error(err, code, 2, "cannot create the output folder", str(blocker),
                    "--set output_dir=")


def test_a_missing_model_folder_is_one_line(learner: Learner, no_model_loading: None) -> None:
    code, _, err = learner.train("model=./models/mine")
    one_clear_error(err, code, 2, "the model folder ./models/mine does not exist", "--set model")


def test_a_mistyped_variable_stops_the_command(learner: Learner,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QVL_BATCHSIZE", "2")
    code, _, err = learner.train(flags=("--dry-run",))
    one_clear_error(err, code, 2, "QVL_BATCHSIZE", "QVL_BATCH_SIZE")


def test_bad_batch_size_flag(learner: Learner) -> None:
    code, _, err = learner.qvl("eval", "--model", "tiny", "--data", learner.data,
                               "--out", "r", "--batch-size", "0")
    assert code == 2 and "must be at least 1" in err and "Traceback" not in err


def test_ctrl_c_exits_130(learner: Learner, monkeypatch: pytest.MonkeyPatch) -> None:
    import qvl_helpers.train

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(qvl_helpers.train, "train", interrupted)
    code, _, err = learner.train()
    assert code == 130 and "interrupted" in err and "--resume" in err


def test_an_unexpected_error_is_one_line_unless_debugging(learner: Learner,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import qvl_helpers.train

    def bug(*args: object, **kwargs: object) -> None:
        raise TypeError("something internal")

    monkeypatch.setattr(qvl_helpers.train, "train", bug)
    code, _, err = learner.train()
    assert code == 2 and "QVL_DEBUG=1" in err and "Traceback" not in err
    monkeypatch.setenv("QVL_DEBUG", "1")
    with pytest.raises(TypeError):
        main(["train", "--config", PRESET])


@pytest.mark.parametrize(("size", "code"), [((6000, 28), "extreme_aspect_ratio"),
                                            ((8000, 8000), "image_too_large")])
def test_tokens_refuses_what_the_doctor_refuses(learner: Learner, size: tuple[int, int],
                                                code: str) -> None:
    from PIL import Image

    Image.new("RGB", size, "red").save(learner.data.parent / "pics" / "图片_003.png")
    code_, _, err = learner.qvl("tokens", learner.data, "--model", "tiny")
    one_clear_error(err, code_, 1, code, "样本-3", str(learner.data))


def test_data_check_defaults_to_the_course_data(learner: Learner) -> None:
    code, out, err = learner.qvl("data", "check")
    assert code == 0, err
    assert f"checking {learner.data} (data: in {learner.root / 'course.yaml'}:1)" in out
    assert "OK: 40 records in" in out and "0 errors, 0 warnings" in out
