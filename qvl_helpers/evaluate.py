"""Evaluation (``qvl eval``): several systems on one held-out split, task metrics with intervals.

A *system* is a way of answering the split's questions:

- ``base``: the base model as it is;
- ``prompt``: the base model with a task prompt (``eval_prompt`` in ``course.yaml``, or one
  derived from the training answers to the scored question that states the answer format, see
  :func:`prompt_examples`): did fine-tuning beat a good prompt?
- ``tuned``: the base model with the run's LoRA adapter;
- ``NAME-blank``: any of them with every image replaced by a white one of the same size. A
  fine-tuned model that still scores well without images learned to guess from the text.

The model is loaded once; base systems run with the adapter switched off (PEFT's
``disable_adapter``), not reloaded. Generation is greedy and batched with left padding, with the
image limits the run was trained with and ``max_new_tokens`` from the longest reference.
Metrics come from :mod:`qvl_helpers.metrics` (by task), each with a bootstrap interval; each
comparison is a paired bootstrap interval of the difference, and a system is only called better
when that interval excludes zero (and, for right/wrong scores, the exact McNemar test agrees);
each comparison carries its status and reason (:func:`qvl_helpers.verdicts.judge`), which the
notebooks and :func:`format_report` show as they are. Evaluation scores each sample's last turn
(:func:`~qvl_helpers.data.records.scored_turn`); the turns before it are the conversation.
Before any model loads, the split is checked against the run's training split for shared
images (by content) and identical samples.

Outputs (``outputs/eval/NAME/``): ``report.json`` (everything above, with versions, timings and
the data's hash), ``predictions-SYSTEM.jsonl`` per system, and ``gallery.html``
(:mod:`qvl_helpers.gallery`).
"""

from __future__ import annotations

import datetime as _dt
import json
import time
from collections import Counter
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import answers as A
from . import metrics as M
from . import verdicts as V
from .data.records import Record, scored_turn
from .errors import ConfigError, DatasetError, count
from .inference import ABLATIONS, answer_budget, generate_answers, load_for_generation
from .overlap import check_overlap
from .prompts import prompt_summary, task_prompts, with_system_prompt
from .qwen import ImageLimits

BASE_SYSTEMS = ("base", "prompt", "tuned")
REPORT, GALLERY = "report.json", "gallery.html"


def predictions_file(system: str) -> str:
    return f"predictions-{system}.jsonl"


# --------------------------------------------------------------------------- systems

@dataclass(frozen=True)
class System:
    """One way of answering: with or without the adapter, the task prompt, blank images."""

    name: str
    adapter: bool
    prompt: bool
    ablation: str | None = None


def parse_systems(names: str | Sequence[str] | None, *, has_adapter: bool,
                  image_ablation: str | None = None) -> list[System]:
    """Systems from ``"base,prompt,tuned"`` (``NAME-blank`` for an ablation). ``None`` means all
    that apply: base, prompt, and with an adapter tuned and tuned-blank. ``image_ablation`` adds
    the ablation of the last system named (tuned, when it is named).

    Raises:
        ConfigError: an unknown system, or ``tuned`` without an adapter.
    """
    if names is None:
        names = ["base", "prompt"] + (["tuned", "tuned-blank"] if has_adapter else [])
    elif isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    names = list(dict.fromkeys(names))
    if image_ablation and names:
        plain = [n for n in names if "-" not in n]
        last = "tuned" if "tuned" in plain else (plain or names)[-1].split("-")[0]
        names.append(f"{last}-{image_ablation}")
    systems = []
    for name in dict.fromkeys(names):
        base, _, ablation = name.partition("-")
        if base not in BASE_SYSTEMS or (ablation and ablation not in ABLATIONS):
            raise ConfigError(f"{name!r} is not a system to evaluate.",
                              fix=f"use {', '.join(BASE_SYSTEMS)}, each optionally with "
                                  f"-{'/-'.join(ABLATIONS)} (e.g. tuned-blank).")
        if base == "tuned" and not has_adapter:
            raise ConfigError("the system 'tuned' needs an adapter.",
                              fix="pass --run outputs/runs/NAME (or --adapter DIR), or leave "
                                  "tuned out of --compare.")
        systems.append(System(name, base == "tuned", base == "prompt", ablation or None))
    if not systems:
        raise ConfigError("no system to evaluate.", fix="use --compare base,prompt,tuned.")
    return systems


