// Fused exact search: the exact top-1 of every query hyperpatch over a shortlist of database
// images, computed from *pixel-level* inner products instead of hyperpatch-level ones.
//
// A k×k hyperpatch is the concatenation of k² pixel feature vectors divided by the window norm:
//     vec(y, x)[(dy*k + dx)*C + c] = act[c, y+dy, x+dx] / n(y, x).
// So the inner product of a query window (qy, qx) and a database window (wy, wx) is
//     <q̂, v̂> = (1 / (n_q n_v)) · Σ_{dy,dx} <qpix(qy+dy, qx+dx), vpix(wy+dy, wx+dx)>,
// i.e. one pixel-level GEMM (C dims instead of k²C) followed by a k²-term shifted sum: about k²
// times fewer flops than the hyperpatch GEMM FAISS runs, for the same similarities up to float
// rounding (~1e-7 here).
//
// Pixel vectors are read straight from the stored (normalised) hyperpatches, times the stored
// window norms (the norms sidecar): pixel (y, x) of an image with window grid (hp, wp) is slot
// (y - wy, x - wx) of window (wy, wx) = (min(y, hp-1), min(x, wp-1)), times n(wy, wx). The query
// side is the same, from the query's hyperpatches and window norms.
//
// Structure (wrapper: compnn_index/search/exact.py, module compnn_index.search._fused):
//   for every shortlisted image (in id order):
//     pack its pixels (parallel over pixel rows) into 16-pixel panels [row][panel][c][16];
//     parallel over query tiles (R window rows × up to 128 window columns):
//       for every database column block (up to 240 windows) and every diagonal δ = wy - qy:
//         for pixel rows a = qy (and the k-1 halo rows below), b = a + δ:
//           G = qpix row a (tile columns + halo) × vpix row b (block + halo)ᵀ   (AVX2 6×16 kernel)
//           H_a[qx][wx] = Σ_s G[qx+s][wx+s]                (the k column shifts, ring of k rows)
//           once rows qy..qy+k-1 are in: S = Σ_t H_{qy+t}, the k row shifts, and the running
//           best of S / n_v per query window (the 1 / n_q factor is applied at the end).
//   The full Q × N product is never written: G and the H ring are per-thread L2 buffers.
//
// Determinism: every similarity is computed by the same code in the same order whatever the
// tiling, and the running best is a lexicographic maximum of (similarity, -id) — ties go to the
// lowest id, as in the FAISS path — so the result does not depend on the thread count or on the
// order in which tiles run.
//
// Alignment: a memory-mapped FAISS file stores its vectors from file byte 45, so the database
// floats are not 4-byte aligned. Caller memory is read only through memcpy (`load`); the GEMM
// reads only this file's own (aligned) packed buffers.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <limits>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

// FUSED_GENERIC_ONLY builds only the portable kernels, as on a non-x86 target (lets an x86
// machine compile and test that path).
#if (defined(__x86_64__) || defined(__i386__)) && !defined(FUSED_GENERIC_ONLY)
#include <immintrin.h>
#define FUSED_X86 1
#endif

namespace py = pybind11;

