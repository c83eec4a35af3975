"""Experiment configs: YAML files -> one validated, frozen ``ExperimentConfig``.

Resolution: ``NAME`` -> ``configs/NAME.yaml`` in the current project, then the configs that
ship with hpcrun; a path works too. A file may ``extends:`` another. ``--set a.b=value``
overrides any key (the value is parsed as YAML and typed by the schema). ``${VAR}`` and
``${VAR:-default}`` interpolate environment variables in string values.

Every error names the file (or ``--set``) that supplied the key, the dotted key path, the
bad value and what is allowed, with a did-you-mean for misspelt keys and choices.

One module on purpose (about 1,400 lines, most of them field declarations): the schema, its
loader and its error messages are one contract, and a key's type, default, check and message
stay next to each other.
"""

from __future__ import annotations

import copy
import difflib
import functools
import os
import posixpath
import re
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from . import formats
from .errors import ConfigError
from .resources import configs_dir
from .rundir import METRICS

_T = TypeVar("_T")

# --------------------------------------------------------------------------- schema

RUN_MODES = ("full_pipeline", "train_only", "eval_only")
SPLITS = ("train", "val", "test")
#: the C implementation of the safe loader where available (5-10x faster), else PyYAML's
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
#: and of the safe dumper (the same text as PyYAML's own, a third of the time: a run's
#: config.yaml is written once per job, a sweep's points included)
_SAFE_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)

#: Caps that keep hostile YAML (huge files, alias bombs, deep nesting) from eating the machine.
MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_NODES = 50_000
MAX_CONFIG_DEPTH = 40
#: how many configs one ``extends:`` chain may hold (each file is capped on its own, and the
#: merged whole is held to the same caps)
MAX_EXTENDS_CHAIN = 16


_CONTROL_RE = formats.CONTROL
#: one line: control characters (newlines, terminal escapes) from keys, values and file
#: names are shown escaped
_printable = formats.escape_controls


