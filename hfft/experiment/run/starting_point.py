"""What a fine-tuning run starts from: checkpoint → model, data and training hyperparameters.

A checkpoint written by ``hfft train`` carries its model, data set, data seed
and SGD hyperparameters in its metadata, and the run manifest beside it
(``run.json``) knows the training time: the robust one (the median epoch × the
epochs) that a budget of ``N%`` takes, or, from a ``run.json`` written before
hfft kept it, the raw clock's (:func:`training_time`). A foreign checkpoint (a plain
``state_dict``) needs the model and data named explicitly, and the training
time when a budget is a percentage of it.

Precedence for every hyperparameter: explicit override, then the checkpoint's
metadata, then the registered problem's defaults.

A checkpoint is data, never code: from its metadata only names of hfft's own
model registry (or of timm's, ``timm:NAME``) and data sets are taken, with plain
argument values (int, float, bool, str) and hyperparameters in their ranges
(:mod:`hfft.experiment.limits`). A header that names a file, a module or anything
else is refused with one sentence; code runs only when the user names it
(``--model file.py:fn``, ``--data file.py:fn``). A transformers ``save_pretrained``
folder's config names a class that transformers itself ships, or is refused
(:mod:`hfft.experiment.run.pretrained`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from hfft._text import quoted
from hfft.experiment.limits import check
from hfft.experiment.run.metadata import StartingPointError, trusted_metadata

if TYPE_CHECKING:
    from torch import nn

    from hfft.experiment.data.splits import DataSplits
    from hfft.experiment.data.task import Task
    from hfft.experiment.records import SourceEntry, SourceOptionsEntry
    from hfft.experiment.run.budget import Budget
    from hfft.experiment.run.checkpoint import Checkpoint
    from hfft.experiment.run.pretrained import PretrainedFolder

__all__ = [
    "FittedTask",
    "StartingPoint",
    "StartingPointError",
    "StartingPointOptions",
    "TrainingTime",
    "data_notes",
    "fit_task",
    "inferred",
    "load_starting_point",
    "training_time",
    "trusted_metadata",
]


@dataclass
class StartingPoint:
    """A model loaded from a checkpoint, with its data and training hyperparameters."""

    path: Path
    sha256: str
    metadata: dict[str, Any] | None
    model: nn.Module
    model_name: str
    model_args: dict[str, Any]
    data_name: str
    data_seed: int
    splits: DataSplits
    lr: float | None
    batch_size: int | None
    momentum: float
    weight_decay: float
    train_seconds: float | None
    task: Task
    notes: tuple[str, ...] = ()
    optimizer_state: dict[str, Any] | None = None
    train_time_problem: str | None = None
    """Why ``run.json`` beside the checkpoint gives no training time (a training that
    did not finish), for a budget that needs it."""
    train_time_basis: str | None = None
    """What :attr:`train_seconds` is (``--train-time``, or which time of ``run.json``),
    for the note of a ``N%`` budget."""
    pretrained: PretrainedFolder | None = None
    """The ``save_pretrained`` folder the model came from, whose layout the fine-tuned
    weights are written back in (``final/``, ``best/``)."""

    def budget_note(self, budget: Budget) -> str | None:
        """The line saying what a budget of ``N%`` is in seconds and which training time it
        takes; ``None`` for other budgets or an unknown training time."""
        from hfft.experiment.run.budget import resolve_budget

        if budget.kind != "percent" or self.train_seconds is None:
            return None
        seconds = resolve_budget(budget, self.train_seconds).value
        return f"budget {budget}: {seconds:.3g} s, {budget} of {self.train_time_basis}"

    def describe(self) -> SourceEntry:
        """What a run started from, as ``metrics.json`` records it under ``source``."""
        return {
            "checkpoint": str(self.path),
            "sha256": self.sha256,
            "model": self.model_name,
            "model_args": self.model_args,
            "data": self.data_name,
            "data_seed": self.data_seed,
            "lr": self.lr,
            "batch_size": self.batch_size,
            "momentum": self.momentum,
            "weight_decay": self.weight_decay,
            "train_seconds": self.train_seconds,
            "epoch": (self.metadata or {}).get("epoch"),
            "task": self.task.describe(),
            "valid_source": self.splits.valid_source,
        }


@dataclass(frozen=True)
class StartingPointOptions:
    """Overrides for what a checkpoint's metadata says (all optional)."""

    model: str | None = None
    model_args: dict[str, Any] = field(default_factory=dict)
    data: str | None = None
    data_root: str | None = None
    download: bool = False
    train_time: float | None = None
    lr: float | None = None
    batch_size: int | None = None
    momentum: float | None = None
    weight_decay: float | None = None
    task: str | None = None
    loss: str | None = None
    metric: str | None = None
    valid_fraction: float | None = None
    checkpoint_key: str | None = None

    def __post_init__(self) -> None:
        for name in ("lr", "batch_size", "momentum", "weight_decay", "train_time"):
            check(name, getattr(self, name))
        check("valid_fraction", self.valid_fraction)

    def record(self) -> SourceOptionsEntry:
        """The overrides as records keep them (``config.source``); ``checkpoint_key`` only
        when given, so that a record written before it existed is still the same run."""
        data = json.loads(json.dumps(asdict(self)))
        if data["checkpoint_key"] is None:
            del data["checkpoint_key"]
        return cast("SourceOptionsEntry", data)

    def load(self, checkpoint: str | Path, device: str = "cpu") -> StartingPoint:
        """:func:`load_starting_point` with these overrides."""
        return load_starting_point(checkpoint, self, device=device)