# --------------------------------------------------------------------------- generation

# --------------------------------------------------------------------------- scoring

@dataclass
class Scores:
    """Per-sample metric values of every system (``values[system][metric]``)."""

    metrics: list[M.Metric]
    values: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, system: str, predictions: Sequence[str], references: Sequence[str],
            ids: Sequence[str]) -> None:
        self.values[system] = {m.name: M.score_samples(m, predictions, references, ids)
                               for m in self.metrics}

    def sample_rows(self, system: str) -> list[dict[str, float]]:
        """Each sample's metric values as plain numbers."""
        columns = {m.name: [m.sample_value(v) for v in self.values[system][m.name]]
                   for m in self.metrics}
        n = len(next(iter(columns.values())))
        return [{name: values[i] for name, values in columns.items()} for i in range(n)]


def comparison_pairs(systems: Sequence[System]) -> list[tuple[str, str]]:
    """(first, second) pairs to compare: the lead system (tuned if present, else the last plain
    one) against every other, and each ablation against its own system."""
    names = [s.name for s in systems]
    plain = [s.name for s in systems if s.ablation is None] or names
    lead = "tuned" if "tuned" in names else plain[-1]
    pairs = [(lead, other) for other in names if other != lead]
    for s in systems:
        source = s.name.split("-")[0]
        if s.ablation and source in names and source != lead:
            pairs.append((source, s.name))
    return pairs


def compare(scores: Scores, systems: Sequence[System], n: int, seed: int, *,
            resamples: int = V.RESAMPLES) -> tuple[list, list]:
    """The comparisons of the headline metric (each a :class:`~qvl_helpers.verdicts.Judgement`
    as a dict: interval, status, reason, verdict, samples needed) and the warnings a reader of
    the numbers needs. Every sentence comes from :mod:`qvl_helpers.metrics`."""
    headline = scores.metrics[0]
    comparisons, warnings = [], []
    for first, second in comparison_pairs(systems):
        a, b = scores.values[first][headline.name], scores.values[second][headline.name]
        judged = V.judge(headline, first, second, a, b, resamples=resamples, seed=seed)
        comparisons.append(judged.as_dict())
        if judged.warning:
            warnings.append(judged.warning)
    for system, values in scores.values.items():
        hits = values[headline.name]
        if not headline.counts and set(np.unique(hits)) <= {0.0, 1.0} and \
                len(set(hits)) == 1:  # all right or all wrong: no resample can vary it
            warnings.append(V.constant_score_warning(system, bool(hits[0]), n))
    small = V.small_test_warning(n)
    if small:
        warnings.insert(0, small)
    return comparisons, warnings


def system_summary(scores: Scores, system: System, seed: int) -> dict[str, Any]:
    values = scores.values[system.name]
    return {"adapter": system.adapter, "prompt": system.prompt, "image_ablation": system.ablation,
            "predictions": predictions_file(system.name),
            "metrics": {m.name: V.bootstrap_interval(m, values[m.name], seed=seed).as_dict()
                        for m in scores.metrics}}


# --------------------------------------------------------------------------- the whole thing

@dataclass
class EvalRequest:
    """What to evaluate and how (``qvl eval``'s arguments; :func:`plan_for_run` fills it from a
    run folder)."""

    model: str
    data: Path
    out_dir: Path
    adapter: Path | None = None
    image_root: Path | None = None
    train_split: Path | None = None  # checked for overlap when given
    systems: str | Sequence[str] | None = None
    image_ablation: str | None = None
    task: str = "auto"
    prompt: str | None = None
    metrics: Sequence[str] = ()
    quantization: str = "none"
    batch_size: int = 8
    limits: ImageLimits | None = None  # the processor's own (the run's) unless given
    allow_overlap: bool = False
    seed: int = 0
    cache_dir: Path | None = None  # where the tiny stand-in is kept (None: course.yaml's)
    force: bool = False


