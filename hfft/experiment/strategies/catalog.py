"""The built-in strategies, each one entry of the registry.

``hf`` is the Hessian-free method of the paper; ``sgd``, ``sgd-div10``,
``sgd-cosine`` and ``sgd-plateau`` its SGD baselines (§3.2); ``auto`` runs
constant-rate SGD and switches to HF (:mod:`hfft.experiment.strategies.auto`);
``swa``, ``lbfgs``, ``adam``, ``adamw`` and ``sgd-schedulefree`` are the
late-phase methods a practitioner would also try, built on the libraries that
maintain them (:mod:`hfft.experiment.strategies.late_phase`).

The options of ``hf`` are the batch size ``m`` of the curvature batch B and the
keyword arguments of :class:`hfft.optim.optimizer.HessianFree`, except
``weight_decay``, which comes from the problem (a test holds
:data:`HF_OPTIONS` to the constructor's signature). ``auto`` takes the
switching rule's options, the SGD options, ``m`` and every other HF option
with the prefix ``hf_``.

Plain Python; importing this module does not import torch (the builders and
checks are named, and imported when a run needs them).
"""

from __future__ import annotations

from hfft.experiment.limits import (
    AT_LEAST_ONE,
    FRACTION,
    HALF_OPEN_UNIT,
    LIMITS,
    NONNEGATIVE,
    OPEN_UNIT,
    POSITIVE,
    UNIT,
)
from hfft.experiment.strategies.options import Option
from hfft.experiment.strategies.registry import StrategyEntry, register

__all__ = [
    "ADAM_DEFAULT_LR",
    "ADAM_OPTIONS",
    "AUTO_HF_PREFIX",
    "AUTO_OPTIONS",
    "AUTO_RULE_OPTIONS",
    "DEFAULT_EVAL_BATCH",
    "DEFAULT_M",
    "HF_OPTIONS",
    "LBFGS_OPTIONS",
    "SCHEDULEFREE_OPTIONS",
    "SGD_OPTIONS",
    "SWA_OPTIONS",
    "default_m",
    "largest_m",
]

DEFAULT_M = 2048
"""HF's batch size B (and L-BFGS's batch) when ``m`` is not given, data allowing."""

DEFAULT_EVAL_BATCH = 1024
"""HF's second batch B̄ when ``--eval-batch-size`` is not given, data allowing."""


def largest_m(n: int, eval_batch_size: int | None = None) -> int:
    """The largest HF batch B that leaves room for B̄ among ``n`` training samples: half
    of them, or what ``eval_batch_size`` leaves."""
    return n // 2 if eval_batch_size is None else min(n // 2, n - eval_batch_size)


def default_m(n: int) -> int:
    """HF's batch size B when ``hf:m=`` is not given: min(2048, n/2)."""
    return min(DEFAULT_M, largest_m(n))


ADAM_DEFAULT_LR = 1e-3
"""Adam's learning rate when neither the strategy nor a saved Adam state gives one."""

_LR = LIMITS["lr"].range  # a learning rate is bounded alike as an option and as --lr

HF_OPTIONS: dict[str, Option] = {
    "m": Option(
        int, "size of the batch B, gradient and curvature (default: min(2048, n/2))", range=POSITIVE
    ),
    "curvature": Option(str, "curvature matrix", choices=("ggn", "hessian"), default="ggn"),
    "damping": Option(float, "initial Tikhonov damping λ", range=POSITIVE, default=1.0),
    "adapt_damping": Option(bool, "adapt λ with the Levenberg-Marquardt rule", default=True),
    "cg_max_iter": Option(int, "most CG iterations per step", range=POSITIVE, default=250),
    "cg_tol": Option(float, "CG relative residual tolerance", range=NONNEGATIVE, default=1e-06),
    "martens_criterion": Option(bool, "stop CG on Martens' relative progress test", default=True),
    "cg_decay_x0": Option(
        float, "decay of the previous CG solution as start", range=UNIT, default=0.95
    ),
    "use_cg_backtracking": Option(bool, "backtrack over CG iterates", default=True),
    "lr": Option(float, "step size multiplier", range=POSITIVE, default=1.0),
    "use_linesearch": Option(bool, "Armijo line search on the step", default=True),
    "preconditioner": Option(
        str, "CG preconditioner", choices=("empirical-fisher", "kfac"), nullable=True
    ),
    "chunk_size": Option(int, "examples per chunk of the batch", nullable=True, range=POSITIVE),
    "backend": Option(
        str, "curvature-product back-end", choices=("func", "backpack"), default="func"
    ),
    "model_mode": Option(
        str, "module mode during HF products", choices=("eval", "train", "keep"), default="eval"
    ),
    "cache_chunks": Option(bool, "keep every chunk's linearisation", default=False),
    "preconditioner_exponent": Option(
        float, "exponent of the preconditioner", range=NONNEGATIVE, default=0.75
    ),
    "linesearch_beta": Option(
        float, "line-search step shrink factor", range=OPEN_UNIT, default=0.8
    ),
    "linesearch_c": Option(
        float, "Armijo sufficient-decrease constant", range=OPEN_UNIT, default=0.01
    ),
    "linesearch_max_tries": Option(int, "most line-search trials", range=POSITIVE, default=20),
    "tf32": Option(
        bool, "allow TF32 convolutions and matmuls on CUDA (off: IEEE float32)", default=False
    ),
    "max_damping": Option(float, "largest λ (none: 1e4 × damping)", nullable=True, range=POSITIVE),
    "curvature_fraction": Option(
        float,
        "share of B for CG's curvature products (sub-sampled)",
        range=FRACTION,
        default=1.0,
    ),
    "damping_rule": Option(
        str,
        "lm: adapt λ; trust-region: fixed λ, CG inside a radius ρ adapts",
        choices=("lm", "trust-region"),
        default="lm",
    ),
    "rho_batch": Option(
        str,
        "where ρ is measured: eval (B̄) or curvature (B)",
        choices=("eval", "curvature"),
        default="eval",
    ),
}
"""Options of the ``hf`` strategy: ``m`` and the keywords of ``HessianFree``."""

