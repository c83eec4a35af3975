"""The config reference documents every key the schema accepts (leaf keys, by their path
or its tail)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from hpcrun.config import ExperimentConfig, _model_of

REPO = Path(__file__).resolve().parents[2]
DOC = (REPO / "docs" / "config.md").read_text()


def keys(model: type[BaseModel], prefix: str = ""):
    for name, field in model.model_fields.items():
        sub = _model_of(field.annotation)
        if sub is None:
            yield prefix, name
        elif name != "pipeline" or prefix:
            yield from keys(sub, f"{prefix}{name}.")
        else:
            yield from keys(sub, "")  # stage keys are documented in their own table


def documented(dotted: str) -> bool:
    parts = dotted.split(".")
    suffixes = [".".join(parts[i:]) for i in range(len(parts))]
    return any(f"`{s}`" in DOC or f"`{s}," in DOC or f", `{s}`" in DOC or f"`{s} " in DOC
               for s in suffixes)


def test_every_config_key_is_documented():
    missing = [f"{prefix}{name}" for prefix, name in keys(ExperimentConfig)
               if not documented(f"{prefix}{name}")]
    assert missing == []


def test_every_red_flag_has_advice_and_a_section_in_red_flags_md():
    import re

    from hpcrun import diagnose

    source = (REPO / "src" / "hpcrun" / "diagnose.py").read_text()
    raised = set(re.findall(r'Flag\(\s*"([a-z_]+)"', source))
    assert raised and raised == set(diagnose.ADVICE), raised ^ set(diagnose.ADVICE)
    doc = (REPO / "docs" / "red-flags.md").read_text()
    assert set(re.findall(r"^### `([a-z_]+)`$", doc, re.M)) == raised
