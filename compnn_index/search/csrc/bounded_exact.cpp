// Certified exact search pruned by bounds: the exact top-1 of every query hyperpatch over a
// shortlist of database images, scoring exactly only the candidates whose upper bound can beat the
// best similarity already found.
//
// Bounds (compnn_index/index/screen.py): every stored vector v has a screen row
// s(v) = [P^T v, |v_perp|] (W half floats) and every query q a projection t(q) = [P^T q, |q_perp|],
// with q.v <= t(q).s(v) + margin (Cauchy-Schwarz on the residual). A seed field (HyperPatch-Match,
// or anything) gives every position a lower bound L(q): the exact similarity of its seed match.
// A candidate whose upper bound is *below* L(q) cannot be the answer (not even a tie), so skipping
// it changes nothing. Four grains, coarse to fine:
//   A. (query tile, database tile): a ball around each tile's centroid in screen space,
//      t.s <= tc.sc + |tc| rs + rq (|sc| + rs) for |t - tc| <= rq, |s - sc| <= rs, against the
//      smallest L of the query tile;
//   B. (query, database tile): t.s <= t.sc + |t| rs;
//   C. (query, stored vector): t.s(v), the screen row itself;
//   D. the exact similarity (fp32 dot product, or the cosine with the decoded fp16 / sq8 vector,
//      as HyperPatch-Match and the decoded FAISS reference compute it).
// Tiles are th x tw blocks of one image's positions (database) and qh x qw blocks of the query
// grid, at most 16 of each: one 16-lane step of the SIMD bound kernels. L(q) rises whenever a
// candidate is accepted, so later candidates meet a tighter bound.
//
// Exactness. A grain skips a candidate only when bound + margin < L(q) strictly, where L(q) is the
// similarity of a candidate already held; so every candidate that could beat the held one, or tie
// it, is scored, and the result is the lexicographic maximum of (similarity, -id) over the whole
// shortlist: ties to the lowest id, as exact_search's other methods. The tile bounds are computed
// in double and rounded up, with kTileSlack added for the float32 sums of the kernels.
//
// Determinism. Query tiles are independent tasks (each owns its positions' best matches) and
// every tile visits the database tiles in the same order, so the field and every counter are the
// same for every thread count and task order.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <exception>
#include <limits>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#if (defined(__x86_64__) || defined(__i386__)) && !defined(KERNELS_GENERIC_ONLY)
#include <immintrin.h>
#define KERNELS_X86 1
#endif

namespace py = pybind11;

