"""Trust: course.yaml, presets and processes in unusual states.

A YAML file that is not UTF-8, empty or has a key twice; a setting pointing at the wrong kind of
thing; values that contradict each other; two runs of one name at once; a GPU preset on a
machine without a GPU; a command terminated while it has a child process. Each is one clear
message naming the file, line or key and a fix (or, for processes, nothing left behind).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qvl_helpers import ConfigError, load_config
from qvl_helpers.cli import main

REPO = Path(__file__).resolve().parent.parent
PRESETS = REPO / "configs"


def refused(course_yaml: Path, text: bytes | str) -> ConfigError:
    """The error ``load_config`` raises for a course.yaml holding ``text``."""
    write(course_yaml, text)
    with pytest.raises(ConfigError) as info:
        load_config()
    return info.value


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    path.write_bytes(data)
    return path


def one_error_line(capsys: pytest.CaptureFixture[str], code: int, expected: int = 2) -> str:
    err = capsys.readouterr().err
    assert code == expected, err
    assert "Traceback" not in err and "probably a bug" not in err, err
    lines = re.findall(r"qvl [a-z ]+: error: [^\r\n]*", err)
    assert len(lines) == 1 and "Fix:" in lines[0], err
    return lines[0]


# ----------------------------------------------------------------------------- YAML files


def test_not_utf8_names_the_line_not_a_byte_position(clean_env: Path) -> None:
    write(clean_env / "course.yaml", b"model: tiny\nlr: 0.0001\n" +
          "eval_prompt: Réponds en JSON\n".encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_config()
    assert info.value.line == 3 and "course.yaml:3" in str(info.value)
    assert "not UTF-8" in str(info.value) and "0xE9" in str(info.value)
    assert "position" not in str(info.value)
    assert "save the file as UTF-8" in info.value.fix


def test_a_file_saved_as_utf16_is_named_as_such(clean_env: Path) -> None:
    write(clean_env / "course.yaml", "model: tiny\n".encode("utf-16"))
    with pytest.raises(ConfigError, match="saved as UTF-16, not UTF-8"):
        load_config()


def test_a_utf8_bom_is_fine(clean_env: Path) -> None:
    write(clean_env / "course.yaml", "\ufeffmodel: tiny\nrun_name: 试验\n")
    assert load_config().run_name == "试验"


def test_a_control_character_names_its_line(clean_env: Path) -> None:
    write(clean_env / "course.yaml", "model: tiny\nseed: 1\nrun_name: a\x07b\n")
    with pytest.raises(ConfigError) as info:
        load_config()
    assert info.value.line == 3, str(info.value)


@pytest.mark.parametrize("text", ["", "\n\n", "# all commented out\n# model: tiny\n", "---\n"])
def test_an_empty_course_yaml_says_so(clean_env: Path, text: str) -> None:
    write(clean_env / "course.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_config()
    assert "course.yaml is empty" in str(info.value)
    assert "data:" in info.value.fix and "no data file" not in str(info.value)


def test_an_empty_preset_says_so_with_a_fix_for_the_preset(clean_env: Path) -> None:
    write(clean_env / "course.yaml", "model: tiny\n")
    preset = write(clean_env / "mine.yaml", "# TODO\n")
    with pytest.raises(ConfigError) as info:
        load_config(presets=[preset])
    assert "mine.yaml is empty" in str(info.value) and str(preset) in str(info.value)


def test_a_key_written_twice_is_refused_naming_both_lines(clean_env: Path) -> None:
    error = refused(clean_env / "course.yaml", "model: tiny\nlr: 0.0002\nseed: 0\nlr: 0.01\n")
    assert "lr is set twice, on line 2 and on line 4" in str(error)
    assert error.line == 4 and "course.yaml:4" in str(error)


def test_a_key_twice_in_a_preset_names_the_preset(clean_env: Path) -> None:
    preset = write(clean_env / "p.yaml", "max_pixels: 12544\nbatch_size: 2\nmax_pixels: 50176\n")
    with pytest.raises(ConfigError) as info:
        load_config(presets=[preset])
    assert f"{preset}:3" in str(info.value) and "line 1 and on line 3" in str(info.value)


def test_a_key_twice_inside_a_nested_value_is_refused(clean_env: Path) -> None:
    write(clean_env / "course.yaml", "model: tiny\neval_prompt:\n  a: 1\n  a: 2\n")
    with pytest.raises(ConfigError, match="a is set twice, on line 3 and on line 4"):
        load_config()


def test_a_key_twice_through_qvl_train_is_one_clear_error(
        clean_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(clean_env / "course.yaml", "model: tiny\nrun_name: a\nrun_name: b\n")
    line = one_error_line(capsys, main(["train", "--config", str(PRESETS / "tiny_cpu.yaml")]))
    assert "run_name is set twice" in line and "course.yaml:3" in line


def test_the_shipped_yaml_files_have_no_duplicate_keys(clean_env: Path) -> None:
    for preset in sorted(PRESETS.glob("*.yaml")):
        load_config(REPO / "course.yaml", presets=[preset])


# ----------------------------------------------------------------------------- wrong kind of thing


def test_data_that_is_a_folder_says_folder_not_missing(clean_env: Path) -> None:
    (clean_env / "pics").mkdir()
    write(clean_env / "course.yaml", "model: tiny\ndata: pics\n")
    with pytest.raises(ConfigError) as info:
        load_config()
    message = str(info.value)
    assert "data points to" in message and "which is a folder; data must be a file" in message
    assert "does not exist" not in message and info.value.line == 2


def test_image_root_that_is_a_file(clean_env: Path) -> None:
    write(clean_env / "a.jsonl", "{}\n")
    write(clean_env / "course.yaml", "model: tiny\ndata: a.jsonl\nimage_root: a.jsonl\n")
    with pytest.raises(ConfigError, match="which is a file; image_root must be a folder") as info:
        load_config()
    assert info.value.line == 3


def test_output_dir_that_is_a_file_through_the_environment(
        clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(clean_env / "outputs.txt", "x")
    monkeypatch.setenv("QVL_OUTPUT_DIR", str(clean_env / "outputs.txt"))
    with pytest.raises(ConfigError, match="environment variable QVL_OUTPUT_DIR.*output_dir must "
                                          "be a folder"):
        load_config()


def test_a_model_that_is_a_file_or_an_adapter(clean_env: Path) -> None:
    write(clean_env / "weights.safetensors", "x")
    write(clean_env / "adapter" / "adapter_config.json", "{}")
    (clean_env / "empty").mkdir()
    for name, words in (("weights.safetensors", "is a file; model must be a folder"),
                        ("adapter", "is a LoRA adapter, not a model"),
                        ("empty", "has no config.json")):
        cfg = load_config(model=str(clean_env / name))
        with pytest.raises(ConfigError, match=words):
            cfg.resolve_model(cuda_available=False)


def test_qvl_config_and_config_flag_naming_a_folder(
        clean_env: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    write(clean_env / "course.yaml", "model: tiny\n")
    line = one_error_line(capsys, main(["config", "--config", str(PRESETS)]))
    assert "this is a folder; the preset must be a YAML file" in line
    monkeypatch.setenv("QVL_CONFIG", str(clean_env))
    with pytest.raises(ConfigError, match="QVL_CONFIG points to a folder") as info:
        load_config()
    assert str(clean_env / "course.yaml") in info.value.fix


# ----------------------------------------------------------------------------- contradictions


def test_min_pixels_flag_above_course_max_pixels_is_refused_by_data_check(
        clean_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(clean_env / "course.yaml", "model: tiny\nmax_pixels: 50176\n")
    data = REPO / "data_samples" / "shapes" / "shapes.jsonl"
    line = one_error_line(capsys, main(["data", "check", str(data), "--min-pixels", "100352"]))
    assert "min_pixels (100352) is above max_pixels (50176)" in line
    assert "--min-pixels 100352" in line and "course.yaml:2" in line


def test_min_above_max_flags_are_refused_by_qvl_tokens(
        clean_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = REPO / "data_samples" / "shapes" / "shapes.jsonl"
    line = one_error_line(capsys, main(["tokens", str(data), "--model", "tiny",
                                        "--min-pixels", "50176", "--max-pixels", "3136"]))
    assert "min_pixels (50176) is above max_pixels (3136)" in line


def test_min_pixels_that_leave_no_room_within_max_length(clean_env: Path) -> None:
    error = refused(clean_env / "course.yaml", "model: tiny\nmin_pixels: 401408\nmax_length: 256\n")
    message = str(error)
    assert "at least 512 visual tokens, and max_length (256) is no more than that" in message
    assert "min_pixels from" in message and "max_length from" in message
    assert error.line == 2  # the first key of the pair, both named with their lines


def test_a_contradiction_across_layers_blames_the_latest(clean_env: Path) -> None:
    write(clean_env / "course.yaml", "model: tiny\nmin_pixels: 50176\n")
    with pytest.raises(ConfigError) as info:
        load_config(presets=[PRESETS / "tiny_cpu.yaml"], sets={"min_pixels": "3136",
                                                              "max_pixels": "1568"})
    assert "--set max_pixels=1568" in str(info.value) and "above max_pixels (1568)" in str(
        info.value)


def test_a_notebook_assignment_that_contradicts_is_refused_and_undone(clean_env: Path) -> None:
    cfg = load_config(min_pixels=3136, max_length=2048)
    with pytest.raises(ConfigError, match="cfg.max_length"):
        cfg.max_length = 3
    assert cfg.max_length == 2048


def test_split_fractions_summing_to_one_are_refused_with_both(
        clean_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = REPO / "data_samples" / "shapes" / "shapes.jsonl"
    line = one_error_line(capsys, main(["data", "split", str(data), "--out-dir",
                                        str(clean_env / "s"), "--val", "0.6", "--test", "0.4"]))
    assert "val (0.6) and test (0.4)" in line
    assert not (clean_env / "s").exists() or not any((clean_env / "s").iterdir())


# ----------------------------------------------------------------------------- two runs at once


def test_a_held_run_refuses_a_second_holder_naming_the_first(tmp_path: Path) -> None:
    from qvl_helpers.runs import LOCK, RunBusyError, hold_run

    folder = tmp_path / "runs" / "exp"
    with hold_run(folder):
        assert (folder / LOCK).is_file()
        with pytest.raises(RunBusyError) as info, hold_run(folder):
            pass
        message = str(info.value)
        assert f"process {os.getpid()}" in message and "'exp' is in use" in message
        assert "--set run_name=" in info.value.fix and "wait until process" in info.value.fix
        assert (folder / LOCK).is_file()  # the refused attempt took nothing from the holder
    assert not folder.exists()  # nothing was written in it: no empty folder left
    with hold_run(folder):  # free again
        pass


def test_the_lock_lets_go_when_the_block_fails_and_keeps_the_run(tmp_path: Path) -> None:
    from qvl_helpers.runs import LOCK, hold_run

    folder = tmp_path / "exp"
    with pytest.raises(ValueError), hold_run(folder):
        write(folder / "run.json", "{}")
        raise ValueError("boom")
    assert (folder / "run.json").is_file() and not (folder / LOCK).exists()
    with hold_run(folder):
        pass


def test_a_lock_left_by_a_dead_process_is_taken_over_and_said(tmp_path: Path) -> None:
    import json
    import socket

    from qvl_helpers.runs import LOCK, hold_run

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    folder = tmp_path / "exp"
    write(folder / LOCK, json.dumps({"pid": int(dead), "host": socket.gethostname(),
                                     "time": 0}))
    said = []
    with hold_run(folder, say=said.append):
        assert json.loads((folder / LOCK).read_text())["pid"] == os.getpid()
    assert len(said) == 1 and f"process {dead}" in said[0] and "ended" in said[0]


def test_a_second_qvl_train_of_the_same_name_says_who_holds_it(
        clean_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from qvl_helpers.runs import hold_run

    write(clean_env / "course.yaml", f"model: tiny\ndata: {REPO}/data_samples/shapes/shapes.jsonl"
                                     "\noutput_dir: out\n")
    with hold_run(clean_env / "out" / "runs" / "tiny_cpu"):
        line = one_error_line(capsys, main(["train", "--config",
                                            str(PRESETS / "tiny_cpu.yaml")]))
    assert "the run 'tiny_cpu' is in use by another training" in line
    assert f"process {os.getpid()}" in line and "Directory not empty" not in line
    assert not (clean_env / "out" / "data").exists()  # refused before any work


# ----------------------------------------------------------------------------- GPU presets


def _choice(cfg):
    return cfg.resolve_model(cuda_available=False)


def test_a_gpu_preset_on_a_cpu_with_model_auto_is_refused(
        clean_env: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    write(clean_env / "course.yaml", f"model: auto\ndata: {REPO}/data_samples/shapes/shapes.jsonl"
                                     "\noutput_dir: out\n")
    line = one_error_line(capsys, main(["train", "--config", str(PRESETS / "t4_qlora.yaml")]))
    assert "t4_qlora.yaml is made for a CUDA GPU and none was found" in line
    assert "tiny random stand-in instead" in line
    assert "configs/tiny_cpu.yaml" in line and "--set model=tiny" in line
    assert not (clean_env / "out" / "runs" / "t4_qlora").exists()


@pytest.mark.parametrize("preset", ["t4_qlora", "24gb_qlora", "40gb_lora", "80gb_lora"])
def test_every_gpu_preset_is_marked_and_says_what_runs_with_model_tiny(
        clean_env: Path, preset: str) -> None:
    from qvl_helpers.env import gpu_preset_mismatch

    cfg = load_config(presets=[PRESETS / f"{preset}.yaml"], model="tiny")
    said = gpu_preset_mismatch(cfg, _choice(cfg), cuda_available=False)
    assert said is not None and not said.refuse
    assert said.sentence.startswith(f"{preset}.yaml is made for a CUDA GPU")
    assert "this trains the tiny random stand-in (model: tiny)" in said.sentence
    assert f"max_pixels {cfg.max_pixels}" in said.sentence
    dtype = {"fp16": "its dtype fp16 needs a GPU, so the CPU computes in float32",
             "bf16": "its dtype bf16 runs on the CPU too, as bf16 mixed precision"}[cfg.dtype]
    assert dtype in said.sentence


def test_no_gpu_sentence_on_a_gpu_or_with_the_cpu_preset(clean_env: Path) -> None:
    from qvl_helpers.env import gpu_preset_mismatch

    gpu_cfg = load_config(presets=[PRESETS / "t4_qlora.yaml"], model="tiny")
    assert gpu_preset_mismatch(gpu_cfg, _choice(gpu_cfg), cuda_available=True) is None
    cpu_cfg = load_config(presets=[PRESETS / "tiny_cpu.yaml"])
    assert gpu_preset_mismatch(cpu_cfg, _choice(cpu_cfg), cuda_available=False) is None


def test_qvl_train_prints_the_sentence_it_goes_on_with(
        clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from qvl_helpers import run_plan as training
    from qvl_helpers.env import gpu_preset_mismatch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = load_config(presets=[PRESETS / "t4_qlora.yaml"], model="tiny")
    said: list[str] = []
    training.check_model(cfg, say=said.append)
    assert said == ["Note: " + gpu_preset_mismatch(cfg, _choice(cfg), False).sentence]


# ----------------------------------------------------------------------------- child processes

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


def _gone(pid: int) -> bool:
    """The process has ended (a zombie waiting for its reaper counts as ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def _wait_gone(pid: int, seconds: float = 10) -> bool:
    end = time.monotonic() + seconds  # a guard against hanging, not a speed assert
    while time.monotonic() < end:
        if _gone(pid):
            return True
        time.sleep(0.02)
    return _gone(pid)


PARENT = """
import sys, time
from qvl_helpers.processes import child_process
with child_process({sleeper!r}) as child:
    open({pidfile!r}, "w").write(str(child.pid))
    time.sleep(60)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL],
                         ids=["SIGTERM", "SIGINT", "SIGKILL"])
def test_a_terminated_parent_leaves_no_child(tmp_path: Path, sig: signal.Signals) -> None:
    pidfile = tmp_path / "child.pid"
    parent = subprocess.Popen([sys.executable, "-c", PARENT.format(sleeper=SLEEPER,
                                                                   pidfile=str(pidfile))],
                              env={**os.environ, "PYTHONPATH": str(REPO)},
                              stderr=subprocess.DEVNULL)
    try:
        end = time.monotonic() + 30
        while not (pidfile.exists() and pidfile.read_text()) and time.monotonic() < end:
            assert parent.poll() is None, "the parent ended before starting its child"
            time.sleep(0.02)
        child = int(pidfile.read_text())
        assert not _gone(child)
        parent.send_signal(sig)
        parent.wait(timeout=20)
        assert _wait_gone(child), f"the child {child} outlived its parent ({sig.name})"
    finally:
        parent.kill()
        if pidfile.exists() and pidfile.read_text():
            with __import__("contextlib").suppress(ProcessLookupError):
                os.kill(int(pidfile.read_text()), signal.SIGKILL)


def test_leaving_the_block_by_an_exception_ends_the_child() -> None:
    from qvl_helpers.processes import child_process

    with pytest.raises(KeyboardInterrupt), child_process(SLEEPER) as child:
        raise KeyboardInterrupt  # Ctrl-C, or a notebook kernel interrupted
    assert child.poll() is not None


def test_run_is_subprocess_run_and_restores_the_sigterm_handler() -> None:
    from qvl_helpers import processes

    before = signal.getsignal(signal.SIGTERM)
    done = processes.run([sys.executable, "-c", "import sys; print('hi'); sys.exit(3)"],
                         capture_output=True, text=True)
    assert (done.returncode, done.stdout.strip()) == (3, "hi")
    assert signal.getsignal(signal.SIGTERM) is before


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=300),
                max_size=8), st.integers(1, 4), st.integers(1, 700))
def test_a_childs_error_is_quoted_as_its_last_lines_on_one_line(
        lines: list[str], wanted: int, limit: int) -> None:
    """What every error sentence quotes of a failed child (pip, the converter, the verifier)."""
    from qvl_helpers.processes import stderr_tail

    text = "\n".join(lines)
    tail = stderr_tail(subprocess.CompletedProcess([], 1, "", text), wanted, limit)
    assert len(tail.splitlines()) == 1  # one line, for one sentence
    last = text.strip().splitlines()
    if not last:
        assert tail == "(no message)"
        return
    assert len(tail) <= limit
    shown = " / ".join(last[-wanted:])
    assert shown.startswith(tail)  # the last lines, in order, from the earliest kept
    if len(shown) <= limit:
        assert tail.endswith(last[-1]) and tail.count(" / ") >= min(wanted, len(last)) - 1


def test_every_child_process_of_the_package_goes_through_the_helper() -> None:
    """Only processes.py starts processes (setup_cell.py runs before the package exists)."""
    found = []
    for path in sorted((REPO / "qvl_helpers").rglob("*.py")):
        if path.name in ("processes.py", "setup_cell.py"):
            continue
        text = path.read_text(encoding="utf-8")
        if re.search(r"subprocess\.(run|Popen|call|check_output|check_call)\(|"
                     r"multiprocessing|os\.fork\(|os\.spawn", text):
            found.append(path.name)
    assert found == [], found
