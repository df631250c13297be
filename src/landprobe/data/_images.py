"""Reading benchmark images: folder listing and the Y channel of one file."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from landprobe.common.io import LoadError
from landprobe.data._color import rgb2y

__all__ = ["IMAGE_EXTENSIONS", "list_images", "load_y"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")


def list_images(root: str | os.PathLike) -> list[Path]:
    """Image files (PNG, JPEG, BMP; any case) directly inside ``root``, sorted by name.

    Args:
        root: A folder.

    Returns:
        Sorted list of paths (sorting is by file name, so the order is deterministic).

    Raises:
        ValueError: If ``root`` is not a folder or holds no image file.

    Example:
        >>> from landprobe.data import list_images, sample_dir
        >>> [p.name for p in list_images(sample_dir("val"))]
        ['baby_crop.png', 'butterfly_crop.png']
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"image folder {str(root)!r} does not exist or is not a folder; pass a folder of PNG/JPEG/BMP images.")
    files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise ValueError(
            f"image folder {str(root)!r} holds no image file (looked for {', '.join(IMAGE_EXTENSIONS)}); "
            "point it at a folder of images."
        )
    return files


def load_y(path: str | os.PathLike) -> np.ndarray:
    """The Y channel of an image file as ``uint8`` ``(H, W)``, as the SR evaluation scripts read it.

    Convention:
        The file is decoded to 8 bits per channel and, if it has colour, converted with
        MATLAB's ``rgb2ycbcr`` on uint8 (Y rounded to an integer in [16, 235]).
        Grayscale images are used as Y directly, as in ``demo_SR.m`` of SRCNN
        (``if size(im, 3) > 1, im = rgb2ycbcr(im); end``). Modes: ``RGB`` as is;
        ``RGBA``/``LA`` drop the alpha channel (no compositing: benchmark images are opaque and a
        background colour would be invented); palette ``P`` is expanded to RGB (alpha dropped);
        ``1`` (bilevel) becomes 0/255 grayscale; 16-bit grayscale (``I;16*``/``I``) is mapped
        to 8 bits by ``round(v / 257)`` (65535 -> 255); ``CMYK``, ``YCbCr`` and other colour
        modes are converted to RGB by Pillow. Float images (mode ``F``) are refused.

    Args:
        path: Image file.

    Returns:
        ``uint8`` array ``(H, W)``.

    Raises:
        LoadError: (a ``ValueError``) If the file is missing, is not an image, is truncated or
            corrupt, or declares more pixels than Pillow's decompression-bomb limit; the message
            names the file.
        ValueError: If the image has an unsupported mode.

    Example:
        >>> from landprobe.data import load_y, sample_dir
        >>> y = load_y(sample_dir("val") / "baby_crop.png")
        >>> y.dtype.name, y.shape
        ('uint8', (128, 128))
    """
    from PIL import Image, UnidentifiedImageError
    from PIL.Image import DecompressionBombError

    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode in ("RGB",):
                arr = np.asarray(im)
            elif mode in ("L",):
                return np.array(im, dtype=np.uint8)
            elif mode in ("LA", "La"):
                return np.array(im.getchannel(0), dtype=np.uint8)
            elif mode == "1":
                return np.array(im.convert("L"), dtype=np.uint8)
            elif mode.startswith("I"):
                v = np.asarray(im).astype(np.float64)
                return np.clip(np.floor(v / 257.0 + 0.5), 0, 255).astype(np.uint8)
            elif mode == "F":
                raise ValueError(
                    f"image {str(path)!r} is a floating-point image (mode 'F'); convert it to 8 or 16 bit "
                    "integer PNG first."
                )
            else:  # RGBA, RGBa, P, PA, CMYK, YCbCr, LAB, HSV, ...
                arr = np.asarray(im.convert("RGBA" if "A" in mode or mode in ("P", "PA") else "RGB"))[..., :3]
    except FileNotFoundError:
        raise LoadError(path, "the image file does not exist", "check the path") from None
    except DecompressionBombError as exc:
        raise LoadError(path, f"the image declares too many pixels to decode safely ({exc})",
                        "replace it with a real image or remove it (a damaged header, or a decompression bomb)"
                        ) from exc
    except UnidentifiedImageError as exc:
        raise LoadError(path, "the file is not an image Pillow can identify (corrupt, empty or another format)",
                        "replace or remove it") from exc
    except (OSError, SyntaxError) as exc:
        raise LoadError(path, f"the image is truncated or corrupt ({type(exc).__name__}: {exc})",
                        "replace or remove it") from exc
    return rgb2y(np.ascontiguousarray(arr, dtype=np.uint8))
