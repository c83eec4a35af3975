"""The pod agent's bundle freeze: every synced file is checked against the manifest first."""

from __future__ import annotations

import hashlib

from hpcrun import agent


def _request(tmp_path, files: dict[str, bytes], manifest: dict[str, bytes]) -> dict:
    code = tmp_path / "code"
    for rel, data in files.items():
        (code / rel).parent.mkdir(parents=True, exist_ok=True)
        (code / rel).write_bytes(data)
    lines = "".join(f"{hashlib.sha256(data).hexdigest()}  {rel}\n"
                    for rel, data in manifest.items())
    return {"code": str(code), "target": str(tmp_path / "bundles" / "abc"),
            "files": {"BUNDLE.sha256": lines, "bundle.json": "{}\n"}}


def test_a_complete_sync_is_verified_and_frozen_once(tmp_path):
    files = {"train.py": b"print(1)\n", "pkg/model.py": b"x = 2\n"}
    request = _request(tmp_path, files, files)
    assert agent.snapshot(request) == {"created": True, "verified": 2, "mismatched": []}
    assert (tmp_path / "bundles" / "abc" / "pkg" / "model.py").read_bytes() == b"x = 2\n"
    assert agent.snapshot(request)["created"] is False  # frozen (and checked) before


def test_a_cut_short_sync_freezes_nothing_and_names_the_files(tmp_path):
    whole = {"train.py": b"print(1)\n", "data.bin": b"0" * 4096, "gone.py": b"y = 1\n"}
    synced = {"train.py": whole["train.py"], "data.bin": b"0" * 100}  # truncated, one missing
    answer = agent.snapshot(_request(tmp_path, synced, whole))
    assert answer["created"] is False and sorted(answer["mismatched"]) == ["data.bin", "gone.py"]
    assert not (tmp_path / "bundles").exists() or not any((tmp_path / "bundles").iterdir())
