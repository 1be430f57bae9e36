"""The run configuration: pydantic models that refuse unknown keys, read from YAML or TOML.

Errors name the config key and how to fix it; :func:`load_config` turns pydantic's
report into one :class:`~kit.errors.ConfigError` line.
"""

from __future__ import annotations

import difflib
import json
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

from kit.errors import ConfigError, first_line, validation_message

__all__ = [
    "CheckpointConfig",
    "DataConfig",
    "KitConfig",
    "OptimizerConfig",
    "PluginConfig",
    "SchedulerConfig",
    "TargetConfig",
    "TaskConfig",
    "TrainingConfig",
    "apply_overrides",
    "load_config",
    "validate_config",
]


MAX_BATCH = 2**31 - 1
"""The largest batch size kit accepts; torch's samplers fail on sizes past ``sys.maxsize``."""
MAX_SEED = 2**63 - 1
"""Seeds are non-negative and fit torch's 64-bit generator with room for ``seed + epoch``."""
MAX_VALUES = 100_000
"""A config file holding more values than this (YAML aliases expand) is refused."""
NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$"
"""An experiment name is one path component: no separators, never ``.`` or ``..``, no
leading dot (it would hide from ``kit runs list``), at most 100 characters."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TargetConfig(_Model):
    """An import target ``package.module:factory``, resolved from the config file's folder."""

    target: str = Field(description="`package.module:callable`, importable from the config's folder")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword arguments for it")

    @field_validator("target")
    @classmethod
    def _has_colon(cls, value: str) -> str:
        module, sep, attr = value.partition(":")
        if not sep or not module or not attr:
            raise ValueError(f"{value!r} is not of the form `package.module:callable`")
        return value


class DataConfig(TargetConfig):
    """The data factory: returns datasets (kit builds the loaders) or ready loaders."""

    batch_size: int = Field(32, ge=1, le=MAX_BATCH)
    num_workers: int = Field(0, ge=0, le=1024)
    shuffle: bool = True
    pin_memory: bool | None = Field(None, description="default: on when training on CUDA")
    drop_last: bool = False


MetricEntry = str | dict[str, dict[str, Any]]


class TaskConfig(_Model):
    """How a batch becomes a loss, and predictions for the metrics (:mod:`kit.tasks`)."""

    name: str = Field("classification", description="an entry point in kit.tasks (classification, "
                      "regression, model_loss) or an import target")
    options: dict[str, Any] = Field(default_factory=dict, description="the task's own options")
    loss: str | None = Field(None, description="torch.nn.functional name or import target; default: the "
                             "task's (classification: cross_entropy, regression: mse_loss)")
    metrics: list[MetricEntry] | None = Field(
        None, description="torchmetrics by short name (accuracy, f1, r2, …) or import target, each "
        "alone or as {name: {kwargs}}; default: the task's (classification: [accuracy])")

    @field_validator("metrics")
    @classmethod
    def _one_name_each(cls, value: list[MetricEntry] | None) -> list[MetricEntry] | None:
        for entry in value or ():
            if isinstance(entry, dict) and len(entry) != 1:
                raise ValueError("a metric given with options is one {name: {kwargs}} mapping")
        return value


class OptimizerConfig(_Model):
    name: str = Field("adam", description="torch.optim class (any case) or import target")
    lr: float = Field(1e-3, gt=0)
    kwargs: dict[str, Any] = Field(default_factory=dict)


class SchedulerConfig(_Model):
    name: str = Field(description="torch.optim.lr_scheduler class or import target")
    interval: Literal["iteration", "step"] = Field(
        "iteration", description="step the scheduler after every iteration or optimizer step"
    )
    kwargs: dict[str, Any] = Field(default_factory=dict)


Precision = Literal["32", "bf16", "16"]


