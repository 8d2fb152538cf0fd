"""Reading configs: files (JSON, YAML, TOML), shipped profiles, and layered overrides.

Precedence, defined here once for every command: built-in defaults < profile < config file
< flags. Every failure (missing file, bad syntax, unknown key, broken rule) becomes one
`ConfigError` that lists all problems, each naming its field.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from .config import ModelSpec, ServingConfig, model_shape_issues
from .config_files import ConfigFileError, parse_text, read_text
from .errors import ConfigError, ConfigIssue

FORMATS = {".json": "json", ".yaml": "yaml", ".yml": "yaml", ".toml": "toml"}


def read_mapping(path: str | Path) -> dict[str, Any]:
    """Parse a config file by its extension into a plain dict, or raise ConfigError.

    Bounded (core/config_files.py): a regular file of at most 4 MiB of UTF-8, no duplicate
    keys, at most 32 levels deep, YAML aliases expanding to at most 100,000 values.
    """
    path = Path(path)
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ConfigError(ConfigIssue(
            "", None, f"{path}: unknown config format {path.suffix or '(none)'!r}; "
            "use .json, .yaml, .yml or .toml"))
    try:
        data = parse_text(read_text(path), fmt)
    except ConfigFileError as e:
        raise ConfigError(ConfigIssue("", None, f"{path}: {e}")) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(ConfigIssue(
            "", None, f"{path}: the top level must be a mapping of sections "
            f"(parallel, model, cluster, serve), not {type(data).__name__}"))
    return data


def parse_config(data: Mapping[str, Any], source: str | None = None) -> ServingConfig:
    """Validate a plain mapping into a ServingConfig, raising ConfigError with every issue."""
    data, excess = _without_excess_unknown_keys(data)
    try:
        cfg = ServingConfig.model_validate(data)
    except ValidationError as e:
        issues = issues_from_validation(e, ServingConfig)
        raise ConfigError(issues + _shape_issues_beside(issues, data) + excess, source) from None
    if excess:  # not reached: the unknown keys kept for pydantic fail validation
        raise ConfigError(excess, source)
    return cfg


def _without_excess_unknown_keys(data: Any) -> tuple[Any, list[ConfigIssue]]:
    """`data` with unknown keys past the first MAX_EXPLAINED of each section taken out, and
    a plain issue for each of those: pydantic's own report of 200,000 unknown keys costs
    seconds and hundreds of MB."""
    if not isinstance(data, Mapping):
        return data, []
    excess: list[ConfigIssue] = []

    def trim(mapping: Mapping[Any, Any], known: Mapping[str, Any], prefix: str) -> Any:
        unknown = [key for key in mapping if key not in known]
        if len(unknown) <= MAX_EXPLAINED:
            return mapping
        dropped = unknown[MAX_EXPLAINED:]
        excess.extend(ConfigIssue(f"{prefix}{key}", mapping[key], "unknown key")
                      for key in dropped)
        gone = set(dropped)
        return {key: value for key, value in mapping.items() if key not in gone}

    out = trim(data, ServingConfig.model_fields, "")
    for section, field in ServingConfig.model_fields.items():
        inner = out.get(section)
        if isinstance(inner, Mapping):
            trimmed = trim(inner, field.annotation.model_fields, f"{section}.")
            if trimmed is not inner:
                out = {**out, section: trimmed}
    return out, excess


def _shape_issues_beside(issues: list[ConfigIssue], data: Mapping[str, Any]) -> list[ConfigIssue]:
    """The model-shape rules, when field errors elsewhere stopped the cross-field pass but the
    model section itself parses: so `hidden_size: 65` is reported beside a bad port."""
    if any(i.field.startswith("model.") or i.field == "model" for i in issues):
        return []
    try:
        spec = ModelSpec.model_validate(data.get("model", {}))
    except (ValidationError, AttributeError):
        return []
    return [i for i in model_shape_issues(spec) if i not in issues]


def load_config(path: str | Path) -> ServingConfig:
    """Load and validate one config file."""
    return parse_config(read_mapping(path), str(path))


MAX_EXPLAINED = 100
"""Issues explained in full (with suggestions); a report lists fewer (core.errors)."""


def issues_from_validation(err: ValidationError, root: type[BaseModel]) -> list[ConfigIssue]:
    """Turn pydantic's errors into ConfigIssues with dotted paths and a fix each."""
    issues: list[ConfigIssue] = []
    for n, e in enumerate(err.errors(include_url=False)):
        if n >= MAX_EXPLAINED:  # past what a report lists: counted, not explained
            issues.append(ConfigIssue(".".join(str(p) for p in e["loc"]), e.get("input"),
                                      "unknown key" if e["type"] == "extra_forbidden"
                                      else e["msg"]))
            continue
        loc = ".".join(str(p) for p in e["loc"])
        inner = (e.get("ctx") or {}).get("error")
        if isinstance(inner, ConfigError):
            for issue in inner.issues:
                field = f"{loc}.{issue.field}" if loc and issue.field else (issue.field or loc)
                related = tuple(f"{loc}.{r}" if loc else r for r in issue.related)
                issues.append(ConfigIssue(field, issue.value, issue.message, related))
            continue
        issues.append(ConfigIssue(loc, e.get("input"), _explain(e, root)))
    return issues


