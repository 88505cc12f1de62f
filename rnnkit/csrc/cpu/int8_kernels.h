/* int8 inference for the RNN (tanh, relu), LSTM and GRU cells: the kernels of the operators
 * rnnkit::int8_stack and rnnkit::int8_linear (cpu/int8_kernel.cpp); included by rnn_kernels.c
 * after its exp_f32 and tanh_f32.
 *
 * The scheme (as torch's dynamic quantization, with finer scales):
 *   weights      W (N x K) as int8 per output row n: W ~ sw[n] * Wq[n], sw[n] = max_k |W[n][k]| / 127,
 *                quantized once (rnnkit.quantized) and packed here (int8_pack);
 *   activations  each row of an input a (x_t of a sequence, or h_{t-1}) quantized on the fly:
 *                a ~ sa * q, sa = max_k |a[k]| / 127, q = round(a / sa) in [-127, 127];
 *   products     sum_k q[k] Wq[n][k] in int32, exact; then y[n] = sa * sw[n] * that, in float32;
 *   gate math    in float32, as the fused float32 kernels (sigmoid, exp_f32, tanh_f32).
 *
 * The int8 products: with AVX-512 VNNI, vpdpbusd multiplies 64 bytes of unsigned activations by
 * 64 of signed weights and adds each 4 products into one of 16 int32 lanes; the activations are
 * stored as q + 128 (0..254) and the product corrected by 128 * sum_k Wq[n][k], kept with the
 * packed weights. Without VNNI, AVX2's vpmaddwd multiplies pairs of 16-bit numbers (the weights
 * widened once per step of k), and without AVX2 plain C loops do: every path gives the same int32
 * sums, so the same bits (the tests compare them; rnnkit_int8_path picks one).
 *
 * The packed layout (int8_pack): the rows of W come in gates of H rows (G gates: 4 LSTM, 3 GRU,
 * 1 RNN, a projection or a linear layer), each gate's rows in blocks of 16 (zero rows past H),
 * a block as K4 = ceil(K / 4) groups of 64 bytes: [16 rows][4 inputs] (zero past K). Block b of
 * the padded N' = G * HB * 16 rows (HB = ceil(H / 16)) starts at b * K4 * 64 and fills columns
 * b * 16 .. b * 16 + 15 of a product's output rows (N' floats each: gate g at g * HB * 16).
 */
#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif
#if defined(__AVX512VNNI__) && defined(__AVX512BW__) && defined(__AVX512F__)
#define I8_VNNI 1
#else
#define I8_VNNI 0
#endif
#if defined(__AVX512BF16__) && defined(__AVX512F__)
#define B16_NATIVE 1
#else
#define B16_NATIVE 0
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

/* Which int8 products run (set by the tests and benchmarks, to compare them): 0 the best this
 * build has, 1 AVX2's (vpmaddwd) even where VNNI is, 2 the plain C loops even where AVX2 is. */
int rnnkit_int8_path = 0;
int rnnkit_int8_vnni(void) { return I8_VNNI; }
int rnnkit_bf16_native(void) { return B16_NATIVE; }

/* Bytes of input projections computed at a time (rnnkit_int8_cell); a variable, so that the tests
 * can make chunks of a step or two. */
long rnnkit_int8_chunk_bytes = 2L << 20;
enum { I8_MR = 8, I8_NV = 4 };  /* a tile: up to 8 rows by 4 blocks of 16 columns */

long rnnkit_int8_packed_size(int G, int H, int K) { return (long)G * ((H + 15) / 16) * ((K + 3) / 4) * 64; }

/* Pack W (G*H x K int8, row-major) into P (rnnkit_int8_packed_size bytes) and sums (G * HB * 16
 * int32: each padded row's sum, 0 past H). */
void rnnkit_int8_pack(int G, int H, int K, const int8_t* w, int8_t* P, int32_t* sums) {
    const int HB = (H + 15) / 16, K4 = (K + 3) / 4;
    for (int g = 0; g < G; g++)
        for (int jb = 0; jb < HB; jb++) {
            int8_t* block = P + (long)(g * HB + jb) * K4 * 64;
            for (int lane = 0; lane < 16; lane++) {
                const int u = jb * 16 + lane;
                const int8_t* row = u < H ? w + (long)(g * H + u) * K : NULL;
                int32_t s = 0;
                for (int k = 0; k < K4 * 4; k++) {
                    const int8_t v = row != NULL && k < K ? row[k] : 0;
                    block[(long)(k / 4) * 64 + lane * 4 + k % 4] = v;
                    s += v;
                }
                sums[(g * HB + jb) * 16 + lane] = s;
            }
        }
}

/* Rows m0 .. m1-1 of a (rows lda apart, K columns) quantized: q (rows of K4 * 4 bytes) = round(a /
 * sa) + 128, 128 past K; s[m] = sa = max |a| / 127 (0 for a row of zeros, whose q is all 128). */
static void i8_quantize_rows(int m0, int m1, int K, const float* a, long lda, uint8_t* q, float* s) {
    const int Kp = (K + 3) / 4 * 4;
    for (int m = m0; m < m1; m++) {
        const float* r = a + (long)m * lda;
        float mx = 0.0f;
#pragma omp simd reduction(max : mx)
        for (int k = 0; k < K; k++) {
            const float v = fabsf(r[k]);
            mx = v > mx ? v : mx;  /* (fmaxf, NaN-aware, became a call per element) */
        }
        const float inv = mx > 0.0f ? 127.0f / mx : 0.0f;
        s[m] = mx / 127.0f;
        uint8_t* o = q + (long)m * Kp;
#pragma omp simd
        for (int k = 0; k < K; k++) {
            float v = rintf(r[k] * inv);
            v = v > 127.0f ? 127.0f : (v < -127.0f ? -127.0f : v);
            o[k] = (uint8_t)(int)(v + 128.0f);
        }
        for (int k = K; k < Kp; k++) o[k] = 128;
    }
}

#if I8_VNNI || B16_NATIVE
/* Four bytes of a row (a group's activations) in every 32-bit lane. */
static inline __attribute__((always_inline)) __m512i i8_broadcast4(const uint8_t* p) {
    int32_t four;
    memcpy(&four, p, 4);
    return _mm512_set1_epi32(four);
}
#endif

#if I8_VNNI
/* The VNNI tile of 8 rows by n = 1 or 2 blocks (i8_tile's full ones), written out. */

