"""Comparing the GGUF pair's answers with the merged model's (``qvl export --gguf``).

The merged folder answers in transformers in a fresh process (:func:`observe_transformers`), the
GGUF files in llama.cpp (:func:`qvl_helpers.llama_run.observe_llama_cpp`); both record, per
sample, the answer, its token ids, the largest logits at each step and the prompt's length in
M-RoPE positions. :func:`compare` holds one file's answers to the merged model's, and
:func:`verdict_line` says what that means in one line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .data.records import Record
from .errors import count

#: Where an f16 answer parts from the merged model's (transformers picked A, llama.cpp B): the
#: largest logit(A) - logit(B) in transformers plus logit(B) - logit(A) in llama.cpp for the
#: parting to count as a near tie. f16 rounds each weight to 11 significant bits and llama.cpp
#: sums in its own order; a broken file disagrees by whole logits.
TIE_TOLERANCE = 0.1


@dataclass
class Observed:
    """What one runtime answered on the verification samples."""

    answers: list[str] = field(default_factory=list)
    #: M-RoPE positions the prompt takes: its text tokens, plus each image's larger side in
    #: visual tokens (what llama.cpp counts; transformers gives the image one token per 28 px²)
    prompt_positions: list[int] = field(default_factory=list)
    prompt_tokens: list[int] = field(default_factory=list)  # transformers: the prompts' lengths
    tokens: list[list[int]] = field(default_factory=list)     # the answers' token ids
    #: per answer step, the largest logits as {token id: logit}
    top: list[list[dict[int, float]]] = field(default_factory=list)


def observe_transformers(folder: Path, records: list[Record], facts: dict[str, Any]) -> Observed:
    """The merged folder's greedy answers in transformers (a fresh process, as a user loads it),
    with the prompt length its processor renders and each step's top-two margin."""
    from .collate import make_collator
    from .inference import load_processor_for
    from .verify import observe_in_fresh_process

    ask = make_collator(load_processor_for(folder), "generate")
    merged = observe_in_fresh_process(folder, records, facts)
    asked = [ask([r]) for r in records]
    return Observed(answers=merged["answers"], tokens=merged["tokens"], top=merged["top"],
                    prompt_positions=[prompt_positions(batch) for batch in asked],
                    prompt_tokens=[int(batch["input_ids"].shape[1]) for batch in asked])


def prompt_positions(batch: dict[str, Any]) -> int:
    """The M-RoPE positions of a one-sample prompt batch: each image's ``t·h·w / 4`` visual
    tokens take ``max(t, h/2, w/2)`` positions, every other token one."""
    length = int(batch["input_ids"].shape[1])
    for t, h, w in batch.get("image_grid_thw", []).tolist() if "image_grid_thw" in batch else []:
        length += max(t, h // 2, w // 2) - t * h * w // 4
    return length


def parting(reference: Observed, other: Observed, i: int) -> int | None:
    """The answer step where ``other``'s sample ``i`` first picks another token than
    ``reference``'s (one stopping earlier counts as parting there), or None when the two
    answers are the same tokens."""
    from .verify import first_difference

    return first_difference(reference.tokens[i], other.tokens[i])


def preference(top: list[dict[int, float]], step: int, own: list[int],
               other: list[int]) -> float | None:
    """How much one runtime preferred its own token at ``step`` over the other runtime's:
    logit(own) - logit(other), from its largest logits there. None when it cannot be told (the
    other token is not among them, or one answer has ended)."""
    if step >= len(own) or step >= len(other) or step >= len(top):
        return None
    mine, theirs = top[step].get(own[step]), top[step].get(other[step])
    return None if mine is None or theirs is None else float(mine - theirs)


def compare(reference: Observed, other: Observed, records: list[Record],
            exact: bool) -> dict[str, Any]:
    """How ``other`` (a GGUF file in llama.cpp) answered against ``reference`` (the merged model
    in transformers): prompt lengths, same answers, and for each parting answer the step, the
    two answers and each runtime's preference for its own token there. ``exact`` (f16): a
    parting that is not a near tie (:data:`TIE_TOLERANCE`), or another prompt length, is a
    problem."""
    problems, partings, same = [], [], 0
    for i, record in enumerate(records):
        who = f"sample {record.get('id', i)}"
        if reference.prompt_positions[i] != other.prompt_positions[i]:
            problems.append(f"{who}: llama.cpp reads a prompt of {other.prompt_positions[i]} "
                            f"positions, transformers {reference.prompt_positions[i]}")
        step = parting(reference, other, i)
        if step is None:
            same += 1
            continue
        ref_tokens, other_tokens = reference.tokens[i], other.tokens[i]
        ours = preference(reference.top[i], step, ref_tokens, other_tokens)
        theirs = preference(other.top[i], step, other_tokens, ref_tokens)
        tie = ours is not None and theirs is not None and ours + theirs <= TIE_TOLERANCE
        partings.append({"sample": record.get("id", i), "step": step, "near_tie": tie,
                         "preferences": [None if v is None else round(v, 4)
                                         for v in (ours, theirs)],
                         "transformers": reference.answers[i], "llama_cpp": other.answers[i]})
        if exact and not tie:
            where = (f"where transformers prefers its token by {ours:.3f} logits and llama.cpp "
                     f"its own by {theirs:.3f} (a near tie is within {TIE_TOLERANCE} together)"
                     if ours is not None and theirs is not None else
                     "where one answer ends or picks a token far down the other's list")
            problems.append(f"{who}: another answer ({other.answers[i]!r} instead of "
                            f"{reference.answers[i]!r}), parting at step {step} {where}")
    answers = [{"sample": r.get("id", i), "transformers": reference.answers[i],
                "llama_cpp": other.answers[i]} for i, r in enumerate(records)]
    return {"samples": len(records), "same_answers": same, "agreement": same / len(records),
            "partings": partings, "problems": problems, "answers": answers}


def verdict_line(summary: dict[str, Any]) -> str:
    """What the GGUF files can be trusted for, in one line."""
    f16 = summary["results"]["f16"]
    line = (f"GGUF verified in llama.cpp on {count(f16['samples'], 'held-out sample')}: the f16 "
            f"pair gives {f16['same_answers']} of {f16['samples']} answers exactly as the "
            "merged model")
    ties = len(f16["partings"])
    if ties:
        line += f" (the other {ties} part only at a near tie)"
    for kind, result in summary["results"].items():
        if kind != "f16":
            line += (f"; {kind}: {result['same_answers']} of {result['samples']} the same "
                     f"({result['agreement']:.0%})")
    return line + "."
