"""Leakage-free train/val/test splits.

Records are grouped by the *content* of their images (SHA-256 of the file bytes): two records that
share an image, even under different file names, always land in the same split, so the model is
never evaluated on a picture it was trained on. Groups (not records) are shuffled with the seed
and dealt out to test, val and train in turn.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DatasetError, OutputExistsError, count
from ..images import (
    ImageProblem,
    file_hash,
    missing_message,
    path_exists,
    require_image_root,
    resolve_confined,
)
from ..outputs import disk_full, is_disk_full, read_json, refuse_inputs, write_json
from .readers import read_records, record_error
from .records import Record, images_of
from .writers import paths_follow, relocate_image_paths, write_jsonl

SPLIT_INFO = "split_info.json"


def read_split_info(split_file_path: str | Path) -> dict[str, Any] | None:
    """The ``split_info.json`` that :func:`~qvl_helpers.data.prepare_data` writes beside its
    split files (None for a file that was not made there)."""
    return read_json(Path(split_file_path).with_name(SPLIT_INFO))


def default_image_root(path: str | Path) -> tuple[Path, str]:
    """The folder a data file's image paths are relative to, and why: the image root recorded
    in ``split_info.json`` for prepared splits, else the file's folder."""
    info = read_split_info(path)
    if info and info.get("image_root"):
        return Path(info["image_root"]), f"the image root recorded in {SPLIT_INFO} beside it"
    return Path(path).parent, "the data file's folder"


def image_root_for(path: str | Path, image_root: str | Path | None = None) -> tuple[Path, str]:
    """The image root for reading ``path`` and why (``image_root`` when given, else
    :func:`default_image_root`), refused with the fix when the file exists and the root does
    not (one error, instead of one per image).

    Raises:
        DataFileError: the image root folder does not exist.
    """
    if image_root is not None:
        root, why = Path(image_root), "the image root given"
    else:
        root, why = default_image_root(path)
    if Path(path).exists():
        require_image_root(root, why)
    return root, why


