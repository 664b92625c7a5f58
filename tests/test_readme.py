"""The front page and the docs point at things that exist: every relative link, every repo path named."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
#: top-level entries of the repository: a `code` span starting with one of them names a repo path
TOP = ("mmin_plugin/", "tests/", "docs/", "benchmarks/", "reference/", ".ci/", "registry.json", "pyproject.toml",
       "setup.py")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
CODE = re.compile(r"`([^`\s]+)`")


def _links(page):
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if not re.match(r"^[a-z]+:", target) and not target.startswith("#"):
            yield target.split("#")[0]


def _repo_paths(page):
    for token in CODE.findall(page.read_text(encoding="utf-8")):
        if token.startswith(TOP) and not any(c in token for c in "<>*{"):
            yield token.rstrip(".,;:")


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_relative_links_and_named_paths_exist(page):
    missing = [t for t in _links(page) if not (page.parent / t).exists()]
    missing += [t for t in _repo_paths(page) if not (ROOT / t.split("::")[0]).exists()]
    assert not missing, f"{page.relative_to(ROOT)} names what does not exist: {missing}"


def test_the_checker_finds_links_and_paths(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("[a](docs/x.md) [b](https://e.org) see `mmin_plugin/cli.py` and `--out`")
    assert list(_links(page)) == ["docs/x.md"] and list(_repo_paths(page)) == ["mmin_plugin/cli.py"]


def test_readme_is_a_front_page():
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 220
