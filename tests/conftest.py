"""Test-wide setup: non-interactive plots, scratch folders, modest threading."""
import os

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(autouse=True, scope="session")
def _scratch_output_dirs(tmp_path_factory):
    """Point figures, checkpoints and runs at scratch folders for the whole session.

    A test must never replace a committed figure or a cached full-size network.
    """
    saved = {k: os.environ.get(k) for k in ("BNN_FIGS_DIR", "BNN_CHECKPOINTS_DIR", "BNN_RUNS_DIR")}
    root = tmp_path_factory.mktemp("bnn_outputs")
    for key in saved:
        os.environ[key] = str(root / key.lower())
    yield root
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def single_thread():
    """One torch thread for a module: small convs run far slower with two
    threads when the two cores are shared with other work."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
