"""Where the project writes figures, checkpoints and runs.

Notebooks run with ``notebooks/`` as working directory and the tests run them
in a scratch folder, so every location is resolved here once:

* ``BNN_FIGS_DIR``        figures (default ``<repo>/Figs``)
* ``BNN_CHECKPOINTS_DIR`` cached trained networks (default ``<repo>/checkpoints``)
* ``BNN_RUNS_DIR``        training run directories (default ``<repo>/runs``)

The tests point all three at temporary folders, so a smoke run never replaces
a committed figure or a cached full-size network. :func:`display_path` prints a
path without this machine's part, so committed notebook outputs stay portable.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["repo_root", "figs_dir", "checkpoints_dir", "runs_dir", "display_path"]


def repo_root(start: str | os.PathLike | None = None) -> Path:
    """The nearest folder at or above ``start`` (default: cwd) holding ``pyproject.toml``.

    Falls back to ``start`` itself when the package is used outside the repo.
    """
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "bnn_helpers").is_dir():
            return folder
    return here


def _where(env: str, default: str) -> Path:
    return Path(os.environ[env]) if os.environ.get(env) else repo_root() / default


def _location(env: str, default: str) -> Path:
    path = _where(env, default)
    path.mkdir(parents=True, exist_ok=True)
    return path


def figs_dir() -> Path:
    return _location("BNN_FIGS_DIR", "Figs")


def checkpoints_dir() -> Path:
    return _location("BNN_CHECKPOINTS_DIR", "checkpoints")


def runs_dir() -> Path:
    return _location("BNN_RUNS_DIR", "runs")


def display_path(path: str | os.PathLike) -> str:
    """``path`` as printed output should show it: ``<runs>/...``, ``<checkpoints>/...``,
    ``<tmp>/...`` or relative to the repository root; otherwise only its name.

    Printed notebook outputs are committed: they must not carry this machine's
    absolute paths.
    """
    path = Path(path).resolve()
    bases = (("<runs>", _where("BNN_RUNS_DIR", "runs")),   # _where: naming a path creates no folder
             ("<checkpoints>", _where("BNN_CHECKPOINTS_DIR", "checkpoints")),
             ("<tmp>", Path(tempfile.gettempdir())))
    for label, base in bases:
        if path.is_relative_to(base.resolve()):
            inside = path.relative_to(base.resolve())
            return label if inside == Path(".") else f"{label}/{inside}"
    root = repo_root()
    if path.is_relative_to(root):
        return str(path.relative_to(root))
    return path.name
