// The BN-free training weight path (bnn_helpers.binarize), one output channel at a time.
//
// Per output channel ("row", n = fan-in weights) with u = w - mean, biased std,
// s = std + eps and c = 1/sqrt(n):
//   standardize:  out = u * (c/s * gain)
//   binarize:     out = sign(u) * (scale * gain),  scale = c/s * mean|u|  (one multiply,
//                 so every entry of a row is exactly +-(scale*gain) or 0)
//   backward:     grad_w = a * (g - mean(g)) - k * u,  a = gain * c/s,
//                 k = a * sum(g*u) / (s * std * n)   (the STE clamp never clips here)
// A row is at most 9216 floats (36 KB) in ReActNet-A, so it stays in L2 between the
// passes: forward reads w from memory once and writes out once; backward reads w and
// grad once and writes grad_w once. The torch path makes ~6 + ~8 full passes.
//
// Statistics and the backward arithmetic run in double (the results are rounded to
// float32 once). Sums use kLanes independent partial sums combined in a fixed order:
// without -ffast-math the compiler may not reorder one running sum, and separate
// lanes let it vectorise while the result stays the same for any ISA or thread count
// (each row is computed by exactly one thread, always in the same order).
//
// Same build as bitconv.cpp (one library, plain C ABI via ctypes, -ffp-contract=off),
// with -fopenmp where the compiler has it (parallel_rows then uses torch's OpenMP pool).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <system_error>
#include <thread>
#include <vector>

#define BNN_EXPORT extern "C" __attribute__((visibility("default")))

