"""Command-line options generated from stage configs: each option is defined once.

A stage's frozen config dataclass is the single source of its options: the field's name
gives the flag (``batch_size`` -> ``--batch-size``), its annotation the argparse type
(``int``, ``float``, ``str``, ``X | None``, ``Literal[...]`` -> choices, ``tuple[X, ...]``
-> one or more values, ``bool`` -> a switch) and its attribute docstring the help text.
Where the command line needs more (another flag name, an alias, a parser such as token
counts ``10M``, a metavar), the field says so with :func:`opt`; a field marked
:data:`NO_CLI` is not an option. ``add_config_options(parser, Config)`` adds the options and
``config_from_args(Config, args)`` builds the config from the parsed arguments.

Deprecated spellings (``--max-tokens`` for ``--tokens``) keep working with a message on
stderr; a positional run directory (``universal-neurons report RUN``) is an alias of
``--out RUN``.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import sys
import textwrap
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any

NO_CLI: dict[str, Any] = {"cli": None}
"""Field metadata of a config field that is not a command-line option."""

_POSITIONAL_RUN = "_run_positional"


SKIPPED = ("progress",)
"""Fields never turned into options: ``progress`` comes from ``--quiet``."""


def count(text: str) -> int:
    """A token count such as ``500000``, ``500k``, ``10M`` or ``1B`` (argparse type)."""
    from universal_neurons.data.dataset import parse_count

    try:
        return parse_count(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def threshold_arg(text: str) -> float:
    """An excess-correlation threshold: a finite number in (0, 1] (argparse type)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad threshold {text!r}: expected a number in "
                                         "(0, 1], e.g. 0.5") from None
    if not 0 < value <= 1:  # also refuses nan and inf
        raise argparse.ArgumentTypeError(f"threshold must be in (0, 1] (a correlation "
                                         f"difference), got {text!r}; e.g. 0.5")
    return value


def opt(default: Any = dataclasses.MISSING, *flags: str, help: str | None = None,
        deprecated: Sequence[str] = (), **argparse_kwargs: Any) -> Any:
    """A config field with command-line details: ``flags`` (default ``--field-name``),
    ``help`` (default: the field's docstring), ``deprecated`` flag spellings, and extra
    argparse keywords (``type``, ``metavar``, ``action``, ``nargs``...)."""
    cli = {"flags": flags, "help": help, "deprecated": tuple(deprecated), **argparse_kwargs}
    return dataclasses.field(default=default, metadata={"cli": cli})


# ---- the options shared by the stages (one spelling everywhere) ------------------------------
def models_opt(one: bool = False) -> Any:
    """``--model``/``--models M ...`` (required); ``one``: a single model (``model: str``)."""
    return opt(dataclasses.MISSING, "--model", *(() if one else ("--models",)), metavar="M")


def run_opt() -> Any:
    """``--out RUN`` (required): the run directory."""
    return opt(dataclasses.MISSING, "--out", metavar="RUN")


def tokens_opt(default: int | None) -> Any:
    """``--tokens N`` (``500k``, ``10M``); ``--max-tokens`` is its deprecated spelling."""
    return opt(default, "--tokens", deprecated=("--max-tokens",), type=count, metavar="N")


def dataset_opt() -> Any:
    """``--dataset TOKENS``: a token dataset folder (default None: the bundled test split)."""
    return opt(None, metavar="TOKENS")


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """``{field: docstring}`` of a dataclass's attribute docstrings (the string literal
    right after an annotated field), whitespace collapsed."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):  # no source (frozen app): no help texts
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs: dict[str, str] = {}
    for node, after in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def _help_text(text: str) -> str:
    """Docstring -> help: drop reST markup and escape ``%`` for argparse."""
    return text.replace("``", "").replace(":func:", "").replace("%", "%%")


def _unwrap(tp: Any) -> tuple[Any, bool]:
    """``X | None`` -> ``(X, True)``; anything else -> ``(tp, False)``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _argparse_kwargs(name: str, tp: Any, default: Any) -> dict[str, Any]:
    """argparse keywords for a field of annotation ``tp`` and default ``default``."""
    base, _ = _unwrap(tp)
    origin, args = typing.get_origin(base), typing.get_args(base)
    if base is bool:
        return {"action": "store_false" if default is True else "store_true"}
    if origin is typing.Literal:
        return {"choices": list(args), "type": type(args[0])}
    if origin in (tuple, list):
        return {"nargs": "+", "type": args[0] if args and args[0] is not Ellipsis else str}
    if base in (int, float):
        return {"type": base, "metavar": "N" if base is int else "X"}
    if base is str:
        return {"type": base}
    raise TypeError(f"config field {name}: no command-line form for {tp!r}; mark it NO_CLI "
                    "or give opt(type=...)")


_SWITCHES = ("store_true", "store_false", "store_const")


def _field_type(cls: type, f: dataclasses.Field) -> Any:
    """The field's annotation, evaluated in its module (only option fields are evaluated, so
    the others may name types imported for type checking alone)."""
    if not isinstance(f.type, str):
        return f.type
    return eval(f.type, vars(sys.modules[cls.__module__]))  # noqa: S307 (our own source)


