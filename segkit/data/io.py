"""Image and mask readers for the formats the datasets ship in.

Every reader names the file in its error, keeps the file's dtype (uint8 / uint16) and
returns colour images as RGB (OpenCV decodes BGR; we convert).
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from segkit.errors import format_problems

__all__ = [
    "DEFAULT_MAX_IMAGE_PIXELS", "check_pixels", "conform_channels", "image_size", "is_hidden", "list_files", "read_image",
    "read_mask", "refuse_overwrite", "require_writable", "temporary_path", "write_bytes_atomic", "write_json_atomic", "write_png_atomic",
]

# The largest image (height x width) the readers decode: a corrupt header or a decompression
# bomb (a few KiB that claim 100k x 100k pixels) is refused from its header, before the
# decoder allocates. 500 megapixels: above the largest DOTA scenes (20000 x 20000).
# Configurable per dataset (data.max_image_pixels) and for prediction.
DEFAULT_MAX_IMAGE_PIXELS = 500_000_000
#: PNGs larger than this are decoded from the file rather than from bytes read first
LARGE_FILE_BYTES = 64 * 2**20
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


# EXIF orientation (tag 0x0112) → the numpy steps that turn the stored pixels into what a viewer shows
_ORIENTATION_STEPS = {
    2: ("fliplr",), 3: ("rot180",), 4: ("flipud",), 5: ("transpose",),
    6: ("rot270",), 7: ("transverse",), 8: ("rot90",),
}


def _orientation(im: Image.Image) -> int:
    """The EXIF orientation of an open PIL image (1 = as stored)."""
    try:
        value = int(im.getexif().get(0x0112, 1))
    except Exception:  # a broken EXIF block: the pixels are still the pixels
        return 1
    return value if value in _ORIENTATION_STEPS else 1


def apply_orientation(array: np.ndarray, orientation: int) -> np.ndarray:
    """``array`` (H, W[, C]) turned as EXIF ``orientation`` says (what image viewers show)."""
    step = _ORIENTATION_STEPS.get(orientation, (None,))[0]
    if step is None:
        return array
    out = {
        "fliplr": lambda a: a[:, ::-1],
        "flipud": lambda a: a[::-1],
        "rot180": lambda a: a[::-1, ::-1],
        "rot90": lambda a: np.rot90(a, 1),   # counter-clockwise
        "rot270": lambda a: np.rot90(a, -1),  # clockwise
        "transpose": lambda a: np.swapaxes(a, 0, 1),
        "transverse": lambda a: np.rot90(a, 2).swapaxes(0, 1),
    }[step](array)
    return np.ascontiguousarray(out)


def _header(path: Path, data: bytes | None, max_pixels: int | None) -> int:
    """Check the pixel limit from the encoded bytes' header (``None``: from the file) and
    return the EXIF orientation (formats PIL identifies; others are left to OpenCV's own
    limit, orientation 1)."""
    import io

    try:
        with Image.open(io.BytesIO(data) if data is not None else path) as im:
            width, height = im.size
            orientation = _orientation(im)
    except Exception:  # not a format PIL knows, or a header it cannot parse: the decoder will say
        return 1
    check_pixels(path, height, width, max_pixels)
    return orientation


def read_image(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """Read an image as ``(H, W, C)`` with its own dtype; colour comes back RGB (swapped in
    place: no second copy of the pixels).

    Supports JPEG, PNG, BMP, GIF (via OpenCV) and 8/16-bit TIFF (via tifffile). An EXIF
    orientation (phone and camera JPEGs) is applied: the array is the picture as image
    viewers show it. Raises ``FileNotFoundError`` or ``ValueError`` naming the file when it
    cannot be read, or when its header claims more than ``max_pixels`` pixels (checked
    before decoding).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        image = _read_tiff(path, max_pixels)
    elif suffix == ".png" and _size(path) > LARGE_FILE_BYTES:
        # a large scene (DOTA's reach 20,000 px, 0.5-1 GiB of PNG): decoded from the file, so
        # its encoded bytes are never held beside its pixels
        orientation = _header(path, None, max_pixels)
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        image = _decoded(path, image, orientation)
    else:
        data = _read_bytes(path)
        if suffix in (".jpg", ".jpeg"):
            _check_jpeg(path, data)
        orientation = _header(path, data, max_pixels)
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        del data  # the encoded bytes go before the colour swap
        image = _decoded(path, image, orientation)
    if image.ndim == 2:
        image = image[:, :, None]
    return image


def _size(path: Path) -> int:
    """The file's size in bytes; -1 where it is not a readable file (the reader then says why)."""
    try:
        info = path.stat()  # one system call on the reading path of every PNG
    except OSError:
        return -1
    return info.st_size if stat.S_ISREG(info.st_mode) else -1


def _decoded(path: Path, image: np.ndarray | None, orientation: int) -> np.ndarray:
    """OpenCV's decode → RGB(A), as the viewer shows it; ``ValueError`` naming ``path`` if none."""
    if image is None:
        raise ValueError(f"{path}: cannot decode image (corrupt or unsupported format)")
    if image.ndim == 3 and image.shape[2] == 3:  # in place: no second copy of the pixels
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB, dst=image)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA, dst=image)
    return apply_orientation(image, orientation)