static void i8_tile_8xn(int n, int K4, const uint8_t* A, long lda, const float* sa, const int8_t* const* W,
                        const int32_t* const* sums, const float* const* sw, float* const* C, long ldc) {
    __m512i c00 = _mm512_setzero_si512(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00,
            c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00, c60 = c00, c61 = c00, c70 = c00, c71 = c00;
    const int8_t *w0 = W[0], *w1 = W[n - 1];
    __m512i b;
#define I8_ROW1(r)                  \
    b = i8_broadcast4(a + r * lda); \
    c##r##0 = _mm512_dpbusd_epi32(c##r##0, b, x0);
#define I8_ROW2(r) I8_ROW1(r) c##r##1 = _mm512_dpbusd_epi32(c##r##1, b, x1);
    if (n == 2) {
        for (int k4 = 0; k4 < K4; k4++) {
            const __m512i x0 = _mm512_loadu_si512((const void*)(w0 + (long)k4 * 64));
            const __m512i x1 = _mm512_loadu_si512((const void*)(w1 + (long)k4 * 64));
            const uint8_t* a = A + 4L * k4;
            I8_ROW2(0) I8_ROW2(1) I8_ROW2(2) I8_ROW2(3) I8_ROW2(4) I8_ROW2(5) I8_ROW2(6) I8_ROW2(7)
        }
    } else {
        for (int k4 = 0; k4 < K4; k4++) {
            const __m512i x0 = _mm512_loadu_si512((const void*)(w0 + (long)k4 * 64));
            const uint8_t* a = A + 4L * k4;
            I8_ROW1(0) I8_ROW1(1) I8_ROW1(2) I8_ROW1(3) I8_ROW1(4) I8_ROW1(5) I8_ROW1(6) I8_ROW1(7)
        }
    }
#undef I8_ROW2
#undef I8_ROW1
    const __m512i acc[8][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31},
                               {c40, c41}, {c50, c51}, {c60, c61}, {c70, c71}};
    for (int v = 0; v < n; v++) {
        const __m512i corr = _mm512_slli_epi32(_mm512_loadu_si512((const void*)sums[v]), 7);
        const __m512 scale = _mm512_loadu_ps(sw[v]);
        for (int r = 0; r < 8; r++) {
            const __m512 y = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[r][v], corr));
            _mm512_storeu_ps(C[v] + r * ldc, _mm512_mul_ps(_mm512_mul_ps(y, scale), _mm512_set1_ps(sa[r])));
        }
    }
}
#endif

/* bfloat16 (the same drivers, rnnkit::bf16_stack): weights and each row of x_t and h_{t-1} in
 * bfloat16 (x rounded to the nearest even), products summed in float32, no scales. A block of 16
 * rows is K2 = ceil(K / 2) groups of 64 bytes, [16 rows][2 inputs], so that a row's activations
 * again come 4 bytes (two numbers) a group: AVX-512 BF16's vdpbf16ps adds each lane's two
 * products into its float32 sum; without it, plain loops of float32 multiply-adds. */
static inline float b16_float(uint16_t v) {
    union { uint32_t u; float f; } x = { .u = (uint32_t)v << 16 };
    return x.f;
}

static inline uint16_t b16_round(float f) {
    union { float f; uint32_t u; } x = { .f = f };
    return (uint16_t)((x.u + 0x7FFFu + ((x.u >> 16) & 1u)) >> 16);  /* to nearest, ties to even */
}

long rnnkit_bf16_packed_size(int G, int H, int K) { return (long)G * ((H + 15) / 16) * ((K + 1) / 2) * 32; }

/* Pack W (G*H x K bfloat16, row-major) into P (rnnkit_bf16_packed_size numbers, 4-byte aligned):
 * each group of 64 bytes written whole, a pair of inputs (4 bytes) from each of its 16 rows (a
 * bfloat16 model packs its weights at every call: element by element this took 0.7 ms for a
 * (1536 x 512) matrix). */
void rnnkit_bf16_pack(int G, int H, int K, const uint16_t* w, uint16_t* P) {
    const int HB = (H + 15) / 16, K2 = (K + 1) / 2;
    for (int g = 0; g < G; g++)
        for (int jb = 0; jb < HB; jb++) {
            uint32_t* block = (uint32_t*)(void*)(P + (long)(g * HB + jb) * K2 * 32);
            const int lanes = H - jb * 16 < 16 ? H - jb * 16 : 16;
            const uint16_t* rows = w + (long)(g * H + jb * 16) * K;
            for (int k2 = 0; k2 < K2; k2++) {
                uint32_t* group = block + (long)k2 * 16;
                for (int lane = 0; lane < lanes; lane++) {
                    const uint16_t* pair = rows + (long)lane * K + 2 * k2;
                    group[lane] = (uint32_t)pair[0] | (2 * k2 + 1 < K ? (uint32_t)pair[1] << 16 : 0u);
                }
                for (int lane = lanes; lane < 16; lane++) group[lane] = 0;
            }
        }
}

/* Rows m0 .. m1-1 of a (K columns, rows lda apart) in bfloat16: q rows of K2 * 2 numbers, 0 past K. */
static void b16_rows(int m0, int m1, int K, const float* a, long lda, uint16_t* q) {
    const int Kp = (K + 1) / 2 * 2;
    for (int m = m0; m < m1; m++) {
        const float* r = a + (long)m * lda;
        uint16_t* o = q + (long)m * Kp;
#pragma omp simd
        for (int k = 0; k < K; k++) o[k] = b16_round(r[k]);
        for (int k = K; k < Kp; k++) o[k] = 0;
    }
}

/* Rows m0 .. m1-1 of a (bfloat16 already, K columns, rows lda apart) as b16_rows leaves them. */
static void b16_copy_rows(int m0, int m1, int K, const uint16_t* a, long lda, uint16_t* q) {
    const int Kp = (K + 1) / 2 * 2;
    for (int m = m0; m < m1; m++) {
        uint16_t* o = q + (long)m * Kp;
        memcpy(o, a + (long)m * lda, sizeof(uint16_t) * K);
        if (K < Kp) o[K] = 0;
    }
}

#if B16_NATIVE
/* The AVX-512 BF16 tile of 8 rows by n = 1 or 2 blocks, its accumulators named (as i8_tile_8xn). */
static void b16_tile_8xn(int n, int K2, const uint8_t* A, long lda, const int8_t* const* W, float* const* C,
                         long ldc) {
    __m512 c00 = _mm512_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00, c31 = c00,
           c40 = c00, c41 = c00, c50 = c00, c51 = c00, c60 = c00, c61 = c00, c70 = c00, c71 = c00;
    const int8_t *w0 = W[0], *w1 = W[n - 1];
    __m512bh b;
#define B16_ROW1(r)                                   \
    b = (__m512bh)i8_broadcast4(a + r * lda);         \
    c##r##0 = _mm512_dpbf16_ps(c##r##0, b, x0);
#define B16_ROW2(r) B16_ROW1(r) c##r##1 = _mm512_dpbf16_ps(c##r##1, b, x1);
    if (n == 2) {
        for (int k2 = 0; k2 < K2; k2++) {
            const __m512bh x0 = (__m512bh)_mm512_loadu_si512((const void*)(w0 + (long)k2 * 64));
            const __m512bh x1 = (__m512bh)_mm512_loadu_si512((const void*)(w1 + (long)k2 * 64));
            const uint8_t* a = A + 4L * k2;
            B16_ROW2(0) B16_ROW2(1) B16_ROW2(2) B16_ROW2(3) B16_ROW2(4) B16_ROW2(5) B16_ROW2(6) B16_ROW2(7)
        }
    } else {
        for (int k2 = 0; k2 < K2; k2++) {
            const __m512bh x0 = (__m512bh)_mm512_loadu_si512((const void*)(w0 + (long)k2 * 64));
            const uint8_t* a = A + 4L * k2;
            B16_ROW1(0) B16_ROW1(1) B16_ROW1(2) B16_ROW1(3) B16_ROW1(4) B16_ROW1(5) B16_ROW1(6) B16_ROW1(7)
        }
    }
#undef B16_ROW2
#undef B16_ROW1
    const __m512 acc[8][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31},
                              {c40, c41}, {c50, c51}, {c60, c61}, {c70, c71}};
    for (int v = 0; v < n; v++)
        for (int r = 0; r < 8; r++) _mm512_storeu_ps(C[v] + r * ldc, acc[r][v]);
}
#endif

