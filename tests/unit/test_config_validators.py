"""The rules config.py's validators enforce, each seen from the outside: a config that breaks
one is refused with one line naming the key and how to fix it; one that keeps it loads with
the values it gave. Boundaries are tried on both sides."""

from __future__ import annotations

import pytest

from hpcrun.config import RemoteConfig, load_config_text
from hpcrun.errors import ConfigError


def loads(text: str):
    return load_config_text("experiment: t\n" + text)


def refused(text: str) -> str:
    """The one-line message a config with ``text`` under its ``experiment:`` gets."""
    with pytest.raises(ConfigError) as info:
        loads(text)
    message = str(info.value)
    assert "\n" not in message
    return message


def remote_refused(**fields) -> str:
    with pytest.raises(ValueError) as info:
        RemoteConfig(**{"host": "pod", "workdir": "/w", **fields})
    return str(info.value)


# --- data -----------------------------------------------------------------------------------

def test_a_files_source_needs_a_path():
    message = refused("data: {source: files}\n")
    assert message == ("<config>: data: data.source 'files' needs data.path (a directory or "
                       "a file)")
    assert "data.path" in refused("data: {source: files, path: ''}\n")
    data = loads("data: {source: files, path: data/}\n").data
    assert (data.source, data.path) == ("files", "data/")
    # the synthetic generator needs no path
    assert loads("data: {source: synthetic}\n").data.path is None


def test_informative_features_may_be_all_of_them_but_not_more():
    assert loads("data: {features: 5, informative: 5}\n").data.informative == 5
    assert loads("data: {features: 5, informative: 1}\n").data.informative == 1
    assert refused("data: {features: 5, informative: 6}\n") == (
        "<config>: data: data.informative (6) cannot exceed data.features (5)")


def test_validation_and_test_fractions_leave_over_ten_percent_for_training():
    data = loads("data: {val_fraction: 0.4, test_fraction: 0.45}\n").data
    assert (data.val_fraction, data.test_fraction) == (0.4, 0.45)
    for val, test in ((0.45, 0.45), (0.5, 0.45), (0.1, 0.8)):
        assert refused(f"data: {{val_fraction: {val}, test_fraction: {test}}}\n") == (
            "<config>: data: data.val_fraction + data.test_fraction must leave >10% for "
            "training"), (val, test)


# --- model, scheduler, early stopping, loss, training ---------------------------------------

def test_a_model_is_mlp_or_a_factory():
    assert loads("model: {name: mlp}\n").model.name == "mlp"
    assert loads("model: {name: 'pkg.models:build'}\n").model.name == "pkg.models:build"
    assert loads("model: {name: 'models:build'}\n").model.name == "models:build"
    for bad in ("resnet", "MLP", "pkg.models", "pkg.models:", "pkg models:build"):
        assert refused(f"model: {{name: '{bad}'}}\n") == (
            f"<config>: model.name: unknown model '{bad}': use 'mlp' or "
            "'package.module:factory'"), bad


def test_a_plateau_scheduler_takes_no_warmup():
    assert refused("training: {scheduler: {type: plateau, warmup_epochs: 1}}\n") == (
        "<config>: training.scheduler: scheduler 'plateau' cannot be combined with "
        "warmup_epochs")
    plateau = loads("training: {scheduler: {type: plateau, warmup_epochs: 0}}\n")
    assert plateau.training.scheduler.type == "plateau"
    for other in ("cosine", "step", "none"):
        warm = loads(f"training: {{scheduler: {{type: {other}, warmup_epochs: 2}}}}\n")
        assert warm.training.scheduler.warmup_epochs == 2, other


def test_early_stopping_watches_a_validation_metric():
    for metric in ("val_loss", "val_auroc", "val_f1", "val_mcc"):
        stopping = loads(f"training: {{early_stopping: {{metric: {metric}}}}}\n")
        assert stopping.training.early_stopping.metric == metric
    for bad in ("auroc", "val_foo", "train_loss", "loss"):
        message = refused(f"training: {{early_stopping: {{metric: {bad}}}}}\n")
        assert message.startswith(f"<config>: training.early_stopping.metric: unknown metric "
                                  f"'{bad}'; allowed: val_loss, val_auroc, "), bad
        assert message.endswith(", val_f1, val_mcc")


