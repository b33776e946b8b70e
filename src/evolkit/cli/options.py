"""Build typer commands from config classes, so options and their defaults are written once.

`settings_command` turns every field of a config class (evolkit.config) into an option with the
field's name, default, help and choices, adds the command's own arguments, `-o/--out` and
`--config RUN/config.json` (rerun a run's exact configuration; options given on the command line
override the file's), and calls the scenario with a config built from them.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from evolkit.config import Opt, Settings, base_type, default_of, field_type, options
from evolkit.errors import EvolkitError

_PANELS = {"RunSettings": "Run", "ModelSettings": "Models", "ResponseSettings": "Models"}
#: Settings that say what this invocation does, not how the run was configured: never taken
#: from --config (a rerun of a run started with --overwrite must not wipe that run again).
_PER_INVOCATION = frozenset({"overwrite", "progress"})


@dataclass(frozen=True)
class Arg:
    """A command argument or input option that is not a setting (an input path, say)."""

    name: str
    help: str
    flags: tuple[str, ...] = ()  # empty: a positional argument
    multiple: bool = False  # several values: a repeated flag, or a positional taking the rest
    required: bool = True  # required unless --config names a run that recorded it


def _choice_enum(name: str, choices: list[str]) -> type[Enum]:
    return Enum(f"{name.title().replace('_', '')}Choice", {c: c for c in choices}, type=str)  # type: ignore[return-value]


def _panel(cls: type, name: str) -> str:
    for klass in cls.__mro__:
        if name in getattr(klass, "__annotations__", {}):
            return _PANELS.get(klass.__name__, "Method")
    return "Method"


def _option_param(cls: type, f: Any, o: Opt) -> tuple[Any, Any]:
    """(annotation, default) of the typer parameter for one setting."""
    tp, optional = base_type(field_type(cls, f.name))
    default = default_of(f)
    flags = o.flags
    long = [x for x in flags if x.startswith("--")]
    names = ([] if long else ["--" + f.name.replace("_", "-")]) + list(flags)
    choices = o.choice_list()
    help_text = o.help
    panel = _panel(cls, f.name)
    is_list = getattr(tp, "__origin__", None) is list
    if tp is bool:
        decl = o.bool_flags or f"--{f.name.replace('_', '-')}/--no-{f.name.replace('_', '-')}"
        info = typer.Option(decl, help=help_text, rich_help_panel=panel)
        return Annotated[bool, info], default
    if is_list and o.csv:
        shown = ",".join(default) if default else "none"
        if choices and list(default) == choices:
            shown = "all"
        info = typer.Option(
            *names,
            help=f"{help_text} (default: {shown})",
            show_default=False,
            rich_help_panel=panel,
        )
        return Annotated[str | None, info], None
    if is_list:
        item: Any = _choice_enum(f.name, choices) if choices else str
        info = typer.Option(*names, help=help_text, rich_help_panel=panel)
        return Annotated[list[item] | None, info], None  # type: ignore[valid-type]
    if choices:
        enum = _choice_enum(f.name, choices)
        info = typer.Option(*names, help=help_text, rich_help_panel=panel)
        if optional:
            return Annotated[enum | None, info], default  # type: ignore[valid-type]
        return Annotated[enum, info], default  # type: ignore[valid-type]
    info = typer.Option(*names, help=help_text, rich_help_panel=panel)
    if tp not in (int, float, str):
        tp = str  # a structured setting given as text (parsed by the config class)
    return Annotated[(tp | None) if optional else tp, info], default


def _value(raw: Any, o: Opt) -> Any:
    if isinstance(raw, Enum):
        return raw.value
    if isinstance(raw, list):
        return [x.value if isinstance(x, Enum) else x for x in raw]
    if o.csv and isinstance(raw, str):
        return [x.strip() for x in raw.split(",") if x.strip()]
    return raw


def read_config_file(path: Path) -> dict[str, Any]:
    """A run's config.json: its command, settings and inputs."""
    if path.is_dir():
        path = path / "config.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EvolkitError(
            f"--config {path}: no such file (give a run folder or its config.json)"
        ) from None
    except (OSError, ValueError) as exc:
        raise EvolkitError(f"--config {path}: not a readable config.json ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("settings"), dict):
        raise EvolkitError(
            f"--config {path}: has no 'settings' (written by an older evolkit?); "
            "give the options on the command line instead"
        )
    data["_path"] = str(path)
    return data


def settings_command(
    app: typer.Typer,
    name: str,
    config_cls: type[Settings],
    run: Callable[[Settings, dict[str, Any], Path], None],
    *,
    args: tuple[Arg, ...] = (),
    help: str = "",
    out_help: str = "Run folder to write (and resume).",
) -> None:
    """Register `evolkit NAME` whose options are `config_cls`'s settings.

    `run(config, args, out)` gets the built config, the argument values (from the command line,
    else from --config's recorded inputs) and the output folder.
    """
    params: list[inspect.Parameter] = [
        inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)
    ]
    for a in args:
        ann: Any
        if a.flags:
            tp: Any = list[Path] | None if a.multiple else Path | None
            ann = Annotated[tp, typer.Option(*a.flags, help=a.help)]
        else:
            tp = list[Path] | None if a.multiple else Path | None
            ann = Annotated[tp, typer.Argument(help=a.help, show_default=False)]
        params.append(
            inspect.Parameter(a.name, inspect.Parameter.KEYWORD_ONLY, annotation=ann, default=None)
        )
    params.append(
        inspect.Parameter(
            "out",
            inspect.Parameter.KEYWORD_ONLY,
            annotation=Annotated[Path | None, typer.Option("-o", "--out", help=out_help)],
            default=None,
        )
    )
    params.append(
        inspect.Parameter(
            "config_file",
            inspect.Parameter.KEYWORD_ONLY,
            annotation=Annotated[
                Path | None,
                typer.Option(
                    "--config",
                    help="Rerun the configuration in RUN/config.json (options given here "
                    "override it; without -o the run continues in its own folder).",
                ),
            ],
            default=None,
        )
    )
    fields = options(config_cls)
    none_flags: dict[str, str] = {}
    for f, o in fields:
        if not o.cli:
            continue
        ann, default = _option_param(config_cls, f, o)
        params.append(
            inspect.Parameter(
                f.name, inspect.Parameter.KEYWORD_ONLY, annotation=ann, default=default
            )
        )
        if o.none_flag:
            pname = o.none_flag.lstrip("-").replace("-", "_")
            none_flags[pname] = f.name
            params.append(
                inspect.Parameter(
                    pname,
                    inspect.Parameter.KEYWORD_ONLY,
                    annotation=Annotated[
                        bool,
                        typer.Option(
                            o.none_flag,
                            help=f"Turn {f.name.replace('_', ' ')} off.",
                            rich_help_panel=_panel(config_cls, f.name),
                        ),
                    ],
                    default=False,
                )
            )

    def command(**kw: Any) -> None:
        ctx: Any = kw.pop("ctx")
        config_file: Path | None = kw.pop("config_file")
        out: Path | None = kw.pop("out")

        def given(param: str) -> bool:
            # By name: typer ships its own copy of click, whose enum is not click's.
            src = ctx.get_parameter_source(param)
            return getattr(src, "name", "") in ("COMMANDLINE", "ENVIRONMENT")

        recorded: dict[str, Any] = {}
        settings: dict[str, Any] = {}
        recorded_in = ""
        if config_file is not None:
            data = read_config_file(config_file)
            recorded_in = data["_path"]
            if data.get("command") and data["command"] != name:
                raise EvolkitError(
                    f"--config {data['_path']}: was written by `evolkit {data['command']}`, "
                    f"not `evolkit {name}`"
                )
            recorded = dict(data["settings"].get("inputs") or {})
            settings = {
                k: v
                for k, v in data["settings"].items()
                if k != "inputs" and k not in _PER_INVOCATION
            }
            if out is None:
                out = Path(data["_path"]).parent
        for f, o in fields:
            if not o.cli or f.name not in kw:
                continue
            if config_file is not None and not given(f.name):
                continue  # the file's value (or the default where the file has none)
            raw = kw[f.name]
            if raw is None and (o.csv or o.multiple):
                continue  # not given: the config class's default
            settings[f.name] = _value(raw, o)
        for pname, fname in none_flags.items():
            if kw.pop(pname, False):
                settings[fname] = None
        values: dict[str, Any] = {}
        for a in args:
            v = kw.get(a.name)
            if v is None or v == []:
                v = recorded.get(a.name)
                if isinstance(v, dict):
                    # The Python API's rows in memory: config.json has only their digest.
                    flag = a.flags[0] if a.flags else a.name.upper()
                    raise EvolkitError(
                        f"--config {recorded_in}: the run read its {a.name} from rows in "
                        f"memory (Python API), which config.json does not hold; give {flag} "
                        "on the command line"
                    )
            if v is None and a.required:
                what = f"option '{a.flags[0]}'" if a.flags else f"argument '{a.name.upper()}'"
                ctx.fail(f"Missing {what}: {a.help}")
            values[a.name] = v
        if out is None:
            ctx.fail("Missing option '-o' / '--out': the folder to write.")
        assert out is not None
        cfg = config_cls.make(settings)
        run(cfg, values, out)

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = help
    command.__name__ = name.replace("-", "_")
    app.command(name, help=help)(command)
