// HyperPatch-Match: PatchMatch (Barnes et al. 2009) across a database of images, as used by
// Compositional Nearest Neighbors. For every query hyperpatch it finds a database hyperpatch of
// high inner product, reading database vectors in place from a FAISS IndexFlatIP's storage.
//
// The algorithm is specified (and mirrored line by line) by `patchmatch_reference` in
// compnn_index/search/reference.py (the wrapper, search/hyperpatchmatch.py, which imports it as
// compnn_index.search._hpm); tests check that both give identical fields.
//
// Determinism. All random numbers come from a counter-based generator: a value is a hash of
// (seed, iteration, query position, stream), so it does not depend on which thread draws it or
// when. Each iteration has two passes with a fixed data flow:
//   1. row pass (parallel over query rows; each row is scanned sequentially, left to right on
//      even iterations and right to left on odd ones): propagation from the previous position in
//      the row, then random search and jumps around the resulting match;
//   2. column pass (parallel over query columns, each scanned top to bottom on even iterations,
//      bottom to top on odd ones): propagation from the previous position in the column.
// A row (column) reads and writes only its own positions, so the field depends only on the seed
// and the inputs: it is the same for every thread count.
//
// Codecs. The database is a layer store's codes, read in place: float32 vectors (IndexFlatIP,
// "fp32"), IEEE half floats (IndexScalarQuantizer QT_fp16, "fp16", converted with F16C
// `_mm256_cvtph_ps` or a scalar fallback) or 8-bit codes with per-dimension ranges
// (QT_8bit, "sq8": component i of code c decodes to c * scale[i] + bias[i], see
// compnn_index/index/codecs.py). On fp16 and sq8 the similarity of a candidate is the cosine
// between the query and the decoded vector, re-normalised: (q . v) / sqrt(v . v), both sums
// taken in the same pass over the codes; fp32 vectors are unit vectors already and keep the
// plain dot product (bit for bit the fields of earlier versions).
//
// Alignment. The database is usually a view of a memory-mapped FAISS file, whose vectors start at
// file byte 45: its floats are not 4-byte aligned. A `const float*` into caller memory is therefore
// only an address here; every read of caller memory goes through memcpy (`load`) or an unaligned
// vector load (`_mm*_loadu_ps`, masked loads), never a plain dereference.
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
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

// KERNELS_GENERIC_ONLY builds only the portable dot product, as on a non-x86 target (lets an x86
// machine compile and test that path).
#if (defined(__x86_64__) || defined(__i386__)) && !defined(KERNELS_GENERIC_ONLY)
#include <immintrin.h>
#define KERNELS_X86 1
#endif

namespace py = pybind11;

