"""The command line's contract: exit codes and one-line errors (no tracebacks)."""

from __future__ import annotations

from pathlib import Path

import pytest
from limits import HANG_GUARD_S

from qvl_helpers.cli import main


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: qvl" in capsys.readouterr().err


def test_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "tiny" in capsys.readouterr().out


def test_tiny_into_foreign_folder_is_one_line(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "keep.txt").write_text("x")
    assert main(["tiny", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("qvl tiny: error: ") and "Traceback" not in err
    assert str(tmp_path) in err and "Fix:" in err


def test_bad_course_yaml_is_reported(clean_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (clean_env / "course.yaml").write_text("max_pixels: many\n")
    assert main(["env"]) == 2
    err = capsys.readouterr().err
    assert "course.yaml" in err and "max_pixels" in err


def test_stable_api_imports_without_torch() -> None:
    """The design's entry points import as documented, and importing the package is light."""
    import subprocess
    import sys

    code = ("import sys, qvl_helpers; heavy = {'torch', 'transformers'} & set(sys.modules); "
            "print(sorted(heavy)); "
            "from qvl_helpers import load_config, load_records, make_collator; "
            "print(load_records.__module__, make_collator.__module__, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=HANG_GUARD_S)
    assert done.returncode == 0, done.stderr
    first, second = done.stdout.splitlines()
    assert first == "[]"
    assert second == "qvl_helpers.data.load qvl_helpers.collate True"


@pytest.mark.slow
def test_the_command_line_trains_without_the_course_extra(tmp_path: Path) -> None:
    """`pip install qvl-helpers` without [course]: no JupyterLab, ipywidgets or matplotlib. A
    short `qvl train` still works; only loss.png is skipped, with a message."""
    import os
    import subprocess
    import sys

    blocker = tmp_path / "sitecustomize.py"  # makes the course extra's packages unimportable
    blocker.write_text("import sys\nfor name in ('matplotlib', 'ipywidgets', 'jupyterlab'):\n"
                       "    sys.modules[name] = None\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "QVL_OUTPUT_DIR": str(tmp_path / "out")}
    done = subprocess.run([sys.executable, "-m", "qvl_helpers.cli", "train", "--config",
                           str(Path(__file__).resolve().parent.parent / "configs" / "tiny_cpu.yaml"),
                           "--set", "max_steps=2"], capture_output=True, text=True, env=env,
                          timeout=HANG_GUARD_S)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "loss.png was not drawn: matplotlib is not installed" in done.stdout
    run = tmp_path / "out" / "runs" / "tiny_cpu"
    assert (run / "adapter").is_dir() and not (run / "loss.png").exists()


#: Every command that reads the settings, with the arguments it needs besides them.
SETTINGS_COMMANDS = {"env": [], "config": [], "train": [], "eval": ["--run", "r"],
                     "data check": ["d.jsonl"], "tokens": ["d.jsonl"]}


@pytest.mark.parametrize("command", sorted(SETTINGS_COMMANDS))
def test_every_command_that_reads_settings_takes_set(command: str) -> None:
    """One way to override any setting on the command line: ``--set KEY=VALUE``."""
    from qvl_helpers.cli import build_parser

    args = build_parser().parse_args([*command.split(), *SETTINGS_COMMANDS[command],
                                      "--set", "lr=1e-4", "--set", "seed=3"])
    assert args.set == ["lr=1e-4", "seed=3"]


def test_a_flag_that_names_a_setting_is_that_setting_with_its_origin(
        clean_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--max-pixels N`` is ``--set max_pixels=N`` under another name: checked with the other
    settings, and named as the origin the way ``qvl config`` names ``--set``."""
    from qvl_helpers.cli import build_parser
    from qvl_helpers.commands import read_settings
    from qvl_helpers.config import CourseConfig

    parser = build_parser()
    for command in ("eval --run r", "tokens d.jsonl", "data check"):
        keys = parser.parse_args(command.split()).setting_keys
        assert keys and set(keys) <= set(CourseConfig.model_fields), command
    cfg = read_settings(parser.parse_args(["eval", "--run", "r", "--batch-size", "3",
                                       "--set", "eval_task=json", "--seed", "5"]))
    assert (cfg.eval_batch_size, cfg.eval_task, cfg.eval_seed) == (3, "json", 5)
    assert (str(cfg.origin("eval_batch_size")), str(cfg.origin("eval_task"))) == \
        ("--batch-size 3", "--set eval_task=json")
    defaults = read_settings(parser.parse_args(["eval", "--run", "r"]))
    assert defaults.eval_batch_size == CourseConfig.model_fields["eval_batch_size"].default
    for given in (["--set", "max_pixels=3000"], ["--max-pixels", "3000"]):
        assert main(["tokens", "d.jsonl", *given]) == 2
        err = capsys.readouterr().err
        assert "above max_pixels (3000)" in err and f"max_pixels from {' '.join(given)}" in err


@pytest.mark.parametrize("command", ["train", "eval", "chat", "export"])
def test_the_out_of_memory_fix_names_only_what_the_command_has(command: str) -> None:
    """One piece of advice for running out of GPU memory (fixes.out_of_memory_fix), written for
    the command that ran: every flag it names is one of that command's."""
    import re

    from qvl_helpers.cli import build_parser, command_parser
    from qvl_helpers.fixes import out_of_memory_fix, running

    flags = {o for a in command_parser(build_parser(), [command])._actions
             for o in a.option_strings}
    with running(f"qvl {command}", flags):
        fix = out_of_memory_fix()
    named = set(re.findall(r"--[a-z][a-z-]*", fix))
    assert named <= flags, (fix, named - flags)
    assert "max_pixels" in out_of_memory_fix()  # a notebook: course.yaml's settings


@pytest.mark.parametrize(("args", "ignored"), [
    (["eval", "--run", "r", "--set", "max_pixels=50176"], "max_pixels"),
    (["tokens", "d.jsonl", "--set", "lr=1e-4"], "lr"),
    (["data", "check", "--set", "eval_seed=3"], "eval_seed"),
    (["env", "--set", "num_epochs=2"], "num_epochs"),
])
def test_a_set_that_would_change_nothing_is_refused(args: list[str], ignored: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """``--set`` of a setting the command does not read is refused with the ones it reads,
    before anything runs (eval takes a run's image limits from its adapter)."""
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"does not read {ignored}" in err and "Fix: drop it" in err, err


def test_eval_and_tokens_look_for_the_model_in_the_cache_dir_they_were_given(
        clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--set cache_dir=...`` is a setting eval, tokens and data check read (commands.READS):
    the tiny stand-in is looked for there, not in course.yaml's cache folder."""
    from qvl_helpers import tiny

    looked: list[Path] = []

    def stop(choice: object) -> None:  # where the command would build or load the model
        looked.append(Path(choice.path))
        raise KeyboardInterrupt

    monkeypatch.setattr(tiny, "ensure_model", stop)
    data = Path(__file__).resolve().parent.parent / "data_samples" / "shapes" / "shapes.jsonl"
    cache = clean_env / "缓存"
    for args in (["eval", "--model", "tiny", "--data", str(data), "--out", "e"],
                 ["tokens", str(data), "--model", "tiny"],
                 ["data", "check", str(data), "--model", "tiny"]):
        looked.clear()
        main([*args, "--set", f"cache_dir={cache}"])
        assert [p.parent for p in looked] == [cache], args