SGD_OPTIONS: dict[str, Option] = {
    "lr": Option(float, "learning rate α (default: the checkpoint's)", range=_LR),
    "batch_size": Option(int, "batch size (default: the checkpoint's)", range=POSITIVE),
    "momentum": Option(float, "momentum (default: the checkpoint's)", range=HALF_OPEN_UNIT),
}
"""Options of the SGD strategies; the defaults come from the checkpoint."""


AUTO_RULE_OPTIONS: dict[str, Option] = {
    "interval": Option(
        float,
        "budget fraction of SGD before each HF probe (the window)",
        range=OPEN_UNIT,
        default=0.1,
    ),
    "first": Option(
        float,
        "budget fraction of SGD before the first probe (default: interval; 0: probe at once)",
        range=HALF_OPEN_UNIT,
    ),
    "margin": Option(
        float,
        "switch only when HF's loss decrease per second exceeds margin × SGD's (0: no rate test)",
        range=NONNEGATIVE,
        default=0.0,
    ),
    "backoff": Option(
        float,
        "factor by which the window grows after each rolled-back probe",
        range=AT_LEAST_ONE,
        default=2.0,
    ),
    "rho_min": Option(
        float,
        "roll a probe back whose reduction ratio ρ is below rho_min (0: no such test)",
        range=NONNEGATIVE,
        default=0.5,
    ),
    "switch_back": Option(
        bool,
        "try SGD again when HF slows down (a trial, rolled back if it does not pay)",
        default=False,
    ),
    "stall": Option(
        float,
        "HF has slowed down when its rate over a window is below stall × its best rate "
        "(or below SGD's last rate)",
        range=OPEN_UNIT,
        default=0.25,
    ),
}
"""Options of the switching rule of ``auto``; :mod:`hfft.experiment.strategies.auto` and
:mod:`~hfft.experiment.strategies.switch_rule` say why the defaults are what they are."""

AUTO_HF_PREFIX = "hf_"

AUTO_OPTIONS: dict[str, Option] = {
    **AUTO_RULE_OPTIONS,
    **SGD_OPTIONS,
    "m": HF_OPTIONS["m"],
    **{AUTO_HF_PREFIX + key: option for key, option in HF_OPTIONS.items() if key != "m"},
}
"""Options of ``auto``: the rule's, the SGD phase's, ``m`` and the other HF options as ``hf_*``."""


SWA_OPTIONS: dict[str, Option] = {
    **SGD_OPTIONS,
    "swa_lr": Option(float, "the rate SWALR anneals to (default: α/2)", range=POSITIVE),
    "start": Option(
        float, "budget fraction at which averaging starts", range=HALF_OPEN_UNIT, default=0.5
    ),
    "anneal_steps": Option(
        int, "steps over which SWALR anneals from α to swa_lr", range=POSITIVE, default=10
    ),
}
"""Options of ``swa``: SGD's, and SWALR's rate, the start of averaging and the anneal."""

LBFGS_OPTIONS: dict[str, Option] = {
    "m": Option(int, "batch of each step (default: HF's m)", range=POSITIVE),
    "lr": Option(float, "step length (as torch.optim.LBFGS)", range=POSITIVE, default=1.0),
    "history_size": Option(int, "curvature pairs kept", range=POSITIVE, default=10),
    "max_iter": Option(int, "iterations per step, all on its batch", range=POSITIVE, default=10),
}
"""Options of ``lbfgs`` (strong-Wolfe line search, one batch per step)."""

