"""The operator installs alone: its image's requirements and its own package (operator/), into a
fresh venv, with no torch and no development tools, and every module of it imports and runs.
What the image's build stage does, without Docker."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
UV = Path(sys.executable).parent / "uv"
SKIP = shutil.ignore_patterns("__pycache__", "build", "*.egg-info")


def _run(*argv: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=600)


def _ok(*argv: object) -> str:
    done = _run(*argv)
    assert done.returncode == 0, f"{argv}: {done.stdout}{done.stderr}"
    return done.stdout


def _mib(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20


IMPORT_ALL = """
import importlib, pkgutil, distml
for m in pkgutil.walk_packages(distml.__path__, "distml."):
    importlib.import_module(m.name)
    print(m.name)
"""


def test_the_operator_installs_and_runs_without_torch_or_the_dev_tools(tmp_path):
    venv = tmp_path / "venv"
    py = venv / "bin" / "python"
    _ok(UV, "venv", "-q", "--python", sys.executable, venv)
    _ok(UV, "pip", "install", "-q", "--python", py, "-r", REPO / "images/operator/requirements.txt")
    # Built from a copy: setuptools writes build/ and egg-info/ next to the sources.
    source = shutil.copytree(REPO / "operator", tmp_path / "operator", ignore=SKIP)
    _ok(UV, "pip", "install", "-q", "--python", py, "--no-deps", source)

    modules = _ok(py, "-c", IMPORT_ALL).split()
    assert "distml.handlers.operator" in modules and "distml.trainingjob.planner" in modules
    dev_tools = ("distml.localcluster", "distml.localnode", "distml.dashboards")
    assert not [m for m in modules if m.startswith(dev_tools)]
    dev_only = ("torch", "numpy", "matplotlib", "sklearn", "cryptography", "grafana_foundation_sdk")
    for absent in (*dev_only, "distml_runtime"):
        done = _run(py, "-c", f"import {absent}")
        assert "ModuleNotFoundError" in done.stderr, f"{absent} is installed with the operator"
    usage = _ok(py, "-m", "distml", "--help")
    assert "--node-loss-seconds" in usage

    (site,) = venv.glob("lib/python*/site-packages")
    dev = next(Path(sys.prefix).glob("lib/python*/site-packages"))
    ours, full = _mib(site), _mib(dev)
    print(
        f"\n[operator package] {len(modules)} modules; installed with its requirements "
        f"{ours:.0f} MiB, the development venv {full:.0f} MiB ({ours / full:.1%})"
    )
