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
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import DatasetError, QVLError, count
from .fixes import setting_flag

if TYPE_CHECKING:  # the command line imports nothing heavy before a command runs
    from .config import CourseConfig
    from .export import ExportRequest


def positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def cmd_env(args: argparse.Namespace) -> int:
    from .env import run_checks

    report = run_checks(_settings(args))
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.text())
    return 0 if report.ok else 1


def cmd_tiny(args: argparse.Namespace) -> int:
    from .tiny import build_tiny_model

    out = build_tiny_model(args.out, seed=args.seed)
    print(f"tiny Qwen2.5-VL stand-in written to {out}")
    return 0


def _image_root_note(root: Path, written_to: Path) -> str:
    """Tell the learner which --image-root later steps need, when it is not the file's folder."""
    if root.resolve() == written_to.resolve():
        return ""
    return f"image paths are relative to {root}: pass --image-root {root} to later steps"


def cmd_bundle(args: argparse.Namespace) -> int:
    from .bundle import make_bundle

    print(make_bundle(args.out, with_deps=not args.no_deps, python_version=args.python_version,
                      force=args.force).summary())
    print("Upload it to Colab's files, Google Drive or a Kaggle dataset; every notebook's first "
          "cell finds it there and installs the course.")
    return 0


def cmd_data_convert(args: argparse.Namespace) -> int:
    from .data.split import image_root_for_output
    from .data.writers import convert_file

    src, out = Path(args.input), Path(args.out)
    result = convert_file(src, out, fmt=args.format, image_root=args.image_root, to=args.to,
                          keep_going=args.keep_going, overwrite=args.force)
    for raw in result.failed:
        for code, message in raw.findings:
            sample = f" ({raw.source_id})" if raw.source_id else ""
            print(f"{src}:{raw.line}{sample} [error] {code}: {message}", file=sys.stderr)
    if result.out is None:
        print(f"{len(result.failed)} record(s) cannot be converted; nothing was written. Fix "
              "them, or pass --keep-going to write the others.", file=sys.stderr)
        return 1
    skipped = f" ({len(result.failed)} skipped)" if result.failed else ""
    print(f"wrote {count(result.written, 'record')} to {out}{skipped}")
    root = Path(args.image_root) if args.image_root else src.parent
    note = _image_root_note(image_root_for_output(root, out.parent), out.parent)
    if note:
        print(note)
    return 1 if result.failed else 0


def _processor_for(model: str, cfg: CourseConfig) -> object:
    """The processor of the model named by a ``--model`` flag, resizing into ``cfg``'s image
    limits (as training's does); for Qwen2.5-VL's own hub ids the one built offline
    (:mod:`~qvl_helpers.real_tokenizer`: the same tokenizer and image settings, no download, no
    weights)."""
    from .config import choose_model
    from .inference import load_processor_for
    from .real_tokenizer import SAME_PROCESSOR, real_processor
    from .tiny import ensure_model

    choice = choose_model(model, "--model")
    if choice.name in SAME_PROCESSOR:
        return cfg.image_limits.apply_to(real_processor(cfg.cache_dir))
    return load_processor_for(ensure_model(choice), limits=cfg.image_limits)


def cmd_data_check(args: argparse.Namespace) -> int:
    from .data.doctor import check_file
    from .outputs import claim_output

    cfg = _settings(args)
    if args.data is None:  # the data course.yaml names, with its image root
        from .config import check_path_settings

        args.data = cfg.data or _no_data(cfg)
        check_path_settings(cfg, ("data",) if args.image_root else ("data", "image_root"))
        args.image_root = args.image_root or cfg.image_root
        print(f"checking {args.data} (data: in {cfg.origin('data')})")
    if args.json:
        claim_output(args.json, inputs=[args.data], force=args.force)
    processor = _processor_for(args.model, cfg) if args.model else None
    report = check_file(args.data, image_root=args.image_root, fmt=args.format,
                        processor=processor, max_length=cfg.max_length,
                        progress=sys.stderr.isatty())
    print(report.text(limit=args.limit))
    if args.json:
        print(f"report written to {report.save_json(args.json)}")
    return 0 if report.ok else 1


#: The flags that name a course.yaml setting, each ``--set KEY=VALUE`` spelled as a flag (the
#: parser stores each under its key); commands take them only where they matter.
SETTING_KEYS = ("max_length", "min_pixels", "max_pixels", "eval_task", "eval_prompt",
                "eval_batch_size", "eval_quantization", "seed")


def _settings(args: argparse.Namespace) -> CourseConfig:
    """The settings a command runs with, the one way every command reads them: course.yaml, the
    preset (``--config``), ``QVL_*`` variables, ``--set KEY=VALUE``, then the command's flags that
    name a setting; each value keeps its origin (what ``qvl config`` shows and errors name)."""
    from .config import load_config, parse_set

    flags = {key: (setting_flag(key), value) for key in SETTING_KEYS
             if (value := getattr(args, key, None)) is not None}
    preset = getattr(args, "config", None)
    return load_config(presets=[preset] if preset else [], sets=parse_set(getattr(args, "set", [])),
                       flags=flags)


