"""Packed ReActNet-A inference: float model vs packed reference vs native 1-bit kernel.

For each shape, one run times, alternately (so load changes on a shared machine
hit all three alike), on ``--threads`` torch threads (default 1):

* ``float``: ``create_model("reactnet_a_bf", binary_weights=True)`` in eval mode
  under ``torch.inference_mode()`` (the float simulation, oneDNN convolutions);
* ``reference``: ``deploy.pack(model, word_bits)`` with the pure-PyTorch reference
  (``bitconv_native.use_reference()``);
* ``native``: the same packed model through ``bnn_helpers.bitconv_native``.

Medians of ``--reps`` repetitions after ``--warmup``; ``--clock thread`` (default)
is the CPU time of the timing thread (``time.thread_time``: with one thread the
whole cost, and barely disturbed by other programs on a shared machine),
``--clock wall`` wall-clock. Then it checks that the native outputs equal the
reference: every integer dot of every binary conv bit for bit (block by block on
the reference's own activations) and the logits within 64 float32 ulps of their
scale, with identical argmax; and it splits one profiled forward of each packed
path into sign packing, popcount convolutions and the rest.

Usage::

    python benchmarks/packed_inference.py                       # the three shapes of issue #19
    python benchmarks/packed_inference.py --json packed.json --word-bits 8
    python benchmarks/packed_inference.py --quick               # smoke test, seconds
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from bnn_helpers import bitconv_native, create_model
from bnn_helpers.deploy import pack
from bnn_helpers.latency import latency_table

SHAPES = {  # name: width, resolution, batch, classes
    "w0.25-32px-b1": (0.25, 32, 1, 10),
    "w0.25-32px-b64": (0.25, 32, 64, 10),
    "w1-224px-b1": (1.0, 224, 1, 1000),
}
QUICK_SHAPES = {"w0.25-32px-b1": (0.25, 32, 1, 10), "w0.25-32px-b4": (0.25, 32, 4, 10)}
EPS = torch.finfo(torch.float32).eps


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=list(SHAPES))
    p.add_argument("--word-bits", type=int, choices=(8, 64), default=64)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--clock", choices=("thread", "wall"), default="thread")
    p.add_argument("--no-check", action="store_true", help="skip the equality check")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--quick", action="store_true", help="tiny shapes, one repetition")
    args = p.parse_args(argv)
    if args.reps < 1 or args.warmup < 0 or args.threads < 1:
        p.error("--reps and --threads must be >= 1, --warmup >= 0")
    return args


def make_model(width, classes, seed=0):
    """The float model with non-trivial random weights, biases, slopes and gains."""
    torch.manual_seed(seed)
    model = create_model("reactnet_a_bf", binary_weights=True, width_mult=width,
                         num_classes=classes)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("prelu.weight"):
                p.copy_(torch.rand(p.shape, generator=g) * 0.5)
            elif name.endswith("gain"):
                p.copy_(0.5 + torch.rand(p.shape, generator=g))
            elif p.dim() == 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


@torch.no_grad()
def check_equal(packed, images) -> dict:
    """Native vs reference: integer dots of every block (on the reference's activations)
    and the logits."""
    mismatches = dots = 0
    with bitconv_native.use_reference():
        x = packed.stem(images.float())
    for block in packed.blocks:
        with bitconv_native.use_reference():
            g1 = block.sign1(x)
            dot3 = block.conv3x3.integer_forward(g1)
            shortcut = (F.avg_pool2d(x, 2, 2, divisor_override=1) * block.pool_scale
                        if block.stride == 2 else x)
            y = block.rprelu1(shortcut + block.conv3x3(g1))
            g2 = block.sign2(y)
            dot1 = torch.cat([conv.integer_forward(g2) for conv in block.conv1x1], 1)
            expected = block(x)
        with bitconv_native.use_native():
            _, got3, got1 = bitconv_native.block_a(block, x, return_dots=True)
        mismatches += int((got3 != dot3).sum()) + int((got1 != dot1).sum())
        dots += dot3.numel() + dot1.numel()
        x = expected
    with bitconv_native.use_reference():
        ref = packed(images)
    with bitconv_native.use_native():
        nat = packed(images)
    scale = ref.abs().max().item()
    rel = (nat - ref).abs().max().item() / scale
    return {"integer_dots": dots, "integer_mismatches": mismatches,
            "max_rel_logit_diff": rel, "logit_tolerance": 64 * EPS,
            "argmax_equal": bool(torch.equal(nat.argmax(1), ref.argmax(1))),
            "ok": mismatches == 0 and rel <= 64 * EPS and torch.equal(nat.argmax(1), ref.argmax(1))}


def run_shape(name, spec, args) -> dict:
    width, res, batch, classes = spec
    model = make_model(width, classes)
    images = torch.randn(batch, 3, res, res, generator=torch.Generator().manual_seed(1))
    packed = pack(model, args.word_bits)
    rows = latency_table(model, images, packed, word_bits=args.word_bits,
                                        reps=args.reps, warmup=args.warmup,
                                        threads=args.threads, clock=args.clock)
    totals = {r["path"]: r["ms"] for r in rows if r["part"] == "total"}
    result = {"shape": name, "width": width, "resolution": res, "batch": batch,
              "classes": classes, "float_ms": totals["float"],
              "reference_ms": totals["reference"], "native_ms": totals.get("native"),
              "native_over_float": totals["native"] / totals["float"] if "native" in totals else None,
              "native_over_reference": (totals["native"] / totals["reference"]
                                        if "native" in totals else None),
              "breakdown": [r for r in rows if r["part"] != "total"]}
    if not args.no_check and "native" in totals:
        saved = torch.get_num_threads()
        torch.set_num_threads(args.threads)
        try:
            result["check"] = check_equal(packed, images)
        finally:
            torch.set_num_threads(saved)
    return result


def print_table(results, args):
    print(f"\nReActNet-A bf step 2, word_bits={args.word_bits}, {args.threads} thread(s), "
          f"{args.clock} clock, median of {args.reps} (after {args.warmup} warm-up), ms per batch")
    head = f"{'shape':<16}{'float':>10}{'reference':>12}{'native':>10}{'native/float':>14}{'ref/float':>11}  equal"
    print(head)
    print("-" * len(head))
    for r in results:
        nat = f"{r['native_ms']:.2f}" if r["native_ms"] is not None else "n/a"
        ratio = f"{r['native_over_float']:.3f}" if r["native_over_float"] is not None else "n/a"
        check = r.get("check")
        eq = ("n/a" if check is None else
              f"{'yes' if check['ok'] else 'NO'} ({check['integer_mismatches']} of "
              f"{check['integer_dots']:,} dots differ, logits {check['max_rel_logit_diff']:.1e})")
        print(f"{r['shape']:<16}{r['float_ms']:>10.2f}{r['reference_ms']:>12.2f}{nat:>10}"
              f"{ratio:>14}{r['reference_ms'] / r['float_ms']:>11.2f}  {eq}")
    print("\nWhere the packed time goes (one profiled forward each, wall-clock ms per batch)")
    for r in results:
        for path in ("reference", "native"):
            parts = [(b["part"].replace("profiled ", ""), b["ms"]) for b in r["breakdown"]
                     if b["path"] == path]
            if parts:
                print(f"  {r['shape']:<16}{path:<10}" + ", ".join(f"{k} {v:.2f}" for k, v in parts))


def main(argv=None):
    args = parse_args(argv)
    shapes = QUICK_SHAPES if args.quick else {k: SHAPES[k] for k in args.shapes}
    if args.quick:
        args.reps, args.warmup = 1, 1
    t0 = time.perf_counter()
    try:
        build = bitconv_native.build()
    except RuntimeError as err:
        build = {"available": False, "error": str(err)}
        print(f"native kernel unavailable: {err}; timing float and reference only")
    build["load_s"] = time.perf_counter() - t0
    meta = {"torch": torch.__version__, "python": platform.python_version(),
            "machine": platform.machine(), "processor": _cpu_name(), "threads": args.threads,
            "clock": args.clock, "reps": args.reps, "warmup": args.warmup,
            "word_bits": args.word_bits, "quick": args.quick, "native": build}
    print(f"torch {meta['torch']}, {meta['processor']}; native kernel: "
          + (f"popcnt={build.get('popcnt')}, " + (f"compiled in {build['build_s']:.1f} s"
             if build.get("build_s") else "loaded from cache") if build["available"] else "none"))
    results = [run_shape(name, spec, args) for name, spec in shapes.items()]
    print_table(results, args)
    out = {"meta": meta, "results": results}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
        print(f"\nwrote {args.json}")
    return out


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    main(sys.argv[1:])
