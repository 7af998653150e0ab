// Shared by the native kernels (hyperpatchmatch.cpp, bounded_exact.cpp): reads of caller memory
// whatever its alignment, dot products and codec cosines with run-time CPU dispatch, the screen
// bound, the thread pool, the argument checks and the database codes (`Codes`). Included *inside* each file's anonymous
// namespace (after the standard and pybind11 headers), so every extension gets its own copy and
// no symbol is shared between modules.
//
// The includer, before its namespace: the standard headers, pybind11, and on x86 (unless
// KERNELS_GENERIC_ONLY, which builds only the portable kernels, as on a non-x86 target)
// <immintrin.h> with KERNELS_X86 defined.

// Element i of caller memory, whatever its alignment (a memory-mapped FAISS file stores its
// vectors from file byte 45, so they are not 4-byte aligned). Compilers turn
// this into one plain (unaligned-tolerant) load.
template <class T>
inline T load(const T* p, int64_t i = 0) {
    T v;
    std::memcpy(&v, p + i, sizeof v);
    return v;
}

// ---------------------------------------------------------------------------------------------
// Dot products of one query vector with G candidate vectors, several chains in flight.

// Candidates are byte addresses into the codes (`const void*`), whatever the codec.
using DotFn = void (*)(const float* q, const void* const* c, int g, int64_t d, float* out);

inline const float* as_floats(const void* p) { return static_cast<const float*>(p); }

void dot_generic(const float* q, const void* const* c, int g, int64_t d, float* out) {
    for (int k = 0; k < g; ++k) {
        const float* ck = as_floats(c[k]);
        float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        int64_t i = 0;
        for (; i + 8 <= d; i += 8)
            for (int j = 0; j < 8; ++j) acc[j] += load(q, i + j) * load(ck, i + j);
        for (; i < d; ++i) acc[0] += load(q, i) * load(ck, i);
        out[k] = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    }
}

#ifdef KERNELS_X86
template <int G>
__attribute__((target("avx2,fma"))) inline void dot_avx2_group(const float* q, const void* const* cv,
                                                                int64_t d, float* out) {
    const float* c[G];
    for (int k = 0; k < G; ++k) c[k] = as_floats(cv[k]);
    __m256 acc[G][2];
    for (int k = 0; k < G; ++k) acc[k][0] = acc[k][1] = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= d; i += 16) {
        const __m256 q0 = _mm256_loadu_ps(q + i), q1 = _mm256_loadu_ps(q + i + 8);
        for (int k = 0; k < G; ++k) {
            acc[k][0] = _mm256_fmadd_ps(q0, _mm256_loadu_ps(c[k] + i), acc[k][0]);
            acc[k][1] = _mm256_fmadd_ps(q1, _mm256_loadu_ps(c[k] + i + 8), acc[k][1]);
        }
    }
    for (int k = 0; k < G; ++k) {
        const __m256 s = _mm256_add_ps(acc[k][0], acc[k][1]);
        __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
        h = _mm_add_ps(h, _mm_movehl_ps(h, h));
        h = _mm_add_ss(h, _mm_movehdup_ps(h));
        float tail = 0.0f;
        for (int64_t j = i; j < d; ++j) tail += load(q, j) * load(c[k], j);
        out[k] = _mm_cvtss_f32(h) + tail;
    }
}

__attribute__((target("avx2,fma"))) void dot_avx2(const float* q, const void* const* c, int g, int64_t d,
                                                  float* out) {
    int k = 0;
    for (; k + 4 <= g; k += 4) dot_avx2_group<4>(q, c + k, d, out + k);
    switch (g - k) {
        case 3: dot_avx2_group<3>(q, c + k, d, out + k); break;
        case 2: dot_avx2_group<2>(q, c + k, d, out + k); break;
        case 1: dot_avx2_group<1>(q, c + k, d, out + k); break;
        default: break;
    }
}

