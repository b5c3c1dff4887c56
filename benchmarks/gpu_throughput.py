"""Training throughput of ReActNet-A (step 2) on one GPU, 224x224, batch 256.

Synthetic tensors already on the device, so only the model is timed. For each
variant (``--variants``, default bf, bn and none) three settings, and for bf a fourth:

* ``composition fp32``   - the straightforward autograd composition (baseline)
* ``package fp32``       - the fused package, eager
* ``package bf16+cl``    - bf16 autocast and channels_last
* ``package bf16+cl+compile`` - the same under ``torch.compile`` (compile time reported
  apart; ``--compile-variants``, default bf only: each compile takes about a minute)

Reported per variant and setting: median images/s over the timed steps and peak GPU
memory of a training step (``torch.cuda.max_memory_allocated``). A setting that runs
out of memory at ``--batch`` is retried at half the batch until it fits (the batch
used is reported). Runs in well under 5 minutes on an H100. Without CUDA it says so
and exits cleanly; ``--device cpu --quick`` runs every code path on a tiny network
(compile with the ``eager`` backend) so the script is tested without a GPU.

Usage::

    python benchmarks/gpu_throughput.py [--json out.json]
    python benchmarks/gpu_throughput.py --variants bf --no-compile
    python benchmarks/gpu_throughput.py --device cpu --quick
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from bnn_helpers import create_model
from bnn_helpers.agc import parameters_except_classifier
from bnn_helpers.binarize import use_reference
from bnn_helpers.config import DEFAULTS
from bnn_helpers.losses import Objective
from bnn_helpers.training_step import make_optimizer, training_step

SETTINGS = (
    # name, reference composition, bf16 autocast, channels_last, compile
    ("composition fp32", True, False, False, False),
    ("package fp32", False, False, False, False),
    ("package bf16+cl", False, True, True, False),
    ("package bf16+cl+compile", False, True, True, True),
)


def run_setting(variant, name, reference, bf16, channels_last, compile_model, args, device,
                batch):
    torch.manual_seed(0)
    model = create_model(f"reactnet_a_{variant}", binary_weights=True, num_classes=args.classes,
                         width_mult=args.width).to(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    optimizer = make_optimizer(model, DEFAULTS["optimizer"], 1e-4, DEFAULTS["weight_decay_step2"],
                               DEFAULTS["momentum"])
    objective = Objective("ce")
    agc_params = parameters_except_classifier(model) if DEFAULTS["agc"] else None
    x = torch.randn(batch, 3, args.resolution, args.resolution, device=device)
    x = x.contiguous(memory_format=fmt)
    y = torch.randint(0, args.classes, (batch,), device=device)
    forward = (torch.compile(model, backend=args.compile_backend) if compile_model else model)

    def step():  # the engine's training step (cross-entropy, AGC and Adam as the defaults set them)
        with use_reference(reference):
            training_step(forward, x, y, objective, optimizer, amp="bf16" if bf16 else "none",
                          agc_params=agc_params, agc_clip_factor=DEFAULTS["agc_clip_factor"],
                          agc_eps=DEFAULTS["agc_eps"])

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    start = time.perf_counter()
    step()  # first step: compilation, cuDNN autotuning, Adam state
    sync()
    first_step_s = time.perf_counter() - start
    for _ in range(args.warmup):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    peak = (torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None)
    row = dict(variant=variant, setting=name, batch=batch, images_per_s=batch / median,
               median_step_s=median, first_step_s=first_step_s, peak_memory_gib=peak)
    peak_text = "n/a" if peak is None else f"{peak:.2f} GiB"
    print(f"{variant:>4} {name:>26} b{batch}: {row['images_per_s']:9.1f} img/s  step "
          f"{median * 1e3:8.1f} ms  first step {first_step_s:6.1f} s  peak {peak_text}", flush=True)
    del model, optimizer, forward
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def run_fitting(variant, setting, args, device):
    """``run_setting`` at ``--batch``, halving the batch while the GPU runs out of memory."""
    batch = args.batch
    while True:
        try:
            return run_setting(variant, *setting, args, device, batch)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            if batch == 1:
                raise
            print(f"{variant} {setting[0]}: out of memory at batch {batch}, trying {batch // 2}",
                  flush=True)
            batch //= 2


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true",
                   help="tiny network, small inputs, one timed step (for tests)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--compile-backend", default="inductor")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile setting")
    p.add_argument("--variants", nargs="+", choices=("bf", "bn", "none"), default=["bf", "bn", "none"])
    p.add_argument("--compile-variants", nargs="*", choices=("bf", "bn", "none"), default=["bf"],
                   help="variants that also get the torch.compile setting (default bf)")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.resolution, args.width, args.warmup, args.steps = 2, 32, 0.25, 0, 1
        if args.device == "cpu":
            args.compile_backend = "eager"
    if args.batch < 1 or args.steps < 1 or args.warmup < 0:
        p.error("--batch and --steps must be >= 1, --warmup >= 0")
    return args


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available: nothing to measure. "
              "Run on a GPU machine, or use --device cpu --quick to exercise the code path.")
        return None
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    threads_before = torch.get_num_threads()
    if device.type == "cpu" and args.quick:
        torch.set_num_threads(1)  # tiny tensors: threads only add overhead
    try:
        rows = [run_fitting(variant, setting, args, device)
                for variant in args.variants for setting in SETTINGS
                if not (setting[4] and (args.no_compile or variant not in args.compile_variants))]
    finally:
        torch.set_num_threads(threads_before)
    for row in rows:
        base = next(r for r in rows if r["variant"] == row["variant"])  # its composition fp32
        row["speedup_vs_composition"] = row["images_per_s"] / base["images_per_s"]
    result = dict(device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                  torch=torch.__version__, batch=args.batch, resolution=args.resolution,
                  width_mult=args.width, rows=rows)
    print("speedup vs composition fp32: " + ", ".join(
        f"{r['variant']} {r['setting']} {r['speedup_vs_composition']:.2f}x" for r in rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
