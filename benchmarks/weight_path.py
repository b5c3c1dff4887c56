"""Micro-benchmark: the step-2 binary weight path of ReActNet-A, forward + backward.

Over every binary conv of ``reactnet_a_bf`` (width 1, 10 classes; ~28 M latent
weights) it times ``effective_weight()`` and its backward for a fixed random
upstream gradient, three ways on the same latent weights:

* ``bf native``  ``binarize_standardized_weight`` with the native kernel
  (``csrc/weight_path.cpp``)
* ``bf torch``   the same function on the torch path (``bitconv_native.use_reference()``)
* ``bn``         ``binarize_weight`` (bn's ``mean|w| * sign(w)``, no gain)
* ``kernel only``  the two native calls alone, into preallocated buffers: what the
  native path costs without the page faults of its fresh output and gradient
* ``memory bound``  plain torch ops that move the kernel's bytes and compute nothing:
  forward ``out.copy_(w)`` (read the weights, write the output), backward
  ``torch.add(w, up, out=grad)`` (read weights and gradient, write the gradient).
  ``kernel only`` close to it means the weight path runs at the speed of memory.

``--simd`` picks the build of the native loops (``best``, ``avx512``, ``avx2`` or
``baseline``; every build gives the same bits).

The three alternate within every round (rotating who goes first), so load changes
on a shared machine hit all of them; medians of ``--rounds`` after ``--warmup``,
wall-clock and process CPU time. ::

    python benchmarks/weight_path.py --threads 1 --rounds 15
    python benchmarks/weight_path.py --threads 2 --rounds 15 --simd avx2
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from bnn_helpers import binarize as B
from bnn_helpers import bitconv_native, create_model, layers, weight_native


def _bf(conv, up):
    out = B.binarize_standardized_weight(conv.weight, conv.gain, conv.eps)
    t = time.perf_counter(), time.process_time()
    torch.autograd.grad(out, (conv.weight, conv.gain), up)
    return t


def _bn(conv, up):
    out = B.binarize_weight(conv.weight)
    t = time.perf_counter(), time.process_time()
    torch.autograd.grad(out, (conv.weight,), up)
    return t


def _time(path, convs, ups, reference):
    fwd = [0.0, 0.0]
    t0 = time.perf_counter(), time.process_time()
    with bitconv_native.use_reference() if reference else bitconv_native.use_native():
        for conv, up in zip(convs, ups):
            s = time.perf_counter(), time.process_time()
            mid = path(conv, up)
            fwd = [fwd[0] + mid[0] - s[0], fwd[1] + mid[1] - s[1]]
    t1 = time.perf_counter(), time.process_time()
    return {"wall": t1[0] - t0[0], "cpu": t1[1] - t0[1], "fwd_wall": fwd[0], "fwd_cpu": fwd[1]}


class _KernelOnly:
    """The native forward and backward calls into buffers allocated once."""

    def __init__(self, convs):
        self.lib = bitconv_native._state["lib"]
        self.buffers = {id(c): (torch.empty_like(c.weight), torch.empty_like(c.weight),
                                torch.empty(c.out_channels, 4, dtype=torch.float64),
                                torch.empty(c.out_channels)) for c in convs}

    def __call__(self, conv, up):
        out, grad_w, stats, grad_gain = self.buffers[id(conv)]
        w, gain, rows = conv.weight.detach(), conv.gain.detach(), conv.out_channels
        n, threads = w.numel() // rows, torch.get_num_threads()
        self.lib.bnn_ws_forward(w.data_ptr(), rows, n, conv.eps, gain.data_ptr(), 1,
                                out.data_ptr(), stats.data_ptr(), threads)
        t = time.perf_counter(), time.process_time()
        self.lib.bnn_ws_backward(w.data_ptr(), up.data_ptr(), rows, n, stats.data_ptr(),
                                 gain.data_ptr(), 1, grad_w.data_ptr(), grad_gain.data_ptr(),
                                 threads)
        return t


class _MemoryBound:
    """Torch ops that move the native kernel's bytes: copy forward, one add backward."""

    def __init__(self, convs):
        self.buffers = {id(c): (torch.empty_like(c.weight), torch.empty_like(c.weight))
                        for c in convs}

    def __call__(self, conv, up):
        out, grad = self.buffers[id(conv)]
        w = conv.weight.detach()
        out.copy_(w)
        t = time.perf_counter(), time.process_time()
        torch.add(w, up, out=grad)
        return t


PATHS = {"bf native": (_bf, False), "bf torch": (_bf, True), "bn": (_bn, True)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--simd", default="best", choices=("best", *weight_native.SIMD_LEVELS),
                        help="build of the native loops (default: the best the CPU has)")
    parser.add_argument("--json", help="write the medians here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    bitconv_native.build()
    simd = weight_native.simd(bitconv_native._state["lib"], args.simd)
    torch.manual_seed(0)
    model = create_model("reactnet_a_bf", binary_weights=True, width_mult=args.width,
                         num_classes=10)
    convs = [m for m in model.modules() if isinstance(m, layers.BinaryScaledStdConv2d)]
    with torch.no_grad():
        for conv in convs:
            conv.gain.uniform_(0.5, 1.5)
    ups = [torch.randn_like(c.weight) for c in convs]
    n = sum(c.weight.numel() for c in convs)
    print(f"{len(convs)} binary convs, {n / 1e6:.1f} M latent weights, {args.threads} thread(s), "
          f"native loops: {simd}")
    paths = {**PATHS, "kernel only": (_KernelOnly(convs), False),
             "memory bound": (_MemoryBound(convs), False)}
    times = {name: [] for name in paths}
    names = list(paths)
    for r in range(args.warmup + args.rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            path, reference = paths[name]
            t = _time(path, convs, ups, reference)
            if r >= args.warmup:
                times[name].append(t)
    weight_native.simd(bitconv_native._state["lib"], "best")  # the choice ends with the run
    assert weight_native.calls["forward"] >= args.rounds * len(convs)
    med = {name: {k: statistics.median(t[k] for t in ts) * 1e3 for k in ts[0]}
           for name, ts in times.items()}
    bn = med["bn"]
    print(f"medians of {args.rounds} rounds, ms (ratio to bn)   wall | cpu | forward cpu | backward cpu")
    for name, m in med.items():
        print(f"  {name:12s} {m['wall']:8.1f} ({m['wall'] / bn['wall']:.2f}) | {m['cpu']:8.1f} "
              f"({m['cpu'] / bn['cpu']:.2f}) | {m['fwd_cpu']:7.1f} | {m['cpu'] - m['fwd_cpu']:7.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "median_ms": med}, f, indent=1)
    return med


if __name__ == "__main__":
    main()
