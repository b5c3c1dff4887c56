"""The benchmark scripts run end to end in quick mode (timings are never asserted)."""
import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import gpu_throughput  # noqa: E402
import train_step  # noqa: E402
import weight_path  # noqa: E402


def test_train_step_quick_writes_complete_json(tmp_path):
    out = tmp_path / "train_step.json"
    results = train_step.main(["--quick", "--json", str(out), "--variants", "bf", "bn",
                               "--steps-of", "2"])
    saved = json.loads(out.read_text())
    assert saved["meta"]["quick"] and saved["meta"]["memory_method"]
    rows = saved["train_step"]
    assert {(r["shape"], r["variant"], r["impl"]) for r in rows} == {
        (s, v, i) for s in ("32px", "224px") for v in ("bf", "bn")
        for i in ("package", "composition")}
    for row in rows:
        assert row["median_s"] > 0 and row["images_per_s"] > 0
        assert row["peak_mib"] is None or row["peak_mib"] >= 0
        assert row["saved_mib"] > 0
    ratios = {(r["shape"], r["variant"]): r for r in saved["train_ratios"]}
    assert ratios[("32px", "bf")]["speedup_vs_composition"] > 0
    assert ratios[("32px", "bn")]["time_vs_bn_package"] == 1.0
    assert len(saved["memory"]) == 1 and saved["memory"][0]["batch"] == 2
    assert {r["shape"] for r in saved["eval"]} == {"32px", "224px"}
    assert results["eval"][0]["cached_images_per_s"] > 0


def test_weight_path_micro_benchmark_runs(tmp_path):
    from bnn_helpers import bitconv_native, weight_native

    try:
        bitconv_native.build()
    except RuntimeError as err:
        pytest.skip(f"native library unavailable: {err}")
    out = tmp_path / "weight_path.json"
    med = weight_path.main(["--width", "0.125", "--rounds", "1", "--warmup", "0",
                            "--simd", "baseline", "--json", str(out)])
    assert set(med) == {"bf native", "bf torch", "bn", "kernel only", "memory bound"}
    lib = bitconv_native._state["lib"]
    assert weight_native.simd(lib) == weight_native.simd(lib, "best")  # restored after the run
    saved = json.loads(out.read_text())["median_ms"]
    assert all(saved[k]["cpu"] > 0 and saved[k]["fwd_cpu"] >= 0 for k in med)


def test_train_step_rejects_bad_arguments():
    with pytest.raises(SystemExit):
        train_step.parse_args(["--rounds", "0"])


def test_gpu_throughput_exits_cleanly_without_cuda(capsys):
    if gpu_throughput.torch.cuda.is_available():
        pytest.skip("a GPU is present: the real benchmark would run")
    assert gpu_throughput.main([]) is None
    assert "CUDA is not available" in capsys.readouterr().out


def test_gpu_throughput_code_path_on_cpu(tmp_path):
    # torch.compile (eager backend) traces the whole network: about a minute on
    # 2 busy cores, so it runs only when asked for.
    extra = [] if os.environ.get("BNN_BENCH_COMPILE") == "1" else ["--no-compile"]
    out = tmp_path / "gpu.json"
    result = gpu_throughput.main(["--device", "cpu", "--quick", "--json", str(out),
                                  "--variants", "bf", "bn", *extra])
    rows = {(r["variant"], r["setting"]) for r in result["rows"]}
    for variant in ("bf", "bn"):
        assert {(variant, s) for s in ("composition fp32", "package fp32", "package bf16+cl")} <= rows
    assert ("bn", "package bf16+cl+compile") not in rows        # compile: bf only by default
    assert all(r["speedup_vs_composition"] == 1.0 for r in result["rows"]
               if r["setting"] == "composition fp32")
    assert json.loads(out.read_text())["batch"] == 2 and all(r["batch"] == 2 for r in result["rows"])


def test_gpu_check_plumbing_on_cpu(tmp_path):
    """The three parts and the table, tiny and on CPU (the CUDA tests report 'skipped')."""
    import gpu_check
    out = tmp_path / "check.json"
    assert gpu_check.main(["--device", "cpu", "--quick", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    tests, speed, engine = result["parts"]
    assert tests["ok"] and "skipped" in tests["summary"]
    assert {r["variant"] for r in speed["rows"]} == {"bf", "bn", "none"}
    assert sorted(int(r["step"]) for r in engine["rows"]) == [1, 1, 2, 2]
    assert "| engine | bf step 2" in result["table"] and "| speed | none package fp32" in result["table"]


def test_gpu_check_without_cuda_says_what_to_do(capsys):
    import gpu_check
    if gpu_throughput.torch.cuda.is_available():
        pytest.skip("a GPU is present: the real check would run")
    assert gpu_check.main([]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err


def test_train_step_worker_processes(tmp_path):
    """The default measurement: one process per variant and implementation, timed in blocks."""
    out = tmp_path / "workers.json"
    train_step.main(["--sections", "train", "--shapes", "32px", "--variants", "bf", "bn",
                     "--steps-of", "2", "--width", "0.125", "--threads", "1", "--warmup", "0",
                     "--rounds", "2", "--block", "2", "--json", str(out)])
    saved = json.loads(out.read_text())
    assert not saved["meta"]["in_process"]
    rows = {(r["variant"], r["impl"]): r for r in saved["train_step"]}
    assert set(rows) == {(v, i) for v in ("bf", "bn") for i in ("package", "composition")}
    for row in rows.values():
        assert len(row["times_s"]) == 4 and row["peak_tensor_mib"] > 0
    # Exact, so the same model gives the same bytes in any process: the composition keeps
    # more for backward than the package, in every worker.
    for variant in ("bf", "bn"):
        assert rows[variant, "package"]["saved_mib"] < rows[variant, "composition"]["saved_mib"]
        assert rows[variant, "package"]["peak_tensor_mib"] < rows[variant, "composition"]["peak_tensor_mib"]


def test_peak_tensor_bytes_is_exact_on_cpu():
    import torch
    kept = []

    def step():  # peaks at 3 MiB (a, then b while a is alive); 1 MiB stays live after it
        a = torch.ones(2 << 18)
        b = torch.ones(1 << 18)
        kept.append(b)
        del a

    assert train_step.peak_tensor_bytes(step, torch.device("cpu")) == 3 << 20