/* A bfloat16 tile: rows 0 .. mr-1 of A (bfloat16 pairs, rows lda bytes apart) times the nv blocks
 * W[v] (K2 * 64 bytes each), into C[v] + r * ldc (16 floats each). */
static inline __attribute__((always_inline)) void b16_tile(const int mr, const int nv, int K2, const uint8_t* A,
                                                           long lda, const int8_t* const* W, float* const* C,
                                                           long ldc) {
#if B16_NATIVE
    if (rnnkit_int8_path == 0) {
        for (int v0 = 0; v0 < nv; v0 += 2) {
            const int pair = nv - v0 < 2 ? nv - v0 : 2;
            if (mr == I8_MR) {
                b16_tile_8xn(pair, K2, A, lda, W + v0, C + v0, ldc);
                continue;
            }
            __m512 acc[I8_MR][2];
            for (int r = 0; r < mr; r++) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
            for (int k2 = 0; k2 < K2; k2++) {
                const __m512bh x0 = (__m512bh)_mm512_loadu_si512((const void*)(W[v0] + (long)k2 * 64));
                const __m512bh x1 = (__m512bh)_mm512_loadu_si512((const void*)(W[v0 + pair - 1] + (long)k2 * 64));
                for (int r = 0; r < mr; r++) {
                    const __m512bh a = (__m512bh)i8_broadcast4(A + r * lda + 4L * k2);
                    acc[r][0] = _mm512_dpbf16_ps(acc[r][0], a, x0);
                    if (pair == 2) acc[r][1] = _mm512_dpbf16_ps(acc[r][1], a, x1);
                }
            }
            for (int v = 0; v < pair; v++)
                for (int r = 0; r < mr; r++) _mm512_storeu_ps(C[v0 + v] + r * ldc, acc[r][v]);
        }
        return;
    }
#endif
    float acc[I8_MR][I8_NV][16];
    for (int r = 0; r < mr; r++)
        for (int v = 0; v < nv; v++)
            for (int j = 0; j < 16; j++) acc[r][v][j] = 0.0f;
    for (int k2 = 0; k2 < K2; k2++)
        for (int v = 0; v < nv; v++) {
            const uint16_t* w = (const uint16_t*)(const void*)(W[v] + (long)k2 * 64);
            for (int r = 0; r < mr; r++) {
                const uint16_t* a = (const uint16_t*)(const void*)(A + r * lda + 4L * k2);
                const float a0 = b16_float(a[0]), a1 = b16_float(a[1]);
#pragma omp simd
                for (int j = 0; j < 16; j++) acc[r][v][j] += a0 * b16_float(w[2 * j]) + a1 * b16_float(w[2 * j + 1]);
            }
        }
    for (int v = 0; v < nv; v++)
        for (int r = 0; r < mr; r++) memcpy(C[v] + r * ldc, acc[r][v], sizeof(float) * 16);
}

/* One tile: rows 0 .. mr-1 of A (quantized, rows lda bytes apart) times the nv blocks W[v] (each
 * K4 * 64 bytes), into C[v] + r * ldc (16 floats each): sa[r] * sw[v][j] * (sum - 128 * sums[v][j]). */
static inline __attribute__((always_inline)) void i8_tile(const int mr, const int nv, int K4, const uint8_t* A,
                                                          long lda, const float* sa, const int8_t* const* W,
                                                          const int32_t* const* sums, const float* const* sw,
                                                          float* const* C, long ldc) {
#if I8_VNNI
    if (rnnkit_int8_path == 0) {
        /* two blocks at a time: 12 accumulators that GCC keeps in registers (with all four, 24,
         * it spilled them to the stack at every step of k) */
        for (int v0 = 0; v0 < nv; v0 += 2) {
            const int pair = nv - v0 < 2 ? nv - v0 : 2;
            if (mr == I8_MR) {  /* a full tile, its accumulators named (GCC copied an array's from
                                  * register to register at every step) */
                i8_tile_8xn(pair, K4, A, lda, sa, W + v0, sums + v0, sw + v0, C + v0, ldc);
                continue;
            }
            __m512i acc[I8_MR][2];
            for (int r = 0; r < mr; r++)
                for (int v = 0; v < pair; v++) acc[r][v] = _mm512_setzero_si512();
            const int8_t* w0 = W[v0];
            const int8_t* w1 = W[v0 + pair - 1];
            for (int k4 = 0; k4 < K4; k4++) {
                const __m512i x0 = _mm512_loadu_si512((const void*)(w0 + (long)k4 * 64));
                const __m512i x1 = _mm512_loadu_si512((const void*)(w1 + (long)k4 * 64));
                for (int r = 0; r < mr; r++) {
                    int32_t four;
                    memcpy(&four, A + r * lda + 4L * k4, 4);
                    const __m512i a = _mm512_set1_epi32(four);
                    acc[r][0] = _mm512_dpbusd_epi32(acc[r][0], a, x0);
                    if (pair == 2) acc[r][1] = _mm512_dpbusd_epi32(acc[r][1], a, x1);
                }
            }
            for (int v = 0; v < pair; v++) {
                const __m512i corr = _mm512_slli_epi32(_mm512_loadu_si512((const void*)sums[v0 + v]), 7);
                const __m512 scale = _mm512_loadu_ps(sw[v0 + v]);
                for (int r = 0; r < mr; r++) {
                    const __m512 y = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[r][v], corr));
                    _mm512_storeu_ps(C[v0 + v] + r * ldc,
                                     _mm512_mul_ps(_mm512_mul_ps(y, scale), _mm512_set1_ps(sa[r])));
                }
            }
        }
        return;
    }