@dataclass(frozen=True)
class TrainingTime:
    """The training time a budget of ``N%`` takes, and in words where it comes from.

    Attributes:
        seconds: The robust time (``robust_train_seconds``), or the raw clock's
            (``train_seconds``) from a ``run.json`` that lacks it.
        basis: ``seconds`` and where they come from, for the budget's note.
    """

    seconds: float
    basis: str


def training_time(checkpoint: Path) -> TrainingTime | None:
    """The training time from hfft's ``run.json`` beside a checkpoint, if there is one.

    Only a training that completed gives its time, and only a sane one
    (:data:`hfft.experiment.limits.LIMITS` ``train_time``: positive, at most a
    year). It is ``robust_train_seconds`` (the median epoch × the epochs), so
    that a slow spell of the machine during training does not multiply the
    budgets; a ``run.json`` written before hfft kept it gives its raw
    ``train_seconds``, and the basis says so.

    Raises:
        ValueError: When the ``run.json`` there is hfft's but its training did
            not finish (interrupted, diverged, failed, or killed while
            ``"running"``) or a time is missing or not sane — one sentence saying so.
    """
    from hfft.experiment.records import TRAIN_KIND
    from hfft.experiment.run.ownership import read_record

    path = checkpoint.parent / "run.json"
    manifest = read_record(path) if path.is_file() else None
    if manifest is None or manifest.get("kind") != TRAIN_KIND:
        return None  # no run.json, or not hfft's: the time is unknown
    status = manifest.get("status")
    if status != "completed":
        raise ValueError(
            f"the training in {checkpoint.parent} did not finish (its run.json says "
            f"{quoted(status, 20)}); "
            "rerun it or pass --train-time"
        )
    raw = _recorded_seconds(manifest, "train_seconds", path)
    if raw is None:
        raise ValueError(f"{path} records no train_seconds; pass --train-time")
    robust = _recorded_seconds(manifest, "robust_train_seconds", path)
    if robust is None:
        return TrainingTime(
            raw,
            f"the training's {raw:.3g} s by its clock (train_seconds: its run.json, written "
            "before hfft recorded robust_train_seconds, cannot tell a slow spell of the "
            "machine from the training)",
        )
    epochs = manifest.get("epochs")
    count = f" × {len(epochs)} epochs" if isinstance(epochs, list) and epochs else " × the epochs"
    return TrainingTime(
        robust,
        f"the training's {robust:.3g} s, its median epoch{count} (robust_train_seconds; "
        f"its clock said {raw:.3g} s)",
    )