def _one_line_errors(function: typing.Callable[..., _T]) -> typing.Callable[..., _T]:
    """A ``ConfigError`` raised inside ``function`` leaves with a one-line message."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> _T:
        try:
            return function(*args, **kwargs)
        except ConfigError as exc:
            exc.message = _printable(exc.message)
            exc.hint = _printable(exc.hint) if exc.hint else exc.hint
            exc.args = (exc.message,)
            raise

    return wrapper


#: The schemas below are built with pydantic's plugins off (as Typer builds its own): looking
#: plugins up imports importlib.metadata and reads every installed distribution's entry points,
#: a fixed ~25 ms of every command's start, for hooks meant for an application's own models.
#: The setting is put back once the last schema is built (end of ``RemoteConfig``).
_PLUGINS_SETTING = os.environ.get("PYDANTIC_DISABLE_PLUGINS")
os.environ["PYDANTIC_DISABLE_PLUGINS"] = "1"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_name(value: str, what: str) -> str:
    return formats.NAME.check(value, what)


#: the data keys only one source reads (config show and config.yaml leave out the other's)
SYNTHETIC_KEYS = frozenset({"rows", "features", "informative", "positive_rate", "noise",
                            "val_fraction", "test_fraction"})
FILES_KEYS = frozenset({"path", "format", "label_column", "feature_columns", "split_column",
                        "missing"})


class DataConfig(_Section):
    source: Literal["synthetic", "files"] = "synthetic"
    # synthetic generator
    rows: int = Field(6000, ge=10)
    features: int = Field(32, ge=1)
    informative: int = Field(8, ge=1)
    positive_rate: float = Field(0.3, gt=0, lt=1)
    noise: float = Field(0.5, ge=0)
    val_fraction: float = Field(0.15, gt=0, lt=1)
    test_fraction: float = Field(0.15, gt=0, lt=1)
    # files
    path: str | None = None
    format: Literal["auto", "csv", "parquet"] = "auto"
    label_column: str = "label"
    feature_columns: list[str] | None = None
    split_column: str | None = "split"
    missing: Literal["mean", "zero", "drop", "error"] = "mean"
    standardize: bool = True

    @model_validator(mode="after")
    def _consistent(self) -> DataConfig:
        if self.source == "files" and not self.path:
            raise ValueError("data.source 'files' needs data.path (a directory or a file)")
        if self.informative > self.features:
            raise ValueError(
                f"data.informative ({self.informative}) cannot exceed data.features "
                f"({self.features})"
            )
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError("data.val_fraction + data.test_fraction must leave >10% for training")
        return self


class ModelConfig(_Section):
    name: str = "mlp"
    hidden: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [128, 64])
    dropout: float = Field(0.1, ge=0, lt=1)
    activation: Literal["relu", "gelu", "tanh", "silu"] = "relu"
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _known_model(cls, value: str) -> str:
        if value == "mlp" or formats.FACTORY.matches(value):
            return value
        raise ValueError(f"unknown model {value!r}: use 'mlp' or 'package.module:factory'")


class SchedulerConfig(_Section):
    type: Literal["none", "cosine", "step", "plateau"] = "cosine"
    warmup_epochs: int = Field(0, ge=0)
    step_size: int = Field(10, ge=1)
    gamma: float = Field(0.1, gt=0, le=1)
    patience: int = Field(3, ge=0)
    min_lr: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _consistent(self) -> SchedulerConfig:
        if self.type == "plateau" and self.warmup_epochs:
            raise ValueError("scheduler 'plateau' cannot be combined with warmup_epochs")
        return self


class EarlyStoppingConfig(_Section):
    enabled: bool = False
    metric: str = "val_loss"
    mode: Literal["auto", "min", "max"] = "auto"
    patience: int = Field(5, ge=1)
    min_delta: float = Field(0.0, ge=0)

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        allowed = ["val_loss", *(f"val_{m}" for m in METRICS)]
        if value not in allowed:
            raise ValueError(f"unknown metric {value!r}; allowed: {', '.join(allowed)}")
        return value

    @property
    def resolved_mode(self) -> str:
        if self.mode != "auto":
            return self.mode
        return "min" if self.metric == "val_loss" else "max"


class LossConfig(_Section):
    type: Literal["bce", "focal"] = "bce"
    pos_weight: float | None = Field(None, gt=0)
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)
    focal_gamma: float = Field(2.0, ge=0)
    focal_alpha: float | None = Field(0.25, gt=0, lt=1)
    #: named loss terms and their weights; a term with weight 0 is not computed.
    #: Built in: classification, reconstruction; a model may add its own (see docs/models.md).
    components: dict[str, Annotated[float, Field(ge=0)]] = Field(
        default_factory=lambda: {"classification": 1.0}
    )
    #: learn one log-variance per component (Kendall et al. 2018) instead of fixed weights
    learned_weights: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> LossConfig:
        if not any(w > 0 for w in self.components.values()):
            raise ValueError("training.loss.components needs at least one weight > 0")
        for name in self.components:
            _check_name(name, "loss component")
        return self


class LoggingConfig(_Section):
    validation_metrics: list[Literal[METRICS]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: ["auroc", "auprc", "accuracy", "f1"]
    )
    #: gradient statistics, probability separation on train batches, loss components,
    #: memory; turning it off keeps training and validation only
    diagnostics: bool = True
    per_layer_gradients: bool = True


class TrainingConfig(_Section):
    epochs: int = Field(10, ge=1)
    #: global batch: samples per optimizer step summed over all ranks and micro-steps
    batch_size: int = Field(256, ge=1)
    optimizer: Literal["adam", "adamw", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    scheduler: SchedulerConfig = SchedulerConfig()
    grad_clip: float | None = Field(1.0, ge=0)
    grad_accum_steps: int = Field(1, ge=1)
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    #: also keep checkpoints/epoch_NNNN.pt every N epochs (0: never)
    checkpoint_every: int = Field(0, ge=0)
    threshold: float = Field(0.5, gt=0, lt=1)
    deterministic: bool = False
    #: DDP's find_unused_parameters: for models that leave parameters out depending on the data
    find_unused_parameters: bool = False
    loss: LossConfig = LossConfig()
    logging: LoggingConfig = LoggingConfig()

    @model_validator(mode="after")
    def _consistent(self) -> TrainingConfig:
        if self.batch_size % self.grad_accum_steps:
            raise ValueError(
                f"training.batch_size ({self.batch_size}) must be divisible by "
                f"training.grad_accum_steps ({self.grad_accum_steps})"
            )
        return self


#: ``{params.lr}``, ``{stages.pretrain.dir}``, ``{run_dir}`` in a ``run.args`` entry; ``{{`` and
#: ``}}`` are literal braces
_PLACEHOLDER_RE = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")
#: which process starts the program on each node
LAUNCHERS = ("torchrun", "python")


def _arg_text(value: Any) -> Any:
    """YAML gives ``args: [--epochs, 3]`` a number: arguments are text."""
    if isinstance(value, list):
        return [_param_text(v) if isinstance(v, (int, float, bool)) else v for v in value]
    return value


def _param_text(value: Any) -> str:
    """A param as it reaches a command line: text as it is, anything else as JSON (``true``,
    ``0.001``, ``[1, 2]``)."""
    import json

    return value if isinstance(value, str) else json.dumps(value)


class RunConfig(_Section):
    """Your own program as the job: a script, a module or a command, and its arguments."""

    #: a Python file inside the project (relative to its root)
    script: str | None = None
    #: a module run with ``python -m`` (from the project or an installed package)
    module: str | None = None
    #: any command; its first word is looked up on the PATH where the job runs
    command: list[str] | None = None
    args: list[str] = Field(default_factory=list)
    launcher: Literal["torchrun", "python"] = "torchrun"

    @field_validator("args", "command", mode="before")
    @classmethod
    def _texts(cls, value: Any) -> Any:
        return _arg_text(value)

    @field_validator("script")
    @classmethod
    def _script_path(cls, value: str | None) -> str | None:
        if value is None:
            return value
        _plain_path(value)
        if not value.endswith(".py"):
            raise ValueError(f"script {value!r} must be a Python file (.py); run anything "
                             "else as command: [...]")
        return value

    @field_validator("module")
    @classmethod
    def _module_name(cls, value: str | None) -> str | None:
        if value is not None and not formats.MODULE.matches(value):
            raise ValueError(f"module {value!r} must be a dotted Python module name "
                             "(e.g. mypkg.train)")
        return value

    @field_validator("command")
    @classmethod
    def _command_words(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and (not value or not value[0]):
            raise ValueError("command must name a program: command: [python, -u, train.py]")
        return value

    @model_validator(mode="after")
    def _one_program(self) -> RunConfig:
        given = [k for k in ("script", "module", "command") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"run names both {given[0]} and {given[1]}; give one of script, "
                             "module or command")
        if not given:
            raise ValueError("run needs one of script, module or command")
        return self

    @property
    def program(self) -> str:
        """What runs, in one word for messages."""
        return self.script or self.module or " ".join(self.command or [])


class StageRunConfig(_Section):
    """A stage's changes to the experiment's ``run:`` (e.g. its own ``args``)."""

    script: str | None = None
    module: str | None = None
    command: list[str] | None = None
    args: list[str] | None = None
    launcher: Literal["torchrun", "python"] | None = None

    @field_validator("args", "command", mode="before")
    @classmethod
    def _texts(cls, value: Any) -> Any:
        return _arg_text(value)


def fill_args(args: typing.Sequence[str], params: typing.Mapping[str, Any],
              stage_dirs: typing.Mapping[str, str], run_dir: str) -> list[str]:
    """``args`` with their placeholders filled in: ``{params.NAME}``, ``{stages.NAME.dir}``
    (that stage's directory of this run) and ``{run_dir}`` (this stage's directory). Raises
    ``ValueError`` naming a placeholder that names nothing."""
    def one(text: str) -> str:
        def replace(match: re.Match[str]) -> str:
            whole = match.group(0)
            if whole in ("{{", "}}"):
                return whole[0]
            parts = match.group(1).strip().split(".")
            if parts[0] == "params" and len(parts) == 2:
                if parts[1] not in params:
                    known = ", ".join(sorted(params)) or "none"
                    raise ValueError(f"{whole} names no param (params: {known})")
                return _param_text(params[parts[1]])
            if parts[0] == "stages" and len(parts) == 3 and parts[2] == "dir":
                if parts[1] not in stage_dirs:
                    raise ValueError(f"{whole} names no stage of the pipeline "
                                     f"({', '.join(stage_dirs)})")
                return stage_dirs[parts[1]]
            if parts == ["run_dir"]:
                return run_dir
            raise ValueError(f"{whole} is not a placeholder (use {{params.NAME}}, "
                             "{stages.NAME.dir} or {run_dir}; {{ and }} for braces)")
        return _PLACEHOLDER_RE.sub(replace, text)

    return [one(arg) for arg in args]


class StageConfig(_Section):
    name: str
    mode: str = "full_pipeline"
    #: an earlier stage's name (its checkpoint initialises this one) or a path to a .pt file
    init_from: str | None = None
    init_checkpoint: Literal["best", "last"] = "best"
    #: splits evaluated at the end of the stage (default: val for train_only, val+test for
    #: full_pipeline, test for eval_only)
    eval_splits: list[Literal[SPLITS]] | None = None  # type: ignore[valid-type]
    #: deep-merged over the experiment for this stage only (data, model, training, ...)
    overrides: dict[str, Any] = Field(default_factory=dict)
    #: changes to the experiment's ``run:`` for this stage only (e.g. its own ``args``)
    run: StageRunConfig | None = None

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        from .rundir import RESERVED_STAGE_NAMES

        if value.lower() in RESERVED_STAGE_NAMES:
            raise ValueError(f"stage name {value!r} is reserved: the run directory uses "
                             f"{', '.join(RESERVED_STAGE_NAMES)} itself")
        return formats.STAGE.check(value, "stage name")

    @field_validator("mode")
    @classmethod
    def _supported_mode(cls, value: str) -> str:
        if value not in RUN_MODES:
            raise ValueError(f"Unsupported run mode: {value} (use one of {', '.join(RUN_MODES)})")
        return value

    @property
    def splits(self) -> list[str]:
        if self.eval_splits:
            return list(self.eval_splits)
        return {"train_only": ["val"], "full_pipeline": ["val", "test"], "eval_only": ["test"]}[
            self.mode
        ]


def _default_pipeline() -> list[StageConfig]:
    return [StageConfig(name="train", mode="full_pipeline")]




class DistributedConfig(_Section):
    enabled: Literal["auto", True, False] = "auto"
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    nproc_per_node: Literal["auto"] | Annotated[int, Field(ge=1)] = "auto"
    rdzv_timeout: int = Field(900, ge=1)
    #: collective timeout: a rank whose peer disappears gives up after this long
    timeout_s: int = Field(120, ge=5)

    @model_validator(mode="before")
    @classmethod
    def _drop_nnodes(cls, data: Any) -> Any:
        # earlier versions had a `nnodes` that nothing read, and wrote it into every run's
        # config.yaml: those still load (the number of nodes is resources.nodes)
        if isinstance(data, dict) and "nnodes" in data:
            data = {k: v for k, v in data.items() if k != "nnodes"}
        return data

    @field_validator("enabled", mode="before")
    @classmethod
    def _bool_words(cls, value: Any) -> Any:
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        return value


def _plain_path(value: str) -> str:
    """A directory hpcrun writes into job scripts, scheduler options, log lines and one-line
    messages: control characters in it would only garble them."""
    if not value or _CONTROL_RE.search(value):
        raise ValueError("must be a path without control characters (newlines, carriage "
                         "returns, escapes)")
    return value


def _one_shell_line(value: str) -> str:
    if "\n" in value or "\r" in value:
        raise ValueError("each setup entry must be one shell line")
    return value


#: a line of shell run before the launcher (module load, environment activation)
ShellLine = Annotated[str, AfterValidator(_one_shell_line)]


class SchedulerExtras(_Section):
    #: extra scheduler options, one per line as on an #SBATCH/#PBS line: "--exclusive"
    directives: list[str] = Field(default_factory=list)
    setup: list[ShellLine] = Field(default_factory=list)

    @field_validator("directives")
    @classmethod
    def _one_line_options(cls, value: list[str]) -> list[str]:
        for line in value:
            formats.DIRECTIVE.check(line, "directive")
        return value


class SlurmExtras(SchedulerExtras):
    #: the cluster's MaxArraySize (slurm.conf; SLURM's default 1001): array task indices stay
    #: below it, so a larger sweep is queued as several arrays
    max_array_size: int = Field(1001, ge=2, le=4_000_001)


class PbsExtras(SchedulerExtras):
    #: the server's max_array_size (``qstat -Bf``; PBS Professional's default 10000): a
    #: larger sweep is queued as several arrays of at most this many subjobs (at least 3:
    #: the points are spread so that every array has the two subjobs PBS requires)
    max_array_size: int = Field(10000, ge=3, le=4_000_001)


class ResourcesConfig(_Section):
    nodes: int = Field(1, ge=1)
    gpus_per_node: int = Field(0, ge=0)
    cpus_per_task: int | None = Field(None, ge=1)
    mem: str | None = None
    time: str | None = None
    partition: str | None = None
    queue: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    #: seconds before the time limit SLURM warns the job (USR1: checkpoint and requeue);
    #: 0: no warning, the time limit ends the job (TIMEOUT)
    signal_grace_s: int = Field(120, ge=0, le=65535)
    setup: list[ShellLine] = Field(default_factory=list)
    slurm: SlurmExtras = SlurmExtras()
    pbs: PbsExtras = PbsExtras()

    @field_validator("mem")
    @classmethod
    def _mem(cls, value: str | None) -> str | None:
        return None if value is None else formats.MEMORY.check(value, "memory")

    @field_validator("time")
    @classmethod
    def _time(cls, value: str | None) -> str | None:
        return None if value is None else formats.TIME.check(value, "time")

    @field_validator("constraint")
    @classmethod
    def _constraint(cls, value: str | None) -> str | None:
        return None if value is None else formats.CONSTRAINT.check(value, "constraint")

    @field_validator("partition", "queue", "account", "qos")
    @classmethod
    def _directive_name(cls, value: str | None) -> str | None:
        return None if value is None else _check_name(value, "name")


class BundleConfig(_Section):
    include: list[str] = Field(default_factory=lambda: ["**"])
    exclude: list[str] = Field(
        default_factory=lambda: ["runs/", ".venv/", "__pycache__/", "*.pyc", ".git/"]
    )
    #: patterns let through the secret filter on purpose
    allow: list[str] = Field(default_factory=list)


class SyncConfig(_Section):
    #: data paths (files or folders, relative to the project, or absolute) the job reads:
    #: ``hpcrun sync`` ships the relative ones to a remote's ``<workdir>/data/``, outside the
    #: code bundle, whether or not git ignores them; submit checks they are there
    data: list[str] = Field(default_factory=list)

    @field_validator("data")
    @classmethod
    def _paths(cls, value: list[str]) -> list[str]:
        return [_plain_path(path) for path in value]


class MonitorConfig(_Section):
    refresh_s: float = Field(2.0, gt=0)
    grad_norm_max: float = Field(1e3, gt=0)
    grad_jump_factor: float = Field(10.0, gt=1)
    grad_norm_min: float = Field(1e-7, ge=0)
    separation_patience: int = Field(5, ge=1)
    #: a separation that stopped improving is flagged only while it is below this
    separation_min: float = Field(0.2, ge=0)
    #: a collapse is flagged once the best separation was over ``separation_collapse_min``
    #: and the latest is under ``separation_collapse_ratio`` times that best
    separation_collapse_min: float = Field(0.1, ge=0)
    separation_collapse_ratio: float = Field(0.5, gt=0, lt=1)
    divergence_patience: int = Field(5, ge=1)
    stall_factor: float = Field(5.0, gt=1)
    #: a stall is never flagged before this many seconds without a heartbeat (short epochs
    #: would otherwise flag a run writing its checkpoint or evaluating)
    stall_min_s: float = Field(60.0, ge=0)
    memory_growth_pct: float = Field(10.0, gt=0)
    memory_near_capacity_pct: float = Field(95.0, gt=0, le=100)
    #: seconds between two rows of system.csv (GPU utilisation, memory, power; host CPU and
    #: RSS of the job's processes), sampled on every node of every job; 0 turns it off
    system_interval_s: float = Field(10.0, ge=0)
    #: the GPUs sat below this utilisation ...
    gpu_idle_pct: float = Field(30.0, ge=0, le=100)
    #: ... for longer than this while the job ran
    gpu_idle_s: float = Field(300.0, gt=0)


class ExperimentConfig(_Section):
    experiment: str
    seed: int = 0
    backend: Literal["auto", "local", "slurm", "pbs", "pod"] = "auto"
    remote: str | None = None
    #: where run directories are created (relative to the working directory of the job)
    runs_dir: str = "runs"
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    training: TrainingConfig = TrainingConfig()
    pipeline: list[StageConfig] = Field(default_factory=_default_pipeline, min_length=1)
    distributed: DistributedConfig = DistributedConfig()
    resources: ResourcesConfig = ResourcesConfig()
    bundle: BundleConfig = BundleConfig()
    sync: SyncConfig = SyncConfig()
    sweep: dict[str, Annotated[list[Any], Field(min_length=1)]] = Field(default_factory=dict)
    monitor: MonitorConfig = MonitorConfig()
    #: your own program as the job (instead of hpcrun's trainer), and its free-form params
    run: RunConfig | None = None
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("experiment")
    @classmethod
    def _valid_experiment(cls, value: str) -> str:
        return _check_name(value, "experiment name")

    @field_validator("runs_dir")
    @classmethod
    def _runs_dir(cls, value: str) -> str:
        return _plain_path(value)

    @model_validator(mode="after")
    def _pipeline_order(self) -> ExperimentConfig:
        seen: list[str] = []
        for index, stage in enumerate(self.pipeline):
            if stage.name in seen:
                raise ValueError(f"pipeline[{index}]: stage name {stage.name!r} is used twice")
            ref = stage.init_from
            if ref is not None and not ref.endswith(".pt") and ref not in seen:
                raise ValueError(
                    f"pipeline[{index}].init_from: {ref!r} is not an earlier stage "
                    f"(earlier: {', '.join(seen) or 'none'}) nor a .pt checkpoint path"
                )
            if stage.mode == "eval_only" and ref is None:
                raise ValueError(
                    f"pipeline[{index}] ({stage.name}) is eval_only but has no checkpoint: set "
                    "init_from to an earlier stage or a .pt file"
                )
            seen.append(stage.name)
        self._check_run()
        return self

    def _check_run(self) -> None:
        names = [s.name for s in self.pipeline]
        dirs = {name: name for name in names}
        for index, stage in enumerate(self.pipeline):
            if stage.run is not None and self.run is None:
                raise ValueError(f"pipeline[{index}].run: stage {stage.name!r} changes run:, "
                                 "but the experiment has no run: section (script, module or "
                                 "command)")
            program = self.stage_run(stage.name)
            if program is None:
                continue
            where = f"pipeline[{index}].run.args" if stage.run and stage.run.args is not None \
                else "run.args"
            try:
                fill_args(program.args, self.params, dirs, stage.name)
            except ValueError as exc:
                raise ValueError(f"{where}: {exc}") from None

    def stage_run(self, name: str) -> RunConfig | None:
        """The program stage ``name`` runs: the experiment's ``run:`` with the stage's
        changes (None: hpcrun's own trainer)."""
        if self.run is None:
            return None
        change = self.stage(name).run
        if change is None:
            return self.run
        fields = change.model_dump(exclude_none=True)
        if {"script", "module", "command"} & set(fields):
            base = self.run.model_dump(exclude={"script", "module", "command"})
        else:
            base = self.run.model_dump()
        try:
            return RunConfig.model_validate({**base, **fields})
        except ValidationError as exc:
            raise ValueError(f"stage {name!r}: run: {exc.errors()[0]['msg']}") from None

    def stage(self, name: str) -> StageConfig:
        for stage in self.pipeline:
            if stage.name == name:
                return stage
        raise ConfigError(
            f"unknown stage {name!r}; this experiment has: "
            f"{', '.join(s.name for s in self.pipeline)}"
        )

    def for_stage(self, name: str) -> ExperimentConfig:
        """The experiment as one stage sees it: the stage's overrides merged in."""
        stage = self.stage(name)
        if not stage.overrides:
            return self
        merged = deep_merge(self.model_dump(mode="json"), stage.overrides)
        return ExperimentConfig.model_validate(merged)

    def data_paths(self) -> list[str]:
        """The data this experiment's jobs read: ``sync.data`` and every stage's
        ``data.path`` (when it reads files), in order, without repeats."""
        paths = list(self.sync.data)
        if self.run is None:
            for stage in self.pipeline:
                data = self.for_stage(stage.name).data
                if data.source == "files" and data.path:
                    paths.append(data.path)
        return list(dict.fromkeys(paths))

    def to_yaml(self) -> str:
        # your own program has no use for the built-in trainer's sections
        if self.run is not None:
            unused: Any = {"data", "model", "training"}
        else:  # the keys of the data source not used
            unused = {"data": FILES_KEYS if self.data.source == "synthetic" else SYNTHETIC_KEYS}
        return yaml.dump(self.model_dump(mode="json", exclude=unused), Dumper=_SAFE_DUMPER,
                         sort_keys=False)


#: ssh options that decide which host key is expected, or whether it is checked (lower case)
_HOST_KEY_OPTIONS = frozenset({"stricthostkeychecking", "userknownhostsfile",
                               "globalknownhostsfile", "knownhostscommand", "hostkeyalias"})


class RemoteConfig(_Section):
    """A machine reached by ssh: a pod, or a cluster's login node. Values normally come from
    the environment (``${RUNPOD_HOST}``), never from committed files."""

    host: str
    port: int = Field(22, ge=1, le=65535)
    user: str | None = None
    identity_file: str | None = None
    #: an absolute path on the remote (on a cluster: a filesystem the nodes share)
    workdir: str
    #: the python that runs hpcrun and the jobs there; unset: the venv hpcrun sets up and keeps
    #: under the workdir (``hpcrun setup --remote NAME``)
    python: str | None = None
    #: the python that venv is made from (with --system-site-packages: its torch is used)
    base_python: str = "python3"
    #: pip arguments that install torch into that venv when the remote has none, e.g.
    #: "torch==2.4.1 --index-url https://download.pytorch.org/whl/cu121"
    torch: str | None = None
    #: names of local environment variables to forward (passed by name with SendEnv)
    env: list[str] = Field(default_factory=list)
    ssh_options: list[str] = Field(default_factory=list)
    connect_timeout: int = Field(10, ge=1)

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        if not value:
            raise ValueError("host is empty (set it, e.g. export RUNPOD_HOST=...)")
        return formats.HOST.check(value, "host")

    @field_validator("user")
    @classmethod
    def _user(cls, value: str | None) -> str | None:
        return formats.USER.check(value, "user") if value else None

    @field_validator("workdir")
    @classmethod
    def _workdir(cls, value: str) -> str:
        if value.startswith("~"):  # a path on the remote: this machine's home is not its home
            raise ValueError(f"workdir {value!r} must be an absolute path on the remote: '~' "
                             "is not expanded there (write /home/USER/...)")
        if not value.startswith("/"):
            raise ValueError(f"workdir {value!r} must be an absolute path on the remote "
                             "(jobs change folders: a relative one would not be found)")
        return _plain_path(value)

    @field_validator("python", "base_python")
    @classmethod
    def _python(cls, value: str | None) -> str | None:
        if value is not None and (not value or value.startswith("-")):
            raise ValueError(f"{value!r} is not a python interpreter (a name on PATH or a path)")
        return _plain_path(value) if value else None

    @field_validator("torch")
    @classmethod
    def _torch(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            return None
        return _one_shell_line(value) if value is not None else None

    @property
    def managed(self) -> bool:
        """hpcrun installs and upgrades its own venv there (``python`` is not named)."""
        return self.python is None

    @property
    def venv(self) -> str:
        return posixpath.join(self.workdir, "venv")

    @property
    def interpreter(self) -> str:
        """The python that runs hpcrun's agent and the jobs on this remote."""
        return self.python or posixpath.join(self.venv, "bin", "python")

    @property
    def data_dir(self) -> str:
        """Where ``hpcrun sync`` puts a project's declared data paths on this remote."""
        return posixpath.join(self.workdir, "data")

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: list[str]) -> list[str]:
        for name in value:  # ssh's SendEnv takes patterns: '*' would forward everything
            formats.ENV_NAME.check(name, "env")
        return value

    @field_validator("ssh_options")
    @classmethod
    def _options(cls, value: list[str]) -> list[str]:
        for option in value:
            name = option.partition("=")[0]
            if name.strip().lower() in _HOST_KEY_OPTIONS:
                raise ValueError(f"{option!r} is refused: host keys are checked against "
                                 "hpcrun's own known_hosts, and no option may change which "
                                 "key is expected (" + ", ".join(sorted(_HOST_KEY_OPTIONS))
                                 + ")")
            formats.SSH_OPTION.check(option, "ssh option")
        return value


if _PLUGINS_SETTING is None:
    del os.environ["PYDANTIC_DISABLE_PLUGINS"]
else:
    os.environ["PYDANTIC_DISABLE_PLUGINS"] = _PLUGINS_SETTING


@_one_line_errors
def load_remote(name: str, project_dir: Path | None = None,
                env: typing.Mapping[str, str] | None = None) -> RemoteConfig:
    """A remote from ``configs/remotes.yaml`` (the project's, then hpcrun's)."""
    env = os.environ if env is None else env
    found: dict[str, tuple[Path, dict[str, Any]]] = {}
    for folder in reversed(_search_dirs(project_dir)):
        path = folder / "remotes.yaml"
        if path.is_file():
            for key, value in (_read_yaml(path).get("remotes") or {}).items():
                found[key] = (path, value)
    if name not in found:
        close = difflib.get_close_matches(name, list(found), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown remote {name!r}{hint}; remotes.yaml defines: "
                          f"{', '.join(sorted(found)) or 'none'}")
    path, raw = found[name]
    origins = _Origins()
    origins.record({"remotes": {name: raw}}, str(path))
    data = _interpolate(raw or {}, origins, env, f"remotes.{name}")
    if isinstance(data, dict):  # ${VAR:-} left empty: not set
        for key in ("identity_file", "python", "torch"):
            if data.get(key) == "":
                data[key] = None
    _check_text({"remotes": {name: data}}, origins, str(path))
    try:
        return RemoteConfig.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        raise ConfigError(_describe(errors[0], ("remotes", name), origins, str(path),
                                    len(errors))) from None


# --------------------------------------------------------------------------- loading


class _Origins:
    """Which file (or ``--set``) supplied each dotted key, for error messages."""

    def __init__(self) -> None:
        self._by_key: dict[str, str] = {}  # in the order the sources were applied

    def record(self, data: Any, source: str, prefix: str = "") -> None:
        if isinstance(data, dict):
            for key, value in data.items():
                dotted = f"{prefix}.{key}" if prefix else str(key)
                self.set(dotted, source)
                self.record(value, source, dotted)

    def set(self, dotted: str, source: str) -> None:
        self._by_key.pop(dotted, None)
        self._by_key[dotted] = source

    def find(self, dotted: str, fallback: str) -> str:
        """The source that last supplied ``dotted`` or a key inside it (an error about a
        section is the fault of whoever changed it last), else of its nearest parent."""
        inside = dotted + "."
        latest = None
        for key, source in self._by_key.items():
            if key == dotted or key.startswith(inside):
                latest = source
        if latest:
            return latest
        parts = dotted.split(".")[:-1]
        while parts:
            hit = self._by_key.get(".".join(parts))
            if hit:
                return hit
            parts.pop()
        return fallback


def deep_merge(base: Any, override: Any) -> Any:
    """``override`` on top of ``base``: mappings merge key by key, anything else replaces."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = deep_merge(base.get(key), value) if key in base else value
        return merged
    return copy.deepcopy(override)


def available_experiments(project_dir: Path | None = None) -> list[str]:
    names: set[str] = set()
    for folder in _search_dirs(project_dir):
        if folder.is_dir():
            names.update(p.stem for p in folder.glob("*.yaml") if p.stem != "remotes")
    return sorted(names)


def _search_dirs(project_dir: Path | None) -> list[Path]:
    return [Path(project_dir or Path.cwd()) / "configs", configs_dir()]


def resolve_config_path(name: str, project_dir: Path | None = None,
                        relative_to: Path | None = None) -> Path:
    """``NAME`` -> project ``configs/NAME.yaml``, then hpcrun's own; a path is taken as is."""
    # os.path's expanduser leaves "~user" of an unknown user as it is (pathlib's raises)
    candidate = Path(os.path.expanduser(name))
    looks_like_path = "/" in name or candidate.suffix in (".yaml", ".yml")
    if looks_like_path:
        for base in filter(None, [relative_to, Path.cwd()]):
            path = candidate if candidate.is_absolute() else base / candidate
            if path.is_file():
                return path
        raise ConfigError(f"config file not found: {name}")
    dirs = ([relative_to] if relative_to else []) + _search_dirs(project_dir)
    for folder in dirs:
        for suffix in (".yaml", ".yml"):
            path = folder / f"{name}{suffix}"
            if path.is_file():
                return path
    available = available_experiments(project_dir)
    close = difflib.get_close_matches(name, available, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigError(
        f"unknown experiment {name!r}{hint}. Available: {', '.join(available) or 'none'} "
        "(from ./configs and hpcrun's bundled configs)"
    )


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: {size} bytes is too large for a config (limit "
                          f"{MAX_CONFIG_BYTES})")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read as UTF-8 text: {exc}") from None
    try:
        data = safe_load(text, str(path))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}:{where}: malformed YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping of sections, got "
                          f"{type(data).__name__}")
    _check_shape(data, str(path))
    return data