namespace {

using i64 = int64_t;
constexpr int kLanes = 16;              // independent partial sums per accumulator
constexpr i64 kMinPerThread = 1 << 16;  // below this a thread costs more than it saves

#define BNN_INLINE inline __attribute__((always_inline))

BNN_INLINE double combine(const double* acc) {  // fixed pairwise order
    double t[kLanes];
    for (int j = 0; j < kLanes; ++j) t[j] = acc[j];
    for (int h = kLanes / 2; h >= 1; h /= 2)
        for (int j = 0; j < h; ++j) t[j] = t[j] + t[j + h];
    return t[0];
}

// sign(w - mean) for float w and double mean, in float arithmetic: lo <= mean <= hi are
// the neighbouring floats (equal when mean is a float), so w > mean <=> w > lo and
// w < mean <=> w < hi. Branch-free: the signs of a row are random.
struct Split {
    float lo, hi;
    explicit Split(double mean) {
        const float f = float(mean);
        lo = hi = f;
        if (double(f) < mean) hi = std::nextafter(f, std::numeric_limits<float>::infinity());
        if (double(f) > mean) lo = std::nextafter(f, -std::numeric_limits<float>::infinity());
    }
    BNN_INLINE float sign(float w) const { return float(int(w > lo) - int(w < hi)); }
};

// Per-row statistics, as saved for backward: mean, std, s = std + eps, scale (float32
// value actually used by the binarized output; 0 for standardize).
struct Stats {
    double mean, std, s, scale;
};

BNN_INLINE Stats row_stats(const float* w, i64 n, double eps, bool want_l1) {
    double acc[kLanes] = {0}, sq[kLanes] = {0}, ab[kLanes] = {0};
    const i64 body = n - n % kLanes;
    for (i64 i = 0; i < body; i += kLanes)
        for (int j = 0; j < kLanes; ++j) acc[j] += double(w[i + j]);
    for (i64 i = body; i < n; ++i) acc[i - body] += double(w[i]);
    Stats st;
    st.mean = combine(acc) / double(n);
    const double mean = st.mean;
    for (i64 i = 0; i < body; i += kLanes)
        for (int j = 0; j < kLanes; ++j) {
            const double d = double(w[i + j]) - mean;
            sq[j] += d * d;
            ab[j] += std::fabs(d);
        }
    for (i64 i = body; i < n; ++i) {
        const double d = double(w[i]) - mean;
        sq[i - body] += d * d;
        ab[i - body] += std::fabs(d);
    }
    st.std = std::sqrt(combine(sq) / double(n));
    st.s = st.std + eps;
    const double c = 1.0 / std::sqrt(double(n));
    st.scale = want_l1 ? double(float(c / st.s * (combine(ab) / double(n)))) : 0.0;
    return st;
}

BNN_INLINE void forward_impl(const float* w, i64 r0, i64 r1, i64 n, double eps,
                             const float* gain, bool binarize, float* out, double* stats) {
    const double c = 1.0 / std::sqrt(double(n));
    for (i64 r = r0; r < r1; ++r) {
        const float* wr = w + r * n;
        float* o = out + r * n;
        const Stats st = row_stats(wr, n, eps, binarize);
        double* sv = stats + 4 * r;
        sv[0] = st.mean, sv[1] = st.std, sv[2] = st.s, sv[3] = st.scale;
        const double mean = st.mean;
        if (binarize) {
            if (!std::isfinite(st.std)) {  // a NaN/inf weight: the torch path gives NaN too
                std::fill(o, o + n, std::numeric_limits<float>::quiet_NaN());
                continue;
            }
            const Split split(mean);
            // float32 product, as torch's scale * gain; then one multiply per entry
            const float m = gain ? float(st.scale) * gain[r] : float(st.scale);
            for (i64 i = 0; i < n; ++i) o[i] = split.sign(wr[i]) * m;
        } else {
            const double f = gain ? c / st.s * double(gain[r]) : c / st.s;
            for (i64 i = 0; i < n; ++i) o[i] = float((double(wr[i]) - mean) * f);
        }
    }
}

// Per-row sums of g, g*u and (kSigns) g*sign(u), kLanes partial sums each, one pass.
template <bool kSigns>
BNN_INLINE void grad_sums(const float* w, const float* g, i64 n, double mean, double* out3) {
    double sg[kLanes] = {0}, sgu[kLanes] = {0}, sgs[kLanes] = {0};
    const Split split(mean);
    const i64 body = n - n % kLanes;
    for (i64 i = 0; i < body; i += kLanes)
        for (int j = 0; j < kLanes; ++j) {
            const double gi = double(g[i + j]);
            sg[j] += gi;
            sgu[j] += gi * (double(w[i + j]) - mean);
            if (kSigns) sgs[j] += double(split.sign(w[i + j]) * g[i + j]);  // exact: +-g or 0
        }
    for (i64 i = body; i < n; ++i) {
        const double gi = double(g[i]);
        sg[i - body] += gi;
        sgu[i - body] += gi * (double(w[i]) - mean);
        if (kSigns) sgs[i - body] += double(split.sign(w[i]) * g[i]);
    }
    out3[0] = combine(sg), out3[1] = combine(sgu), out3[2] = kSigns ? combine(sgs) : 0.0;
}

BNN_INLINE void backward_impl(const float* w, const float* grad, i64 r0, i64 r1, i64 n,
                              const double* stats, const float* gain, bool binarize,
                              float* grad_w, float* grad_gain) {
    const double c = 1.0 / std::sqrt(double(n));
    const bool signs = binarize && grad_gain;  // d out/d gain needs sum(g * sign(u))
    for (i64 r = r0; r < r1; ++r) {
        const float* wr = w + r * n;
        const float* g = grad + r * n;
        const double* sv = stats + 4 * r;
        const double mean = sv[0], std = sv[1], s = sv[2], scale = sv[3];
        double sums[3];
        if (signs)
            grad_sums<true>(wr, g, n, mean, sums);
        else
            grad_sums<false>(wr, g, n, mean, sums);
        const double dot = sums[1];
        if (grad_gain) grad_gain[r] = float(binarize ? sums[2] * scale : dot * (c / s));
        if (!grad_w) continue;
        const double a = gain ? double(gain[r]) * (c / s) : c / s;
        // std == 0 only for a constant row, whose u (and so dot) is exactly 0 in double.
        const double k = std > 0 ? a * dot / (s * std * double(n)) : 0.0;
        const double mg = sums[0] / double(n);
        float* o = grad_w + r * n;
        for (i64 i = 0; i < n; ++i)
            o[i] = float(a * (double(g[i]) - mg) - k * (double(wr[i]) - mean));
    }
}

// ---------------------------------------------------------------- ISA dispatch
// The same code compiled for the baseline ISA, for AVX2 (4 doubles per vector) and for
// AVX-512 (8), picked at run time like bitconv.cpp's popcount. All do the same IEEE
// operations per lane in the same order (no FMA: -ffp-contract=off), so they give the
// same bits.
enum Simd { kBaseline = 0, kAvx2 = 1, kAvx512 = 2 };
#if defined(__x86_64__) || defined(__i386__)
#define BNN_AVX2 __attribute__((target("avx2")))
#define BNN_AVX512 __attribute__((target("avx2,avx512f,avx512dq,avx512vl,avx512bw")))
int best_simd() {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw"))
        return kAvx512;
    return __builtin_cpu_supports("avx2") ? kAvx2 : kBaseline;
}
#else
#define BNN_AVX2
#define BNN_AVX512
int best_simd() { return kBaseline; }
#endif
const int g_best_simd = best_simd();
int g_simd = g_best_simd;

#define BNN_FORWARD_ARGS const float *w, i64 r0, i64 r1, i64 n, double eps, \
    const float *gain, bool binarize, float *out, double *stats
#define BNN_BACKWARD_ARGS const float *w, const float *grad, i64 r0, i64 r1, i64 n, \
    const double *stats, const float *gain, bool binarize, float *grad_w, float *grad_gain
#define BNN_FORWARD_CALL forward_impl(w, r0, r1, n, eps, gain, binarize, out, stats)
#define BNN_BACKWARD_CALL \
    backward_impl(w, grad, r0, r1, n, stats, gain, binarize, grad_w, grad_gain)
BNN_AVX512 void forward_avx512(BNN_FORWARD_ARGS) { BNN_FORWARD_CALL; }
BNN_AVX2 void forward_avx2(BNN_FORWARD_ARGS) { BNN_FORWARD_CALL; }
void forward_generic(BNN_FORWARD_ARGS) { BNN_FORWARD_CALL; }
BNN_AVX512 void backward_avx512(BNN_BACKWARD_ARGS) { BNN_BACKWARD_CALL; }
BNN_AVX2 void backward_avx2(BNN_BACKWARD_ARGS) { BNN_BACKWARD_CALL; }
void backward_generic(BNN_BACKWARD_ARGS) { BNN_BACKWARD_CALL; }

// Rows [0, rows) split into contiguous blocks, one per thread; the caller's thread takes
// the first block. If a thread cannot be started its block runs on the caller's thread.
template <class Fn>
void parallel_rows(i64 rows, i64 n, int threads, Fn fn) {
    i64 t = std::max<i64>(1, std::min<i64>({i64(threads), rows, rows * n / kMinPerThread}));
    const i64 chunk = (rows + t - 1) / t;
#ifdef _OPENMP
    // Built with OpenMP: the blocks run on the OpenMP pool torch already uses (the loader
    // resolves libgomp.so.1 to torch's copy), whose workers are awake between torch's ops,
    // instead of new threads that would compete with them for the cores.
    if (t > 1) {
#pragma omp parallel for num_threads(int(t)) schedule(static, 1)
        for (i64 b = 0; b < t; ++b) {
            const i64 r0 = b * chunk, r1 = std::min(rows, r0 + chunk);
            if (r0 < r1) fn(r0, r1);
        }
        return;
    }
#endif
    std::vector<std::thread> pool;
    std::vector<std::pair<i64, i64>> inline_blocks;
    for (i64 r0 = chunk; r0 < rows; r0 += chunk) {
        const i64 r1 = std::min(rows, r0 + chunk);
        try {
            pool.emplace_back(fn, r0, r1);
        } catch (const std::system_error&) {
            inline_blocks.emplace_back(r0, r1);
        }
    }
    fn(i64(0), std::min(rows, chunk));
    for (auto& b : inline_blocks) fn(b.first, b.second);
    for (auto& th : pool) th.join();
}

}  // namespace

