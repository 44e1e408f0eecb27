"""Image files: confined path resolution, header-first inspection, and the one RGB conversion.

Pillow does the heavy lifting. :func:`inspect_image` reads an image's size from its header and
refuses oversized images *before* decoding them (decompression bombs); only then does it decode
once to find truncated files. :func:`load_rgb` is the conversion used everywhere an image enters
the model (data doctor preview, training, evaluation): EXIF orientation applied, first frame of a
multi-frame file, transparency composited on white, everything else converted to RGB.

:func:`check_image` is the one check every entry point applies to an image file (the data doctor,
``load_records`` and so ``qvl eval``/``qvl tokens``/``qvl export``, ``qvl chat``); the size rules
in it (:func:`size_problem`) are also applied by the collator to images it decodes.
:func:`resolve_confined` reads the path forms other tools write (Windows separators, another
letter case) when their meaning is unambiguous, and refuses web addresses, ``data:`` URIs and
Windows drive paths in one sentence; :func:`shorten` keeps every echoed value readable.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

from .errors import DataFileError
from .fixes import image_root_fix
from .qwen import MAX_ASPECT, TOKEN_SIDE

#: Images above this many pixels are refused unread (the hub's max_pixels is 12.8 M; a phone
#: photo is ~12 M; anything far above is almost certainly a mistake or a bomb).
DEFAULT_PIXEL_CAP = 50_000_000
MIN_SIDE = TOKEN_SIDE  # one visual token; smaller sides are upscaled into noise
EXIF_ORIENTATION = 0x0112
QUARTER_TURNS = (5, 6, 7, 8)  # EXIF orientations that swap width and height
#: Modes the processor takes as they are; every other mode is converted (and reported).
PLAIN_MODES = {"RGB", "L"}
#: Longest value a message echoes (a path, a data: URI): longer ones are cut in the middle.
SHOWN_CHARS = 120
VIDEO_SUFFIXES = {".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv",
                  ".flv", ".3gp"}
#: The one sentence for video, in any layout: the course trains on images only.
VIDEO_MESSAGE = ("this sample holds a video, and the course trains on images only: extract a few "
                 "frames as image files (for example with ffmpeg) and list those as the "
                 "sample's images, or drop the sample")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_WINDOWS_ABSOLUTE = re.compile(r"^(?:[A-Za-z]:[\\/]|\\\\)")


class ImageProblem(Exception):
    """An image cannot be used; ``code`` is the data doctor's problem code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def shorten(value: str, limit: int = SHOWN_CHARS) -> str:
    """``value`` as a message shows it: whole when short, else its start and end and its length."""
    if len(value) <= limit:
        return value
    return f"{value[:limit - 30]}...{value[-20:]} ({len(value):,} characters)"


def not_a_local_path(path_text: str) -> ImageProblem | None:
    """Why ``path_text`` names no file the course can read (a web address, an embedded image, a
    path on a Windows drive), or None for an ordinary path."""
    if path_text.startswith("data:"):
        return ImageProblem("unreadable_image", f"an image embedded in the record as a data: URI "
                            f"({len(path_text):,} characters) is not read: the course reads "
                            "image files, so decode it into a file (e.g. images/0001.png) and "
                            "write that path instead")
    if _URL.match(path_text) and not path_text.startswith("file://"):
        return ImageProblem("missing_image", f"{shorten(path_text)} is a web address: the course "
                            "reads local files and uses no network, so download the images "
                            "first and write their local paths")
    if _WINDOWS_ABSOLUTE.match(path_text):
        return ImageProblem("missing_image", f"{shorten(path_text)} is a Windows path on another "
                            "machine's disk: copy the images here and write their paths "
                            "relative to the image root (e.g. images/0001.png)")
    return None


def _confine(path_text: str, root: Path, shown: str) -> Path:
    candidate = Path(path_text).expanduser()
    if not candidate.is_absolute():
        candidate = root / candidate
    resolved = Path(os.path.realpath(candidate))
    if resolved != root and root not in resolved.parents:
        raise ImageProblem("path_outside_root",
                           f"{shorten(shown)} resolves to {shorten(str(resolved))}, outside the "
                           f"image root {shorten(str(root))}; move the image under the root, or "
                           f"{image_root_fix()}")
    return resolved


@functools.lru_cache(maxsize=4096)
def _entries(folder: str, mtime_ns: int) -> dict[str, tuple[str, ...]]:
    """A folder's entries by lower-cased name (cached per modification time)."""
    found: dict[str, list[str]] = {}
    try:
        for name in os.listdir(folder):
            found.setdefault(name.lower(), []).append(name)
    except OSError:
        return {}
    return {k: tuple(sorted(v)) for k, v in found.items()}


