"""PNG plots of a comparison, after the paper's Figures 1, 2, 5 and 7.

- :func:`plot_budget_curves` — train loss and test accuracy over the budget
  spent, mean over seeds with the interquartile band (Figures 2 and 6);
- :func:`plot_relative_performance` — each run's best value scaled per
  checkpoint to [0, 1] (Figures 1 and 5);
- :func:`plot_learning_rates` — SGD learning rates and HF damping over the
  budget (Figure 7).

Figures are built on :class:`matplotlib.figure.Figure` with the Agg canvas
directly, never through ``pyplot``: no backend is switched, no figure is
registered globally (nothing to close, nothing leaks between calls), and
``rcParams`` are not touched. Every file
is written atomically (rendered into memory, then temporary file + rename).
HF strategies are drawn in oranges and reds (darker for larger m), SGD
strategies in greys, greens and blues, as in the paper, and ``auto`` (SGD
switching to HF) in purple; the late-phase methods of the extended suite in
colours of their own, dashed; :func:`strategy_colors` gives every plot of one
comparison the same colours, :func:`strategy_linestyle` the line styles.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib as mpl
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_hex, to_rgb
from matplotlib.figure import Figure

from hfft._io import atomic_write_bytes
from hfft.analysis.ranking import ranked_metrics
from hfft.analysis.run_summary import RunSummary, by_strategy, select_runs
from hfft.experiment.strategies.registry import entry_of, kind_of

__all__ = [
    "GRID",
    "budget_band",
    "interpolate_run",
    "plot_budget_curves",
    "plot_relative_performance",
    "strategy_colors",
    "strategy_linestyle",
]

GRID = np.linspace(0.0, 1.0, 101)
"""The common budget-fraction grid the runs are interpolated onto (0 %, 1 %, …, 100 %)."""

# The paper's colours: constant α grey, α/10 green, cosine blue (plateau: teal).
_SGD_COLORS = {
    "sgd": "#7f7f7f",
    "sgd-div10": "#2ca02c",
    "sgd-cosine": "#1f77b4",
    "sgd-plateau": "#17becf",
}
# The late-phase strategies of the extended suite: colours far from the SGD blues and
# greens, auto's purple, HF's oranges and reds and from each other (adam olive, adamw
# indigo: a shade of one hue apart was mistaken for the other), drawn dashed
_EXTENDED_COLORS = {
    "swa": "#8c564b",
    "lbfgs": "#e377c2",
    "adam": "#bcbd22",
    "adamw": "#1a1a8c",
    "sgd-schedulefree": "#000000",
    # HF's peers (issue #28): mustard, magenta, mint
    "kfac": "#e6ab02",
    "soap": "#ff00ff",
    "muon": "#66c2a5",
}
# SGD (the paper's) and HF solid, auto dash-dotted, the extended suite dashed, HF's
# second-order and preconditioned peers dotted (their colours come near adam's and sgd's)
_EXTENDED_LINE = "--"
_PEER_LINE = ":"
_PEERS = ("kfac", "soap", "muon")
_AUTO_LINE = "-."
_OTHER_SGD = "#5b6f8a"
_HF_SINGLE = "#d62728"
_AUTO = "#9467bd"
# 1600 × 600 px at 120 dpi: the fonts come out 1.2 × their default point size
_DPI = 120
_WIDE = (1600 / _DPI, 600 / _DPI)


def _base(label: str) -> str:
    return label.partition(":")[0]


def _is_hf(label: str) -> bool:
    return kind_of(label) == "hf"


def _is_auto(label: str) -> bool:
    return kind_of(label) == "auto"


def _is_extra(label: str) -> bool:
    """A strategy beyond the paper's (the extended suite's late-phase methods, HF's peers)."""
    found = entry_of(label)
    if found is None:
        return False
    return found.kind in ("first-order", "second-order") and "paper" not in found.suites


def _marker(label: str) -> str:
    if _is_extra(label):
        return "^"
    return "o" if _is_hf(label) else "D" if _is_auto(label) else "s"