ADAM_OPTIONS: dict[str, Option] = {
    "lr": Option(
        float,
        f"learning rate (default: the checkpoint's Adam state's, else {ADAM_DEFAULT_LR}, "
        "not tuned to the checkpoint)",
        range=_LR,
    ),
    "batch_size": SGD_OPTIONS["batch_size"],
    "beta1": Option(float, "first-moment decay", range=HALF_OPEN_UNIT, default=0.9),
    "beta2": Option(float, "second-moment decay", range=HALF_OPEN_UNIT, default=0.999),
    "eps": Option(float, "denominator term", range=POSITIVE, default=1e-8),
    "schedule": Option(
        str, "learning-rate schedule", choices=("constant", "cosine"), default="constant"
    ),
}
"""Options of ``adam`` and ``adamw``."""

SCHEDULEFREE_OPTIONS: dict[str, Option] = {
    "lr": SGD_OPTIONS["lr"],
    "batch_size": SGD_OPTIONS["batch_size"],
    "momentum": Option(
        float, "interpolation β of schedule-free SGD", range=HALF_OPEN_UNIT, default=0.9
    ),
    "warmup_steps": Option(int, "linear warm-up steps", range=NONNEGATIVE, default=0),
}
"""Options of ``sgd-schedulefree`` (``schedulefree.SGDScheduleFree``)."""

_RUNNERS = "hfft.experiment.strategies.runners:"
_LATE = "hfft.experiment.strategies.late_phase:"

_SGD_SCHEDULES = {
    "sgd": ("constant", "SGD at the checkpoint's rate α"),
    "sgd-div10": ("div10", "SGD at α/10"),
    "sgd-cosine": ("cosine", "SGD, α decayed to 0 by a cosine"),
    "sgd-plateau": ("plateau", "SGD, α × 0.1 when the loss stalls"),
}
for _name, (_schedule, _summary) in _SGD_SCHEDULES.items():
    register(
        StrategyEntry(
            _name,
            _summary,
            SGD_OPTIONS,
            batch_option="batch_size",
            build=_RUNNERS + "build_sgd",
            check=_RUNNERS + "check_sgd",
            # the second-order suite's SGD baselines: the three schedules fixed in advance
            suites=("paper", "extended", *(("second-order",) if _schedule != "plateau" else ())),
            settings={"schedule": _schedule},
            baseline=True,
            log="plateau" if _schedule == "plateau" else None,
            example=f"{_name}:lr=0.01" if _name == "sgd" else "",
        )
    )

register(
    StrategyEntry(
        "hf",
        "Hessian-free: GGN, CG, damping",
        HF_OPTIONS,
        build=_RUNNERS + "build_hf",
        check=_RUNNERS + "check_hf",
        kind="hf",
        suites=("paper", "extended", "second-order"),
        batch_option="m",
        log="hf_progress",
        example="hf:m=2048,damping=0.5",
    )
)
register(
    StrategyEntry(
        "auto",
        "SGD, switching to hf when HF pays more",
        AUTO_OPTIONS,
        batch_option="batch_size",
        build="hfft.experiment.strategies.auto:build_auto",
        check="hfft.experiment.strategies.auto:check_auto",
        kind="auto",
        suites=("paper", "extended"),
        log="auto",
        example="auto:m=256",
    )
)
register(
    StrategyEntry(
        "swa",
        "SGD, then the average of the iterates",
        SWA_OPTIONS,
        batch_option="batch_size",
        build=_LATE + "SWARunner.build",
        check=_RUNNERS + "check_sgd",
        suites=("extended",),
        data_parallel=False,
        log="swa",
        evaluates="the average of the iterates",
        example="swa:start=0.5",
    )
)
register(
    StrategyEntry(
        "lbfgs",
        "L-BFGS, one batch per step",
        LBFGS_OPTIONS,
        build=_LATE + "LBFGSRunner.build",
        check=_LATE + "check_lbfgs",
        suites=("extended",),
        batch_option="m",
        data_parallel=False,
        example="lbfgs:m=1024",
    )
)
for _name, _summary in (
    ("adam", "Adam, from the checkpoint's moments"),
    ("adamw", "AdamW, decoupled weight decay"),
):
    register(
        StrategyEntry(
            _name,
            _summary,
            ADAM_OPTIONS,
            batch_option="batch_size",
            build=_LATE + "AdamRunner.build",
            check=_LATE + "check_adam",
            suites=("extended",),
            data_parallel=False,
            settings={"decoupled": _name == "adamw"},
            log="adam",
            example="adam:schedule=cosine" if _name == "adam" else "",
        )
    )
