"""What a run optimises: the one place that says which loss hfft's runs use.

Every part of a run that computes a loss — training, fine-tuning, every
strategy's runner, evaluation, ``selftest`` and ``bench`` — takes it from
:func:`loss_function`, so that they all optimise and report the same thing.
"""

from __future__ import annotations

from torch import nn

__all__ = ["loss_function"]


def loss_function() -> nn.Module:
    """The loss of hfft's classification runs: softmax cross-entropy, averaged over samples."""
    return nn.CrossEntropyLoss()
