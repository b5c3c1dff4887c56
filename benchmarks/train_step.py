"""Training-step cost of ReActNet-A: the fused package against the straightforward composition.

Three measurements, all in one run so their ratios share the same machine state:

1. Training step (the engine's own ``bnn_helpers.training_step.training_step``:
   forward, cross-entropy, zero_grad, backward, AGC, Adam with the recipe's
   parameter groups, all as the config defaults set them) for
   every variant (bn / none / bf x step 1 / step 2) at two shapes:
   32x32 input, batch 32, 10 classes and 224x224, batch 8, 1000 classes.
   The package and the composition (``bnn_helpers.binarize.use_reference``)
   each run in their own worker process, as a training run holds one model
   (``--in-process`` puts them all in this one). Workers take turns: each
   times a block of ``--block`` consecutive steps after one untimed step, the
   order reversing every round, so load changes on a shared machine hit all
   of them alike and the bf / bn ratio comes from one run. Reported: median
   step time, images/s, memory of one step, and the ratios between them.
2. Peak training memory at 224x224, batch 32 (package vs composition).
3. Eval throughput of the BN-free step-2 network with the cached binary
   weights against recomputing them at every forward.

Saved memory is what autograd keeps for backward after the forward (activations,
effective weights; parameters excluded, each storage once): exact, the same on
every run. Peak tensor memory is the most that live tensors exceed, during one
step, what was live before it (parameters, gradients, Adam state, inputs): on
CUDA ``torch.cuda.max_memory_allocated``; on CPU summed, in order, from
torch.profiler's allocation events, also exact. Peak RSS (CPU only) is what the
process's resident set grows by in the step: free heap pages are returned with
``malloc_trim``, the kernel's peak counter is reset (``/proc/self/clear_refs``),
and the step's peak is ``VmHWM - VmRSS`` before it; it also counts glibc's
fragmentation and moves by tens of MiB between runs of the same code.

Usage::

    python benchmarks/train_step.py --json benchmarks/results/train_step.json
    python benchmarks/train_step.py --quick          # smoke test: tiny width, one step
    python benchmarks/train_step.py --sections train --shapes 32px --variants bf --steps-of 2 --profile
"""
from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import json
import multiprocessing
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import torch

from bnn_helpers import create_model
from bnn_helpers.agc import parameters_except_classifier
from bnn_helpers.binarize import use_reference
from bnn_helpers.config import DEFAULTS
from bnn_helpers.layers import is_binary_conv
from bnn_helpers.losses import Objective
from bnn_helpers.runtime import reuse_freed_memory
from bnn_helpers.training_step import make_optimizer, training_step

SHAPES = {
    "32px": dict(resolution=32, batch=32, classes=10),
    "224px": dict(resolution=224, batch=8, classes=1000),
}
# --quick keeps every code path with a tiny network and tiny inputs.
QUICK_SHAPES = {
    "32px": dict(resolution=32, batch=4, classes=10),
    "224px": dict(resolution=64, batch=2, classes=1000),
}
VARIANTS = ("bn", "none", "bf")
IMPLS = ("package", "composition")
SECTIONS = ("train", "memory", "eval")