template <int G>
__attribute__((target("avx512f"))) inline void dot_avx512_group(const float* q, const void* const* cv,
                                                                 int64_t d, float* out) {
    const float* c[G];
    for (int k = 0; k < G; ++k) c[k] = as_floats(cv[k]);
    __m512 acc[G][2];
    for (int k = 0; k < G; ++k) acc[k][0] = acc[k][1] = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= d; i += 32) {
        const __m512 q0 = _mm512_loadu_ps(q + i), q1 = _mm512_loadu_ps(q + i + 16);
        for (int k = 0; k < G; ++k) {
            acc[k][0] = _mm512_fmadd_ps(q0, _mm512_loadu_ps(c[k] + i), acc[k][0]);
            acc[k][1] = _mm512_fmadd_ps(q1, _mm512_loadu_ps(c[k] + i + 16), acc[k][1]);
        }
    }
    for (; i < d; i += 16) {
        const int64_t left = d - i;
        const __mmask16 m = left >= 16 ? static_cast<__mmask16>(0xFFFF)
                                       : static_cast<__mmask16>((1u << left) - 1u);
        const __m512 q0 = _mm512_maskz_loadu_ps(m, q + i);
        for (int k = 0; k < G; ++k)
            acc[k][0] = _mm512_fmadd_ps(q0, _mm512_maskz_loadu_ps(m, c[k] + i), acc[k][0]);
    }
    for (int k = 0; k < G; ++k) out[k] = _mm512_reduce_add_ps(_mm512_add_ps(acc[k][0], acc[k][1]));
}

__attribute__((target("avx512f"))) void dot_avx512(const float* q, const void* const* c, int g, int64_t d,
                                                    float* out) {
    int k = 0;
    for (; k + 4 <= g; k += 4) dot_avx512_group<4>(q, c + k, d, out + k);
    switch (g - k) {
        case 3: dot_avx512_group<3>(q, c + k, d, out + k); break;
        case 2: dot_avx512_group<2>(q, c + k, d, out + k); break;
        case 1: dot_avx512_group<1>(q, c + k, d, out + k); break;
        default: break;
    }
}
#endif

// ---------------------------------------------------------------------------------------------
// Cosines of one query with G candidates stored as fp16 or sq8 codes (decoded in registers).

struct Sq8Params {            // per-dimension affine decode of 8-bit codes (empty for fp16)
    const float* scale = nullptr;
    const float* bias = nullptr;
};

inline float cosine(float qv, float vv) { return vv > 0.0f ? qv / std::sqrt(vv) : 0.0f; }

// IEEE binary16 -> float32 (exact), for the portable path.
inline float half_to_float(uint16_t h) {
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1Fu, mant = h & 0x3FFu, bits;
    if (exp == 0x1Fu) {
        bits = sign | 0x7F800000u | (mant << 13);
    } else if (exp != 0) {
        bits = sign | ((exp + 112u) << 23) | (mant << 13);
    } else if (mant == 0) {
        bits = sign;
    } else {  // subnormal: normalise
        exp = 113;
        while ((mant & 0x400u) == 0) { mant <<= 1; --exp; }
        bits = sign | (exp << 23) | ((mant & 0x3FFu) << 13);
    }
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
}

using CodecFn = void (*)(const float* q, const void* const* c, int g, int64_t d, const Sq8Params& sq, float* out);

void cos_f16_generic(const float* q, const void* const* c, int g, int64_t d, const Sq8Params&, float* out) {
    for (int k = 0; k < g; ++k) {
        const uint16_t* ck = static_cast<const uint16_t*>(c[k]);
        float qv = 0.0f, vv = 0.0f;
        for (int64_t i = 0; i < d; ++i) {
            const float v = half_to_float(load(ck, i));
            qv += load(q, i) * v;
            vv += v * v;
        }
        out[k] = cosine(qv, vv);
    }
}

void cos_sq8_generic(const float* q, const void* const* c, int g, int64_t d, const Sq8Params& sq, float* out) {
    for (int k = 0; k < g; ++k) {
        const uint8_t* ck = static_cast<const uint8_t*>(c[k]);
        float qv = 0.0f, vv = 0.0f;
        for (int64_t i = 0; i < d; ++i) {
            const float v = static_cast<float>(ck[i]) * sq.scale[i] + sq.bias[i];
            qv += load(q, i) * v;
            vv += v * v;
        }
        out[k] = cosine(qv, vv);
    }
}

#ifdef KERNELS_X86
__attribute__((target("avx2,fma"))) inline float hsum256(__m256 s) {
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_movehdup_ps(h));
    return _mm_cvtss_f32(h);
}

