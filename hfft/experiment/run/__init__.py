"""One run from start to end: training and fine-tuning, budgets, the starting
point a checkpoint gives, evaluation, checkpoints, the run folder and its records.

Importing this package imports nothing."""