def _explain(e: dict, root: type[BaseModel]) -> str:
    kind, ctx = e["type"], e.get("ctx") or {}
    if kind == "extra_forbidden":
        parent = _model_at(root, e["loc"][:-1])
        known = list(parent.model_fields) if parent else []
        close = difflib.get_close_matches(str(e["loc"][-1]), known, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        return f"unknown key; {hint}known keys: {', '.join(known)}"
    if kind == "literal_error":
        return f"not a valid choice; use {ctx.get('expected', '')}"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        op = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=",
              "less_than": "<"}[kind]
        bound = next(iter(ctx.values()), "")
        return f"must be {op} {bound}"
    if kind in ("model_type", "dict_type"):
        return "must be a mapping (a section of keys)"
    if kind in ("int_type", "int_from_float"):
        return f"must be an integer, not {_json_type(e.get('input'))}"
    if kind == "value_error" and ctx.get("error") is not None:
        return str(ctx["error"])
    if kind == "bool_type":
        return f"must be true or false, not {_json_type(e.get('input'))}"
    return e["msg"][0].lower() + e["msg"][1:]


def _json_type(value: Any) -> str:
    names = {bool: "a boolean", str: "a string", float: "a number with a fraction",
             list: "a list", dict: "a mapping", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _model_at(root: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    model: Any = root
    for part in loc:
        field = model.model_fields.get(str(part)) if isinstance(model, type) else None
        if field is None:
            return None
        model = field.annotation
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


# --- shipped profiles ---------------------------------------------------------------------

def _profile_dir():
    return resources.files("pypto_serving.profiles")


def profile_names() -> list[str]:
    """Serving profiles shipped in profiles/*.yaml."""
    return sorted(p.name[:-5] for p in _profile_dir().iterdir() if p.name.endswith(".yaml"))


def model_profile_names() -> list[str]:
    """Model shapes shipped in profiles/models/*.yaml."""
    return sorted(p.name[:-5] for p in (_profile_dir() / "models").iterdir()
                  if p.name.endswith(".yaml"))


def _read_profile(name: str, models: bool) -> dict[str, Any]:
    names = model_profile_names() if models else profile_names()
    what = "model profile" if models else "profile"
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ConfigError(ConfigIssue(
            "", None, f"unknown {what} {name!r}; {hint}shipped: {', '.join(names)}"))
    folder = _profile_dir() / "models" if models else _profile_dir()
    with resources.as_file(folder / f"{name}.yaml") as path:
        return read_mapping(path)


def profile_data(name: str) -> dict[str, Any]:
    """The raw mapping of a shipped serving profile."""
    return _read_profile(name, models=False)


def model_profile(name: str) -> ModelSpec:
    data = _read_profile(name, models=True)
    try:
        spec = ModelSpec.model_validate(data)
    except ValidationError as e:
        raise ConfigError(issues_from_validation(e, ModelSpec), f"model profile {name}") from None
    issues = model_shape_issues(spec)
    if issues:
        raise ConfigError(issues, f"model profile {name}")
    return spec


def load_profile(name: str) -> ServingConfig:
    return parse_config(profile_data(name), f"profile {name}")


DEFAULT_PROFILE = "cpu-demo"


def resolve_config(
    path: str | Path | None = None,
    profile: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    model_profile_name: str | None = None,
    flag_names: Mapping[str, str] | None = None,
    default_profile: str | None = None,
) -> ServingConfig:
    """Layer defaults < profile < file < flags and validate the result once.

    `overrides` is a nested mapping of flag values ({'parallel': {'tensor_parallel_size': 4}});
    `model_profile_name` (a flag) replaces the model section with a shipped model shape.
    `flag_names` maps dotted paths to the flag that set them, so an error names the flag.
    `default_profile` is used only when no profile, file, model profile or flag was given:
    flags alone describe a layout on the built-in defaults, not on a profile.
    """
    if (profile is None and path is None and model_profile_name is None
            and not any(v is not None for v in _leaves(overrides or {}))):
        profile = default_profile
    data: dict[str, Any] = {}
    sources = []
    if profile is not None:
        data = _deep_merge(data, profile_data(profile))
        sources.append(f"profile {profile}")
    if path is not None:
        data = _deep_merge(data, read_mapping(path))
        sources.append(str(path))
    if model_profile_name is not None:
        data["model"] = model_profile(model_profile_name).model_dump()
        sources.append(f"model profile {model_profile_name}")
    if overrides:
        data = _deep_merge(data, overrides)
        sources.append("flags")
    try:
        return parse_config(data, " + ".join(sources) or None)
    except ConfigError as e:
        if not flag_names:
            raise
        raise ConfigError([_name_flags(i, flag_names) for i in e.issues], e.source) from None


def _name_flags(issue: ConfigIssue, flag_names: Mapping[str, str]) -> ConfigIssue:
    """Say which flags stand behind an issue: the one that set its field ("from --x"), and
    any that set another field the rule read ("with --y"), so a flag contradicting a file or
    profile is named even when the issue lands on the file's field."""
    own = flag_names.get(issue.field)
    others = [flag_names[f] for f in issue.related if f in flag_names and f != issue.field]
    parts = ([f"from {own}"] if own else []) + ([f"with {', '.join(others)}"] if others else [])
    if not parts:
        return issue
    return ConfigIssue(issue.field, issue.value, issue.message, issue.related, "; ".join(parts))


def _leaves(tree: Mapping[str, Any]) -> Iterator[Any]:
    for value in tree.values():
        if isinstance(value, Mapping):
            yield from _leaves(value)
        else:
            yield value


def _deep_merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out
