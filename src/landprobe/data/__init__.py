"""Super-resolution data under the conventions of the SR literature.

MATLAB-compatible bicubic :func:`imresize`, BT.601 colour (:func:`rgb2y`,
:func:`rgb2ycbcr`, :func:`ycbcr2rgb`), :func:`modcrop`, image reading (:func:`load_y`),
training patches (:class:`T91Patches`), evaluation sets (:class:`SREvalSet`) and the
embedded sample (:func:`sample_dir`). See ``docs/sr_conventions.md``.

Corrupted views of any map-style dataset of pairs ``(x, y)`` (Zhang et al. 2017):
:class:`CorruptLabels`, :class:`ShuffledPixels`, :class:`RandomPixels`,
:class:`GaussianInputs`, :class:`ShuffledTargets`, the factory :func:`corrupt` and
:func:`materialize` (a view read once into tensors). See
``docs/memorization.md``.
"""

from landprobe.data._color import modcrop, rgb2y, rgb2ycbcr, ycbcr2rgb
from landprobe.data._corruption import (CORRUPTION_KINDS, CorruptLabels, GaussianInputs, RandomPixels,
                                        ShuffledPixels, ShuffledTargets, corrupt, materialize)
from landprobe.data._datasets import SREvalSet, T91Patches, bicubic_pair, sr_covariates, sr_covariates_with_mean
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
    "sr_covariates_with_mean",
    # corrupted views (Zhang et al. 2017)
    "CorruptLabels",
    "ShuffledPixels",
    "RandomPixels",
    "GaussianInputs",
    "ShuffledTargets",
    "corrupt",
    "materialize",
    "CORRUPTION_KINDS",
]
