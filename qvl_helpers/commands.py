"""What each ``qvl`` command does, one function a command (``cmd_NAME(args) -> exit status``);
:mod:`~qvl_helpers.cli` parses the command line and turns every failure into one line.

Every command that reads the settings does it through :func:`read_settings` (course.yaml, the
preset, ``QVL_*`` variables, ``--set`` and the flags that name a setting, each value with its
origin).
Each function imports what it needs when it runs, so ``qvl --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import DatasetError, count
from .fixes import setting_flag

if TYPE_CHECKING:  # nothing heavy before a command runs
    from .config import CourseConfig
    from .export import ExportRequest


def cmd_env(args: argparse.Namespace) -> int:
    from .env import run_checks

    report = run_checks(read_settings(args))
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

    choice = choose_model(model, "--model", cache_dir=cfg.cache_dir)
    if choice.name in SAME_PROCESSOR:
        return cfg.image_limits.apply_to(real_processor(cfg.cache_dir))
    return load_processor_for(ensure_model(choice), limits=cfg.image_limits)


def cmd_data_check(args: argparse.Namespace) -> int:
    from .data.doctor import check_file
    from .outputs import claim_output

    cfg = read_settings(args)
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


#: The settings a command reads (``qvl train`` and ``qvl config``: all of them). ``--set`` of
#: another key would change nothing there, so it is refused.
READS = {
    "env": {"model", "output_dir", "cache_dir"},
    "eval": {"output_dir", "cache_dir", "eval_task", "eval_prompt", "eval_batch_size",
             "eval_quantization", "eval_seed"},
    "check": {"data", "image_root", "cache_dir", "min_pixels", "max_pixels", "max_length"},
    "tokens": {"model", "cache_dir", "min_pixels", "max_pixels", "max_length"},
}


def read_settings(args: argparse.Namespace) -> CourseConfig:
    """The settings a command runs with, the one way every command reads them: course.yaml, the
    preset (``--config``), ``QVL_*`` variables, ``--set KEY=VALUE``, then the command's flags that
    name a setting (the parser lists them in ``setting_keys``); each value keeps its origin (what
    ``qvl config`` shows and errors name).

    Raises:
        ConfigError: a ``--set`` of a setting the command does not read (it would change nothing).
    """
    from .config import load_config, parse_set
    from .errors import ConfigError

    sets = parse_set(getattr(args, "set", []))
    reads = READS.get(getattr(args, "data_command", None) or args.command)
    if reads is not None and (ignored := sorted(set(sets) - reads)):
        command = " ".join(n for n in ("qvl", args.command, getattr(args, "data_command", None)) if n)
        raise ConfigError(f"{command} does not read {', '.join(ignored)}: --set "
                          f"{ignored[0]}=... would change nothing here.",
                          fix=f"drop it; {command} reads {', '.join(sorted(reads))}"
                              + (" (a run's image limits come with its adapter)"
                                 if args.command == "eval" else "") + ".")
    flags = {key: (setting_flag(key), value) for key in getattr(args, "setting_keys", ())
             if (value := getattr(args, key, None)) is not None}
    preset = getattr(args, "config", None)
    return load_config(presets=[preset] if preset else [], sets=sets, flags=flags)


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

    cfg = read_settings(args)
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
    cfg = read_settings(args)
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
    train(read_settings(args), resume=args.resume, force=args.force, dry_run=args.dry_run,
          time_steps=3 if args.time else 0)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluate import EvalRequest, eval_settings, evaluate, format_report, plan_for_run
    from .runs import Outputs

    cfg = read_settings(args)
    given = {"model": args.model, "adapter": args.adapter, "data": args.data,
             "image_root": args.image_root, "train_split": args.train_data,
             "out_dir": args.out}
    given = {k: Path(v) if v is not None and k != "model" else v for k, v in given.items()}
    settings = {"systems": args.compare, "image_ablation": args.image_ablation,
                "metrics": args.metric, "allow_overlap": args.allow_overlap, "force": args.force,
                **eval_settings(cfg)}
    if args.run:
        overrides = {k: v for k, v in given.items() if v is not None and k != "out_dir"}
        out = given["out_dir"]
        if out is None and given["data"] is not None:  # other data: not the held-out report
            name = f"{Path(args.run).name}-{given['data'].stem}"
            out = Outputs.of_run(args.run).folder("eval", name)  # beside the run
        request = plan_for_run(args.run, out, **overrides, **settings)
    else:
        missing = [flag for flag, key in (("--model", "model"), ("--data", "data"))
                   if given[key] is None]
        if missing:
            print(f"qvl eval: error: give --run RUN_DIR, or {' and '.join(missing)}.",
                  file=sys.stderr)
            return 2
        name = f"{Path(str(given['adapter'] or given['model'])).name}-{given['data'].stem}"
        out = given["out_dir"] or Outputs.of(cfg).folder("eval", name)
        request = EvalRequest(**{**given, "out_dir": out}, **settings)
    report = evaluate(request)
    print(format_report(report))
    print(f"\nreport, predictions and gallery written to {request.out_dir}/")
    return 0


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