namespace {

#include "kernels.h"

constexpr int kLanes = 16;           // candidates (or queries) per bound step
constexpr float kTileSlack = 1e-5f;  // float32 rounding of the tile-bound sums (|terms| <= ~2)
constexpr int64_t kMaxWidth = 64;    // screen widths the kernels accept
constexpr int64_t kNested = 16;      // the bound width of grains A-C (wider screens: nested, + C2)

// A group: up to 16 database ids (a tile of stored positions) or query positions, as a range of
// one flat id list.
struct Groups {
    std::vector<int64_t> ids, start{0};
    int64_t size() const { return static_cast<int64_t>(start.size()) - 1; }
    const int64_t* of(int64_t g) const { return ids.data() + start[g]; }
    int count(int64_t g) const { return static_cast<int>(start[g + 1] - start[g]); }
    void close() { start.push_back(static_cast<int64_t>(ids.size())); }
};

struct Slot {
    int64_t image, base, h, w;
};

struct Problem {
    const float* queries;      // (nq, d)
    const float* t;            // (nq, width)
    int64_t hq, wq, nq, d, width;
    Codes codes;               // the database codes, read in place
    const uint16_t* screen;    // (n_vectors, width)
    // The bound width of grains A, B and C: a screen wider than kNested is read as its nested
    // kNested-wide screen (the first kNested - 1 components and the norm of the rest, which
    // bounds their contribution by Cauchy-Schwarz); the full row is then one more grain (C2)
    // before the exact similarity.
    int64_t bw = 0;
    std::vector<float> tn;     // (nq, bw): the queries' nested projections
    std::vector<float> ts;     // (nq, width): t with its residual scaled (residual_scale < 1 only)
    float margin;
    // The query's residual |q_perp| is multiplied by this in every grain (1: the certified bound;
    // below 1 the bound is relaxed and the search approximate: see relax_queries).
    float residual_scale = 1.0f;
    int32_t th, tw, qh, qw;
    bool kd = false;           // group by a k-d split of the screen rows (else spatial tiles)
    int threads;
    std::vector<Slot> slots;
    std::vector<int64_t> slot_base, slot_end;  // shortlisted id ranges, ascending
    Groups db, qg;             // database tiles and query tiles (filled by make_groups)
};

// Per database tile: for grain A its centroid, transposed in blocks of 8 tiles (cen[b][i][8]),
// radius and centroid norm; for grain C its screen rows as half floats transposed to [i][16 lanes]
// (zero past the tile's positions), so one step bounds all of a tile's vectors.
struct TileBounds {
    std::vector<float> cen;        // n_blocks * width * 8
    std::vector<float> radius;     // n_blocks * 8
    std::vector<float> cnorm;
    std::vector<float> lo, hi;     // the box: n_blocks * width * 8, like cen
    std::vector<float> leaf;       // n_tiles * 3 * width: cen, lo, hi of tile j, contiguous (grain B)
    std::vector<uint16_t> rows;    // n_tiles * width * 16
    int64_t n_blocks = 0;
};

struct Counters {
    int64_t a_checked = 0, a_pruned = 0, b_checked = 0, b_pruned = 0, c_checked = 0, c_pruned = 0, exact = 0;
    int64_t c2_checked = 0, c2_pruned = 0;
    void add(const Counters& o) {
        a_checked += o.a_checked; a_pruned += o.a_pruned; b_checked += o.b_checked; b_pruned += o.b_pruned;
        c_checked += o.c_checked; c_pruned += o.c_pruned; exact += o.exact;
        c2_checked += o.c2_checked; c2_pruned += o.c2_pruned;
    }
};

inline float round_up(double v) {
    float f = static_cast<float>(v);
    if (static_cast<double>(f) < v) f = std::nextafter(f, INFINITY);
    return f;
}

// The largest distance of n rows (element i of row v at x[v * rs + i * cs]) from the centre c,
// in double and rounded up: the radius of their ball.
float ball_radius(const float* x, int n, int64_t rs, int64_t cs, const float* c, int64_t w) {
    double r2 = 0.0;
    for (int v = 0; v < n; ++v) {
        double e = 0.0;
        for (int64_t i = 0; i < w; ++i) {
            const double dlt = double{x[v * rs + i * cs]} - c[i];
            e += dlt * dlt;
        }
        r2 = std::max(r2, e);
    }
    return round_up(std::sqrt(r2) * (1.0 + 1e-6));
}

// A non-negative float as the smallest IEEE half not below it (the nested residual: never
// understated).
uint16_t half_up(float x) {
    if (!(x > 0.0f)) return 0;
    if (x > 65504.0f) return 0x7C00;
    uint32_t b;
    std::memcpy(&b, &x, sizeof b);
    const int32_t e = static_cast<int32_t>((b >> 23) & 0xFF) - 127 + 15;
    uint16_t h = e <= 0 ? static_cast<uint16_t>(std::min(1023.0f, std::floor(x * 16777216.0f)))  // subnormal
                        : static_cast<uint16_t>((e << 10) | ((b >> 13) & 0x3FF));             // truncated
    while (half_to_float(h) < x) ++h;
    return h;
}

// Stored vector id's row as the bound width sees it: halves (nested when the screen is wider).
inline void nested_row(const Problem& p, int64_t id, uint16_t* out) {
    const uint16_t* r = p.screen + id * p.width;
    if (p.bw == p.width) {
        for (int64_t i = 0; i < p.bw; ++i) out[i] = load(r, i);
        return;
    }
    double rest = 0.0;
    for (int64_t i = 0; i < p.bw - 1; ++i) out[i] = load(r, i);
    for (int64_t i = p.bw - 1; i < p.width; ++i) {
        const double v = half_to_float(load(r, i));
        rest += v * v;
    }
    out[p.bw - 1] = half_up(round_up(std::sqrt(rest) * (1.0 + 1e-6)));
}

// The queries' nested projections (float; the residual rounded up).
void nest_queries(Problem& p) {
    p.tn.resize(static_cast<size_t>(p.nq * p.bw));
    for (int64_t q = 0; q < p.nq; ++q) {
        const float* t = p.t + q * p.width;
        float* o = p.tn.data() + q * p.bw;
        if (p.bw == p.width) {
            std::memcpy(o, t, sizeof(float) * p.bw);
            continue;
        }
        double rest = 0.0;
        for (int64_t i = 0; i < p.bw - 1; ++i) o[i] = t[i];
        for (int64_t i = p.bw - 1; i < p.width; ++i) rest += double{t[i]} * t[i];
        o[p.bw - 1] = round_up(std::sqrt(rest) * (1.0 + 1e-6));
    }
}

// A relaxed bound (residual_scale < 1): the residual term |q_perp| |v_perp| of every grain is
// scaled, i.e. the kernel bounds P^T q . P^T v + a |q_perp| |v_perp| instead of q.v. Skipping a
// candidate whose relaxed bound is below the best similarity is what makes the search approximate
// (on Facades decoder2 near neighbours' residuals are close to parallel, so recall falls fast with
// a: 0.49 at 0.5, 0.80 at 0.7, 0.93 at 0.8); the result is still the best *exact* similarity of
// the candidates scored, never worse than the seed's. The nested projection's residual (the last
// of the bw components) and the full row's (C2) are scaled alike.
void relax_queries(Problem& p) {
    if (p.residual_scale >= 1.0f) return;
    for (int64_t q = 0; q < p.nq; ++q) p.tn[q * p.bw + p.bw - 1] *= p.residual_scale;
    if (p.bw == p.width) return;
    p.ts.assign(p.t, p.t + p.nq * p.width);
    for (int64_t q = 0; q < p.nq; ++q) p.ts[q * p.width + p.width - 1] *= p.residual_scale;
    p.t = p.ts.data();
}

// Centroid and radius of every database tile (parallel over tiles; double sums, rounded up), and
// the tiles' transposed screen rows.
TileBounds tile_bounds(const Problem& p, Pool& pool) {
    TileBounds tb;
    const int64_t n = p.db.size(), w = p.bw;
    tb.n_blocks = (n + 7) / 8;
    tb.cen.assign(static_cast<size_t>(tb.n_blocks * w * 8), 0.0f);
    tb.radius.assign(static_cast<size_t>(tb.n_blocks * 8), 0.0f);
    tb.cnorm.assign(static_cast<size_t>(tb.n_blocks * 8), 0.0f);
    tb.lo.assign(static_cast<size_t>(tb.n_blocks * w * 8), 0.0f);
    tb.hi.assign(static_cast<size_t>(tb.n_blocks * w * 8), 0.0f);
    tb.leaf.assign(static_cast<size_t>(n * 3 * w), 0.0f);
    tb.rows.assign(static_cast<size_t>(n * w * kLanes), 0);
    pool.parallel_for(tb.n_blocks, [&](int64_t b, int) {
        std::vector<double> c(w);
        std::vector<float> f(static_cast<size_t>(kLanes * w));
        for (int64_t l = 0; l < 8 && b * 8 + l < n; ++l) {
            const int64_t j = b * 8 + l;
            const int nv = p.db.count(j);
            const int64_t* ids = p.db.of(j);
            uint16_t* rows = tb.rows.data() + j * w * kLanes;
            uint16_t r[kMaxWidth];
            for (int v = 0; v < nv; ++v) {
                nested_row(p, ids[v], r);
                for (int64_t i = 0; i < w; ++i) {
                    rows[i * kLanes + v] = r[i];
                    f[v * w + i] = half_to_float(r[i]);
                }
            }
            std::fill(c.begin(), c.end(), 0.0);
            for (int64_t i = 0; i < w; ++i) {
                float mn = INFINITY, mx = -INFINITY;
                for (int v = 0; v < nv; ++v) {
                    c[i] += f[v * w + i];
                    mn = std::min(mn, f[v * w + i]);
                    mx = std::max(mx, f[v * w + i]);
                }
                tb.lo[(b * w + i) * 8 + l] = mn;
                tb.hi[(b * w + i) * 8 + l] = mx;
            }
            double cn = 0.0;
            for (int64_t i = 0; i < w; ++i) {  // the float32 centroid is what the kernels use
                const float ci = static_cast<float>(c[i] / nv);
                tb.cen[(b * w + i) * 8 + l] = ci;
                c[i] = ci;
                cn += c[i] * c[i];
            }
            std::vector<float> cf(c.begin(), c.end());  // the float32 centroid, as the kernels use it
            const float radius = ball_radius(f.data(), nv, w, 1, cf.data(), w);
            for (int64_t i = 0; i < w; ++i) {
                tb.leaf[(j * 3 + 0) * w + i] = tb.cen[(b * w + i) * 8 + l];
                tb.leaf[(j * 3 + 1) * w + i] = tb.lo[(b * w + i) * 8 + l];
                tb.leaf[(j * 3 + 2) * w + i] = tb.hi[(b * w + i) * 8 + l];
            }
            tb.radius[j] = radius;
            tb.cnorm[j] = round_up(std::sqrt(cn) * (1.0 + 1e-6));
        }
    });
    return tb;
}

// The exact similarity of query q with stored vector id (the kernels' dot product / cosine).
inline float similarity(const Problem& p, int64_t q, int64_t id) {
    const void* c = p.codes.row(id);
    float s;
    p.codes.score(p.queries + q * p.d, &c, 1, &s);
    return s;
}

struct Best {
    float value;
    int64_t id;
};

inline bool offer(Best& best, float value, int64_t id) {
    if (value > best.value || (value == best.value && id < best.id)) {
        best = {value, id};
        return true;
    }
    return false;
}

// ---------------------------------------------------------------------------------------------
// Bound kernels (16 lanes, b transposed [i][16]). Each returns the mask of lanes l whose bound
// sum_i a[i] * b[i][l] + add[l] is NOT below low[l] (unordered: kept), i.e. the lanes to keep.

uint32_t keep16h_generic(const float* a, const uint16_t* b, int64_t w, float add, float low) {
    uint32_t m = 0;
    for (int l = 0; l < kLanes; ++l) {
        float s = 0.0f;
        for (int64_t i = 0; i < w; ++i) s += a[i] * half_to_float(b[i * kLanes + l]);
        if (!(s + add < low)) m |= 1u << l;
    }
    return m;
}

// Box bound of grain A: out[l] = sum_i max over the corners of [a_i, b_i] x [lo[i][l], hi[i][l]]
// for one query box against 8 database boxes (transposed [i][8]).
void box8_generic(const float* a, const float* b, const float* lo, const float* hi, int64_t w, float* out) {
    for (int l = 0; l < 8; ++l) {
        float s = 0.0f;
        for (int64_t i = 0; i < w; ++i) {
            const float x = lo[i * 8 + l], y = hi[i * 8 + l];
            s += std::max(std::max(a[i] * x, a[i] * y), std::max(b[i] * x, b[i] * y));
        }
        out[l] = s;
    }
}

// Grain B for 16 queries (t transposed [i][16]) against one tile (cen, lo, hi: w floats each):
// the lanes whose min(t.cen + add, box bound) is not below low.
uint32_t keepb_generic(const float* t, const float* cen, const float* lo, const float* hi, int64_t w,
                       const float* add, const float* low) {
    uint32_t m = 0;
    for (int l = 0; l < kLanes; ++l) {
        float ball = 0.0f, box = 0.0f;
        for (int64_t i = 0; i < w; ++i) {
            const float v = t[i * kLanes + l];
            ball += v * cen[i];
            box += std::max(v * lo[i], v * hi[i]);
        }
        if (!(std::min(ball + add[l], box) < low[l])) m |= 1u << l;
    }
    return m;
}

// out[l] = sum_i a[i] * b[i * 8 + l] for 8 lanes.
void lanes8_generic(const float* a, const float* b, int64_t w, float* out) {
    for (int l = 0; l < 8; ++l) out[l] = 0.0f;
    for (int64_t i = 0; i < w; ++i)
        for (int l = 0; l < 8; ++l) out[l] += a[i] * b[i * 8 + l];
}

#ifdef KERNELS_X86
__attribute__((target("avx2,fma,f16c"))) uint32_t keep16h_avx2(const float* a, const uint16_t* b, int64_t w,
                                                               float add, float low) {
    __m256 s0 = _mm256_set1_ps(add), s1 = s0;
    for (int64_t i = 0; i < w; ++i) {
        const __m256 ai = _mm256_broadcast_ss(a + i);
        const __m128i* r = reinterpret_cast<const __m128i*>(b + i * kLanes);
        s0 = _mm256_fmadd_ps(ai, _mm256_cvtph_ps(_mm_loadu_si128(r)), s0);
        s1 = _mm256_fmadd_ps(ai, _mm256_cvtph_ps(_mm_loadu_si128(r + 1)), s1);
    }
    const __m256 lo = _mm256_set1_ps(low);
    const uint32_t m0 = static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(s0, lo, _CMP_NLT_UQ)));
    const uint32_t m1 = static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(s1, lo, _CMP_NLT_UQ)));
    return m0 | (m1 << 8);
}

