"""Config resolution, overrides, interpolation and the one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcrun.config import load_config, parse_set
from hpcrun.errors import ConfigError


def write(tmp: Path, name: str, text: str) -> Path:
    folder = tmp / "configs"
    folder.mkdir(exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return path


def error(*args, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_shipped_v3_resolves_with_its_stages():
    cfg = load_config("v3")
    assert [s.name for s in cfg.pipeline] == ["pretrain", "finetune", "eval"]
    assert [s.mode for s in cfg.pipeline] == ["train_only", "train_only", "eval_only"]
    pretrain = cfg.for_stage("pretrain")
    assert pretrain.training.loss.components == {"reconstruction": 1.0, "classification": 0.0}
    assert cfg.for_stage("finetune").training.loss.components == {"classification": 1.0}


def test_project_config_wins_and_extends_the_shipped_one(tmp_path):
    write(tmp_path, "v3", "extends: v3\ntraining: {epochs: 2}\n")
    cfg = load_config("v3", project_dir=tmp_path)
    assert cfg.training.epochs == 2
    assert cfg.experiment == "v3" and len(cfg.pipeline) == 3


def test_set_is_typed_by_the_schema():
    cfg = load_config("v3", ["training.lr=1e-2", "model.hidden=[16, 8]",
                             "distributed.enabled=false", "pipeline.1.init_checkpoint=last"])
    assert cfg.training.lr == 0.01
    assert cfg.model.hidden == [16, 8]
    assert cfg.distributed.enabled is False
    assert cfg.pipeline[1].init_checkpoint == "last"


def test_env_interpolation_with_defaults(tmp_path):
    write(tmp_path, "e", "experiment: ${EXP_NAME:-fallback}\nseed: ${SEED}\n")
    cfg = load_config("e", project_dir=tmp_path, env={"SEED": "7"})
    assert cfg.experiment == "fallback" and cfg.seed == 7
    message = error("e", project_dir=tmp_path, env={})
    assert "seed" in message and "SEED is not set" in message


def test_unknown_key_names_file_path_and_suggestion(tmp_path):
    path = write(tmp_path, "e", "experiment: e\ntraining: {epocs: 3}\n")
    message = error("e", project_dir=tmp_path)
    assert str(path) in message
    assert "training.epocs" in message and "did you mean 'epochs'" in message


def test_wrong_type_shows_value_and_origin():
    message = error("v3", ["training.batch_size=lots"])
    assert message.startswith("--set")
    assert "training.batch_size" in message and "'lots'" in message


def test_bad_choice_lists_allowed_values():
    message = error("v3", ["training.optimizer=adamx"])
    assert "'adam'" in message and "'sgd'" in message and "adamx" in message


def test_unknown_experiment_lists_available(tmp_path):
    message = error("nope", project_dir=tmp_path)
    assert "unknown experiment 'nope'" in message and "v3" in message


def test_impossible_combinations_are_rejected():
    assert "divisible" in error("v3", ["training.batch_size=10", "training.grad_accum_steps=3"])
    assert "not an earlier stage" in error("v3", ["pipeline.1.init_from=eval"])
    assert "informative" in error("v3", ["data.features=4"])


def test_stage_overrides_are_validated_with_their_path():
    message = error("v3", ["pipeline.0.overrides.training.lrr=1"])
    assert "pipeline.0.overrides.training.lrr" in message and "did you mean 'lr'" in message


@pytest.mark.parametrize("expression", ["training", "=3", "a..b=1", "training.lr"])
def test_bad_set_syntax(expression):
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_set(expression)


def test_alias_bomb_is_refused_quickly(tmp_path):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        refs = ", ".join([f"*a{i - 1}"] * 10)
        lines.append(f"a{i}: &a{i} [{refs}]")
    write(tmp_path, "bomb", "experiment: bomb\n" + "\n".join(lines) + "\n")
    assert "refusing" in error("bomb", project_dir=tmp_path)


def test_malformed_yaml_names_line(tmp_path):
    write(tmp_path, "m", "experiment: m\ntraining: [1, 2\n")
    message = error("m", project_dir=tmp_path)
    assert "malformed YAML" in message and "line" in message


@pytest.mark.parametrize("target", ["~0", "~no-such-user/base.yaml"])
def test_extends_naming_an_unknown_users_home_is_a_config_error(tmp_path, target):
    path = write(tmp_path, "home", f"experiment: home\nextends: {target}\n")
    message = error(str(path), project_dir=tmp_path)
    assert target in message and "\n" not in message


def test_a_config_shows_the_keys_of_its_own_data_source_only(tmp_path):
    """config show (and a run's config.yaml) of a files config holds no synthetic generator
    keys, and the other way round; what it prints loads back to the same data config."""
    import yaml

    from hpcrun.config import SYNTHETIC_KEYS, load_config, load_config_text

    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "f.yaml").write_text(
        "extends: v3\nexperiment: f\ndata: {source: files, path: data/x.csv}\n")
    files = load_config("f", project_dir=tmp_path)
    shown = yaml.safe_load(files.to_yaml())["data"]
    assert "rows" not in shown and "noise" not in shown and shown["path"] == "data/x.csv"
    again = load_config_text(files.to_yaml(), source="x").data
    assert again.model_dump(exclude=set(SYNTHETIC_KEYS)) == files.data.model_dump(
        exclude=set(SYNTHETIC_KEYS))
    synthetic = yaml.safe_load(load_config("v3", project_dir=tmp_path).to_yaml())["data"]
    assert "path" not in synthetic and "label_column" not in synthetic
    assert synthetic["rows"] == 8000


def test_config_yaml_is_the_text_of_pyyamls_own_safe_dumper(tmp_path):
    """to_yaml uses libyaml's emitter where PyYAML has it: the same text as yaml.safe_dump,
    also for long, quoted, multi-line and non-ASCII values."""
    import yaml

    write(tmp_path, "odd", "extends: v3\nexperiment: odd\nparams:\n"
          "  long: '" + "word " * 40 + "'\n  quoted: 'yes'\n  lines: \"a\\nb\"\n"
          "  accents: 'été, naïve'\n  empty: ''\n  tiny: 1.0e-07\n  zeros: '010'\n")
    odd = load_config("odd", project_dir=tmp_path)
    assert odd.params["accents"] == "été, naïve" and "\n" in odd.params["lines"]
    for cfg in (load_config("v3"), odd):
        unused = {"data": {k for k in type(cfg.data).model_fields if k not in
                           yaml.safe_load(cfg.to_yaml())["data"]}}
        assert cfg.to_yaml() == yaml.safe_dump(cfg.model_dump(mode="json", exclude=unused),
                                               sort_keys=False)


# --- the validators' rules, one by one ------------------------------------------------------

from pydantic import ValidationError  # noqa: E402

from hpcrun.config import (  # noqa: E402
    DistributedConfig,
    ExperimentConfig,
    ResourcesConfig,
    RunConfig,
    StageConfig,
    SyncConfig,
    fill_args,
    load_config_text,
)


def invalid(model, **fields) -> str:
    with pytest.raises(ValidationError) as info:
        model(**fields)
    return str(info.value)


def test_fill_args_fills_each_kind_of_placeholder():
    args = ["--lr={params.lr}", "{stages.pre.dir}/best.pt", "{run_dir}", "{{literal}}",
            "{ params.flag }", "{params.sizes}", "plain"]
    assert fill_args(args, {"lr": 0.001, "flag": True, "sizes": [1, 2]}, {"pre": "runs/x/pre"},
                     "runs/x/fine") == ["--lr=0.001", "runs/x/pre/best.pt", "runs/x/fine",
                                        "{literal}", "true", "[1, 2]", "plain"]


@pytest.mark.parametrize("arg, message", [
    ("{params.nope}", "{params.nope} names no param (params: a, b)"),
    ("{stages.other.dir}", "{stages.other.dir} names no stage of the pipeline (pre, fine)"),
    ("{params}", "{params} is not a placeholder (use {params.NAME}, {stages.NAME.dir} or "
                 "{run_dir}; {{ and }} for braces)"),
    ("{stages.pre}", "{stages.pre} is not a placeholder"),
    ("{stages.pre.path}", "{stages.pre.path} is not a placeholder"),
    ("{params.a.b}", "{params.a.b} is not a placeholder"),
    ("{run_dir.x}", "{run_dir.x} is not a placeholder"),
])
def test_fill_args_names_a_placeholder_that_names_nothing(arg, message):
    with pytest.raises(ValueError) as info:
        fill_args([arg], {"b": 1, "a": 2}, {"pre": "p", "fine": "f"}, "r")
    assert str(info.value).startswith(message)
    with pytest.raises(ValueError, match=r"\(params: none\)"):
        fill_args(["{params.x}"], {}, {}, "r")


def test_run_arguments_and_commands_are_text():
    run = RunConfig(script="train.py", args=["--epochs", 3, 0.5, True, "x"])
    assert run.args == ["--epochs", "3", "0.5", "true", "x"]
    assert RunConfig(command=["python", 2]).command == ["python", "2"]
    assert run.program == "train.py"
    assert RunConfig(command=["python", "-u"]).program == "python -u"


def test_a_run_names_exactly_one_plain_program():
    assert "run names both script and module" in invalid(RunConfig, script="a.py", module="m")
    assert "run needs one of script, module or command" in invalid(RunConfig)
    assert "must be a Python file (.py)" in invalid(RunConfig, script="train.sh")
    assert "without control characters" in invalid(RunConfig, script="a\n.py")
    assert "dotted Python module name" in invalid(RunConfig, module="my-pkg")
    assert RunConfig(module="pkg.train").module == "pkg.train"
    assert "command must name a program" in invalid(RunConfig, command=[])
    assert "command must name a program" in invalid(RunConfig, command=[""])


def test_paths_and_shell_lines_are_one_line():
    assert SyncConfig(data=["data/a.csv"]).data == ["data/a.csv"]
    for bad in ("", "a\nb", "a\rb", "a\x1b[2Jb", "a\tb"):
        assert "without control characters" in invalid(SyncConfig, data=[bad]), bad
    assert "without control characters" in invalid(ExperimentConfig, experiment="x",
                                                    runs_dir="r\nx")
    assert ResourcesConfig(setup=["module load cuda"]).setup == ["module load cuda"]
    for bad in ("a\nb", "a\rb"):
        assert "each setup entry must be one shell line" in invalid(ResourcesConfig,
                                                                    setup=[bad])
        assert "one shell line" in invalid(ResourcesConfig, slurm={"setup": [bad]})


def test_resource_fields_keep_valid_values_and_refuse_garbled_ones():
    ok = ResourcesConfig(partition="gpu", queue="q1", account="a_b", qos="high", mem="16G",
                         time="01:00:00", constraint="a100")
    assert (ok.partition, ok.queue, ok.account, ok.qos, ok.mem, ok.time, ok.constraint) == (
        "gpu", "q1", "a_b", "high", "16G", "01:00:00", "a100")
    for field in ("partition", "queue", "account", "qos", "mem", "time", "constraint"):
        invalid(ResourcesConfig, **{field: "x\ny"})
    invalid(ResourcesConfig, slurm={"directives": ["--a\n--b"]})
    assert ResourcesConfig(slurm={"directives": ["--exclusive"]}).slurm.directives == [
        "--exclusive"]


def test_stage_names_and_modes():
    for reserved in ("logs", "REPORT", "checkpoints", "work"):
        assert "is reserved" in invalid(StageConfig, name=reserved), reserved
    assert "Unsupported run mode: fly" in invalid(StageConfig, name="s", mode="fly")
    assert StageConfig(name="s", mode="eval_only").splits == ["test"]
    assert StageConfig(name="s", mode="train_only").splits == ["val"]
    assert StageConfig(name="s").splits == ["val", "test"]
    assert StageConfig(name="s", eval_splits=["test"]).splits == ["test"]


def test_distributed_accepts_old_and_word_forms():
    assert DistributedConfig(nnodes=2) == DistributedConfig()
    assert DistributedConfig(enabled="True").enabled is True
    assert DistributedConfig(enabled="false").enabled is False
    invalid(DistributedConfig, enabled="maybe")


PIPE = """\
experiment: t
params: {lr: 0.1}
run: {script: train.py, args: ["--lr={params.lr}"]}
pipeline:
  - name: pre
  - name: fine
    init_from: pre
    run: {args: ["--from={stages.pre.dir}"]}
  - name: other
    run: {module: pkg.other}
"""


def test_each_stage_runs_the_experiments_program_with_its_own_changes():
    config = load_config_text(PIPE)
    assert config.stage_run("pre") == RunConfig(script="train.py", args=["--lr={params.lr}"])
    assert config.stage_run("fine") == RunConfig(script="train.py",
                                                 args=["--from={stages.pre.dir}"])
    # naming another program replaces the experiment's (script gives way to module)
    assert config.stage_run("other") == RunConfig(module="pkg.other", args=["--lr={params.lr}"])
    assert load_config_text("experiment: t\n").stage_run("train") is None


def test_pipeline_and_run_errors_name_the_stage():
    def error_of(text: str) -> str:
        with pytest.raises(ConfigError) as info:
            load_config_text(text)
        return str(info.value)

    assert "pipeline[1]: stage name 'a' is used twice" in error_of(
        "experiment: t\npipeline: [{name: a}, {name: a}]\n")
    assert "pipeline[0].init_from: 'b' is not an earlier stage (earlier: none)" in error_of(
        "experiment: t\npipeline: [{name: a, init_from: b}]\n")
    assert "(earlier: a)" in error_of(
        "experiment: t\npipeline: [{name: a}, {name: c, init_from: b}]\n")
    assert load_config_text("experiment: t\npipeline: [{name: a, init_from: x.pt}]\n")
    assert "pipeline[0].run: stage 'a' changes run:, but the experiment has no run:" in \
        error_of("experiment: t\npipeline: [{name: a, run: {args: [x]}}]\n")
    assert "pipeline[1].run.args: {params.zz} names no param" in error_of(
        PIPE.replace("--from={stages.pre.dir}", "{params.zz}"))
    assert "run.args: {params.zz} names no param" in error_of(
        PIPE.replace("--lr={params.lr}", "{params.zz}"))
    assert "stage 'other': run: " in error_of(PIPE.replace("{module: pkg.other}",
                                                           "{module: not-a-module}"))