def safe_load(text: str, source: str) -> Any:
    """YAML with the safe loader, refusing before it is built a document nested deeper than
    ``MAX_CONFIG_DEPTH`` (the C composer recurses once per level and would crash the process)
    or holding more than ``MAX_CONFIG_NODES`` values once aliases and merge keys are expanded
    (building a merge-key bomb takes exponential time). Raises ``ConfigError`` for those and
    ``yaml.YAMLError`` for malformed text."""
    try:
        _check_events(text, source)
        return yaml.load(text, Loader=_SAFE_LOADER)  # noqa: S506 - a safe loader
    except UnicodeEncodeError:  # a str from argv holding bytes that are not UTF-8
        raise ConfigError(f"{source}: holds text that is not valid UTF-8") from None


def _check_events(text: str, source: str) -> None:
    """One pass over the parser's events: nesting depth, and the number of values each anchor
    stands for, so that an alias counts as everything it repeats."""
    stack: list[list[Any]] = []  # per open collection: [values, is mapping, items seen, anchor]
    sizes: dict[str, int] = {}
    start_events = (yaml.MappingStartEvent, yaml.SequenceStartEvent)
    end_events = (yaml.MappingEndEvent, yaml.SequenceEndEvent)

    def add(count: int) -> None:
        if not stack:
            return
        top = stack[-1]
        top[2] += 1
        if top[1] and top[2] % 2 == 1 and count == 1:
            return  # a plain mapping key
        top[0] += count
        if top[0] > MAX_CONFIG_NODES:
            raise ConfigError(f"{source}: more than {MAX_CONFIG_NODES} values (after expanding "
                              "aliases); refusing to load it")

    for event in _events(text, source):
        if isinstance(event, start_events):
            if len(stack) > MAX_CONFIG_DEPTH:
                raise ConfigError(f"{source}: nested deeper than {MAX_CONFIG_DEPTH} levels")
            stack.append([1, isinstance(event, yaml.MappingStartEvent), 0, event.anchor])
        elif isinstance(event, end_events):
            count, _, _, anchor = stack.pop()
            if anchor is not None:
                sizes[anchor] = count
            add(count)
        elif isinstance(event, yaml.ScalarEvent):
            if event.anchor is not None:
                sizes[event.anchor] = 1
            add(1)
        elif isinstance(event, yaml.AliasEvent):
            if any(frame[3] == event.anchor for frame in stack):
                raise ConfigError(f"{source}: the alias *{event.anchor} refers to a value that "
                                  "contains it; refusing to load it")
            add(sizes.get(event.anchor, 1))


