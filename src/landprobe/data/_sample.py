"""Location of the small image sample shipped inside the package."""

from __future__ import annotations

from pathlib import Path

__all__ = ["sample_dir"]

_SAMPLE = Path(__file__).resolve().parent / "sample"
_SUBSETS = ("train", "val")


def sample_dir(subset: str | None = None) -> Path:
    """Folder of the embedded sample images (see ``PROVENANCE.txt`` there).

    ``train`` holds six crops of T91 images (Yang et al. 2010), ``val`` two crops of Set5
    images (Bevilacqua et al. 2012); enough for a demo or a smoke test with no paths.

    Args:
        subset: ``"train"``, ``"val"`` or None for the sample's root folder.

    Returns:
        An existing folder.

    Raises:
        ValueError: If ``subset`` is not one of ``"train"``, ``"val"`` or None.

    Example:
        >>> from landprobe.data import sample_dir
        >>> sorted(p.name for p in sample_dir("train").glob("*.png"))[:2]
        ['t10_crop.png', 't1_crop.png']
        >>> sample_dir().joinpath("PROVENANCE.txt").is_file()
        True
    """
    if subset is None:
        return _SAMPLE
    if subset not in _SUBSETS:
        raise ValueError(f"sample_dir: `subset` must be one of {_SUBSETS} or None, got {subset!r}.")
    return _SAMPLE / subset