#endif
#if defined(__AVX2__)
    if (rnnkit_int8_path != 2) {
        /* per block, two rows at a time: each 64-byte group of the block widened to 16-bit as four
         * vectors of 4 rows x 4 inputs; vpmaddwd with the row's 4 activations repeated gives each
         * row's two partial sums, added in pairs (hadd) after the loop */
        for (int v = 0; v < nv; v++) {
            for (int r0 = 0; r0 < mr; r0 += 2) {
                const int two = mr - r0 < 2 ? 1 : 2;
                __m256i acc[2][4];
                for (int i = 0; i < 4; i++) acc[0][i] = acc[1][i] = _mm256_setzero_si256();
                for (int k4 = 0; k4 < K4; k4++) {
                    const int8_t* w = W[v] + (long)k4 * 64;
                    __m256i x[4];
                    for (int i = 0; i < 4; i++) x[i] = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)(w + 16 * i)));
                    for (int rr = 0; rr < two; rr++) {
                        const uint8_t* a = A + (r0 + rr) * lda + 4L * k4;
                        const __m256i ap = _mm256_set1_epi64x((int64_t)a[0] | (int64_t)a[1] << 16 |
                                                              (int64_t)a[2] << 32 | (int64_t)a[3] << 48);
                        for (int i = 0; i < 4; i++) acc[rr][i] = _mm256_add_epi32(acc[rr][i], _mm256_madd_epi16(x[i], ap));
                    }
                }
                for (int rr = 0; rr < two; rr++) {
                    /* hadd of rows 0-3 and 4-7: [L0 L1 L4 L5 | L2 L3 L6 L7]; the 64-bit swap orders it */
                    const __m256i lo = _mm256_permute4x64_epi64(_mm256_hadd_epi32(acc[rr][0], acc[rr][1]), 0xD8);
                    const __m256i hi = _mm256_permute4x64_epi64(_mm256_hadd_epi32(acc[rr][2], acc[rr][3]), 0xD8);
                    const __m256i halves[2] = {lo, hi};
                    for (int h = 0; h < 2; h++) {
                        const __m256i corr = _mm256_slli_epi32(_mm256_loadu_si256((const __m256i*)(sums[v] + 8 * h)), 7);
                        const __m256 y = _mm256_cvtepi32_ps(_mm256_sub_epi32(halves[h], corr));
                        _mm256_storeu_ps(C[v] + (r0 + rr) * ldc + 8 * h,
                                         _mm256_mul_ps(_mm256_mul_ps(y, _mm256_loadu_ps(sw[v] + 8 * h)),
                                                       _mm256_set1_ps(sa[r0 + rr])));
                    }
                }
            }
        }
        return;
    }
#endif
    int32_t acc[I8_MR][I8_NV][16];
    for (int r = 0; r < mr; r++)
        for (int v = 0; v < nv; v++)
            for (int j = 0; j < 16; j++) acc[r][v][j] = 0;
    for (int k4 = 0; k4 < K4; k4++)
        for (int v = 0; v < nv; v++) {
            const int8_t* w = W[v] + (long)k4 * 64;
            for (int r = 0; r < mr; r++) {
                const uint8_t* a = A + r * lda + 4L * k4;
                const int32_t a0 = a[0], a1 = a[1], a2 = a[2], a3 = a[3];
#pragma omp simd
                for (int j = 0; j < 16; j++)
                    acc[r][v][j] += a0 * w[4 * j] + a1 * w[4 * j + 1] + a2 * w[4 * j + 2] + a3 * w[4 * j + 3];
            }
        }
    for (int v = 0; v < nv; v++)
        for (int r = 0; r < mr; r++) {
            float* c = C[v] + r * ldc;
#pragma omp simd
            for (int j = 0; j < 16; j++) c[j] = (float)(acc[r][v][j] - 128 * sums[v][j]) * sw[v][j] * sa[r];
        }
}

/* The column groups of a matrix of G gates (HB blocks each): for G > 1, group c is block c of every
 * gate (the gates of units 16c .. 16c+15, which the cell's math needs together); for G = 1, blocks
 * 4c .. 4c+3. */
static int i8_groups(int G, int HB) { return G > 1 ? HB : (HB + I8_NV - 1) / I8_NV; }

/* The units (of H) that group c covers: [*u0, *u1). */
static void i8_group_units(int G, int H, int c, int* u0, int* u1) {
    const int width = G > 1 ? 16 : 16 * I8_NV;
    *u0 = c * width;
    *u1 = (c + 1) * width < H ? (c + 1) * width : H;
}

/* C (rows ldc apart, N' columns) = the product of rows m0 .. m1-1 of A (quantized, K4 * 4 bytes a
 * row; scales sa) and the packed P over column groups c0 .. c1-1 (scales sw padded to N'). */
static void i8_gemm(int G, int HB, int K4, int m0, int m1, int c0, int c1, const uint8_t* A, const float* sa,
                    const int8_t* P, const int32_t* sums, const float* sw, float* C, long ldc) {
    const int bf16 = sums == NULL;  /* a bfloat16 matrix (b16_tile): no sums, no scales; K4 is then K2 */
    const long lda = 4L * K4;
    for (int c = c0; c < c1; c++) {
        const int8_t* W[I8_NV];
        const int32_t* S[I8_NV];
        const float* SW[I8_NV];
        float* Cv[I8_NV];
        int nv = 0;
        for (int v = 0; v < (G > 1 ? G : I8_NV); v++) {
            const int b = G > 1 ? v * HB + c : c * I8_NV + v;
            if (G == 1 && b >= HB) break;
            W[nv] = P + (long)b * K4 * 64;
            S[nv] = bf16 ? NULL : sums + b * 16;
            SW[nv] = bf16 ? NULL : sw + b * 16;
            Cv[nv] = C + (long)m0 * ldc + b * 16;
            nv++;
        }
        for (int m = m0; m < m1; m += I8_MR) {
            const int mr = m1 - m < I8_MR ? m1 - m : I8_MR;
            const uint8_t* Am = A + (long)m * lda;
            const float* sam = sa + m;
#define I8_TILE(MR, NV) \
    if (bf16) b16_tile(MR, NV, K4, Am, lda, W, Cv, ldc); else i8_tile(MR, NV, K4, Am, lda, sam, W, S, SW, Cv, ldc)
#define I8_ROWS(NV)                                \
    switch (mr) {                                  \
        case 1: I8_TILE(1, NV); break;             \
        case 2: I8_TILE(2, NV); break;             \
        case 3: I8_TILE(3, NV); break;             \
        case 4: I8_TILE(4, NV); break;             \
        case 5: I8_TILE(5, NV); break;             \
        case 6: I8_TILE(6, NV); break;             \
        case 7: I8_TILE(7, NV); break;             \
        default: I8_TILE(8, NV); break;            \
    }
            switch (nv) {
                case 1: I8_ROWS(1); break;
                case 2: I8_ROWS(2); break;
                case 3: I8_ROWS(3); break;
                default: I8_ROWS(4); break;
            }
#undef I8_ROWS
#undef I8_TILE
            for (int v = 0; v < nv; v++) Cv[v] += (long)I8_MR * ldc;
        }
    }
}

/* [*lo, *hi): share s of n things split into parts nearly equal. */
static void i8_share(int n, int parts, int s, int* lo, int* hi) {
    *lo = (int)((long)n * s / parts);
    *hi = (int)((long)n * (s + 1) / parts);
}

static void* i8_alloc(size_t bytes) {
    return aligned_alloc(64, bytes < 64 ? 64 : (bytes + 63) / 64 * 64);
}

/* v padded into out (G gates of H to G gates of HB * 16, zeros between); zeros where v is NULL. */
static void i8_pad(int G, int H, const float* v, float* out) {
    const int HP = (H + 15) / 16 * 16;
    memset(out, 0, sizeof(float) * G * HP);
    if (v != NULL)
        for (int g = 0; g < G; g++) memcpy(out + g * HP, v + (long)g * H, sizeof(float) * H);
}

/* A packed matrix for the products: P and sums from rnnkit_int8_pack, scale (G * H floats, per row). */
typedef struct {
    const int8_t* P;
    const int32_t* sums;
    const float* scale;
} rnnkit_int8_matrix;

