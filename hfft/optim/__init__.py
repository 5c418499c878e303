"""One Hessian-free step and its parts: the optimizer, its record, the curvature
operator and traced linearisation, output Hessians, CG, damping, line search,
preconditioner, flat-parameter plumbing and data-parallel sums.

Imports nothing else of hfft: usable on its own, e.g. ``from hfft.optim.optimizer
import HessianFree`` (or ``from hfft import HessianFree``). Importing this package
imports nothing.
"""