// G candidates at once (their cache misses overlap); 8 dimensions per step, unaligned loads.
template <int G>
__attribute__((target("avx2,fma,f16c"))) inline void cos_f16_group(const float* q, const void* const* cv,
                                                                   int64_t d, float* out) {
    const uint8_t* c[G];
    for (int k = 0; k < G; ++k) c[k] = static_cast<const uint8_t*>(cv[k]);
    __m256 qv[G], vv[G];
    for (int k = 0; k < G; ++k) qv[k] = vv[k] = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= d; i += 8) {
        const __m256 qi = _mm256_loadu_ps(q + i);
        for (int k = 0; k < G; ++k) {
            const __m256 v = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(c[k] + 2 * i)));
            qv[k] = _mm256_fmadd_ps(qi, v, qv[k]);
            vv[k] = _mm256_fmadd_ps(v, v, vv[k]);
        }
    }
    for (int k = 0; k < G; ++k) {
        float a = hsum256(qv[k]), b = hsum256(vv[k]);
        for (int64_t j = i; j < d; ++j) {
            const float v = half_to_float(load(reinterpret_cast<const uint16_t*>(c[k]), j));
            a += load(q, j) * v;
            b += v * v;
        }
        out[k] = cosine(a, b);
    }
}

template <int G>
__attribute__((target("avx2,fma"))) inline void cos_sq8_group(const float* q, const void* const* cv, int64_t d,
                                                               const Sq8Params& sq, float* out) {
    const uint8_t* c[G];
    for (int k = 0; k < G; ++k) c[k] = static_cast<const uint8_t*>(cv[k]);
    __m256 qv[G], vv[G];
    for (int k = 0; k < G; ++k) qv[k] = vv[k] = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= d; i += 8) {
        const __m256 qi = _mm256_loadu_ps(q + i);
        const __m256 sc = _mm256_loadu_ps(sq.scale + i), bi = _mm256_loadu_ps(sq.bias + i);
        for (int k = 0; k < G; ++k) {
            int64_t raw;
            std::memcpy(&raw, c[k] + i, sizeof raw);
            const __m256 x = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(raw)));
            const __m256 v = _mm256_add_ps(_mm256_mul_ps(x, sc), bi);  // no FMA: as the NumPy decoder rounds
            qv[k] = _mm256_fmadd_ps(qi, v, qv[k]);
            vv[k] = _mm256_fmadd_ps(v, v, vv[k]);
        }
    }
    for (int k = 0; k < G; ++k) {
        float a = hsum256(qv[k]), b = hsum256(vv[k]);
        for (int64_t j = i; j < d; ++j) {
            const float v = static_cast<float>(c[k][j]) * sq.scale[j] + sq.bias[j];
            a += load(q, j) * v;
            b += v * v;
        }
        out[k] = cosine(a, b);
    }
}

__attribute__((target("avx2,fma,f16c"))) void cos_f16_avx2(const float* q, const void* const* c, int g, int64_t d,
                                                           const Sq8Params&, float* out) {
    int k = 0;
    for (; k + 4 <= g; k += 4) cos_f16_group<4>(q, c + k, d, out + k);
    for (; k < g; ++k) cos_f16_group<1>(q, c + k, d, out + k);
}

__attribute__((target("avx2,fma"))) void cos_sq8_avx2(const float* q, const void* const* c, int g, int64_t d,
                                                      const Sq8Params& sq, float* out) {
    int k = 0;
    for (; k + 4 <= g; k += 4) cos_sq8_group<4>(q, c + k, d, sq, out + k);
    for (; k < g; ++k) cos_sq8_group<1>(q, c + k, d, sq, out + k);
}
#endif

enum class Codec { fp32, fp16, sq8 };

CodecFn select_codec(Codec codec) {
#ifdef KERNELS_X86
    __builtin_cpu_init();
    const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (codec == Codec::fp16 && avx2 && __builtin_cpu_supports("f16c")) return cos_f16_avx2;
    if (codec == Codec::sq8 && avx2) return cos_sq8_avx2;
#endif
    return codec == Codec::fp16 ? cos_f16_generic : cos_sq8_generic;
}

struct DotKernel {
    DotFn fn;
    const char* name;
};

DotKernel select_dot() {
#ifdef KERNELS_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return {dot_avx512, "avx512f"};
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return {dot_avx2, "avx2+fma"};
#endif
    return {dot_generic, "generic"};
}

const DotKernel kDot = select_dot();

// Upper bound of the similarity of query q with the vector whose screen row is `row`.
float bound_generic(const float* t, const void* row, int64_t w) {
    const uint16_t* r = static_cast<const uint16_t*>(row);
    float a = 0.0f;
    for (int64_t i = 0; i < w; ++i) a += load(t, i) * half_to_float(load(r, i));
    return a;
}