/* y (M x N, rows ldy apart) = x (M x K, rows ldx apart) @ W^T (+ bias), W (N x K) quantized and
 * packed (one gate of N rows); threads share the rows. Returns 0, or 1 when out of memory. */
int rnnkit_int8_linear(int threads, int M, int N, int K, const float* x, long ldx, rnnkit_int8_matrix w,
                       const float* bias, float* y, long ldy) {
    const int HB = (N + 15) / 16, K4 = (K + 3) / 4, NP = HB * 16;
    const int MB = 48;  /* rows a thread quantizes and multiplies at a time (their bytes stay in cache) */
    uint8_t* q = i8_alloc((size_t)M * K4 * 4);
    float* sa = i8_alloc(sizeof(float) * (M > 0 ? M : 1));
    float* sw = i8_alloc(sizeof(float) * NP);
    float* tmp = i8_alloc(sizeof(float) * (size_t)threads * MB * NP);
    int failed = q == NULL || sa == NULL || sw == NULL || tmp == NULL;
    if (!failed) {
        i8_pad(1, N, w.scale, sw);
        const int blocks = (M + MB - 1) / MB;
#pragma omp parallel for num_threads(threads) schedule(static)
        for (int mb = 0; mb < blocks; mb++) {
#ifdef _OPENMP
            float* c = tmp + (long)omp_get_thread_num() * MB * NP;
#else
            float* c = tmp;
#endif
            const int m0 = mb * MB, m1 = m0 + MB < M ? m0 + MB : M;
            i8_quantize_rows(m0, m1, K, x, ldx, q, sa);
            i8_gemm(1, HB, K4, 0, m1 - m0, 0, i8_groups(1, HB), q + (long)m0 * K4 * 4, sa + m0, w.P, w.sums, sw, c, NP);
            for (int m = m0; m < m1; m++) {
                float* out = y + (long)m * ldy;
                const float* from = c + (long)(m - m0) * NP;
                if (bias != NULL) {
#pragma omp simd
                    for (int n = 0; n < N; n++) out[n] = from[n] + bias[n];
                } else {
                    memcpy(out, from, sizeof(float) * N);
                }
            }
        }
    }
    free(q);
    free(sa);
    free(sw);
    free(tmp);
    return failed;
}

/* One layer and direction of an int8 recurrent layer over the whole sequence (inference).
 *   x (T*B rows of I, ldx apart), time-major; out: rows (t, b) of R, ldo apart (a direction's
 *   columns of the layer's output); lengths (B,) or NULL: past a sequence's length its output is
 *   0 and its state stays; reverse: the steps from T-1 to 0 (each sequence then starts from its
 *   last valid step, as the fused kernels read a reversed direction).
 *   wih (G*H x I), whh (G*H x R), whr (R x H, the LSTM's projection) or whr.P NULL (R = H);
 *   bih, bhh (G*H) or NULL; h0 (B x R), c0 (B x H) or NULL (zeros); hn (B x R), cn (B x H, LSTM).
 * Returns 0, or 1 when out of memory. */
/* Rows of activations as the products read them: int8 (i8_quantize_rows) or, with bf16, bfloat16
 * (b16_rows, scales 1). */
static void lp_rows(int bf16, int m0, int m1, int K, const float* a, long lda, uint8_t* q, float* s) {
    if (!bf16) {
        i8_quantize_rows(m0, m1, K, a, lda, q, s);
        return;
    }
    b16_rows(m0, m1, K, a, lda, (uint16_t*)(void*)q);
    for (int m = m0; m < m1; m++) s[m] = 1.0f;
}

