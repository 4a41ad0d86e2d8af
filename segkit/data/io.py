"""Image and mask readers for the formats the datasets ship in.

Every reader names the file in its error, keeps the file's dtype (uint8 / uint16) and
returns colour images as RGB (OpenCV decodes BGR; we convert).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

__all__ = [
    "DEFAULT_MAX_IMAGE_PIXELS", "check_pixels", "image_size", "read_image", "read_mask", "temporary_path",
    "write_bytes_atomic", "write_json_atomic", "write_png_atomic",
]

# The largest image (height x width) the readers decode: a corrupt header or a decompression
# bomb (a few KiB that claim 100k x 100k pixels) is refused from its header, before the
# decoder allocates. 500 megapixels: above the largest DOTA scenes (20000 x 20000).
# Configurable per dataset (data.max_image_pixels) and for prediction.
DEFAULT_MAX_IMAGE_PIXELS = 500_000_000
# PIL's own guard (warning above 89 MP, error above 179 MP) would refuse real DOTA scenes in
# image_size(); segkit applies the limit above instead
Image.MAX_IMAGE_PIXELS = None

_JPEG_SOI = b"\xff\xd8"
_JPEG_EOI = b"\xff\xd9"


def _read_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    return path.read_bytes()


def _check_jpeg(path: Path, data: bytes) -> None:
    # libjpeg decodes a truncated file into a half-grey image with only a warning:
    # check the start and end markers ourselves so truncation is an error.
    if not data.startswith(_JPEG_SOI):
        raise ValueError(f"{path}: not a JPEG file (no start-of-image marker)")
    if _JPEG_EOI not in data[-1024:]:
        raise ValueError(f"{path}: truncated JPEG (no end-of-image marker)")


def check_pixels(path: str | os.PathLike, height: int, width: int, max_pixels: int | None) -> None:
    """Raise ``ValueError`` naming ``path`` when ``height x width`` exceeds ``max_pixels`` (``None``: no limit)."""
    if max_pixels is not None and height * width > max_pixels:
        raise ValueError(
            f"{path}: the header says {width}x{height} = {height * width:,} pixels, above the limit of "
            f"{max_pixels:,} — a corrupt header or a decompression bomb? If the image is real, raise "
            "data.max_image_pixels (segkit-predict: max_image_pixels)"
        )


def _check_header_bytes(path: Path, data: bytes, max_pixels: int | None) -> None:
    """The pixel limit from the encoded bytes' header (formats PIL identifies; others are left to OpenCV's own limit)."""
    if max_pixels is None:
        return
    import io

    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
    except Exception:  # not a format PIL knows, or a header it cannot parse: the decoder will say
        return
    check_pixels(path, height, width, max_pixels)


def read_image(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """Read an image as ``(H, W, C)`` with its own dtype; colour comes back RGB.

    Supports JPEG, PNG, BMP, GIF (via OpenCV) and 8/16-bit TIFF (via tifffile).
    Raises ``FileNotFoundError`` or ``ValueError`` naming the file when it cannot be read,
    or when its header claims more than ``max_pixels`` pixels (checked before decoding).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        image = _read_tiff(path, max_pixels)
    else:
        data = _read_bytes(path)
        if suffix in (".jpg", ".jpeg"):
            _check_jpeg(path, data)
        _check_header_bytes(path, data, max_pixels)
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise ValueError(f"{path}: cannot decode image (corrupt or unsupported format)")
        if image.ndim == 3 and image.shape[2] == 3:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        elif image.ndim == 3 and image.shape[2] == 4:
            image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA)
    if image.ndim == 2:
        image = image[:, :, None]
    return image


def read_mask(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """Read a single-channel label mask ``(H, W)`` without any value mapping.

    PNG/TIFF are read as stored; a palette GIF gives its palette indices. ``max_pixels``
    as :func:`read_image`.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        mask = _read_tiff(path, max_pixels)
    elif suffix == ".gif":
        if not path.is_file():
            raise FileNotFoundError(f"{path}: file not found")
        try:
            with Image.open(path) as im:
                check_pixels(path, im.size[1], im.size[0], max_pixels)
                mask = np.array(im)  # a writable copy
        except OSError as err:
            raise ValueError(f"{path}: cannot decode mask ({err})") from err
    else:
        data = _read_bytes(path)
        _check_header_bytes(path, data, max_pixels)
        mask = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if mask is None:
            raise ValueError(f"{path}: cannot decode mask (corrupt or unsupported format)")
    if mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[:, :, 0]
    if mask.ndim != 2:
        raise ValueError(f"{path}: a mask must have one channel, got shape {mask.shape}")
    return mask


def _read_tiff(path: Path, max_pixels: int | None) -> np.ndarray:
    import tifffile

    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.pages:
                raise ValueError("no pages")
            page = tif.pages[0]
            check_pixels(path, int(page.imagelength), int(page.imagewidth), max_pixels)
            array = tif.asarray()
    except ValueError as err:
        if "above the limit of" in str(err):
            raise
        raise ValueError(f"{path}: cannot decode TIFF ({err})") from err
    except Exception as err:  # tifffile raises many types for bad files
        raise ValueError(f"{path}: cannot decode TIFF ({err})") from err
    if array.size == 0 or array.ndim not in (2, 3):
        raise ValueError(f"{path}: cannot decode TIFF (no image data; got an array of shape {array.shape})")
    return array


def image_size(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> tuple[int, int]:
    """``(height, width)`` read from the file header only (no pixel decoding); refused above ``max_pixels``."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            width, height = im.size
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    except OSError as err:
        raise ValueError(f"{path}: cannot read image header ({err})") from err
    check_pixels(path, height, width, max_pixels)
    return height, width


def temporary_path(path: str | os.PathLike) -> Path:
    """The name a file is written under before it is renamed to ``path``: hidden, beside it
    (same file system, so the rename is atomic), unique to this process."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` under a temporary name, then rename it into place.

    A killed process never leaves a half-written file under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_json_atomic(path: str | os.PathLike, payload: object) -> None:
    """``payload`` as indented JSON, written atomically."""
    write_bytes_atomic(path, (json.dumps(payload, indent=2) + "\n").encode())


def write_png_atomic(path: str | os.PathLike, array: np.ndarray) -> None:
    """``array`` (BGR for colour, as OpenCV expects) as PNG, written atomically."""
    ok, encoded = cv2.imencode(".png", array)
    if not ok:
        raise ValueError(f"{path}: OpenCV could not encode a PNG of shape {array.shape}")
    write_bytes_atomic(path, encoded.tobytes())
