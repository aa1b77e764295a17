"""pyproject.toml and environment.yml must declare the same dependencies."""

import re
from pathlib import Path

import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONDA_TO_PIP = {"pytorch": "torch"}  # conda-forge names that differ from PyPI's
NOT_PACKAGES = {"python", "pip"}


def split(requirement: str) -> tuple[str, str]:
    """'scikit-learn>=1.3' -> ('scikit-learn', '>=1.3'), names normalised as PEP 503 does."""
    name, spec = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*(.*?)\s*", requirement).groups()
    return re.sub(r"[-_.]+", "-", name).lower(), spec.replace(" ", "")


def pyproject_requirements() -> set[tuple[str, str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs += extra
    return {split(r) for r in reqs}


def conda_requirements() -> set[tuple[str, str]]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    out = set()
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            out |= {split(r) for r in dep["pip"] if not r.startswith("-e")}
            continue
        name, spec = split(dep)
        if name in NOT_PACKAGES:
            continue
        out.add((CONDA_TO_PIP.get(name, name), spec))
    return out


def test_environment_yml_and_pyproject_declare_the_same_dependencies():
    pip, conda = pyproject_requirements(), conda_requirements()
    assert pip - conda == set(), f"in pyproject.toml only: {sorted(pip - conda)}"
    assert conda - pip == set(), f"in environment.yml only: {sorted(conda - pip)}"
    assert ("torch", ">=2.3") in pip


def test_environment_yml_installs_the_package_itself():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "-e ." in pip_section


def test_readme_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "make test" in ci
