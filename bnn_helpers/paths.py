"""Where the project writes figures, checkpoints and runs.

Notebooks run with ``notebooks/`` as working directory and the tests run them
in a scratch folder, so every location is resolved here once:

* ``BNN_FIGS_DIR``        figures (default ``<repo>/Figs``)
* ``BNN_CHECKPOINTS_DIR`` cached trained networks (default ``<repo>/checkpoints``)
* ``BNN_RUNS_DIR``        training run directories (default ``<repo>/runs``)

The tests point all three at temporary folders, so a smoke run never replaces
a committed figure or a cached full-size network.
"""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["repo_root", "figs_dir", "checkpoints_dir", "runs_dir"]


def repo_root(start: str | os.PathLike | None = None) -> Path:
    """The nearest folder at or above ``start`` (default: cwd) holding ``pyproject.toml``.

    Falls back to ``start`` itself when the package is used outside the repo.
    """
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "bnn_helpers").is_dir():
            return folder
    return here


def _location(env: str, default: str) -> Path:
    path = Path(os.environ[env]) if os.environ.get(env) else repo_root() / default
    path.mkdir(parents=True, exist_ok=True)
    return path


def figs_dir() -> Path:
    return _location("BNN_FIGS_DIR", "Figs")


def checkpoints_dir() -> Path:
    return _location("BNN_CHECKPOINTS_DIR", "checkpoints")


def runs_dir() -> Path:
    return _location("BNN_RUNS_DIR", "runs")