def _events(text: str, source: str) -> Iterator[yaml.Event]:
    """The parser's events. libyaml (PyYAML 6.0.4 on) has a nesting cap of its own, 1000
    levels, which its scanner hits before the first event is handed out: that is the same
    refusal as ours, not malformed text."""
    try:
        yield from yaml.parse(text, Loader=_SAFE_LOADER)
    except yaml.scanner.ScannerError as exc:
        if "maximum nesting depth" in str(exc.problem):
            raise ConfigError(f"{source}: nested deeper than {MAX_CONFIG_DEPTH} levels") from None
        raise


def _check_shape(data: Any, source: str, budget_left: int = MAX_CONFIG_NODES) -> int:
    """Refuse documents whose aliases or nesting would expand beyond reason (more values than
    ``budget_left``). Returns how many values ``data`` holds."""
    budget = [budget_left]

    def walk(node: Any, depth: int) -> None:
        budget[0] -= 1
        if budget[0] < 0:
            raise ConfigError(f"{source}: more than {MAX_CONFIG_NODES} values (after expanding "
                              "aliases); refusing to load it")
        if depth > MAX_CONFIG_DEPTH:
            raise ConfigError(f"{source}: nested deeper than {MAX_CONFIG_DEPTH} levels")
        if isinstance(node, dict):
            for value in node.values():
                walk(value, depth + 1)
        elif isinstance(node, list):
            for value in node:
                walk(value, depth + 1)

    walk(data, 0)
    return budget_left - budget[0]


