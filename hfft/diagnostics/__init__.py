"""Checking and measuring: ``selftest`` (dense-matrix references, measurements of a
user's model and their verdicts) and ``bench`` (operations, whole HF steps, the SGD
loop, and the instruments that time and count them).

Built on :mod:`hfft.optim` and :mod:`hfft.experiment`. Importing this package
imports nothing.
"""
