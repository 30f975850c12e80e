"""Load an experiment YAML, apply ``--set`` overrides, validate, flatten for MLflow params."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from biomarkers._errors import ConfigError
from biomarkers.config._schema import ExperimentConfig


def _format_validation(err: ValidationError, source: str) -> str:
    parts = []
    for e in err.errors()[:3]:
        loc = ".".join(str(x) for x in e["loc"] if not str(x).startswith("function-"))
        if e["type"] == "extra_forbidden":
            parts.append(f"unknown key '{loc}'")
        else:
            parts.append(f"'{loc}': {e['msg']} (got {e.get('input')!r})")
    more = f" (+{err.error_count() - 3} more)" if err.error_count() > 3 else ""
    return f"Invalid config {source}: {'; '.join(parts)}{more}. See experiments/_template.yaml for the keys and types."


def _parse_value(raw: str) -> Any:
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def _merge(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        return {**base, **{k: _merge(base.get(k), v) for k, v in over.items()}}
    return copy.deepcopy(over)


def apply_overrides(config: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides to a (resolved) config dict; returns a new dict.

    A key must already exist, so a typo fails instead of being ignored;
    only free-form mappings (``params``, ``obs_map``, ``label_map``, ``signatures``) take new keys.
    List items are addressed by index (``models.0.params.C=0.5``).
    """
    merged = copy.deepcopy(config)
    for item in overrides:
        if "=" not in item:
            msg = f"--set expects key=value, got {item!r}. Example: --set cv.n_splits=10"
            raise ConfigError(msg)
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node: Any = merged
        for i, part in enumerate(parts[:-1]):
            node = _child(node, part, key, free=_free_dict(parts[:i]))
            if node is None:
                msg = f"--set {key}: '{'.'.join(parts[: i + 1])}' is empty; set the whole value instead"
                raise ConfigError(msg)
        last = parts[-1]
        if isinstance(node, list):
            _child(node, last, key, free=False)
            node[int(last)] = _parse_value(value)
        else:
            _child(node, last, key, free=_free_dict(parts[:-1]))
            node[last] = _parse_value(value)
    return merged


def _child(node: Any, part: str, key: str, *, free: bool) -> Any:
    if isinstance(node, list):
        if not part.isdigit() or int(part) >= len(node):
            msg = f"--set {key}: '{part}' is not an index of a {len(node)}-item list"
            raise ConfigError(msg)
        return node[int(part)]
    if not isinstance(node, dict):
        msg = f"--set {key}: cannot set '{part}' inside a {type(node).__name__} value"
        raise ConfigError(msg)
    if part not in node:
        if not free:
            msg = f"--set {key}: no key '{part}' (have: {', '.join(sorted(node)) or 'none'}). Check the spelling."
            raise ConfigError(msg)
        node[part] = {}
    return node[part]


def _free_dict(path: list[str]) -> bool:
    # Free-form mappings whose keys the schema cannot know in advance.
    return bool(path) and path[-1] in {"params", "obs_map", "label_map", "signatures"}


def load_config(path: str | Path, *, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read, override and validate an experiment config.

    Parameters
    ----------
    path
        YAML file.
    overrides
        ``key=value`` strings (``--set`` on the CLI); values are parsed as YAML.

    Returns
    -------
    The validated :class:`ExperimentConfig`; relative paths are resolved against the config's folder.

    Examples
    --------
    >>> import biomarkers as bm
    >>> cfg = bm.load_config("experiments/anti_tnf_default.yaml", overrides=["cv.n_splits=3"])
    >>> cfg.cv.n_splits
    3
    """
    path = Path(path)
    if not path.is_file():
        msg = f"Config file not found: {path}. Pass a YAML file such as experiments/anti_tnf_default.yaml."
        raise ConfigError(msg)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        msg = f"Config {path} is not valid YAML{where}: {getattr(e, 'problem', e)}. Fix the syntax."
        raise ConfigError(msg) from None
    if not isinstance(raw, dict):
        msg = f"Config {path} must be a YAML mapping, found {type(raw).__name__}."
        raise ConfigError(msg)
    if overrides:
        # Override on the fully resolved config where it validates (so every schema key, e.g. each model's
        # `params`, exists); otherwise on the file merged over the schema defaults.
        try:
            base = ExperimentConfig.model_validate(raw).model_dump(mode="json")
        except ValidationError:
            base = _merge(ExperimentConfig(name="defaults").model_dump(mode="json"), raw)
        raw = apply_overrides(base, overrides)
    try:
        cfg = ExperimentConfig.model_validate(raw)
    except ValidationError as e:
        source = f"{path} (with --set {' '.join(overrides)})" if overrides else str(path)
        raise ConfigError(_format_validation(e, source)) from None
    base = path.resolve().parent
    if cfg.data.path is not None and not cfg.data.path.is_absolute():
        cfg.data.path = (base / cfg.data.path).resolve()
    if cfg.data.labels is not None and not cfg.data.labels.is_absolute():
        cfg.data.labels = (base / cfg.data.labels).resolve()
    if cfg.preprocess.annotation_map is not None and not cfg.preprocess.annotation_map.is_absolute():
        cfg.preprocess.annotation_map = (base / cfg.preprocess.annotation_map).resolve()
    cfg.signature_files = [p if p.is_absolute() else (base / p).resolve() for p in cfg.signature_files]
    return cfg


def flatten(d: Any, prefix: str = "") -> dict[str, str]:
    """Flatten nested dicts/lists to ``a.b.0.c`` keys (MLflow params)."""
    out: dict[str, str] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(d, list) and any(isinstance(v, (dict, list)) for v in d):
        for i, v in enumerate(d):
            out.update(flatten(v, f"{prefix}{i}."))
    else:
        out[prefix.rstrip(".")] = str(d)
    return out


def dump_config(cfg: ExperimentConfig) -> str:
    """Return the resolved config as YAML."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