def _load_with_extends(path: Path, origins: _Origins, project_dir: Path | None,
                       chain: tuple[Path, ...] = (), values: int = 0) -> dict[str, Any]:
    """``path`` merged over what it extends; ``values`` counts those of the configs read so
    far, which the whole chain may hold no more than one config may."""
    resolved = path.resolve()
    if resolved in chain:
        cycle = " -> ".join(str(p) for p in (*chain, resolved))
        raise ConfigError(f"{path}: extends cycle: {cycle}")
    if len(chain) >= MAX_EXTENDS_CHAIN:
        raise ConfigError(f"{path}: an extends chain of more than {MAX_EXTENDS_CHAIN} configs "
                          f"(from {chain[0]})")
    data = _read_yaml(path)
    values += _check_shape(data, f"{path} with the configs extending it",
                           MAX_CONFIG_NODES - values)
    parent_name = data.pop("extends", None)
    if parent_name is None:
        origins.record(data, str(path))
        return data
    if not isinstance(parent_name, str):
        raise ConfigError(f"{path}: extends: expected the name or path of a config, got "
                          f"{parent_name!r}")
    parent_path = resolve_config_path(parent_name, project_dir, relative_to=path.parent)
    if parent_path.resolve() == resolved:
        # ``extends: v3`` inside a project's own configs/v3.yaml means hpcrun's v3
        try:
            parent_path = resolve_config_path(parent_name, project_dir=Path("/nonexistent"))
        except ConfigError:
            raise ConfigError(f"{path}: extends: {parent_name!r} is this file itself, and "
                              "hpcrun ships no config of that name") from None
    parent = _load_with_extends(parent_path, origins, project_dir, (*chain, resolved), values)
    origins.record(data, str(path))
    return deep_merge(parent, data)