# --------------------------------------------------------------------------
# measurement helpers
# --------------------------------------------------------------------------
def _proc_status_bytes(key: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{key}:\s+(\d+) kB", text, re.M).group(1)) * 1024


def _cpu_peak_supported() -> bool:
    try:
        _proc_status_bytes("VmHWM")
        Path("/proc/self/clear_refs").write_text("5")
        return ctypes.util.find_library("c") is not None
    except (OSError, AttributeError):
        return False


def peak_step_memory(step, device: torch.device) -> int | None:
    """Bytes one call of ``step()`` adds at its peak over what is live before it."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    if not _cpu_peak_supported():
        return None
    ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = _proc_status_bytes("VmRSS")
    step()
    return _proc_status_bytes("VmHWM") - before


def peak_tensor_bytes(step, device: torch.device) -> int:
    """Peak bytes of live tensors one call of ``step()`` adds over what is live before it:
    exact on CPU too (torch.profiler's allocation events, summed in order), unlike peak RSS,
    which also counts the C heap's fragmentation."""
    if device.type == "cuda":
        return peak_step_memory(step, device)
    from torch.profiler import ProfilerActivity, profile, record_function
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()  # blocks freed in the measured step are then known to the profiler
        with record_function("measured step"):
            step()
    events = list(prof.profiler.kineto_results.events())
    mark = next(e for e in events if e.name() == "measured step")
    live = peak = 0
    for e in sorted((e for e in events if e.name() == "[memory]"), key=lambda e: e.start_ns()):
        if mark.start_ns() <= e.start_ns() <= mark.end_ns():
            live += e.nbytes()
            peak = max(peak, live)
    return peak


def saved_for_backward_bytes(model, x, y, impl: str) -> int:
    """Bytes autograd keeps for backward after the forward and loss, parameters excluded,
    each storage counted once: exact and noise-free, unlike a peak-RSS reading."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    with use_reference(impl == "composition"), \
            torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        torch.nn.functional.cross_entropy(model(x), y)
    return sum(storages.values())


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device) -> tuple[float, float]:
    """Wall-clock and process CPU seconds of one call."""
    _sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    _sync(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def alternate(fns: dict, warmup: int, rounds: int, device) -> tuple[dict, dict]:
    """Time each callable once per round, alternating the order.

    Returns per-name lists of wall-clock and of process-CPU seconds.
    """
    names = list(fns)
    wall = {name: [] for name in names}
    cpu = {name: [] for name in names}
    for r in range(warmup + rounds):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            w, c = timed(fns[name], device)
            if r >= warmup:
                wall[name].append(w)
                cpu[name].append(c)
    return wall, cpu


def mib(n):
    return None if n is None else n / 2**20


# --------------------------------------------------------------------------
# the training step
# --------------------------------------------------------------------------
def build(variant: str, step_of: int, shape: dict, width: float, device, seed: int = 0):
    torch.manual_seed(seed)
    model = create_model(f"reactnet_a_{variant}", binary_weights=step_of == 2,
                         num_classes=shape["classes"], width_mult=width).to(device)
    optimizer = make_optimizer(model, DEFAULTS["optimizer"], 1e-4,
                               DEFAULTS[f"weight_decay_step{step_of}"], DEFAULTS["momentum"])
    res = shape["resolution"]
    x = torch.randn(shape["batch"], 3, res, res, device=device)
    y = torch.randint(0, shape["classes"], (shape["batch"],), device=device)
    return model, optimizer, x, y


def make_train_step(model, optimizer, x, y, impl: str):
    """The engine's training step with the default recipe (cross-entropy, AGC as configured)."""
    objective = Objective("ce")
    agc_params = parameters_except_classifier(model) if DEFAULTS["agc"] else None

    def step():
        with use_reference(impl == "composition"):
            training_step(model, x, y, objective, optimizer, agc_params=agc_params,
                          agc_clip_factor=DEFAULTS["agc_clip_factor"], agc_eps=DEFAULTS["agc_eps"])
    return step


def bench_train(args, shapes, device, results):
    """Every variant and implementation of one shape and step alternate in the same rounds,
    so the ratios between variants (bf vs bn) share the machine's state as well."""
    rows = results["train_step"]
    for shape_name in args.shapes:
        shape = shapes[shape_name]
        for step_of in args.steps_of:
            keys = [(variant, impl) for variant in args.variants for impl in IMPLS]
            if args.in_process:
                measured = _measure_in_process(args, keys, shape, step_of, device)
            else:
                measured = _measure_in_workers(args, keys, shape, step_of, device)
            for (variant, impl), m in measured.items():
                median = statistics.median(m["times"])
                rows.append(dict(shape=shape_name, **shape, variant=variant, step=step_of,
                                 impl=impl, median_s=median,
                                 images_per_s=shape["batch"] / median,
                                 cpu_median_s=statistics.median(m["cpu"]),
                                 times_s=m["times"], peak_mib=mib(m["peak"]),
                                 peak_tensor_mib=mib(m["peak_tensor"]),
                                 saved_mib=mib(m["saved"])))
                print(_train_row(rows[-1]), flush=True)
    results["train_ratios"] = _train_ratios(rows)


def _measure_in_process(args, keys, shape, step_of, device) -> dict:
    """All models in this process, one step each per round (fast; used by --quick)."""
    steps, saved, built = {}, {}, {}
    for variant, impl in keys:
        if variant not in built:
            built[variant] = build(variant, step_of, shape, args.width, device)
        model, optimizer, x, y = built[variant]
        steps[variant, impl] = make_train_step(model, optimizer, x, y, impl)
        saved[variant, impl] = saved_for_backward_bytes(model, x, y, impl)
    times, cpu = alternate(steps, args.warmup, args.rounds, device)
    out = {key: dict(times=times[key], cpu=cpu[key], saved=saved[key],
                     peak=peak_step_memory(steps[key], device),
                     peak_tensor=peak_tensor_bytes(steps[key], device)) for key in keys}
    if args.profile and ("bf", "package") in steps and step_of == 2:
        profile_step(steps["bf", "package"], device, args.profile_rows)
    return out


def _measure_in_workers(args, keys, shape, step_of, device) -> dict:
    """One process per (variant, implementation), as a training run has one model.

    Each worker times blocks of ``--block`` consecutive steps, after one untimed
    step (it follows another process's step, which filled the caches); the
    blocks of all workers alternate, the order reversing every round. In one
    process the models would share one heap, and bf's temporaries would land
    where bn's freed blocks happen to be (measured: bf/bf alternation in one
    process drifts, in separate processes it reads 1.00).
    """
    ctx = multiprocessing.get_context("spawn")
    workers = {}
    for variant, impl in keys:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker, daemon=True, args=(
            child, variant, impl, step_of, shape, args.width, str(device), torch.get_num_threads(),
            not args.system_malloc, args.warmup))
        proc.start()
        workers[variant, impl] = (proc, parent)
    try:
        for _, conn in workers.values():
            _reply(conn)  # built and warmed up
        times = {key: [] for key in keys}
        cpu = {key: [] for key in keys}
        for r in range(args.rounds):
            for key in (keys if r % 2 == 0 else keys[::-1]):
                conn = workers[key][1]
                conn.send(("block", args.block))
                wall, proc_cpu = _reply(conn)
                times[key] += wall
                cpu[key] += proc_cpu
        out = {}
        for key in keys:
            conn = workers[key][1]
            conn.send(("memory", args.profile and key == ("bf", "package") and step_of == 2))
            out[key] = dict(times=times[key], cpu=cpu[key], **_reply(conn))
        return out
    finally:
        for proc, conn in workers.values():
            if proc.is_alive():
                conn.send(("stop", None))
            proc.join(timeout=30)


def _reply(conn):
    kind, value = conn.recv()
    if kind == "error":
        raise RuntimeError(f"benchmark worker failed: {value}")
    return value


def _worker(conn, variant, impl, step_of, shape, width, device, threads, reuse_heap, warmup):
    """Serve timed blocks of training steps of one model (see ``_measure_in_workers``)."""
    try:
        torch.set_num_threads(threads)
        if reuse_heap:
            reuse_freed_memory()
        device = torch.device(device)
        model, optimizer, x, y = build(variant, step_of, shape, width, device)
        step = make_train_step(model, optimizer, x, y, impl)
        saved = saved_for_backward_bytes(model, x, y, impl)
        for _ in range(max(warmup, 1)):
            step()
        conn.send(("ok", None))
        while True:
            command, value = conn.recv()
            if command == "block":
                step()  # untimed: runs on caches another process filled
                measured = [timed(step, device) for _ in range(value)]
                conn.send(("ok", ([w for w, _ in measured], [c for _, c in measured])))
            elif command == "memory":
                conn.send(("ok", dict(saved=saved, peak=peak_step_memory(step, device),
                                      peak_tensor=peak_tensor_bytes(step, device))))
                if value:
                    profile_step(step, device, 25)
            else:
                return
    except Exception as err:  # the parent reports it and stops
        conn.send(("error", f"{type(err).__name__}: {err}"))


def _train_row(r):
    return (f"{r['shape']:>6} {r['variant']:>4} step{r['step']} {r['impl']:>11}: "
            f"{r['median_s'] * 1e3:9.1f} ms (cpu {r['cpu_median_s'] * 1e3:9.1f} ms) "
            f"{r['images_per_s']:8.2f} img/s  peak tensors {_fmt(r['peak_tensor_mib'], '8.1f')} MiB "
            f"(rss {_fmt(r['peak_mib'], '8.1f')})  saved {r['saved_mib']:7.1f} MiB")


def _train_ratios(rows):
    """composition/package time and memory ratios, and each variant against bn (package)."""
    index = {(r["shape"], r["variant"], r["step"], r["impl"]): r for r in rows}
    ratios = []
    for (shape, variant, step_of, impl), pkg in index.items():
        if impl != "package":
            continue
        comp = index.get((shape, variant, step_of, "composition"))
        bn = index.get((shape, "bn", step_of, "package"))
        entry = dict(shape=shape, variant=variant, step=step_of,
                     speedup_vs_composition=comp["median_s"] / pkg["median_s"] if comp else None,
                     cpu_speedup_vs_composition=(comp["cpu_median_s"] / pkg["cpu_median_s"]
                                                 if comp else None),
                     time_vs_bn_package=pkg["median_s"] / bn["median_s"] if bn else None,
                     peak_tensors_vs_bn_package=(pkg["peak_tensor_mib"] / bn["peak_tensor_mib"]
                                                 if bn and bn["peak_tensor_mib"] else None),
                     memory_vs_composition=(pkg["peak_tensor_mib"] / comp["peak_tensor_mib"]
                                            if comp and comp["peak_tensor_mib"] else None))
        ratios.append(entry)
    return ratios


def profile_step(step, device, rows: int):
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        step()
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=sort, row_limit=rows), flush=True)


