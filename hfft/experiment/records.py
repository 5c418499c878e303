"""The files hfft writes, field by field: ``metrics.json``, ``run.json``, ``compare.json``.

Every record is a ``TypedDict`` here, so writers and readers agree on the
keys (mypy checks them) and ``docs/records.md`` documents every field (a test
holds the page to these definitions). All files are strict JSON: a number
that could not be measured is ``null``. Records are versioned by
:data:`SCHEMA_VERSION`; a new field is added without a version bump, a
changed or removed field bumps it.

A step entry lacks ``seconds`` while its runner returns it; the fine-tuning loop
adds the clock's reading once the step is logged. Plain Python; importing this
module does not import torch.
"""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict

from hfft.optim.step_record import StepFields

__all__ = [
    "COMPARE_KIND",
    "FINETUNE_KIND",
    "SCHEMA_VERSION",
    "STUDY_KIND",
    "TRAIN_KIND",
    "AdamLog",
    "AutoLog",
    "AutoStepEntry",
    "BudgetEntry",
    "CheckpointEntry",
    "CompareCheckpoint",
    "CompareConfigEntry",
    "CompareRun",
    "CompareSummary",
    "EpochEntry",
    "EvaluationEntry",
    "FinetuneConfigEntry",
    "FinetuneLog",
    "HFProgressEntry",
    "HFStepEntry",
    "KFACLog",
    "KFACStepEntry",
    "LBFGSStepEntry",
    "MuonLog",
    "PlateauState",
    "ProbeEntry",
    "RunManifest",
    "RunnerReport",
    "SGDStepEntry",
    "SOAPLog",
    "SWALog",
    "SWAStepEntry",
    "ScheduleFreeLog",
    "SourceEntry",
    "SourceOptionsEntry",
    "SpentEntry",
    "StepEntry",
    "StrategyRanking",
    "StudyRecord",
    "TaskEntry",
    "TimeToTarget",
    "TrainConfigEntry",
    "TrainData",
    "TrialEntry",
    "higher_is_better",
]

SCHEMA_VERSION = 1
"""Version of every record here (``schema_version`` of ``metrics.json`` and ``run.json``)."""

FINETUNE_KIND = "hfft-finetune"
"""``kind`` of a ``metrics.json``."""

TRAIN_KIND = "hfft-train"
"""``kind`` of a ``run.json``."""

STUDY_KIND = "hfft-study"
"""``kind`` of a ``study.json``."""

COMPARE_KIND = "hfft-compare"
"""``kind`` of a ``compare.json``."""


def higher_is_better(metric: str) -> bool:
    """Whether larger values of a recorded metric (``valid_accuracy``, ``test_rmse``, …) are better.

    Raises:
        ValueError: For a metric that is none of accuracy, r2, loss or rmse.
    """
    name = metric.rsplit("_", 1)[-1]
    if name in ("accuracy", "r2"):
        return True
    if name in ("loss", "rmse"):
        return False
    raise ValueError(f"cannot tell whether {metric!r} is to be maximised or minimised")


class SplitMetrics(TypedDict, total=False):
    """The task's metrics per split (``{split}_{metric}``), as one evaluation gives them."""

    train_eval_loss: float | None
    train_eval_accuracy: float | None
    train_eval_rmse: float | None
    train_eval_r2: float | None
    valid_loss: float | None
    valid_accuracy: float | None
    valid_rmse: float | None
    valid_r2: float | None
    test_loss: float | None
    test_accuracy: float | None
    test_rmse: float | None
    test_r2: float | None


class EvaluationEntry(SplitMetrics, total=False):
    """One evaluation of a fine-tuning run (clock paused), in ``evaluations``."""

    fraction: float
    seconds: float
    step: int
    epochs: float | None
    lr: float
    damping: float


class SGDStepEntry(TypedDict):
    """One step of an SGD strategy, in ``steps``."""

    step: int
    fraction: float
    lr: float
    loss: float | None
    seconds: NotRequired[float]


class SWAStepEntry(TypedDict):
    """One step of ``swa``, in ``steps``."""

    step: int
    fraction: float
    lr: float
    loss: float | None
    averaged: int
    seconds: NotRequired[float]


