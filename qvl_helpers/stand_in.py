"""What names the course's tiny stand-in on disk: its builder version, the marker file a complete
build carries, and its cache folder. No torch: the settings layer asks these questions before
anything is built (``tiny.py`` builds it)."""

from __future__ import annotations

from pathlib import Path

#: Raised whenever a change to ``tiny.py`` changes what a build contains: a new cache folder.
BUILDER_VERSION = 1
#: Written last into a build folder: its presence means the build is complete.
MARKER_FILE = "qvl_tiny.json"


def cache_folder(cache_dir: Path) -> Path:
    """The folder under ``cache_dir`` that holds this builder version's stand-in."""
    return Path(cache_dir) / f"tiny-qwen2_5_vl-v{BUILDER_VERSION}"


def is_stand_in(folder: str | Path) -> bool:
    """True when ``folder`` holds a complete build of the tiny stand-in."""
    return (Path(folder) / MARKER_FILE).is_file()