def _recorded_seconds(manifest: dict[str, Any], name: str, path: Path) -> float | None:
    """A time of ``run.json``, checked (``None`` when absent)."""
    seconds = manifest.get(name)
    if seconds is None:
        return None
    try:
        return float(check("train_time", seconds, where=f"{name} in {path}"))
    except ValueError as err:
        raise ValueError(f"{err}; pass --train-time") from None


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def load_starting_point(
    checkpoint: str | Path,
    options: StartingPointOptions | None = None,
    *,
    device: str = "cpu",
    data_seed: int | None = None,
) -> StartingPoint:
    """Load a checkpoint into its model, with its data split and hyperparameters.

    Args:
        checkpoint: hfft safetensors, a PyTorch state-dict file, or a transformers
            ``save_pretrained`` folder (:mod:`hfft.experiment.run.pretrained`).
        options: What the user gave on the command line (each overrides the
            checkpoint's metadata, which overrides the registered problem's
            defaults).
        device: Where the model and data go.
        data_seed: Seed of the data split (default: the checkpoint's, else 0).

    Raises:
        StartingPointError: When the model or data cannot be determined, or
            the metadata names code or holds values out of range.
        CheckpointError: For unreadable or mismatching checkpoints.
        DataError: For missing data sets.
    """
    from hfft._io import sha256_file
    from hfft.experiment.data.splits import load_data

    options = options or StartingPointOptions()
    path = Path(checkpoint).expanduser()
    folder, ckpt = _read(path, options)
    meta = trusted_metadata(
        path,
        ckpt.metadata,
        model_given=options.model is not None or folder is not None,  # its config names it
        data_given=options.data is not None,
    )
    _check_model_sizes(path, meta.get("model_args") or {}, options.model_args, ckpt.state_dict)
    model_name, data_name = _model_and_data(path, meta, options, folder)
    seed = int(_first(data_seed, meta.get("data_seed"), 0))
    fraction = _first(options.valid_fraction, meta.get("valid_fraction"))
    splits = load_data(
        data_name,
        root=options.data_root,
        download=options.download,
        device=device,
        seed=seed,
        normalization=meta.get("normalization"),
        valid_fraction=fraction,
        valid_seen=fraction is not None and fraction != meta.get("valid_fraction"),
    )
    args = {**(meta.get("model_args") or {}), **options.model_args}
    net, notes = _built(model_name, args, splits, folder, ckpt, options.model is None)
    net = net.to(device)
    asked = _task_options(path, meta.get("task"), options)
    fitted = fit_task(net, splits, asked)
    task, splits = fitted.task, fitted.splits
    seconds, basis, problem = _training_time(path, options.train_time)
    said = fitted.notes(inferred(asked, data_name))
    return StartingPoint(
        path=path,
        sha256=folder.sha256() if folder else sha256_file(path),
        pretrained=folder,
        metadata=ckpt.metadata,
        model=net,
        model_name=model_name,
        model_args=args,
        data_name=data_name,
        data_seed=seed,
        splits=splits,
        train_seconds=seconds,
        train_time_problem=problem,
        train_time_basis=basis,
        task=task,
        notes=(*((ckpt.note,) if ckpt.note else ()), *notes, *said, *data_notes(splits)),
        optimizer_state=ckpt.optimizer_state,
        **_hyperparameters(options, meta, model_name),
    )


def _read(path: Path, options: StartingPointOptions) -> tuple[PretrainedFolder | None, Checkpoint]:
    """The checkpoint's folder (for a transformers folder) and what it holds."""
    from hfft.experiment.run.checkpoint import load_checkpoint

    folder = _pretrained_folder(path, options)
    if folder is not None:  # from_pretrained reads the weights unless the user's code builds it
        return folder, folder.checkpoint(weights=options.model is not None)
    return None, load_checkpoint(path, options.checkpoint_key)