def _no_data(cfg: object) -> None:
    from .errors import ConfigError

    raise ConfigError("no data file was given, and course.yaml names none.",
                      file=getattr(cfg, "source", None) or "course.yaml",
                      fix="pass the file (qvl data check FILE) or set data: in course.yaml.")


def cmd_data_split(args: argparse.Namespace) -> int:
    from .data.prepare import split_warnings
    from .data.split import TEST_FRACTION, VAL_FRACTION, split_file

    val = VAL_FRACTION if args.val is None else args.val
    test = TEST_FRACTION if args.test is None else args.test
    result = split_file(args.data, args.out_dir, image_root=args.image_root, val=val, test=test,
                        seed=args.seed, overwrite=args.force, fmt=args.format)

    print(result.text())
    for name, path in result.files.items():
        print(f"  {name}: {path}")
    for warning in split_warnings(result.counts, val, test):
        print("Warning:", warning)
    note = _image_root_note(result.image_root, Path(args.out_dir))
    if note:
        print(note)
    return 0


def cmd_data_samples(args: argparse.Namespace) -> int:
    from .data.samples import make_all

    for name, path in make_all(args.out_dir, overwrite=args.force).items():
        print(f"{name}: {path}")
    return 0


def cmd_tokens(args: argparse.Namespace) -> int:
    from .data import load_records
    from .outputs import claim_output, write_json
    from .tokens import token_budget

    cfg = _settings(args)
    if args.json:
        claim_output(args.json, inputs=[args.data], force=args.force)
    processor = _processor_for(args.model or cfg.model, cfg)
    records = load_records(args.data, image_root=args.image_root)
    try:
        budget = token_budget(records, processor, max_length=cfg.max_length)
    except DatasetError as exc:
        raise exc.at(args.data) from None
    print(budget.text())
    if args.json:
        print(f"report written to {write_json(args.json, budget.to_dict())}")
    return 1 if budget.too_long else 0


def cmd_config(args: argparse.Namespace) -> int:
    cfg = _settings(args)
    print(f"Settings for `qvl train{' --config ' + args.config if args.config else ''}` "
          "(value, and where it came from; later layers win: course.yaml < preset < QVL_* < "
          "--set):")
    print(cfg.describe())
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .train import train

    if args.time and not args.dry_run:
        print("qvl train: error: --time times a few steps for the plan: add --dry-run.",
              file=sys.stderr)
        return 2
    train(_settings(args), resume=args.resume, force=args.force, dry_run=args.dry_run,
          time_steps=3 if args.time else 0)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluate import EvalRequest, evaluate, format_report, plan_for_run
    from .runs import Outputs

    cfg = _settings(args)
    given = {"model": args.model, "adapter": args.adapter, "data": args.data,
             "image_root": args.image_root, "train_split": args.train_data,
             "out_dir": args.out}
    given = {k: Path(v) if v is not None and k != "model" else v for k, v in given.items()}
    settings = {"systems": args.compare, "image_ablation": args.image_ablation,
                "task": cfg.eval_task, "prompt": cfg.eval_prompt, "metrics": args.metric,
                "quantization": cfg.eval_quantization, "batch_size": cfg.eval_batch_size,
                "allow_overlap": args.allow_overlap, "seed": cfg.seed, "force": args.force}
    if args.run:
        overrides = {k: v for k, v in given.items() if v is not None and k != "out_dir"}
        out = given["out_dir"]
        if out is None and given["data"] is not None:  # other data: not the held-out report
            out = Outputs.of(cfg).eval(f"{Path(args.run).name}-{given['data'].stem}")
        request = plan_for_run(args.run, out, **overrides, **settings)
    else:
        missing = [flag for flag, key in (("--model", "model"), ("--data", "data"))
                   if given[key] is None]
        if missing:
            print(f"qvl eval: error: give --run RUN_DIR, or {' and '.join(missing)}.",
                  file=sys.stderr)
            return 2
        name = f"{Path(str(given['adapter'] or given['model'])).name}-{given['data'].stem}"
        out = given["out_dir"] or Outputs.of(cfg).eval(name)
        request = EvalRequest(**{**given, "out_dir": out}, **settings)
    report = evaluate(request)
    print(format_report(report))
    print(f"\nreport, predictions and gallery written to {request.out_dir}/")
    return 0