class LBFGSStepEntry(TypedDict):
    """One step of ``lbfgs`` (``max_iter`` iterations on one batch), in ``steps``."""

    step: int
    fraction: float
    loss: float | None
    loss_after: float | None
    iterations: int
    function_evals: int
    seconds: NotRequired[float]


class SWALog(TypedDict):
    """``swa``'s settings and what it averaged, under ``swa`` in ``metrics.json``."""

    swa_lr: float
    start: float
    anneal_steps: int
    averaged: int
    batchnorm_update: str


class AdamLog(TypedDict):
    """``adam``'s and ``adamw``'s settings, under ``adam`` in ``metrics.json``."""

    lr: float
    lr_source: str
    moments: str
    schedule: str


class ScheduleFreeLog(TypedDict):
    """``sgd-schedulefree``'s settings, under ``schedulefree`` in ``metrics.json``."""

    lr: float
    batchnorm_update: str


class KFACStepEntry(TypedDict):
    """One step of ``kfac``: K-FAC's direction, Martens & Grosse's step length, ρ on B̄."""

    step: int
    fraction: float
    loss: float | None
    loss_after: float | None
    rho: float | None
    damping: float
    alpha: float | None
    accepted: bool
    seconds: NotRequired[float]


class KFACLog(TypedDict):
    """``kfac``'s settings and what K-FAC covers."""

    m: int
    eval_batch_size: int
    fisher: str
    update_every: int
    covered: list[str]
    uncovered: list[str]
    note: str | None
    accepted: int
    damping: float


class SOAPLog(TypedDict):
    """``soap``'s settings (``pytorch_optimizer.SOAP``)."""

    lr: float
    lr_source: str
    grafting: str
    betas: list[float]
    precondition_frequency: int
    weight_decay: float
    weight_decay_mode: str


class MuonLog(TypedDict):
    """``muon``'s settings and which parameters ``torch.optim.Muon`` updates."""

    lr: float
    adjust_lr_fn: str
    momentum: float
    weight_decay: float
    weight_decay_mode: str
    muon_tensors: int
    muon_parameters: int
    sgd_tensors: int
    sgd_parameters: int
    sgd_lr: float
    sgd_momentum: float


class HFStepEntry(StepFields):
    """One HF step, in ``steps``: the :class:`~hfft.optim.step_record.StepRecord`
    (:class:`~hfft.optim.step_record.StepFields`) and when."""

    fraction: float
    seconds: NotRequired[float]


class ProbeFields(TypedDict):
    """What an HF probe of ``auto`` measured and decided: a :class:`ProbeEntry` without
    its step and fraction, as the probe's step entry carries it under ``probe``."""

    sgd_gain: float | None
    sgd_seconds: float | None
    sgd_steps: int
    hf_gain: float | None
    hf_seconds: float | None
    rho: float | None
    sgd_rate: float | None
    hf_rate: float | None
    decision: str
    reason: str


class ProbeEntry(ProbeFields):
    """One HF probe of ``auto``, in ``auto.probes``: its fields, and when."""

    step: int
    fraction: float


class TrialFields(TypedDict):
    """An SGD trial of ``auto``: a :class:`TrialEntry` without its step and fraction, as
    the step that ended it carries it under ``trial``."""

    end_step: int
    end_fraction: float
    sgd_gain: float | None
    sgd_seconds: float | None
    sgd_steps: int
    sgd_rate: float | None
    hf_rate: float | None
    decision: str
    reason: str


class TrialEntry(TrialFields):
    """One SGD trial of ``auto`` after HF slowed down, in ``auto.trials``: its fields, and
    when it started."""

    step: int
    fraction: float


class AutoStepEntry(TypedDict, total=False):
    """One step of ``auto``, in ``steps``: an SGD or HF step's fields, and these."""

    step: int
    fraction: float
    seconds: float
    phase: str
    hf_step: int
    probe: ProbeFields
    trial: TrialFields