def _built(
    name: str,
    args: dict[str, Any],
    splits: DataSplits,
    folder: PretrainedFolder | None,
    ckpt: Checkpoint,
    from_config: bool,
) -> tuple[nn.Module, list[str]]:
    """The model with the checkpoint's weights, and notes on what was adapted: a folder's
    by ``from_pretrained`` unless ``--model`` names the code (``from_config`` false), else
    built by name or factory and loaded strictly."""
    from hfft.experiment.data.factories import build_model
    from hfft.experiment.data.timm_models import TIMM
    from hfft.experiment.run.checkpoint import apply_state_dict, check_fit
    from hfft.experiment.run.pretrained import build_pretrained, tied_entries
    from hfft.models import PROBLEMS

    if folder is not None and from_config:
        return build_pretrained(folder)
    if name in PROBLEMS or name.startswith(TIMM):  # shapes on "meta", before any memory
        check_fit(build_model(name, args, splits.data_args(), "meta"), ckpt.state_dict)
    net = build_model(name, args, splits.data_args())
    weights = tied_entries(net, ckpt.state_dict) if folder else ckpt.state_dict
    return net, apply_state_dict(net, weights)


def _pretrained_folder(path: Path, options: StartingPointOptions) -> PretrainedFolder | None:
    """A ``save_pretrained`` folder read (``None`` for a file); a checkpoint key refused."""
    from hfft.experiment.run.checkpoint import CheckpointError
    from hfft.experiment.run.pretrained import read_folder

    if not path.is_dir():
        return None
    if options.checkpoint_key is not None:
        raise CheckpointError(
            f"--checkpoint-key picks a state dict inside a torch.save file; '{path}' is a "
            "model folder, which holds one"
        )
    if options.model_args and options.model is None:
        raise StartingPointError(
            f"--model-arg goes to a factory of --model; the model of '{path}' is built from "
            "its config.json (edit the config, or pass --model file.py:factory)"
        )
    return read_folder(path)


def _training_time(
    checkpoint: Path, given: float | None
) -> tuple[float | None, str | None, str | None]:
    """The training seconds (``--train-time``, else the time beside ``checkpoint``), what
    they are, and why a ``run.json`` there gives none."""
    if given is not None:
        return given, f"the {given:.3g} s of --train-time", None
    try:
        recorded = training_time(checkpoint)
    except ValueError as err:
        return None, None, str(err)
    if recorded is None:
        return None, None, None
    return recorded.seconds, recorded.basis, None


def _check_model_sizes(
    path: Path, recorded: dict[str, Any], given: dict[str, Any], state_dict: dict[str, Any]
) -> None:
    """Integer model arguments from the metadata are no larger than the checkpoint's sizes.

    Every size of hfft's models (widths, classes, channels, the input's side,
    the number of layers) is at most the largest dimension of one of its
    tensors or the number of its tensors, so a larger one cannot fit the
    checkpoint; it is refused before it builds anything (``depth=10**9``
    would loop for hours before a shape could be compared).
    """
    most = max([len(state_dict), *(size for t in state_dict.values() for size in t.shape)])
    for key, value in recorded.items():
        if key in given or isinstance(value, bool) or not isinstance(value, int):
            continue
        if value > most:
            raise StartingPointError(
                f"{path} records the model argument {key}={quoted(value, 20)} in its metadata, "
                f"larger than any size of the weights it holds (at most {most}); pass "
                f"--model-arg {key}=VALUE if you mean it"
            )


def _task_options(
    path: Path, recorded: dict[str, Any] | None, options: StartingPointOptions
) -> dict[str, Any]:
    """What the task is asked to be: the user's options, else what the checkpoint recorded."""
    if options.loss is not None or options.task is not None:
        return {"kind": options.task, "loss": options.loss, "metric": options.metric}
    if recorded is None:
        return {"kind": None, "loss": None, "metric": options.metric}
    if recorded["kind"] == "custom":
        raise StartingPointError(
            f"{path} was trained with your own loss, which a checkpoint never names; "
            "pass --loss again"
        )
    return {"kind": recorded["kind"], "loss": None, "metric": options.metric or recorded["metric"]}


