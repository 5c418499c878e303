"""PNG plots of a comparison: valid files, the interpolation and the quartile bands."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
from matplotlib.colors import to_rgb

from hfft.analysis.plots import (
    GRID,
    budget_band,
    interpolate_run,
    plot_budget_curves,
    plot_relative_performance,
    strategy_colors,
)
from hfft.analysis.ranking import RunSummary, relative_performance

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def synthetic_run(strategy: str, seed: int, checkpoint: str = "ckpt-10") -> RunSummary:
    """A run with evaluations at slightly jittered fractions, like a wall-clock budget."""
    rng = np.random.default_rng(seed + 10 * len(strategy))
    fractions = np.sort(np.clip(np.linspace(0, 1, 6) + rng.uniform(0, 0.03, 6), 0, 1.02))
    fractions[0] = 0.0
    hf = strategy.startswith("hf")
    loss = 2.0 * np.exp(-(4.0 if hf else 1.0) * fractions) + 0.01 * seed
    acc = 0.8 + (0.15 if hf else 0.1) * (1 - np.exp(-3 * fractions))
    key = "damping" if hf else "lr"
    evaluations = [
        {
            "fraction": float(f),
            "seconds": 30 * float(f),
            "step": 5 * i,
            "train_eval_loss": float(lo),
            "test_accuracy": float(a),
            key: 0.1 / (1 + i),
        }
        for i, (f, lo, a) in enumerate(zip(fractions, loss, acc, strict=True))
    ]
    return RunSummary.from_metrics(
        checkpoint, seed, {"strategy": strategy, "status": "completed", "evaluations": evaluations}
    )


RUNS = [synthetic_run(s, seed) for s in ("sgd-cosine", "hf:m=2048") for seed in range(3)]


def assert_png(path: Path, height: int, min_width: int) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = mpimg.imread(path)
    assert image.shape[0] == height and image.shape[1] >= min_width
    assert image.shape[2] in (3, 4)
    assert float(np.std(image[..., :3])) > 0.01  # something was drawn
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left


def test_interpolate_run_holds_each_value_until_the_next() -> None:
    grid = np.array([0.0, 0.25, 0.5, 0.65, 0.8, 1.0])
    got = interpolate_run([0.0, 0.5, 0.8], [1.0, 3.0, 2.0], grid)
    np.testing.assert_allclose(got, [1.0, 1.0, 3.0, 3.0, 2.0, 2.0])
    # before the first evaluation the first value is shown
    np.testing.assert_allclose(interpolate_run([0.2], [5.0], np.array([0.0, 0.5])), [5.0, 5.0])


def test_interpolate_run_without_evaluations_is_nan() -> None:
    assert np.isnan(interpolate_run([], [], GRID)).all()


def test_budget_band_mean_and_quartiles_over_seeds() -> None:
    runs = [
        RunSummary.from_metrics(
            "c",
            seed,
            {
                "strategy": "sgd",
                "evaluations": [
                    {"fraction": 0.0, "test_accuracy": v},
                    {"fraction": end, "test_accuracy": v},
                    {"fraction": 1.0, "test_accuracy": math.nan},  # ignored
                ],
            },
        )
        for seed, (v, end) in enumerate([(0.1, 0.9), (0.2, 1.0), (0.6, 0.8)])
    ]
    band = budget_band(runs, "test_accuracy", scale=100.0)
    assert band is not None
    mean, q25, q75 = band
    assert mean.shape == GRID.shape
    np.testing.assert_allclose(mean, 30.0)
    np.testing.assert_allclose(q25, 15.0)
    np.testing.assert_allclose(q75, 40.0)
    assert budget_band(runs, "train_eval_loss") is None


def test_strategy_colors() -> None:
    labels = ["hf:m=4096", "sgd", "hf:m=256", "sgd-cosine", "hf:m=1024", "sgd:lr=0.01"]
    colors = strategy_colors(labels)
    assert colors == strategy_colors(reversed(labels))
    assert list(colors) == [
        "sgd",
        "sgd:lr=0.01",
        "sgd-cosine",
        "hf:m=256",
        "hf:m=1024",
        "hf:m=4096",
    ]
    assert colors["sgd"] == "#7f7f7f" and colors["sgd-cosine"] == "#1f77b4"
    assert len(set(colors.values())) == len(labels)
    for label in ("hf:m=256", "hf:m=1024", "hf:m=4096"):
        r, g, b = to_rgb(colors[label])
        assert r > g and r > b  # oranges and reds
    # larger m, darker red
    assert sum(to_rgb(colors["hf:m=4096"])) < sum(to_rgb(colors["hf:m=256"]))
    assert strategy_colors(["hf:m=512"]) == {"hf:m=512": "#d62728"}


def test_auto_has_its_own_colours_between_sgd_and_hf() -> None:
    labels = ["hf:m=256", "auto:m=512", "sgd", "auto:m=256"]
    colors = strategy_colors(labels)
    assert list(colors) == ["sgd", "auto:m=256", "auto:m=512", "hf:m=256"]
    assert colors["auto:m=256"] == "#9467bd"
    assert len(set(colors.values())) == len(labels)


def test_plot_budget_curves_writes_png(tmp_path: Path) -> None:
    path = plot_budget_curves(RUNS, tmp_path / "plots" / "curves.png", checkpoint="ckpt-10")
    assert path == tmp_path / "plots" / "curves.png"
    assert_png(path, height=600, min_width=1600)


def test_plot_budget_curves_with_a_diverged_run_and_a_missing_metric(tmp_path: Path) -> None:
    bad = RunSummary.from_metrics(
        "ckpt-10",
        9,
        {
            "strategy": "hf:m=2048",
            "status": "diverged",
            "evaluations": [
                {"fraction": 0.0, "train_eval_loss": 1.0},
                {"fraction": 0.3, "train_eval_loss": math.nan},
            ],
        },
    )
    runs = [
        *RUNS[:3],
        bad,
        RunSummary.from_metrics("ckpt-10", 0, {"strategy": "hf", "evaluations": []}),
    ]
    assert_png(plot_budget_curves(runs, tmp_path / "c.png", title="t"), 600, 1600)
    # no run has a test accuracy: that panel says so
    (tmp_path / "c.png").unlink()
    assert_png(plot_budget_curves([bad], tmp_path / "c.png"), 600, 1600)


def test_plot_budget_curves_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no runs"):
        plot_budget_curves([], tmp_path / "c.png")
    mixed = [*RUNS, synthetic_run("sgd", 0, checkpoint="ckpt-05")]
    with pytest.raises(ValueError, match="several checkpoints"):
        plot_budget_curves(mixed, tmp_path / "c.png")


def test_plot_relative_performance_writes_png(tmp_path: Path) -> None:
    runs = [*RUNS, *(synthetic_run(r.strategy, r.seed, "ckpt-05") for r in RUNS)]
    rel = relative_performance(runs, "test_accuracy")
    path = plot_relative_performance(rel, tmp_path / "rel.png", metric_label="test accuracy")
    assert_png(path, height=600, min_width=1000)


def test_plot_relative_performance_needs_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no checkpoints"):
        plot_relative_performance({}, tmp_path / "rel.png", metric_label="test accuracy")