class TrainingConfig(_Model):
    """The loop. An iteration is an epoch (``type: epoch``) or an optimizer step (``step``)."""

    type: Literal["epoch", "step"] = "epoch"
    iterations: int = Field(10, ge=1)
    eval_frequency: int = Field(1, ge=1, description="validate every N iterations (and at the end)")
    save_frequency: int = Field(1, ge=1, description="checkpoint every N iterations (and at the end)")
    inference_batch_size: int | None = Field(None, ge=1, le=MAX_BATCH,
                                             description="default: data.batch_size")
    grad_accum: int = Field(1, ge=1, le=1_000_000)
    clip_grad_norm: float | None = Field(None, gt=0)
    precision: Precision = Field("32", description="32, bf16 (autocast), 16 (autocast + scaler, CUDA)")
    compile: bool = False
    seed: int = Field(0, ge=0, le=MAX_SEED, description="seeds python, numpy and torch")
    deterministic: bool = False
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N or mps")
    log_every_n_steps: int = Field(50, ge=1)

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_aliases(cls, value: Any) -> Any:
        aliases = {32: "32", 16: "16", "32-true": "32", "bf16-mixed": "bf16", "16-mixed": "16"}
        return aliases.get(value, value)


class CheckpointConfig(_Model):
    """When checkpoints are written and which survive; one is always written at the end."""

    format: str = Field("torch", description="an entry point in kit.checkpoint_formats")
    keep_last: int = Field(2, ge=1, description="keep the newest N checkpoints")
    keep_best: int = Field(1, ge=0, description="also keep the best K by `monitor`")
    monitor: str | None = Field(None, description="a recorded metric to rank by, e.g. val/loss")
    mode: Literal["min", "max"] = Field("min", description="whether a lower or higher monitor is better")
    every_n_steps: int | None = Field(None, ge=1, description="also save every N optimizer steps")
    every_n_seconds: float | None = Field(None, gt=0, description="also save every N seconds")


class PluginConfig(_Model):
    """A logger or plugin by name, with its own options (validated by the plugin)."""

    name: str
    options: dict[str, Any] = Field(default_factory=dict)
    strict: bool = Field(False, description="loggers: a failure ends the run instead of disabling it")


class BackendConfig(_Model):
    """The backend by name, with its own options (validated by the backend's ``Options``)."""

    name: str = "torch"
    options: dict[str, Any] = Field(default_factory=dict)

    @model_serializer(mode="plain")
    def _short(self) -> Any:
        """``torch``, or ``{ddp: {timeout_s: 60}}``: the way it is written in a config."""
        return {self.name: dict(self.options)} if self.options else self.name


def _named(value: Any) -> Any:
    """Accept ``name``, ``{name: {…options, strict?}}`` or ``{name: …, options: {…}}``."""
    if isinstance(value, str):
        return {"name": value}
    if isinstance(value, dict) and len(value) == 1 and "name" not in value:
        ((name, options),) = value.items()
        options = dict(options or {}) if isinstance(options, dict) else options
        strict = options.pop("strict", False) if isinstance(options, dict) else False
        return {"name": name, "options": options, "strict": strict}
    return value