class _Groups:
    """Union-find over record indices, joined through shared image hashes."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


@dataclass
class SplitResult:
    counts: dict[str, int]
    groups: dict[str, int]
    files: dict[str, Path]
    image_root: Path

    def text(self) -> str:
        parts = [f"{name} {count(self.counts[name], 'record')} "
                 f"({count(self.groups[name], 'image group')})"
                 for name in ("train", "val", "test")]
        return "; ".join(parts)


def assign_splits(records: list[Record], hashes: list[list[str]], val: float,
                  test: float, seed: int) -> tuple[list[str], list[int]]:
    """The split name of each record, keeping records that share an image hash together, and
    the group (image cluster) each record belongs to."""
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise ConfigError(f"val ({val}) and test ({test}) must be fractions that sum below 1.",
                           fix="use for example --val 0.1 --test 0.1.")
    groups = _Groups(len(records))
    owner: dict[str, int] = {}
    for i, digests in enumerate(hashes):
        for digest in digests:
            if digest in owner:
                groups.union(i, owner[digest])
            else:
                owner[digest] = i
    members: dict[int, list[int]] = {}
    for i in range(len(records)):
        members.setdefault(groups.find(i), []).append(i)
    # Order groups by a content key first so that the shuffle depends only on data and seed.
    ordered = sorted(members.values(), key=lambda m: min(hashes[i][0] if hashes[i] else
                                                         records[i]["id"] for i in m))
    random.Random(seed).shuffle(ordered)
    n = len(records)
    want = {"test": round(n * test), "val": round(n * val)}
    for name, fraction in (("test", test), ("val", val)):
        if fraction > 0 and want[name] == 0 and n >= 3:
            want[name] = 1  # a requested split is never silently empty
    names = [""] * n
    filled = {"test": 0, "val": 0}
    for group in ordered:
        target = next((s for s in ("test", "val") if filled[s] < want[s]), "train")
        for i in group:
            names[i] = target
        if target != "train":
            filled[target] += len(group)
    return names, [groups.find(i) for i in range(n)]


#: Present in a split folder while its three files are being replaced: a set that a kill left
#: mixed (new train, old val and test) is refused until it is split again with --force.
SPLIT_INCOMPLETE = ".qvl-split-incomplete.json"


#: The default shares of the validation and test splits (``qvl data split --val/--test``, and
#: the splits ``qvl train`` makes).
VAL_FRACTION = TEST_FRACTION = 0.1


def _claim_split_files(files: dict[str, Path], path: Path, out_dir: Path,
                       overwrite: bool) -> None:
    """Refuse to write the splits over the input, over an interrupted split, or over earlier
    split files unless ``overwrite``."""
    for target in files.values():
        refuse_inputs(target, [path])
    if (out_dir / SPLIT_INCOMPLETE).exists() and not overwrite:
        raise OutputExistsError("an earlier qvl data split into this folder was interrupted: "
                                "its train, val and test files may be from different splits.",
                                file=out_dir, fix="pass --force to split again (or choose "
                                                  "another --out-dir).")
    existing = [str(p) for p in files.values() if p.exists()]
    if existing and not overwrite:
        raise OutputExistsError(f"{', '.join(existing)} already exist.", file=out_dir,
                                fix="choose another --out-dir, or pass --force to replace them.")


def _records_with_image_hashes(path: Path, root: Path,
                               fmt: str) -> tuple[list[Record], list[list[str]]]:
    """Every record of ``path`` and the content hashes of its images (what groups samples that
    share an image into one split); the first bad record or image is refused."""
    records, hashes = [], []
    for raw in read_records(path, fmt):
        if raw.record is None:
            raise record_error(raw, path)
        digests = []
        for text in images_of(raw.record):
            try:
                resolved = resolve_confined(text, root)
                if not path_exists(resolved):
                    raise ImageProblem("missing_image", missing_message(text, root))
                digests.append(file_hash(resolved))
            except (ImageProblem, OSError) as exc:
                why = exc.message if isinstance(exc, ImageProblem) else f"{text}: {exc}"
                raise DatasetError(f"image {why}.", file=path, line=raw.line,
                                   sample_id=raw.record["id"],
                                   fix="run `qvl data check` and fix the data before "
                                       "splitting.") from None
        records.append(raw.record)
        hashes.append(digests)
    return records, hashes


def split_file(path: str | Path, out_dir: str | Path, *, image_root: str | Path | None = None,
               val: float = VAL_FRACTION, test: float = TEST_FRACTION, seed: int = 0,
               overwrite: bool = False, fmt: str = "auto") -> SplitResult:
    """Split a data file into ``out_dir``/train.jsonl, val.jsonl and test.jsonl.

    Raises:
        DatasetError: the data has problems (run ``qvl data check`` first), or the output files
            exist and ``overwrite`` is False (nothing is overwritten without being asked).
    """
    path, out_dir = Path(path), Path(out_dir)
    root = Path(image_root) if image_root is not None else path.parent
    if path.exists():
        require_image_root(root)
    files = {name: out_dir / f"{name}.jsonl" for name in ("train", "val", "test")}
    _claim_split_files(files, path, out_dir, overwrite)
    records, hashes = _records_with_image_hashes(path, root, fmt)
    if not records:
        raise DatasetError("the file holds no records.", file=path, fix="check the file.")
    names, group_of = assign_splits(records, hashes, val, test, seed)
    counts, groups = {}, {}
    out_dir.mkdir(parents=True, exist_ok=True)
    staged = {name: target.with_name(f".{target.name}.splitting")
              for name, target in files.items()}
    try:  # all three are written first; the earlier files are replaced only once all fit
        for name in files:
            chosen = [relocate_image_paths(r, root, out_dir)
                      for r, n in zip(records, names, strict=True) if n == name]
            counts[name] = write_jsonl(chosen, staged[name])
            groups[name] = len({g for g, n in zip(group_of, names, strict=True) if n == name})
        marker = write_json(out_dir / SPLIT_INCOMPLETE, {"replacing": sorted(files)})
        for name, target in files.items():  # a kill in here leaves the marker: refused later
            staged[name].replace(target)
        marker.unlink()
    except BaseException as exc:
        for tmp in staged.values():
            tmp.unlink(missing_ok=True)
        if is_disk_full(exc):
            raise disk_full(out_dir, fix="free space there (or choose another --out-dir), then "
                                         "run the same qvl data split again; the earlier split "
                                         "files are untouched.") from None
        raise
    return SplitResult(counts, groups, files, image_root_for_output(root, out_dir))


def image_root_for_output(src_root: Path, out_dir: Path) -> Path:
    """The image root that later steps must use for files written to ``out_dir`` (see
    :func:`~qvl_helpers.data.writers.paths_follow`)."""
    return out_dir.resolve() if paths_follow(src_root, out_dir) else src_root.resolve()
