"""The data a run sees: data sets (built-in and the user's), splits, streaming,
seeded batch sampling, model and data factories and the task.

Importing this package imports nothing."""