__attribute__((target("avx2,fma"))) uint32_t keepb_avx2(const float* t, const float* cen, const float* lo,
                                                         const float* hi, int64_t w, const float* add, const float* low) {
    __m256 b0 = _mm256_loadu_ps(add), b1 = _mm256_loadu_ps(add + 8);
    __m256 x0 = _mm256_setzero_ps(), x1 = _mm256_setzero_ps();
    for (int64_t i = 0; i < w; ++i) {
        const __m256 c = _mm256_broadcast_ss(cen + i), l = _mm256_broadcast_ss(lo + i), h = _mm256_broadcast_ss(hi + i);
        const __m256 t0 = _mm256_loadu_ps(t + i * kLanes), t1 = _mm256_loadu_ps(t + i * kLanes + 8);
        b0 = _mm256_fmadd_ps(t0, c, b0);
        b1 = _mm256_fmadd_ps(t1, c, b1);
        x0 = _mm256_add_ps(x0, _mm256_max_ps(_mm256_mul_ps(t0, l), _mm256_mul_ps(t0, h)));
        x1 = _mm256_add_ps(x1, _mm256_max_ps(_mm256_mul_ps(t1, l), _mm256_mul_ps(t1, h)));
    }
    const __m256 u0 = _mm256_min_ps(b0, x0), u1 = _mm256_min_ps(b1, x1);
    const uint32_t m0 = static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(u0, _mm256_loadu_ps(low), _CMP_NLT_UQ)));
    const uint32_t m1 = static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(u1, _mm256_loadu_ps(low + 8), _CMP_NLT_UQ)));
    return m0 | (m1 << 8);
}

