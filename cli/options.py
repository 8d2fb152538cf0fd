"""The config-source options every config-taking command shares: --profile, --model-profile
and the vLLM-style layout flags. `config_options` adds them to a command in one line."""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer

from ..core.config import ServingConfig
from ..core.flags import CONFIG_FLAGS, ConfigFlag, overrides_from_flags
from ..core.loader import resolve_config


@dataclass(frozen=True)
class ConfigSource:
    """Where a command's config comes from: profile < file < flags (precedence in core)."""

    profile: str | None = None
    model_profile: str | None = None
    flags: dict[str, Any] = field(default_factory=dict)  # dotted path -> value

    def resolve(
        self, path: Path | None = None, default_profile: str | None = None
    ) -> ServingConfig:
        """The config; `default_profile` applies only when nothing at all was given."""
        names = {f.path: f.name for f in CONFIG_FLAGS}
        flag_names = {path: names[path] for path, v in self.flags.items() if v is not None}
        return resolve_config(path, self.profile, overrides_from_flags(self.flags),
                              self.model_profile, flag_names, default_profile)


def _flag_param(flag: ConfigFlag) -> inspect.Parameter:
    names = [flag.name] + ([flag.short] if flag.short else [])
    if flag.value_type is bool:
        # vLLM's store-true spelling; None (not given) leaves the file's value alone.
        option = typer.Option(None, flag.name, help=flag.help,
                              rich_help_panel="Layout flags (vLLM names)", show_default=False)
        return inspect.Parameter(_param_name(flag), inspect.Parameter.KEYWORD_ONLY,
                                 default=option, annotation=bool | None)
    # Plain parentheses: square brackets would be read as rich markup and vanish.
    help_text = flag.help + (f" (one of: {', '.join(flag.choices)})" if flag.choices else "")
    option = typer.Option(None, *names, help=help_text, rich_help_panel="Layout flags (vLLM names)",
                          show_default=False)
    return inspect.Parameter(_param_name(flag), inspect.Parameter.KEYWORD_ONLY,
                             default=option, annotation=flag.value_type | None)


def _param_name(flag: ConfigFlag) -> str:
    return "flag_" + flag.path.replace(".", "__")


_SOURCE_PARAMS = [
    inspect.Parameter("profile", inspect.Parameter.KEYWORD_ONLY, annotation=str | None,
                      default=typer.Option(None, "--profile", help="A shipped profile "
                                           "(see `pypto profiles`); a config file overrides it.")),
    inspect.Parameter("model_profile", inspect.Parameter.KEYWORD_ONLY, annotation=str | None,
                      default=typer.Option(None, "--model-profile", help="A shipped model shape "
                                           "(see `pypto profiles`); replaces the model section.")),
]


def config_options(
    func: Callable | None = None, *, flags: tuple[ConfigFlag, ...] = CONFIG_FLAGS,
    with_profile: bool = True,
) -> Callable:
    """Give `func` the shared config options; it receives them as `source: ConfigSource`.

    `flags` picks which layout flags to add and `with_profile=False` leaves --profile out,
    for commands (launch) that own some of these names already.
    """
    if func is None:
        return functools.partial(config_options, flags=flags, with_profile=with_profile)
    sig = inspect.signature(func)
    hints = typing.get_type_hints(func, include_extras=True)  # resolve string annotations
    own = [p.replace(annotation=hints.get(name, p.annotation))
           for name, p in sig.parameters.items() if name != "source"]
    source_params = _SOURCE_PARAMS if with_profile else _SOURCE_PARAMS[1:]

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        values = {f.path: kwargs.pop(_param_name(f)) for f in flags}
        profile = kwargs.pop("profile") if with_profile else None
        source = ConfigSource(profile, kwargs.pop("model_profile"), values)
        return func(*args, source=source, **kwargs)

    params = own + source_params + [_flag_param(f) for f in flags]
    positional = [p for p in params if p.kind != inspect.Parameter.KEYWORD_ONLY]
    keyword = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in params
               if p.kind == inspect.Parameter.KEYWORD_ONLY]
    wrapper.__signature__ = sig.replace(parameters=positional + keyword)
    wrapper.__annotations__ = {p.name: p.annotation for p in positional + keyword}
    del wrapper.__wrapped__  # typer must see the new signature, not the wrapped one
    return wrapper