#ifdef KERNELS_X86
__attribute__((target("avx2,fma,f16c"))) float bound_avx2(const float* t, const void* row, int64_t w) {
    const uint8_t* r = static_cast<const uint8_t*>(row);
    __m256 a = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= w; i += 8)
        a = _mm256_fmadd_ps(_mm256_loadu_ps(t + i),
                            _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(r + 2 * i))), a);
    float s = hsum256(a);
    for (; i < w; ++i) s += load(t, i) * half_to_float(load(reinterpret_cast<const uint16_t*>(r), i));
    return s;
}
#endif

using BoundFn = float (*)(const float*, const void*, int64_t);

BoundFn select_bound() {
#ifdef KERNELS_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
        return bound_avx2;
#endif
    return bound_generic;
}

const BoundFn kBound = select_bound();

// ---------------------------------------------------------------------------------------------
// Threads. One pool per call: `threads - 1` workers plus the calling thread, started once and
// handed every pass through a generation counter (starting std::threads for each pass cost two
// rounds of thread starts per iteration). A pass's tasks 0..n-1 are taken dynamically; the first
// exception of any thread stops the pass and is rethrown on the calling thread.

class Pool {
public:
    explicit Pool(int threads) {
        try {
            for (int t = 1; t < threads; ++t) workers_.emplace_back([this, t] { work(t); });
        } catch (...) {  // could not start a thread: stop those started, then report
            shutdown();
            throw;
        }
    }
    ~Pool() { shutdown(); }
    Pool(const Pool&) = delete;
    Pool& operator=(const Pool&) = delete;

    int size() const { return static_cast<int>(workers_.size()) + 1; }

    // f(task, thread) for every task in [0, n); `thread` in [0, size()) indexes per-thread scratch.
    template <class F>
    void parallel_for(int64_t n, F&& f) {
        if (workers_.empty() || n <= 1) {
            for (int64_t i = 0; i < n; ++i) f(i, 0);
            return;
        }
        using Fn = std::remove_reference_t<F>;
        run_pass(Pass{n, [](void* fn, int64_t i, int t) { (*static_cast<Fn*>(fn))(i, t); },
                      const_cast<void*>(static_cast<const void*>(&f))});
    }

private:
    struct Pass {
        int64_t n = 0;
        void (*call)(void*, int64_t, int) = nullptr;
        void* fn = nullptr;
    };

    void run_pass(const Pass& pass) {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            pass_ = pass;
            next_.store(0, std::memory_order_relaxed);
            failed_.store(false, std::memory_order_relaxed);
            busy_ = workers_.size();
            ++generation_;
        }
        wake_.notify_all();
        drain(0);
        // Every worker joins every pass, so when busy_ is 0 all tasks are done and their writes,
        // published by the mutex, are visible here.
        std::unique_lock<std::mutex> lock(mutex_);
        done_.wait(lock, [this] { return busy_ == 0; });
        if (error_) {
            std::exception_ptr e = error_;
            error_ = nullptr;
            std::rethrow_exception(e);
        }
    }

    void drain(int thread) {
        try {
            for (;;) {
                if (failed_.load(std::memory_order_relaxed)) return;
                const int64_t i = next_.fetch_add(1, std::memory_order_relaxed);
                if (i >= pass_.n) return;
                pass_.call(pass_.fn, i, thread);
            }
        } catch (...) {
            std::lock_guard<std::mutex> lock(mutex_);
            if (!error_) error_ = std::current_exception();
            failed_.store(true, std::memory_order_relaxed);
        }
    }

    void work(int thread) {
        uint64_t seen = 0;
        for (;;) {
            {
                std::unique_lock<std::mutex> lock(mutex_);
                wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
                if (stop_) return;
                seen = generation_;
            }
            drain(thread);
            std::lock_guard<std::mutex> lock(mutex_);
            if (--busy_ == 0) done_.notify_one();
        }
    }

    void shutdown() {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            stop_ = true;
        }
        wake_.notify_all();
        for (auto& th : workers_) th.join();
        workers_.clear();
    }

    std::vector<std::thread> workers_;
    std::mutex mutex_;
    std::condition_variable wake_, done_;
    uint64_t generation_ = 0;  // bumped once per pass
    size_t busy_ = 0;          // workers not yet done with the current pass
    bool stop_ = false;
    Pass pass_;
    std::atomic<int64_t> next_{0};
    std::atomic<bool> failed_{false};
    std::exception_ptr error_;
};

// ---------------------------------------------------------------------------------------------
// Argument checks (the Python wrapper checks first with QueryError; these guard direct calls).

[[noreturn]] void fail(const std::string& msg) { throw std::invalid_argument(msg); }

