"""Building and loading the native library (``csrc/bitconv.cpp``: the 1-bit kernels,
``csrc/weight_path.cpp``: the BN-free training weight path): the compiler, the cache
folder and key, the compile itself, and the ``ctypes`` signatures. See
:mod:`bnn_helpers.bitconv_native` and :mod:`bnn_helpers.weight_native` for where they
run and how to switch them.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

__all__ = ["SOURCE", "SOURCES", "FLAGS", "OPENMP_FLAGS", "ABI_VERSION", "BlockA", "cache_dir", "find_compiler", "library_path",
           "compile_library", "load_library", "build_and_load"]

SOURCE = Path(__file__).with_name("csrc") / "bitconv.cpp"
SOURCES = (SOURCE, SOURCE.with_name("weight_path.cpp"))  # compiled into one library
# -pthread: the weight path starts std::threads (a no-op on glibc >= 2.34, needed before)
FLAGS = ("-O3", "-std=c++14", "-fPIC", "-shared", "-pthread", "-ffp-contract=off",
         "-fno-fast-math", "-fvisibility=hidden")
# Tried first, dropped if the compiler lacks it (e.g. Apple clang). With it the weight path
# splits its rows over the OpenMP pool torch itself runs on: the loader resolves
# libgomp.so.1 to the copy torch already loaded, whose workers stay awake (spinning)
# between torch's ops, so threads of our own would compete with them for the cores
# (measured: the weight path's backward 53 ms with its own threads, 27 ms on the pool,
# in a ReActNet-A training step on 2 cores).
OPENMP_FLAGS = ("-fopenmp",)
ABI_VERSION = 2


def cache_dir() -> Path:
    if os.environ.get("BNN_NATIVE_CACHE"):
        return Path(os.environ["BNN_NATIVE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "bnn_helpers" / "native"


def find_compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        path = shutil.which(name) if name else None
        if path:
            return path
    return None


def library_path(compiler: str) -> Path:
    key = hashlib.sha256()
    for part in (*(src.read_bytes() for src in SOURCES), repr(FLAGS + OPENMP_FLAGS).encode(), os.path.realpath(compiler).encode(),
                 platform.machine().encode(), sys.platform.encode(), str(ABI_VERSION).encode()):
        key.update(part)
        key.update(b"\0")
    return cache_dir() / f"bitconv-{key.hexdigest()[:16]}" / "libbitconv.so"


def compile_library(compiler: str, target: Path) -> float:
    """Compile the source into ``target`` (atomically); returns the seconds it took."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    t0 = time.perf_counter()
    for extra in (OPENMP_FLAGS, ()):  # without OpenMP the weight path starts its own threads
        try:
            proc = subprocess.run([compiler, *FLAGS, *extra, "-o", str(tmp), *map(str, SOURCES)],
                                  capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.SubprocessError) as err:
            raise RuntimeError(f"running {compiler} failed: {err}") from None
        if proc.returncode == 0:
            break
    if proc.returncode != 0:
        log = target.with_name("build.log")
        log.write_text(proc.stdout + proc.stderr)
        first = next((ln for ln in proc.stderr.splitlines() if "error" in ln),
                     proc.stderr.strip().splitlines()[0] if proc.stderr.strip() else "no output")
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"{os.path.basename(compiler)} failed: {first.strip()[:160]} "
                           f"(log: {log})")
    os.replace(tmp, target)  # atomic: a concurrent build just replaces an identical file
    return time.perf_counter() - t0


class BlockA(ctypes.Structure):
    """Mirror of ``struct BlockA`` in csrc/bitconv.cpp."""
    _fields_ = [("C", ctypes.c_int64), ("Cout", ctypes.c_int64), ("stride", ctypes.c_int64),
                ("Wd", ctypes.c_int64), ("lower1", ctypes.c_void_p), ("upper1", ctypes.c_void_p),
                ("w3", ctypes.c_void_p), ("zw3", ctypes.c_void_p), ("nzw3", ctypes.c_int64),
                ("scale1", ctypes.c_void_p), ("pool_scale", ctypes.c_float),
                ("unused", ctypes.c_float), ("shift_in1", ctypes.c_void_p),
                ("slope1", ctypes.c_void_p), ("shift_out1", ctypes.c_void_p),
                ("lower2", ctypes.c_void_p), ("upper2", ctypes.c_void_p), ("w1", ctypes.c_void_p),
                ("zw1", ctypes.c_void_p), ("nzw1", ctypes.c_int64), ("scale2", ctypes.c_void_p),
                ("shift_in2", ctypes.c_void_p), ("slope2", ctypes.c_void_p),
                ("shift_out2", ctypes.c_void_p)]


def load_library(path: Path):
    lib = ctypes.CDLL(str(path))
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    lib.bnn_abi_version.restype = ctypes.c_int
    lib.bnn_uses_popcnt.restype = ctypes.c_int
    lib.bnn_block_a_size.restype = ctypes.c_int
    lib.bnn_profile.argtypes = [ctypes.c_int]
    lib.bnn_profile.restype = None
    lib.bnn_profile_read.argtypes = [ctypes.POINTER(ctypes.c_double)]
    lib.bnn_profile_read.restype = None
    lib.bnn_pack_signs.argtypes = [ptr, i64, i64, ptr, ptr, ptr, ptr, i64]
    lib.bnn_pack_signs.restype = None
    lib.bnn_conv.argtypes = [ptr, ptr, i64, i64, i64, i64, ptr, i64, i64, i64, i64, ptr, i64,
                             ptr, i64, i64, i64]
    lib.bnn_conv.restype = None
    lib.bnn_block_a.argtypes = [ctypes.POINTER(BlockA), ptr, i64, i64, i64, ptr, ptr, ptr]
    lib.bnn_block_a.restype = None
    dbl, i32 = ctypes.c_double, ctypes.c_int
    lib.bnn_ws_forward.argtypes = [ptr, i64, i64, dbl, ptr, i32, ptr, ptr, i32]
    lib.bnn_ws_forward.restype = None
    lib.bnn_ws_backward.argtypes = [ptr, ptr, i64, i64, ptr, ptr, i32, ptr, ptr, i32]
    lib.bnn_ws_backward.restype = None
    lib.bnn_ws_simd.argtypes = [i32]
    lib.bnn_ws_simd.restype = i32
    lib.bnn_ws_openmp.restype = i32
    if lib.bnn_abi_version() != ABI_VERSION or lib.bnn_block_a_size() != ctypes.sizeof(BlockA):
        raise RuntimeError(f"{path} does not match this bnn_helpers (ABI/struct mismatch)")
    return lib


def build_and_load():
    """Compile if not cached, load; returns ``(lib, path, build seconds or None)``."""
    compiler = find_compiler()
    if compiler is None:
        raise RuntimeError("no C++ compiler found (set CXX, or install g++ / clang++)")
    path = library_path(compiler)
    build_s = None
    if not path.is_file():
        build_s = compile_library(compiler, path)
    try:
        return load_library(path), path, build_s
    except OSError as err:  # e.g. a truncated file: rebuild once
        if build_s is not None:
            raise RuntimeError(f"cannot load {path}: {err}") from None
        build_s = compile_library(compiler, path)
        return load_library(path), path, build_s