def evaluate(request: EvalRequest) -> dict[str, Any]:
    """Evaluate every system of ``request`` on its data; write ``report.json``,
    ``predictions-SYSTEM.jsonl`` and ``gallery.html`` into ``request.out_dir``; return the report.

    Everything that can be checked without the model is checked first: the outputs can be
    written (never replacing a report unless ``force``), the data loads and is not empty, the
    systems and the task make sense, and the split does not overlap the training split.

    Raises:
        ConfigError, OutputExistsError: bad settings, or the outputs exist.
        DatasetError: empty or bad data, or overlap with the training split.
        ModelError: the model or the adapter cannot be loaded, or the adapter does not fit.
    """
    from .config import choose_model
    from .data import load_records
    from .tiny import ensure_model

    if request.batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, not {request.batch_size}.",
                          fix="use --batch-size 8 (or lower if memory is short).")
    systems = parse_systems(request.systems, has_adapter=request.adapter is not None,
                            image_ablation=request.image_ablation)
    _claim_outputs(request, systems)
    records = load_records(request.data, image_root=request.image_root)
    if not records:  # before minutes of model loading
        raise DatasetError("there are no samples to evaluate: a score of nothing would mean "
                           "nothing.", file=request.data, fix="evaluate a file with samples (add "
                                                              "data if the test split is empty).")
    references = [scored_turn(r).answer for r in records]
    task, why = M.resolve_task(request.task, references, [r["id"] for r in records])
    scores = Scores(M.metrics_for(task, request.metrics))
    # The training split, read once: for the leakage check and the derived task prompt.
    trained = load_records(request.train_split) if request.train_split is not None else None
    overlap = check_overlap(records, request.data, request.train_split, request.allow_overlap,
                            trained)
    prompts = task_prompts(request, task, records, trained)

    model_path = ensure_model(choose_model(request.model, "--model", cache_dir=request.cache_dir))
    net, processor = load_for_generation(model_path, request.adapter, request.quantization,
                                         limits=request.limits)
    budget = answer_budget(processor.tokenizer, references)
    answers, timings = {}, {}
    for system in systems:
        start = time.perf_counter()
        answers[system.name] = _answer(net, processor, records, system, prompts, budget,
                                       request.batch_size, adapter_loaded=request.adapter is not None)
        timings[system.name] = time.perf_counter() - start
        scores.add(system.name, answers[system.name], references, [r["id"] for r in records])
    report = _report(request, systems, scores, references, answers, timings, {
        "task": task, "task_reason": why, "overlap": overlap,
        "prompt": prompts[0] if len(set(prompts)) == 1 else None,
        "prompts": prompt_summary(records, prompts),
        **ImageLimits.of(processor).to_dict(), "max_new_tokens": budget})
    _write_outputs(request, report, records, scores, answers, references)
    return report


def _claim_outputs(request: EvalRequest, systems: Sequence[System]) -> None:
    from .outputs import claim_output, ensure_folder, refuse_inputs

    out = Path(request.out_dir)
    inputs = [request.data, request.model, request.adapter, request.train_split]
    refuse_inputs(out, inputs)  # the adapter's own folder, say
    if request.adapter is not None and Path(request.adapter).is_dir():
        inputs += list(Path(request.adapter).iterdir())
    ensure_folder(out, what="evaluation folder")
    claimed = [REPORT, GALLERY] + [predictions_file(s.name) for s in systems]
    for name in claimed:
        claim_output(out / name, inputs=inputs, force=request.force)
    if request.force:  # replacing an evaluation: no predictions of systems it no longer has
        for stale in out.glob(predictions_file("*")):
            if stale.name not in claimed:
                stale.unlink()


