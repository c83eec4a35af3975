"""The config reference documents every key the schema accepts (leaf keys, by their path
or its tail)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from hpcrun.config import ExperimentConfig, _model_of

DOC = (Path(__file__).resolve().parents[2] / "docs" / "config.md").read_text()


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