// w, out: (rows, n) float32 contiguous; gain: rows float32 or null; stats: (rows, 4)
// double out (mean, std, std + eps, scale). binarize != 0: sign path, else standardize.
BNN_EXPORT void bnn_ws_forward(const float* w, i64 rows, i64 n, double eps, const float* gain,
                               int binarize, float* out, double* stats, int threads) {
    const auto fn = g_simd == kAvx512 ? forward_avx512 : g_simd == kAvx2 ? forward_avx2
                                                                         : forward_generic;
    parallel_rows(rows, n, threads, [=](i64 r0, i64 r1) {
        fn(w, r0, r1, n, eps, gain, binarize != 0, out, stats);
    });
}

// grad_w (rows, n) and grad_gain (rows) are written when not null; stats from forward.
BNN_EXPORT void bnn_ws_backward(const float* w, const float* grad, i64 rows, i64 n,
                                const double* stats, const float* gain, int binarize,
                                float* grad_w, float* grad_gain, int threads) {
    const auto fn = g_simd == kAvx512 ? backward_avx512 : g_simd == kAvx2 ? backward_avx2
                                                                          : backward_generic;
    parallel_rows(rows, n, threads, [=](i64 r0, i64 r1) {
        fn(w, grad, r0, r1, n, stats, gain, binarize != 0, grad_w, grad_gain);
    });
}

// 1 if the library was built with OpenMP (parallel_rows uses the OpenMP pool), else 0.
BNN_EXPORT int bnn_ws_openmp() {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

// The build of the loops that runs: 0 baseline, 1 AVX2, 2 AVX-512. simd = 0, 1 or 2
// selects that build (capped at what the CPU has), simd = 3 restores the best one,
// anything else only asks (for tests: the same bits either way).
BNN_EXPORT int bnn_ws_simd(int simd) {
    if (simd >= kBaseline && simd <= kAvx512) g_simd = std::min(simd, g_best_simd);
    if (simd == 3) g_simd = g_best_simd;
    return g_simd;
}