# --------------------------------------------------------------------------
# memory at 224x224, batch 32
# --------------------------------------------------------------------------
def bench_memory(args, device, results):
    shape = dict(resolution=args.memory_resolution, batch=args.memory_batch, classes=1000)
    rows = results["memory"]
    for variant in args.memory_variants:
        model, opt, x, y = build(variant, 2, shape, args.width, device)
        peaks = {}
        for impl in IMPLS:
            step = make_train_step(model, opt, x, y, impl)
            step()  # Adam state exists before the measured step
            peaks[impl] = peak_tensor_bytes(step, device)
        row = dict(**shape, variant=variant, step=2,
                   package_mib=mib(peaks["package"]), composition_mib=mib(peaks["composition"]),
                   ratio=(peaks["package"] / peaks["composition"]
                          if peaks["package"] and peaks["composition"] else None))
        rows.append(row)
        print(f"memory {shape['resolution']}px b{shape['batch']} {variant} step2: package "
              f"{_fmt(row['package_mib'])} MiB, composition {_fmt(row['composition_mib'])} MiB, "
              f"ratio {_fmt(row['ratio'], '.3f')}", flush=True)
        del model, opt


def _fmt(value, spec=".1f"):
    return "n/a" if value is None else format(value, spec)


# --------------------------------------------------------------------------
# eval throughput: cached vs recomputed binary weights
# --------------------------------------------------------------------------
def set_weight_cache(model, enabled: bool):
    for module in model.modules():
        if hasattr(module, "cache_eval_weight"):
            module.cache_eval_weight = enabled


