"""What can be checked of the images without Docker: lint-clean Dockerfiles, pinned bases, a
non-root user, and image requirements pinned exactly as the project's lock."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
IMAGES = ["runtime", "operator"]


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)==([^\s;]+)", line.strip())
        if m:
            pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    return pins


@pytest.mark.parametrize("image", IMAGES)
def test_dockerfile_is_hadolint_clean(image):
    hadolint = Path(sys.executable).parent / "hadolint"
    done = subprocess.run(
        [str(hadolint), str(REPO / "images" / image / "Dockerfile")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("image", IMAGES)
def test_base_is_pinned_and_user_is_not_root(image):
    text = (REPO / "images" / image / "Dockerfile").read_text()
    base = re.search(r"^ARG BASE=(\S+)$", text, re.M)
    assert base, "the base image is an ARG with a default"
    _, _, tag = base.group(1).partition(":")
    assert tag and tag != "latest" and re.search(r"\d+\.\d+", tag), base.group(1)
    users = re.findall(r"^USER (\S+)$", text, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0")


@pytest.mark.parametrize("image", IMAGES)
def test_image_requirements_match_the_lock(image):
    lock = _pins(REPO / "requirements.lock")
    wanted = _pins(REPO / "images" / image / "requirements.txt")
    assert wanted
    assert {k: lock.get(k) for k in wanted} == wanted


def test_the_operator_package_declares_exactly_what_its_image_installs():
    import tomllib

    project = tomllib.loads((REPO / "operator" / "pyproject.toml").read_text())["project"]
    declared = {k.lower(): v for k, _, v in (d.partition("==") for d in project["dependencies"])}
    assert declared == _pins(REPO / "images" / "operator" / "requirements.txt")
    assert not {"torch", "numpy", "matplotlib", "scikit-learn"} & declared.keys()
