"""The bundle's include/exclude/allow and secret patterns: .gitignore lines (pathspec)."""

from __future__ import annotations

import pytest

from hpcrun.bundle import _any, is_secret


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
    assert _any(rel, [pattern]) is expected


@pytest.mark.parametrize("rel", [
    ".docker/config.json", "home/.docker/config.json", "u/.config/gcloud/access_tokens.db",
    "deep/down/.aws/config", "x/.env", "certs/tls.key",
    # whatever the case, and the other common homes of keys and tokens
    "ID_RSA", "SERVER.PEM", "tls/KEY.KEY", ".ENV", ".env~", ".env.local", "store.jks",
    "kubeconfig", "deploy/kubeconfig.yaml", "gcp/service-account.json", ".vault-token",
    ".hf_token", "home/.cache/huggingface/token", ".htpasswd", "infra/terraform.tfstate",
    "infra/terraform.tfstate.backup", "prod.tfvars", "rclone.conf", "putty.ppk",
    "oauth_token.json"])
def test_secret_files_are_found_at_any_depth(rel):
    assert is_secret(rel)


@pytest.mark.parametrize("rel", ["configs/docker/config.json", "src/config.json",
                                 "gcloud/notes.md", "envs/train.yaml", "src/tokenizer.py",
                                 "data/tokens.csv", "environment.yml", "keys.md",
                                 "src/hpcrun/key_value.py"])
def test_ordinary_files_are_not_taken_for_secrets(rel):
    assert not is_secret(rel)