register(
    StrategyEntry(
        "sgd-schedulefree",
        "schedule-free SGD",
        SCHEDULEFREE_OPTIONS,
        batch_option="batch_size",
        build=_LATE + "ScheduleFreeRunner.build",
        check=_RUNNERS + "check_sgd",
        suites=("extended",),
        data_parallel=False,
        log="schedulefree",
        baseline=True,
        evaluates="schedule-free SGD's averaged point x",
    )
)

# --- the second-order and preconditioned peers of HF (issue #28) --------------------------

SOAP_DEFAULT_LR = 3e-3
"""``soap``'s rate when none is given: ``pytorch_optimizer.SOAP``'s default, the SOAP paper's."""

KFAC_OPTIONS: dict[str, Option] = {
    "m": Option(
        int,
        "size of the batch B: gradient, K-FAC factors, GGN product (default: HF's m)",
        range=POSITIVE,
    ),
    "damping": Option(float, "initial damping λ (as HF's)", range=POSITIVE, default=1.0),
    "adapt_damping": Option(bool, "adapt λ with the Levenberg-Marquardt rule", default=True),
    "max_damping": Option(float, "largest λ (none: 1e4 × damping)", nullable=True, range=POSITIVE),
    "fisher": Option(
        str,
        "curvature K-FAC approximates: mc (sampled labels, Martens & Grosse), type-2 (the GGN), "
        "empirical",
        choices=("mc", "type-2", "empirical"),
        default="mc",
    ),
    "lr": Option(float, "multiplier of the step length α*", range=POSITIVE, default=1.0),
    "update_every": Option(int, "steps between new K-FAC factors", range=POSITIVE, default=1),
    "chunk_size": HF_OPTIONS["chunk_size"],
}
"""Options of ``kfac`` (:mod:`hfft.experiment.strategies.kfac_runner`)."""

SOAP_OPTIONS: dict[str, Option] = {
    "lr": Option(
        float,
        f"learning rate (default: pytorch-optimizer's {SOAP_DEFAULT_LR}, not tuned to the "
        "checkpoint)",
        range=_LR,
        default=SOAP_DEFAULT_LR,
    ),
    "batch_size": SGD_OPTIONS["batch_size"],
    "beta1": Option(float, "first-moment decay", range=HALF_OPEN_UNIT, default=0.95),
    "beta2": Option(float, "second-moment decay", range=HALF_OPEN_UNIT, default=0.95),
    "precondition_frequency": Option(
        int, "steps between new eigenbases of the preconditioner", range=POSITIVE, default=10
    ),
    "weight_decay": Option(
        float, "decoupled weight decay (default: the problem's L2 factor)", range=NONNEGATIVE
    ),
}
"""Options of ``soap`` (``pytorch_optimizer.SOAP``, the package's recommended defaults)."""

MUON_OPTIONS: dict[str, Option] = {
    "lr": Option(
        float,
        f"Muon's rate for the weight matrices (default: adam's {ADAM_DEFAULT_LR}, as "
        "match_rms_adamw allows; not tuned)",
        range=_LR,
        default=ADAM_DEFAULT_LR,
    ),
    "momentum": Option(float, "Muon's momentum", range=HALF_OPEN_UNIT, default=0.95),
    "adjust_lr_fn": Option(
        str,
        "Muon's rate scaling: match_rms_adamw (AdamW-like rates), original, spectral_unclamped",
        choices=("match_rms_adamw", "original", "spectral_unclamped"),
        default="match_rms_adamw",
    ),
    "batch_size": SGD_OPTIONS["batch_size"],
}
"""Options of ``muon`` (the other parameters take SGD at the checkpoint's rate and momentum)."""

_KFAC = "hfft.experiment.strategies.kfac_runner:"
_SECOND = "hfft.experiment.strategies.second_order:"

register(
    StrategyEntry(
        "kfac",
        "K-FAC steps, Martens & Grosse's step length and damping",
        KFAC_OPTIONS,
        build=_KFAC + "KFACRunner.build",
        check=_KFAC + "check_kfac",
        kind="second-order",
        suites=("extended", "second-order"),
        batch_option="m",
        data_parallel=False,
        log="kfac",
        example="kfac:m=1024",
    )
)
register(
    StrategyEntry(
        "soap",
        "SOAP: Adam in Shampoo's eigenbasis (pytorch-optimizer)",
        SOAP_OPTIONS,
        build=_SECOND + "SOAPRunner.build",
        check=_SECOND + "check_soap",
        suites=("extended", "second-order"),
        batch_option="batch_size",
        data_parallel=False,
        log="soap",
    )
)
register(
    StrategyEntry(
        "muon",
        "Muon on the weight matrices, SGD on the rest",
        MUON_OPTIONS,
        build=_SECOND + "MuonRunner.build",
        check=_SECOND + "check_muon",
        suites=("extended", "second-order"),
        batch_option="batch_size",
        data_parallel=False,
        log="muon",
        example="muon:lr=0.002",
    )
)
