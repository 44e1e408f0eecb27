"""Leakage between an evaluation split and the training split: samples that share an image (by
content) with a training sample, or are identical to one, score memory instead of skill."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from .data.records import Record, image_parts
from .errors import DatasetError, count

# --------------------------------------------------------------------------- leakage check

def _image_hashes(record: Record) -> list[str]:
    from .images import file_hash

    return [file_hash(Path(p["image"])) for p in image_parts(record)]


def _sample_key(record: Record, hashes: list[str]) -> str:
    """The sample's content: its messages with each image path replaced by the image's hash."""
    replaced = iter(hashes)
    messages = [[{"type": "image", "image": next(replaced)} if p["type"] == "image" else p
                 for p in m["content"]] for m in record["messages"]]
    return json.dumps([[m["role"] for m in record["messages"]], messages], sort_keys=True)


def find_overlap(evaluated: Sequence[Record], trained: Sequence[Record]) -> list[str]:
    """Each evaluation sample that shares an image (by content) with a training sample, or is
    identical to one, as ``"ID: what"`` lines."""
    seen_images: dict[str, str] = {}
    seen_samples: dict[str, str] = {}
    for record in trained:
        hashes = _image_hashes(record)
        seen_samples.setdefault(_sample_key(record, hashes), record["id"])
        for digest in hashes:
            seen_images.setdefault(digest, record["id"])
    found = []
    for record in evaluated:
        hashes = _image_hashes(record)
        same = seen_samples.get(_sample_key(record, hashes))
        shared = [seen_images[h] for h in hashes if h in seen_images]
        if same is not None:
            found.append(f"{record['id']}: identical to training sample {same}")
        elif shared:
            found.append(f"{record['id']}: shares an image with training sample {shared[0]}")
    return found


def check_overlap(records: Sequence[Record], data: Path, train: Path | None,
                  allow: bool, trained: Sequence[Record] | None = None) -> list[str]:
    """The overlap of ``records`` with the training split ``train`` (nothing when there is no
    training split to check against; ``trained``: its records when already loaded).

    Raises:
        DatasetError: there is overlap and ``allow`` is false.
    """
    from .data import load_records

    if train is None:
        return []
    found = find_overlap(records, load_records(train) if trained is None else trained)
    if found and not allow:
        shown = "; ".join(found[:5]) + (f"; and {len(found) - 5} more" if len(found) > 5 else "")
        raise DatasetError(f"{count(len(found), 'evaluation sample')} also appear in the "
                           f"training split {train} ({shown}): a score on them measures memory, "
                           "not skill.", file=data,
                           fix="evaluate the run's own held-out split (qvl eval --run RUN), "
                               "remove those samples, or pass --allow-overlap to evaluate anyway "
                               "(the report records it).")
    return found
