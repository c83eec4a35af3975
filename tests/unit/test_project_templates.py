"""A project's own ``templates/`` folder replaces hpcrun's job templates by name; templates it
does not have still come from hpcrun. Rendered through ``ops.submit --dry-run``."""

from __future__ import annotations

import pytest

from hpcrun import ops

OWN_SBATCH = """#!/bin/bash
# site template of {{ experiment }}, stage {{ stage }}
#SBATCH --job-name={{ name | q }}
#SBATCH --partition=site-gpu
echo {{ run_dirs[0] | q }}
"""


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = tmp_path / "project"
    (root / "templates").mkdir(parents=True)
    (root / "templates" / "slurm.sbatch.j2").write_text(OWN_SBATCH)
    return root


def test_the_projects_sbatch_template_is_the_script(project):
    result = ops.submit("v3", backend="slurm", dry_run=True, project_dir=project)
    stages = [p.stage for p in result.plans]
    assert stages == ["pretrain", "finetune", "eval"]
    for plan in result.plans:
        assert plan.script.startswith(f"#!/bin/bash\n# site template of v3, stage {plan.stage}\n")
        assert "#SBATCH --partition=site-gpu" in plan.script
        assert "HPCRUN_" not in plan.script  # nothing of hpcrun's own template
    assert result.jobs[0].run_dir in result.plans[0].script


def test_templates_the_project_does_not_have_are_hpcruns(project, tmp_path):
    own = ops.submit("v3", backend="local", dry_run=True, project_dir=project)
    plain_root = tmp_path / "plain"
    plain_root.mkdir()
    plain = ops.submit("v3", backend="local", dry_run=True, project_dir=plain_root)
    [mine], [theirs] = own.plans, plain.plans
    assert "site template" not in mine.script
    # the same shipped template: line for line, but for the paths of the two projects
    assert len(mine.script.splitlines()) == len(theirs.script.splitlines())
    assert "HPCRUN_RUN_ROOT" in mine.script


def test_without_a_templates_folder_hpcruns_sbatch_template_is_used(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    root = tmp_path / "bare"
    root.mkdir()
    result = ops.submit("v3", backend="slurm", dry_run=True, project_dir=root)
    assert all("site template" not in p.script and "#SBATCH" in p.script
               for p in result.plans)