// AVX-512: the 16 lanes in one register.
__attribute__((target("avx512f"))) uint32_t keep16h_avx512(const float* a, const uint16_t* b, int64_t w, float add,
                                                          float low) {
    __m512 s0 = _mm512_set1_ps(add);
    for (int64_t i = 0; i < w; ++i)
        s0 = _mm512_fmadd_ps(_mm512_set1_ps(a[i]),
                             _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + i * kLanes))), s0);
    return static_cast<uint32_t>(_mm512_cmp_ps_mask(s0, _mm512_set1_ps(low), _CMP_NLT_UQ));
}

__attribute__((target("avx512f"))) uint32_t keepb_avx512(const float* t, const float* cen, const float* lo,
                                                        const float* hi, int64_t w, const float* add, const float* low) {
    __m512 b0 = _mm512_loadu_ps(add), x0 = _mm512_setzero_ps();
    for (int64_t i = 0; i < w; ++i) {
        const __m512 t0 = _mm512_loadu_ps(t + i * kLanes);
        b0 = _mm512_fmadd_ps(t0, _mm512_set1_ps(cen[i]), b0);
        x0 = _mm512_add_ps(x0, _mm512_max_ps(_mm512_mul_ps(t0, _mm512_set1_ps(lo[i])),
                                             _mm512_mul_ps(t0, _mm512_set1_ps(hi[i]))));
    }
    return static_cast<uint32_t>(_mm512_cmp_ps_mask(_mm512_min_ps(b0, x0), _mm512_loadu_ps(low), _CMP_NLT_UQ));
}

__attribute__((target("avx2,fma"))) void box8_avx2(const float* a, const float* b, const float* lo, const float* hi,
                                                   int64_t w, float* out) {
    __m256 s = _mm256_setzero_ps();
    for (int64_t i = 0; i < w; ++i) {
        const __m256 x = _mm256_loadu_ps(lo + i * 8), y = _mm256_loadu_ps(hi + i * 8);
        const __m256 ai = _mm256_broadcast_ss(a + i), bi = _mm256_broadcast_ss(b + i);
        s = _mm256_add_ps(s, _mm256_max_ps(_mm256_max_ps(_mm256_mul_ps(ai, x), _mm256_mul_ps(ai, y)),
                                           _mm256_max_ps(_mm256_mul_ps(bi, x), _mm256_mul_ps(bi, y))));
    }
    _mm256_storeu_ps(out, s);
}

__attribute__((target("avx2,fma"))) void lanes8_avx2(const float* a, const float* b, int64_t w, float* out) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 2 <= w; i += 2) {
        s0 = _mm256_fmadd_ps(_mm256_broadcast_ss(a + i), _mm256_loadu_ps(b + i * 8), s0);
        s1 = _mm256_fmadd_ps(_mm256_broadcast_ss(a + i + 1), _mm256_loadu_ps(b + (i + 1) * 8), s1);
    }
    if (i < w) s0 = _mm256_fmadd_ps(_mm256_broadcast_ss(a + i), _mm256_loadu_ps(b + i * 8), s0);
    _mm256_storeu_ps(out, _mm256_add_ps(s0, s1));
}
#endif