_ENV_RE = re.compile(r"\$\{(" + formats.ENV_NAME.pattern + r")(:-([^}]*))?\}")


def _interpolate(node: Any, origins: _Origins, env: typing.Mapping[str, str],
                 path: str = "") -> Any:
    if isinstance(node, dict):
        return {k: _interpolate(v, origins, env, f"{path}.{k}" if path else str(k))
                for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate(v, origins, env, f"{path}.{i}") for i, v in enumerate(node)]
    if not isinstance(node, str) or "${" not in node:
        return node

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(3)
        if name in env and env[name] != "":
            return env[name]
        if match.group(2) is not None:
            return default or ""
        source = origins.find(path, "config")
        raise ConfigError(
            f"{source}: {path}: environment variable {name} is not set",
            hint=f"export {name}=... or write ${{{name}:-default}}",
        )

    value = _ENV_RE.sub(replace, node)
    # a value that is only "${PORT}" becomes a typed value (the schema converts "22" to 22)
    return value


def _text_problem(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    if "\x00" in value:
        return "a NUL byte"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "text that is not valid UTF-8"
    return None


def _check_text(node: Any, origins: _Origins, source: str, path: str = "") -> None:
    """Refuse keys and strings that no file name, argument or environment value can hold."""
    if isinstance(node, dict):
        items: typing.Iterable[tuple[Any, Any]] = node.items()
    elif isinstance(node, list):
        items = enumerate(node)
    else:
        return
    for key, value in items:
        dotted = f"{path}.{key}" if path else str(key)
        problem = _text_problem(key) or _text_problem(value)
        if problem:
            raise ConfigError(f"{origins.find(dotted, source)}: {dotted}: holds {problem}")
        _check_text(value, origins, source, dotted)


def parse_set(expression: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a","b","c"], parsed value). The value is read as YAML."""
    key, sep, raw = expression.partition("=")
    key = key.strip()
    parts = key.split(".") if key else []
    if not sep or not parts or not all(formats.KEY_PART.matches(p) for p in parts):
        raise ConfigError(
            f"--set {expression!r}: expected KEY=VALUE with a dotted key, e.g. "
            "training.lr=0.001"
        )
    try:
        value = safe_load(raw, f"--set {key}") if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, (dict, list)):
        _check_shape(value, f"--set {key}")
    return parts, value


def apply_set(data: dict[str, Any], parts: list[str], value: Any) -> None:
    node: Any = data
    for index, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"--set {'.'.join(parts)}: {'.'.join(parts[:index + 1])} "
                                  f"is a list of {len(node)}; use an index 0..{len(node) - 1}")
            node = node[int(part)]
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"--set {'.'.join(parts)}: {'.'.join(parts[:index])} is not a "
                              "section")
        if node.get(part) is None:
            node[part] = {}
        node = node[part]
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise ConfigError(f"--set {'.'.join(parts)}: index out of range")
        node[int(last)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(f"--set {'.'.join(parts)}: {'.'.join(parts[:-1])} is not a section")


def is_script(name: str) -> bool:
    """``hpcrun submit NAME``: a Python script to run as the job, not an experiment config."""
    return name.endswith(".py")


def script_config(script: str, args: typing.Sequence[str],
                  project_dir: Path | None) -> dict[str, Any]:
    """The experiment that ``hpcrun submit path/to/train.py -- ARGS`` runs: that script
    (a path inside the project, as the job's bundle holds it) with those arguments, one
    stage named ``train``; the experiment is named after the script."""
    root = (project_dir or Path.cwd()).resolve()
    given = Path(script)
    path = (given if given.is_absolute() else Path.cwd() / given).resolve()
    if not path.is_file():
        raise ConfigError(f"script {script!r} not found (looked for {path})")
    try:
        relative = path.relative_to(root)
    except ValueError:
        raise ConfigError(f"script {script!r} ({path}) lies outside the project {root}",
                          hint="run hpcrun from the project that holds the script: its "
                          "files are what the job gets") from None
    return {"experiment": path.stem, "run": {"script": relative.as_posix(), "args": list(args)}}


@_one_line_errors
def load_config(
    name_or_path: str | Path,
    overrides: typing.Sequence[str] = (),
    *,
    script_args: typing.Sequence[str] = (),
    project_dir: Path | None = None,
    env: typing.Mapping[str, str] | None = None,
) -> ExperimentConfig:
    """Resolve, merge, interpolate and validate. Raises ``ConfigError`` (exit code 2)."""
    env = os.environ if env is None else env
    origins = _Origins()
    if is_script(str(name_or_path)):
        data = script_config(str(name_or_path), script_args, project_dir)
        path = Path(data["run"]["script"])
        origins.record(data, "the command line")
    else:
        if script_args:
            raise ConfigError(f"arguments after -- are for a script, and {name_or_path!r} is "
                              "an experiment config",
                              hint="hpcrun submit path/to/train.py -- ARGS, or the config's "
                              "run.args")
        path = resolve_config_path(str(name_or_path), project_dir)
        data = _load_with_extends(path, origins, project_dir)
    for expression in overrides:
        parts, value = parse_set(expression)
        apply_set(data, parts, value)
        origins.set(".".join(parts), "--set")
        origins.record(value, "--set", ".".join(parts))
    data.setdefault("experiment", path.stem)
    data = _interpolate(data, origins, env)
    _check_text(data, origins, str(path))
    return validate(data, origins=origins, source=str(path))


@_one_line_errors
def load_config_text(text: str, source: str = "<config>") -> ExperimentConfig:
    """Validate a resolved YAML document (e.g. a run directory's config.yaml)."""
    try:
        data = safe_load(text, source) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: malformed YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a config must be a mapping of sections")
    _check_shape(data, source)
    _check_text(data, _Origins(), source)
    return validate(data, source=source)


def validate(data: dict[str, Any], *, origins: _Origins | None = None,
             source: str = "config") -> ExperimentConfig:
    try:
        config = ExperimentConfig.model_validate(data)
        for stage in config.pipeline:
            if stage.overrides:
                try:
                    config.for_stage(stage.name)
                except ValidationError as exc:
                    index = config.pipeline.index(stage)
                    raise _prefixed(exc, ("pipeline", index, "overrides")) from None
        return config
    except _PrefixedError as exc:
        raise ConfigError(_describe(exc.error, exc.prefix, origins, source,
                                    exc.count)) from None
    except ValidationError as exc:
        errors = exc.errors()
        raise ConfigError(_describe(errors[0], (), origins, source, len(errors))) from None


class _PrefixedError(Exception):
    def __init__(self, error: dict[str, Any], prefix: tuple[Any, ...], count: int):
        super().__init__(error.get("msg"))
        self.error, self.prefix, self.count = error, prefix, count


def _prefixed(exc: ValidationError, prefix: tuple[Any, ...]) -> _PrefixedError:
    errors = exc.errors()
    return _PrefixedError(errors[0], prefix, len(errors))


def _describe(error: dict[str, Any], prefix: tuple[Any, ...], origins: _Origins | None,
              source: str, count: int) -> str:
    loc = tuple(part for part in error.get("loc", ()) if not _is_union_tag(part))
    dotted = ".".join(str(p) for p in (*prefix, *loc))
    where = origins.find(dotted, source) if origins else source
    kind = error.get("type", "")
    value = error.get("input")
    if kind == "extra_forbidden":
        key = str(loc[-1]) if loc else "?"
        known = _fields_at(ExperimentConfig, loc[:-1]) if not prefix else _fields_for_override(
            loc[:-1])
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        allowed = f" (allowed here: {', '.join(known)})" if known else ""
        message = f"{where}: {dotted}: unknown key{hint}{allowed}"
    elif kind == "missing":
        message = f"{where}: {dotted}: required key is missing"
    else:
        text = str(error.get("msg", "invalid value"))
        text = text.removeprefix("Value error, ")
        expected = (error.get("ctx") or {}).get("expected")
        if kind == "literal_error" and expected and isinstance(value, str):
            choices = re.findall(r"'([^']*)'", str(expected))
            close = difflib.get_close_matches(value, choices, n=1)
            if close:
                text += f"; did you mean {close[0]!r}?"
        shown = _short(value)
        if dotted:
            message = f"{where}: {dotted}: {text}"
        elif re.match(r"[\w.\[\]]+: ", text):  # a check of the whole config names its key
            message = f"{where}: {text}"
        else:
            message = f"{where}: (top level): {text}"
        if not isinstance(value, (dict, list)) and shown not in message:
            message += f" (got {shown})"
    if count > 1:
        message += f" [and {count - 1} more problem{'s' if count > 2 else ''}]"
    return message


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_union_tag(part: Any) -> bool:
    # pydantic adds the member type to the loc of union errors: "int", "literal['auto']", ...
    return isinstance(part, str) and (part in ("int", "float", "str", "bool", "function-after")
                                      or part.startswith(("literal[", "constrained-")))


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType, list, dict, Annotated):
        for arg in typing.get_args(annotation):
            found = _model_of(arg)
            if found:
                return found
    return None


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    current: type[BaseModel] | None = model
    for part in loc:
        if current is None:
            return []
        if isinstance(part, int) or part not in current.model_fields:
            continue
        current = _model_of(current.model_fields[part].annotation)
    return sorted(current.model_fields) if current else []


def _fields_for_override(loc: tuple[Any, ...]) -> list[str]:
    return _fields_at(ExperimentConfig, loc)