def _answer(model: Any, processor: Any, records: Sequence[Record], system: System,
            prompts: Sequence[str], budget: int, batch_size: int, adapter_loaded: bool) -> list[str]:
    asked = [with_system_prompt(r, p) for r, p in zip(records, prompts, strict=True)] \
        if system.prompt else list(records)
    # Base systems run with the LoRA layers switched off (PEFT's context manager): the same
    # loaded weights, no reload.
    switch = model.disable_adapter() if adapter_loaded and not system.adapter else nullcontext()
    with switch:
        return generate_answers(model, processor, asked, batch_size=batch_size,
                                max_new_tokens=budget, image_ablation=system.ablation)


def _versions() -> dict[str, str | None]:
    import platform
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("qvl-helpers", "torch", "transformers", "peft", "bitsandbytes", "rapidfuzz",
                 "sacrebleu"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def _report(request: EvalRequest, systems: Sequence[System], scores: Scores,
            references: Sequence[str], answers: dict[str, list[str]],
            timings: dict[str, float], found: dict[str, Any]) -> dict[str, Any]:
    from .images import file_hash

    n = len(references)
    comparisons, warnings = compare(scores, systems, n, request.seed)
    if found["overlap"]:
        warnings.append(f"{count(len(found['overlap']), 'sample')} overlap the training split "
                        "(allowed with --allow-overlap): their scores measure memory.")
    if request.train_split is None:
        warnings.append("not checked for overlap with a training split (no run given).")
    common = Counter(A.normalise_text(r) for r in references).most_common(1)[0][1]
    report = {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": request.model, "adapter": str(request.adapter) if request.adapter else None,
        "data": str(request.data), "data_sha256": file_hash(Path(request.data)),
        "train_split": str(request.train_split) if request.train_split else None,
        "allow_overlap": request.allow_overlap, "n": n, **found,
        "headline": scores.metrics[0].name,
        "lower_is_better": [m.name for m in scores.metrics if not m.higher_is_better],
        "most_common_answer_rate": common / n,
        "generation": {"do_sample": False, "num_beams": 1, "repetition_penalty": 1.0,
                       "padding_side": "left",
                       "max_new_tokens": found["max_new_tokens"],
                       "batch_size": request.batch_size, "quantization": request.quantization},
        "bootstrap": {"resamples": V.RESAMPLES, "level": 0.95, "seed": request.seed},
        "versions": _versions(),
        "systems": {s.name: {**system_summary(scores, s, request.seed),
                             "seconds": round(timings[s.name], 3),
                             "samples_per_second": round(n / max(timings[s.name], 1e-9), 3)}
                    for s in systems},
        "comparisons": comparisons, "warnings": warnings,
    }
    if found["task"] == "json":
        report["fields"] = {s.name: M.field_accuracy(answers[s.name], references) for s in systems}
    return report


def _write_outputs(request: EvalRequest, report: dict[str, Any], records: Sequence[Record],
                   scores: Scores, answers: dict[str, list[str]],
                   references: Sequence[str]) -> None:
    from .gallery import write_gallery
    from .outputs import write_json, write_text

    out = Path(request.out_dir)
    for system, predicted in answers.items():
        rows = [{"id": r["id"], "prediction": p, "reference": ref, "metrics": m}
                for r, p, ref, m in zip(records, predicted, references,
                                        scores.sample_rows(system), strict=True)]
        write_text(out / predictions_file(system),
                   "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    write_gallery(out / GALLERY, report, records, out)
    write_json(out / REPORT, report)  # last: a report on disk means the folder is complete


# --------------------------------------------------------------------------- runs

def plan_for_run(run: str | Path, out_dir: str | Path | None = None,
                 **overrides: Any) -> EvalRequest:
    """What ``qvl eval --run RUN`` evaluates, read from the run's ``run.json``: the model it was
    trained from, its adapter, its held-out test split (whose ``split_info.json`` knows the image
    root) and its training split (for the overlap check); the image limits come with the
    adapter's processor (:mod:`~qvl_helpers.inference`). ``out_dir`` defaults to
    ``<output_dir>/eval/<run name>`` beside the run; ``overrides`` set any other field of
    :class:`EvalRequest` (:func:`eval_settings` gives the ones ``course.yaml`` decides).

    Raises:
        ConfigError: the folder is not a finished run made by ``qvl train``.
    """
    from .runs import ADAPTER, Outputs, read_identity

    run = Path(run)
    identity = read_identity(run)
    if identity is None:
        raise ConfigError("this is not a run folder (no readable run.json).", file=run,
                          fix="pass a folder under outputs/runs/ made by `qvl train`.")
    if not (run / ADAPTER).is_dir():
        raise ConfigError("the run has no adapter yet (it did not finish).", file=run,
                          fix="finish it with `qvl train ... --resume` first.")
    try:
        where, name = identity["where"], identity["model"]["name"]
        splits = {k: Path(v) for k, v in where["splits"].items()}
    except (KeyError, TypeError, AttributeError):
        raise ConfigError("run.json lacks the model or the splits (made by an older version?).",
                          file=run / "run.json",
                          fix="pass --model, --adapter, --data and --out yourself.") from None
    outputs = Outputs.of_run(run)  # the run's own outputs folder (it may have been moved)
    for key, path in splits.items():
        if (beside := outputs.folder("data", path.parent.name) / path.name).is_file():
            splits[key] = beside
    model = where.get("model_path") or name
    fields = {"model": model if Path(model).is_dir() else name, "adapter": run / ADAPTER,
              "data": splits["test"], "train_split": splits.get("train"),
              "out_dir": Path(out_dir) if out_dir else outputs.folder("eval", run.resolve().name)}
    fields.update(overrides)
    return EvalRequest(**fields)


def eval_settings(cfg: Any) -> dict[str, Any]:
    """The :class:`EvalRequest` fields the settings decide (``eval_*`` in ``course.yaml``, and
    the cache folder): what ``qvl eval`` and the notebooks evaluate with unless told otherwise."""
    return {"task": cfg.eval_task, "prompt": cfg.eval_prompt, "batch_size": cfg.eval_batch_size,
            "quantization": cfg.eval_quantization, "seed": cfg.eval_seed,
            "cache_dir": cfg.cache_dir}


def evaluate_run(run: str | Path, out_dir: str | Path | None = None,
                 **overrides: Any) -> dict[str, Any]:
    """:func:`evaluate` a training run (see :func:`plan_for_run`) with the evaluation settings
    of ``course.yaml`` (:func:`eval_settings`); ``overrides`` set any field."""
    from .config import load_config

    return evaluate(plan_for_run(run, out_dir, **{**eval_settings(load_config()), **overrides}))


def read_predictions(out_dir: str | Path, system: str) -> list[dict[str, Any]]:
    """The rows of ``predictions-SYSTEM.jsonl`` in an evaluation folder."""
    path = Path(out_dir) / predictions_file(system)
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def format_report(report: dict[str, Any]) -> str:
    """The comparison table, the verdicts and the warnings, as text."""
    names = list(next(iter(report["systems"].values()))["metrics"])
    width = max(20, *(len(s) for s in report["systems"]))
    lines = [f"{report['n']} samples · task {report['task']} ({report['task_reason']}) · "
             f"headline {report['headline']} · 95% bootstrap intervals",
             f"{'system':<{width}}  " + "  ".join(f"{m:<22}" for m in names) + "  samples/s"]
    for system, summary in report["systems"].items():
        cells = [V.Interval(**{k: v for k, v in summary["metrics"][m].items()})
                 for m in names]
        lines.append(f"{system:<{width}}  " + "  ".join(f"{str(c):<22}" for c in cells) +
                     f"  {summary['samples_per_second']:.2f}")
    if report["task"] == "short":
        lines.append(f"{'(most common answer)':<{width}}  {report['most_common_answer_rate']:.3f}")
    if report["lower_is_better"]:
        lines.append(f"lower is better: {', '.join(report['lower_is_better'])}")
    lines += [""] + [c["verdict"] for c in report["comparisons"]]
    lines += [f"warning: {w}" for w in report["warnings"]]
    return "\n".join(lines)
