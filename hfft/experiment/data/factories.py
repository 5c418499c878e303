"""Naming a model on the command line: registered problems and user factories.

``--model`` is either a registered name (``3c3d``, ``mlp``, …; see
:mod:`hfft.models`), an architecture of timm's registry (``timm:resnet18``,
built without weights: hfft loads them from the checkpoint) or a factory spec,
``path/to/file.py:factory`` or ``package.module:factory``, naming a function
that returns an ``nn.Module``. ``--model-arg KEY=VALUE`` items become keyword
arguments of the factory (of ``timm.create_model``).

Nothing here imports torch at module level, so the CLI can import it cheaply.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hfft._text import clipped, quoted
from hfft.experiment.data.timm_models import TIMM
from hfft.experiment.data.user_code import ModelSpecError, calling, raised

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "DATA_ARGS",
    "TIMM",
    "ModelSpecError",
    "absolute_spec",
    "build_model",
    "load_factory",
    "parse_model_args",
]

#: Arguments that follow the data and are passed by :func:`build_model` itself.
DATA_ARGS = ("num_classes", "in_channels", "input_size", "input_shape")


_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\Z")


def parse_model_args(items: list[str]) -> dict[str, Any]:
    """Parse ``KEY=VALUE`` items into typed keyword arguments.

    A value becomes ``bool`` for ``true``/``false``, ``None`` for
    ``none``/``null`` (any case), ``int`` if it parses as one, else ``float``
    if it parses as one, else ``str``. Quotes force a string:
    ``name="1"`` gives ``"1"``.

    Args:
        items: Items such as ``["width=64", "act=relu", "p=0.5"]``.

    Returns:
        ``{key: value}`` in the order given.

    Raises:
        ModelSpecError: For an item without ``=``, a key that is not a Python
            identifier, an empty value, or a repeated key.
    """
    args: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        raw = raw.strip()
        if not sep:
            raise ModelSpecError(f"Model argument {item!r} is not of the form KEY=VALUE.")
        if not _KEY.match(key):
            raise ModelSpecError(f"Model argument {item!r} has an invalid name {key!r}.")
        if not raw:
            raise ModelSpecError(f"Model argument {item!r} has no value; write {key}=VALUE.")
        if key in args:
            raise ModelSpecError(f"Model argument {key!r} is given more than once.")
        args[key] = _parse_value(raw)
    return args


def _parse_value(raw: str) -> Any:
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "\"'":
        return raw[1:-1]
    lowered = raw.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for convert in (int, float):
        try:
            return convert(raw)
        except ValueError:
            pass
    return raw


def load_factory(spec: str) -> Callable[..., Any]:
    """Load the model factory named by ``path/to/file.py:factory`` or
    ``package.module:factory``.

    A file is loaded as a fresh module, which **executes the user's file** —
    the user's explicit choice when they name it (never do this with an
    untrusted file). A dotted module path is imported with
    :func:`importlib.import_module`. As ``python -m`` and ``python file.py``
    do, the file's folder (for a file) or the current directory (for a
    module) goes first on ``sys.path`` for the rest of the run, so the
    user's code imports the modules beside it, on import or later when
    called. The factory may be a dotted attribute (``module:Class.create``).

    Args:
        spec: ``TARGET:FACTORY``; the target is taken as a file when it ends
            in ``.py`` or contains a path separator.

    Returns:
        The factory (any callable).

    Raises:
        ModelSpecError: If the colon is missing, the file does not exist, the
            file or module cannot be imported, or the attribute is missing or
            not callable.
    """
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise ModelSpecError(
            f"Model {spec!r} is neither a registered name nor of the form "
            "path/to/file.py:factory or package.module:factory."
        )
    if target.endswith(".py") or "/" in target or "\\" in target:
        module = _load_file(Path(target).expanduser())
    else:
        module = _import_module(target)
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ModelSpecError(f"{target!r} has no attribute {attr!r}.") from None
    if not callable(obj):
        raise ModelSpecError(
            f"{target}:{attr} is a {type(obj).__name__}, not a callable model factory."
        )
    return obj


def _load_file(path: Path) -> Any:
    if not path.is_file():
        raise ModelSpecError(f"Model file {str(path)!r} does not exist.")
    path = path.resolve()
    # A unique name per file, registered before execution, so that the
    # file's own classes (dataclasses, pickling) can find their module.
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:12]
    name = f"hfft_user_model_{digest}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise ModelSpecError(f"Model file {str(path)!r} cannot be loaded as a Python module.")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    _on_sys_path(path.parent)
    try:
        # a script that parses its arguments or calls sys.exit when imported fails here
        with calling(
            f"Loading file {str(path)!r} failed: hfft imported it",
            "Importing the file must only define things: what runs on import belongs under "
            "if __name__ == '__main__'",
            error=ModelSpecError,
        ):
            module_spec.loader.exec_module(module)
    except ModelSpecError:
        sys.modules.pop(name, None)
        raise
    return module


def _import_module(name: str) -> Any:
    if not _MODULE.match(name):
        raise ModelSpecError(f"{name!r} is not a Python module path (package.module).")
    _on_sys_path(Path.cwd())  # the console script, unlike python -m, does not put it there
    try:
        return importlib.import_module(name)
    except (KeyboardInterrupt, GeneratorExit):
        raise
    except BaseException as exc:  # SystemExit on import too: the module's failure, not hfft's end
        raise ModelSpecError(f"Cannot import module {name!r}: {raised(exc)}.") from exc


def _on_sys_path(folder: Path) -> None:
    """Put ``folder`` first on ``sys.path`` for the rest of the run, unless it is there.

    Not only while the user's module is imported: a factory may import a module
    beside it in its body, when hfft calls it (``""`` on the path is the current
    directory).
    """
    folder = folder.resolve()
    on_path = {Path(p or ".").resolve() for p in sys.path if isinstance(p, str)}
    if folder not in on_path:
        sys.path.insert(0, str(folder))


def absolute_spec(spec: str) -> str:
    """``file.py:fn`` with the file's absolute path (names and ``package.module:fn`` unchanged).

    What outputs record, so that the command that reproduces a run works from
    any directory.
    """
    target, sep, attr = spec.rpartition(":")
    if not sep or not target.endswith(".py"):
        return spec
    return f"{Path(target).expanduser().resolve()}:{attr}"


def build_model(
    spec_or_name: str,
    model_args: dict[str, Any],
    data_args: dict[str, Any],
    device: str | None = None,
) -> nn.Module:
    """Build a model from a registered name, a timm architecture or a user's factory spec.

    The factory is called with ``model_args`` and those of the data's
    arguments (``num_classes``, ``in_channels``, ``input_size``,
    ``input_shape``; :meth:`hfft.experiment.data.splits.DataSplits.data_args`)
    that its signature names explicitly — a bare ``**kwargs`` gets none of
    them, so ``torchvision.models:resnet18`` works with ``--model-arg
    num_classes=10``. ``timm:NAME`` is ``timm.create_model(NAME,
    pretrained=False, …)`` with the data's ``num_classes`` and its
    ``in_channels`` as timm's ``in_chans``
    (:func:`hfft.experiment.data.timm_models.check_timm_model` says which names
    and arguments it refuses). A model argument of the same name as a data
    argument wins (the user said so).

    Args:
        spec_or_name: Registered name, ``timm:NAME``, or ``file.py:factory`` /
            ``package.module:factory``.
        model_args: Keyword arguments for the factory (see :func:`parse_model_args`).
        data_args: What the data says about outputs and input shape.
        device: Build the model's tensors there (``"meta"``: shapes without
            memory, to check a checkpoint before anything is allocated);
            default: the factory's own choice.

    Returns:
        The model.

    Raises:
        ModelSpecError: For an unknown name, a bad spec (see
            :func:`load_factory`, :mod:`hfft.experiment.data.timm_models`), a model argument
            the factory does not take, a factory that fails in any way
            (``sys.exit`` included; one paragraph naming the call), or one
            that returns something other than an ``nn.Module``.
    """
    import torch
    from torch import nn

    factory, kwargs = _factory(spec_or_name, model_args, data_args)
    with (
        calling(
            f"Building model {clipped(spec_or_name)!r} failed: hfft called it as "
            + _shown_call(spec_or_name, kwargs),
            _advice(spec_or_name),
            error=ModelSpecError,
        ),
        torch.device(device) if device is not None else contextlib.nullcontext(),
    ):
        model = factory(**kwargs)
    if not isinstance(model, nn.Module):
        raise ModelSpecError(
            f"Model factory {spec_or_name!r} returned a {type(model).__name__}, "
            "not a torch.nn.Module."
        )
    return model


def _factory(
    spec: str, model_args: dict[str, Any], data_args: dict[str, Any]
) -> tuple[Callable[..., Any], dict[str, Any]]:
    """The callable that builds the model, and its keyword arguments."""
    from hfft.models import PROBLEMS

    # before package.module:factory: timm's top-level names are helpers (create_model,
    # list_models), none a model function, so the prefix hides no factory anyone names
    if spec.startswith(TIMM):
        from hfft.experiment.data.timm_models import timm_factory  # imports timm when called

        return timm_factory(spec, model_args, data_args)
    if spec in PROBLEMS:
        factory: Callable[..., Any] = PROBLEMS[spec].build
    elif ":" in spec:
        factory = load_factory(spec)
    else:
        known = ", ".join(PROBLEMS)
        raise ModelSpecError(
            f"Unknown model {spec!r}; use one of {known}, timm:NAME (an architecture of timm) "
            "or path/to/file.py:factory or package.module:factory."
        )
    named = _named_parameters(factory)
    _check_accepts(spec, factory, model_args)
    return factory, {**{k: v for k, v in data_args.items() if k in named}, **model_args}


def _shown_call(spec: str, kwargs: dict[str, Any]) -> str:
    """The call as the user can read it: ``resnet18(num_classes=10)``."""
    args = [f"{k}={quoted(v, 40)}" for k, v in kwargs.items()]
    if spec.startswith(TIMM):
        name = clipped(spec.removeprefix(TIMM), 40)
        return f"timm.create_model({', '.join([repr(name), 'pretrained=False', *args])})"
    return f"{clipped(spec.rpartition(':')[2], 40)}({', '.join(args)})"


def _advice(spec: str) -> str:
    from hfft.models import PROBLEMS

    if spec in PROBLEMS:
        return (
            f"hfft's model {spec!r} takes tensor inputs of the shape its data gives; for other "
            "data name a model of your own (path/to/file.py:factory)"
        )
    if spec.startswith(TIMM):
        return "Pass only arguments this timm architecture takes (--model-arg sets them)"
    return "Make the factory return the model for these arguments (--model-arg sets them)"


def _named_parameters(factory: Callable[..., Any]) -> set[str]:
    """Names the factory accepts as keywords; empty if it has no signature."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return set()
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {p.name for p in params if p.kind in kinds}


def _check_accepts(name: str, factory: Callable[..., Any], model_args: dict[str, Any]) -> None:
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return  # no signature to check against; let the call decide
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    accepted = _named_parameters(factory)
    unknown = [key for key in model_args if key not in accepted]
    if unknown:
        choices = ", ".join(sorted(accepted)) or "none"
        raise ModelSpecError(
            f"Model {clipped(name)!r} does not take the argument {quoted(unknown[0])}; "
            f"it takes: {choices}."
        )
