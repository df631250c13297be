"""The user's own model, loss and data for ``landprobe probe``, named as ``package.module:name``.

- ``--model mod:Class``: an ``nn.Module`` subclass, or a function returning a module, called
  with the JSON object of ``--model-kwargs`` as keyword arguments.
- ``--loss mod:name``: a loss ``loss_fn(output, target)`` (a function or an ``nn.Module``
  instance such as ``torch.nn.MSELoss()``), or a class or a function taking no arguments that
  returns one (``torch.nn.MSELoss``, ``make_loss``). A function whose arguments all have
  defaults counts as such a factory.
- ``--data mod:name``: an iterable of ``(inputs, targets)`` batches, a ``torch`` ``Dataset``
  (batched by ``--batch-size``, in order), or a function or class taking no arguments that
  returns one of them. A one-shot iterator (a generator) is read into a list.

The current folder is importable for these imports (put at the front of ``sys.path`` while
importing, when it is not there already). A missing module, a missing attribute or an object of
the wrong kind is a one-line ``ValueError`` naming the flag.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import re
import sys
from typing import Any, Callable

import torch

__all__ = ["IMPORT_PATH", "is_import_path", "import_object", "user_model", "user_loss", "user_data",
           "model_kwargs"]

#: ``package.module:name`` (the name may be dotted: ``module:Class.factory``).
IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def is_import_path(text: str) -> bool:
    """Whether ``text`` has the form ``package.module:name``.

    Example:
        >>> from landprobe.cli.usercode import is_import_path
        >>> is_import_path("mynets:Net"), is_import_path("data/T91"), is_import_path("C:\\\\data")
        (True, False, False)
    """
    return bool(IMPORT_PATH.match(text))


def _import_module(flag: str, text: str, name: str):
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
            raise ValueError(f"{flag} {text!r}: no module named {exc.name!r} in the current folder or on sys.path; "
                             f"run landprobe from the folder that holds {name.replace('.', '/')}.py or add that "
                             f"folder to PYTHONPATH") from None
        raise ValueError(f"{flag} {text!r}: importing {name!r} failed: {exc}; install it") from None
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def import_object(flag: str, text: str) -> Any:
    """The object that ``text`` (``package.module:name``) names, for the option ``flag``.

    Example:
        >>> from landprobe.cli.usercode import import_object
        >>> import_object("--loss", "torch.nn:MSELoss")
        <class 'torch.nn.modules.loss.MSELoss'>
        >>> import_object("--loss", "torch.nn:NoSuchLoss")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: --loss 'torch.nn:NoSuchLoss': module 'torch.nn' (...) has no attribute 'NoSuchLoss'; check...
    """
    if not is_import_path(text):
        raise ValueError(f"{flag} {text!r}: expected an import path 'package.module:name'")
    module_name, _, attr = text.partition(":")
    obj = _import_module(flag, text, module_name)
    owner = f"module {module_name!r}" + (f" ({obj.__file__})" if getattr(obj, "__file__", None) else "")
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{flag} {text!r}: {owner} has no attribute {part!r}; check the name after the colon")
        obj = getattr(obj, part)
        owner = repr(f"{module_name}:{attr[:attr.index(part) + len(part)]}")
    return obj


def _kind(obj: Any) -> str:
    if isinstance(obj, type):
        return f"the class {obj.__name__}"
    name = type(obj).__name__
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def _takes_no_arguments(func: Callable) -> bool:
    try:
        inspect.signature(func).bind()
    except TypeError:
        return False
    except ValueError:  # no signature (a builtin)
        return False
    return True


def _call(flag: str, text: str, factory: Callable, kwargs: dict[str, Any], hint: str) -> Any:
    name = getattr(factory, "__name__", text)
    try:
        inspect.signature(factory).bind(**kwargs)
    except TypeError as exc:
        raise ValueError(f"{flag} {text!r}: {name}() does not take these arguments ({exc}); {hint}") from None
    except ValueError:
        pass  # no signature to check: call it
    return factory(**kwargs)


def model_kwargs(text: str | None) -> dict[str, Any]:
    """The JSON object of ``--model-kwargs`` as a dict (empty for ``None``).

    Example:
        >>> from landprobe.cli.usercode import model_kwargs
        >>> model_kwargs('{"width": 0.5}')
        {'width': 0.5}
        >>> model_kwargs("[1]")
        Traceback (most recent call last):
        ValueError: --model-kwargs '[1]' is a JSON list, expected a JSON object such as '{"width": 0.5}'
    """
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--model-kwargs {text!r} is not JSON ({exc.msg} at character {exc.pos}); pass an "
                         f"object such as '{{\"width\": 0.5}}' (quote it for the shell)") from None
    if not isinstance(value, dict):
        kind = {list: "list", str: "string", bool: "boolean", type(None): "null"}.get(type(value), "number")
        raise ValueError(f"--model-kwargs {text!r} is a JSON {kind}, expected a JSON object such as "
                         f"'{{\"width\": 0.5}}'")
    return value


def user_model(text: str, kwargs: dict[str, Any]) -> torch.nn.Module:
    """The ``nn.Module`` that ``--model text`` builds with ``kwargs``.

    Example:
        >>> from landprobe.cli.usercode import user_model
        >>> user_model("torch.nn:Linear", {"in_features": 2, "out_features": 1})
        Linear(in_features=2, out_features=1, bias=True)
    """
    obj = import_object("--model", text)
    want = "expected an nn.Module subclass or a function that returns an nn.Module"
    if isinstance(obj, torch.nn.Module):
        if kwargs:
            raise ValueError(f"--model {text!r} is a module instance, which takes no --model-kwargs; name its class")
        return obj
    if (isinstance(obj, type) and not issubclass(obj, torch.nn.Module)) or not callable(obj):
        raise ValueError(f"--model {text!r} is {_kind(obj)}; {want}")
    flag = "--model" if not kwargs else f"--model-kwargs {json.dumps(kwargs)!r} of --model"
    model = _call(flag, text, obj, kwargs, "pass its keyword arguments with --model-kwargs '{\"name\": value}'")
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"--model {text!r} returned {_kind(model)}; {want}")
    return model


def user_loss(text: str) -> tuple[Callable, str]:
    """``(loss_fn, how it was made)`` for ``--loss text``: the object itself, or what its class
    or zero-argument factory returns.

    Example:
        >>> from landprobe.cli.usercode import user_loss
        >>> user_loss("torch.nn:MSELoss")
        (MSELoss(), 'class')
        >>> user_loss("torch.nn.functional:mse_loss")[1]
        'function'
    """
    obj = import_object("--loss", text)
    want = ("expected a loss loss_fn(output, target), or a class or function taking no arguments that "
            "returns one")
    how = "function"
    if isinstance(obj, type):
        obj, how = _call("--loss", text, obj, {}, "name an instance or a factory without arguments"), "class"
    elif not isinstance(obj, torch.nn.Module) and callable(obj) and _takes_no_arguments(obj):
        obj, how = obj(), "factory"
    elif isinstance(obj, torch.nn.Module):
        how = "instance"
    if isinstance(obj, type) or not callable(obj):
        raise ValueError(f"--loss {text!r} {'gave' if how != 'function' else 'is'} {_kind(obj)}; {want}")
    try:
        inspect.signature(obj).bind(None, None)
    except TypeError:
        raise ValueError(f"--loss {text!r}: the loss does not accept two arguments (output, target); {want}") from None
    except ValueError:
        pass
    return obj, how


def user_data(text: str, batch_size: int) -> tuple[Any, dict[str, Any]]:
    """``(batches, spec)`` for ``--data text``: an iterable of ``(inputs, targets)`` batches.

    Example:
        >>> import sys, types, torch
        >>> from landprobe.cli.usercode import user_data
        >>> sys.modules["toydata"] = mod = types.ModuleType("toydata")   # a module of the user's
        >>> mod.pairs = lambda: [(torch.zeros(2, 1), torch.zeros(2, 1))]
        >>> batches, spec = user_data("toydata:pairs", 64)
        >>> len(batches), spec
        (1, {'import': 'toydata:pairs', 'type': 'list'})
        >>> mod.rows = torch.utils.data.TensorDataset(torch.zeros(5, 1), torch.zeros(5, 1))
        >>> batches, spec = user_data("toydata:rows", 2)                # a Dataset, batched
        >>> [len(x) for x, y in batches], spec["batch_size"]
        ([2, 2, 1], 2)
    """
    obj = import_object("--data", text)
    want = ("expected an iterable of (inputs, targets) batches, a Dataset, or a function taking no arguments "
            "that returns one")
    if callable(obj) and not isinstance(obj, torch.utils.data.Dataset):
        if not isinstance(obj, type) and not _takes_no_arguments(obj):
            raise ValueError(f"--data {text!r}: {getattr(obj, '__name__', text)}() needs arguments; {want}")
        obj = _call("--data", text, obj, {}, want)
    spec: dict[str, Any] = {"import": text, "type": type(obj).__name__}
    if isinstance(obj, torch.utils.data.Dataset) and not isinstance(obj, torch.utils.data.IterableDataset):
        try:
            empty = len(obj) == 0  # type: ignore[arg-type]
        except Exception:  # noqa: BLE001 - no usable length: the first batch decides below
            empty = False
        if empty:
            raise ValueError(f"--data {text!r} gave an empty {type(obj).__name__}; it must yield at least one "
                             f"(inputs, targets) batch")
        obj = torch.utils.data.DataLoader(obj, batch_size=batch_size, shuffle=False)
        spec["batch_size"] = batch_size
    elif isinstance(obj, (str, bytes, dict, torch.Tensor)) or not hasattr(obj, "__iter__"):
        raise ValueError(f"--data {text!r} gave {_kind(obj)}; {want}")
    elif iter(obj) is obj:  # a generator or another one-shot iterator: every probe passes many times
        obj = list(obj)
    first = next(iter(obj), None)
    if first is None:
        raise ValueError(f"--data {text!r} gave no batches; it must yield at least one (inputs, targets) batch")
    if not (isinstance(first, (tuple, list)) and len(first) == 2):
        raise ValueError(f"--data {text!r}: the first batch is {_kind(first)}"
                         + (f" of length {len(first)}" if isinstance(first, (tuple, list)) else "")
                         + "; each batch must be an (inputs, targets) pair")
    return obj, spec