/* rnnkit_int8_cell and rnnkit_bf16_cell: the one driver, its matrices int8 or (bf16) bfloat16. */
static int lp_cell(int bf16, int threads, int cell, int reverse, int T, int B, int I, int H, int R, const float* x,
                   const uint16_t* xb, long ldx, rnnkit_int8_matrix wih, rnnkit_int8_matrix whh, rnnkit_int8_matrix whr,
                   const float* bih, const float* bhh, const int64_t* lengths, const float* h0, const float* c0,
                   float* out, long ldo, float* hn, float* cn, float* saved) {
    const int G = gates_of(cell), lstm = cell == CELL_LSTM, gru = cell == CELL_GRU, proj = whr.P != NULL;
    const int per = bf16 ? 2 : 4;  /* inputs a 4-byte group holds */
    const int HB = (H + 15) / 16, HP = HB * 16, NP = G * HP, IK4 = (I + per - 1) / per, RK4 = (R + per - 1) / per;
    const int HK4 = (H + per - 1) / per, RB = (R + 15) / 16, RP = RB * 16;
    /* the input projections W_ih x_t of `chunk` steps at a time (about 2 MB of them: they stay in
     * cache until their steps read them, and a long sequence needs no workspace of its length) */
    const long fit = rnnkit_int8_chunk_bytes / ((long)B * NP * 4);
    const int chunk = fit < 1 ? 1 : (fit < T ? (int)fit : T);
    const long rows = (long)chunk * B;
    /* the workspace: a chunk's quantized inputs and projections, then one step's state */
    uint8_t* xq = i8_alloc((size_t)rows * IK4 * 4);
    float* xs = i8_alloc(sizeof(float) * (size_t)(rows > 0 ? rows : 1));
    float* xp = i8_alloc(sizeof(float) * (size_t)rows * NP);
    uint8_t* hq = i8_alloc((size_t)B * RK4 * 4);
    float* hs = i8_alloc(sizeof(float) * B);
    float* hp = i8_alloc(sizeof(float) * (size_t)B * NP);
    float* h = i8_alloc(sizeof(float) * (size_t)B * R);
    float* c = i8_alloc(sizeof(float) * (size_t)B * H);
    float* pads = i8_alloc(sizeof(float) * (size_t)(4 * NP + RP));  /* sw of wih, whh; bih, bhh; sw of whr */
    uint8_t* fq = proj ? i8_alloc((size_t)B * HK4 * 4) : NULL;  /* with a projection: o * tanh(c), quantized */
    float* fs = proj ? i8_alloc(sizeof(float) * B) : NULL;
    float* f = proj ? i8_alloc(sizeof(float) * (size_t)B * H) : NULL;
    float* fp = proj ? i8_alloc(sizeof(float) * (size_t)B * RP) : NULL;
    /* where a pass that keeps nothing writes a row's activations (each thread its own): stores
     * without a branch keep the cell loops vectorised */
    float* unsaved = saved == NULL ? i8_alloc(sizeof(float) * (size_t)threads * 5 * HP) : NULL;
    int failed = xq == NULL || xs == NULL || xp == NULL || hq == NULL || hs == NULL || hp == NULL || h == NULL ||
                 c == NULL || pads == NULL || (proj && (fq == NULL || fs == NULL || f == NULL || fp == NULL)) ||
                 (saved == NULL && unsaved == NULL);
    if (!failed) {
        float *swih = pads, *swhh = pads + NP, *bi = pads + 2 * NP, *bh = pads + 3 * NP, *swhr = pads + 4 * NP;
        i8_pad(G, H, wih.scale, swih);
        i8_pad(G, H, whh.scale, swhh);
        i8_pad(G, H, bih, bi);
        i8_pad(G, H, bhh, bh);
        if (proj) i8_pad(1, R, whr.scale, swhr);
        for (long i = 0; i < (long)B * R; i++) h[i] = h0 != NULL ? h0[i] : 0.0f;
        for (long i = 0; i < (long)B * H; i++) c[i] = lstm && c0 != NULL ? c0[i] : 0.0f;
        const int groups = i8_groups(G, HB), pgroups = proj ? i8_groups(1, RB) : 0;
#pragma omp parallel num_threads(threads)
        {
#ifdef _OPENMP
            const int tid = omp_get_thread_num(), nt = omp_get_num_threads();
#else
            const int tid = 0, nt = 1;
#endif
            int lo, hi;
            int first = 0;  /* the earliest step (in time) of the chunk projected */
            i8_share(B, nt, tid, &lo, &hi);
            lp_rows(bf16, lo, hi, R, h, R, hq, hs);
            int g0, g1;  /* this thread's column groups of the gates, and of the projection */
            i8_share(groups, nt, tid, &g0, &g1);
            int p0 = 0, p1 = 0;
            if (proj) i8_share(pgroups, nt, tid, &p0, &p1);
#pragma omp barrier
            for (int s = 0; s < T; s++) {
                const int t = reverse ? T - 1 - s : s;
                if (s % chunk == 0) {  /* W_ih x of the next chunk's steps: each thread its rows, 48 at a time */
                    const int n = T - s < chunk ? T - s : chunk;
                    first = reverse ? T - s - n : s;
                    const int m = n * B;
                    i8_share((m + 47) / 48, nt, tid, &lo, &hi);
                    for (int mb = lo; mb < hi; mb++) {
                        const int m0 = mb * 48, m1 = m0 + 48 < m ? m0 + 48 : m;
                        if (xb != NULL) {  /* bfloat16 inputs as given */
                            b16_copy_rows(m0, m1, I, xb + (long)first * B * ldx, ldx, (uint16_t*)(void*)xq);
                            for (int r = m0; r < m1; r++) xs[r] = 1.0f;
                        } else {
                            lp_rows(bf16, m0, m1, I, x + (long)first * B * ldx, ldx, xq, xs);
                        }
                        i8_gemm(G, HB, IK4, m0, m1, 0, groups, xq, xs, wih.P, wih.sums, swih, xp, NP);
                    }
#pragma omp barrier
                }
                /* this thread's units: W_hh h_{t-1} (quantized), then the cell's math */
                i8_gemm(G, HB, RK4, 0, B, g0, g1, hq, hs, whh.P, whh.sums, swhh, hp, NP);
                for (int cg = g0; cg < g1; cg++) {
                    int u0, u1;
                    i8_group_units(G, H, cg, &u0, &u1);
                    for (int b = 0; b < B; b++) {
                        const int live = lengths == NULL || t < lengths[b];
                        float* o = out + ((long)t * B + b) * ldo;
                        const float* gx = xp + ((long)(t - first) * B + b) * NP;
                        const float* gh = hp + (long)b * NP;
                        float* hb = h + (long)b * R;
                        float* cb = c + (long)b * H;
                        if (!live) {
                            if (!proj)
                                for (int u = u0; u < u1; u++) o[u] = 0.0f;
                            continue;
                        }
                        /* a training pass's saved activations of this row (rnnkit_bf16_cell_saved) */
                        float* sv = saved != NULL ? saved + ((long)t * B + b) * (lstm || gru ? 5L : 1L) * H
                                                  : unsaved + (long)tid * 5 * HP;
                        if (lstm) {
                            float* fb = proj ? f + (long)b * H : NULL;
#pragma omp simd
                            for (int u = u0; u < u1; u++) {
                                const float i = 1.0f / (1.0f + exp_f32(-(gx[u] + bi[u] + gh[u] + bh[u])));
                                const float fg = 1.0f / (1.0f + exp_f32(-(gx[HP + u] + bi[HP + u] + gh[HP + u] +
                                                                         bh[HP + u])));
                                const float g = tanh_f32(gx[2 * HP + u] + bi[2 * HP + u] + gh[2 * HP + u] +
                                                         bh[2 * HP + u]);
                                const float og = 1.0f / (1.0f + exp_f32(-(gx[3 * HP + u] + bi[3 * HP + u] +
                                                                         gh[3 * HP + u] + bh[3 * HP + u])));
                                const float cn_ = fg * cb[u] + i * g;
                                const float hv = og * tanh_f32(cn_);
                                cb[u] = cn_;
                                sv[u] = i;
                                sv[H + u] = fg;
                                sv[2 * H + u] = g;
                                sv[3 * H + u] = og;
                                sv[4 * H + u] = cn_;
                                if (proj) {
                                    fb[u] = hv;
                                } else {
                                    hb[u] = hv;
                                    o[u] = hv;
                                }
                            }
                        } else if (gru) {
#pragma omp simd
                            for (int u = u0; u < u1; u++) {
                                const float r = 1.0f / (1.0f + exp_f32(-(gx[u] + bi[u] + gh[u] + bh[u])));
                                const float z = 1.0f / (1.0f + exp_f32(-(gx[HP + u] + bi[HP + u] + gh[HP + u] +
                                                                        bh[HP + u])));
                                const float ghn = gh[2 * HP + u] + bh[2 * HP + u];
                                const float n = tanh_f32(gx[2 * HP + u] + bi[2 * HP + u] + r * ghn);
                                const float hv = (1.0f - z) * n + z * hb[u];
                                hb[u] = hv;
                                o[u] = hv;
                                sv[u] = r;
                                sv[H + u] = z;
                                sv[2 * H + u] = n;
                                sv[3 * H + u] = ghn;
                                sv[4 * H + u] = hv;
                            }
                        } else {
                            const int relu = cell == CELL_RNN_RELU;
#pragma omp simd
                            for (int u = u0; u < u1; u++) {
                                const float a = gx[u] + bi[u] + gh[u] + bh[u];
                                const float hv = relu ? (a > 0.0f ? a : 0.0f) : tanh_f32(a);
                                hb[u] = hv;
                                o[u] = hv;
                                sv[u] = hv;
                            }
                        }
                    }
                }
#pragma omp barrier
                if (proj) {  /* h_t = W_hr (o * tanh(c_t)), quantized o * tanh(c_t) */
                    i8_share(B, nt, tid, &lo, &hi);
                    lp_rows(bf16, lo, hi, H, f, H, fq, fs);
#pragma omp barrier
                    i8_gemm(1, RB, HK4, 0, B, p0, p1, fq, fs, whr.P, whr.sums, swhr, fp, RP);
                    for (int cg = p0; cg < p1; cg++) {
                        int u0, u1;
                        i8_group_units(1, R, cg, &u0, &u1);
                        for (int b = 0; b < B; b++) {
                            const int live = lengths == NULL || t < lengths[b];
                            float* o = out + ((long)t * B + b) * ldo;
                            for (int u = u0; u < u1; u++) {
                                if (live) h[(long)b * R + u] = fp[(long)b * RP + u];
                                o[u] = live ? fp[(long)b * RP + u] : 0.0f;
                            }
                        }
                    }
#pragma omp barrier
                }
                if (s + 1 < T) {
                    i8_share(B, nt, tid, &lo, &hi);
                    lp_rows(bf16, lo, hi, R, h, R, hq, hs);
#pragma omp barrier
                }
            }
        }
        memcpy(hn, h, sizeof(float) * (size_t)B * R);
        if (lstm && cn != NULL) memcpy(cn, c, sizeof(float) * (size_t)B * H);
    }
    free(xq);
    free(xs);
    free(xp);
    free(hq);
    free(hs);
    free(hp);
    free(h);
    free(c);
    free(pads);
    free(fq);
    free(fs);
    free(f);
    free(fp);
    free(unsaved);
    return failed;
}