namespace {

#include "kernels.h"

// ---------------------------------------------------------------------------------------------
// Counter-based random numbers (splitmix64 finaliser). Mirrored in patchmatch.py.

constexpr uint64_t kInitIteration = ~0ULL;      // iteration key used by the random initial field
constexpr uint64_t kJumpStream = 1ULL << 32;   // first stream id used by jumps

inline uint64_t mix64(uint64_t z) {
    z += 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

inline uint64_t position_key(uint64_t seed, uint64_t iteration, uint64_t position) {
    return mix64(mix64(mix64(seed) ^ iteration) ^ position);
}

inline uint64_t draw(uint64_t key, uint64_t stream) { return mix64(key ^ stream); }

// Integer in [0, n) from the high 32 bits of r (multiply-shift; n < 2**31).
inline int32_t below(uint64_t r, int64_t n) {
    return static_cast<int32_t>(((r >> 32) * static_cast<uint64_t>(n)) >> 32);
}

inline int32_t clip(int64_t v, int32_t hi) {  // to [0, hi - 1]
    return static_cast<int32_t>(v < 0 ? 0 : (v >= hi ? hi - 1 : v));
}

// Uniform integer in the window [c - r, c + r] clipped to [0, n - 1].
inline int32_t uniform_around(uint64_t rnd, int64_t c, int64_t r, int64_t n) {
    const int64_t lo = std::max<int64_t>(0, c - r), hi = std::min<int64_t>(n - 1, c + r);
    return static_cast<int32_t>(lo + below(rnd, hi - lo + 1));
}

inline int32_t bit_length(int64_t v) {
    int32_t n = 0;
    while (v > 0) { ++n; v >>= 1; }
    return n;
}


// ---------------------------------------------------------------------------------------------
// Problem description and search state.

struct Slot {          // one shortlisted database image
    int64_t image;     // image id in the store
    int64_t base;      // id of its position (0, 0)
    int32_t h, w;      // feature grid
    int32_t radius;    // max(h, w): the first random-search radius
    int32_t levels;    // number of radii radius >> k that are >= 1
};

struct Match {
    int32_t slot, y, x;
    bool operator==(const Match& o) const { return slot == o.slot && y == o.y && x == o.x; }
    bool operator!=(const Match& o) const { return !(*this == o); }
};

// The checked arguments of one call. The pointers are into the caller's arrays, which pybind11
// keeps alive for the whole call.
struct Problem {
    const float* queries;
    int64_t hq, wq, d;
    Codes db;                 // the database codes, read in place
    std::vector<Slot> slots;
    uint64_t seed;
    int32_t samples, jumps;
    int64_t iterations;
    double tol;
    int threads;              // threads to run: capped by the tasks of the widest pass
    std::vector<Match> given; // the initial field passed in (row-major), empty for a random one
    // Screen (compnn_index/index/screen.py): per stored vector `screen_w` half floats
    // s(v) = [P^T v, |v_perp|], per query t(q) = [P^T q, |q_perp|]; q.v <= t(q).s(v) + margin.
    const uint8_t* screen = nullptr;  // null: no screening
    int64_t screen_w = 0;
    const float* screen_q = nullptr;  // (hq * wq, screen_w)
    float margin = 0.0f;
};

struct State {
    std::vector<Match> match;  // per query position, row-major
    std::vector<float> sim;
    std::atomic<int64_t> candidates{0};  // full similarities computed
    std::atomic<int64_t> screened{0};    // bounds computed (screen), whether or not rejected
    std::vector<double> mean_similarity; // after the initial field and after each iteration
    int64_t iterations = 0;              // iterations run

    double mean_sim() const {
        double total = 0.0;
        for (const float s : sim) total += s;
        return total / static_cast<double>(sim.size());
    }
};

inline const void* vector_of(const Problem& p, const Match& m) {
    const Slot& s = p.slots[m.slot];
    return p.db.row(s.base + static_cast<int64_t>(m.y) * s.w + m.x);
}

inline const float* query_of(const Problem& p, int64_t q) { return p.queries + q * p.d; }

inline const void* screen_row(const Problem& p, const Match& m) {
    const Slot& s = p.slots[m.slot];
    return p.screen + (s.base + static_cast<int64_t>(m.y) * s.w + m.x) * p.screen_w * 2;
}


// Whether the candidate cannot beat `best`: its bound is not above it (acceptance is strict).
inline bool rejected(const Problem& p, int64_t q, const void* row, float best) {
    return kBound(p.screen_q + q * p.screen_w, row, p.screen_w) + p.margin <= best;
}

// Whether propagation candidates are screened too (they are usually good, so a bound seldom
// rejects them; set_screen_propagation() measures it). Never changes results.
bool g_screen_propagation = false;

// Software prefetch of the first g_prefetch_bytes of every candidate of a random-search step
// before any is scored, so all their cache misses are in flight at once (the scoring loop alone
// keeps 4 in flight). Changes no result. 0 disables it; set_prefetch() tunes it (benchmarks).
// Default 256 B with 8 lockstep rows: measured on Facades decoder2 top-16 (tools/bench_codecs.py),
// 32 iterations took 6.6 s instead of 9.0 s (fp32), 6.1 vs 6.7 (fp16), 5.0 vs 5.7 (sq8).
int64_t g_prefetch_bytes = 256;

inline void prefetch(const Problem& p, const void* const* c, int n) {
#ifdef KERNELS_X86
    const int64_t bytes = std::min<int64_t>(g_prefetch_bytes, p.db.row_bytes);
    if (bytes <= 0) return;
    for (int k = 0; k < n; ++k)
        for (int64_t b = 0; b < bytes; b += 64)
            _mm_prefetch(static_cast<const char*>(c[k]) + b, _MM_HINT_T0);
#else
    (void)p; (void)c; (void)n;
#endif
}

// Similarities of query q with g candidates: the dot product (fp32) or the cosine with the
// decoded vector (fp16, sq8).
inline void score(const Problem& p, int64_t q, const void* const* c, int g, float* out) {
    p.db.score(query_of(p, q), c, g, out);
}

// Evaluate one candidate for position q; keep it if strictly better. Returns 1 if evaluated.
inline int64_t try_candidate(const Problem& p, State& st, int64_t q, const Match& cand) {
    if (cand == st.match[q]) return 0;
    const void* c = vector_of(p, cand);
    float s;
    score(p, q, &c, 1, &s);
    if (s > st.sim[q]) {
        st.match[q] = cand;
        st.sim[q] = s;
    }
    return 1;
}

// Per-thread scratch buffers for the random-search candidates of one position (one cache line
// apart, since every push_back writes the vector's header).
struct alignas(64) Scratch {
    std::vector<Match> cand;
    std::vector<const void*> ptr;
    std::vector<float> sim;
};

// Random search (samples uniform in a window around the current match, clipped to the image,
// radii shrinking by 1/2 from the image size,
// the levels visited rotating with the iteration) and jumps (random positions in random other
// shortlisted images). All candidates are drawn around the match held before this step, then
// evaluated together (the memory reads overlap) and accepted in draw order if strictly better.
void draw_random(const Problem& p, const State& st, int64_t q, int64_t t, Scratch& sc) {
    const Match centre = st.match[q];
    const Slot& cs = p.slots[centre.slot];
    const uint64_t key = position_key(p.seed, static_cast<uint64_t>(t), static_cast<uint64_t>(q));
    sc.cand.clear();
    for (int32_t i = 0; i < p.samples; ++i) {
        const int64_t level = (t * p.samples + i) % cs.levels;
        const int64_t r = cs.radius >> level;
        const Match m{centre.slot, uniform_around(draw(key, 2 * static_cast<uint64_t>(i)), centre.y, r, cs.h),
                      uniform_around(draw(key, 2 * static_cast<uint64_t>(i) + 1), centre.x, r, cs.w)};
        if (m != centre) sc.cand.push_back(m);
    }
    const int32_t n_slots = static_cast<int32_t>(p.slots.size());
    for (int32_t j = 0; j < p.jumps; ++j) {
        const uint64_t stream = kJumpStream + 3 * static_cast<uint64_t>(j);
        int32_t s = 0;
        if (n_slots > 1) {
            s = below(draw(key, stream), n_slots - 1);
            if (s >= centre.slot) ++s;
        }
        const Slot& js = p.slots[s];
        const Match m{s, below(draw(key, stream + 1), js.h), below(draw(key, stream + 2), js.w)};
        if (m != centre) sc.cand.push_back(m);
    }
    const int n = static_cast<int>(sc.cand.size());
    sc.ptr.resize(n);
    sc.sim.resize(n);
    if (p.screen != nullptr) {  // the screen rows first (one cache line each); see screen_random
        for (int k = 0; k < n; ++k) sc.ptr[k] = screen_row(p, sc.cand[k]);
#ifdef KERNELS_X86
        for (int k = 0; k < n; ++k) _mm_prefetch(static_cast<const char*>(sc.ptr[k]), _MM_HINT_T0);
#endif
        return;
    }
    for (int k = 0; k < n; ++k) sc.ptr[k] = vector_of(p, sc.cand[k]);
    prefetch(p, sc.ptr.data(), n);
}

// With a screen: drops the candidates drawn by draw_random whose bound is not above the current
// similarity (they could not be accepted), keeping the others in draw order, and prefetches the
// vectors of those kept. Returns the number of bounds computed.
int64_t screen_random(const Problem& p, const State& st, int64_t q, Scratch& sc) {
    if (p.screen == nullptr) return 0;
    const int n = static_cast<int>(sc.cand.size());
    const float best = st.sim[q];
    int kept = 0;
    for (int k = 0; k < n; ++k) {
        if (rejected(p, q, sc.ptr[k], best)) continue;
        sc.cand[kept] = sc.cand[k];
        sc.ptr[kept] = vector_of(p, sc.cand[k]);
        ++kept;
    }
    sc.cand.resize(kept);
    sc.ptr.resize(kept);
    prefetch(p, sc.ptr.data(), kept);
    return n;
}

// Scores the candidates drawn by draw_random and accepts them in draw order if strictly better.
int64_t score_random(const Problem& p, State& st, int64_t q, Scratch& sc) {
    const int n = static_cast<int>(sc.cand.size());
    if (n == 0) return 0;
    score(p, q, sc.ptr.data(), n, sc.sim.data());
    for (int k = 0; k < n; ++k) {
        if (sc.sim[k] > st.sim[q]) {
            st.match[q] = sc.cand[k];
            st.sim[q] = sc.sim[k];
        }
    }
    return n;
}

int64_t random_search(const Problem& p, State& st, int64_t q, int64_t t, Scratch& sc) {
    draw_random(p, st, q, t, sc);
    st.screened += screen_random(p, st, q, sc);
    return score_random(p, st, q, sc);
}

// Several rows (columns) in lockstep. Rows of a row pass are independent (each reads and writes
// only its own positions), so advancing g_interleave of them together, one position each per
// step, gives the same field as scanning them one after the other, while the memory reads of
// their candidates (prefetched first) overlap: a propagation candidate depends on the previous
// position's match, so a single scan has one cache miss in flight at a time.
int64_t g_interleave = 8;

struct Pending {
    int64_t q;
    Match cand;
    const void* ptr;
};

// One propagation step of several scans: candidates first (prefetched), then scored in order.
// With g_screen_propagation, the candidates' screen rows are read first and those that cannot
// be accepted dropped.
int64_t propagate(const Problem& p, State& st, std::vector<Pending>& pend) {
    if (p.screen != nullptr && g_screen_propagation && !pend.empty()) {
        size_t kept = 0;
        for (const Pending& e : pend) {
            if (rejected(p, e.q, screen_row(p, e.cand), st.sim[e.q])) continue;
            pend[kept++] = e;
        }
        st.screened += static_cast<int64_t>(pend.size());
        pend.resize(kept);
    }
    for (const Pending& e : pend) prefetch(p, &e.ptr, 1);
    for (const Pending& e : pend) {
        float s;
        score(p, e.q, &e.ptr, 1, &s);
        if (s > st.sim[e.q]) {
            st.match[e.q] = e.cand;
            st.sim[e.q] = s;
        }
    }
    const int64_t n = static_cast<int64_t>(pend.size());
    pend.clear();
    return n;
}

inline void offer(const Problem& p, const State& st, int64_t q, const Match& cand, std::vector<Pending>& pend) {
    if (cand != st.match[q]) pend.push_back(Pending{q, cand, vector_of(p, cand)});
}

int64_t row_block_pass(const Problem& p, State& st, int64_t t, int64_t row0, int64_t rows,
                       std::vector<Scratch>& sc, std::vector<Pending>& pend) {
    const bool forward = (t % 2) == 0;
    const int64_t step = forward ? 1 : -1;
    int64_t evaluated = 0;
    if (static_cast<int64_t>(sc.size()) < rows) sc.resize(rows);
    for (int64_t i = 0; i < p.wq; ++i) {
        const int64_t x = forward ? i : p.wq - 1 - i;
        if (i > 0) {
            for (int64_t j = 0; j < rows; ++j) {
                const int64_t q = (row0 + j) * p.wq + x;
                const Match& nb = st.match[q - step];
                offer(p, st, q, Match{nb.slot, nb.y, clip(int64_t{nb.x} + step, p.slots[nb.slot].w)}, pend);
            }
            evaluated += propagate(p, st, pend);
        }
        for (int64_t j = 0; j < rows; ++j) draw_random(p, st, (row0 + j) * p.wq + x, t, sc[j]);
        if (p.screen != nullptr) {
            int64_t bounds = 0;
            for (int64_t j = 0; j < rows; ++j) bounds += screen_random(p, st, (row0 + j) * p.wq + x, sc[j]);
            st.screened += bounds;
        }
        for (int64_t j = 0; j < rows; ++j) evaluated += score_random(p, st, (row0 + j) * p.wq + x, sc[j]);
    }
    return evaluated;
}

int64_t column_block_pass(const Problem& p, State& st, int64_t t, int64_t col0, int64_t cols,
                          std::vector<Pending>& pend) {
    const bool forward = (t % 2) == 0;
    const int64_t step = forward ? 1 : -1;
    int64_t evaluated = 0;
    for (int64_t i = 1; i < p.hq; ++i) {
        const int64_t y = forward ? i : p.hq - 1 - i;
        for (int64_t col = col0; col < col0 + cols; ++col) {
            const int64_t q = y * p.wq + col;
            const Match& nb = st.match[q - step * p.wq];
            offer(p, st, q, Match{nb.slot, clip(int64_t{nb.y} + step, p.slots[nb.slot].h), nb.x}, pend);
        }
        evaluated += propagate(p, st, pend);
    }
    return evaluated;
}

int64_t row_pass(const Problem& p, State& st, int64_t t, int64_t row, Scratch& sc) {
    const bool forward = (t % 2) == 0;
    const int64_t step = forward ? 1 : -1;
    int64_t evaluated = 0;
    for (int64_t i = 0; i < p.wq; ++i) {
        const int64_t x = forward ? i : p.wq - 1 - i;
        const int64_t q = row * p.wq + x;
        if (i > 0) {
            const Match& nb = st.match[q - step];
            const Slot& s = p.slots[nb.slot];
            evaluated += try_candidate(p, st, q, Match{nb.slot, nb.y, clip(int64_t{nb.x} + step, s.w)});
        }
        evaluated += random_search(p, st, q, t, sc);
    }
    return evaluated;
}

constexpr int64_t kColumnBlock = 16;  // columns per column-pass task

int64_t column_pass(const Problem& p, State& st, int64_t t, int64_t col) {
    const bool forward = (t % 2) == 0;
    const int64_t step = forward ? 1 : -1;
    int64_t evaluated = 0;
    for (int64_t i = 1; i < p.hq; ++i) {
        const int64_t y = forward ? i : p.hq - 1 - i;
        const int64_t q = y * p.wq + col;
        const Match& nb = st.match[q - step * p.wq];
        const Slot& s = p.slots[nb.slot];
        evaluated += try_candidate(p, st, q, Match{nb.slot, clip(int64_t{nb.y} + step, s.h), nb.x});
    }
    return evaluated;
}



// Checks every argument and describes the call; runs with the GIL held.
Problem parse(const py::array& queries_in, const py::array& vectors_in, const py::array& images_in,
              const py::array& offsets_in, const py::array& grids_in, const py::object& init_image,
              const py::object& init_y, const py::object& init_x, int64_t iterations, int64_t samples,
              int64_t jumps, uint64_t seed, int64_t threads, double tol, const std::string& codec,
              const py::object& scale_in, const py::object& bias_in, const py::object& screen_in,
              const py::object& screen_q_in, double margin) {
    auto queries = require<float>(queries_in, "queries", 3);
    auto images = require<int64_t>(images_in, "images", 1);
    auto offsets = require<int64_t>(offsets_in, "offsets", 1);
    auto grids = require<int64_t>(grids_in, "grids", 2);

    Problem p;
    p.hq = queries.shape(0);
    p.wq = queries.shape(1);
    p.d = queries.shape(2);
    p.db = parse_codes(vectors_in, codec, scale_in, bias_in, p.d);
    const int64_t n_vectors = p.db.n;
    if (p.hq < 1 || p.wq < 1 || p.d < 1)
        fail("Expected queries with at least one position and one dimension, but queries.shape = " + shape_str(queries));
    if (iterations < 0) fail("Expected iterations >= 0, but iterations = " + std::to_string(iterations));
    if (samples < 0 || samples > 1000000) fail("Expected 0 <= samples <= 1000000, but samples = " + std::to_string(samples));
    if (jumps < 0 || jumps > 1000000) fail("Expected 0 <= jumps <= 1000000, but jumps = " + std::to_string(jumps));
    if (threads < 1) fail("Expected threads >= 1, but threads = " + std::to_string(threads));
    p.iterations = iterations;
    p.samples = static_cast<int32_t>(samples);
    p.jumps = static_cast<int32_t>(jumps);
    p.seed = seed;
    p.tol = tol;
    // No pass has more tasks than max(rows, column blocks): more threads would only wait.
    const int64_t widest = std::max(p.hq, (p.wq + kColumnBlock - 1) / kColumnBlock);
    p.threads = static_cast<int>(std::min<int64_t>({threads, kMaxThreads, widest}));

    const int64_t n_images = grids.shape(0);
    if (grids.shape(1) != 2) fail("Expected grids of shape (n_images, 2), but grids.shape = " + shape_str(grids));
    if (offsets.shape(0) != n_images + 1)
        fail("Expected offsets of shape (n_images + 1,) = (" + std::to_string(n_images + 1) +
             ",), but offsets.shape = " + shape_str(offsets));
    const int64_t* off = offsets.data();
    const int64_t* grid = grids.data();  // (n_images, 2), row-major
    if (load(off, 0) != 0) fail("Expected offsets[0] = 0, but offsets[0] = " + std::to_string(load(off, 0)));
    for (int64_t n = 0; n < n_images; ++n) {
        const int64_t h = load(grid, 2 * n), w = load(grid, 2 * n + 1);
        if (h < 0 || w < 0 || h > INT32_MAX || w > INT32_MAX)
            fail("Expected grids with entries in [0, 2**31), but grids[" + std::to_string(n) + "] = (" +
                 std::to_string(h) + ", " + std::to_string(w) + ")");
        const int64_t ids = load(off, n + 1) - load(off, n);
        if (ids != h * w)
            fail("Expected offsets[n + 1] - offsets[n] = Hp * Wp for every image, but image " + std::to_string(n) +
                 " has " + std::to_string(ids) + " ids for a grid of " + std::to_string(h) + " x " +
                 std::to_string(w));
    }
    if (load(off, n_images) > n_vectors)
        fail("Expected offsets[-1] <= N (the number of vectors), but offsets[-1] = " +
             std::to_string(load(off, n_images)) + ", N = " + std::to_string(n_vectors));

    const int64_t m = images.shape(0);
    if (m < 1) fail("Expected at least one database image in images, but images is empty");
    const int64_t* img = images.data();
    std::vector<int32_t> slot_of(n_images, -1);
    for (int64_t k = 0; k < m; ++k) {
        const int64_t id = load(img, k);
        if (id < 0 || id >= n_images)
            fail("Expected image ids in [0, " + std::to_string(n_images) + "), but images[" + std::to_string(k) +
                 "] = " + std::to_string(id));
        if (slot_of[id] >= 0) fail("Expected distinct image ids, but image " + std::to_string(id) + " appears twice in images");
        const int64_t h = load(grid, 2 * id), w = load(grid, 2 * id + 1);
        if (h * w == 0) fail("Expected database images with a non-empty grid, but image " + std::to_string(id) + " has 0 positions");
        slot_of[id] = static_cast<int32_t>(k);
        const int32_t radius = static_cast<int32_t>(std::max(h, w));
        p.slots.push_back(Slot{id, load(off, id), static_cast<int32_t>(h), static_cast<int32_t>(w), radius,
                               bit_length(radius)});
    }
    p.queries = queries.data();

    if (!screen_in.is_none()) {
        auto rows = require<uint16_t>(screen_in.cast<py::array>(), "screen", 2);
        if (screen_q_in.is_none()) fail("Expected screen_q (float32, (Hq, Wq, W)) with screen, but it is missing");
        auto sq = require<float>(screen_q_in.cast<py::array>(), "screen_q", 3);
        if (rows.shape(0) < load(off, n_images) || rows.shape(1) < 1)
            fail("Expected screen rows for every stored vector, (N, W), but screen.shape = " + shape_str(rows));
        if (sq.shape(0) != p.hq || sq.shape(1) != p.wq || sq.shape(2) != rows.shape(1))
            fail("Expected screen_q of shape (Hq, Wq, W) = (" + std::to_string(p.hq) + ", " + std::to_string(p.wq) +
                 ", " + std::to_string(rows.shape(1)) + "), but screen_q.shape = " + shape_str(sq));
        if (!(margin >= 0.0)) fail("Expected margin >= 0, but margin = " + std::to_string(margin));
        p.screen = reinterpret_cast<const uint8_t*>(rows.data());
        p.screen_w = rows.shape(1);
        p.screen_q = sq.data();
        p.margin = static_cast<float>(margin);
    }

    if (!init_image.is_none()) {
        auto fi = require<int64_t>(init_image.cast<py::array>(), "init_image", 2);
        auto fy = require<int32_t>(init_y.cast<py::array>(), "init_y", 2);
        auto fx = require<int32_t>(init_x.cast<py::array>(), "init_x", 2);
        for (const py::array* a : {static_cast<const py::array*>(&fi), static_cast<const py::array*>(&fy),
                                   static_cast<const py::array*>(&fx)})
            if (a->shape(0) != p.hq || a->shape(1) != p.wq)
                fail("Expected an initial field of the query grid's shape (" + std::to_string(p.hq) + ", " +
                     std::to_string(p.wq) + "), but it has shape " + shape_str(*a));
        const int64_t* pi = fi.data();
        const int32_t* py_ = fy.data();
        const int32_t* px = fx.data();
        const int64_t n_pos = p.hq * p.wq;
        p.given.resize(n_pos);
        for (int64_t q = 0; q < n_pos; ++q) {
            const int64_t id = load(pi, q);
            const int32_t y = load(py_, q), x = load(px, q);
            const std::string where = "(" + std::to_string(q / p.wq) + ", " + std::to_string(q % p.wq) + ")";
            if (id < 0 || id >= n_images || slot_of[id] < 0)
                fail("Expected initial-field images among the searched images, but position " + where + " has image " +
                     std::to_string(id));
            const Slot& s = p.slots[slot_of[id]];
            if (y < 0 || y >= s.h || x < 0 || x >= s.w)
                fail("Expected initial-field positions inside their image's grid, but position " + where + " has (y, x) = (" +
                     std::to_string(y) + ", " + std::to_string(x) + ") in image " + std::to_string(id) +
                     " of grid " + std::to_string(s.h) + " x " + std::to_string(s.w));
            p.given[q] = Match{slot_of[id], y, x};
        }
    }
    return p;
}

// ---------------------------------------------------------------------------------------------
// The search proper (GIL released): the initial field, then the iterations.

// The initial field (the given one, or a random image and position per query) and its
// similarities, rows in parallel.
void init(const Problem& p, State& st, Pool& pool) {
    const int64_t n_pos = p.hq * p.wq;
    st.match.resize(n_pos);
    st.sim.resize(n_pos);
    pool.parallel_for(p.hq, [&](int64_t row, int) {
        for (int64_t q = row * p.wq; q < (row + 1) * p.wq; ++q) {
            if (p.given.empty()) {
                const uint64_t key = position_key(p.seed, kInitIteration, static_cast<uint64_t>(q));
                const int32_t s = below(draw(key, 0), static_cast<int64_t>(p.slots.size()));
                st.match[q] = Match{s, below(draw(key, 1), p.slots[s].h), below(draw(key, 2), p.slots[s].w)};
            } else {
                st.match[q] = p.given[q];
            }
            const void* c = vector_of(p, st.match[q]);
            score(p, q, &c, 1, &st.sim[q]);
        }
        st.candidates += p.wq;
    });
    st.mean_similarity.push_back(st.mean_sim());
}

// Iterations (a row pass, then a column pass) until p.iterations, or after the first whose
// mean-similarity gain is below p.tol.
struct alignas(64) ThreadScratch {
    Scratch one;
    std::vector<Scratch> rows;
    std::vector<Pending> pend;
};

void run(const Problem& p, State& st, Pool& pool) {
    std::vector<ThreadScratch> scratch(pool.size());
    const int64_t n_col_blocks = (p.wq + kColumnBlock - 1) / kColumnBlock;
    const int64_t rb = std::max<int64_t>(1, g_interleave);
    const int64_t n_row_blocks = (p.hq + rb - 1) / rb;
    for (int64_t t = 0; t < p.iterations; ++t) {
        if (rb == 1) {
            pool.parallel_for(p.hq, [&](int64_t row, int thread) {
                st.candidates += row_pass(p, st, t, row, scratch[thread].one);
            });
        } else {
            pool.parallel_for(n_row_blocks, [&](int64_t k, int thread) {
                ThreadScratch& ts = scratch[thread];
                st.candidates += row_block_pass(p, st, t, k * rb, std::min(rb, p.hq - k * rb), ts.rows, ts.pend);
            });
        }
        // Columns go to threads in blocks: adjacent columns share cache lines of the state.
        pool.parallel_for(n_col_blocks, [&](int64_t k, int thread) {
            int64_t evaluated = 0;
            if (rb == 1) {
                for (int64_t col = k * kColumnBlock; col < std::min(p.wq, (k + 1) * kColumnBlock); ++col)
                    evaluated += column_pass(p, st, t, col);
            } else {
                evaluated = column_block_pass(p, st, t, k * kColumnBlock,
                                              std::min(kColumnBlock, p.wq - k * kColumnBlock), scratch[thread].pend);
            }
            st.candidates += evaluated;
        });
        st.mean_similarity.push_back(st.mean_sim());
        ++st.iterations;
        if (st.mean_similarity.back() - st.mean_similarity[st.mean_similarity.size() - 2] < p.tol) break;
    }
}

}  // namespace

// ---------------------------------------------------------------------------------------------

py::tuple patchmatch(const py::array& queries_in, const py::array& vectors_in, const py::array& images_in,
                     const py::array& offsets_in, const py::array& grids_in, const py::object& init_image,
                     const py::object& init_y, const py::object& init_x, int64_t iterations, int64_t samples,
                     int64_t jumps, uint64_t seed, int64_t threads, double tol, const std::string& codec,
                     const py::object& scale, const py::object& bias, const py::object& screen,
                     const py::object& screen_q, double margin) {
    const Problem p = parse(queries_in, vectors_in, images_in, offsets_in, grids_in, init_image, init_y, init_x,
                            iterations, samples, jumps, seed, threads, tol, codec, scale, bias, screen, screen_q,
                            margin);
    State st;
    {
        py::gil_scoped_release release;
        Pool pool(p.threads);  // joined before the GIL is taken back, also on an exception
        init(p, st, pool);
        run(p, st, pool);
    }

    const int64_t n_pos = p.hq * p.wq;
    py::array_t<int64_t> out_image({p.hq, p.wq});
    py::array_t<int32_t> out_y({p.hq, p.wq});
    py::array_t<int32_t> out_x({p.hq, p.wq});
    py::array_t<float> out_sim({p.hq, p.wq});
    int64_t* oi = out_image.mutable_data();
    int32_t* oy = out_y.mutable_data();
    int32_t* ox = out_x.mutable_data();
    float* os = out_sim.mutable_data();
    for (int64_t q = 0; q < n_pos; ++q) {
        oi[q] = p.slots[st.match[q].slot].image;
        oy[q] = st.match[q].y;
        ox[q] = st.match[q].x;
        os[q] = st.sim[q];
    }
    py::dict stats;
    stats["iterations"] = st.iterations;
    stats["mean_similarity"] = py::cast(st.mean_similarity);
    stats["candidates"] = st.candidates.load();
    stats["screened"] = st.screened.load();
    return py::make_tuple(out_image, out_y, out_x, out_sim, stats);
}

// ---------------------------------------------------------------------------------------------
// Screen-space argmax (the "screen" start of search/strategy.py): for every query row t (Q, W),
// the candidate row c (C, W) of largest t.c, over all candidates, exactly (float32 sums, fixed
// order, ties to the lowest index). Candidates sit in lanes: 8 candidates x 4 queries per step,
// the candidate chunk (kScreenChunk rows, transposed to float32) reused by every query group.

constexpr int64_t kScreenChunk = 4096;

void argmax_generic(const float* t, int64_t q0, int64_t nq, const float* ct, int64_t c0, int64_t nc,
                    int64_t stride, int64_t w, float* best, int64_t* arg) {
    for (int64_t q = q0; q < q0 + nq; ++q)
        for (int64_t c = 0; c < nc; ++c) {
            float a = 0.0f;
            for (int64_t i = 0; i < w; ++i) a += t[q * w + i] * ct[i * stride + c];
            if (a > best[q]) { best[q] = a; arg[q] = c0 + c; }
        }
}

#ifdef KERNELS_X86
// 8 queries x 8 candidates per step: 8 independent FMA chains (the FMA latency is hidden), the
// running maxima of each query's lanes kept in an L1 buffer. W is the row width (16: unrolled).
template <int W>
__attribute__((target("avx2,fma"))) void argmax_block8(const float* t, int64_t q, const float* ct, int64_t c0,
                                                       int64_t nc, int64_t stride, int64_t w_rt, float* best,
                                                       int64_t* arg) {
    const int64_t w = W > 0 ? W : w_rt;
    const __m256 lane = _mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256 ninf = _mm256_set1_ps(-INFINITY);
    alignas(32) float mv[8][8], mi[8][8];
    for (int j = 0; j < 8; ++j) {
        _mm256_store_ps(mv[j], ninf);
        _mm256_store_ps(mi[j], _mm256_setzero_ps());
    }
    for (int64_t c = 0; c < stride; c += 8) {
        __m256 acc[8];
        for (int j = 0; j < 8; ++j) acc[j] = _mm256_setzero_ps();
        for (int64_t i = 0; i < w; ++i) {
            const __m256 v = _mm256_loadu_ps(ct + i * stride + c);
            for (int j = 0; j < 8; ++j) acc[j] = _mm256_fmadd_ps(_mm256_broadcast_ss(t + (q + j) * w + i), v, acc[j]);
        }
        const __m256 idx = _mm256_set1_ps(static_cast<float>(c));  // block start, exact below 2**24
        if (c + 8 > nc) {  // the last, partial block: padding lanes score -inf
            const __m256 valid = _mm256_cmp_ps(_mm256_add_ps(idx, lane), _mm256_set1_ps(static_cast<float>(nc)),
                                               _CMP_LT_OQ);
            for (int j = 0; j < 8; ++j) acc[j] = _mm256_blendv_ps(ninf, acc[j], valid);
        }
        for (int j = 0; j < 8; ++j) {
            const __m256 m = _mm256_load_ps(mv[j]);
            const __m256 gt = _mm256_cmp_ps(acc[j], m, _CMP_GT_OQ);
            _mm256_store_ps(mv[j], _mm256_blendv_ps(m, acc[j], gt));
            _mm256_store_ps(mi[j], _mm256_blendv_ps(_mm256_load_ps(mi[j]), idx, gt));
        }
    }
    for (int j = 0; j < 8; ++j)  // lanes to one (value, lowest index)
        for (int l = 0; l < 8; ++l) {
            const int64_t cc = static_cast<int64_t>(mi[j][l]) + l;
            if (mv[j][l] > best[q + j] || (mv[j][l] == best[q + j] && c0 + cc < arg[q + j])) {
                best[q + j] = mv[j][l];
                arg[q + j] = c0 + cc;
            }
        }
}

void argmax_avx2(const float* t, int64_t q0, int64_t nq, const float* ct, int64_t c0, int64_t nc, int64_t stride,
                 int64_t w, float* best, int64_t* arg) {
    // ct has `stride` >= nc columns, a multiple of 8 (zero padding); lanes past nc never win.
    int64_t q = q0;
    for (; q + 8 <= q0 + nq; q += 8) {
        if (w == 16)
            argmax_block8<16>(t, q, ct, c0, nc, stride, w, best, arg);
        else
            argmax_block8<0>(t, q, ct, c0, nc, stride, w, best, arg);
    }
    if (q < q0 + nq) argmax_generic(t, q, q0 + nq - q, ct, c0, nc, stride, w, best, arg);
}
#endif

py::tuple screen_argmax(const py::array& t_in, const py::array& cand_in, int64_t threads) {
    auto t = require<float>(t_in, "t", 2);
    auto cand = require<float>(cand_in, "candidates", 2);
    const int64_t nq = t.shape(0), w = t.shape(1), nc = cand.shape(0);
    if (cand.shape(1) != w)
        fail("Expected candidates of width W = " + std::to_string(w) + " (t's), but candidates.shape = " + shape_str(cand));
    if (nc < 1) fail("Expected at least one candidate");
    if (nc >= (int64_t{1} << 24)) fail("Expected fewer than 2**24 candidates, but there are " + std::to_string(nc));
    if (threads < 1) fail("Expected threads >= 1, but threads = " + std::to_string(threads));
    py::array_t<int64_t> out_arg(nq);
    py::array_t<float> out_best(nq);
    int64_t* arg = out_arg.mutable_data();
    float* best = out_best.mutable_data();
    const float* tq = t.data();
    const float* cv = cand.data();
    {
        py::gil_scoped_release release;
        for (int64_t q = 0; q < nq; ++q) { best[q] = -INFINITY; arg[q] = 0; }
#ifdef KERNELS_X86
        __builtin_cpu_init();
        const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
        const bool avx2 = false;
#endif
        constexpr int64_t kQueryBlock = 256;
        const int64_t n_qb = (nq + kQueryBlock - 1) / kQueryBlock;
        Pool pool(static_cast<int>(std::min<int64_t>({threads, kMaxThreads, n_qb})));
        std::vector<float> ct;
        for (int64_t c0 = 0; c0 < nc; c0 += kScreenChunk) {
            const int64_t n = std::min(kScreenChunk, nc - c0);
            const int64_t padded = (n + 7) / 8 * 8;
            ct.assign(static_cast<size_t>(w * padded), 0.0f);
            for (int64_t c = 0; c < n; ++c)
                for (int64_t i = 0; i < w; ++i) ct[i * padded + c] = load(cv, (c0 + c) * w + i);
            pool.parallel_for(n_qb, [&](int64_t b, int) {
                const int64_t q0 = b * kQueryBlock, m = std::min(kQueryBlock, nq - q0);
#ifdef KERNELS_X86
                if (avx2) {
                    argmax_avx2(tq, q0, m, ct.data(), c0, n, padded, w, best, arg);
                    return;
                }
#endif
                argmax_generic(tq, q0, m, ct.data(), c0, n, padded, w, best, arg);
            });
        }
    }
    return py::make_tuple(out_arg, out_best);
}

py::array_t<float> dot_many(const py::array& query_in, const py::array& vectors_in) {
    // Benchmark helper: the dot product of `query` (D,) with every row of `vectors` (N, D).
    auto query = require<float>(query_in, "query", 1);
    auto vectors = require<float>(vectors_in, "vectors", 2);
    if (vectors.shape(1) != query.shape(0))
        fail("Expected vectors of dimension D = " + std::to_string(query.shape(0)) + ", but vectors.shape = " +
             shape_str(vectors));
    const int64_t n = vectors.shape(0), d = query.shape(0);
    py::array_t<float> out(n);
    float* o = out.mutable_data();
    const float* q = query.data();
    const float* v = vectors.data();
    {
        py::gil_scoped_release release;
        const void* ptr[4];
        int64_t i = 0;
        for (; i + 4 <= n; i += 4) {
            for (int k = 0; k < 4; ++k) ptr[k] = v + (i + k) * d;
            kDot.fn(q, ptr, 4, d, o + i);
        }
        for (; i < n; ++i) {
            const void* c = v + i * d;
            kDot.fn(q, &c, 1, d, o + i);
        }
    }
    return out;
}

PYBIND11_MODULE(_hpm, m) {
    m.doc() = "HyperPatch-Match kernel: PatchMatch across a database of images (see search/hyperpatchmatch.py).";
    m.def("patchmatch", &patchmatch, py::arg("queries"), py::arg("vectors"), py::arg("images"), py::arg("offsets"),
          py::arg("grids"), py::arg("init_image"), py::arg("init_y"), py::arg("init_x"), py::arg("iterations"),
          py::arg("samples"), py::arg("jumps"), py::arg("seed"), py::arg("threads"), py::arg("tol"),
          py::arg("codec") = "fp32", py::arg("scale") = py::none(), py::arg("bias") = py::none(),
          py::arg("screen") = py::none(), py::arg("screen_q") = py::none(), py::arg("margin") = 0.0,
          "Run HyperPatch-Match; returns (image, y, x, similarity, stats). Arrays are read in place, never copied.\n"
          "codec 'fp32': vectors float32 (N, D); 'fp16': uint8 (N, 2 D) half-float codes; 'sq8': uint8 (N, D)\n"
          "codes with float32 scale, bias (D,). On fp16/sq8 the similarity is the cosine with the decoded vector.\n"
          "screen: uint16 (N, W) half-float rows s(v), screen_q: float32 (Hq, Wq, W) t(q), with q.v <= t.s + margin:\n"
          "candidates whose bound is not above the current similarity are not read (same field, less work).");
    m.def("screen_argmax", &screen_argmax, py::arg("t"), py::arg("candidates"), py::arg("threads") = 1,
          "For every row of t (Q, W) float32, the index and value of the largest t . c over the rows c of\n"
          "candidates (C, W) float32, exactly (ties to the lowest index); the screen start of HyperPatch-Match.");
    m.def("dot_many", &dot_many, py::arg("query"), py::arg("vectors"),
          "Inner products of one query with every row of vectors, with the kernel's dot product (benchmarks).");
    m.def("set_prefetch", [](int64_t bytes) { g_prefetch_bytes = std::max<int64_t>(0, bytes); }, py::arg("bytes"),
          "Bytes of every random-search candidate prefetched before scoring (0: off). Never changes results.");
    m.def("get_prefetch", [] { return g_prefetch_bytes; });
    m.def("set_interleave", [](int64_t rows) { g_interleave = std::max<int64_t>(1, rows); }, py::arg("rows"),
          "Rows (and columns) of a pass scanned in lockstep per task (1: one at a time). Never changes results.");
    m.def("get_interleave", [] { return g_interleave; });
    m.def("set_screen_propagation", [](bool on) { g_screen_propagation = on; }, py::arg("on"),
          "Also screen propagation candidates (when a screen is given). Never changes results.");
    m.def("get_screen_propagation", [] { return g_screen_propagation; });
    m.attr("dot_kernel") = kDot.name;
}
