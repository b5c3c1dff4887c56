// Native kernels for bnn_helpers.deploy: bit-packed 1-bit convolution (XOR + popcount on
// 64-bit words), sign thresholds -> bit planes, and one fused ReActNet-A block.
//
// Plain C ABI, loaded with ctypes by bnn_helpers/bitconv_native.py; no torch headers, so
// it builds in about a second with any C++11 compiler and does not depend on the torch
// version. These entry points are single-threaded (weight_path.cpp's are threaded).
//
// Portability: the binary is built WITHOUT -march=native. The hot loops are compiled
// twice, once for the baseline ISA and once with the POPCNT instruction enabled
// (target attribute); the choice is made at run time from the CPU, so one cached
// binary is right on every x86-64 machine that shares the cache.
//
// Layout used inside: "planes" = for every pixel of an (N, Hp, Wp) grid (the input
// zero-padded by the conv padding), Wd pairs of 64-bit words (sign bits, valid bits),
// channel c at bit c % 64 of word c / 64. Padded pixels and channels >= C are all 0
// (valid = 0), so they add nothing: for one output pixel and one output channel,
//     dot = popcount(valid) - 2 * popcount((sign XOR weight) AND valid)
// summed over the k*k window, exactly conv2d(ternary activations, +-1 weights).
//
// Floating point: the real-valued parts of the fused block repeat the reference's
// float32 operations one by one, in the same order (build with -ffp-contract=off, no
// fast-math), so they give the same bits as the PyTorch reference.

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define BNN_X86 1
#endif

#define BNN_INLINE inline __attribute__((always_inline))
#define BNN_EXPORT extern "C" __attribute__((visibility("default")))