/* One layer and direction, int8 (rnnkit::int8_stack); see the comment above lp_rows. */
int rnnkit_int8_cell(int threads, int cell, int reverse, int T, int B, int I, int H, int R, const float* x, long ldx,
                     rnnkit_int8_matrix wih, rnnkit_int8_matrix whh, rnnkit_int8_matrix whr, const float* bih,
                     const float* bhh, const int64_t* lengths, const float* h0, const float* c0, float* out,
                     long ldo, float* hn, float* cn) {
    return lp_cell(0, threads, cell, reverse, T, B, I, H, R, x, NULL, ldx, wih, whh, whr, bih, bhh, lengths, h0, c0, out,
                   ldo, hn, cn, NULL);
}

/* One layer and direction in bfloat16 (rnnkit::bf16_stack): wih, whh, whr with P from
 * rnnkit_bf16_pack and sums and scale NULL; x float32 (rounded to bfloat16 where it enters a
 * product), or with x NULL xb, the same rows in bfloat16; states and out float32. */
int rnnkit_bf16_cell(int threads, int cell, int reverse, int T, int B, int I, int H, int R, const float* x,
                     const uint16_t* xb, long ldx,
                     rnnkit_int8_matrix wih, rnnkit_int8_matrix whh, rnnkit_int8_matrix whr, const float* bih,
                     const float* bhh, const int64_t* lengths, const float* h0, const float* c0, float* out,
                     long ldo, float* hn, float* cn) {
    return lp_cell(1, threads, cell, reverse, T, B, I, H, R, x, xb, ldx, wih, whh, whr, bih, bhh, lengths, h0, c0,
                   out, ldo, hn, cn, NULL);
}

/* bfloat16 training (rnnkit::fused_stack of a bfloat16 stack, cpu/bf16_train_kernel.cpp).
 *
 * The forward pass is rnnkit_bf16_cell's, which also keeps, for each row (t, b) of the saved
 * array, what the backward pass reads in float32: an LSTM's i, f, g, o and c_t; a GRU's r, z, n,
 * W_hn h_{t-1} + b_hn and h_t; an RNN's h_t (5, 5 and 1 times H numbers). No projection. */
int rnnkit_bf16_cell_saved(int threads, int cell, int reverse, int T, int B, int I, int H, const float* x,
                           const uint16_t* xb, long ldx,
                           rnnkit_int8_matrix wih, rnnkit_int8_matrix whh, const float* bih, const float* bhh,
                           const int64_t* lengths, const float* h0, const float* c0, float* out, long ldo, float* hn,
                           float* cn, float* saved) {
    const rnnkit_int8_matrix none = {NULL, NULL, NULL};
    return lp_cell(1, threads, cell, reverse, T, B, I, H, H, x, xb, ldx, wih, whh, none, bih, bhh, lengths, h0, c0,
                   out, ldo, hn, cn, saved);
}

/* The backward pass through time of one layer and direction that rnnkit_bf16_cell_saved ran: the
 * gate math's derivatives in float32, row by row; dh_{t-1} = dG_t W_hh (+ dh_t z_t for a GRU) by
 * the bfloat16 products of the forward pass, dG_t rounded to bfloat16 where it enters them. What
 * sums over all steps (the weight gradients, the input's) is left to the caller's matrix
 * products over dG and hprev.
 *   whh_t: W_hh^T (H rows over G*H inputs) packed by rnnkit_bf16_pack(1, H, G*H, .);
 *   saved: as rnnkit_bf16_cell_saved left it; out: the forward pass's h_t in bfloat16, rows
 *   (t, b) ldo apart; h0, c0 (B x H) float32 or NULL (zeros); lengths (B,) or NULL;
 *   dout: the gradient of out, bfloat16 rows ldd apart, or NULL; dhn, dcn (B x H) or NULL.
 * Writes dgx (rows (t, b) of G*H bfloat16, ldg apart): the gradient of the gates' pre-activations
 * (of x_t W_ih^T + b_ih); dgh (the same, of h_{t-1} W_hh^T + b_hh; a GRU's n gate differs, else
 * NULL and dgx serves); hprev (rows (t, b) of H bfloat16): h_{t-1} as the step's product read it;
 * dbx, dbh (G*H float32): the biases' gradients; dh0, dc0 (B x H). Rows past a sequence's length
 * have dG 0 and pass their dh, dc through. Returns 0, or 1 when out of memory. */
