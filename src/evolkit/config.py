"""The one definition of every run setting: its name, default, help text, choices, and whether
it changes results (and so belongs in a run's fingerprint).

Config classes are dataclasses whose fields carry an :class:`Opt` in their metadata. The command
line (`evolkit.cli.options` builds typer options from them) and the Python API
(``evolkit.evolve(rows, out, rounds=1, ...)``) both read these fields, so a name, a default or a
choice list is written once, here or in the domain module it comes from.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, Union

from evolkit.errors import EvolkitError

Choices = Sequence[str] | Callable[[], Sequence[str]]


@dataclass(frozen=True)
class Opt:
    """What the command line and config.json need to know about one setting."""

    help: str
    #: Other names on the command line ("-k", "--functions"); the first long one replaces the
    #: default `--field-name`.
    flags: tuple[str, ...] = ()
    #: Allowed values (a list, or a function returning one, so the domain module stays the one
    #: place that lists them). For list fields, every item must be one of them.
    choices: Choices | None = None
    #: False: the setting changes speed or safety, not results (batch size, engine, workers).
    fingerprint: bool = True
    #: A list setting written "a,b,c" on the command line.
    csv: bool = False
    #: A list setting given by repeating its flag ("--queries a.jsonl --queries b.jsonl").
    multiple: bool = False
    #: For bool fields: the on/off flag pair, e.g. "--require-both-labels/--allow-one-sided-cases".
    bool_flags: str | None = None
    #: Never written to config.json (API keys).
    secret: bool = False
    #: An extra on/off flag that sets this field to None ("--no-cache" for `cache`).
    none_flag: str | None = None
    #: Hidden from --help (kept for scripts), or not a command-line option at all.
    cli: bool = True

    def choice_list(self) -> list[str] | None:
        if self.choices is None:
            return None
        values = self.choices() if callable(self.choices) else self.choices
        return list(values)


def opt(default: Any, help: str, **kw: Any) -> Any:
    """A config field: `default` (lists are copied per instance) with its :class:`Opt`."""
    meta = {"evolkit": Opt(help, **kw)}
    if isinstance(default, list | dict):
        frozen = default
        return field(default_factory=lambda: type(frozen)(frozen), metadata=meta)
    return field(default=default, metadata=meta)


def options(cls: type) -> list[tuple[dataclasses.Field[Any], Opt]]:
    """The fields of a config class that are settings, in declaration order."""
    out = []
    for f in dataclasses.fields(cls):
        o = f.metadata.get("evolkit")
        if isinstance(o, Opt):
            out.append((f, o))
    return out


def default_of(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise TypeError(f"setting {f.name} has no default")


def field_type(cls: type, name: str) -> Any:
    return _type_hints(cls)[name]


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    # Resolving a class's annotations is slow; the CLI asks once per option at start-up.
    return typing.get_type_hints(cls)


def base_type(tp: Any) -> tuple[Any, bool]:
    """(the type without Optional, whether None is allowed)."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


C = TypeVar("C", bound="Settings")


@dataclass
class Settings:
    """Base of every config class: building from keywords, checking, fingerprinting."""

    @classmethod
    def make(cls: type[C], config: C | Mapping[str, Any] | None = None, **settings: Any) -> C:
        """A config from an existing one (or a dict, e.g. config.json's) plus keyword settings.

        Unknown names are one clear error listing the known ones, so a typo in a notebook is
        not silently ignored.
        """
        names = {f.name for f, _ in options(cls)}
        base: dict[str, Any] = {}
        if isinstance(config, Settings):
            if not isinstance(config, cls):
                raise EvolkitError(f"expected a {cls.__name__}, got a {type(config).__name__}")
            base = {n: getattr(config, n) for n in names}
        elif config is not None:
            base = {k: v for k, v in dict(config).items() if k in names}
        unknown = sorted(set(settings) - names)
        if unknown:
            raise EvolkitError(
                f"unknown setting(s) {', '.join(unknown)} for {cls.__name__}; "
                f"known: {', '.join(sorted(names))}"
            )
        base.update(settings)
        return cls(**base)

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Reject values outside their choices (one line naming the setting)."""
        for f, o in options(type(self)):
            allowed = o.choice_list()
            if allowed is None:
                continue
            value = getattr(self, f.name)
            values = value if isinstance(value, list | tuple) else [value]
            bad = [v for v in values if v is not None and v not in allowed]
            if bad:
                raise EvolkitError(
                    f"{f.name}: unknown value(s) {', '.join(map(str, bad))}; "
                    f"choose from {', '.join(allowed)}"
                )

    def to_dict(self, *, secrets: bool = False) -> dict[str, Any]:
        """Every setting as plain JSON values (secrets left out unless asked for)."""
        out = {}
        for f, o in options(type(self)):
            if o.secret and not secrets:
                continue
            out[f.name] = _plain(getattr(self, f.name))
        return out

    def fingerprint_dict(self) -> dict[str, Any]:
        """The settings that change results: what a run folder's fingerprint covers."""
        return {
            f.name: _plain(getattr(self, f.name))
            for f, o in options(type(self))
            if o.fingerprint and not o.secret
        }


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value


def parse_json_object(text: str | None, name: str) -> dict[str, Any] | None:
    """A JSON object given as text on the command line (e.g. --extra-body)."""
    if text is None or text == "":
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise EvolkitError(f"{name}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(value, dict):
        raise EvolkitError(f"{name}: expected a JSON object like '{{\"top_k\": 20}}'")
    return value
