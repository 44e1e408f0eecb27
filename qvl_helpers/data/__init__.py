"""Your data in: readers for every accepted layout, the data doctor, splits, sample datasets.

``load_records`` is the stable entry point for training and evaluation code: it returns
canonical records with image paths resolved (absolute) and confined to the image root, and
raises :class:`~qvl_helpers.errors.DatasetError` naming the file, line, sample and fix for the
first bad record (``qvl data check`` lists them all).
"""

from __future__ import annotations

from .doctor import CODES, CheckReport, Problem, check_file
from .layouts import FORMATS
from .load import load_records
from .prepare import PreparedData, course_data, course_records, prepare_data
from .readers import DataFileError, detect_file_format, read_records, record_error
from .records import (
    Record,
    Turn,
    answers_of,
    image_parts,
    images_of,
    scored_turn,
    system_text,
    turns_of,
)
from .split import SPLIT_INFO, default_image_root, read_split_info, split_file
from .writers import write_jsonl

__all__ = ["CODES", "FORMATS", "SPLIT_INFO", "CheckReport", "DataFileError", "PreparedData",
           "Problem", "Record", "answers_of", "check_file", "course_data", "course_records",
           "default_image_root", "detect_file_format",
           "image_parts", "images_of", "load_records", "prepare_data", "read_records",
           "read_split_info", "record_error", "scored_turn", "split_file", "system_text", "turns_of",
           "Turn", "write_jsonl"]