std::string shape_str(const py::array& a) {
    std::ostringstream s;
    s << "(";
    for (py::ssize_t i = 0; i < a.ndim(); ++i) s << (i ? ", " : "") << a.shape(i);
    s << (a.ndim() == 1 ? ",)" : ")");
    return s.str();
}

std::string dtype_str(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

// A view of `a` with element type T, C-contiguous, never copied (alignment is not required).
template <class T>
py::array_t<T, py::array::c_style> require(const py::array& a, const char* name, py::ssize_t ndim) {
    if (!py::array_t<T>::check_(a))
        fail(std::string("Expected ") + name + " of dtype " + py::str(py::dtype::of<T>()).cast<std::string>() +
             ", but " + name + ".dtype = " + dtype_str(a));
    if (a.ndim() != ndim)
        fail(std::string("Expected ") + name + " with " + std::to_string(ndim) + " dimensions, but " + name +
             ".shape = " + shape_str(a));
    if (!py::array_t<T, py::array::c_style>::check_(a))
        fail(std::string("Expected ") + name + " to be C-contiguous (it is read in place, never copied), but it is not");
    return py::array_t<T, py::array::c_style>::ensure(a);
}

constexpr int kMaxThreads = 1024;

// ---------------------------------------------------------------------------------------------
// The database codes of one call, read in place (float32 vectors for fp32), and how to score them.

struct Codes {
    const uint8_t* data = nullptr;  // row_bytes apart
    int64_t row_bytes = 0, n = 0, d = 0;
    Codec codec = Codec::fp32;
    CodecFn codec_fn = nullptr;     // fp16 / sq8 cosines
    std::vector<float> scale, bias;  // sq8: per-dimension affine decode

    const void* row(int64_t id) const { return data + id * row_bytes; }

    // Similarities of query q (d floats) with g candidates: the dot product (fp32) or the cosine
    // with the decoded vector (fp16, sq8).
    void score(const float* q, const void* const* c, int g, float* out) const {
        if (codec == Codec::fp32)
            kDot.fn(q, c, g, d, out);
        else
            codec_fn(q, c, g, d, Sq8Params{scale.data(), bias.data()}, out);
    }
};

// Checks `vectors_in` as codes of dimension d: 'fp32' float32 (N, d); 'fp16' uint8 (N, 2 d) half
// floats; 'sq8' uint8 (N, d) with float32 scale and bias of shape (d,).
Codes parse_codes(const py::array& vectors_in, const std::string& codec, const py::object& scale_in,
                  const py::object& bias_in, int64_t d) {
    Codes c;
    c.d = d;
    if (codec == "fp32") {
        auto vectors = require<float>(vectors_in, "vectors", 2);
        if (vectors.shape(1) != d)
            fail("Expected vectors of dimension D = " + std::to_string(d) + " (the queries' last axis), but vectors.shape = " +
                 shape_str(vectors));
        c.data = reinterpret_cast<const uint8_t*>(vectors.data());
        c.row_bytes = d * static_cast<int64_t>(sizeof(float));
        c.n = vectors.shape(0);
        return c;
    }
    if (codec != "fp16" && codec != "sq8") fail("Expected codec 'fp32', 'fp16' or 'sq8', but codec = '" + codec + "'");
    c.codec = codec == "fp16" ? Codec::fp16 : Codec::sq8;
    auto codes = require<uint8_t>(vectors_in, "vectors", 2);
    const int64_t expect = c.codec == Codec::fp16 ? 2 * d : d;
    if (codes.shape(1) != expect)
        fail("Expected " + codec + " codes of " + std::to_string(expect) + " bytes per vector (D = " + std::to_string(d) +
             "), but vectors.shape = " + shape_str(codes));
    c.data = codes.data();
    c.row_bytes = expect;
    c.n = codes.shape(0);
    c.codec_fn = select_codec(c.codec);
    if (c.codec == Codec::sq8) {
        if (scale_in.is_none() || bias_in.is_none())
            fail("Expected scale and bias (float32, shape (D,)) for sq8 codes, but they are missing");
        auto sc = require<float>(scale_in.cast<py::array>(), "scale", 1);
        auto bi = require<float>(bias_in.cast<py::array>(), "bias", 1);
        if (sc.shape(0) != d || bi.shape(0) != d)
            fail("Expected scale and bias of shape (" + std::to_string(d) + ",), but they have shapes " + shape_str(sc) +
                 " and " + shape_str(bi));
        for (int64_t i = 0; i < d; ++i) {
            c.scale.push_back(load(sc.data(), i));
            c.bias.push_back(load(bi.data(), i));
        }
    }
    return c;
}
