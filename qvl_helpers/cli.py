"""The ``qvl`` command line: the course's steps for scripts, CI and several GPUs.

argparse does the parsing. Every command returns an exit status: 0 success, 1 the input has
problems (reported), 2 the command could not run, 130 interrupted (Ctrl-C). Every failure ends
in one or two lines on stderr naming what, where and the fix: a
:class:`~qvl_helpers.errors.QVLError` as it is, a file-system error (missing file, permission,
full disk) with its path, anything else as a likely bug. ``QVL_DEBUG=1`` shows the traceback.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .commands import (
    cmd_bundle,
    cmd_chat,
    cmd_config,
    cmd_data_check,
    cmd_data_convert,
    cmd_data_samples,
    cmd_data_split,
    cmd_env,
    cmd_eval,
    cmd_export,
    cmd_push,
    cmd_serve,
    cmd_tiny,
    cmd_tokens,
    cmd_train,
)
from .errors import QVLError
from .fixes import setting_flag


def non_negative_float(text: str) -> float:
    """argparse type: a number of at least 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {text}")
    return value


def positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``qvl`` parser: one sub-command per course step (see the design's CLI contract)."""
    parser = argparse.ArgumentParser(
        prog="qvl", description="Fine-tune Qwen2.5-VL on your own data: the course's steps.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_setup_commands(sub)
    _add_training_commands(sub)
    _add_data_commands(sub)
    return parser


def _add_setup_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("env", help="check this machine and recommend settings")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    _set_flag(p)
    p.set_defaults(func=cmd_env)

    p = sub.add_parser("tiny", help="build the tiny random stand-in model (offline)")
    p.add_argument("--out", required=True, help="folder to write the model to")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same files)")
    p.set_defaults(func=cmd_tiny)

    p = sub.add_parser("bundle", help="the course in one archive for Colab, Kaggle or an "
                                      "offline room (wheels included)")
    p.add_argument("--out", default="qvl-course.zip",
                   help="archive to write (default qvl-course.zip; the notebooks look for "
                        "qvl-course*.zip)")
    p.add_argument("--no-deps", action="store_true",
                   help="only the course's own wheel: the session installs the rest from PyPI")
    p.add_argument("--python-version", metavar="X.Y",
                   help="download the dependencies for this Python (Colab's, e.g. 3.12) "
                        "instead of this machine's")
    p.add_argument("--force", action="store_true", help="replace an existing archive")
    p.set_defaults(func=cmd_bundle)


def _add_training_commands(sub: argparse._SubParsersAction) -> None:
    for name, func, text in (
            ("config", cmd_config, "show every setting and where it came from"),
            ("train", cmd_train, "fine-tune with LoRA/QLoRA into outputs/runs/NAME")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--config", help="a hardware preset (configs/*.yaml) applied over "
                                        "course.yaml")
        _set_flag(p)
        p.set_defaults(func=func)
    train = p  # the loop's last parser: these switches are for `qvl train` only
    switches = {
        "--resume": "continue the same run from its newest intact checkpoint (refused if its "
                    "data, model or training settings changed)",
        "--force": "where the run would be refused (it exists, finished, or changed), start a "
                   "new run under a free name instead (never in place)",
        "--dry-run": "check everything (settings, data, lengths, LoRA layers, resume) and print "
                     "the plan without training (the data splits are prepared)",
        "--time": "with --dry-run: time a few training steps here (the model is loaded; nothing "
                  "is saved) and estimate how long the run takes",
    }
    for flag, text in switches.items():
        train.add_argument(flag, action="store_true", help=text)

    _add_eval_command(sub)
    _add_use_commands(sub)


def _run_flags(p: argparse.ArgumentParser, *, run: str, data: str) -> None:
    """--run, or --model/--adapter/--data: what eval and export work on."""
    p.add_argument("--run", help=f"a run folder (outputs/runs/NAME): {run}")
    p.add_argument("--model", help="the base model: tiny, a hub id or a folder")
    p.add_argument("--adapter", help="a LoRA adapter folder (outputs/runs/NAME/adapter)")
    p.add_argument("--data", help=data)


def _add_use_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="merge a run's adapter into a 16-bit model folder, "
                                      "verify it in a fresh process, write a model card")
    _run_flags(p, run="its model, adapter and held-out samples for the verification",
               data="held-out samples for the verification (default with --run: its test "
                    "split; without either, only the files are checked)")
    p.add_argument("--out", help="the model folder to write (default: outputs/export/NAME)")
    p.add_argument("--force", action="store_true", help="replace an existing export")
    p.add_argument("--verify", action=argparse.BooleanOptionalAction, default=True,
                   help="compare the merged folder with base + adapter in a fresh process "
                        "(default: on)")
    p.add_argument("--check-only", action="store_true",
                   help="verify an existing export again, without merging")
    p.add_argument("--samples", type=positive_int, default=4,
                   help="held-out samples the verification compares (default: 4)")
    p.add_argument("--temperature", type=non_negative_float, default=0.0,
                   help="0 (default): greedy generation_config.json; above 0: sampling")
    p.add_argument("--gguf", action="store_true",
                   help="also write llama.cpp's GGUF pair (NAME-f16.gguf, mmproj-NAME-f16.gguf) "
                        "into the export's gguf/ and verify it in llama.cpp (needs the gguf "
                        "extra; with --check-only: verify those files again)")
    p.add_argument("--quantize", action="append", default=[], choices=("Q8_0", "Q4_K_M"),
                   help="with --gguf (implied): also a quantized language model of this type, "
                        "from the f16 file (may repeat)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("chat", help="ask a model about an image (answers stream as they come)")
    p.add_argument("--model", required=True, help="an exported folder, tiny, a hub id or a "
                                                  "base model folder")
    p.add_argument("--adapter", help="a LoRA adapter folder to apply (without merging)")
    p.add_argument("--image", required=True, help="the image to ask about")
    p.add_argument("question", nargs="*", help="the question (none: ask several, one per line)")
    p.add_argument("--quantization", default="none", choices=["none", "4bit", "8bit"])
    p.add_argument("--max-new-tokens", type=positive_int, default=256)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("serve", help="an OpenAI-compatible server on an export's GGUF pair "
                                     "(llama.cpp, CPU or GPU; needs the gguf extra)")
    p.add_argument("folder", help="an export made with --gguf (outputs/export/NAME)")
    p.add_argument("--file", default="f16", help="which language model: f16 (default), or a "
                                                 "quantized one the export has (Q8_0, Q4_K_M)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=positive_int, default=8000)
    p.add_argument("--n-ctx", type=positive_int, default=4096, help="context length in tokens")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("push", help="upload an export or an adapter to the Hugging Face Hub "
                                    "(private unless --public; token from HF_TOKEN)")
    p.add_argument("folder")
    p.add_argument("--repo", required=True, help="your-user-name/model-name")
    p.add_argument("--public", action="store_true", help="make the repository public")
    p.set_defaults(func=cmd_push)


def _add_eval_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="compare base, prompted and fine-tuned answers on held-out "
                                    "data: task metrics with intervals, and a failure gallery")
    _run_flags(p, run="its model, adapter, test split and image root (the image limits come with "
                      "its adapter); --model, --adapter and --data override",
               data="a JSONL file (prepared splits know their image root)")
    p.add_argument("--image-root")
    p.add_argument("--out", help="the evaluation folder (default: outputs/eval/RUN, "
                                 "outputs/eval/RUN-DATA with --data, outputs/eval/MODEL-DATA "
                                 "without --run): report.json, predictions-SYSTEM.jsonl, "
                                 "gallery.html")
    p.add_argument("--force", action="store_true", help="replace an existing evaluation")
    p.add_argument("--compare", metavar="SYSTEMS",
                   help="comma-separated systems: base, prompt (base + a task prompt), tuned, "
                        "each optionally -blank (images blanked); default: all that apply")
    p.add_argument("--image-ablation", choices=["blank"],
                   help="also evaluate the last system with every image replaced by a blank one")
    _set_flag(p)
    _setting_flag(p, "eval_task", choices=["auto", "short", "json", "reading", "description"],
                  help="which metrics apply (auto: detected from the answers)")
    _setting_flag(p, "eval_prompt", help="the prompt system's system prompt (null: one derived "
                                         "from the answers)")
    p.add_argument("--metric", action="append", default=[], metavar="NAME",
                   help="an extra metric: a registered name or module:function (repeatable)")
    p.add_argument("--train-data", help="a training file to check the evaluation data against "
                                        "(with --run: the run's training split)")
    p.add_argument("--allow-overlap", action="store_true",
                   help="evaluate even if samples or images are shared with the training split "
                        "(recorded in the report)")
    _setting_flag(p, "eval_quantization", choices=["none", "4bit", "8bit"],
                  help="how to load the base model (none: 16-bit)")
    _setting_flag(p, "eval_batch_size", type=positive_int, help="samples generated together")
    _setting_flag(p, "eval_seed", type=int, help="seed of the bootstrap intervals")
    p.set_defaults(func=cmd_eval)


def _set_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any course.yaml setting (repeatable), e.g. --set lr=1e-4")


def _setting_flag(p: argparse.ArgumentParser, key: str, **kwargs: Any) -> None:
    """A flag that is ``--set KEY=VALUE`` under its own name (its default: course.yaml's)."""
    help_text = kwargs.pop("help", "")
    p.set_defaults(setting_keys=(*(p.get_default("setting_keys") or ()), key))
    p.add_argument(setting_flag(key), dest=key, default=None,
                   help=f"{help_text + '; ' if help_text else ''}the setting {key} (default: "
                        "course.yaml's)", **kwargs)


def _budget_flags(p: argparse.ArgumentParser) -> None:
    """``--set`` and the token-budget flags, for the commands that measure samples."""
    _set_flag(p)
    _setting_flag(p, "max_length", type=positive_int, help="token limit per sample")
    _setting_flag(p, "min_pixels", type=positive_int)
    _setting_flag(p, "max_pixels", type=positive_int)


def _add_data_commands(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="convert, check, split your data; make sample data")
    dsub = data.add_subparsers(dest="data_command", metavar="STEP", required=True)
    formats = ["auto", "seed", "official", "sharegpt", "messages", "csv"]

    p = dsub.add_parser("convert", help="any accepted layout -> canonical JSONL")
    p.add_argument("input")
    p.add_argument("--out", required=True, help="output file (.jsonl; .json with --to official)")
    p.add_argument("--format", default="auto", choices=formats)
    p.add_argument("--image-root", help="folder image paths are relative to (default: the "
                                        "input's folder)")
    p.add_argument("--to", default="canonical", choices=["canonical", "official"],
                   help="official: Qwen's fine-tuning layout (<image>, human/gpt), a JSON array")
    p.add_argument("--keep-going", action="store_true",
                   help="write the convertible records even if some cannot be converted")
    p.add_argument("--force", action="store_true", help="replace an existing output file")
    p.set_defaults(func=cmd_data_convert)

    p = dsub.add_parser("check", help="the data doctor: report every problem")
    p.add_argument("data", nargs="?", help="the data file (default: data: in course.yaml)")
    p.add_argument("--image-root")
    p.add_argument("--format", default="auto", choices=formats)
    p.add_argument("--model", help="tiny, a hub id or a folder: also count tokens (too_long)")
    _budget_flags(p)
    p.add_argument("--json", metavar="REPORT.json", help="write the full report")
    p.add_argument("--force", action="store_true", help="replace an existing --json report")
    p.add_argument("--limit", type=positive_int, default=50, help="problems to print (default 50)")
    p.set_defaults(func=cmd_data_check)

    p = dsub.add_parser("split", help="train/val/test without image leakage")
    p.add_argument("data")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--image-root")
    p.add_argument("--format", default="auto", choices=formats)
    p.add_argument("--val", type=float, help="share of the records held out for validation "
                   "(left out: the course's default, as qvl train splits)")
    p.add_argument("--test", type=float, help="share held out for the test split (left out: the "
                   "course's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="replace existing split files")
    p.set_defaults(func=cmd_data_split)

    p = sub.add_parser("tokens", help="token budget: text + visual tokens per sample")
    p.add_argument("data")
    p.add_argument("--model", help="tiny, a hub id or a folder (default: course.yaml)")
    p.add_argument("--image-root")
    _budget_flags(p)
    p.add_argument("--json", metavar="REPORT.json", help="write every sample's lengths")
    p.add_argument("--force", action="store_true", help="replace an existing --json report")
    p.set_defaults(func=cmd_tokens)

    p = dsub.add_parser("samples", help="generate the bundled sample datasets")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--force", action="store_true", help="regenerate existing sample sets")
    p.set_defaults(func=cmd_data_samples)


def command_parser(parser: argparse.ArgumentParser, names: Sequence[str]
                   ) -> argparse.ArgumentParser:
    """The sub-parser of the command ``names`` (``["data", "check"]``)."""
    for name in names:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``qvl`` with ``argv`` (default: the process arguments); return the exit status."""
    from .fixes import running

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad arguments, 0 on --help
        return int(exc.code or 0)
    names = [n for n in (args.command, getattr(args, "data_command", None)) if n]
    command = "qvl " + " ".join(names)
    flags = {o for a in command_parser(parser, names)._actions for o in a.option_strings}
    with running(command, flags):  # fixes name this command's flags (see fixes.py)
        return _run(args, command)


def _run(args: argparse.Namespace, command: str) -> int:
    """Run the parsed command; every failure becomes one line on stderr and an exit status."""
    func: Callable[[argparse.Namespace], int] = args.func
    if os.environ.get("QVL_DEBUG") == "1":
        return func(args)
    try:
        return func(args)
    except QVLError as exc:
        print(f"{command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        kept = {"qvl train": "Finished checkpoints are kept; the run continues with --resume.",
                "qvl export": "An earlier export is untouched; nothing half-written is left."}
        print(f"{command}: interrupted. " + kept.get(command, "Finished files are kept."),
              file=sys.stderr)
        return 130
    except OSError as exc:
        print(f"{command}: error: {describe_os_error(exc, command)}", file=sys.stderr)
        return 2
    except ImportError as exc:
        print(f"{command}: error: the package {exc.name or exc} is missing. Fix: install the "
              "course's tested versions (bash scripts/lab.sh, or pip install -e . -c "
              "constraints.txt).", file=sys.stderr)
        return 2
    except Exception as exc:  # the last resort: one line, not a traceback
        from .outputs import is_disk_full

        if is_disk_full(exc):  # a library's own error around a full disk (safetensors, torch)
            print(f"{command}: error: {describe_os_error(exc, command)}", file=sys.stderr)
            return 2
        if type(exc).__name__ == "OutOfMemoryError":  # torch.cuda's, without importing torch
            from .fixes import out_of_memory_fix

            print(f"{command}: error: the GPU ran out of memory. Fix: {out_of_memory_fix()}.",
                  file=sys.stderr)
            return 2
        print(f"{command}: error: unexpected {type(exc).__name__}: {exc}. This is probably a bug "
              "in qvl: run again with QVL_DEBUG=1 to see the traceback, and report it.",
              file=sys.stderr)
        return 2


def describe_os_error(exc: BaseException, command: str = "qvl") -> str:
    """A file-system error (or a library's error around a full disk) as what, where and the
    fix that suits ``command``."""
    from .images import shorten
    from .outputs import disk_full_message, is_disk_full

    filename = getattr(exc, "filename", None)
    where = shorten(str(filename)) if filename else "a file"
    if is_disk_full(exc):
        kept = ("finished checkpoints are kept, and the run continues with qvl train --resume"
                if command == "qvl train" else "run the same command again")
        if not filename:  # a library's error that names no file: say so, never guess a folder
            return (f"the disk is full (the error named no file). Fix: free space where the "
                    f"output folder is (or choose another one), then {kept}.")
        return (f"{disk_full_message(Path(filename).parent)} (while writing {where}). Fix: "
                f"free space there (or choose another output folder), then {kept}.")
    if getattr(exc, "errno", None) in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{where}: permission denied. Fix: choose a folder you can write, or fix permissions."
    if isinstance(exc, FileNotFoundError):
        return f"{where} does not exist. Fix: check the path."
    return f"{where}: {getattr(exc, 'strerror', None) or exc}. Fix: check the path and the disk."


if __name__ == "__main__":
    sys.exit(main())
