"""Shared pieces of the command line: errors, devices, output folders, option types.

Option types are declared once here (``Annotated[..., typer.Option(...)]``) and
reused by every command that takes them, so the help reads the same everywhere.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import os
import re
import sys
import traceback
import typing
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar, cast

import typer
from typer.core import TyperGroup

from hfft.experiment.data.datasets import DATASETS
from hfft.experiment.data.user_code import DEBUG_HINT
from hfft.experiment.interrupts import Interrupted, first_signal_stops, was_terminated
from hfft.models import PROBLEMS
from hfft.optim.distributed import launched

if TYPE_CHECKING:
    from hfft.analysis.shards import Shard
    from hfft.experiment.run.starting_point import StartingPointOptions

F = TypeVar("F", bound=Callable[..., Any])


def strategy_help() -> str:
    """``--strategy``'s help, from the registry: every strategy with its line, and examples."""
    from hfft.experiment.strategies.registry import entries

    listed = "; ".join(f"{e.name} ({e.summary})" for e in entries())
    examples = ", ".join(e.example for e in entries() if e.example)
    return (
        f"{listed}. Options after a colon, joined by commas, e.g. {examples}. Every "
        "strategy with its options: docs/strategies.md."
    )


def compare_strategy_help() -> str:
    """``compare -s``'s help, from the registry: the paper suite's strategies by kind."""
    from hfft.experiment.strategies.registry import suite_members

    paper = suite_members("paper")
    first = ", ".join(e.name for e in paper if e.kind == "first-order")
    hf = " and ".join(e.name for e in paper if e.kind == "hf")
    auto = " and ".join(e.name for e in paper if e.kind == "auto")
    return (
        "A strategy to compare (repeatable), e.g. -s sgd -s sgd-cosine -s hf:m=512. Default: "
        f"{first}, {hf} at up to three batch sizes that fit the data, and {auto} with the "
        "smallest of them."
    )


def suite_help() -> str:
    """``compare --suite``'s help, from the registry's suites."""
    from hfft.experiment.strategies.registry import suite_members

    paper = {e.name for e in suite_members("paper")}
    extra = [e.name for e in suite_members("extended") if e.name not in paper]
    second = suite_members("second-order")
    sgd = [e.name for e in second if e.name in paper and e.kind == "first-order"]
    hf = " and ".join(e.name for e in second if e.kind == "hf")
    peers = [e.name for e in second if e.name not in paper]
    return (
        "paper: the paper's strategies (the default set); extended: also "
        f"{', '.join(extra)}; second-order: {', '.join(sgd)}, {hf} at its default sizes and "
        f"{', '.join(peers)}. A suite's strategies beyond the paper's are added to any -s given."
    )


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print one sentence to stderr and return the exit to raise."""
    typer.echo(f"hfft: error: {message}", err=True)
    return typer.Exit(code)


def resolve_device(name: str) -> str:
    """``auto`` → ``cuda`` when available, else ``cpu``; ``cuda`` without CUDA is an error."""
    import torch

    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", name):
        raise fail(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise fail(f"--device {name} was asked for but CUDA is not available on this machine")
    return name


_debug = False


def set_debug(value: bool) -> bool:
    """``--debug``'s callback: remember it for :func:`command_guard` (and return it)."""
    global _debug
    _debug = bool(value)
    return value


def debugging() -> bool:
    """Whether errors show their traceback: ``--debug``, or ``HFFT_DEBUG`` set to 1/true/yes/on."""
    return _debug or os.environ.get("HFFT_DEBUG", "").strip().lower() in ("1", "true", "yes", "on")