StepEntry = (
    SGDStepEntry | SWAStepEntry | LBFGSStepEntry | HFStepEntry | AutoStepEntry | KFACStepEntry
)
"""One entry of ``steps``: what a runner's ``step`` returns."""


class AutoLog(TypedDict):
    """``auto``'s settings and decisions, under ``auto`` in ``metrics.json``."""

    interval: float
    first: float
    margin: float
    backoff: float
    rho_min: float
    m: int
    curvature_products: str
    eval_batch_size: int
    switch_back: bool
    stall: float
    switched: bool
    switch: ProbeEntry | None
    probes: list[ProbeEntry]
    trials: list[TrialEntry]


class PlateauState(TypedDict):
    """The plateau schedule's settings and state, under ``plateau``."""

    lr: float
    initial_lr: float
    factor: float
    patience: int
    max_drops: int
    threshold: float
    evaluations: int
    best: float | None
    bad_evaluations: int
    drops: int


class BudgetEntry(TypedDict):
    """The budget: ``kind`` (seconds, steps, epochs), ``limit`` and what was typed."""

    kind: str
    limit: float
    requested: str


class SpentEntry(TypedDict):
    """What a run spent of its budget."""

    budget: str
    seconds: float
    steps: int
    samples: int
    epochs: float | None
    fraction: float


class TaskEntry(TypedDict):
    """What a run optimised and how it chose (:class:`hfft.experiment.data.task.Task`)."""

    kind: str
    class_dim: int
    metric: str


class SourceEntry(TypedDict):
    """The checkpoint a run started from and the hyperparameters taken from it."""

    checkpoint: str
    sha256: str
    model: str
    model_args: dict[str, Any]
    data: str
    data_seed: int
    lr: float | None
    batch_size: int | None
    momentum: float
    weight_decay: float
    train_seconds: float | None
    epoch: int | None
    task: TaskEntry
    valid_source: str


class HFProgressEntry(TypedDict):
    """Whether an HF run made progress.

    See :class:`hfft.experiment.strategies.hf_progress.HFProgress`.
    """

    verdict: str
    steps: int
    accepted: int
    median_rho: float | None
    max_damping: float | None
    m: int
    eval_batch_size: int
    n_train: int
    rho_batch: NotRequired[str]
    note: str | None


class RunnerReport(TypedDict, total=False):
    """What a runner adds to ``metrics.json`` at the end (its ``report()``): the entry its
    strategy's registry entry names under ``log``, and HF's curvature products."""

    curvature_products: str
    hf_progress: HFProgressEntry
    plateau: PlateauState
    auto: AutoLog
    swa: SWALog
    adam: AdamLog
    schedulefree: ScheduleFreeLog
    kfac: KFACLog
    soap: SOAPLog
    muon: MuonLog


class SourceOptionsEntry(TypedDict):
    """What the command line said about the checkpoint (``StartingPointOptions``): each
    ``None`` where the checkpoint's own value holds."""

    model: str | None
    model_args: dict[str, Any]
    data: str | None
    data_root: str | None
    download: bool
    train_time: float | None
    lr: float | None
    batch_size: int | None
    momentum: float | None
    weight_decay: float | None
    task: str | None
    loss: str | None
    metric: str | None
    valid_fraction: float | None
    checkpoint_key: NotRequired[str]


class FinetuneConfigEntry(TypedDict, total=False):
    """A fine-tuning run's configuration (``FinetuneConfig``), under ``config``; what makes
    two runs the same run is all of it but ``out`` and ``overwrite``."""

    checkpoint: str
    strategy: str
    budget: str
    out: str
    source: SourceOptionsEntry
    eval_batch_size: int | None
    eval_points: int
    seed: int
    device: str
    overwrite: bool
    export: NotRequired[str]


class FinetuneLog(RunnerReport, total=False):
    """``metrics.json`` of one fine-tuning run."""

    schema_version: int
    kind: str
    status: str
    config: FinetuneConfigEntry
    strategy: str
    budget: BudgetEntry
    source: SourceEntry
    versions: dict[str, str]
    device: str
    world_size: int
    seed: int
    setup_seconds: float
    evaluations: list[EvaluationEntry]
    steps: list[StepEntry]
    initial: EvaluationEntry
    final: EvaluationEntry
    best: EvaluationEntry
    spent: SpentEntry
    files: dict[str, str]