def bench_eval(args, shapes, device, results):
    rows = results["eval"]
    for shape_name in args.shapes:
        shape = shapes[shape_name]
        model, _, x, _ = build("bf", 2, shape, args.width, device)
        model.eval()
        assert any(is_binary_conv(m) for m in model.modules())

        def forward(cached):
            def run():
                set_weight_cache(model, cached)
                with torch.no_grad():
                    model(x)
            return run

        times, cpu = alternate({"cached": forward(True), "uncached": forward(False)},
                               args.warmup, args.eval_rounds, device)
        med = {k: statistics.median(v) for k, v in times.items()}
        cpu_med = {k: statistics.median(v) for k, v in cpu.items()}
        row = dict(shape=shape_name, **shape, variant="bf", step=2,
                   cached_images_per_s=shape["batch"] / med["cached"],
                   uncached_images_per_s=shape["batch"] / med["uncached"],
                   speedup=med["uncached"] / med["cached"],
                   cpu_speedup=cpu_med["uncached"] / cpu_med["cached"], times_s=times)
        rows.append(row)
        print(f"eval {shape_name} bf step2: cached {row['cached_images_per_s']:.1f} img/s, "
              f"uncached {row['uncached_images_per_s']:.1f} img/s, speedup {row['speedup']:.2f}x "
              f"(cpu {row['cpu_speedup']:.2f}x)", flush=True)
        set_weight_cache(model, True)
        del model