namespace {

constexpr int64_t kPanel = 16;         // database pixels per packed panel (two 8-float vectors)
constexpr int kRows = 6;               // query pixels per micro-kernel call
constexpr int64_t kQueryCols = 128;    // query windows per tile column block
constexpr int64_t kDbCols = 240;       // database windows per column block (a multiple of kPanel)
constexpr int kMaxThreads = 1024;

template <class T>
inline T load(const T* p, int64_t i = 0) {
    T v;
    std::memcpy(&v, p + i, sizeof v);
    return v;
}

[[noreturn]] void fail(const std::string& msg) { throw std::invalid_argument(msg); }

// 64-byte aligned, zero-initialised float buffer.
struct Buffer {
    float* p = nullptr;
    size_t n = 0;
    void resize(size_t count) {
        if (count <= n) return;
        std::free(p);
        const size_t bytes = ((count * sizeof(float) + 63) / 64) * 64;
        p = static_cast<float*>(std::aligned_alloc(64, bytes));
        if (!p) throw std::bad_alloc();
        std::memset(p, 0, bytes);
        n = count;
    }
    Buffer() = default;
    Buffer(const Buffer&) = delete;
    Buffer& operator=(const Buffer&) = delete;
    ~Buffer() { std::free(p); }
};

// ---------------------------------------------------------------------------------------------
// Kernels: G[r][0..16) = Σ_c A[r][c] · B[c][0..16) for r < M (A: M query pixels, stride c;
// B: one packed panel), and the shifted-sum / running-best pass.

using MicroFn = void (*)(const float* a, int64_t c, const float* b, float* g, int64_t ldg);

template <int M>
void micro_generic(const float* a, int64_t c, const float* b, float* g, int64_t ldg) {
    float acc[M][kPanel] = {};
    for (int64_t i = 0; i < c; ++i)
        for (int r = 0; r < M; ++r) {
            const float av = a[r * c + i];
            for (int j = 0; j < kPanel; ++j) acc[r][j] += av * b[i * kPanel + j];
        }
    for (int r = 0; r < M; ++r) std::memcpy(g + r * ldg, acc[r], sizeof acc[r]);
}

struct Best {  // running best of one query window
    float value;
    int64_t id;
};

inline void offer(Best& best, float value, int64_t id) {
    if (value > best.value || (value == best.value && id < best.id)) best = {value, id};
}

// One pixel row's pass. G: (nqx + k - 1) rows × ldg; ring: k slots of nqx rows × ldg.
// Writes H_a into ring slot `slot_a`; when `reduce`, also S = Σ ring slots `order[0..k)` (H_a
// last) times inv[0..ndx), and offers each query window's best to best[qx] with id base + wx.
struct PassArgs {
    const float* g;
    int64_t ldg, nqx, ndx, k;
    float* ring;           // k * nqx * ldg
    int64_t slot_a;
    bool reduce;
    const int64_t* order;  // ring slots of H_w .. H_{w+k-2} (k - 1 entries)
    const float* inv;      // 1 / n_v of the database window row, padded to a multiple of 8
    int64_t base;          // id of database window (wy, dx0)
    Best* best;            // nqx entries
};

void pass_generic(const PassArgs& p) {
    const int64_t plane = p.nqx * p.ldg;
    for (int64_t qx = 0; qx < p.nqx; ++qx) {
        float* h = p.ring + p.slot_a * plane + qx * p.ldg;
        float bv = -std::numeric_limits<float>::infinity();
        int64_t bi = 0;
        for (int64_t x = 0; x < p.ndx; ++x) {
            float v = p.g[qx * p.ldg + x];
            for (int64_t s = 1; s < p.k; ++s) v += p.g[(qx + s) * p.ldg + x + s];
            h[x] = v;
            if (p.reduce) {
                float sum = 0.0f;
                for (int64_t t = 0; t + 1 < p.k; ++t) sum += p.ring[p.order[t] * plane + qx * p.ldg + x];
                sum += v;
                const float val = sum * p.inv[x];
                if (val > bv) bv = val, bi = x;
            }
        }
        if (p.reduce) offer(p.best[qx], bv, p.base + bi);
    }
}

#ifdef FUSED_X86
// Accumulators are named variables (an array of __m256 made GCC store every update to the stack).
#define FUSED_ROW(r)                                                          \
    if constexpr (M > r) {                                                    \
        const __m256 av = _mm256_broadcast_ss(a + r * c + i);                 \
        lo##r = _mm256_fmadd_ps(av, b0, lo##r);                               \
        hi##r = _mm256_fmadd_ps(av, b1, hi##r);                               \
    }
#define FUSED_STORE(r)                                                        \
    if constexpr (M > r) {                                                    \
        _mm256_storeu_ps(g + r * ldg, lo##r);                                 \
        _mm256_storeu_ps(g + r * ldg + 8, hi##r);                             \
    }

template <int M>
__attribute__((target("avx2,fma"))) void micro_avx2(const float* a, int64_t c, const float* b, float* g,
                                                    int64_t ldg) {
    __m256 lo0 = _mm256_setzero_ps(), hi0 = lo0, lo1 = lo0, hi1 = lo0, lo2 = lo0, hi2 = lo0;
    __m256 lo3 = lo0, hi3 = lo0, lo4 = lo0, hi4 = lo0, lo5 = lo0, hi5 = lo0;
    for (int64_t i = 0; i < c; ++i) {
        const __m256 b0 = _mm256_load_ps(b + i * kPanel), b1 = _mm256_load_ps(b + i * kPanel + 8);
        FUSED_ROW(0) FUSED_ROW(1) FUSED_ROW(2) FUSED_ROW(3) FUSED_ROW(4) FUSED_ROW(5)
    }
    FUSED_STORE(0) FUSED_STORE(1) FUSED_STORE(2) FUSED_STORE(3) FUSED_STORE(4) FUSED_STORE(5)
}
#undef FUSED_ROW
#undef FUSED_STORE

// Same arithmetic order as pass_generic (sums left to right, then one multiply). Only the row's
// maximum is tracked (one max per vector); the rare rows whose maximum reaches the query
// window's best so far are scanned again, recomputing the same values, for the first column
// that attains it (the lowest id in the row).
// S / n_v of columns x..x+7 of query window qx, given H_a = v (lambdas do not inherit target
// attributes, hence a function).
__attribute__((target("avx2,fma"))) inline __m256 value_avx2(const PassArgs& p, int64_t plane, int64_t qx,
                                                             int64_t x, __m256 v, int64_t full, __m256 tail) {
    __m256 sum = _mm256_setzero_ps();
    for (int64_t t = 0; t + 1 < p.k; ++t)
        sum = _mm256_add_ps(sum, _mm256_loadu_ps(p.ring + p.order[t] * plane + qx * p.ldg + x));
    const __m256 val = _mm256_mul_ps(_mm256_add_ps(sum, v), _mm256_loadu_ps(p.inv + x));
    return x == full ? _mm256_blendv_ps(_mm256_set1_ps(-std::numeric_limits<float>::infinity()), val, tail) : val;
}

__attribute__((target("avx2,fma"))) void pass_avx2(const PassArgs& p) {
    const int64_t plane = p.nqx * p.ldg;
    const __m256 neg_inf = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const int64_t full = p.ndx / 8 * 8;
    const __m256 tail = _mm256_castsi256_ps(
        _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(p.ndx - full)), lane));
    for (int64_t qx = 0; qx < p.nqx; ++qx) {
        float* h = p.ring + p.slot_a * plane + qx * p.ldg;
        const float* g0 = p.g + qx * p.ldg;
        if (!p.reduce) {
            for (int64_t x = 0; x < p.ndx; x += 8) {
                __m256 v = _mm256_loadu_ps(g0 + x);
                for (int64_t s = 1; s < p.k; ++s) v = _mm256_add_ps(v, _mm256_loadu_ps(g0 + s * p.ldg + x + s));
                _mm256_storeu_ps(h + x, v);
            }
            continue;
        }
        __m256 bv = neg_inf;
        for (int64_t x = 0; x < p.ndx; x += 8) {
            __m256 v = _mm256_loadu_ps(g0 + x);
            for (int64_t s = 1; s < p.k; ++s) v = _mm256_add_ps(v, _mm256_loadu_ps(g0 + s * p.ldg + x + s));
            _mm256_storeu_ps(h + x, v);
            bv = _mm256_max_ps(bv, value_avx2(p, plane, qx, x, v, full, tail));
        }
        __m128 m = _mm_max_ps(_mm256_castps256_ps128(bv), _mm256_extractf128_ps(bv, 1));
        m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        m = _mm_max_ss(m, _mm_movehdup_ps(m));
        const float best = _mm_cvtss_f32(m);
        if (best < p.best[qx].value) continue;
        const __m256 target = _mm256_set1_ps(best);
        for (int64_t x = 0; x < p.ndx; x += 8) {  // h now holds H_a for the whole row
            const int bits = _mm256_movemask_ps(_mm256_cmp_ps(value_avx2(p, plane, qx, x, _mm256_loadu_ps(h + x), full, tail), target, _CMP_EQ_OQ));
            if (bits) {
                offer(p.best[qx], best, p.base + x + __builtin_ctz(static_cast<unsigned>(bits)));
                break;
            }
        }
    }
}
#endif

struct Kernels {
    MicroFn micro[kRows + 1];
    void (*pass)(const PassArgs&);
    const char* name;
};

Kernels select_kernels() {
#ifdef FUSED_X86
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return {{nullptr, micro_avx2<1>, micro_avx2<2>, micro_avx2<3>, micro_avx2<4>, micro_avx2<5>, micro_avx2<6>},
                pass_avx2, "avx2+fma"};
#endif
    return {{nullptr, micro_generic<1>, micro_generic<2>, micro_generic<3>, micro_generic<4>, micro_generic<5>,
             micro_generic<6>},
            pass_generic, "generic"};
}

const Kernels kKernels = select_kernels();

// ---------------------------------------------------------------------------------------------
// Threads: n tasks taken dynamically by min(threads, n) threads (the caller is one of them);
// the first exception stops the others and is rethrown here.

template <class F>
void parallel_for(int threads, int64_t n, F&& f) {
    const int nt = static_cast<int>(std::min<int64_t>(threads, n));
    if (nt <= 1) {
        for (int64_t i = 0; i < n; ++i) f(i, 0);
        return;
    }
    std::atomic<int64_t> next{0};
    std::atomic<bool> failed{false};
    std::mutex mutex;
    std::exception_ptr error;
    auto work = [&](int t) {
        try {
            for (;;) {
                if (failed.load(std::memory_order_relaxed)) return;
                const int64_t i = next.fetch_add(1, std::memory_order_relaxed);
                if (i >= n) return;
                f(i, t);
            }
        } catch (...) {
            std::lock_guard<std::mutex> lock(mutex);
            if (!error) error = std::current_exception();
            failed.store(true);
        }
    };
    std::vector<std::thread> pool;
    try {
        for (int t = 1; t < nt; ++t) pool.emplace_back(work, t);
    } catch (...) {
        failed.store(true);
        for (auto& th : pool) th.join();
        throw;
    }
    work(0);
    for (auto& th : pool) th.join();
    if (error) std::rethrow_exception(error);
}

// ---------------------------------------------------------------------------------------------
// The problem.

struct Image {
    int64_t id, base, hp, wp;  // store image id, id of window (0, 0), window grid
};

struct Problem {
    int64_t hq, wq, k, c, d;
    const float* queries;  // (hq, wq, d), caller memory
    const float* qnorms;   // (hq, wq)
    const float* vectors;  // (N, d), caller memory (unaligned when memory-mapped)
    const float* norms;    // (N,)
    std::vector<Image> images;
    int threads;
    int64_t tile_rows;
};

// Pixel (y, x) of an image with window grid (hp, wp): the source floats and their scale.
inline const float* pixel_of(const float* vec, const float* nrm, int64_t base, int64_t hp, int64_t wp,
                             int64_t k, int64_t c, int64_t y, int64_t x, float* scale) {
    const int64_t wy = std::min(y, hp - 1), wx = std::min(x, wp - 1);
    const int64_t id = base + wy * wp + wx;
    *scale = load(nrm, id);
    return vec + id * (k * k * c) + ((y - wy) * k + (x - wx)) * c;
}

inline float inverse(float n) { return n > 0.0f ? 1.0f / n : 0.0f; }

// A database image's pixels in panels: packed[((b * panels + p) * c + ch) * 16 + j] is channel
// ch of pixel (b, 16p + j) (zero past the last column); inv[wy * ldi + wx] = 1 / n_v(wy, wx).
struct PackedImage {
    Buffer packed, inv;
    int64_t rows = 0, panels = 0, ldi = 0;
};

void pack_image(const Problem& P, const Image& im, PackedImage& out) {
    const int64_t k = P.k, c = P.c;
    out.rows = im.hp + k - 1;
    const int64_t cols = im.wp + k - 1;
    out.panels = (cols + kPanel - 1) / kPanel;
    out.ldi = out.panels * kPanel + 8;
    out.packed.resize(static_cast<size_t>(out.rows * out.panels * c * kPanel));
    out.inv.resize(static_cast<size_t>(im.hp * out.ldi));
    parallel_for(P.threads, out.rows, [&](int64_t b, int) {
        float* row = out.packed.p + b * out.panels * c * kPanel;
        for (int64_t p = 0; p < out.panels; ++p) {
            float* panel = row + p * c * kPanel;
            for (int64_t j = 0; j < kPanel; ++j) {
                const int64_t x = p * kPanel + j;
                if (x >= cols) {
                    for (int64_t ch = 0; ch < c; ++ch) panel[ch * kPanel + j] = 0.0f;
                    continue;
                }
                float scale;
                const float* src = pixel_of(P.vectors, P.norms, im.base, im.hp, im.wp, k, c, b, x, &scale);
                for (int64_t ch = 0; ch < c; ++ch) panel[ch * kPanel + j] = load(src, ch) * scale;
            }
        }
        if (b < im.hp) {
            float* inv = out.inv.p + b * out.ldi;
            for (int64_t x = 0; x < out.ldi; ++x)
                inv[x] = x < im.wp ? inverse(load(P.norms, im.base + b * im.wp + x)) : 0.0f;
        }
    });
}

struct Scratch {
    Buffer g, ring;
    std::vector<Best> best;
};

// One query tile (window rows [qy0, qy1), columns [qx0, qx1)) against one packed image.
// Returns the number of pixel-row products computed (G tiles).
int64_t search_tile(const Problem& P, const Image& im, const PackedImage& pk, const float* qpix, int64_t qpw,
                    int64_t qy0, int64_t qy1, int64_t qx0, int64_t qx1, Scratch& sc, Best* best, int64_t ldb) {
    int64_t products = 0;
    const int64_t k = P.k, c = P.c;
    const int64_t nqx = qx1 - qx0, m = nqx + k - 1;
    const int64_t max_ldg = ((kDbCols + k - 1 + kPanel - 1) / kPanel + 1) * kPanel + ((k + 8 + 7) / 8) * 8;
    sc.g.resize(static_cast<size_t>((m + 1) * max_ldg));
    sc.ring.resize(static_cast<size_t>(k * nqx * max_ldg));
    sc.best.resize(static_cast<size_t>(nqx));
    std::vector<int64_t> order(static_cast<size_t>(k));
    const int64_t cols = im.wp + k - 1;
    for (int64_t dx0 = 0; dx0 < im.wp; dx0 += kDbCols) {
        const int64_t dx1 = std::min(im.wp, dx0 + kDbCols), ndx = dx1 - dx0;
        const int64_t p0 = dx0 / kPanel, p1 = (std::min(cols, dx1 + k - 1) + kPanel - 1) / kPanel;
        const int64_t ldg = (p1 - p0) * kPanel + ((k + 8 + 7) / 8) * 8;
        for (int64_t delta = -(qy1 - 1); delta <= im.hp - 1 - qy0; ++delta) {
            const int64_t w0 = std::max(qy0, -delta), w1 = std::min(qy1, im.hp - delta);
            if (w0 >= w1) continue;
            for (int64_t a = w0; a < w1 + k - 1; ++a) {
                const int64_t b = a + delta;
                ++products;
                // G = qpix row a, columns [qx0, qx1 + k - 1)  ×  vpix row b, panels [p0, p1)
                const float* arow = qpix + (a * qpw + qx0) * c;
                const float* brow = pk.packed.p + (b * pk.panels + p0) * c * kPanel;
                for (int64_t p = 0; p < p1 - p0; ++p) {
                    const float* bp = brow + p * c * kPanel;
                    int64_t i = 0;
                    for (; i + kRows <= m; i += kRows)
                        kKernels.micro[kRows](arow + i * c, c, bp, sc.g.p + i * ldg + p * kPanel, ldg);
                    if (i < m) kKernels.micro[m - i](arow + i * c, c, bp, sc.g.p + i * ldg + p * kPanel, ldg);
                }
                const int64_t w = a - (k - 1);  // the window row completed by this pixel row
                PassArgs args{sc.g.p, ldg, nqx, ndx, k, sc.ring.p, a % k, w >= w0, order.data(),
                              nullptr, 0, sc.best.data()};
                if (args.reduce) {
                    for (int64_t t = 0; t + 1 < k; ++t) order[t] = (w + t) % k;
                    const int64_t wy = w + delta;
                    args.inv = pk.inv.p + wy * pk.ldi + dx0;
                    args.base = im.base + wy * im.wp + dx0;
                    Best* dst = best + w * ldb + qx0;
                    for (int64_t qx = 0; qx < nqx; ++qx) sc.best[qx] = dst[qx];
                    kKernels.pass(args);
                    for (int64_t qx = 0; qx < nqx; ++qx) dst[qx] = sc.best[qx];
                } else {
                    kKernels.pass(args);
                }
            }
        }
    }
    return products;
}

// ---------------------------------------------------------------------------------------------
// Argument checks (the Python wrapper checks first with QueryError; these guard direct calls).

std::string shape_str(const py::array& a) {
    std::string s = "(";
    for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
    return s + (a.ndim() == 1 ? ",)" : ")");
}

template <class T>
py::array_t<T, py::array::c_style> require(const py::array& a, const char* name, py::ssize_t ndim) {
    if (!py::array_t<T>::check_(a))
        fail(std::string("Expected ") + name + " of dtype " + py::str(py::dtype::of<T>()).cast<std::string>() +
             ", but " + name + ".dtype = " + py::str(a.dtype()).cast<std::string>());
    if (a.ndim() != ndim)
        fail(std::string("Expected ") + name + " with " + std::to_string(ndim) + " dimensions, but " + name +
             ".shape = " + shape_str(a));
    if (!py::array_t<T, py::array::c_style>::check_(a))
        fail(std::string("Expected ") + name + " to be C-contiguous (it is read in place, never copied)");
    return py::array_t<T, py::array::c_style>::ensure(a);
}

}  // namespace