def strategy_linestyle(label: str) -> str:
    """The line style of a strategy's curves: ``--`` for the extended suite
    (``swa``, ``lbfgs``, ``adam``, ``adamw``, ``sgd-schedulefree``), ``:`` for
    HF's peers ``kfac``, ``soap`` and ``muon``, ``-.`` for ``auto``, solid for
    the paper's SGD strategies and HF.

    With :func:`strategy_colors`, no two strategies of one comparison look
    alike, even where two colours are close.
    """
    if label.split(":")[0] in _PEERS:
        return _PEER_LINE
    if _is_extra(label):
        return _EXTENDED_LINE
    return _AUTO_LINE if _is_auto(label) else "-"


def _hf_batch(label: str) -> int:
    match = re.search(r"(?:^|[:,])m=(\d+)", label)
    return int(match.group(1)) if match else 0


def _shade(color: str, k: int) -> str:
    # the k-th variant of a base colour: alternately darker and lighter
    if k == 0:
        return color
    rgb = np.array(to_rgb(color))
    t = min(0.6, 0.2 * ((k + 1) // 2))
    mixed = rgb * (1 - t) if k % 2 else rgb + (1 - rgb) * t
    r, g, b = (float(c) for c in mixed)
    return to_hex((r, g, b))


def strategy_colors(strategies: Iterable[str]) -> dict[str, str]:
    """A colour per strategy label, in plotting order (SGD strategies, ``auto``, HF by m).

    The four SGD strategies of the paper have fixed colours (grey, green,
    blue, teal); variants with options get shades of their base colour.
    ``auto`` is purple (shades for several variants). HF strategies get
    oranges to dark reds, ordered by their batch size m. Calls with the same
    set of labels give the same colours, in any order.

    Args:
        strategies: Strategy labels such as ``sgd-cosine`` or ``hf:m=2048``.

    Returns:
        ``{label: "#rrggbb"}``, SGD labels first (in the paper's order), then
        ``auto`` labels, then HF labels by increasing m.
    """
    labels = sorted(set(strategies))
    sgd_order = [*_SGD_COLORS, *_EXTENDED_COLORS]
    sgd = sorted(
        (s for s in labels if not _is_hf(s) and not _is_auto(s)),
        key=lambda s: (sgd_order.index(_base(s)) if _base(s) in sgd_order else 99, s),
    )
    auto = sorted((s for s in labels if _is_auto(s)), key=lambda s: (_hf_batch(s), s))
    hf = sorted((s for s in labels if _is_hf(s)), key=lambda s: (_hf_batch(s), s))
    colors: dict[str, str] = {}
    seen: dict[str, int] = {}
    for s in sgd:
        k = seen[_base(s)] = seen.get(_base(s), -1) + 1
        base = _SGD_COLORS.get(_base(s)) or _EXTENDED_COLORS.get(_base(s), _OTHER_SGD)
        colors[s] = _shade(base, k)
    for k, s in enumerate(auto):
        colors[s] = _shade(_AUTO, k)
    cmap = mpl.colormaps["YlOrRd"]
    for i, s in enumerate(hf):
        colors[s] = _HF_SINGLE if len(hf) == 1 else to_hex(cmap(0.45 + 0.5 * i / (len(hf) - 1)))
    return colors


def interpolate_run(
    fractions: Sequence[float] | np.ndarray,
    values: Sequence[float] | np.ndarray,
    grid: np.ndarray = GRID,
) -> np.ndarray:
    """A run's evaluations on a common budget grid, each value held until the next.

    At a grid point the value is that of the last evaluation at or before it
    (the first value before the first evaluation). Holding rather than
    interpolating is what was measured: an HF run whose single step spans the
    whole budget shows no fictitious gradual improvement, and a run that
    stopped early (e.g. diverged) keeps its last value.

    Args:
        fractions: Budget fractions of the evaluations, increasing.
        values: The metric at these fractions (finite).
        grid: The fractions to interpolate at.

    Returns:
        The values on ``grid``; all NaN when the run has no evaluation.
    """
    xs = np.asarray(fractions, dtype=float)
    ys = np.asarray(values, dtype=float)
    if xs.size == 0:
        return np.full(grid.shape, np.nan)
    idx = np.searchsorted(xs, grid, side="right") - 1
    return ys[np.clip(idx, 0, xs.size - 1)]


def budget_band(
    runs: Sequence[RunSummary], metric: str, scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Mean, lower and upper quartile of ``metric`` over runs, on :data:`GRID`.

    Args:
        runs: The runs of one strategy (one per seed).
        metric: An evaluation key.
        scale: A factor applied to the values (100 for accuracies in %).

    Returns:
        ``(mean, q25, q75)``, each of :data:`GRID`'s shape, over the runs that
        have a finite value of ``metric``; ``None`` when none has.
    """
    curves = []
    for r in runs:
        fractions, values = r.series(metric)
        if values.size:
            curves.append(interpolate_run(fractions, values * scale))
    if not curves:
        return None
    stack = np.stack(curves)
    q25, q75 = np.percentile(stack, [25, 75], axis=0)
    return stack.mean(axis=0), q25, q75


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buffer)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _no_data(ax: Axes) -> None:
    ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="0.4")


def _checkpoint_of(runs: Sequence[RunSummary], checkpoint: str | None) -> str:
    if checkpoint is not None:
        return checkpoint
    return runs[0].checkpoint if runs else ""


def plot_budget_curves(
    runs: Iterable[RunSummary],
    path: str | Path,
    checkpoint: str | None = None,
    title: str | None = None,
) -> Path:
    """Train loss and test accuracy over the budget spent, per strategy (paper Figure 2).

    Each run is interpolated onto :data:`GRID` (:func:`interpolate_run`);
    per strategy the line is the mean over seeds and the band spans the lower
    to the upper quartile. The loss axis is logarithmic when the plotted
    values span more than a decade.

    Args:
        runs: The runs to plot.
        path: The PNG file to write (its directory is created).
        checkpoint: Plot only runs from this checkpoint; required when the
            runs come from several checkpoints.
        title: The figure title (default: names the checkpoint and the seeds).

    Returns:
        ``path``.

    Raises:
        ValueError: If there is no run to plot, or the runs come from several
            checkpoints and none is named.
    """
    selected = select_runs(runs, checkpoint)
    if not selected:
        raise ValueError("no runs to plot")
    groups = by_strategy(selected)
    colors = strategy_colors(groups)
    seeds = sorted({len(g) for g in groups.values()})
    if title is None:
        n = f"{seeds[0]}" if len(seeds) == 1 else f"{seeds[0]}–{seeds[-1]}"
        title = (
            f"Fine-tuning from {_checkpoint_of(selected, checkpoint)}: mean over {n} seeds "
            "(line) and lower to upper quartile (band)"
        )
    fig = Figure(figsize=_WIDE, dpi=_DPI, layout="constrained")
    ax_loss, ax_test = fig.subplots(1, 2)
    test = ranked_metrics(selected)[0]
    name = test.removeprefix("test_").replace("r2", "R²").replace("rmse", "RMSE")
    percent = test.endswith("accuracy")
    panels = (
        (ax_loss, "train_eval_loss", 1.0, "train loss (train-eval set)", "train loss"),
        (
            ax_test,
            test,
            100.0 if percent else 1.0,
            f"test {name}" + (" [%]" if percent else ""),
            f"test {name}",
        ),
    )
    handles: dict[str, Any] = {}
    for ax, metric, scale, ylabel, title_ in panels:
        _budget_panel(ax, groups, colors, metric, scale, handles)
        ax.set_ylabel(ylabel)
        ax.set_title(title_)
    fig.suptitle(title, x=0.01, ha="left")  # clear of the legend at the right
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="outside right upper")
    return _save(fig, path)


def _budget_panel(
    ax: Axes,
    groups: dict[str, list[RunSummary]],
    colors: dict[str, str],
    metric: str,
    scale: float,
    handles: dict[str, Any],
) -> None:
    """One metric over the budget: each strategy's mean line and quartile band."""
    drawn = []
    for strategy, color in colors.items():
        band = budget_band(groups[strategy], metric, scale)
        if band is None:
            continue
        mean, q25, q75 = band
        x = 100 * GRID
        ax.fill_between(x, q25, q75, color=color, alpha=0.2, linewidth=0)
        style = strategy_linestyle(strategy)
        (line,) = ax.plot(x, mean, color=color, linestyle=style, linewidth=2)
        handles.setdefault(strategy, line)
        drawn.append(np.concatenate([mean, q25, q75]))
    ax.set_xlim(0, 100)
    ax.set_xlabel("budget spent [%]")
    ax.grid(True, alpha=0.3)
    if not drawn:
        _no_data(ax)
    elif metric.endswith("_loss"):
        lo, hi = float(np.min(drawn)), float(np.max(drawn))
        if lo > 0 and hi / lo > 10:
            ax.set_yscale("log")


def plot_relative_performance(
    rel: Mapping[str, Mapping[str, Sequence[float]]],
    path: str | Path,
    metric_label: str,
) -> Path:
    """Each run's relative performance per checkpoint (paper Figures 1 and 5).

    x is the checkpoint (in the order of ``rel``), y the relative performance
    from 0 (worst run at that checkpoint) to 1 (best), one marker per run
    (circles HF, squares SGD). Strategies are shifted side by side within a
    checkpoint, and the seeds of one strategy slightly apart, by fixed offsets
    (deterministic jitter).

    Args:
        rel: ``{checkpoint: {strategy: [relative value per run]}}``, as from
            :func:`hfft.analysis.ranking.relative_performance`.
        path: The PNG file to write (its directory is created).
        metric_label: What was scored, e.g. ``test accuracy`` or ``train loss``.

    Returns:
        ``path``.

    Raises:
        ValueError: If ``rel`` has no checkpoint.
    """
    checkpoints = list(rel)
    if not checkpoints:
        raise ValueError("no checkpoints to plot")
    colors = strategy_colors(s for per in rel.values() for s in per)
    k = max(len(colors), 1)
    width = 0.7  # of the unit spacing between checkpoints
    slot = width / k
    fig = Figure(figsize=(max(9.0, 3.5 + 0.9 * len(checkpoints)), 5), dpi=_DPI)
    fig.set_layout_engine("constrained")
    ax = fig.subplots()
    for j, (strategy, color) in enumerate(colors.items()):
        xs: list[float] = []
        ys: list[float] = []
        for i, c in enumerate(checkpoints):
            values = list(rel[c].get(strategy, ()))
            n = len(values)
            spread = (np.arange(n) - (n - 1) / 2) * min(0.02, 0.6 * slot / max(n, 1))
            xs.extend(i - width / 2 + slot * (j + 0.5) + spread)
            ys.extend(values)
        ax.scatter(
            xs,
            ys,
            color=color,
            marker=_marker(strategy),
            s=36,
            alpha=0.85,
            label=strategy,
            edgecolors="white",
            linewidths=0.5,
        )
    ax.set_xticks(range(len(checkpoints)))
    ax.set_xticklabels(checkpoints, rotation=30 if len(checkpoints) > 6 else 0)
    ax.set_xlim(-0.6, len(checkpoints) - 0.4)
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("checkpoint")
    ax.set_ylabel(f"relative {metric_label} (0 = worst run, 1 = best)")
    ax.set_title(
        f"Best {metric_label} within the budget, scaled per checkpoint; one marker per run"
    )
    ax.grid(True, axis="y", alpha=0.3)
    if colors:
        fig.legend(loc="outside right upper")
    return _save(fig, path)


def _positive(value: Any, zero: bool = False) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    return value >= 0 if zero else value > 0
