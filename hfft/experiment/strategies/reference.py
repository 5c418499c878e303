"""``docs/strategies.md``: every registered strategy and its options, made from the registry.

``python -m hfft.experiment.strategies.reference > docs/strategies.md`` writes
the page; a test holds the page to the registry. Plain Python; importing
this module does not import torch.
"""

from __future__ import annotations

from hfft.experiment.strategies.options import format_value
from hfft.experiment.strategies.registry import SUITES, StrategyEntry, entries

__all__ = ["strategies_markdown"]

_HEAD = """# Strategies

Every strategy `hfft finetune --strategy` and `hfft compare -s` accept, with its
options (`name:key=value,key=value`). This page is generated from the registry
(`hfft/experiment/strategies/catalog.py`) by
`python -m hfft.experiment.strategies.reference > docs/strategies.md`; a test
keeps it in step. How to add a strategy: [the last section](#adding-a-strategy).
"""

_TAIL = """## Adding a strategy

A strategy is one entry of the registry and the runner it builds. In one module:

```python
from hfft.experiment.limits import POSITIVE
from hfft.experiment.strategies.options import Option
from hfft.experiment.strategies.registry import StrategyEntry, register
from hfft.experiment.strategies.runners import SampledRunner

class FixedRateRunner(SampledRunner):  # draws SGD's seeded batches
    def __init__(self, strategy, context): ...  # the optimizer, at strategy.get("rate")
    def step(self, fraction): ...  # one update; returns its step entry
    def settings(self): ...  # {"lr": rate}, for the evaluations

register(StrategyEntry(
    "sgd-fixed", "SGD at a fixed rate",
    {"rate": Option(float, "the learning rate", range=POSITIVE, default=0.01)},
    build=FixedRateRunner,
))
```

Once the module is imported, `finetune`, `compare` (`-s sgd-fixed:rate=0.05`)
and `study` run it with the same budget, evaluation points, data pipeline and
paired seeds as every other strategy; `tests/test_new_strategy.py` does exactly
this without changing any other file. A built-in strategy adds its entry to
`catalog.py`, naming its builder as `"module:function"` so that `--help` stays
free of torch.
"""


def _section(e: StrategyEntry) -> list[str]:
    suites = ", ".join(e.suites) if e.suites else "none (name it with -s)"
    lines = [
        f"## `{e.name}`",
        "",
        f"{e.summary}. Kind: {e.kind}; `compare --suite`: {suites}; evaluated and saved: "
        f"{e.evaluates}"
        + ("; a time-to-target baseline" if e.baseline else "")
        + ("" if e.data_parallel else "; runs in one process only")
        + ".",
        "",
    ]
    if e.log is not None:
        lines += [f"Its `metrics.json` holds `{e.log}` ([records](records.md)).", ""]
    if not e.options:
        return [*lines, "No options.", ""]
    lines += ["| option | accepts | default | meaning |", "|---|---|---|---|"]
    for key, option in e.options.items():
        default = "—" if option.default is None else f"`{format_value(option.default)}`"
        lines.append(f"| `{key}` | {option.describe()} | {default} | {option.help} |")
    return [*lines, ""]


def strategies_markdown() -> str:
    """The page: a section per strategy, in registration order, and how to add one."""
    lines = [_HEAD, "Suites: " + ", ".join(f"`{s}`" for s in SUITES) + ".", ""]
    for e in entries():
        lines += _section(e)
    return "\n".join(lines) + "\n" + _TAIL


if __name__ == "__main__":  # pragma: no cover - the command in the docstring
    print(strategies_markdown(), end="")
