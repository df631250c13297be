"""Recipes: the study end to end (:func:`reproduce`, :func:`summarize`, :func:`summarize_seeds`, the
landscape of its solutions: :func:`study`) and a one-minute :func:`demo`.

The training loop they share (``_train``: data stream, step, validation, checkpoints, DDP)
is private; its knobs are the fields of ``TrainSpec``, passed as keyword overrides.
"""

from landprobe.recipes.demo import demo
from landprobe.recipes.reproduce import PRESETS, SETTINGS, reproduce, seeds_figure, summarize, summarize_seeds
from landprobe.recipes.study import study, study_figures

__all__ = ["reproduce", "summarize", "summarize_seeds", "seeds_figure", "study", "study_figures", "demo", "PRESETS", "SETTINGS"]