struct BoundKernels {
    uint32_t (*keep16h)(const float*, const uint16_t*, int64_t, float, float);  // grain C
    void (*lanes8)(const float*, const float*, int64_t, float*);                // grain A, ball
    void (*box8)(const float*, const float*, const float*, const float*, int64_t, float*);  // grain A, box
    uint32_t (*keepb)(const float*, const float*, const float*, const float*, int64_t, const float*,
                      const float*);                                             // grain B
    const char* name;
};

const BoundKernels kGenericBounds = {keep16h_generic, lanes8_generic, box8_generic, keepb_generic, "generic"};

// The named kernels ("auto": the best this CPU has), or null when this CPU lacks them.
const BoundKernels* find_bounds(const std::string& name) {
#ifdef KERNELS_X86
    static const BoundKernels avx2 = {keep16h_avx2, lanes8_avx2, box8_avx2, keepb_avx2, "avx2+fma+f16c"};
    static const BoundKernels avx512 = {keep16h_avx512, lanes8_avx2, box8_avx2, keepb_avx512, "avx512f"};
    __builtin_cpu_init();
    const bool has2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    const bool has512 = has2 && __builtin_cpu_supports("avx512f");
    if (name == "avx512f" || (name == "auto" && has512)) return has512 ? &avx512 : nullptr;
    if (name == "avx2+fma+f16c" || (name == "auto" && has2)) return has2 ? &avx2 : nullptr;
#endif
    if (name == "generic" || name == "auto") return &kGenericBounds;
    return nullptr;
}

BoundKernels kBounds = *find_bounds("auto");  // set_kernel() may pick another (tests; same results)

void set_kernel(const std::string& name) {
    const BoundKernels* k = find_bounds(name);
    if (!k) throw std::invalid_argument("bound kernel '" + name + "' is not available on this CPU");
    kBounds = *k;
}

// ---------------------------------------------------------------------------------------------

// One query tile against every database tile.
void search_tile(const Problem& p, const TileBounds& tb, int64_t qt, Best* best, Counters& cnt) {
    const int64_t w = p.bw;
    const bool full = p.bw < p.width;  // grain C2: the full screen row
    const int64_t* qs = p.qg.of(qt);
    const int nqt = p.qg.count(qt);

    // Query side: t transposed [i][16 lanes], |t| per lane, the ball (tc, rq).
    alignas(32) float tq[kMaxWidth * kLanes] = {};
    alignas(32) float tnorm[kLanes] = {}, low[kLanes], addb[kLanes];
    std::vector<double> tc(w, 0.0);
    for (int k = 0; k < nqt; ++k) {
        double n2 = 0.0;
        for (int64_t i = 0; i < w; ++i) {
            const float v = p.tn[qs[k] * w + i];
            tq[i * kLanes + k] = v;
            tc[i] += v;
            n2 += double{v} * v;
        }
        tnorm[k] = round_up(std::sqrt(n2) * (1.0 + 1e-6));
    }
    alignas(32) float tcf[kMaxWidth];
    double tcn2 = 0.0;
    for (int64_t i = 0; i < w; ++i) {
        tcf[i] = static_cast<float>(tc[i] / nqt);
        tcn2 += double{tcf[i]} * tcf[i];
    }
    const float rq = ball_radius(tq, nqt, 1, kLanes, tcf, w), tcn = round_up(std::sqrt(tcn2) * (1.0 + 1e-6));
    alignas(32) float tlo[kMaxWidth], thi[kMaxWidth];  // the query group's box
    for (int64_t i = 0; i < w; ++i) {
        tlo[i] = INFINITY;
        thi[i] = -INFINITY;
        for (int k = 0; k < nqt; ++k) {
            tlo[i] = std::min(tlo[i], tq[i * kLanes + k]);
            thi[i] = std::max(thi[i], tq[i * kLanes + k]);
        }
    }
    // low = L(q) - margin - slack: a tile bound (without the margin) below it prunes. Padding: +inf.
    const float pad = p.margin + kTileSlack;
    float lmin = INFINITY;
    auto refresh = [&] {
        lmin = INFINITY;
        for (int k = 0; k < kLanes; ++k) {
            low[k] = k < nqt ? best[qs[k]].value - pad : INFINITY;
            lmin = std::min(lmin, low[k]);
        }
    };
    refresh();

    alignas(32) float a8[8], box8[8], csim[kLanes];
    const void* cptr[kLanes];
    int64_t cid[kLanes];
    const int64_t n_tiles = p.db.size();
    for (int64_t blk = 0; blk < tb.n_blocks; ++blk) {
        // Grain A for 8 database tiles at once: the smaller of the ball and the box bounds.
        kBounds.lanes8(tcf, tb.cen.data() + blk * w * 8, w, a8);
        kBounds.box8(tlo, thi, tb.lo.data() + blk * w * 8, tb.hi.data() + blk * w * 8, w, box8);
        for (int l = 0; l < 8; ++l) {
            const int64_t j = blk * 8 + l;
            if (j >= n_tiles) break;
            ++cnt.a_checked;
            const float r = tb.radius[j], cn = tb.cnorm[j];
            if (std::min(a8[l] + tcn * r + rq * (cn + r), box8[l]) < lmin) {
                ++cnt.a_pruned;
                continue;
            }
            // Grain B for the tile's queries: min(t.c + |t| r, box) against L - margin - slack.
            const float* lf = tb.leaf.data() + j * 3 * w;
            for (int k = 0; k < kLanes; ++k) addb[k] = tnorm[k] * r;
            uint32_t keep_b = kBounds.keepb(tq, lf, lf + w, lf + 2 * w, w, addb, low) & ((1u << nqt) - 1u);
            cnt.b_checked += nqt;
            cnt.b_pruned += nqt - __builtin_popcount(keep_b);
            if (!keep_b) continue;
            const int64_t* tids = p.db.of(j);
            const int nv = p.db.count(j);
            const uint32_t valid = (nv >= 32 ? ~0u : (1u << nv) - 1u);
            const uint16_t* rows = tb.rows.data() + j * w * kLanes;
            bool improved = false;
            while (keep_b) {
                const int k = __builtin_ctz(keep_b);
                keep_b &= keep_b - 1;
                const int64_t q = qs[k];
                // Grain C: every stored vector's screen bound t.s(v) + margin against L(q).
                uint32_t keep_c = kBounds.keep16h(p.tn.data() + q * w, rows, w, p.margin, best[q].value) & valid;
                cnt.c_checked += nv;
                cnt.c_pruned += nv - __builtin_popcount(keep_c);
                bool better = false;
                if (keep_c) {  // grain D: the survivors scored together (their memory reads overlap)
                    int g = 0;
                    while (keep_c) {
                        const int v = __builtin_ctz(keep_c);
                        keep_c &= keep_c - 1;
                        if (full) {  // grain C2: the full-width screen row
                            ++cnt.c2_checked;
                            if (kBound(p.t + q * p.width, p.screen + tids[v] * p.width, p.width) + p.margin <
                                best[q].value) {
                                ++cnt.c2_pruned;
                                continue;
                            }
                        }
                        cid[g] = tids[v];
                        cptr[g++] = p.codes.row(tids[v]);
                    }
                    cnt.exact += g;
                    p.codes.score(p.queries + q * p.d, cptr, g, csim);
                    for (int c = 0; c < g; ++c)
                        if (offer(best[q], csim[c], cid[c])) better = true;
                }
                if (better) {
                    low[k] = best[q].value - pad;
                    improved = true;
                }
            }
            if (improved) refresh();
        }
    }
}