def inferred(asked: dict[str, Any], data: str) -> bool:
    """Whether the task was inferred from a user's data (then hfft says which it took)."""
    from hfft.experiment.data.datasets import builtin_data

    user = builtin_data(data) is None
    return user and all(asked.get(k) is None for k in ("kind", "loss"))


@dataclass(frozen=True)
class FittedTask:
    """What :func:`fit_task` found: the task, a line saying which, the splits in the
    model's precision, and a line on the model's calling convention when it is not
    ``model(batch)`` returning a tensor."""

    task: Task
    note: str
    splits: DataSplits
    convention: str | None = None

    def notes(self, inferred: bool) -> tuple[str, ...]:
        """The lines to say: the task's when it was inferred, the convention's."""
        said = (self.note,) if inferred else ()
        return (*said, *((self.convention,) if self.convention else ()))


def fit_task(model: nn.Module, splits: DataSplits, asked: dict[str, Any]) -> FittedTask:
    """The task that fits the model's outputs on two training samples, one line saying so,
    and the splits in the model's precision.

    The model's calling convention is adopted first (:mod:`hfft.experiment.data.convention`):
    a dict batch goes to ``forward`` as keywords when it names every key, and a
    ``ModelOutput``, a dict with ``logits`` or a tuple is reduced to its logits.

    What can be checked before any work is checked here: the model's precision
    (float16 and bfloat16 are refused; floating inputs of another precision
    are cast to the model's, with a note in the returned splits' ``notes``), one forward
    pass in eval mode (the model's modes are restored), the user's loss on its
    outputs, and every target of every split against the task.

    Args:
        model: The model.
        splits: Its data.
        asked: ``kind`` (``--task``), ``loss`` (``--loss`` spec) and ``metric``, each may be None.

    Raises:
        StartingPointError: If the outputs and targets make no task (shapes,
            labels beyond the outputs' width, an unknown metric), or the model
            is in half precision.
        UserCodeError: If the model's forward pass, the loss factory or the
            loss fails (one paragraph naming the call).
    """
    import torch

    from hfft.experiment.data.convention import adopt_convention
    from hfft.experiment.data.task import TaskError, check_targets, infer_task, load_loss
    from hfft.experiment.data.user_code import first_loss, first_outputs
    from hfft.optim.batches import take

    dtype = _precision(model)
    if dtype is not None:
        splits = splits.cast_inputs(dtype)
    sample = take(splits.train_x, slice(0, 2))
    if isinstance(sample, dict) and "labels" in sample:
        raise StartingPointError(
            "the inputs' dict holds 'labels', which a transformers model takes as targets to "
            "return its own loss; return them from the data factory as the targets, "
            "(inputs, labels), and hfft computes the loss"
        )
    out, convention = adopt_convention(
        model, sample, lambda c: first_outputs(model, sample, dtype, c.call())
    )
    if not isinstance(out, torch.Tensor):
        raise StartingPointError(
            f"the model returns a {type(out).__name__}, not a tensor of outputs, nor one "
            "with .logits, a 'logits' entry or a tensor first; wrap it so that forward "
            "returns the logits or predictions"
        )
    try:
        loss = load_loss(asked["loss"]) if asked.get("loss") else None
        task, note = infer_task(
            out, splits.train_y[:2], asked.get("kind"), loss, asked.get("metric")
        )
        targets = {"train": splits.train_y, "valid": splits.valid_y, "test": splits.test_y}
        check_targets(task, out, targets)
    except TaskError as err:
        raise StartingPointError(str(err)) from err
    if loss is not None:
        first_loss(loss, asked["loss"], out, splits.train_y[:2])
    return FittedTask(task, note, splits, convention.note())


