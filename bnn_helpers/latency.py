"""Latency of a packed network: the float simulation, the packed reference and the
native kernels, timed alternately (medians), with a profiled split of each packed path.

    from bnn_helpers.latency import latency_table
    rows = latency_table(model, images)     # pandas.DataFrame(rows) for a table
"""
from __future__ import annotations

import statistics
import time

import torch

from . import bitconv_native as native
from .deploy import PackedBinaryConv2d, PackedBlockA, PackedSign, PackedWeightConv2d, pack
from .hooks import eval_mode, removing_hooks

__all__ = ["latency_table", "timing_table", "latency_summary", "profile_shares"]


def _median_ms(samples):
    return 1e3 * statistics.median(samples)


@torch.no_grad()
def _reference_breakdown(packed, images, clock):
    """Seconds in PackedSign, in PackedBinaryConv2d (integer conv + scale) and the rest."""
    spent = {"pack signs": 0.0, "popcount conv": 0.0}
    starts = {}
    with removing_hooks() as handles:
        for m in packed.modules():
            kind = ("pack signs" if isinstance(m, PackedSign) else
                    "popcount conv" if isinstance(m, PackedBinaryConv2d)
                    and not isinstance(m, PackedWeightConv2d) else None)
            if kind is None:
                continue
            handles.append(m.register_forward_pre_hook(
                lambda mod, inp: starts.__setitem__(id(mod), clock())))
            handles.append(m.register_forward_hook(
                lambda mod, inp, out, k=kind: spent.__setitem__(k, spent[k] + clock() - starts[id(mod)])))
        with native.use_reference():
            t0 = clock()
            packed(images)
            total = clock() - t0
    return {**spent, "real-valued ops, layout, Python": total - sum(spent.values()),
            "total": total}


@torch.no_grad()
def _native_breakdown(packed, images, clock):
    with native.kernel_profile() as spent, native.use_native():
        t0 = clock()
        packed(images)
        total = clock() - t0
    fused = all(isinstance(b, PackedBlockA) for b in getattr(packed, "blocks", ()))
    parts = {"pack signs": spent["pack_signs"], "popcount conv": spent["popcount"],
             "real-valued ops (fused)" if fused else "storing conv results": spent["epilogue"]}
    return {**parts, "stem, head, layout, Python": total - sum(parts.values()), "total": total}


def latency_table(model, images: torch.Tensor, packed=None, word_bits: int = 64, reps: int = 5,
                  warmup: int = 1, threads: int = 1, clock: str = "thread",
                  breakdown: bool = True) -> list:
    """Time the float model, the packed reference and the packed native kernels.

    ``model``: a step-2 ReActNet-A / ReActNet-18 in eval mode (the float
    simulation, run under ``torch.inference_mode``); ``packed``: its packed form
    (default ``deploy.pack(model, word_bits)``). The three run alternately,
    ``reps`` times after ``warmup`` rounds, with ``threads`` torch threads;
    ``clock="thread"`` measures this thread's CPU time (``time.thread_time``,
    barely disturbed by other programs on a shared machine; with one thread it is
    the whole cost), ``"wall"`` wall-clock. Medians.

    Returns a list of dicts ``{"path", "part", "ms", "ms_per_image", "batch"}``:
    ``part="total"`` for the three paths, and with ``breakdown`` one extra
    profiled run of each packed path (wall-clock), ``part="profiled ..."``:
    ``pack signs``, ``popcount conv`` and the rest — for the reference the time
    inside ``PackedSign`` / ``PackedBinaryConv2d`` modules (forward hooks), for
    the native path the kernel's own counters (sign packing, popcount loops, the
    fused real-valued epilogue) — plus ``profiled total``. Put it in
    ``pandas.DataFrame(rows)``. Without a native kernel, its rows are missing and
    the one-line warning says why.
    """
    clocks = {"thread": time.thread_time, "wall": time.perf_counter}
    if clock not in clocks:
        raise ValueError(f"clock must be 'thread' or 'wall', got {clock!r}")
    tick = clocks[clock]
    if packed is None:
        packed = pack(model, word_bits)
    batch = images.shape[0]

    def run_float():
        with torch.inference_mode():
            model(images)

    def run_reference():
        with torch.no_grad(), native.use_reference():
            packed(images)

    def run_native():
        with torch.no_grad(), native.use_native():
            packed(images)

    paths = {"float": run_float, "reference": run_reference}
    with torch.no_grad():
        if native.mode() != "off" and native.runs_natively(images.float()):
            paths["native"] = run_native
    with eval_mode(model):
        saved_threads = torch.get_num_threads()
        torch.set_num_threads(threads)
        rows = []
        try:
            samples = {name: [] for name in paths}
            for i in range(warmup + reps):
                for name, fn in paths.items():
                    t0 = tick()
                    fn()
                    if i >= warmup:
                        samples[name].append(tick() - t0)
            for name, s in samples.items():
                ms = _median_ms(s)
                rows.append({"path": name, "part": "total", "ms": ms, "ms_per_image": ms / batch,
                             "batch": batch})
            if breakdown:
                parts = {"reference": _reference_breakdown(packed, images, time.perf_counter)}
                if "native" in paths:
                    parts["native"] = _native_breakdown(packed, images, time.perf_counter)
                for name, split in parts.items():
                    for part, sec in split.items():
                        rows.append({"path": name, "part": f"profiled {part}", "ms": sec * 1e3,
                                     "ms_per_image": sec * 1e3 / batch, "batch": batch})
        finally:
            torch.set_num_threads(saved_threads)
    return rows


def timing_table(cases: dict, reps: int = 5, **kwargs):
    """:func:`latency_table` of several networks as one ``pandas.DataFrame`` (column ``network``).

    ``cases``: ``{network label: (model, images, packed)}``; ``kwargs`` go to
    :func:`latency_table`.
    """
    import pandas as pd

    return pd.DataFrame([{"network": label, **row} for label, (model, images, packed) in cases.items()
                         for row in latency_table(model, images, packed=packed, reps=reps, **kwargs)])


def latency_summary(timing):
    """CPU ms per image of each network (rows) and path (float, reference, native), with the
    ``reference / float`` and (when the native kernel ran) ``native / float`` ratios."""
    totals = timing[timing["part"] == "total"]
    latency = totals.pivot(index="network", columns="path", values="ms_per_image")
    latency = latency[[p for p in ("float", "reference", "native") if p in latency]]
    latency.columns.name = "CPU ms per image"
    for path in ("reference", "native"):
        if path in latency:
            latency[f"{path} / float"] = latency[path] / latency["float"]
    return latency


def profile_shares(timing):
    """Share (%) of each profiled part in one profiled forward: rows (network, path), columns part."""
    profiled = timing[timing["part"].str.startswith("profiled") & (timing["part"] != "profiled total")].copy()
    profiled["part"] = profiled["part"].str.removeprefix("profiled ")
    total_ms = timing[timing["part"] == "profiled total"].set_index(["network", "path"])["ms"]
    keys = list(zip(profiled["network"], profiled["path"]))
    profiled["share %"] = 100 * profiled["ms"].to_numpy() / total_ms.loc[keys].to_numpy()
    return profiled.pivot_table(index=["network", "path"], columns="part", values="share %", sort=False)