def test_a_loss_keeps_at_least_one_term_with_a_weight():
    message = "<config>: training.loss: training.loss.components needs at least one weight > 0"
    assert refused("training: {loss: {components: {classification: 0}}}\n") == message
    assert refused("training: {loss: {components: {}}}\n") == message
    assert refused("training: {loss: {components: {classification: 0, "
                   "reconstruction: 0}}}\n") == message
    loss = loads("training: {loss: {components: {classification: 0, "
                 "reconstruction: 0.5}}}\n").training.loss
    assert loss.components == {"classification": 0.0, "reconstruction": 0.5}


def test_loss_component_names_are_plain_names():
    message = refused("training: {loss: {components: {classification: 1, 'a b': 1}}}\n")
    assert message.startswith("<config>: training.loss: loss component 'a b' must be 1-64 ")
    assert refused("training: {loss: {components: {classification: 1, 'x/y': 0}}}\n")
    assert loads("training: {loss: {components: {classification: 1, my.term-2: 0.1}}}\n")


def test_the_global_batch_splits_evenly_into_micro_steps():
    training = loads("training: {batch_size: 12, grad_accum_steps: 3}\n").training
    assert (training.batch_size, training.grad_accum_steps) == (12, 3)
    assert loads("training: {batch_size: 7, grad_accum_steps: 7}\n").training.batch_size == 7
    assert refused("training: {batch_size: 10, grad_accum_steps: 4}\n") == (
        "<config>: training: training.batch_size (10) must be divisible by "
        "training.grad_accum_steps (4)")
    assert "divisible" in refused("training: {batch_size: 3, grad_accum_steps: 4}\n")


# --- distributed and run -------------------------------------------------------------------

def test_an_old_nnodes_key_is_dropped_and_the_rest_of_distributed_kept():
    distributed = loads("distributed: {nnodes: 2, enabled: true, backend: gloo, "
                        "nproc_per_node: 2, rdzv_timeout: 60, timeout_s: 30}\n").distributed
    assert (distributed.enabled, distributed.backend, distributed.nproc_per_node,
            distributed.rdzv_timeout, distributed.timeout_s) == (True, "gloo", 2, 60, 30)
    assert loads("distributed: {enabled: 'False'}\n").distributed.enabled is False
    assert loads("distributed: {enabled: TRUE}\n").distributed.enabled is True


@pytest.mark.parametrize("value", ["5", "[nnodes]", "nnodes"])
def test_a_distributed_section_that_is_no_mapping_gets_one_clean_line(value):
    assert refused(f"distributed: {value}\n").startswith(
        "<config>: distributed: Input should be a valid dictionary")


def test_a_command_names_its_program_first():
    assert "command must name a program: command: [python, -u, train.py]" in refused(
        "run: {command: ['', train.py]}\n")
    # an empty argument after the program is passed on as it is
    assert loads("run: {command: [python, '']}\n").run.command == ["python", ""]


# --- the experiment and its pipeline ---------------------------------------------------------

def test_an_eval_only_stage_needs_a_checkpoint():
    assert refused("pipeline: [{name: a, mode: eval_only}]\n").endswith(
        "pipeline[0] (a) is eval_only but has no checkpoint: set init_from to an earlier "
        "stage or a .pt file")
    ok = loads("pipeline: [{name: a}, {name: b, mode: eval_only, init_from: a}]\n")
    assert [(s.name, s.mode, s.init_from) for s in ok.pipeline] == [
        ("a", "full_pipeline", None), ("b", "eval_only", "a")]
    assert loads("pipeline: [{name: a, mode: eval_only, init_from: w.pt}]\n").pipeline[
        0].init_from == "w.pt"


