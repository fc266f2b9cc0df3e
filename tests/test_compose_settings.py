"""docker-compose.yml's settings and .env.example agree: every variable compose reads is in the example with the default
compose uses, and the example names nothing compose does not read. No engine needed."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_env_example_lists_every_compose_setting_with_its_default() -> None:
    compose = (ROOT / "docker-compose.yml").read_text()
    defaults: dict[str, str] = {}
    for name, default in re.findall(r"\$\{([A-Z_]+):-([^}]*)\}", compose):
        assert defaults.setdefault(name, default) == default, f"{name} has two defaults in docker-compose.yml"
    example = dict(line.split("=", 1) for line in (ROOT / ".env.example").read_text().splitlines()
                   if line.strip() and not line.startswith("#"))
    assert example == defaults


def test_the_image_tag_is_the_release_and_every_recipe_names_it() -> None:
    """One tag per release (fedtl:latest was shared by every checkout on an engine: building one retagged another's)."""
    import tomllib

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    compose = (ROOT / "docker-compose.yml").read_text()
    assert f"${{FEDTL_IMAGE:-fedtl:{version}}}" in compose
    for doc in ("README.md", "docs/deployment.md"):
        tags = set(re.findall(r"\bfedtl:[0-9a-z.]+\b", (ROOT / doc).read_text()))
        assert tags == {f"fedtl:{version}"}, (doc, tags)