@contextlib.contextmanager
def command_guard() -> Iterator[None]:
    """Turn user mistakes into one sentence and exit code 2; interrupts into 130/143.

    A mistake in the input, or a failure of the user's own code where hfft first
    calls it (:class:`hfft.experiment.data.user_code.UserCodeError`, one paragraph),
    is a ``ValueError``; with ``--debug`` (or ``HFFT_DEBUG=1``) its traceback,
    the user's exception's included, comes first. Any other exception is a bug
    of hfft's and keeps its traceback (exit code 1).
    """

    finished = False
    try:
        with first_signal_stops():
            yield
        finished = True
    except KeyboardInterrupt as err:
        saved = _interrupted_in(err)
        terminated = was_terminated(saved or err)
        why = "terminated" if terminated else "interrupted"
        if terminated and launched():
            why += " (by torchrun when another rank failed?)"
        what = saved.saved if saved is not None else "nothing was written"
        typer.echo(f"hfft: {_on_rank(why)}; {what}", err=True)
        raise typer.Exit(143 if terminated else 130) from None
    except ValueError as err:
        message = str(err)
        if debugging():  # the traceback is above: no need to say where it is
            _print_traceback(err)
            message = message.replace(f" ({DEBUG_HINT})", "")
        raise fail(_on_rank(message.rstrip(".") + ".")) from None
    except OSError as err:  # disk full, permissions, a path that is not a folder, ...
        if debugging():
            _print_traceback(err)
        raise fail(_on_rank(os_error_sentence(err))) from None
    except typer.Exit:
        raise
    except Exception as err:
        if not launched():
            raise
        # data-parallel: one line per failing rank, so the job ends without a wall of
        # tracebacks; a rank whose peer died fails in its next collective
        raise fail(_on_rank(f"{type(err).__name__}: {str(err).splitlines()[0]}"), code=1) from None
    finally:
        if launched():
            from hfft.optim.distributed import shutdown

            shutdown(wait_for_all=finished)


def _print_traceback(err: BaseException) -> None:
    """The traceback of ``err`` and of the exceptions it came from (the user's, first)."""
    typer.echo("".join(traceback.format_exception(err)), err=True, nl=False)