py::tuple fused_search(const py::array& queries_in, const py::array& qnorms_in, const py::array& vectors_in,
                       const py::array& norms_in, const py::array& images_in, const py::array& offsets_in,
                       const py::array& grids_in, int64_t k, int64_t threads, int64_t tile_rows) {
    auto queries = require<float>(queries_in, "queries", 3);
    auto qnorms = require<float>(qnorms_in, "query_norms", 2);
    auto vectors = require<float>(vectors_in, "vectors", 2);
    auto norms = require<float>(norms_in, "norms", 1);
    auto images = require<int64_t>(images_in, "images", 1);
    auto offsets = require<int64_t>(offsets_in, "offsets", 1);
    auto grids = require<int64_t>(grids_in, "grids", 2);

    Problem P;
    P.hq = queries.shape(0);
    P.wq = queries.shape(1);
    P.d = queries.shape(2);
    P.k = k;
    if (k < 1 || P.d % (k * k) != 0)
        fail("Expected a window side k >= 1 with D divisible by k*k, but k = " + std::to_string(k) +
             ", D = " + std::to_string(P.d));
    P.c = P.d / (k * k);
    if (P.hq < 1 || P.wq < 1 || P.d < 1) fail("Expected a non-empty query grid, but queries.shape = " + shape_str(queries));
    if (qnorms.shape(0) != P.hq || qnorms.shape(1) != P.wq)
        fail("Expected query_norms of the query grid's shape, but query_norms.shape = " + shape_str(qnorms));
    if (vectors.shape(1) != P.d)
        fail("Expected vectors of dimension D = " + std::to_string(P.d) + ", but vectors.shape = " + shape_str(vectors));
    const int64_t n_vectors = vectors.shape(0);
    if (norms.shape(0) != n_vectors)
        fail("Expected one norm per vector (" + std::to_string(n_vectors) + "), but norms.shape = " + shape_str(norms));
    if (threads < 1) fail("Expected threads >= 1, but threads = " + std::to_string(threads));
    P.threads = static_cast<int>(std::min<int64_t>(threads, kMaxThreads));

    const int64_t n_images = grids.shape(0);
    if (grids.shape(1) != 2 || offsets.shape(0) != n_images + 1)
        fail("Expected grids (n, 2) and offsets (n + 1,), but grids.shape = " + shape_str(grids) +
             ", offsets.shape = " + shape_str(offsets));
    const int64_t* off = offsets.data();
    const int64_t* grid = grids.data();
    if (load(off, n_images) > n_vectors) fail("Expected offsets[-1] <= number of vectors");
    const int64_t* img = images.data();
    for (int64_t i = 0; i < images.shape(0); ++i) {
        const int64_t id = load(img, i);
        if (id < 0 || id >= n_images) fail("Expected image ids in [0, " + std::to_string(n_images) + "), got " + std::to_string(id));
        if (i > 0 && id <= load(img, i - 1)) fail("Expected sorted, distinct image ids");
        const int64_t hp = load(grid, 2 * id), wp = load(grid, 2 * id + 1), base = load(off, id);
        if (hp < 0 || wp < 0 || load(off, id + 1) - base != hp * wp)
            fail("Expected offsets[n + 1] - offsets[n] = Hp * Wp for image " + std::to_string(id));
        if (hp * wp > 0) P.images.push_back(Image{id, base, hp, wp});
    }
    if (images.shape(0) < 1) fail("Expected at least one database image");
    P.queries = queries.data();
    P.qnorms = qnorms.data();
    P.vectors = vectors.data();
    P.norms = norms.data();
    // About two tiles per thread (dynamic scheduling absorbs load from other processes; each tile
    // recomputes k-1 halo rows per diagonal). The tiling changes no value.
    if (tile_rows < 0) fail("Expected tile_rows >= 0 (0: automatic), but tile_rows = " + std::to_string(tile_rows));
    P.tile_rows = tile_rows > 0 ? tile_rows
                                : std::max<int64_t>(16, (P.hq + 2 * P.threads - 1) / (2 * P.threads));

    const int64_t n_pos = P.hq * P.wq;
    py::array_t<int64_t> out_id({P.hq, P.wq});
    py::array_t<float> out_sim({P.hq, P.wq});
    int64_t* oid = out_id.mutable_data();
    float* osim = out_sim.mutable_data();
    std::atomic<int64_t> gemm_rows{0};
    {
        py::gil_scoped_release release;
        // Query pixels (hq + k - 1, wq + k - 1, c) and 1 / n_q, from the query's own windows.
        const int64_t qph = P.hq + k - 1, qpw = P.wq + k - 1;
        Buffer qpix;
        qpix.resize(static_cast<size_t>((qph * qpw + kRows) * P.c));
        parallel_for(P.threads, qph, [&](int64_t y, int) {
            for (int64_t x = 0; x < qpw; ++x) {
                float scale;
                const float* src = pixel_of(P.queries, P.qnorms, 0, P.hq, P.wq, k, P.c, y, x, &scale);
                float* dst = qpix.p + (y * qpw + x) * P.c;
                for (int64_t ch = 0; ch < P.c; ++ch) dst[ch] = load(src, ch) * scale;
            }
        });
        std::vector<Best> best(static_cast<size_t>(n_pos),
                               Best{-std::numeric_limits<float>::infinity(), std::numeric_limits<int64_t>::max()});
        const int64_t ty = (P.hq + P.tile_rows - 1) / P.tile_rows, tx = (P.wq + kQueryCols - 1) / kQueryCols;
        std::vector<Scratch> scratch(static_cast<size_t>(P.threads));
        PackedImage pk;
        for (const Image& im : P.images) {
            pack_image(P, im, pk);
            parallel_for(P.threads, ty * tx, [&](int64_t task, int thread) {
                const int64_t qy0 = (task / tx) * P.tile_rows, qy1 = std::min(P.hq, qy0 + P.tile_rows);
                const int64_t qx0 = (task % tx) * kQueryCols, qx1 = std::min(P.wq, qx0 + kQueryCols);
                gemm_rows += search_tile(P, im, pk, qpix.p, qpw, qy0, qy1, qx0, qx1, scratch[thread],
                                         best.data(), P.wq);
            });
        }
        for (int64_t q = 0; q < n_pos; ++q) {
            oid[q] = best[q].id;
            osim[q] = best[q].value * inverse(load(P.qnorms, q));
        }
    }
    py::dict stats;
    stats["kernel"] = kKernels.name;
    stats["threads"] = P.threads;
    stats["tile_rows"] = P.tile_rows;
    stats["pixel_row_products"] = gemm_rows.load();
    return py::make_tuple(out_id, out_sim, stats);
}

PYBIND11_MODULE(_fused, m) {
    m.doc() = "Fused exact search: pixel-level GEMM + shifted sum + running best (see search/exact.py).";
    m.def("search", &fused_search, py::arg("queries"), py::arg("query_norms"), py::arg("vectors"), py::arg("norms"),
          py::arg("images"), py::arg("offsets"), py::arg("grids"), py::arg("k"), py::arg("threads"),
          py::arg("tile_rows") = 0,
          "Exact top-1 of every query window over the given images; returns (ids, similarity, stats). "
          "Arrays are read in place, never copied.");
    m.attr("kernel") = kKernels.name;
}
