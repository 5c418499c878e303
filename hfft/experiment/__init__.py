"""Runs of strategies from checkpoints: checkpoints, data, model factories, what a
run starts from, sampling, evaluation, budgets, strategies and their runners
(SGD schedules, HF, ``auto``), training and fine-tuning, output folders and
interrupts.

Built on :mod:`hfft.optim` and :mod:`hfft.models`. Importing this package
imports nothing.
"""