def _interrupted_in(err: BaseException) -> Interrupted | None:
    """The :class:`Interrupted` that ``err`` is, or interrupted while it propagated."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, Interrupted):
            return seen
        seen = seen.__context__
    return None


def os_error_sentence(err: OSError) -> str:
    """One sentence for a failed file operation: what failed, on which file."""
    if err.strerror is None:
        return str(err).rstrip(".") + "."
    where = f": {err.filename}" if err.filename is not None else ""
    return f"{err.strerror}{where}."


def note(message: str) -> None:
    """One line the user should know about, on stderr (not an error)."""
    typer.echo(f"hfft: note: {message}", err=True)


class OneLineErrors(TyperGroup):
    """The command group: a usage error (a bad option value) is one line and exit 2.

    Click would print the usage and a box around the error; hfft says it in
    one sentence like every other mistake. ``hfft`` without a command still
    prints the help.
    """

    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        with _one_line_usage_errors():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: Any) -> Any:
        with _one_line_usage_errors():
            return super().invoke(ctx)


# Click's UsageError, found through typer's public BadParameter (typer may bundle click)
_UsageError: type[Exception] = next(
    c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError"
)


@contextlib.contextmanager
def _one_line_usage_errors() -> Iterator[None]:
    try:
        yield
    except _UsageError as err:
        if type(err).__name__ == "NoArgsIsHelpError":  # plain `hfft`: the help, as asked
            raise
        typer.echo(f"hfft: error: {err.format_message()}", err=True)  # type: ignore[attr-defined]
        raise typer.Exit(2) from None


def _on_rank(message: str) -> str:
    return f"rank {os.environ.get('RANK', '0')}: {message}" if launched() else message


def join_torchrun(device: str) -> tuple[str, bool]:
    """Join ``torchrun``'s process group if launched by it: this rank's device, and
    whether this rank reports (rank 0; the others stay quiet)."""
    if not launched():
        return device, True
    from hfft.optim import distributed

    return distributed.initialize(device), distributed.is_main()


def check_out_dir(out: Path) -> None:
    """``--out`` must be a directory we can create and write to."""
    if out.exists() and not out.is_dir():
        raise fail(f"--out {out} exists and is not a directory")
    probe = out if out.exists() else next((p for p in out.parents if p.exists()), Path("."))
    if not probe.is_dir():
        raise fail(f"--out {out} cannot be created: {probe} is a file, not a directory")
    if not os.access(probe, os.W_OK):
        raise fail(f"--out {out} is not writable")


def print_json(obj: Any) -> None:
    """Machine-readable output on stdout: strict JSON (a non-finite number is null)."""
    from hfft._io import to_json

    sys.stdout.write(to_json(obj) + "\n")


DeviceOpt = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")]
# --debug's callback records it for command_guard, so a command declares the parameter once
# in its signature and its body never reads it
DebugOpt = Annotated[
    bool,
    typer.Option(
        "--debug",
        callback=set_debug,
        help="On an error, also print its traceback: that of your own code when it failed "
        "where hfft called it (also HFFT_DEBUG=1).",
    ),
]
MODEL_NAMES = ", ".join(PROBLEMS)
"""The registered models, as help texts list them (the registry imports no torch)."""
DATA_NAMES = ", ".join(DATASETS)
"""The built-in data sets, as help texts list them."""
ShardOpt = Annotated[
    str | None,
    typer.Option(
        metavar="I/N",
        help="Run only every N-th run (from the I-th, 0-based) into the shared --out, so that "
        "N processes (a job array, one per GPU) share the work; the last to finish writes the "
        "ranking. 'none': run nothing, only assemble the ranking once every run is there. "
        "'slurm': I and N from this Slurm array task, the array being every shard; "
        "'slurm/N': I = SLURM_ARRAY_TASK_ID as is (to rerun some shards: --array=3); 'auto': "
        "slurm in an array task, else no shard.",
    ),
]


def parse_shard(text: str | None) -> Shard | None:
    """``--shard`` as a :class:`hfft.analysis.shards.Shard` (``None``: no shard), saying
    which shard ``slurm``, ``slurm/N`` or ``auto`` found (call inside :func:`command_guard`)."""
    if text is None:
        return None
    from hfft.analysis.shards import Shard

    shard = Shard.parse(text)
    if shard is not None and text.strip().lower().startswith(("slurm", "auto")):
        task = os.environ.get("SLURM_ARRAY_TASK_ID")
        note(f"--shard {text.strip()}: shard {shard} (Slurm array task {task})")
    return shard


OverwriteOpt = Annotated[
    bool,
    typer.Option(
        "--overwrite",
        help="Replace the files of another run in --out (without it such a folder is refused; "
        "a rerun of the same configuration replaces its own files).",
    ),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
SeedOpt = Annotated[int, typer.Option(help="Random seed.")]
ModelArgOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--model-arg", metavar="<k=v>", help="Model keyword argument KEY=VALUE (repeatable)."
    ),
]
ModelOpt = Annotated[
    str | None,
    typer.Option(
        help="Model name, timm:NAME (timm's architecture, no download), or file.py:fn or "
        "package.module:fn for a plain state-dict checkpoint or a transformers folder "
        "(loading your file executes it)."
    ),
]
DataOpt = Annotated[
    str | None,
    typer.Option(
        help=f"Data set: {DATA_NAMES}, or file.py:fn or package.module:fn returning (train, "
        "test) or (train, valid, test), used as returned. Default: the checkpoint's or model's."
    ),
]
DataRootOpt = Annotated[
    Path | None, typer.Option(help="Where torchvision data sets are (or go with --download).")
]
DownloadOpt = Annotated[bool, typer.Option(help="Download a missing data set.")]
TrainTimeOpt = Annotated[
    str | None,
    typer.Option(help="Original training time (e.g. 2h) when no run.json beside the checkpoint."),
]
LrOpt = Annotated[float | None, typer.Option(help="SGD learning rate α (default: training's).")]
BatchSizeOpt = Annotated[
    int | None, typer.Option(metavar="<int>", help="SGD batch size (default: training's).", min=1)
]
MomentumOpt = Annotated[float | None, typer.Option(help="SGD momentum (default: training's).")]
WeightDecayOpt = Annotated[
    float | None, typer.Option(help="L2 on weights, not biases or norms (default: training's).")
]
BudgetOpt = Annotated[
    str,
    typer.Option(help="10% (of the original training time), 600s / 10m / 1h, 200steps or 3epochs."),
]
EvalBatchOpt = Annotated[
    int | None,
    typer.Option(metavar="<int>", help="Size of HF's second batch B̄ (default 1024).", min=1),
]
EvalPointsOpt = Annotated[
    int,
    typer.Option(
        metavar="<int>", help="Evaluations spread over the budget, besides the start.", min=1
    ),
]
TaskOpt = Annotated[
    str | None,
    typer.Option(
        help="classification, regression or multilabel (default: inferred from the targets "
        "and said in one line; with --loss, classification also reports accuracy)."
    ),
]
LossOpt = Annotated[
    str | None,
    typer.Option(
        help="Your loss instead of the task's: file.py:fn or package.module:fn, a "
        "loss(outputs, targets) or a factory of one (loading your file executes it)."
    ),
]
MetricOpt = Annotated[
    str | None,
    typer.Option(
        help="What 'best' and the rankings use: accuracy, loss, rmse or r2 (default: "
        "accuracy for classification, the loss otherwise)."
    ),
]
CheckpointKeyOpt = Annotated[
    str | None,
    typer.Option(
        help="The entry of a torch.save checkpoint that holds the weights to take, e.g. "
        "state_dict_ema or model_ema (default: model, state_dict or model_state_dict; "
        "hfft says which when there are several)."
    ),
]
ValidFractionOpt = Annotated[
    float | None,
    typer.Option(
        help="Hold out this fraction of a (train, test) data factory's train for validation "
        "(train's default: 0.1, recorded; on a foreign checkpoint the hold-out was seen in "
        "training, and hfft says so)."
    ),
]


@dataclasses.dataclass(frozen=True)
class SourceArgs:
    """The checkpoint options of a command as typed (``--model`` … ``--valid-fraction``),
    as one parameter object: :func:`takes_source` adds them to a command, which gets
    this and turns it into the library's ``StartingPointOptions`` with :meth:`options`.

    Attributes:
        typed: The values by parameter name (``model_arg``, ``train_time``, …), the
            options a command does not take left out.
    """

    typed: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def given(self, name: str) -> Any:
        """The value of one option (``None`` when not given)."""
        return self.typed.get(name)

    def options(self) -> StartingPointOptions:
        """The overrides, parsed and checked (call inside :func:`command_guard`: a bad value
        is one sentence and exit 2)."""
        from hfft.experiment.data.factories import parse_model_args
        from hfft.experiment.run.budget import parse_duration
        from hfft.experiment.run.starting_point import StartingPointOptions

        values = {k: v for k, v in self.typed.items() if v is not None}
        values["model_args"] = parse_model_args(values.pop("model_arg", None) or [])
        if "train_time" in values:
            values["train_time"] = parse_duration(values["train_time"])
        if "data_root" in values:
            values["data_root"] = str(values["data_root"])
        return StartingPointOptions(**values)


NO_SOURCE = SourceArgs()
"""A command's ``source`` default: :func:`takes_source` replaces it by what was typed."""

