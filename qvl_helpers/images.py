"""Image files: confined path resolution, header-first inspection, and the one RGB conversion.

Pillow does the heavy lifting. :func:`inspect_image` reads an image's size from its header and
refuses oversized images *before* decoding them (decompression bombs); only then does it decode
once to find truncated files. :func:`load_rgb` is the conversion used everywhere an image enters
the model (data doctor preview, training, evaluation): EXIF orientation applied, first frame of a
multi-frame file, transparency composited on white, everything else converted to RGB.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

from .qwen import TOKEN_SIDE

#: Images above this many pixels are refused unread (the hub's max_pixels is 12.8 M; a phone
#: photo is ~12 M; anything far above is almost certainly a mistake or a bomb).
DEFAULT_PIXEL_CAP = 50_000_000
MIN_SIDE = TOKEN_SIDE  # one visual token; smaller sides are upscaled into noise
EXIF_ORIENTATION = 0x0112
QUARTER_TURNS = (5, 6, 7, 8)  # EXIF orientations that swap width and height
#: Modes the processor takes as they are; every other mode is converted (and reported).
PLAIN_MODES = {"RGB", "L"}


class ImageProblem(Exception):
    """An image cannot be used; ``code`` is the data doctor's problem code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def resolve_confined(path_text: str, root: Path) -> Path:
    """Resolve an image path written in a record against ``root``; refuse one that leaves it.

    Relative paths are joined to ``root``; absolute paths are allowed only inside ``root``.
    Symbolic links are followed, so a link pointing out of ``root`` is refused too.

    Raises:
        ImageProblem: ``path_outside_root``.
    """
    root = root.resolve()
    candidate = Path(path_text).expanduser()
    if not candidate.is_absolute():
        candidate = root / candidate
    resolved = Path(os.path.realpath(candidate))
    if resolved != root and root not in resolved.parents:
        raise ImageProblem("path_outside_root",
                           f"{path_text} resolves to {resolved}, outside the image root {root}; "
                           "move the image under the root or pass --image-root")
    return resolved


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


def inspect_image(path: Path, pixel_cap: int = DEFAULT_PIXEL_CAP) -> ImageInfo:
    """Check one image file without ever decoding more than ``pixel_cap`` pixels.

    Raises:
        ImageProblem: ``missing_image``, ``unreadable_image`` (zero bytes, not an image,
            truncated or corrupt) or ``image_too_large``.
    """
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ImageProblem("missing_image", f"{path} does not exist") from None
    except OSError as exc:
        raise ImageProblem("unreadable_image", f"{path} cannot be read ({exc})") from None
    if not path.is_file():
        raise ImageProblem("unreadable_image", f"{path} is not a file")
    if size == 0:
        raise ImageProblem("unreadable_image", f"{path} is empty (0 bytes); re-export the image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:  # reads the header only
                width, height = img.size
                if width * height > pixel_cap:
                    raise ImageProblem(
                        "image_too_large",
                        f"{path} is {width}x{height} = {width * height:,} px, over the cap of "
                        f"{pixel_cap:,} px; downscale it (training resizes to max_pixels anyway)")
                mode = img.mode
                frames = getattr(img, "n_frames", 1)
                orientation = img.getexif().get(EXIF_ORIENTATION, 1)
                img.load()  # one full decode: finds truncated and corrupt files
    except ImageProblem:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageProblem("image_too_large", f"{path}: {exc}") from None
    except Exception as exc:
        raise ImageProblem("unreadable_image", f"{path} cannot be decoded "
                                               f"({type(exc).__name__}: {exc}); re-export it "
                                               "as PNG or JPEG") from None
    if not isinstance(orientation, int):
        orientation = 1
    return ImageInfo(width, height, mode, frames, orientation)


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
