"""`pip install .` (or `-e .`) gives a `captioning` command that finds the shipped model and the sample from any
folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import venv
from pathlib import Path

import pytest
from conftest import REPO
from fixtures import draw


def test_pyproject_takes_its_dependencies_from_requirements_txt():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "dependencies" in project["project"]["dynamic"] and "dependencies" not in project["project"]
    assert project["tool"]["setuptools"]["dynamic"]["dependencies"] == {"file": ["requirements.txt"]}
    assert project["project"]["scripts"] == {"captioning": "captioning.cli:main"}


@pytest.mark.slow
def test_pip_install_editable_gives_a_working_captioning_command(tmp_path):
    env_dir = tmp_path / "fresh"
    venv.create(env_dir, with_pip=True)  # a fresh environment: only pip and setuptools in it
    python = env_dir / "bin" / "python"
    # the dependencies are the project venv's (installing torch again would take minutes); the package itself,
    # its metadata and its command come from this install
    install = subprocess.run([python, "-m", "pip", "install", "--no-deps", "-e", str(REPO)], capture_output=True,
                             text=True, timeout=300)  # fmt: skip
    if "satisfies the requirement setuptools" in install.stderr:  # pip fetches the build backend from the index
        pytest.skip("no package index here to fetch setuptools (the build backend) from")
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-2000:]
    command = env_dir / "bin" / "captioning"
    assert command.is_file()
    env = {**os.environ, "PYTHONPATH": sysconfig.get_paths()["purelib"]}  # the project venv's site-packages
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    helped = subprocess.run([command, "--help"], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0 and "caption" in helped.stdout and "karpathy-split" in helped.stdout
    draw("red", "circle", size=96).save(elsewhere / "photo.jpg")
    if not (REPO / "captioning" / "shipped" / "default.pt").is_file():
        pytest.skip("no shipped checkpoint in this checkout")
    captioned = subprocess.run([command, "caption", "photo.jpg", "--json"], cwd=elsewhere, env=env,
                               capture_output=True, text=True, timeout=300)  # fmt: skip
    assert captioned.returncode == 0, captioned.stderr[-2000:]
    assert json.loads(captioned.stdout)[0]["caption"]
    module = subprocess.run([sys.executable, "-m", "captioning", "--help"], cwd=REPO, capture_output=True, text=True)
    assert module.returncode == 0  # python -m captioning still works
    found = subprocess.run([python, "-c", "from captioning.data import SAMPLE_ROOT; print(SAMPLE_ROOT)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True)  # fmt: skip
    assert Path(found.stdout.strip()) == REPO / "captioning" / "sample"


def _fresh_venv(where: Path) -> Path:
    venv.create(where, with_pip=True)  # a fresh environment: only pip and setuptools in it
    return where / "bin" / "python"


@pytest.mark.slow
def test_a_non_editable_install_finds_and_uses_the_shipped_model(tmp_path):
    if not (REPO / "captioning" / "shipped" / "default.pt").is_file():
        pytest.skip("no shipped checkpoint in this checkout")
    source = tmp_path / "source"  # a copy, so the build leaves nothing in the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "requirements.txt"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "captioning", source / "captioning", ignore=shutil.ignore_patterns("__pycache__"))
    python = _fresh_venv(tmp_path / "fresh")
    install = subprocess.run([python, "-m", "pip", "install", "--no-deps", str(source)], capture_output=True,
                             text=True, timeout=600)  # fmt: skip
    if "satisfies the requirement setuptools" in install.stderr:  # pip fetches the build backend from the index
        pytest.skip("no package index here to fetch setuptools (the build backend) from")
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-2000:]
    shutil.rmtree(source)  # nothing of the source tree is left to fall back on
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    draw("red", "circle", size=96).save(elsewhere / "photo.jpg")
    env = {**os.environ, "PYTHONPATH": sysconfig.get_paths()["purelib"]}  # the dependencies: the project venv's
    env.pop("CAPTIONING_CHECKPOINT", None)
    where = subprocess.run([python, "-c", "import captioning.checkpoint as c; print(c.default_checkpoint())"],
                           cwd=elsewhere, env=env, capture_output=True, text=True)  # fmt: skip
    installed = Path(where.stdout.strip())
    assert installed.is_file() and "site-packages" in str(installed) and REPO not in installed.parents
    captioned = subprocess.run([tmp_path / "fresh" / "bin" / "captioning", "caption", "photo.jpg", "--json"],
                               cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert captioned.returncode == 0, captioned.stderr[-2000:]
    assert json.loads(captioned.stdout)[0]["caption"]