_SOURCE_OPTIONS: dict[str, tuple[Any, Any]] = {  # name: (annotation, default)
    "model": (ModelOpt, None),
    "model_arg": (ModelArgOpt, None),
    "data": (DataOpt, None),
    "data_root": (DataRootOpt, None),
    "download": (DownloadOpt, False),
    "train_time": (TrainTimeOpt, None),
    "lr": (LrOpt, None),
    "batch_size": (BatchSizeOpt, None),
    "momentum": (MomentumOpt, None),
    "weight_decay": (WeightDecayOpt, None),
    "task": (TaskOpt, None),
    "loss": (LossOpt, None),
    "metric": (MetricOpt, None),
    "valid_fraction": (ValidFractionOpt, None),
    "checkpoint_key": (CheckpointKeyOpt, None),
}
SGD_SETTINGS = ("lr", "batch_size", "momentum", "weight_decay")
"""The training's SGD settings among the checkpoint options (a command may leave them out)."""


def takes_source(*, without: tuple[str, ...] = ()) -> Callable[[F], F]:
    """Give a command the checkpoint options (``--model`` … ``--valid-fraction``) in place
    of its parameter ``source``, which it receives as one :class:`SourceArgs`.

    The options appear in ``--help`` where ``source`` stands in the signature; ``without``
    leaves some out (``selftest`` takes no SGD settings).
    """
    table = {n: option for n, option in _SOURCE_OPTIONS.items() if n not in without}
    return takes_options("source", table, SourceArgs)


def takes_options(
    name: str, table: Mapping[str, tuple[Any, Any]], bundle: Callable[[dict[str, Any]], Any]
) -> Callable[[F], F]:
    """Give a command a group of options in place of its parameter ``name``, which it
    receives as one object, ``bundle({option: value as typed})``.

    Args:
        name: The command's parameter the options stand in for (in ``--help`` too).
        table: ``{parameter: (annotation, default)}`` of the options, in order.
        bundle: Makes the one object from the values typed.
    """

    def wrap(command: F) -> F:
        hints = typing.get_type_hints(command, include_extras=True)
        params = [
            p.replace(annotation=hints[p.name])
            for p in inspect.signature(command).parameters.values()
        ]
        at = [p.name for p in params].index(name)
        added = [
            inspect.Parameter(
                n, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default, annotation=hint
            )
            for n, (hint, default) in table.items()
        ]

        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            typed = {n: kwargs.pop(n) for n in table if n in kwargs}
            return command(*args, **{name: bundle(typed)}, **kwargs)

        signature = inspect.Signature([*params[:at], *added, *params[at + 1 :]])
        wrapper.__signature__ = signature  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in signature.parameters.values()}
        return cast(F, wrapper)

    return wrap