def _case_match(relative: Path, root: Path, shown: str) -> Path | None:
    """The one file under ``root`` whose path equals ``relative`` ignoring letter case."""
    here = root
    for part in relative.parts:
        try:
            entries = _entries(str(here), here.stat().st_mtime_ns)
        except OSError:
            return None
        names = entries.get(part.lower(), ())
        if part in names:
            here = here / part
            continue
        if len(names) > 1:
            raise ImageProblem("missing_image", f"{shorten(shown)} not found, and "
                               f"{' and '.join(names)} in {shorten(str(here))} differ only in "
                               "letter case: write the exact name (file names are "
                               "case-sensitive here)")
        if not names:
            return None
        here = here / names[0]
    return here


def path_exists(path: Path) -> bool:
    """``path.exists()``, False for a path the system cannot even look up (a name too long)."""
    try:
        return path.exists()
    except OSError:
        return False


def resolve_confined(path_text: str, root: Path) -> Path:
    """Resolve an image path written in a record against ``root``; refuse one that leaves it.

    Relative paths are joined to ``root``; absolute paths are allowed only inside ``root``.
    Symbolic links are followed, so a link pointing out of ``root`` is refused too. When the
    path as written does not exist, two unambiguous readings are tried: backslashes as folder
    separators (Windows), and the one file that matches ignoring letter case (files made on
    Windows or macOS). ``file://`` URIs are read as paths. The path returned may not exist (the
    caller reports it as ``missing_image``).

    Raises:
        ImageProblem: ``path_outside_root``; ``missing_image`` for a web address, a Windows
            drive path or two files differing only in case; ``unreadable_image`` for a
            ``data:`` URI.
    """
    problem = not_a_local_path(path_text)
    if problem is not None:
        raise problem
    text = path_text
    if text.startswith("file://"):
        from urllib.parse import unquote, urlparse

        text = unquote(urlparse(text).path)
    root = root.resolve()
    resolved = _confine(text, root, path_text)
    if path_exists(resolved):
        return resolved
    readings = [text.replace("\\", "/")] if "\\" in text else []
    for reading in readings:
        candidate = _confine(reading, root, path_text)
        if path_exists(candidate):
            return candidate
    for reading in [text, *readings]:
        candidate = _confine(reading, root, path_text)
        if candidate != root:
            match = _case_match(candidate.relative_to(root), root, path_text)
            if match is not None:
                return _confine(str(match), root, path_text)
    return resolved


def missing_message(path_text: str, root: Path, why: str | None = None) -> str:
    """The ``missing_image`` message: the path as written, the folder searched (and why that
    folder), the fix that fits the running command."""
    because = f" ({why})" if why else ""
    return f"{shorten(path_text)} not found in {shorten(str(root))}{because}; {image_root_fix()}"


def require_image_root(root: Path, why: str = "the image root given") -> None:
    """Refuse an image root folder that does not exist, once, before any image is looked up.

    Raises:
        DataFileError: the folder does not exist (or is a file).
    """
    if root.is_dir():
        return
    from .fixes import how_to_set

    what = "is a file, not a folder" if root.exists() else "does not exist"
    hint = how_to_set("image_root") or "write the image paths relative to the data file's folder"
    raise DataFileError(f"the image root {shorten(str(root))} ({why}) {what}, so no image can be "
                        "found.", fix=f"{hint} (an existing folder).")


@dataclass(frozen=True)
class ImageInfo:
    """What the header and one decode tell about an image file."""

    width: int
    height: int
    mode: str
    frames: int
    orientation: int  # EXIF orientation tag: 1 upright, 2-8 mirrored and/or rotated

    @property
    def exif_rotated(self) -> bool:
        return self.orientation in range(2, 9)

    @property
    def oriented_size(self) -> tuple[int, int]:
        """(width, height) after applying EXIF orientation, as the model will see it."""
        swapped = self.orientation in QUARTER_TURNS
        return (self.height, self.width) if swapped else (self.width, self.height)


