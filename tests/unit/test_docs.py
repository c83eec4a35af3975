"""The config reference documents every key the schema accepts, in the section of its
top-level key (or by its whole dotted path), with the default the schema gives it."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel

from hpcrun.config import ExperimentConfig, _model_of

REPO = Path(__file__).resolve().parents[2]
DOC = (REPO / "docs" / "config.md").read_text()


def keys(model: type[BaseModel], prefix: str = ""):
    """Every leaf key's dotted path; a pipeline stage's keys as ``pipeline.NAME``."""
    for name, field in model.model_fields.items():
        sub = _model_of(field.annotation)
        if sub is None:
            yield f"{prefix}{name}"
        else:
            yield from keys(sub, f"{prefix}{name}.")


def _sections(doc: str) -> dict[str, str]:
    """``## `name` ...`` sections by each top-level key their heading names ("" for the
    "Top level" section)."""
    out: dict[str, str] = {}
    for section in re.split(r"^(?=## )", doc, flags=re.M):
        heading = section.splitlines()[0] if section.startswith("## ") else ""
        names = re.findall(r"`(\w+)`", heading) or ([""] if heading == "## Top level" else [])
        for name in names:
            out[name] = out.get(name, "") + section
    return out


def _mentions(text: str, name: str) -> bool:
    """``name`` in backticks, alone or at the start of a code span (`key: value`, `key=`)."""
    return re.search(r"`" + re.escape(name) + r"(`|[ ,:=(\[])", text) is not None


def documented(dotted: str, doc: str = DOC) -> bool:
    """Named by its whole dotted path, or inside its top-level key's section by the rest of
    its path (or its tail): ``max_array_size`` counts in the `resources` section only."""
    if _mentions(doc, dotted):
        return True
    parts = dotted.split(".")
    top, rest = (parts[0], parts[1:]) if len(parts) > 1 else ("", parts)
    section = _sections(doc).get(top, "")
    return any(_mentions(section, ".".join(rest[i:])) for i in range(len(rest)))


def test_every_config_key_is_documented():
    found = list(keys(ExperimentConfig))
    missing = [key for key in found if not documented(key)]
    assert len(found) > 100 and missing == []


def test_a_key_named_only_in_another_section_is_not_documented():
    """The check above can fail: a leaf name that appears elsewhere does not count."""
    doc = "## `model`\n\n`dropout` and `hidden`\n\n## `training`\n\n| `lr` | 0.001 |\n"
    assert documented("model.dropout", doc) and documented("training.lr", doc)
    assert not documented("training.dropout", doc)
    assert not documented("model.lr", doc)
    assert not documented("resources.slurm.max_array_size", doc)


def test_every_red_flag_has_advice_and_a_section_in_red_flags_md():
    import re

    from hpcrun import diagnose

    source = (REPO / "src" / "hpcrun" / "diagnose.py").read_text()
    raised = set(re.findall(r'Flag\(\s*"([a-z_]+)"', source))
    assert raised and raised == set(diagnose.ADVICE), raised ^ set(diagnose.ADVICE)
    doc = (REPO / "docs" / "red-flags.md").read_text()
    assert set(re.findall(r"^### `([a-z_]+)`$", doc, re.M)) == raised


#: default cells that name no value (a rule, or "not set")
_PROSE = {"file name", "—", "required", "all others", "by mode"}


def _documented_defaults():
    """(dotted key, documented default) from the tables of docs/config.md."""
    import re

    import yaml

    prefix = None
    for line in DOC.splitlines():
        heading = re.match(r"^#{2,3} (.*)$", line)
        if heading:
            title = heading.group(1)
            names = re.findall(r"`(\w+)`", title)
            prefix = "" if title == "Top level" else (
                f"{names[-1]}." if len(names) == 1 and names[0] != "pipeline" else None)
            continue
        row = re.match(r"^\| (`[^|]+`) \| ([^|]*) \|", line)
        if prefix is None or not row or row.group(2).strip() in _PROSE:
            continue
        keys = re.findall(r"`([\w.]+)`", row.group(1))
        cell = row.group(2).strip()
        values = [cell] if len(keys) == 1 else yaml.safe_load(f"[{cell}]")
        for key, value in zip(keys, values, strict=True):
            key = key if "." in key and key.split(".")[0] in ("run", "sync") else prefix + key
            yield key, yaml.safe_load(value) if isinstance(value, str) else value


def _schema_default(dotted: str):
    model: type[BaseModel] = ExperimentConfig
    parts = dotted.split(".")
    for part in parts[:-1]:
        model = _model_of(model.model_fields[part].annotation)
    field = model.model_fields[parts[-1]]
    return field.get_default(call_default_factory=True)


def _same(documented, actual) -> bool:
    if isinstance(actual, BaseModel):
        actual = actual.model_dump()
    if isinstance(documented, str) and not isinstance(actual, str):
        try:
            documented = float(documented)
        except ValueError:
            return False
    if isinstance(actual, bool) or isinstance(documented, bool):
        return documented is actual or documented == actual
    if isinstance(actual, int | float) and isinstance(documented, int | float):
        return float(actual) == float(documented)
    return documented == actual


def test_documented_defaults_are_the_schemas():
    """Each default in docs/config.md's tables is what the schema gives a key nobody set."""
    checked, wrong = 0, []
    for key, documented in _documented_defaults():
        actual = _schema_default(key)
        checked += 1
        if not _same(documented, actual):
            wrong.append(f"{key}: documented {documented!r}, schema {actual!r}")
    assert checked > 60 and wrong == []


def test_what_extends_base_changes_is_documented():
    """configs/base.yaml sets some keys to other values than the schema's defaults: the doc
    says which, so a reader of its tables is not surprised."""
    import yaml

    base = yaml.safe_load((REPO / "configs" / "base.yaml").read_text())

    def leaves(data, prefix=""):
        for key, value in data.items():
            if isinstance(value, dict) and key not in ("components", "scheduler_args"):
                yield from leaves(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value

    changed = [key for key, value in leaves(base) if not _same(value, _schema_default(key))]
    section = DOC.split("### What `extends: base` changes")[1].split("\n## ")[0]
    assert changed and [k for k in changed if f"`{k}`" not in section] == []


def test_every_test_docs_security_md_names_exists():
    """docs/security.md names in brackets the test that holds each statement: each exists."""
    doc = (REPO / "docs" / "security.md").read_text()
    named = set(re.findall(r"\b(test_\w+)", " ".join(re.findall(r"\[([^\]]*)\]", doc))))
    defined = set()
    for path in (REPO / "tests").rglob("test_*.py"):
        defined |= set(re.findall(r"^def (test_\w+)", path.read_text(), re.M))
    assert len(named) > 30 and named - defined == set()
