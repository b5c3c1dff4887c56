"""GPU check: the CUDA tests, training throughput and a short engine run on one GPU, one table.

    make gpu-check                                         # = python benchmarks/gpu_check.py
    python benchmarks/gpu_check.py --json gpu_check.json   # also keep every number
    python benchmarks/gpu_check.py --device cpu --quick    # the same plumbing, tiny, on CPU

Nothing is downloaded; about 4-5 minutes on one recent data-centre GPU. Three parts,
each its own process with its own time limit (a part that hangs cannot eat the others'
time), then one Markdown table to paste into the README:

1. tests   ``pytest -m cuda`` (tests/test_cuda.py): fused weight paths on CUDA, the
           network on CUDA against CPU, a bf16 + channels_last training step, the
           engine with fp16 and its GradScaler.
2. speed   ``benchmarks/gpu_throughput.py``: ReActNet-A step 2, 224 px, batch 256 (or
           the largest that fits), bf / bn / none: composition fp32, package fp32,
           bf16 + channels_last, and for bf also ``torch.compile``; images/s and peak
           GPU memory.
3. engine  ``python -m bnn_helpers.train`` with the ImageNet recipe on a generated
           ImageFolder (10 classes of 256-px JPEGs: scikit-learn's digits drawn over
           its sample photos), both steps x 2 epochs at 224 px, bf16 autocast,
           channels_last, 4 loader workers. Cross-entropy instead of distillation:
           the recipe's teacher would need a download.

Exits non-zero when a part fails. ``--device cpu --quick`` runs all three on a tiny
network and tiny images (the CUDA tests then report "skipped"), which is how the
tests check this script without a GPU.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


def run_part(name: str, cmd: list[str], limit_s: int, env: dict | None = None):
    """Run one part; returns (ok, seconds, last lines of output)."""
    print(f"== {name}: {' '.join(cmd)}", flush=True)
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=limit_s,
                              env={**os.environ, **(env or {})})
        ok, output = proc.returncode == 0, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        ok = False
        output = f"{exc.stdout or ''}{exc.stderr or ''}\nstopped after the {limit_s} s limit"
    seconds = time.perf_counter() - start
    tail = "\n".join(output.strip().splitlines()[-15:])
    print(tail, f"\n-- {name}: {'ok' if ok else 'FAILED'} in {seconds:.0f} s", flush=True)
    return ok, seconds, output


def tests_part(args):
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider",
           "tests/test_cuda.py"]
    ok, seconds, output = run_part("tests", cmd, args.limit_tests)
    found = re.findall(r"^=*\s*(\d+ (?:passed|failed|skipped|errors?|deselected).*?) in [\d.]+s",
                       output, re.M)
    summary = found[-1] if found else "no pytest summary"
    return dict(part="tests", ok=ok, seconds=seconds, summary=summary)


def speed_part(args, workdir: Path):
    out = workdir / "throughput.json"
    cmd = [sys.executable, str(BENCH / "gpu_throughput.py"), "--device", args.device,
           "--json", str(out)]
    if args.quick:
        cmd += ["--quick", "--no-compile"]
    ok, seconds, _ = run_part("speed", cmd, args.limit_speed)
    rows = json.loads(out.read_text())["rows"] if ok and out.is_file() else []
    return dict(part="speed", ok=ok, seconds=seconds, rows=rows)


def engine_part(args, workdir: Path):
    from bnn_helpers.data import write_image_folder

    start = time.perf_counter()
    size, train, val, classes = (40, 8, 4, 3) if args.quick else (256, 64, 16, 10)
    data = write_image_folder(workdir / "folder", train, val, size=size, classes=classes)
    data_s = time.perf_counter() - start
    cmd = [sys.executable, "-m", "bnn_helpers.train", "--config",
           str(ROOT / "configs" / "imagenet" / "reactnet_a_bf.yaml"), "--data-dir", str(data),
           "--output-dir", str(workdir / "runs"), "--name", "gpu_check", "--device", args.device,
           "--epochs", "2", "--lr-schedule", "linear", "--loss", "ce", "--amp", "bf16",
           "--channels-last", "true", "--progress", "log"]
    if args.quick:
        cmd += ["--width-mult", "0.25", "--image-size", "32", "--val-resize", "36",
                "--batch-size", "8", "--workers", "0", "--threads", "1"]
    else:
        cmd += ["--batch-size", "64", "--workers", "4"]
    ok, seconds, _ = run_part("engine", cmd, args.limit_engine)
    summary = workdir / "runs" / "gpu_check" / "summary.csv"
    rows = list(csv.DictReader(summary.open())) if ok and summary.is_file() else []
    return dict(part="engine", ok=ok, seconds=seconds, data_seconds=data_s, rows=rows,
                image_size=32 if args.quick else 224, batch=8 if args.quick else 64,
                images=train * classes)


def table(parts: list[dict], device_name: str) -> str:
    lines = [f"GPU check on {device_name}",
             "",
             "| part | what | batch | images/s | peak GiB | result |",
             "|---|---|---|---|---|---|"]
    for part in parts:
        status = "ok" if part["ok"] else "FAILED"
        if part["part"] == "tests":
            lines.append(f"| tests | `pytest -m cuda` | | | | {part['summary']} ({status}) |")
        elif part["part"] == "speed":
            for r in part["rows"]:
                peak = "" if r["peak_memory_gib"] is None else f"{r['peak_memory_gib']:.2f}"
                lines.append(f"| speed | {r['variant']} {r['setting']} | {r['batch']} | "
                             f"{r['images_per_s']:.1f} | {peak} | "
                             f"{r['speedup_vs_composition']:.2f}x vs composition |")
            if not part["rows"]:
                lines.append(f"| speed | gpu_throughput.py | | | | {status} |")
        else:
            last = {int(r["step"]): r for r in part["rows"]}
            if not last:
                lines.append(f"| engine | train CLI, 2 steps x 2 epochs | | | | {status} |")
            for step, r in sorted(last.items()):
                lines.append(
                    f"| engine | bf step {step}, epoch {r['epoch']}, {part['image_size']} px, bf16 + "
                    f"channels_last, {part['images']} images | {part['batch']} | "
                    f"{float(r['images_per_s']):.1f} | | val top-1 {float(r['val_top1']):.1f} %, "
                    f"train loss {float(r['train_loss']):.3f} ({status}) |")
    total = sum(p["seconds"] for p in parts)
    lines += ["", f"total {total:.0f} s (" + ", ".join(f"{p['part']} {p['seconds']:.0f} s"
                                                   for p in parts) + ")"]
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (default), or cpu with --quick")
    p.add_argument("--quick", action="store_true", help="tiny network and images (for tests)")
    p.add_argument("--json", type=Path, help="write the parts and every number to this file")
    p.add_argument("--limit-tests", type=int, default=120, help="seconds for part 1")
    p.add_argument("--limit-speed", type=int, default=240, help="seconds for part 2")
    p.add_argument("--limit-engine", type=int, default=180, help="seconds for part 3")
    args = p.parse_args(argv)
    if args.device == "cpu" and not args.quick:
        p.error("--device cpu measures nothing useful at full size; add --quick")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA GPU is visible; run this on a GPU machine "
              "(or `--device cpu --quick` to exercise the plumbing)", file=sys.stderr)
        return 2
    device_name = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        workdir = Path(tmp)
        parts = [tests_part(args), speed_part(args, workdir), engine_part(args, workdir)]
    report = table(parts, device_name)
    print("\n" + report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(dict(device=device_name, torch=torch.__version__,
                                             parts=parts, table=report), indent=1))
    return 0 if all(p["ok"] for p in parts) else 1


if __name__ == "__main__":
    sys.exit(main())