def read_mask(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """Read a single-channel label mask ``(H, W)`` without any value mapping.

    TIFF and grayscale PNG/BMP are read as stored (EXIF orientation applied, as
    :func:`read_image` does). Palette images (GIF, palette PNG) are read by what they show
    when their palette is gray — the gray level of each pixel's colour, so a Carvana GIF
    whose palette lists white before black still reads car = 255 — and by their palette
    indices when the palette has colours (VOC-style label PNGs, where the index is the
    class and the colour only a display choice). ``max_pixels`` as :func:`read_image`.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        mask = _read_tiff(path, max_pixels)
    else:
        data = _read_bytes(path)
        orientation = _header(path, data, max_pixels)
        mask = _read_palette_mask(path, data)
        if mask is None:
            mask = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if mask is None:
            raise ValueError(f"{path}: cannot decode mask (corrupt or unsupported format)")
        mask = apply_orientation(mask, orientation)
    if mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[:, :, 0]
    if mask.ndim != 2:
        raise ValueError(f"{path}: a mask must have one channel, got shape {mask.shape}")
    return mask


def _read_palette_mask(path: Path, data: bytes) -> np.ndarray | None:
    """A palette image's labels (see :func:`read_mask`), or ``None`` when it has no palette."""
    import io

    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.mode != "P":
                return None
            indices = np.array(im)
            palette = np.array(im.getpalette() or [], dtype=np.uint8).reshape(-1, 3)
    except OSError as err:
        raise ValueError(f"{path}: cannot decode mask ({err})") from err
    used = np.unique(indices)
    if palette.size == 0 or used.max() >= len(palette):
        return indices
    colours = palette[used]
    if (colours[:, 0] == colours[:, 1]).all() and (colours[:, 1] == colours[:, 2]).all():
        return palette[:, 0][indices]  # gray palette: what the picture shows
    return indices


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
    """``(height, width)`` read from the file header only (no pixel decoding), as
    :func:`read_image` returns the image (EXIF orientation applied); refused above ``max_pixels``."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            width, height = im.size
            if _orientation(im) >= 5 and path.suffix.lower() not in (".tif", ".tiff"):
                width, height = height, width
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    except OSError as err:
        raise ValueError(f"{path}: cannot read image header ({err})") from err
    check_pixels(path, height, width, max_pixels)
    return height, width


def conform_channels(image: np.ndarray, channels: int, path: str | os.PathLike, fix: str) -> np.ndarray:
    """``image`` (H, W, C) with ``channels`` channels, converted only where that loses nothing
    and means one thing; else ``ValueError`` naming ``path`` and ``fix`` (what to do).

    Converted: gray → RGB (the gray level copied into each channel); RGB whose three
    channels are equal → gray; an alpha channel that is fully opaque is dropped (RGBA →
    RGB, gray + alpha → gray). Refused: colour → gray, transparency, other counts.
    Training (every dataset) and prediction call this one function.
    """
    have = image.shape[2]
    if have == channels:
        return image
    if have in (2, 4) and channels in (1, 3):  # an alpha channel: drop it when it hides nothing
        opaque = np.iinfo(image.dtype).max if image.dtype.kind in "ui" else 1.0
        if image[:, :, -1].min() < opaque:
            raise ValueError(
                f"{path}: image has {have} channels with a transparency (alpha) channel that is not fully opaque; "
                f"expected {channels} — {fix}"
            )
        image, have = image[:, :, :-1], have - 1
        if have == channels:
            return np.ascontiguousarray(image)
    if have == 1 and channels == 3:
        return np.repeat(image, 3, axis=2)
    if have == 3 and channels == 1:
        if (image[:, :, 0] == image[:, :, 1]).all() and (image[:, :, 1] == image[:, :, 2]).all():
            return np.ascontiguousarray(image[:, :, :1])
        raise ValueError(f"{path}: image is in colour (3 channels that differ), expected {channels} channel — {fix}")
    raise ValueError(f"{path}: image has {have} channel(s), expected {channels} — {fix}")


def list_files(folder: str | os.PathLike, suffixes: tuple[str, ...]) -> list[Path]:
    """The files of ``folder`` with one of ``suffixes`` (any case), sorted, hidden ones left out
    (a macOS ``._x.jpg`` beside ``x.jpg`` is not an image).

    One ``scandir`` pass: the directory entries say what is a file without a ``stat`` per
    name (a symbolic link is followed), so 100,000 tiles list in a fraction of a second."""
    folder = Path(folder)
    names = []
    with os.scandir(folder) as entries:
        for entry in entries:
            name = entry.name
            dot = name.rfind(".")
            if name.startswith(".") or dot <= 0 or name[dot:].lower() not in suffixes:
                continue
            if entry.is_file():
                names.append(name)
    names.sort()
    return [folder / name for name in names]


def is_hidden(path: str | os.PathLike) -> bool:
    """A name that starts with a dot: macOS ``._x.jpg`` resource forks, ``.DS_Store``, editors' temporaries."""
    return Path(path).name.startswith(".")


def require_writable(directory: str | os.PathLike, setting: str) -> Path:
    """Create ``directory`` if needed and prove a file can be written there; else raise
    :class:`PermissionError` naming the folder, the reason and ``setting`` (what moves it).

    Called before work starts, so an unwritable place fails in a second, not after minutes.
    """
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".segkit-write-test.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        reason = err.strerror or type(err).__name__
        blocker = next((p for p in (directory, *directory.parents) if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            reason = f"{blocker} is a file, not a folder"
        raise PermissionError(f"cannot write to {directory} ({reason}): {setting}") from None
    return directory


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


def refuse_overwrite(paths: list[Path], overwrite: bool) -> None:
    """Raise ``FileExistsError`` listing the outputs that exist, unless ``overwrite``."""
    existing = [p for p in paths if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(format_problems(
            [str(p) for p in existing], f"{len(existing)} output file(s) exist already:", limit=5,
            tail="choose another output folder, or pass overwrite=true to replace them"))
