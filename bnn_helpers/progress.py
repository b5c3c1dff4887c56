"""Progress display of a training run: a tqdm bar in a terminal or notebook, plain
periodic lines in logs, nothing on processes other than rank 0."""
from __future__ import annotations

import sys

__all__ = ["Progress", "in_notebook"]


class Progress:
    """tqdm in a terminal or notebook, plain periodic lines otherwise, nothing off rank 0."""

    def __init__(self, mode: str, enabled: bool, log_every: int):
        if mode == "auto":
            interactive = sys.stderr.isatty() or in_notebook()
            mode = "tqdm" if interactive else "log"
        self.mode = mode if enabled else "none"
        self.log_every, self.bar = log_every, None

    def start(self, total: int, desc: str):
        if self.mode == "tqdm":
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)
        self.desc, self.total = desc, total

    def update(self, i: int, loss: float | None):
        if self.mode == "tqdm":
            self.bar.update(1)
            if loss is not None:
                self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        elif self.mode == "log" and loss is not None:
            print(f"{self.desc} batch {i + 1}/{self.total} loss {loss:.4f}", flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def line(self, text: str):
        if self.mode != "none":
            print(text, flush=True)


def in_notebook() -> bool:
    try:
        from IPython import get_ipython

        return get_ipython() is not None and "IPKernelApp" in get_ipython().config
    except Exception:
        return False
