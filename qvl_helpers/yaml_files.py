"""Reading the course's YAML files (``course.yaml``, presets) as a learner writes them: a key
written twice, a file saved in another encoding or broken YAML is refused with its line, instead
of PyYAML's silence or its traceback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

#: The fix for an empty course.yaml (a preset says another, see :func:`read_yaml_mapping`).
EMPTY_COURSE_FIX = ("write your settings in it (copy the course.yaml of the repository, or at "
                    "least `model: auto` and `data: your/annotations.jsonl`).")


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key written twice in one mapping (PyYAML keeps the later
    value without a word)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: the base class reports it
                continue
            line = key_node.start_mark.line + 1
            if first is not None:
                raise _DuplicateKey(key, first, line)
            seen[key] = line
        return super().construct_mapping(node, deep)


class _DuplicateKey(Exception):
    def __init__(self, key: Any, first: int, second: int) -> None:
        super().__init__(key)
        self.key, self.first, self.second = key, first, second


_OTHER_ENCODINGS = {b"\xff\xfe\x00\x00": "UTF-32", b"\x00\x00\xfe\xff": "UTF-32",
                    b"\xff\xfe": "UTF-16", b"\xfe\xff": "UTF-16"}
_SAVE_AS_UTF8 = ("save the file as UTF-8 (in your editor: Save with Encoding, UTF-8; or "
                 "iconv -f ENCODING -t UTF-8).")


def _yaml_text(path: Path) -> str:
    """The file's text as UTF-8 (a BOM allowed); an error names the line of a bad byte."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the file ({exc.strerror or exc}).", file=path,
                          fix="check the path and its permissions.") from None
    for bom, name in _OTHER_ENCODINGS.items():
        if data.startswith(bom):
            raise ConfigError(f"the file is saved as {name}, not UTF-8.", file=path,
                              fix=_SAVE_AS_UTF8)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        before = data[:exc.start]
        line = before.count(b"\n") + 1
        column = exc.start - (before.rfind(b"\n") + 1) + 1
        raise ConfigError(f"this line is not UTF-8 (byte 0x{data[exc.start]:02X} in column "
                          f"{column}): the file was saved in another encoding (Latin-1, GBK, "
                          "...).", file=path, line=line, fix=_SAVE_AS_UTF8) from None


def read_yaml_mapping(path: Path, *, empty_fix: str = EMPTY_COURSE_FIX
                      ) -> tuple[dict[str, Any], dict[str, int]]:
    """A YAML file that must hold a mapping: (values, 1-based line of each key); ``empty_fix``
    is the fix for a file that holds nothing.

    Raises:
        ConfigError: unreadable file, not UTF-8 (with the line), invalid YAML (with its line),
            a key written twice (both lines), an empty file, or not a mapping.
    """
    text = _yaml_text(path)
    loader = None
    try:
        loader = _UniqueKeyLoader(text)
        node = loader.get_single_node()
        raw = loader.construct_document(node) if node is not None else None
    except _DuplicateKey as dup:
        raise ConfigError(f"{dup.key} is set twice, on line {dup.first} and on line "
                          f"{dup.second}; which one is meant is unclear.", file=path,
                          line=dup.second, fix=f"keep one {dup.key}: line and delete the "
                                               "other.") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        if line is None and isinstance(exc, yaml.reader.ReaderError):
            line = text[:exc.position].count("\n") + 1
        problem = getattr(exc, "problem", None) or str(exc).split("\n")[0]
        raise ConfigError(f"invalid YAML: {problem}.", file=path, line=line,
                          fix="fix the indentation or quoting on that line.") from None
    finally:
        if loader is not None:
            loader.dispose()
    if raw is None:
        raise ConfigError(f"{path.name} is empty: it holds no key: value setting.", file=path,
                          fix=empty_fix)
    if not isinstance(raw, dict):
        raise ConfigError("the file must hold key: value pairs.", file=path,
                          fix="see the course.yaml at the repository root for the layout.")
    lines = {str(k.value): k.start_mark.line + 1 for k, _ in node.value}
    return {str(k): v for k, v in raw.items()}, lines