# --------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="smoke run: width 0.25, small inputs, 1 warm-up + 1 timed step")
    p.add_argument("--json", type=Path, help="write all results to this JSON file")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    p.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    p.add_argument("--steps-of", nargs="+", type=int, choices=(1, 2), default=[1, 2],
                   help="training steps (1: real weights, 2: binary weights)")
    p.add_argument("--width", type=float, default=1.0, help="width_mult (default 1 = published)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=7,
                   help="rounds; each times --block steps per variant and implementation")
    p.add_argument("--block", type=int, default=3,
                   help="consecutive timed steps per worker and round (after one untimed step)")
    p.add_argument("--in-process", action="store_true",
                   help="all models in this process, one step each per round (--quick does this)")
    p.add_argument("--eval-rounds", type=int, default=9)
    p.add_argument("--memory-batch", type=int, default=32)
    p.add_argument("--memory-resolution", type=int, default=224)
    p.add_argument("--memory-variants", nargs="+", choices=VARIANTS, default=["bf"])
    p.add_argument("--system-malloc", action="store_true",
                   help="leave glibc's defaults (the training CLI calls "
                        "bnn_helpers.runtime.reuse_freed_memory(), so by default this does too)")
    p.add_argument("--profile", action="store_true",
                   help="print a torch.profiler table of the bf step-2 package step")
    p.add_argument("--profile-rows", type=int, default=25)
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.quick:
        args.width, args.warmup, args.rounds, args.eval_rounds = 0.25, 1, 1, 1
        args.in_process = True
        args.threads = args.threads or 1
        args.memory_batch, args.memory_resolution = 2, 64
    if args.warmup < 0 or args.rounds < 1 or args.eval_rounds < 1 or args.block < 1:
        p.error("--rounds, --block and --eval-rounds must be >= 1 and --warmup >= 0")
    return args


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda but CUDA is not available; use --device cpu")
    threads_before = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _run(args, device)
    finally:
        torch.set_num_threads(threads_before)


def _run(args, device):
    shapes = QUICK_SHAPES if args.quick else SHAPES
    heap_reused = False if args.system_malloc else reuse_freed_memory()
    results = dict(
        meta=dict(torch=torch.__version__, python=platform.python_version(),
                  machine=platform.processor() or platform.machine(), device=str(device),
                  threads=torch.get_num_threads(), quick=args.quick, width_mult=args.width,
                  warmup=args.warmup, rounds=args.rounds, argv=args.argv,
                  reuse_freed_memory=heap_reused,
                  in_process=args.in_process, block=args.block,
                  memory_method=("torch.cuda.max_memory_allocated" if device.type == "cuda"
                                 else "peak_tensor: torch.profiler allocation events; peak (rss): "
                                      "VmHWM above RSS before the step, after malloc_trim")),
        train_step=[], train_ratios=[], memory=[], eval=[])
    if "train" in args.sections:
        bench_train(args, shapes, device, results)
        print("\ncomposition/package time (speedup), package time and peak tensors vs bn, "
              "package/composition peak tensors:")
        for r in results["train_ratios"]:
            print(f"  {r['shape']:>6} {r['variant']:>4} step{r['step']}: "
                  f"speedup {_fmt(r['speedup_vs_composition'], '.2f')}x "
                  f"(cpu {_fmt(r['cpu_speedup_vs_composition'], '.2f')}x)  "
                  f"vs bn {_fmt(r['time_vs_bn_package'], '.2f')} "
                  f"(peak tensors {_fmt(r['peak_tensors_vs_bn_package'], '.2f')})  "
                  f"memory {_fmt(r['memory_vs_composition'], '.2f')}")
    if "memory" in args.sections:
        bench_memory(args, device, results)
    if "eval" in args.sections:
        bench_eval(args, shapes, device, results)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
        print(f"wrote {args.json}")
    return results


if __name__ == "__main__":
    main()