Problem parse(const py::array& queries_in, const py::array& t_in, int64_t hq, int64_t wq, const py::array& vectors_in,
              const std::string& codec, const py::object& scale_in, const py::object& bias_in,
              const py::array& screen_in, double margin, const py::array& images_in, const py::array& offsets_in,
              const py::array& grids_in, std::pair<int64_t, int64_t> tile, std::pair<int64_t, int64_t> qtile,
              int64_t threads, double residual_scale) {
    auto queries = require<float>(queries_in, "queries", 2);
    auto t = require<float>(t_in, "t", 2);
    auto screen = require<uint16_t>(screen_in, "screen", 2);
    auto images = require<int64_t>(images_in, "images", 1);
    auto offsets = require<int64_t>(offsets_in, "offsets", 1);
    auto grids = require<int64_t>(grids_in, "grids", 2);
    Problem p;
    p.nq = queries.shape(0);
    p.d = queries.shape(1);
    p.hq = hq;
    p.wq = wq;
    p.width = t.shape(1);
    if (hq < 1 || wq < 1 || hq * wq != p.nq)
        fail("Expected a query grid hq x wq = " + std::to_string(p.nq) + " positions, but got " +
             std::to_string(hq) + " x " + std::to_string(wq));
    if (t.shape(0) != p.nq) fail("Expected t of shape (" + std::to_string(p.nq) + ", W), but t.shape = " + shape_str(t));
    if (p.width < 2 || p.width > kMaxWidth)
        fail("Expected a screen width W in [2, " + std::to_string(kMaxWidth) + "], but W = " + std::to_string(p.width));
    if (screen.shape(1) != p.width)
        fail("Expected screen rows of width W = " + std::to_string(p.width) + " (t's), but screen.shape = " + shape_str(screen));
    p.codes = parse_codes(vectors_in, codec, scale_in, bias_in, p.d);
    if (screen.shape(0) != p.codes.n)
        fail("Expected one screen row per stored vector (" + std::to_string(p.codes.n) + "), but screen.shape = " + shape_str(screen));
    if (!(margin >= 0.0) || !std::isfinite(margin)) fail("Expected a finite margin >= 0");
    p.margin = static_cast<float>(margin);
    if (tile.first < 1 || tile.second < 1 || tile.first * tile.second > kLanes ||
        qtile.first < 1 || qtile.second < 1 || qtile.first * qtile.second > kLanes)
        fail("Expected tiles of 1 to 16 positions (th * tw <= 16, qh * qw <= 16)");
    p.th = static_cast<int32_t>(tile.first);
    p.tw = static_cast<int32_t>(tile.second);
    p.qh = static_cast<int32_t>(qtile.first);
    p.qw = static_cast<int32_t>(qtile.second);
    if (threads < 1) fail("Expected threads >= 1, but threads = " + std::to_string(threads));

    const int64_t n_images = grids.shape(0);
    if (grids.shape(1) != 2 || offsets.shape(0) != n_images + 1)
        fail("Expected grids (n_images, 2) and offsets (n_images + 1,), but got " + shape_str(grids) + " and " + shape_str(offsets));
    const int64_t* off = offsets.data();
    const int64_t* grid = grids.data();
    if (load(off, n_images) > p.codes.n) fail("Expected offsets[-1] <= N (the number of vectors)");
    const int64_t m = images.shape(0);
    if (m < 1) fail("Expected at least one database image in images, but images is empty");
    int64_t prev = -1, n_positions = 0;
    for (int64_t k = 0; k < m; ++k) {
        const int64_t id = load(images.data(), k);
        if (id <= prev || id >= n_images)
            fail("Expected ascending distinct image ids in [0, " + std::to_string(n_images) + "), but images[" +
                 std::to_string(k) + "] = " + std::to_string(id));
        prev = id;
        const int64_t h = load(grid, 2 * id), gw = load(grid, 2 * id + 1), base = load(off, id);
        if (h < 0 || gw < 0 || h > INT32_MAX || gw > INT32_MAX || load(off, id + 1) - base != h * gw)
            fail("Expected offsets[n + 1] - offsets[n] = Hp * Wp for image " + std::to_string(id));
        p.slots.push_back(Slot{id, base, h, gw});
        p.slot_base.push_back(base);
        p.slot_end.push_back(base + h * gw);
        n_positions += h * gw;
    }
    if (n_positions == 0) fail("Expected the shortlisted images to hold at least one position");
    p.queries = queries.data();
    p.t = t.data();
    p.screen = screen.data();
    p.bw = std::min(p.width, kNested);
    nest_queries(p);
    if (!(residual_scale >= 0.0 && residual_scale <= 1.0))
        fail("Expected residual_scale in [0, 1], but residual_scale = " + std::to_string(residual_scale));
    p.residual_scale = static_cast<float>(residual_scale);
    relax_queries(p);
    p.threads = static_cast<int>(std::min<int64_t>({threads, kMaxThreads, (p.nq + kLanes - 1) / kLanes}));
    return p;
}