namespace {

using u64 = uint64_t;
using i64 = int64_t;

constexpr int kAbiVersion = 2;  // 2: + weight_path.cpp
constexpr int kTile = 4;  // output pixels that share each weight word load

// ---------------------------------------------------------------- profiling
// Nanoseconds spent in: 0 packing signs, 1 popcount convolution, 2 real-valued epilogues.
double g_prof_ns[3] = {0, 0, 0};
bool g_profile = false;

struct Clock {
    std::chrono::steady_clock::time_point t;
    BNN_INLINE void start() {
        if (g_profile) t = std::chrono::steady_clock::now();
    }
    BNN_INLINE void stop(int slot) {
        if (g_profile) {
            auto now = std::chrono::steady_clock::now();
            g_prof_ns[slot] += std::chrono::duration<double, std::nano>(now - t).count();
            t = now;
        }
    }
};

// ---------------------------------------------------------------- scratch
template <class T>
T* scratch(std::vector<T>& v, size_t n) {
    if (v.size() < n) v.resize(n);
    return v.data();
}
thread_local std::vector<u64> t_planes_a, t_planes_b;
thread_local std::vector<float> t_mid, t_pooled;
thread_local std::vector<int32_t> t_dots;

BNN_INLINE int popc(u64 x) { return __builtin_popcountll(x); }

// ---------------------------------------------------------------- planes
struct Planes {
    u64* data;
    i64 N, Hp, Wp, Wd;
    BNN_INLINE u64* at(i64 n, i64 y, i64 x) const {
        return data + ((n * Hp + y) * Wp + x) * 2 * Wd;
    }
    BNN_INLINE size_t words() const { return size_t(N * Hp * Wp * 2 * Wd); }
};

// Sign and valid words of one pixel from C float channels: +1 iff x > upper,
// 0 iff lower <= x <= upper (or NaN), -1 iff x < lower.
BNN_INLINE void pack_pixel(const float* x, i64 C, const float* lower, const float* upper,
                           u64* dst, i64 Wd) {
    for (i64 w = 0; w < Wd; ++w) {
        u64 s = 0, v = 0;
        const i64 c0 = w * 64, c1 = std::min<i64>(C, c0 + 64);
        i64 c = c0;
#if defined(__SSE2__)
        for (; c + 4 <= c1; c += 4) {
            const __m128 xv = _mm_loadu_ps(x + c);
            const u64 pos = u64(_mm_movemask_ps(_mm_cmpgt_ps(xv, _mm_loadu_ps(upper + c))));
            const u64 neg = u64(_mm_movemask_ps(_mm_cmplt_ps(xv, _mm_loadu_ps(lower + c))));
            s |= pos << (c - c0);
            v |= (pos | neg) << (c - c0);
        }
#endif
        for (; c < c1; ++c) {
            const u64 pos = x[c] > upper[c], neg = x[c] < lower[c];
            s |= pos << (c - c0);
            v |= (pos | neg) << (c - c0);
        }
        dst[2 * w] = s;
        dst[2 * w + 1] = v;
    }
}

// Pack NHWC floats (N, H, W, C) into planes padded by `pad` on each side.
BNN_INLINE void pack_planes(const float* x, i64 C, const float* lower, const float* upper,
                            const Planes& out, i64 pad) {
    std::memset(out.data, 0, out.words() * sizeof(u64));
    const i64 H = out.Hp - 2 * pad, W = out.Wp - 2 * pad;
    for (i64 n = 0; n < out.N; ++n)
        for (i64 y = 0; y < H; ++y)
            for (i64 xx = 0; xx < W; ++xx)
                pack_pixel(x + ((n * H + y) * W + xx) * C, C, lower, upper,
                           out.at(n, y + pad, xx + pad), out.Wd);
}

// ---------------------------------------------------------------- convolution
struct ConvWeights {
    const u64* w;   // (O, K, K, Wd) words, bit 1 = +1; zero-weight positions hold +1
    i64 O, K, Wd;
    const i64* zw;  // (nzw, 4): (out, in, ky, kx) of weights that are exactly 0
    i64 nzw;
};

struct Taps {  // window rows ky0..ky1-1 and columns kx0..kx1-1 that can touch the input
    i64 ky0, ky1, kx0, kx1;
};

// Taps of the window starting at padded (y, x) that overlap the unpadded input; taps
// outside it only read padding (valid = 0) and are skipped.
BNN_INLINE Taps taps_at(i64 y, i64 x_first, i64 x_last, i64 K, i64 pad, i64 H, i64 W) {
    Taps t;
    t.ky0 = std::max<i64>(0, pad - y);
    t.ky1 = std::min<i64>(K, pad + H - y);
    t.kx0 = std::max<i64>(0, pad - x_last);  // union over the tile's windows
    t.kx1 = std::min<i64>(K, pad + W - x_first);
    return t;
}

// Dots of P output windows (starting at base[p]) with all O output channels over the
// taps `t` -> dots[p * O + o].
template <int P>
BNN_INLINE void tile_dots(const u64* const* base, i64 rowstep, const ConvWeights& cw,
                          const Taps& t, int32_t* dots) {
    const i64 K = cw.K, Wd = cw.Wd;
    const i64 first = t.kx0 * Wd, run = (t.kx1 - t.kx0) * Wd;  // words per window row
    i64 nvalid[P];
    for (int p = 0; p < P; ++p) {
        i64 n = 0;
        for (i64 ky = t.ky0; ky < t.ky1; ++ky) {
            const u64* a = base[p] + ky * rowstep + 2 * first;
            for (i64 l = 0; l < run; ++l) n += popc(a[2 * l + 1]);
        }
        nvalid[p] = n;
    }
    for (i64 o = 0; o < cw.O; ++o) {
        const u64* w = cw.w + o * K * K * Wd + first;
        i64 acc[P];
        for (int p = 0; p < P; ++p) acc[p] = 0;
        for (i64 ky = t.ky0; ky < t.ky1; ++ky) {
            const u64* wr = w + ky * K * Wd;
            const u64* a[P];
            for (int p = 0; p < P; ++p) a[p] = base[p] + ky * rowstep + 2 * first;
            for (i64 l = 0; l < run; ++l) {
                const u64 wl = wr[l];
                for (int p = 0; p < P; ++p) acc[p] += popc((a[p][2 * l] ^ wl) & a[p][2 * l + 1]);
            }
        }
        for (int p = 0; p < P; ++p) dots[p * cw.O + o] = int32_t(nvalid[p] - 2 * acc[p]);
    }
}

// Undo what the +1 bits stored for zero weights added: the activation they saw.
BNN_INLINE void fix_zero_weights(const u64* const* base, int np, i64 rowstep,
                                 const ConvWeights& cw, int32_t* dots) {
    for (i64 z = 0; z < cw.nzw; ++z) {
        const i64 o = cw.zw[4 * z], i = cw.zw[4 * z + 1], ky = cw.zw[4 * z + 2],
                  kx = cw.zw[4 * z + 3];
        for (int p = 0; p < np; ++p) {
            const u64* a = base[p] + ky * rowstep + (kx * cw.Wd + i / 64) * 2;
            const int bit = int(i % 64);
            if ((a[1] >> bit) & 1) dots[p * cw.O + o] -= ((a[0] >> bit) & 1) ? 1 : -1;
        }
    }
}

// Convolution of planes `in` (padded by `pad`) with stride `stride`. Output pixels are
// processed kTile at a time and handed to epi(qs, np, dots), qs = (n * Ho + oy) * Wo + ox.
// With a batch of at least kTile, a tile is one position in kTile images (the same
// taps are valid for all of them, so small maps skip their padding exactly); otherwise
// kTile neighbours in one output row.
template <class Epi>
BNN_INLINE void conv_planes(const Planes& in, i64 pad, const ConvWeights& cw, i64 stride, i64 Ho,
                            i64 Wo, Epi& epi, Clock& clk) {
    const i64 N = in.N, K = cw.K, H = in.Hp - 2 * pad, W = in.Wp - 2 * pad;
    const i64 rowstep = in.Wp * 2 * in.Wd;
    int32_t* dots = scratch(t_dots, size_t(kTile * cw.O));
    const u64* base[kTile];
    i64 qs[kTile];
    if (N >= kTile) {
        for (i64 oy = 0; oy < Ho; ++oy)
            for (i64 ox = 0; ox < Wo; ++ox) {
                const Taps t = taps_at(oy * stride, ox * stride, ox * stride, K, pad, H, W);
                for (i64 n0 = 0; n0 < N; n0 += kTile) {
                    const int np = int(std::min<i64>(kTile, N - n0));
                    for (int p = 0; p < np; ++p) {
                        base[p] = in.at(n0 + p, oy * stride, ox * stride);
                        qs[p] = ((n0 + p) * Ho + oy) * Wo + ox;
                    }
                    if (np == kTile) {
                        tile_dots<kTile>(base, rowstep, cw, t, dots);
                    } else {
                        for (int p = 0; p < np; ++p)
                            tile_dots<1>(base + p, rowstep, cw, t, dots + p * cw.O);
                    }
                    if (cw.nzw) fix_zero_weights(base, np, rowstep, cw, dots);
                    clk.stop(1);
                    epi(qs, np, dots);
                    clk.stop(2);
                }
            }
    } else {
        for (i64 n = 0; n < N; ++n)
            for (i64 oy = 0; oy < Ho; ++oy)
                for (i64 ox0 = 0; ox0 < Wo; ox0 += kTile) {
                    const int np = int(std::min<i64>(kTile, Wo - ox0));
                    for (int p = 0; p < np; ++p) {
                        base[p] = in.at(n, oy * stride, (ox0 + p) * stride);
                        qs[p] = (n * Ho + oy) * Wo + ox0 + p;
                    }
                    if (np == kTile) {
                        const Taps t = taps_at(oy * stride, ox0 * stride,
                                               (ox0 + kTile - 1) * stride, K, pad, H, W);
                        tile_dots<kTile>(base, rowstep, cw, t, dots);
                    } else {
                        for (int p = 0; p < np; ++p) {
                            const i64 x = (ox0 + p) * stride;
                            const Taps t = taps_at(oy * stride, x, x, K, pad, H, W);
                            tile_dots<1>(base + p, rowstep, cw, t, dots + p * cw.O);
                        }
                    }
                    if (cw.nzw) fix_zero_weights(base, np, rowstep, cw, dots);
                    clk.stop(1);
                    epi(qs, np, dots);
                    clk.stop(2);
                }
    }
}

struct StoreEpi {  // int32 dots to a strided (n, pixel, channel) output
    int32_t* out;
    i64 sn, sp, sc, HoWo, O;
    BNN_INLINE void operator()(const i64* qs, int np, const int32_t* dots) const {
        for (int p = 0; p < np; ++p) {
            const i64 q = qs[p];
            int32_t* dst = out + (q / HoWo) * sn + (q % HoWo) * sp;
            for (i64 o = 0; o < O; ++o) dst[o * sc] = dots[p * O + o];
        }
    }
};

// ---------------------------------------------------------------- layer entry points
BNN_INLINE void pack_signs_impl(const float* x, i64 npix, i64 C, const float* lower,
                                const float* upper, uint8_t* bits, uint8_t* valid, i64 B) {
    const i64 Wd = (C + 63) / 64;
    u64 tmp[2 * 64];  // up to 4096 channels per call chunk
    for (i64 q = 0; q < npix; ++q) {
        uint8_t* bq = bits + q * B;
        uint8_t* vq = valid + q * B;
        std::memset(bq, 0, size_t(B));
        std::memset(vq, 0, size_t(B));
        for (i64 w0 = 0; w0 < Wd; w0 += 64) {
            const i64 nw = std::min<i64>(64, Wd - w0);
            pack_pixel(x + q * C + w0 * 64, std::min<i64>(C - w0 * 64, nw * 64), lower + w0 * 64,
                       upper + w0 * 64, tmp, nw);
            for (i64 w = 0; w < nw; ++w) {
                const i64 at = (w0 + w) * 8, len = std::min<i64>(8, B - at);
                if (len <= 0) break;
                std::memcpy(bq + at, &tmp[2 * w], size_t(len));  // little-endian: bit c%8 of byte c/8
                std::memcpy(vq + at, &tmp[2 * w + 1], size_t(len));
            }
        }
    }
}

BNN_INLINE void conv_impl(const uint8_t* bits, const uint8_t* valid, i64 N, i64 H, i64 W, i64 B,
                          const u64* weight, i64 O, i64 K, i64 stride, i64 pad, const i64* zw,
                          i64 nzw, int32_t* out, i64 sn, i64 sp, i64 sc) {
    Clock clk;
    clk.start();
    const i64 Wd = (B + 7) / 8;
    Planes in{nullptr, N, H + 2 * pad, W + 2 * pad, Wd};
    in.data = scratch(t_planes_a, in.words());
    std::memset(in.data, 0, in.words() * sizeof(u64));
    for (i64 n = 0; n < N; ++n)
        for (i64 y = 0; y < H; ++y)
            for (i64 x = 0; x < W; ++x) {
                const i64 q = (n * H + y) * W + x;
                u64* dst = in.at(n, y + pad, x + pad);
                for (i64 w = 0; w < Wd; ++w) {
                    const i64 len = std::min<i64>(8, B - 8 * w);
                    std::memcpy(dst + 2 * w, bits + q * B + 8 * w, size_t(len));
                    std::memcpy(dst + 2 * w + 1, valid + q * B + 8 * w, size_t(len));
                }
            }
    clk.stop(0);
    const i64 Ho = (H + 2 * pad - K) / stride + 1, Wo = (W + 2 * pad - K) / stride + 1;
    ConvWeights cw{weight, O, K, Wd, zw, nzw};
    StoreEpi epi{out, sn, sp, sc, Ho * Wo, O};
    conv_planes(in, pad, cw, stride, Ho, Wo, epi, clk);
}

// ---------------------------------------------------------------- fused ReActNet-A block
struct BlockA {  // mirrored by bitconv_native._BlockA (ctypes); all arrays contiguous
    i64 C, Cout, stride, Wd;
    const float *lower1, *upper1;
    const u64* w3;  // (C, 3, 3, Wd)
    const i64* zw3;
    i64 nzw3;
    const float* scale1;
    float pool_scale, unused;
    const float *shift_in1, *slope1, *shift_out1;  // (C)
    const float *lower2, *upper2;                  // (C)
    const u64* w1;                                 // (Cout, 1, 1, Wd): the 1x1 convs stacked
    const i64* zw1;
    i64 nzw1;
    const float *scale2, *shift_in2, *slope2, *shift_out2;  // (Cout)
};

// out[c] = RPReLU(a[c] + dot[c] * scale[c]) with the reference's float32 steps:
// h = dot * scale; t = a + h; t = t + shift_in; t = t > 0 ? t : slope * t; t + shift_out.
BNN_INLINE void residual_rprelu(float* __restrict out, const float* __restrict a,
                                const int32_t* __restrict dot, const float* __restrict scale,
                                const float* __restrict shift_in, const float* __restrict slope,
                                const float* __restrict shift_out, i64 C) {
    i64 c = 0;
#if defined(__SSE2__)
    const __m128 zero = _mm_setzero_ps();
    for (; c + 4 <= C; c += 4) {
        const __m128 h = _mm_mul_ps(_mm_cvtepi32_ps(_mm_loadu_si128((const __m128i*)(dot + c))),
                                    _mm_loadu_ps(scale + c));
        __m128 t = _mm_add_ps(_mm_add_ps(_mm_loadu_ps(a + c), h), _mm_loadu_ps(shift_in + c));
        const __m128 leaky = _mm_mul_ps(_mm_loadu_ps(slope + c), t);
        const __m128 pos = _mm_cmpgt_ps(t, zero);
        t = _mm_or_ps(_mm_and_ps(pos, t), _mm_andnot_ps(pos, leaky));
        _mm_storeu_ps(out + c, _mm_add_ps(t, _mm_loadu_ps(shift_out + c)));
    }
#endif
    for (; c < C; ++c) {
        float t = a[c] + float(dot[c]) * scale[c];
        t = t + shift_in[c];
        const float leaky = slope[c] * t;  // computed unconditionally: a select, no branch
        t = t > 0.0f ? t : leaky;
        out[c] = t + shift_out[c];
    }
}

struct Half1Epi {
    const BlockA* b;
    const float* x;  // (N, H, W, C)
    i64 H, W, Ho, Wo;
    float* y;        // (N, Ho, Wo, C)
    float* pooled;   // C floats of scratch
    Planes next;     // sign2(y), unpadded
    int32_t* dbg;    // optional copy of the dots (N, Ho, Wo, C)
    BNN_INLINE void operator()(const i64* qs, int np, const int32_t* dots) const {
        const i64 C = b->C;
        for (int p = 0; p < np; ++p) {
            const i64 q = qs[p];
            const int32_t* d = dots + p * C;
            float* yq = y + q * C;
            const float* shortcut = x + q * C;  // stride 1: same pixel
            if (b->stride == 2) {
                const i64 n = q / (Ho * Wo), r = q % (Ho * Wo), oy = r / Wo, ox = r % Wo;
                const float* __restrict x00 = x + ((n * H + 2 * oy) * W + 2 * ox) * C;
                const float *__restrict x01 = x00 + C, *__restrict x10 = x00 + W * C,
                            *__restrict x11 = x10 + C;
                float* __restrict sum = pooled;
                const float ps = b->pool_scale;
                for (i64 c = 0; c < C; ++c)  // avg_pool2d(divisor_override=1): ((a + b) + c) + d
                    sum[c] = (((x00[c] + x01[c]) + x10[c]) + x11[c]) * ps;
                shortcut = pooled;
            }
            residual_rprelu(yq, shortcut, d, b->scale1, b->shift_in1, b->slope1, b->shift_out1, C);
            pack_pixel(yq, C, b->lower2, b->upper2, next.data + q * 2 * next.Wd, next.Wd);
            if (dbg) std::memcpy(dbg + q * C, d, size_t(C) * sizeof(int32_t));
        }
    }
};

struct Half2Epi {
    const BlockA* b;
    const float* y;  // (N, Ho, Wo, C)
    float* out;      // (N, Ho, Wo, Cout)
    int32_t* dbg;
    BNN_INLINE void operator()(const i64* qs, int np, const int32_t* dots) const {
        const i64 C = b->C, Co = b->Cout;
        for (int p = 0; p < np; ++p) {
            const i64 q = qs[p];
            for (i64 k = 0; k < Co; k += C)  // cat([conv_k(g) + y for k]); h + y == y + h
                residual_rprelu(out + q * Co + k, y + q * C, dots + p * Co + k, b->scale2 + k,
                                b->shift_in2 + k, b->slope2 + k, b->shift_out2 + k, C);
            if (dbg) std::memcpy(dbg + q * Co, dots + p * Co, size_t(Co) * sizeof(int32_t));
        }
    }
};

BNN_INLINE void block_a_impl(const BlockA* b, const float* x, i64 N, i64 H, i64 W, float* out,
                             int32_t* dbg3, int32_t* dbg1) {
    Clock clk;
    clk.start();
    const i64 C = b->C, Wd = b->Wd, s = b->stride;
    const i64 Ho = (H + 2 - 3) / s + 1, Wo = (W + 2 - 3) / s + 1;
    Planes p1{nullptr, N, H + 2, W + 2, Wd};
    p1.data = scratch(t_planes_a, p1.words());
    pack_planes(x, C, b->lower1, b->upper1, p1, 1);
    Planes p2{nullptr, N, Ho, Wo, Wd};
    p2.data = scratch(t_planes_b, p2.words());
    float* y = scratch(t_mid, size_t(N * Ho * Wo * C));
    clk.stop(0);
    float* pooled = scratch(t_pooled, size_t(C));
    Half1Epi e1{b, x, H, W, Ho, Wo, y, pooled, p2, dbg3};
    conv_planes(p1, 1, ConvWeights{b->w3, C, 3, Wd, b->zw3, b->nzw3}, s, Ho, Wo, e1, clk);
    Half2Epi e2{b, y, out, dbg1};
    conv_planes(p2, 0, ConvWeights{b->w1, b->Cout, 1, Wd, b->zw1, b->nzw1}, 1, Ho, Wo, e2, clk);
}

// ---------------------------------------------------------------- ISA dispatch
#if defined(BNN_X86)
#define BNN_POPCNT __attribute__((target("popcnt")))
bool has_popcnt() {
    __builtin_cpu_init();
    return __builtin_cpu_supports("popcnt");
}
#else
#define BNN_POPCNT
bool has_popcnt() { return false; }
#endif
const bool g_popcnt = has_popcnt();

BNN_POPCNT void conv_popcnt(const uint8_t* bits, const uint8_t* valid, i64 N, i64 H, i64 W,
                            i64 B, const u64* weight, i64 O, i64 K, i64 stride, i64 pad,
                            const i64* zw, i64 nzw, int32_t* out, i64 sn, i64 sp, i64 sc) {
    conv_impl(bits, valid, N, H, W, B, weight, O, K, stride, pad, zw, nzw, out, sn, sp, sc);
}
void conv_generic(const uint8_t* bits, const uint8_t* valid, i64 N, i64 H, i64 W, i64 B,
                  const u64* weight, i64 O, i64 K, i64 stride, i64 pad, const i64* zw, i64 nzw,
                  int32_t* out, i64 sn, i64 sp, i64 sc) {
    conv_impl(bits, valid, N, H, W, B, weight, O, K, stride, pad, zw, nzw, out, sn, sp, sc);
}
BNN_POPCNT void block_a_popcnt(const BlockA* b, const float* x, i64 N, i64 H, i64 W, float* out,
                               int32_t* dbg3, int32_t* dbg1) {
    block_a_impl(b, x, N, H, W, out, dbg3, dbg1);
}
void block_a_generic(const BlockA* b, const float* x, i64 N, i64 H, i64 W, float* out,
                     int32_t* dbg3, int32_t* dbg1) {
    block_a_impl(b, x, N, H, W, out, dbg3, dbg1);
}

}  // namespace