def inspect_image(path: Path, pixel_cap: int = DEFAULT_PIXEL_CAP, decode: bool = True
                  ) -> ImageInfo:
    """Check one image file without ever decoding more than ``pixel_cap`` pixels (``decode``
    False: the header only, which misses truncated files).

    Raises:
        ImageProblem: ``missing_image``, ``unreadable_image`` (zero bytes, not an image,
            truncated or corrupt) or ``image_too_large``.
    """
    try:
        size = path.stat().st_size
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            raise ImageProblem("missing_image", f"{shorten(str(path))} does not exist (the name "
                                                "is too long for a file)") from None
        if not isinstance(exc, FileNotFoundError):
            raise ImageProblem("unreadable_image", f"{shorten(str(path))} cannot be read "
                                                   f"({exc.strerror or exc})") from None
        raise ImageProblem("missing_image", f"{shorten(str(path))} does not exist") from None
    shown = shorten(str(path))
    if not path.is_file():
        raise ImageProblem("unreadable_image", f"{shown} is not a file")
    if size == 0:
        raise ImageProblem("unreadable_image", f"{shown} is empty (0 bytes); re-export the image")
    if path.suffix.lower() in VIDEO_SUFFIXES:
        raise ImageProblem("unreadable_image", f"{shown}: {VIDEO_MESSAGE}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:  # reads the header only
                width, height = img.size
                if width * height > pixel_cap:
                    raise ImageProblem(
                        "image_too_large",
                        f"{shown} is {width}x{height} = {width * height:,} px, over the cap of "
                        f"{pixel_cap:,} px; downscale it (training resizes to max_pixels anyway)")
                mode = img.mode
                frames = getattr(img, "n_frames", 1)
                orientation = img.getexif().get(EXIF_ORIENTATION, 1)
                if decode:
                    img.load()  # one full decode: finds truncated and corrupt files
    except ImageProblem:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageProblem("image_too_large", f"{shown}: {exc}") from None
    except Exception as exc:
        raise ImageProblem("unreadable_image", f"{shown} cannot be decoded "
                                               f"({type(exc).__name__}: {exc}); re-export it "
                                               "as PNG or JPEG") from None
    if not isinstance(orientation, int):
        orientation = 1
    return ImageInfo(width, height, mode, frames, orientation)


def size_problem(width: int, height: int, shown: str) -> ImageProblem | None:
    """The size rules of the image processor: each side at least one visual token, an aspect
    ratio of at most :data:`~qvl_helpers.qwen.MAX_ASPECT` (None: the size is usable)."""
    shown = shorten(shown)
    if min(width, height) < MIN_SIDE:
        return ImageProblem("image_too_small", f"{shown} is {width}x{height} px; each side needs "
                            f"at least {MIN_SIDE} px (one visual token): use a larger image or "
                            "drop the sample")
    if max(width, height) / min(width, height) > MAX_ASPECT:
        return ImageProblem("extreme_aspect_ratio", f"{shown} is {width}x{height} px, aspect "
                            f"ratio over {MAX_ASPECT}: the processor refuses it; crop or pad it")
    return None


def check_image(path: Path, pixel_cap: int = DEFAULT_PIXEL_CAP, decode: bool = True
                ) -> ImageInfo:
    """The one check of an image file that every entry point applies: it exists, is an image
    (not a video), is under ``pixel_cap`` pixels, decodes (unless ``decode`` is False) and has
    a size the processor accepts.

    Raises:
        ImageProblem: with the data doctor's code (``missing_image``, ``unreadable_image``,
            ``image_too_large``, ``image_too_small``, ``extreme_aspect_ratio``).
    """
    info = inspect_image(path, pixel_cap, decode=decode)
    problem = size_problem(info.width, info.height, str(path))
    if problem is not None:
        raise problem
    return info


def load_rgb(path: str | Path) -> Image.Image:
    """Open an image the way the model sees it: EXIF-oriented, first frame, RGB.

    Transparent areas become white (converting RGBA straight to RGB would make them black).
    """
    with Image.open(path) as img:
        img.seek(0)
        img = ImageOps.exif_transpose(img)
        has_alpha = img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and
                                                         "transparency" in img.info)
        if has_alpha:
            rgba = img.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(background, rgba).convert("RGB")
        if img.mode in ("I", "F") or img.mode.startswith("I;"):
            # 16/32-bit greyscale: scale to 8 bits instead of clipping everything to white
            import numpy as np

            array = np.asarray(img, dtype=np.float64)
            top = array.max() or 1.0
            return Image.fromarray((array / top * 255).astype("uint8"), "L").convert("RGB")
        return img.convert("RGB")


def thumbnail(path: str | Path, max_side: int, fmt: str = "PNG") -> bytes:
    """The image as :func:`load_rgb` reads it, shrunk to fit ``max_side``, encoded as ``fmt``."""
    import io

    img = load_rgb(path)
    img.thumbnail((max_side, max_side))
    buffer = io.BytesIO()
    img.save(buffer, format=fmt)
    return buffer.getvalue()


def file_hash(path: Path) -> str:
    """SHA-256 of the file's bytes: the identity of an image for duplicate and leakage checks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
