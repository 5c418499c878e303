"""Data parallelism: sharding helpers, and 2 Gloo ranks under torchrun against 1 process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from hfft.experiment.run.budget import Budget, BudgetClock
from hfft.optim import distributed
from hfft.optim.curvature import split_batch


def test_single_process_is_rank_zero_of_one() -> None:
    assert not distributed.is_distributed()
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    assert distributed.shard(10) == slice(0, 10)
    t = torch.ones(3)
    assert distributed.all_reduce_sum(t) is t and t.tolist() == [1.0, 1.0, 1.0]
    assert distributed.all_reduce_max(2.5) == 2.5
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}
    assert distributed.initialize("cpu") == "cpu"  # not launched by torchrun: nothing to join


def test_shards_of_every_rank_partition_the_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    for n in (7, 8, 1):
        parts = []
        for r in range(3):
            monkeypatch.setattr(distributed, "rank", lambda r=r: r)
            monkeypatch.setattr(distributed, "world_size", lambda: 3)
            parts.append(distributed.shard(n))
        covered = [i for p in parts for i in range(n)[p]]
        assert covered == list(range(n))
        assert max(p.stop - p.start for p in parts) - min(p.stop - p.start for p in parts) <= 1


def test_shard_weights_of_a_mean_loss_sum_to_one_over_ranks() -> None:
    x, y = torch.randn(10, 2), torch.zeros(10, dtype=torch.long)
    ce, ce_sum = nn.CrossEntropyLoss(), nn.CrossEntropyLoss(reduction="sum")
    shards = [split_batch(x[s], y[s], 2, ce, total=10) for s in (slice(0, 3), slice(3, 10))]
    assert sum(c.weight for chunks in shards for c in chunks) == pytest.approx(1.0)
    assert all(c.weight == 1.0 for c in split_batch(x[:3], y[:3], 2, ce_sum, total=10))


def test_budget_clock_takes_the_slowest_ranks_time() -> None:
    now = [0.0]
    clock = BudgetClock(Budget("seconds", 10.0), time_fn=lambda: now[0])
    clock.resume()
    now[0] = 3.0
    with pytest.raises(RuntimeError, match="pause"):
        clock.synchronize(4.0)
    clock.pause()
    clock.synchronize(4.0)
    assert clock.seconds == 4.0
    with pytest.raises(ValueError, match="back"):
        clock.synchronize(1.0)


def _finetune(args: list[str], ranks: int, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HFFT_DIST_TIMEOUT": "60"}
    env["TORCH_SHOW_CPP_STACKTRACES"] = "1"  # a rank that aborts says where
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"]
        if ranks > 1
        else [sys.executable]
    )
    cmd = [*launcher, "-m", "hfft", "finetune", *args, "--device", "cpu", "--quiet"]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _ranks_said(stderr: str) -> str:
    """What the ranks wrote, without the launcher's traceback (which comes last and
    hides the cause when only the tail is shown)."""
    head, _, _ = stderr.partition('Traceback (most recent call last):\n  File "<frozen runpy>"')
    return head[-6000:] or stderr[-2000:]


def _finetune_twice_if_killed(
    args: list[str], ranks: int, cwd: Path
) -> subprocess.CompletedProcess:
    """A run of ``ranks`` ranks, once more if a rank died of a signal (SIGABRT).

    In about 1 of 3 full CI runs on the shared 2-core machine one rank of the
    two-rank sgd-cosine run died with SIGABRT (never in ~50 runs of this test
    alone, also under load), before or after a successful run: the cause was
    not found. Rather than a flaky CI, a killed run is run again and what its
    ranks said is kept as a warning; a run that fails for any other reason, or
    twice, fails the test with what the ranks said.
    """
    out = Path(args[args.index("--out") + 1])
    proc = _finetune(args, ranks, cwd)
    if proc.returncode != 0 and "Signal 6 (SIGABRT)" in proc.stderr:
        said = _ranks_said(proc.stderr)
        warnings.warn(f"a rank aborted; running again. The ranks said:\n{said}", stacklevel=2)
        shutil.rmtree(out, ignore_errors=True)
        proc = _finetune(args, ranks, cwd)
    assert proc.returncode == 0, _ranks_said(proc.stderr)
    return proc


@pytest.mark.slow
@pytest.mark.filterwarnings("default:a rank aborted")
@pytest.mark.parametrize(
    ("strategy", "budget"), [("hf:m=256", "3steps"), ("sgd-cosine", "15steps")], ids=["hf", "sgd"]
)
def test_two_gloo_ranks_reproduce_the_single_process_run(
    trained_run: Path, tmp_path: Path, strategy: str, budget: str
) -> None:
    ckpt = sorted(trained_run.glob("*.safetensors"))[-1]
    runs = {}
    for ranks in (1, 2):
        out = tmp_path / f"ranks{ranks}"
        args = [str(ckpt), "--strategy", strategy, "--budget", budget, "--out", str(out)]
        _finetune_twice_if_killed(args, ranks, tmp_path)
        runs[ranks] = (json.loads((out / "metrics.json").read_text()), out)
    (one, out1), (two, out2) = runs[1], runs[2]
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert len(one["steps"]) == len(two["steps"]) > 0
    # float32 sums in another order, amplified over CG iterations: agree to ~1e-5
    keys = ("loss_before", "loss_after", "rho") if strategy.startswith("hf") else ("loss",)
    for a, b in zip(one["steps"], two["steps"], strict=True):
        for k in keys:
            assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-6), k
        if strategy.startswith("hf"):
            assert (a["cg_iterations"], a["alpha"]) == (b["cg_iterations"], b["alpha"])
    for e1, e2 in zip(one["evaluations"], two["evaluations"], strict=True):
        assert e2["test_loss"] == pytest.approx(e1["test_loss"], rel=1e-4)
    w1, w2 = load_file(out1 / "final.safetensors"), load_file(out2 / "final.safetensors")
    for name, tensor in w1.items():
        torch.testing.assert_close(w2[name], tensor, rtol=1e-3, atol=1e-4)


@pytest.mark.slow
def test_a_failing_rank_ends_the_job_with_its_error(trained_run: Path, tmp_path: Path) -> None:
    factory = tmp_path / "data.py"
    factory.write_text(
        "import os\nimport torch\n\n"
        "def factory():\n"
        "    if os.environ.get('RANK') == '1':\n"
        "        raise RuntimeError('disk on rank 1 is unreadable')\n"
        "    x, y = torch.randn(300, 1, 8, 8), torch.randint(0, 10, (300,))\n"
        "    return (x[:200], y[:200]), (x[200:], y[200:])\n"
    )
    ckpt = sorted(trained_run.glob("*.safetensors"))[-1]
    args = [str(ckpt), "--data", f"{factory}:factory", "--strategy", "sgd", "--budget", "5steps"]
    proc = _finetune([*args, "--out", str(tmp_path / "out")], 2, tmp_path)
    assert proc.returncode != 0
    assert "hfft: error: rank 1: Data factory" in proc.stderr
    assert "disk on rank 1 is unreadable" in proc.stderr


@pytest.mark.slow
@pytest.mark.filterwarnings("default:a rank aborted")
def test_auto_decides_alike_on_every_rank(trained_run: Path, tmp_path: Path) -> None:
    """Probe decisions use the slowest rank's times, so no rank waits for a step the
    others skipped; the run completes and logs its probes once."""
    ckpt = sorted(trained_run.glob("*.safetensors"))[-1]
    out = tmp_path / "auto"
    args = [str(ckpt), "--strategy", "auto:m=256,interval=0.25", "--budget", "24steps"]
    _finetune_twice_if_killed([*args, "--out", str(out)], 2, tmp_path)
    log = json.loads((out / "metrics.json").read_text())
    assert log["status"] == "completed" and log["world_size"] == 2
    assert log["auto"]["probes"]


@pytest.mark.parametrize(
    ("args", "code", "said"),
    [
        (["finetune", "--help"], 0, "--strategy"),
        (["finetune", "model.pt"], 2, "hfft: error: rank 0: "),
    ],
    ids=["help", "error"],
)
def test_a_launched_process_leaves_with_its_exit_code_and_all_its_output(
    tmp_path: Path, args: list[str], code: int, said: str
) -> None:
    """Under torchrun the process ends with ``os._exit`` (no interpreter teardown, where a
    Gloo rank now and then died of SIGABRT): its exit code and every line it printed
    into a pipe (block-buffered) must still come out."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK")}
    env["WORLD_SIZE"] = "2"  # launched, but no process group to join
    proc = subprocess.run(
        [sys.executable, "-m", "hfft", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == code, proc.stderr
    assert said in proc.stdout + proc.stderr
    if code == 0:
        assert proc.stdout.rstrip().endswith("╯")  # the help's last box line: nothing lost