def test_a_stage_starts_from_an_earlier_stage_only():
    assert "pipeline[1].init_from: 'b' is not an earlier stage (earlier: a)" in refused(
        "pipeline: [{name: a}, {name: b, init_from: b}]\n")
    assert "pipeline[0].init_from: 'b' is not an earlier stage" in refused(
        "pipeline: [{name: a, init_from: b}, {name: b}]\n")
    assert "(earlier: a, b)" in refused(
        "pipeline: [{name: a}, {name: b}, {name: c, init_from: d}]\n")
    chain = loads("pipeline: [{name: a}, {name: b, init_from: a}, {name: c, init_from: a}]\n")
    assert [s.init_from for s in chain.pipeline] == [None, "a", "a"]


def test_experiment_names_and_run_directories():
    assert loads("seed: 1\n").experiment == "t"
    assert refused("runs_dir: ''\n").startswith("<config>: runs_dir: ")
    assert loads("runs_dir: /scratch/me/runs\n").runs_dir == "/scratch/me/runs"
    with pytest.raises(ConfigError, match="experiment name 'a b' must be 1-64"):
        load_config_text("experiment: a b\n")


# --- remotes ---------------------------------------------------------------------------------

def test_a_remote_host_is_set_and_plain():
    assert "host is empty (set it, e.g. export RUNPOD_HOST=...)" in remote_refused(host="")
    assert "host" in remote_refused(host="-oProxyCommand=x")
    assert RemoteConfig(host="login.example.org", workdir="/w").host == "login.example.org"


def test_a_remote_user_is_optional_and_plain():
    assert RemoteConfig(host="pod", workdir="/w", user="me").user == "me"
    assert RemoteConfig(host="pod", workdir="/w", user="").user is None
    assert RemoteConfig(host="pod", workdir="/w").user is None
    assert "user" in remote_refused(user="-l root")


def test_a_remote_python_is_a_program_not_an_option():
    for bad in ("", "-c", "-m venv"):
        assert f"{bad!r} is not a python interpreter (a name on PATH or a path)" in \
            remote_refused(python=bad), bad
        assert "is not a python interpreter" in remote_refused(base_python=bad), bad
    remote = RemoteConfig(host="pod", workdir="/w", python="/opt/py/bin/python3",
                          base_python="python3.11")
    assert (remote.python, remote.base_python) == ("/opt/py/bin/python3", "python3.11")
    assert RemoteConfig(host="pod", workdir="/w").python is None
    assert "control characters" in remote_refused(python="/opt/py\n")


def test_a_remote_torch_is_one_line_of_pip_arguments_or_nothing():
    spec = "torch==2.4.1 --index-url https://download.pytorch.org/whl/cu121"
    assert RemoteConfig(host="pod", workdir="/w", torch=spec).torch == spec
    for blank in ("", "  "):
        assert RemoteConfig(host="pod", workdir="/w", torch=blank).torch is None
    assert RemoteConfig(host="pod", workdir="/w").torch is None
    assert "one shell line" in remote_refused(torch="torch\r--pre")


def test_a_remote_forwards_variables_by_plain_name():
    assert RemoteConfig(host="pod", workdir="/w", env=["WANDB_API_KEY", "HF_TOKEN"]).env == [
        "WANDB_API_KEY", "HF_TOKEN"]
    for bad in ("*", "HF_*", "1X"):
        assert "env" in remote_refused(env=["HOME", bad]), bad


def test_ssh_options_are_name_value_pairs_that_leave_host_keys_alone():
    options = ["ProxyJump=bastion", "Compression=yes", "ServerAliveInterval=30"]
    assert RemoteConfig(host="pod", workdir="/w", ssh_options=options).ssh_options == options
    for option in (" StrictHostKeyChecking=no", "HostKeyAlias =x", "UserKnownHostsFile"):
        assert "is refused: host keys are checked against hpcrun's own known_hosts" in \
            remote_refused(ssh_options=["Compression=yes", option]), option
    assert "ssh option" in remote_refused(ssh_options=["Compression=yes", "-v"])
