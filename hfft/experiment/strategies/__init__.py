"""The fine-tuning strategies: their registry, the typed strategy value, the
runners (SGD schedules, HF, ``auto`` and its switch rule, the late-phase methods).

Importing this package imports nothing."""
