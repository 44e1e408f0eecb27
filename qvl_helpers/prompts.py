"""The ``prompt`` system's system prompt: the base model told the answer format, as a careful
learner would try before fine-tuning (``qvl eval``'s baseline between ``base`` and ``tuned``).

The prompt is derived from answers the model may see (the training split's, never the test
answers), per scored question, in Chinese when most answers are; ``eval_prompt`` in
``course.yaml`` replaces it."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import answers as A
from .data.records import Record, Turn, scored_turn, text_part, turns_of


def task_prompt(task: str, references: Sequence[str]) -> str:
    """A system prompt that states the answer format the references follow (in Chinese when
    most references are Chinese): what a careful learner would try before fine-tuning."""
    chinese = sum(any(A.is_cjk(c) for c in r) for r in references) > len(references) / 2
    if task == "json":
        keys = Counter(k for r in references
                       if isinstance(v := A.parse_json_answer(r)[0], dict) for k in v)
        names = ", ".join(f'"{k}"' for k, _ in keys.most_common(12))
        if not names:  # the answers are JSON lists
            return "只输出 JSON，不要其他文字。" if chinese else "Answer with JSON only, no other text."
        return (f"只输出 JSON，不要其他文字。键：{names}。" if chinese else
                f"Answer with JSON only, no other text. Use the keys {names}.")
    if task == "short":
        choices = list(dict.fromkeys(r.strip() for r in references))
        if len(choices) <= 12:
            return (f"只回答以下之一：{'、'.join(choices)}。只输出答案。" if chinese else
                    f"Answer with one of: {', '.join(choices)}. Reply with the answer only.")
        return "用几个字回答，只输出答案。" if chinese else \
            "Answer in a few words. Reply with the answer only."
    if task == "reading":
        return "按图中原样转录文字，只输出文字本身。" if chinese else \
            "Transcribe the text in the image exactly as written. Reply with the text only."
    return "用一两句话描述这张图片。" if chinese else "Describe the image in one or two sentences."


def prompt_examples(scored: Turn, trained: Sequence[Record] | None,
                    evaluated: Sequence[Record] = ()) -> list[str]:
    """The answers the derived task prompt describes for a sample whose scored turn is
    ``scored``, so that a conversation's 2nd question is not offered the 1st question's answers.

    The pool is every turn of the training records (a prompt built from the test answers would
    leak them into the baseline), else the scored turns of the ``evaluated`` records. From it:
    the answers to the same question (text compared after
    :func:`~qvl_helpers.metrics.normalise_text`); failing that, the answers of turns at the same
    position (``scored.number``: 2nd turns ask what 2nd turns ask); failing that, every answer
    of the last turns in the pool."""
    if trained:
        pool = [t for r in trained for t in turns_of(r)]
        last = [scored_turn(r) for r in trained]
    else:
        pool = last = [scored_turn(r) for r in evaluated]
    question = A.normalise_text(scored.question)
    return ([t.answer for t in pool if A.normalise_text(t.question) == question] or
            [t.answer for t in pool if t.number == scored.number] or
            [t.answer for t in last])


def task_prompts(request: Any, task: str, records: Sequence[Record],
                 trained: Sequence[Record] | None = None) -> list[str]:
    """The ``prompt`` system's system prompt for each record: ``request.prompt`` (``eval_prompt``)
    for every one, else :func:`task_prompt` of :func:`prompt_examples` for its scored turn.
    ``trained``: the training records when already loaded (else read from
    ``request.train_split`` when it exists). ``request``: an :class:`~qvl_helpers.evaluate.EvalRequest`."""
    if request.prompt:
        return [request.prompt] * len(records)
    from .data import load_records

    if trained is None and request.train_split is not None and \
            Path(request.train_split).is_file():
        trained = load_records(request.train_split)
    made: dict[tuple[str, int], str] = {}
    prompts = []
    for record in records:
        turn = scored_turn(record)
        key = (A.normalise_text(turn.question), turn.number)
        if key not in made:
            made[key] = task_prompt(task, prompt_examples(turn, trained, records))
        prompts.append(made[key])
    return prompts


def prompt_summary(records: Sequence[Record], prompts: Sequence[str]) -> list[dict[str, Any]]:
    """Each distinct prompt with the scored question it was made for (the first one) and how
    many samples get it: what the report records and the notebook shows."""
    found: dict[str, dict[str, Any]] = {}
    for record, prompt in zip(records, prompts, strict=True):
        turn = scored_turn(record)
        entry = found.setdefault(prompt, {"prompt": prompt, "question": turn.question,
                                          "turn": turn.number, "samples": 0})
        entry["samples"] += 1
    return list(found.values())


def with_system_prompt(record: Record, prompt: str) -> Record:
    """A copy of ``record`` with ``prompt`` as its system message (added after an existing
    system message's text). The record itself is not changed."""
    messages = [dict(m) for m in record["messages"]]
    if messages and messages[0]["role"] == "system":
        content = list(messages[0]["content"])
        messages[0]["content"] = [*content, text_part("\n\n" + prompt)]
    else:
        messages.insert(0, {"role": "system", "content": [text_part(prompt)]})
    return {"id": record["id"], "messages": messages}  # type: ignore[typeddict-item]
