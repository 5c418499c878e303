"""Comparing strategies: ``compare`` (many fine-tuning runs), run summaries,
rankings with their tie rule, the Wilcoxon test, plots.

Built on :mod:`hfft.experiment`. Importing this package imports nothing.
"""