// ---------------------------------------------------------------------------------------------
// Groups. Spatial: th x tw blocks of each image's grid (qh x qw blocks of the query grid). k-d:
// each image's positions (the query's positions) split recursively at the median of the screen
// component of widest range, into leaves of at most th * tw (qh * qw) positions whose screen rows
// are close together, so
// the leaves' balls are small and the tile grains prune more. Both are deterministic: the same
// inputs give the same groups, whatever the thread count.

// Splits idx[lo, hi) of the rows f (n x w floats) into leaves of <= kLanes, appended to `out`
// as [lo, hi) pairs in a fixed (depth-first) order.
void kd_split(const float* f, int64_t w, int64_t* idx, int64_t lo, int64_t hi, int64_t leaf,
              std::vector<int64_t>& out) {
    const int64_t n = hi - lo;
    if (n <= leaf) {
        out.push_back(lo);
        return;
    }
    int64_t best_c = 0;
    float best_range = -1.0f;
    for (int64_t c = 0; c < w; ++c) {
        float mn = INFINITY, mx = -INFINITY;
        for (int64_t k = lo; k < hi; ++k) {
            const float v = f[idx[k] * w + c];
            mn = std::min(mn, v);
            mx = std::max(mx, v);
        }
        if (mx - mn > best_range) {
            best_range = mx - mn;
            best_c = c;
        }
    }
    const int64_t leaves = (n + leaf - 1) / leaf;
    const int64_t mid = lo + (leaves / 2) * leaf;  // full leaves on the left
    std::nth_element(idx + lo, idx + mid, idx + hi, [&](int64_t a, int64_t b) {
        const float va = f[a * w + best_c], vb = f[b * w + best_c];
        return va < vb || (va == vb && a < b);
    });
    kd_split(f, w, idx, lo, mid, leaf, out);
    kd_split(f, w, idx, mid, hi, leaf, out);
}

// Leaves of the rows f (n x w) as ids base + index, appended to g.
void kd_groups(const float* f, int64_t n, int64_t w, int64_t base, int64_t leaf, Groups& g) {
    std::vector<int64_t> idx(static_cast<size_t>(n));
    for (int64_t k = 0; k < n; ++k) idx[k] = k;
    std::vector<int64_t> starts;
    kd_split(f, w, idx.data(), 0, n, leaf, starts);
    starts.push_back(n);
    for (size_t l = 0; l + 1 < starts.size(); ++l) {
        for (int64_t k = starts[l]; k < starts[l + 1]; ++k) g.ids.push_back(base + idx[k]);
        g.close();
    }
}

void spatial_groups(int64_t base, int64_t h, int64_t w, int64_t th, int64_t tw, Groups& g) {
    for (int64_t y = 0; y < h; y += th)
        for (int64_t x = 0; x < w; x += tw) {
            for (int64_t yy = y; yy < std::min(h, y + th); ++yy)
                for (int64_t xx = x; xx < std::min(w, x + tw); ++xx) g.ids.push_back(base + yy * w + xx);
            g.close();
        }
}

void make_groups(Problem& p, Pool& pool) {
    if (!p.kd) {
        for (const Slot& s : p.slots) spatial_groups(s.base, s.h, s.w, p.th, p.tw, p.db);
        spatial_groups(0, p.hq, p.wq, p.qh, p.qw, p.qg);
        return;
    }
    const int64_t w = p.bw;
    std::vector<Groups> per(p.slots.size());
    pool.parallel_for(static_cast<int64_t>(p.slots.size()), [&](int64_t k, int) {
        const Slot& s = p.slots[k];
        const int64_t n = s.h * s.w;
        std::vector<float> f(static_cast<size_t>(n * w));
        uint16_t r[kMaxWidth];
        for (int64_t v = 0; v < n; ++v) {
            nested_row(p, s.base + v, r);
            for (int64_t i = 0; i < w; ++i) f[v * w + i] = half_to_float(r[i]);
        }
        kd_groups(f.data(), n, w, s.base, int64_t{p.th} * p.tw, per[k]);
    });
    for (const Groups& g : per) {  // in shortlist order: deterministic
        const int64_t off = static_cast<int64_t>(p.db.ids.size());
        p.db.ids.insert(p.db.ids.end(), g.ids.begin(), g.ids.end());
        for (size_t l = 1; l < g.start.size(); ++l) p.db.start.push_back(off + g.start[l]);
    }
    kd_groups(p.tn.data(), p.nq, w, 0, int64_t{p.qh} * p.qw, p.qg);
}