def _precision(model: nn.Module) -> Any:
    """The model's floating-point dtype (``None``: none, or several); half precision refused.

    hfft must evaluate a checkpoint as its user would, so it never changes the
    model's precision; and in float16 or bfloat16 its steps under- and
    overflow (SGD without loss scaling or float32 master weights, CG's inner
    products, the line search's loss differences).
    """
    import torch

    from hfft.experiment.data.user_code import model_dtype

    dtype = model_dtype(model)
    if dtype in (torch.float16, torch.bfloat16):
        name = str(dtype).removeprefix("torch.")
        raise StartingPointError(
            f"the model's parameters are {name}, in which hfft's steps under- and overflow "
            "(no loss scaling, no float32 master weights); return the model in float32 "
            f"from its factory (model.float()): a checkpoint's {name} weights are cast to it"
        )
    return dtype


def data_notes(splits: DataSplits) -> tuple[str, ...]:
    """What was adapted in the data (:attr:`DataSplits.notes`), a line on where the
    validation split comes from when it is not hfft's own hold-out, and one when the data
    are streamed."""
    from hfft.experiment.data.streaming import StreamedInputs

    x = splits.train_x
    streamed = (
        (
            f"streaming the data from its Dataset ({len(x)} training samples, inputs larger "
            f"than HFFT_STREAM_ABOVE) through a DataLoader with {x.workers} worker(s)",
        )
        if isinstance(x, StreamedInputs)
        else ()
    )
    return splits.notes + _valid_note(splits) + streamed


def _valid_note(splits: DataSplits) -> tuple[str, ...]:
    if splits.valid_source == "none":
        return (
            "no validation split: the data factory returned (train, test), so no "
            "best.safetensors is chosen (return (train, valid, test), or pass "
            "--valid-fraction to hold out part of train)",
        )
    if splits.valid_source == "held out of the checkpoint's training data":
        return (
            f"validation: {splits.valid_y.shape[0]} samples held out of train, which the "
            "checkpoint saw in training: 'best' is chosen on seen data",
        )
    return ()


def _model_and_data(
    path: Path,
    meta: dict[str, Any],
    options: StartingPointOptions,
    folder: PretrainedFolder | None = None,
) -> tuple[str, str]:
    """The model and data names: the user's, else the metadata's (or a transformers folder's
    class), else the problem's data."""
    from hfft.models import PROBLEMS

    built = f"transformers:{folder.architecture}" if folder and folder.architecture else None
    model_name = _first(options.model, meta.get("model"), built)
    if model_name is None and folder is not None:
        raise StartingPointError(
            f"'{path / 'config.json'}' names no model class under architectures; pass "
            "--model file.py:factory to build the model"
        )
    if model_name is None:
        raise StartingPointError(
            f"{path} carries no hfft metadata, so the model is unknown; "
            "pass --model NAME or --model path/to/file.py:factory"
        )
    data_name = _first(options.data, meta.get("data"))
    if data_name is None and model_name in PROBLEMS:
        data_name = PROBLEMS[model_name].defaults.dataset
    if data_name is None:
        raise StartingPointError(f"the data set of {path} is unknown; pass --data NAME")
    return model_name, data_name


def _hyperparameters(
    options: StartingPointOptions, meta: dict[str, Any], model_name: str
) -> dict[str, Any]:
    """The SGD hyperparameters: the user's, else the metadata's, else the problem's."""
    from hfft.models import PROBLEMS

    d = PROBLEMS[model_name].defaults if model_name in PROBLEMS else None
    return {
        "lr": _first(options.lr, meta.get("lr"), d.lr if d else None),
        "batch_size": _first(
            options.batch_size, meta.get("batch_size"), d.batch_size if d else None
        ),
        "momentum": float(_first(options.momentum, meta.get("momentum"), d.momentum if d else 0.0)),
        "weight_decay": float(
            _first(options.weight_decay, meta.get("weight_decay"), d.weight_decay if d else 0.0)
        ),
    }