// ---------------------------------------------------------------- C ABI
BNN_EXPORT int bnn_abi_version() { return kAbiVersion; }

// 1 if the POPCNT instruction is used, 0 for the portable fallback.
BNN_EXPORT int bnn_uses_popcnt() { return g_popcnt ? 1 : 0; }

BNN_EXPORT int bnn_block_a_size() { return int(sizeof(BlockA)); }

BNN_EXPORT void bnn_profile(int enable) {
    g_profile = enable != 0;
    g_prof_ns[0] = g_prof_ns[1] = g_prof_ns[2] = 0;
}

BNN_EXPORT void bnn_profile_read(double* ns3) {
    for (int i = 0; i < 3; ++i) ns3[i] = g_prof_ns[i];
}

// Sign thresholds -> packed bytes: x (npix, C) float32, rows of B bytes out (B >= ceil(C/8)).
BNN_EXPORT void bnn_pack_signs(const float* x, i64 npix, i64 C, const float* lower,
                               const float* upper, uint8_t* bits, uint8_t* valid, i64 B) {
    Clock clk;
    clk.start();
    pack_signs_impl(x, npix, C, lower, upper, bits, valid, B);
    clk.stop(0);
}

// Integer conv of packed activations (N, H, W, B bytes) with weights (O, K, K, ceil(B/8)
// words); out[n * sn + pixel * sp + o * sc] (int32), pixel = oy * Wo + ox.
BNN_EXPORT void bnn_conv(const uint8_t* bits, const uint8_t* valid, i64 N, i64 H, i64 W, i64 B,
                         const u64* weight, i64 O, i64 K, i64 stride, i64 pad, const i64* zw,
                         i64 nzw, int32_t* out, i64 sn, i64 sp, i64 sc) {
    (g_popcnt ? conv_popcnt : conv_generic)(bits, valid, N, H, W, B, weight, O, K, stride, pad,
                                            zw, nzw, out, sn, sp, sc);
}

// One folded ReActNet-A block on NHWC float32: x (N, H, W, C) -> out (N, Ho, Wo, Cout).
// dbg3 / dbg1 (may be null): the integer dots of the 3x3 conv (N, Ho, Wo, C) and of the
// stacked 1x1 convs (N, Ho, Wo, Cout).
BNN_EXPORT void bnn_block_a(const BlockA* b, const float* x, i64 N, i64 H, i64 W, float* out,
                            int32_t* dbg3, int32_t* dbg1) {
    (g_popcnt ? block_a_popcnt : block_a_generic)(b, x, N, H, W, out, dbg3, dbg1);
}