class TrainData(TypedDict):
    """The data set of a training run, under ``data`` in ``run.json``."""

    name: str
    num_classes: int
    in_channels: int
    input_size: int
    train_size: int
    valid_source: str


class CheckpointEntry(TypedDict):
    """One checkpoint of a training run, in ``checkpoints``."""

    path: str
    epoch: int
    elapsed_seconds: float


class EpochEntry(SplitMetrics, total=False):
    """One epoch of a training run (evaluated outside the clock), in ``epochs``."""

    epoch: int
    elapsed_seconds: float
    epoch_seconds: float
    train_batch_loss: float | None


class TrainConfigEntry(TypedDict):
    """A training run's ``TrainConfig``, under ``config`` in ``run.json``."""

    model: str
    data: str
    out: str
    epochs: int
    lr: float
    batch_size: int
    momentum: float
    weight_decay: float
    model_args: dict[str, Any]
    data_root: str | None
    download: bool
    checkpoints: int
    seed: int
    device: str
    augment: bool
    overwrite: bool
    task: str | None
    loss: str | None
    metric: str | None
    valid_fraction: float | None


class RunManifest(TypedDict):
    """``run.json`` of a training run."""

    schema_version: int
    kind: str
    status: str
    config: TrainConfigEntry
    data: TrainData
    task: TaskEntry
    device: str
    versions: dict[str, str]
    train_seconds: float
    robust_train_seconds: float | None
    budget_time: str
    checkpoints: list[CheckpointEntry]
    epochs: list[EpochEntry]
    files: list[str]


class StrategyRanking(TypedDict):
    """One strategy's place in a ranking by one metric."""

    strategy: str
    metric: str
    values: list[float]
    mean: float
    q25: float
    median: float
    q75: float
    rank: int
    tied_with: list[str]
    seeds: list[int]
    dropped: list[int]


class TimeToTarget(TypedDict):
    """The budget each strategy needed to reach the best SGD baseline's final accuracy (or
    the user's ``--target``), and its ratio to the fastest first-order strategy's."""

    metric: str
    baseline: str
    target: float
    fractions: dict[str, float | None]
    missed: dict[str, int]
    seeds: dict[str, int]
    ratios: dict[str, float | None]
    fastest_first_order: str | None


class CompareCheckpoint(TypedDict):
    """The rankings of the runs from one checkpoint, in ``checkpoints``."""

    checkpoint: str
    runs: int
    status: dict[str, int]
    start: dict[str, float | None]
    rankings: dict[str, list[StrategyRanking]]
    time_to_target: TimeToTarget | None
    step_seconds: dict[str, dict[str, float]]
    hf_progress: dict[str, str]
    notes: list[str]


class CompareRun(TypedDict):
    """One run of a comparison, in ``runs``."""

    checkpoint: str
    strategy: str
    seed: int
    status: str


class CompareConfigEntry(TypedDict):
    """A comparison's ``CompareConfig`` without ``shard`` (the same for every shard), under
    ``config`` in ``compare.json``."""

    checkpoints: list[str]
    strategies: list[str] | None
    seeds: int
    first_seed: int
    budget: str
    out: str
    eval_points: int
    eval_batch_size: int | None
    device: str
    source: SourceOptionsEntry
    overwrite: bool
    suite: str
    last_only: list[str]
    target: str | None


class CompareSummary(TypedDict, total=False):
    """``compare.json`` (and ``hfft compare --json``)."""

    kind: str
    status: str
    config: CompareConfigEntry
    strategies: list[str]
    metrics: list[str]
    tie_rule: str
    checkpoints: list[CompareCheckpoint]
    relative_performance: dict[str, dict[str, dict[str, list[float]]]]
    runs: list[CompareRun]
    plots: list[str]
    files: list[str]
    folders: list[str]


class StudyRecord(TypedDict):
    """``study.json``: a study's own files and folders (what hfft may replace there)."""

    kind: str
    status: str
    files: list[str]
    folders: list[str]
