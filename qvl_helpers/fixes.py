"""How the learner changes a setting in the entry point they are running.

A fix is only true if the learner can do it where they are: ``qvl data check`` has
``--image-root``, ``qvl train`` has only ``course.yaml`` and ``--set``, a notebook has only
``course.yaml``. The command line records the running command and its parser's options
(:func:`running`); messages ask :func:`how_to_set` instead of naming a flag themselves. A context
variable (``contextvars``) carries it, so code deep in the data readers needs no extra argument.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(frozen=True)
class EntryPoint:
    """The running ``qvl`` command and the option strings its parser accepts."""

    command: str
    flags: frozenset[str]


_RUNNING: ContextVar[EntryPoint | None] = ContextVar("qvl_entry_point", default=None)

#: The command-line flags that name a course.yaml setting under another name than ``--key``
#: (each is ``--set KEY=VALUE``); every other setting's flag, where a command has one, is
#: ``--key-with-dashes``.
SETTING_FLAGS = {"eval_task": "--task", "eval_prompt": "--prompt",
                 "eval_batch_size": "--batch-size", "eval_quantization": "--quantization",
                 "eval_seed": "--seed"}


def setting_flag(key: str) -> str:
    """The flag that sets ``key`` on the commands that have one (``--max-pixels``, ``--task``)."""
    return SETTING_FLAGS.get(key, "--" + key.replace("_", "-"))


@contextmanager
def running(command: str, flags: Iterable[str]) -> Iterator[EntryPoint]:
    """Within this block, fixes are written for ``command`` (which accepts ``flags``)."""
    entry = EntryPoint(command, frozenset(flags))
    token = _RUNNING.set(entry)
    try:
        yield entry
    finally:
        _RUNNING.reset(token)


def current() -> EntryPoint | None:
    """The running command (None: Python code or a notebook, configured by course.yaml)."""
    return _RUNNING.get()


def how_to_set(key: str, value: str = "DIR", *, in_yaml: bool = False) -> str | None:
    """How to give ``key`` another value here: the command's own flag, else course.yaml (and
    ``--set`` where the command has it); None for a command that has neither (e.g. ``qvl chat``
    reads no course.yaml path). ``in_yaml``: name the value in the course.yaml form too."""
    entry = current()
    yaml = f"set {key}: {value} in course.yaml" if in_yaml else f"set {key}: in course.yaml"
    if entry is None:
        return yaml
    flag = setting_flag(key)
    if flag in entry.flags:
        return f"pass {flag} {value}"
    if "--set" in entry.flags:
        return f"{yaml} (or pass --set {key}={value})"
    return None


def image_root_fix() -> str:
    """The fix for image paths that do not match their root, valid for the running command."""
    hint = how_to_set("image_root")
    if hint is None:
        return ("write the image paths relative to the data file's folder (or use a prepared "
                "split, which records its image root)")
    return f"fix the paths, or {hint} to the folder they are relative to"


def out_of_memory_fix() -> str:
    """What frees GPU memory, valid for the running command: training lowers the image and
    batch settings, evaluation its batch or the base's precision, chat the base's precision,
    export merges on the CPU."""
    entry = current()
    command = entry.command if entry is not None else None
    if command == "qvl export":
        return "close what else uses the GPU, or merge on the CPU (CUDA_VISIBLE_DEVICES=)"
    if command == "qvl chat":
        return "close what else uses the GPU, or load the model in 4-bit (--quantization 4bit)"
    if command == "qvl eval":
        return (f"{how_to_set('eval_batch_size', '2')} (a smaller generation batch), or "
                f"{how_to_set('eval_quantization', '4bit')} (the base in 4-bit)")
    where = "in course.yaml" + (" (or with --set KEY=VALUE)" if entry is not None
                                and "--set" in entry.flags else "")
    return ("lower max_pixels first (it sets the visual tokens), then batch_size (raise "
            "grad_accum to keep the effective batch), then max_length, and use quantization: "
            f"4bit if you are not already; set them {where}")
