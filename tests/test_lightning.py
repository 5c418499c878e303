"""Lightning checkpoints end to end: object hyperparameters read as data, and
``--export lightning`` writing the fine-tuned weights back into a copy of the ``.ckpt``.

The user's project (``tests/lightning_project.py``) trains a LightningModule with an
OmegaConf config, an ``argparse.Namespace`` and a ``pathlib`` path among its
hyperparameters and lets the ``Trainer`` save the checkpoint. hfft fine-tunes the
network inside it (``--model …:network``, the ``net.`` prefix stripped); the user
loads ``final.ckpt`` with ``load_from_checkpoint`` and gets hfft's final evaluation.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from hfft._io import sha256_file
from hfft.cli import app

pytest.importorskip("lightning", reason="Lightning (in the test extra) writes the checkpoint")
pytest.importorskip("omegaconf", reason="the lightning extra: pip install 'hfft[lightning]'")
lp = pytest.importorskip("tests.lightning_project")

pytestmark = [
    # Lightning's own: its pytree helper on torch 2.14, num_workers advice, weights_only
    pytest.mark.filterwarnings("ignore:.*isinstance\\(treespec, LeafSpec\\).*:FutureWarning"),
    pytest.mark.filterwarnings("ignore:.*does not have many workers:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*weights_only.*:UserWarning"),
]

runner = CliRunner()
PROJECT = Path(lp.__file__).resolve()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return lp.train(tmp_path_factory.mktemp("lightning"))


def finetune(ckpt: Path, out: Path, *extra: str, code: int = 0) -> str:
    args = [
        "finetune", str(ckpt), "--model", f"{PROJECT}:network", "--data", f"{PROJECT}:data",
        "--valid-fraction", "0.2", "--budget", "3steps", "--eval-points", "2",
        "--out", str(out), "--device", "cpu", *extra,
    ]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    return result.output


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["hf:m=64,cg_max_iter=10", "sgd"])
def test_export_lightning_writes_a_ckpt_that_load_from_checkpoint_loads(
    ckpt: Path, tmp_path: Path, strategy: str
) -> None:
    before = sha256_file(ckpt)
    sgd = ["--lr", "0.02", "--batch-size", "32"] if strategy == "sgd" else []
    said = finetune(ckpt, tmp_path / "run", "--strategy", strategy, "--export", "lightning", *sgd)
    assert "stripped prefix 'net.'" in said and "final.ckpt" in said
    log = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert log["config"]["export"] == "lightning" and log["files"]["final.ckpt"]
    module_class = lp.module_class()
    start = lp.own_evaluation(module_class.load_from_checkpoint(ckpt, weights_only=False))
    assert log["initial"]["test_loss"] == pytest.approx(start[0], rel=1e-5)
    loaded = module_class.load_from_checkpoint(tmp_path / "run" / "final.ckpt", weights_only=False)
    loss, accuracy = lp.own_evaluation(loaded)
    assert log["final"]["test_loss"] == pytest.approx(loss, rel=1e-5)
    assert log["final"]["test_accuracy"] == pytest.approx(accuracy)
    assert loss != pytest.approx(start[0], rel=1e-4)  # the weights did change
    assert loaded.hparams.config.optimizer.name == "sgd" and loaded.hparams.run.seed == 0
    original = torch.load(ckpt, weights_only=False)
    exported = torch.load(tmp_path / "run" / "final.ckpt", weights_only=False)
    assert exported.keys() == original.keys()
    torch.testing.assert_close(exported["optimizer_states"], original["optimizer_states"])
    assert sha256_file(ckpt) == before  # the input is never written


def test_export_lightning_is_refused_for_a_file_that_holds_no_lightning_state(
    tmp_path: Path,
) -> None:
    plain = tmp_path / "weights.pt"
    torch.save(lp.network().state_dict(), plain)
    said = finetune(plain, tmp_path / "run", "--export", "lightning", code=2)
    assert "--export lightning writes the weights back into a copy of a Lightning .ckpt" in said
    assert not (tmp_path / "run").exists()


def test_a_half_precision_ckpt_says_that_the_export_rounds(ckpt: Path, tmp_path: Path) -> None:
    obj = torch.load(ckpt, weights_only=False)
    obj["state_dict"] = {k: v.to(torch.bfloat16) for k, v in obj["state_dict"].items()}
    half = tmp_path / "half.ckpt"
    torch.save(obj, half)
    said = finetune(half, tmp_path / "run", "--strategy", "hf:m=64", "--export", "lightning")
    assert "final.ckpt keeps the checkpoint's bfloat16 weights" in " ".join(said.split())
    exported = torch.load(tmp_path / "run" / "final.ckpt", weights_only=False)
    assert all(t.dtype == torch.bfloat16 for t in exported["state_dict"].values())
