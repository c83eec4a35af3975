"""The bundle's include/exclude/allow and secret patterns: gitignore-like globs."""

from __future__ import annotations

import pytest

from hpcrun.bundle import SECRET_PATTERNS, _any, _matches


@pytest.mark.parametrize("rel, pattern, expected", [
    ("a/b/train.py", "*.py", True),              # no '/': a file name at any depth
    ("a/b/data/x.bin", "data/", True),           # 'name/': a directory at any depth
    ("a/data", "data/", False),                  # ... not a file of that name
    ("src/model.py", "src/*.py", True),          # other patterns with '/': from the top
    ("lib/src/model.py", "src/*.py", False),
    ("lib/src/model.py", "**/src/*.py", True),   # '**/': in every directory
    ("src/model.py", "**/src/*.py", True),       # ... the top included
    ("a/b/c/.docker/config.json", "**/.docker/config.json", True),
    ("docker/config.json", "**/.docker/config.json", False),
    ("anything/at/all", "**", True),
])
def test_patterns_match_like_gitignore_lines(rel, pattern, expected):
    assert _matches(rel, pattern) is expected


@pytest.mark.parametrize("rel", [
    ".docker/config.json", "home/.docker/config.json", "u/.config/gcloud/access_tokens.db",
    "deep/down/.aws/config", "x/.env", "certs/tls.key"])
def test_secret_files_are_found_at_any_depth(rel):
    assert _any(rel, SECRET_PATTERNS)


@pytest.mark.parametrize("rel", ["configs/docker/config.json", "src/config.json",
                                 "gcloud/notes.md", "envs/train.yaml"])
def test_ordinary_files_are_not_taken_for_secrets(rel):
    assert not _any(rel, SECRET_PATTERNS)