def non_negative_float(text: str) -> float:
    """argparse type: a number of at least 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {text}")
    return value


def cmd_export(args: argparse.Namespace) -> int:
    from .export import check_export, check_request, export, plan_export

    args.gguf = args.gguf or bool(args.quantize)
    if args.gguf:
        from .gguf_export import converter_dir
        from .llama_run import require_llama_cpp

        require_llama_cpp()  # before anything long: a missing extra is one sentence, exit 2
        converter_dir()      # and llama.cpp's converter, fetched once (needs the index then)
        if not args.verify:
            print("qvl export: error: GGUF files are made only from a verified merge, so "
                  "--gguf and --no-verify do not go together. Fix: drop --no-verify.",
                  file=sys.stderr)
            return 2
    if args.check_only:
        given = [flag for flag, on in (("--force", args.force), ("--no-verify", not args.verify),
                                       ("--temperature", args.temperature != 0.0),
                                       ("--quantize", bool(args.quantize))) if on]
        if given:
            print(f"qvl export: error: --check-only verifies an existing export and writes no "
                  f"new one, so {' and '.join(given)} would do nothing. Fix: drop "
                  f"{' and '.join(given)}, or drop --check-only to export again.",
                  file=sys.stderr)
            return 2
        if args.out is None and args.run is None:
            print("qvl export: error: --check-only needs the export's folder: --out DIR (or "
                  "--run RUN for outputs/export/RUN). Fix: add --out DIR.", file=sys.stderr)
            return 2
        folder = args.out or plan_export(args.run).out_dir
        request = check_request(folder, run=args.run, model=args.model, adapter=args.adapter,
                                data=args.data, n_verify=args.samples)
        if args.gguf:
            from .gguf_export import check_gguf

            check_gguf(Path(folder), request)
        else:
            check_export(request)
        return 0
    request = plan_export(args.run, model=args.model, adapter=args.adapter, out_dir=args.out,
                          verify=args.verify, force=args.force, n_verify=args.samples,
                          temperature=args.temperature, gguf=args.gguf,
                          quantize=tuple(dict.fromkeys(args.quantize)))
    if args.data:
        request.samples = Path(args.data)
    if args.gguf:
        from .gguf_export import is_verified_export, require_samples

        require_samples(request.samples)  # before the merge, not after it
        if not args.force and is_verified_export(request.out_dir):
            return _gguf_for_existing(request, args.temperature)
    folder = export(request)
    print(f"exported to {folder}/ (model card: {folder / 'README.md'})")
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from .chat import Chat, ask, interactive

    ask(args.image, "")  # a wrong path fails before the model loads
    chat = Chat(args.model, args.adapter, args.quantization, args.max_new_tokens)
    if args.question:
        chat.answer(args.image, " ".join(args.question), stream=True)
    else:
        interactive(chat, args.image)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .gguf_export import serve

    serve(Path(args.folder), kind=args.file, host=args.host, port=args.port, n_ctx=args.n_ctx)
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from .hub import push_folder

    url = push_folder(args.folder, args.repo, public=args.public)
    print(f"uploaded {args.folder} to {url} ({'public' if args.public else 'private'})")
    return 0


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


def _gguf_for_existing(request: ExportRequest, temperature: float) -> int:
    """``--gguf`` on an export that exists and is verified: add the GGUF files to it, if it was
    made from the adapter asked for."""
    from .errors import ConfigError
    from .export import EXPORT_INFO
    from .gguf_export import GGUF_FOLDER, add_gguf
    from .outputs import OutputExistsError, read_json

    folder = Path(request.out_dir)
    made_from = (read_json(folder / EXPORT_INFO) or {}).get("adapter")
    if made_from is None or Path(made_from).resolve() != Path(request.adapter).resolve():
        raise ConfigError(f"this export was made from another adapter ({made_from}), not "
                          f"{request.adapter}.", file=folder,
                          fix="choose another --out for this adapter, or pass --force to "
                              "export it again.")
    if temperature:
        raise ConfigError("--temperature changes the merged export, which exists already and "
                          "gets only GGUF files here.", file=folder,
                          fix="drop --temperature, or pass --force to export again.")
    if (folder / GGUF_FOLDER).exists():
        raise OutputExistsError("already holds GGUF files; nothing was overwritten.",
                                file=folder / GGUF_FOLDER,
                                fix="check them with --check-only --gguf, or pass --force to "
                                    "export again with new ones.")
    print(f"{folder} is a verified export: adding GGUF files to it (--force exports again).")
    add_gguf(folder, request)
    print(f"GGUF files in {folder / GGUF_FOLDER}/ (how to run them: {folder / 'README.md'})")
    return 0


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
    _run_flags(p, run="its model, adapter, test split, image root and image limits; other "
                      "flags override", data="a JSONL file (prepared splits know their image root)")
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
    _setting_flag(p, "seed", type=int, help="seed of the bootstrap intervals")
    p.set_defaults(func=cmd_eval)


def _set_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any course.yaml setting (repeatable), e.g. --set lr=1e-4")


def _setting_flag(p: argparse.ArgumentParser, key: str, **kwargs: Any) -> None:
    """A flag that is ``--set KEY=VALUE`` under its own name (its default: course.yaml's)."""
    help_text = kwargs.pop("help", "")
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