class _Deprecated(argparse.Action):
    """An old flag spelling: stores into the same field, with a message on stderr."""

    def __init__(self, *args: Any, new_flag: str = "", inner: str = "store", **kwargs: Any):
        self.new_flag, self.inner = new_flag, inner
        if inner in ("store_true", "store_false"):
            kwargs["nargs"] = 0
        super().__init__(*args, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        # a command-line message, written while parsing as argparse writes its own
        sys.stderr.write(f"universal-neurons: {option_string} is deprecated, use "
                         f"{self.new_flag}\n")
        value = {"store_true": True, "store_false": False}.get(self.inner, values)
        setattr(namespace, self.dest, value)


def add_config_options(parser: argparse.ArgumentParser, cls: type, *,
                       skip: Sequence[str] = (), run_positional: bool = False) -> None:
    """Add one option per field of the dataclass ``cls`` (see the module doc). Fields in
    ``skip`` are left to the caller. ``run_positional``: ``out`` may also be given as the
    first positional argument (``universal-neurons report RUN``)."""
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        meta = f.metadata.get("cli", {})
        if meta is None or f.name in skip or f.name in SKIPPED:
            continue
        meta = dict(meta)
        flags = tuple(meta.pop("flags", ()) or (f"--{f.name.replace('_', '-')}",))
        deprecated = meta.pop("deprecated", ())
        text = meta.pop("help", None) or _help_text(docs.get(f.name, ""))
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        default = None if required else (f.default if f.default is not dataclasses.MISSING
                                         else f.default_factory())  # type: ignore[misc,operator]
        kwargs = {**_argparse_kwargs(f.name, _field_type(cls, f), default), **meta}
        switch = kwargs.get("action") in _SWITCHES
        if switch:
            for key in ("type", "nargs", "choices", "metavar"):
                kwargs.pop(key, None)
        if kwargs.get("action") == "store_const":
            kwargs["default"] = default
        elif not switch:
            kwargs["default"] = default
            if default not in (None, (), "") and "default" not in text:
                shown = " ".join(map(str, default)) if isinstance(default, tuple) else default
                text = f"{text.rstrip('.')} (default {shown})" if text else f"default {shown}"
        if required and not (run_positional and f.name == "out"):
            kwargs["required"] = True
        parser.add_argument(*flags, dest=f.name, help=text or None, **kwargs)
        for old in deprecated:
            inner = kwargs.get("action", "store")
            extra = {k: v for k, v in kwargs.items()
                     if k in ("type", "nargs", "choices", "metavar")}
            parser.add_argument(old, dest=f.name, action=_Deprecated, new_flag=flags[0],
                                inner=inner, help=argparse.SUPPRESS,
                                **({} if inner != "store" else extra))
    if run_positional:
        parser.add_argument(_POSITIONAL_RUN, nargs="?", metavar="RUN", default=None,
                            help="run directory (same as --out RUN)")


def config_from_args(cls: type, args: argparse.Namespace, **overrides: Any) -> Any:
    """Build ``cls`` from parsed arguments: every option field, ``progress = not --quiet``
    where the config has it, and ``overrides``. A positional RUN fills ``out``."""
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in overrides or not hasattr(args, f.name):
            continue
        value = getattr(args, f.name)
        kwargs[f.name] = tuple(value) if isinstance(value, list) else value
    positional = getattr(args, _POSITIONAL_RUN, None)
    if "out" in names and positional is not None:
        if kwargs.get("out") not in (None, positional):
            raise ValueError(f"two run directories given: {positional} and --out "
                             f"{kwargs['out']}; give one")
        kwargs["out"] = positional
    if "out" in names and kwargs.get("out") is None and "out" not in overrides:
        raise ValueError("no run directory given: pass --out RUN")
    if "progress" in names and "progress" not in overrides:
        kwargs["progress"] = not getattr(args, "quiet", False)
    kwargs.update(overrides)
    return cls(**kwargs)


def given_arguments(add: Callable[[argparse.ArgumentParser], None], argv: Sequence[str],
                    prog: str) -> dict[str, Any]:
    """Parse ``argv`` with the options ``add`` puts on a parser and return only the options
    given (``{dest: value}``, lists as tuples; no defaults, nothing required). Unknown or bad
    arguments are a ``ValueError`` starting with ``prog``."""
    parser = argparse.ArgumentParser(prog=prog, add_help=False, exit_on_error=False)
    add(parser)
    for action in parser._actions:
        action.default, action.required = argparse.SUPPRESS, False
    try:
        args, rest = parser.parse_known_args(list(argv))
    except argparse.ArgumentError as e:
        raise ValueError(f"{prog}: {e}") from None
    if rest:
        raise ValueError(f"{prog}: unknown arguments {rest}")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in vars(args).items()
            if not k.startswith("_")}


def config_from_argv(cls: type, argv: Sequence[str], prog: str = "", **overrides: Any) -> Any:
    """Build ``cls`` from ``overrides`` and, on top, the options of ``cls`` given in
    ``argv``. Bad arguments are a ``ValueError`` naming them."""
    given = given_arguments(functools.partial(add_config_options, cls=cls), argv,
                            prog or cls.__name__)
    return cls(**{**overrides, **given})