int rnnkit_bf16_cell_backward(int threads, int cell, int reverse, int T, int B, int H, rnnkit_int8_matrix whh_t,
                              const float* saved, const uint16_t* out, long ldo, const int64_t* lengths,
                              const float* h0, const float* c0, const uint16_t* dout, long ldd, const float* dhn,
                              const float* dcn, uint16_t* dgx, uint16_t* dgh, long ldg, uint16_t* hprev, float* dbx,
                              float* dbh, float* dh0, float* dc0) {
    const int G = gates_of(cell), lstm = cell == CELL_LSTM, gru = cell == CELL_GRU, relu = cell == CELL_RNN_RELU;
    const int GH = G * H, S = lstm || gru ? 5 : 1, K2 = (GH + 1) / 2, HB = (H + 15) / 16, HP = HB * 16;
    uint16_t* gq = i8_alloc(sizeof(uint16_t) * (size_t)B * K2 * 2);  /* this step's dG_t (of h_{t-1}), bfloat16 */
    float* prod = i8_alloc(sizeof(float) * (size_t)B * HP);          /* dG_t W_hh */
    float* dh = i8_alloc(sizeof(float) * (size_t)B * H);
    float* dc = i8_alloc(sizeof(float) * (size_t)B * H);
    float* direct = i8_alloc(sizeof(float) * (size_t)B * H);         /* a GRU's dh_t z_t */
    float* dg = i8_alloc(sizeof(float) * (size_t)threads * 2 * GH);  /* a row's dG in float32, of x and of h */
    float* bsum = i8_alloc(sizeof(float) * (size_t)threads * 2 * GH);
    int failed = gq == NULL || prod == NULL || dh == NULL || dc == NULL || direct == NULL || dg == NULL || bsum == NULL;
    if (!failed) {
        for (long i = 0; i < (long)B * H; i++) {
            dh[i] = dhn != NULL ? dhn[i] : 0.0f;
            dc[i] = lstm && dcn != NULL ? dcn[i] : 0.0f;
        }
        memset(bsum, 0, sizeof(float) * (size_t)threads * 2 * GH);
        memset(gq, 0, sizeof(uint16_t) * (size_t)B * K2 * 2);
        const int groups = i8_groups(1, HB);
#pragma omp parallel num_threads(threads)
        {
#ifdef _OPENMP
            const int tid = omp_get_thread_num(), nt = omp_get_num_threads();
#else
            const int tid = 0, nt = 1;
#endif
            int lo, hi, c0_, c1_;
            i8_share(B, nt, tid, &lo, &hi);
            i8_share(groups, nt, tid, &c0_, &c1_);
            float* gx = dg + (long)tid * 2 * GH;
            float* gh = gx + GH;
            float* sx = bsum + (long)tid * 2 * GH;
            float* sh = sx + GH;
            for (int s = T - 1; s >= 0; s--) {
                const int t = reverse ? T - 1 - s : s;
                const int tp = reverse ? t + 1 : t - 1;  /* the step before, in the pass's order */
                for (int b = lo; b < hi; b++) {
                    const long row = (long)t * B + b;
                    const int len = lengths == NULL ? T : (int)lengths[b];
                    uint16_t* ox = dgx + row * ldg;
                    uint16_t* oh = gru ? dgh + row * ldg : NULL;
                    uint16_t* hp = hprev + row * H;
                    uint16_t* q = gq + (long)b * K2 * 2;
                    if (t >= len) {  /* past the sequence: nothing here; dh and dc pass through */
                        memset(ox, 0, sizeof(uint16_t) * GH);
                        if (gru) memset(oh, 0, sizeof(uint16_t) * GH);
                        memset(hp, 0, sizeof(uint16_t) * H);
                        memset(q, 0, sizeof(uint16_t) * GH);
                        continue;
                    }
                    const int first = reverse ? t + 1 >= len : t == 0;
                    const float* sv = saved + row * S * H;
                    const float* svp = first ? NULL : saved + ((long)tp * B + b) * S * H;
                    float* dhb = dh + (long)b * H;
                    float* dcb = dc + (long)b * H;
                    if (dout != NULL) {
                        const uint16_t* d = dout + row * ldd;
                        for (int u = 0; u < H; u++) dhb[u] += b16_float(d[u]);
                    }
                    if (first) {
                        for (int u = 0; u < H; u++) hp[u] = h0 != NULL ? b16_round(h0[(long)b * H + u]) : 0;
                    } else {
                        memcpy(hp, out + (long)tp * B * ldo + (long)b * ldo, sizeof(uint16_t) * H);
                    }
                    if (lstm) {
                        const float* cp = first ? (c0 != NULL ? c0 + (long)b * H : NULL) : svp + 4 * H;
#pragma omp simd
                        for (int u = 0; u < H; u++) {
                            const float i = sv[u], f = sv[H + u], g = sv[2 * H + u], o = sv[3 * H + u];
                            const float tc = tanh_f32(sv[4 * H + u]);
                            const float cprev = cp != NULL ? cp[u] : 0.0f;
                            const float dcu = dcb[u] + dhb[u] * o * (1.0f - tc * tc);
                            gx[u] = dcu * g * i * (1.0f - i);
                            gx[H + u] = dcu * cprev * f * (1.0f - f);
                            gx[2 * H + u] = dcu * i * (1.0f - g * g);
                            gx[3 * H + u] = dhb[u] * tc * o * (1.0f - o);
                            dcb[u] = dcu * f;
                        }
                    } else if (gru) {
                        const float* hprev32 = first ? (h0 != NULL ? h0 + (long)b * H : NULL) : svp + 4 * H;
                        float* dir = direct + (long)b * H;
#pragma omp simd
                        for (int u = 0; u < H; u++) {
                            const float r = sv[u], z = sv[H + u], n = sv[2 * H + u], ghn = sv[3 * H + u];
                            const float hpv = hprev32 != NULL ? hprev32[u] : 0.0f;
                            const float dn = dhb[u] * (1.0f - z) * (1.0f - n * n);
                            const float dr = dn * ghn * r * (1.0f - r);
                            const float dz = dhb[u] * (hpv - n) * z * (1.0f - z);
                            gx[u] = dr;
                            gx[H + u] = dz;
                            gx[2 * H + u] = dn;
                            gh[u] = dr;
                            gh[H + u] = dz;
                            gh[2 * H + u] = dn * r;
                            dir[u] = dhb[u] * z;
                        }
                    } else {
#pragma omp simd
                        for (int u = 0; u < H; u++) {
                            const float h = sv[u];
                            gx[u] = relu ? (h > 0.0f ? dhb[u] : 0.0f) : dhb[u] * (1.0f - h * h);
                        }
                    }
                    const float* gr = gru ? gh : gx;  /* dG of h_{t-1}'s product */
                    for (int j = 0; j < GH; j++) {
                        ox[j] = b16_round(gx[j]);
                        sx[j] += gx[j];
                        sh[j] += gr[j];
                        q[j] = b16_round(gr[j]);
                    }
                    if (gru)
                        for (int j = 0; j < GH; j++) oh[j] = b16_round(gh[j]);
                }
#pragma omp barrier
                if (s > 0) {  /* dh_{t-1} = dG_t W_hh, this thread's columns */
                    i8_gemm(1, HB, K2, 0, B, c0_, c1_, (const uint8_t*)gq, dc, (const int8_t*)whh_t.P, NULL, NULL,
                            prod, HP);
#pragma omp barrier
                    for (int b = lo; b < hi; b++) {
                        const int len = lengths == NULL ? T : (int)lengths[b];
                        if (t >= len) continue;
                        float* dhb = dh + (long)b * H;
                        const float* p = prod + (long)b * HP;
                        if (gru) {
                            const float* dir = direct + (long)b * H;
                            for (int u = 0; u < H; u++) dhb[u] = p[u] + dir[u];
                        } else {
                            memcpy(dhb, p, sizeof(float) * H);
                        }
                    }
                }
            }
        }
        /* dh_0: what reaches the initial state, from the pass's first step: dG W_hh (+ the GRU's
         * direct path); a sequence that starts later (reversed, shorter than T) has it in dh */
        i8_gemm(1, HB, K2, 0, B, 0, groups, (const uint8_t*)gq, dc, (const int8_t*)whh_t.P, NULL, NULL, prod, HP);
        const int t0 = reverse ? T - 1 : 0;
        for (int b = 0; b < B; b++) {
            const float* p = prod + (long)b * HP;
            const int started = lengths == NULL || t0 < lengths[b];
            for (int u = 0; u < H; u++)
                dh0[(long)b * H + u] = !started ? dh[(long)b * H + u]
                                                : p[u] + (gru ? direct[(long)b * H + u] : 0.0f);
            if (lstm && dc0 != NULL) memcpy(dc0 + (long)b * H, dc + (long)b * H, sizeof(float) * H);
        }
        for (int j = 0; j < GH; j++) {
            float a = 0.0f, c = 0.0f;
            for (int k = 0; k < threads; k++) {
                a += bsum[(long)k * 2 * GH + j];
                c += bsum[(long)k * 2 * GH + GH + j];
            }
            dbx[j] = a;
            dbh[j] = c;
        }
    }
    free(gq);
    free(prod);
    free(dh);
    free(dc);
    free(direct);
    free(dg);
    free(bsum);
    return failed;
}
