"""Super-resolution data under the conventions of the SR literature.

MATLAB-compatible bicubic :func:`imresize`, BT.601 colour (:func:`rgb2y`,
:func:`rgb2ycbcr`, :func:`ycbcr2rgb`), :func:`modcrop`, image reading (:func:`load_y`),
training patches (:class:`T91Patches`), evaluation sets (:class:`SREvalSet`) and the
embedded sample (:func:`sample_dir`). See ``docs/sr_conventions.md``.
"""

from landprobe.data._color import modcrop, rgb2y, rgb2ycbcr, ycbcr2rgb
from landprobe.data._datasets import SREvalSet, T91Patches, bicubic_pair, sr_covariates
from landprobe.data._images import IMAGE_EXTENSIONS, list_images, load_y
from landprobe.data._imresize import cubic, imresize, resize_weights
from landprobe.data._sample import sample_dir

__all__ = [
    # resizing
    "imresize",
    "cubic",
    "resize_weights",
    # colour and geometry
    "rgb2y",
    "rgb2ycbcr",
    "ycbcr2rgb",
    "modcrop",
    # files
    "IMAGE_EXTENSIONS",
    "list_images",
    "load_y",
    "sample_dir",
    # datasets
    "bicubic_pair",
    "T91Patches",
    "SREvalSet",
    "sr_covariates",
]