// Whether global id `id` lies in a shortlisted image.
bool in_shortlist(const Problem& p, int64_t id) {
    auto it = std::upper_bound(p.slot_base.begin(), p.slot_base.end(), id);
    if (it == p.slot_base.begin()) return false;
    const size_t s = static_cast<size_t>(it - p.slot_base.begin() - 1);
    return id < p.slot_end[s];
}

}  // namespace

py::tuple bounded_search(const py::array& queries, const py::array& t, int64_t hq, int64_t wq,
                         const py::array& vectors, const std::string& codec, const py::object& scale,
                         const py::object& bias, const py::array& screen, double margin, const py::array& images,
                         const py::array& offsets, const py::array& grids, const py::array& seed_in,
                         std::pair<int64_t, int64_t> tile, std::pair<int64_t, int64_t> qtile, int64_t threads,
                         const std::string& grouping, double residual_scale) {
    Problem p = parse(queries, t, hq, wq, vectors, codec, scale, bias, screen, margin, images, offsets, grids,
                      tile, qtile, threads, residual_scale);
    if (grouping != "spatial" && grouping != "kd")
        fail("Expected grouping 'kd' or 'spatial', but grouping = '" + grouping + "'");
    p.kd = grouping == "kd";
    auto seed = require<int64_t>(seed_in, "seed", 1);
    if (seed.shape(0) != p.nq) fail("Expected seed ids of shape (" + std::to_string(p.nq) + ",), but seed.shape = " + shape_str(seed));
    const int64_t* sd = seed.data();
    std::vector<Best> best(static_cast<size_t>(p.nq), Best{-INFINITY, std::numeric_limits<int64_t>::max()});
    Counters total;
    int64_t seeded = 0;
    {
        py::gil_scoped_release release;
        Pool pool(p.threads);
        make_groups(p, pool);
        const TileBounds tb = tile_bounds(p, pool);
        // The seed's exact similarity is every position's first lower bound; an id outside the
        // shortlist (or garbage) is ignored: the seed only prunes.
        std::vector<uint8_t> ok(static_cast<size_t>(p.nq), 0);
        pool.parallel_for((p.nq + 255) / 256, [&](int64_t b, int) {
            for (int64_t q = b * 256; q < std::min(p.nq, (b + 1) * 256); ++q) {
                const int64_t id = load(sd, q);
                if (id >= 0 && id < p.codes.n && in_shortlist(p, id)) {
                    best[q] = Best{similarity(p, q, id), id};
                    ok[q] = 1;
                }
            }
        });
        for (const uint8_t o : ok) seeded += o;
        const int64_t n_qt = p.qg.size();
        std::vector<Counters> per(static_cast<size_t>(n_qt));
        pool.parallel_for(n_qt, [&](int64_t qt, int) { search_tile(p, tb, qt, best.data(), per[qt]); });
        for (const Counters& c : per) total.add(c);
    }
    py::array_t<int64_t> out_id(p.nq);
    py::array_t<float> out_sim(p.nq);
    for (int64_t q = 0; q < p.nq; ++q) {
        out_id.mutable_data()[q] = best[q].id;
        out_sim.mutable_data()[q] = best[q].value;
    }
    py::dict stats;
    stats["tile_pairs"] = total.a_checked;
    stats["tile_pairs_pruned"] = total.a_pruned;
    stats["query_tiles"] = total.b_checked;
    stats["query_tiles_pruned"] = total.b_pruned;
    stats["vector_bounds"] = total.c_checked;
    stats["vector_bounds_pruned"] = total.c_pruned;
    stats["full_bounds"] = total.c2_checked;
    stats["full_bounds_pruned"] = total.c2_pruned;
    stats["exact"] = total.exact;
    stats["seeded"] = seeded;
    int64_t n_cand = 0;
    for (size_t s = 0; s < p.slot_base.size(); ++s) n_cand += p.slot_end[s] - p.slot_base[s];
    stats["candidates"] = n_cand * p.nq;
    stats["kernel"] = std::string(kBounds.name) + "/" + kDot.name;
    return py::make_tuple(out_id, out_sim, stats);
}

PYBIND11_MODULE(_bounded, m) {
    m.doc() = "Certified exact search pruned by screen bounds and a seed field (see search/exact.py).";
    m.def("search", &bounded_search, py::arg("queries"), py::arg("t"), py::arg("hq"), py::arg("wq"), py::arg("vectors"),
          py::arg("codec"), py::arg("scale"), py::arg("bias"), py::arg("screen"), py::arg("margin"), py::arg("images"),
          py::arg("offsets"), py::arg("grids"), py::arg("seed"), py::arg("tile"), py::arg("qtile"), py::arg("threads"),
          py::arg("grouping") = "kd", py::arg("residual_scale") = 1.0,
          "Exact top-1 of every query row over the shortlisted images' vectors, scoring only candidates whose\n"
          "screen bound can beat the seed's (or a later match's) similarity. Returns (ids, similarity, stats).\n"
          "queries float32 (Q, D); t float32 (Q, W) screen projections; screen uint16 (N, W) half-float rows;\n"
          "images ascending distinct ids; seed int64 (Q,) global ids (anything outside the shortlist: none).");
    m.def("set_kernel", &set_kernel, py::arg("name"),
          "Bound kernels to run: 'auto', 'avx512f', 'avx2+fma+f16c' or 'generic' (ValueError if this CPU lacks it).");
    m.def("get_kernel", [] { return std::string(kBounds.name); });
}