class KitConfig(_Model):
    """Everything a run needs; ``kit config schema`` prints it as JSON schema."""

    experiment: str = Field(
        "default", json_schema_extra={"pattern": NAME_PATTERN},
        description="a folder name under runs_dir: letters, digits, _ . -; at most 100 characters")
    runs_dir: Path = Field(Path("runs"), description="relative paths resolve from the working directory")
    model: TargetConfig | None = Field(
        None, validate_default=True,
        description="the model factory; required, except in an embedding kit.Session")
    data: DataConfig | None = Field(
        None, validate_default=True,
        description="the data factory; required, except in an embedding kit.Session")
    task: TaskConfig = Field(default_factory=TaskConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig | None = None
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    backend: BackendConfig = Field(
        default_factory=BackendConfig,
        description="an entry point in kit.backends: torch, ddp, or {ddp: {options}}")
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    loggers: list[PluginConfig] = Field(
        default_factory=lambda: [PluginConfig(name="console"), PluginConfig(name="jsonl")]
    )
    plugins: list[PluginConfig] = Field(default_factory=list)
    base_dir: Path | None = Field(
        None, exclude=True, description="set by kit: the config file's folder, for targets"
    )

    @field_validator("experiment")
    @classmethod
    def _one_folder_name(cls, value: str) -> str:
        if not re.fullmatch(NAME_PATTERN, value):
            raise ValueError(
                f"{value[:40] + '…' if len(value) > 40 else value!r} is not a folder name: use letters, "
                "digits, '_', '.' and '-', not starting with '.' or '-', at most 100 characters")
        return value

    @field_validator("model", "data")
    @classmethod
    def _required_to_train(cls, value: Any, info: ValidationInfo) -> Any:
        """A run needs both; only a :class:`kit.Session` (someone else's loop) validates with
        ``context={"embedded": True}`` and has neither."""
        if value is None and not (info.context or {}).get("embedded"):
            raise PydanticCustomError("missing", "Field required")
        return value

    @field_validator("runs_dir")
    @classmethod
    def _no_nul(cls, value: Path) -> Path:
        if "\x00" in str(value):
            raise ValueError("a path cannot contain a NUL byte")
        return value

    @field_validator("loggers", "plugins", mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        return [_named(v) for v in value] if isinstance(value, list) else value

    @field_validator("backend", mode="before")
    @classmethod
    def _backend_named(cls, value: Any) -> Any:
        if isinstance(value, dict) and len(value) == 1 and "name" not in value:
            ((name, options),) = value.items()
            return {"name": name, "options": options if options is not None else {}}
        return {"name": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _unique_names(self) -> KitConfig:
        for key in ("loggers", "plugins"):
            names = [p.name for p in getattr(self, key)]
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"{key}: {', '.join(dupes)} listed twice")
        return self

    def resolved(self) -> dict[str, Any]:
        """The config as plain data, ready for YAML/JSON (what the run directory stores)."""
        return json.loads(self.model_dump_json())  # type: ignore[no-any-return]


# -- reading -----------------------------------------------------------------------


def _read(path: Path) -> dict[str, Any]:
    if path.is_dir():
        raise ConfigError(f"{str(path)!r} is a directory, not a config file",
                          hint="pass a .yaml, .yml or .toml file")
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} not found", hint="check the path")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset "
                          f"{exc.start})", hint="save the file as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        if path.suffix == ".toml":
            if sys.version_info >= (3, 11):
                import tomllib
            else:
                import tomli as tomllib
            data: Any = tomllib.loads(text)
        else:
            data = _yaml_load(text)
    except Exception as exc:  # yaml and toml raise their own trees
        mark = getattr(exc, "problem_mark", None)
        detail = getattr(exc, "problem", None) or first_line(exc)
        where = f", line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"cannot parse {path}{where}: {detail}", hint="fix the file's syntax") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping at the top, not {type(data).__name__}")
    _check_size(data, path)
    return data


def _yaml_load(text: str) -> Any:
    """``yaml.safe_load``, refusing a key given twice in one mapping (YAML keeps the last
    silently: a second ``training:`` block would drop the first)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
        seen: set[str] = set()
        for key_node, _ in node.value:  # the keys written here; `<<` merges may be overridden
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                if key_node.value in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key_node.value!r}", key_node.start_mark)
                seen.add(key_node.value)
        loader.flatten_mapping(node)
        return dict(loader.construct_pairs(node, deep=True))

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    return yaml.load(text, Loader=Loader)  # a SafeLoader: plain data only




def _check_size(data: Any, source: Path | str) -> None:
    """Refuse configs that reference themselves, expand past :data:`MAX_VALUES` values, or
    hold values that are not plain data.

    YAML aliases share one object between places, so a few lines can stand for billions
    of values (a "billion laughs"); validating or printing them would never end. Sizes
    are counted once per shared object, so this costs one pass over the file's values.
    Values must be what a config can save and compare: no bytes (``!!binary``), sets or
    strings that are not valid text (lone surrogates); dates are allowed.
    """
    sizes: dict[int, int] = {}
    open_: set[int] = set()

    def size(node: Any) -> int:
        if not isinstance(node, dict | list):
            _check_plain(node, source)
            return 1
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_:
            raise ConfigError(f"{source} refers to itself (a YAML alias inside its own anchor)",
                              hint="replace the alias with the values it stands for")
        open_.add(key)
        children = node.values() if isinstance(node, dict) else node
        total = 1
        for child in children:
            total += size(child)
            if total > MAX_VALUES:
                raise ConfigError(f"{source} expands to more than {MAX_VALUES:,} values "
                                  "(YAML aliases repeated inside each other?)",
                                  hint="a config should be small: load large data from its factory")
        open_.discard(key)
        sizes[key] = total
        return total

    try:
        size(data)
    except RecursionError:
        raise ConfigError(f"{source} is nested too deeply", hint="flatten it") from None


def _check_plain(value: Any, source: Path | str) -> None:
    import datetime

    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ConfigError(f"{source} holds a string that is not valid text ({value[:20]!r})",
                              hint="remove the lone surrogate escape") from None
    elif not isinstance(value, str | int | float | bool | None | datetime.date):
        raise ConfigError(f"{source} holds a {type(value).__name__}, which a config cannot hold",
                          hint="use strings, numbers, booleans, lists and mappings") from None


def _parse_value(raw: str) -> Any:
    """``--set`` values are YAML scalars: ``3`` is an int, ``true`` a bool, ``[a, b]`` a list."""
    import yaml

    try:
        value = _yaml_load(raw)
    except yaml.YAMLError:
        return raw
    _check_size(value, f"--set {raw[:40]!r}")
    return value


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` strings to a raw config mapping (in place; also returned)."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r} is not KEY=VALUE", hint="e.g. --set training.iterations=5")
        parts = key.strip().split(".")
        node: Any = data
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part) if isinstance(node, dict) else None
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                raise ConfigError(f"cannot set {key}: {where} is not a mapping", key=where)
            node = child
        node[parts[-1]] = _parse_value(raw)
    return data


def _explain(exc: ValidationError, data: Mapping[str, Any], source: str) -> ConfigError:
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"] if not str(p).startswith("function-")]
    key = ".".join(loc) or "(top level)"
    if err["type"] == "extra_forbidden":
        known = _known_keys(loc[:-1])
        close = difflib.get_close_matches(loc[-1], known, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(known)}"
        return ConfigError(f"unknown key in {source}", key=key, hint=hint)
    if err["type"] == "missing":
        return ConfigError(f"required key missing in {source}", key=key, hint="add it")
    more = len(exc.errors()) - 1
    tail = f"; {more} more error{'s' * (more > 1)}" if more else ""
    return ConfigError(
        f"{validation_message(err)}{tail}",
        key=key,
        hint=f"fix it in {source} or with --set {key}=VALUE",
    )


def _known_keys(loc: list[str]) -> list[str]:
    model: Any = KitConfig
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        annotation = field.annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is None:
            return []
    return sorted(name for name, field in model.model_fields.items() if not field.exclude)


def validate_config(data: Mapping[str, Any], *, source: str = "config", embedded: bool = False) -> KitConfig:
    """Validate raw data, turning pydantic's report into one clear :class:`ConfigError`;
    ``embedded``: for a :class:`kit.Session`, which needs no model or data."""
    try:
        return KitConfig.model_validate(dict(data), context={"embedded": embedded})
    except ValidationError as exc:
        raise _explain(exc, data, source) from None


def load_config(path: str | Path, overrides: Iterable[str] = ()) -> KitConfig:
    """Read ``path`` (YAML or TOML), apply ``--set`` overrides, validate, and resolve paths."""
    path = Path(path)
    data = apply_overrides(_read(path), overrides)
    data.pop("base_dir", None)
    config = validate_config(data, source=path.name)
    config.base_dir = path.resolve().parent
    return config
