/* rnnkit's fused engine: the whole time loop of one layer and direction, forward and backward
 * (backpropagation through time derived by hand), for the RNN (tanh, relu), LSTM and GRU cells.
 *
 * Compiled at first use by rnnkit/engines/_library.py with the system C compiler (no PyTorch
 * headers) and linked into rnnkit's operator library, whose CPU kernels (fused_rnn_kernel.cpp)
 * plan and call these functions. Every matrix product (each step's h_{t-1} @ W_hh^T and its
 * mirror in the backward pass, the input projection, and for small T*B the weight gradients)
 * is the kernels' own register-tiled product, written with the compiler's vector types so that
 * it builds for any SIMD width, over operands packed once per call into contiguous panels
 * (or, for a row-major operand used once over few rows, read where it lies).
 * The gate math is written as elementwise loops that the compiler turns into SIMD code, with
 * exp and tanh inlined (below) so that they vectorise too. Built with OpenMP, the *_slices
 * functions run slices of the batch in parallel on the OpenMP runtime torch already loaded.
 *
 * rnn_kernels_impl.h holds the kernels, written once and included here for float and double.
 * The readable twin of every kernel is the cell's step function in rnnkit/cells (the reference
 * engine), which the tests compare these kernels against.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* exp and tanh, written branch-free so that the compiler inlines and vectorises them inside the
 * gate loops (a call into a math library per element costs more than the gate math itself).
 * The approximations are Cephes' (S. L. Moshier): expf and tanhf accurate to about 1 ulp in
 * float, exp and tanh to about 1 ulp in double; tests compare them with torch's. */

static inline float exp_f32(float x) {
    x = x < -87.3f ? -87.3f : (x > 88.0f ? 88.0f : x);  /* 2^n stays a normal float */
    const float n = floorf(1.44269504088896341f * x + 0.5f);  /* x = n ln2 + r, |r| <= ln2/2 */
    const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    union { int32_t i; float f; } scale = { .i = ((int32_t)n + 127) << 23 };  /* 2^n */
    return p * scale.f;
}

static inline double exp_f64(double x) {
    x = x < -708.0 ? -708.0 : (x > 709.0 ? 709.0 : x);
    const double n = floor(1.4426950408889634073599 * x + 0.5);
    const double r = (x - n * 6.93145751953125e-1) - n * 1.42860682030941723212e-6;
    const double rr = r * r;
    const double px = r * ((1.26177193074810590878e-4 * rr + 3.02994407707441961300e-2) * rr
                           + 9.99999999999999999910e-1);
    const double qx = ((3.00198505138664455042e-6 * rr + 2.52448340349684104192e-3) * rr
                       + 2.27265548208155028766e-1) * rr + 2.00000000000000000009e0;
    const double e = 1.0 + 2.0 * (px / (qx - px));
    union { int64_t i; double f; } scale = { .i = ((int64_t)n + 1023) << 52 };
    return e * scale.f;
}

static inline float tanh_f32(float x) {
    const float a = x < 0 ? -x : x;
    const float big = 1.0f - 2.0f / (exp_f32(a + a) + 1.0f);  /* |x| >= 0.625 */
    const float z = x * x;                                      /* |x| < 0.625: odd polynomial */
    const float small = ((((-5.70498872745e-3f * z + 2.06390887954e-2f) * z - 5.37397155531e-2f) * z
                          + 1.33314422036e-1f) * z - 3.33332819422e-1f) * z * x + x;
    return a < 0.625f ? small : (x < 0 ? -big : big);
}

static inline double tanh_f64(double x) {
    const double a = x < 0 ? -x : x;
    const double big = 1.0 - 2.0 / (exp_f64(a + a) + 1.0);
    const double s = x * x;
    const double p = (-9.64399179425052238628e-1 * s - 9.92877231001918586564e1) * s
                     - 1.61468768441708447952e3;
    const double q = ((s + 1.12811678491632931402e2) * s + 2.23548839060100448583e3) * s
                     + 4.84406305325125486048e3;
    const double small = x + x * s * (p / q);
    return a < 0.625 ? small : (x < 0 ? -big : big);
}

enum { CELL_RNN_TANH = 0, CELL_RNN_RELU = 1, CELL_LSTM = 2, CELL_GRU = 3 };

/* As torch.nn.functional.layer_norm's default, and rnnkit.cells' LAYER_NORM_EPS. */
#define LAYER_NORM_EPS 1e-5

/* The SIMD width the per-step products are written for, and their register tile: GEMM_MR rows
 * by two vectors, 2 * GEMM_MR accumulators (16 of AVX-512's 32 registers; 12 of AVX's 16). */
#if defined(__AVX512F__)
#define VEC_BYTES 64
#define GEMM_MR 8
#elif defined(__AVX__)
#define VEC_BYTES 32
#define GEMM_MR 6
#else
#define VEC_BYTES 16
#define GEMM_MR 6
#endif

/* TRANSPOSE4(r0, r1, r2, r3): four vectors of 4 elements, the rows of a 4 x 4 block, become its
 * columns (an unpack stage, then a 64-bit one). TRANSPOSE8(r): r[0..7], vectors of 8 elements,
 * the rows of an 8 x 8 block, become its columns (unpack within 128-bit lanes, a 64-bit stage,
 * then the two halves exchanged): 24 shuffles for 64 elements, where TRANSPOSE4 takes 8 for 16.
 * Where __builtin_shufflevector is missing (GCC before 12), pack transposes element by element. */
#if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12)
#define TRANSPOSE4(r0, r1, r2, r3) do {                                 \
        const __typeof__(r0) t0 = __builtin_shufflevector(r0, r1, 0, 4, 1, 5); \
        const __typeof__(r0) t1 = __builtin_shufflevector(r0, r1, 2, 6, 3, 7); \
        const __typeof__(r0) t2 = __builtin_shufflevector(r2, r3, 0, 4, 1, 5); \
        const __typeof__(r0) t3 = __builtin_shufflevector(r2, r3, 2, 6, 3, 7); \
        r0 = __builtin_shufflevector(t0, t2, 0, 1, 4, 5);                 \
        r1 = __builtin_shufflevector(t0, t2, 2, 3, 6, 7);                 \
        r2 = __builtin_shufflevector(t1, t3, 0, 1, 4, 5);                 \
        r3 = __builtin_shufflevector(t1, t3, 2, 3, 6, 7);                 \
    } while (0)
#define TRANSPOSE8(r) do {                                                                        \
        __typeof__((r)[0]) t_[8], u_[8];                                                          \
        for (int i_ = 0; i_ < 8; i_ += 2) {                                                       \
            t_[i_] = __builtin_shufflevector((r)[i_], (r)[i_ + 1], 0, 8, 1, 9, 4, 12, 5, 13);     \
            t_[i_ + 1] = __builtin_shufflevector((r)[i_], (r)[i_ + 1], 2, 10, 3, 11, 6, 14, 7, 15); \
        }                                                                                         \
        for (int i_ = 0; i_ < 8; i_ += 4)                                                         \
            for (int j_ = 0; j_ < 2; j_++) {                                                      \
                u_[i_ + 2 * j_] = __builtin_shufflevector(t_[i_ + j_], t_[i_ + j_ + 2],           \
                                                          0, 1, 8, 9, 4, 5, 12, 13);              \
                u_[i_ + 2 * j_ + 1] = __builtin_shufflevector(t_[i_ + j_], t_[i_ + j_ + 2],       \
                                                              2, 3, 10, 11, 6, 7, 14, 15);        \
            }                                                                                     \
        for (int i_ = 0; i_ < 4; i_++) {                                                          \
            (r)[i_] = __builtin_shufflevector(u_[i_], u_[i_ + 4], 0, 1, 2, 3, 8, 9, 10, 11);       \
            (r)[i_ + 4] = __builtin_shufflevector(u_[i_], u_[i_ + 4], 4, 5, 6, 7, 12, 13, 14, 15); \
        }                                                                                         \
    } while (0)
#endif

static int gates_of(int cell) { return cell == CELL_LSTM ? 4 : cell == CELL_GRU ? 3 : 1; }
/* Saved activations per unit: LSTM i, f, g, o; GRU r, z, n and W_hn h + b_hn; RNN h~. */
static int saved_of(int cell) { return cell == CELL_LSTM || cell == CELL_GRU ? 4 : 1; }

/* The arrays of the forward pass's workspace (what it keeps for the backward pass; see
 * rnn_forward) and of the backward pass's (see rnn_backward), in this order. */
enum { W_HS, W_CS, W_ACTS, W_CAND, W_HR, W_GHAT, W_RSTD_H, W_CHAT, W_RSTD_C, W_PARTS };
enum { D_GI, D_GH, D_GH_RAW, D_PROJ, D_LN_C, D_PARTS };
/* flags of a layer: which optional arrays it has */
enum { HAS_PROJ = 1, HAS_LN_H = 2, HAS_LN_C = 4 };

/* Lays out parts (sizes in elements, 0 for an absent array) one after the other, each from a
 * 64-byte line (in float32; 128 bytes in float64): offsets[i] is where part i starts, or -1.
 * Returns the total. */
static long lay_out(int count, const long* sizes, long* offsets) {
    long total = 0;
    for (int i = 0; i < count; i++) {
        offsets[i] = sizes[i] > 0 ? total : -1;
        total += (sizes[i] + 15) / 16 * 16;
    }
    return total;
}

/* The sizes (elements) of the forward workspace's arrays (W_PARTS longs). save = 0: the arrays
 * hold one step (hs and cs two). */
static void forward_sizes(int cell, int save, int T, int B, int H, int R, int flags, long* sizes) {
    const long kept = save ? T : 1, lstm = cell == CELL_LSTM;
    const long S = cell == CELL_LSTM || cell == CELL_GRU ? 4 : 1, G = lstm ? 4 : cell == CELL_GRU ? 3 : 1;
    const long all[W_PARTS] = {
        (kept + 1) * B * R, lstm * (kept + 1) * B * H, kept * B * S * H, lstm * kept * B * H,
        (flags & HAS_PROJ) ? kept * B * H : 0, (flags & HAS_LN_H) ? kept * B * G * H : 0,
        (flags & HAS_LN_H) ? kept * B : 0, (flags & HAS_LN_C) ? kept * B * H : 0,
        (flags & HAS_LN_C) ? kept * B : 0,
    };
    memcpy(sizes, all, sizeof(all));
}

/* The forward workspace: elements in all, and with offsets (W_PARTS longs) where each array
 * starts. save = 0: the arrays hold one step (hs and cs two). */
long rnnkit_forward_layout(int cell, int save, int T, int B, int H, int R, int flags, long* offsets) {
    long sizes[W_PARTS], own[W_PARTS];
    forward_sizes(cell, save, T, B, H, R, flags, sizes);
    return lay_out(W_PARTS, sizes, offsets != NULL ? offsets : own);
}

/* The gaps that lay_out leaves after each array of a forward workspace of one block (bytes of
 * one number: itemsize), set to zero: the block is an output of the PyTorch operator
 * rnnkit::fused_rnn, so every element of it is a function of the inputs. */
static void clear_forward_gaps(void* work, size_t itemsize, int cell, int save, int T, int B, int H, int R,
                               int flags) {
    long sizes[W_PARTS], at[W_PARTS];
    forward_sizes(cell, save, T, B, H, R, flags, sizes);
    lay_out(W_PARTS, sizes, at);
    for (int i = 0; i < W_PARTS; i++)
        if (at[i] >= 0)
            memset((char*)work + (at[i] + sizes[i]) * itemsize, 0, ((sizes[i] + 15) / 16 * 16 - sizes[i]) * itemsize);
}

/* The backward scratch for n slices: dgi first (offset 0), then dgh, dgh_raw, dproj and dln_c
 * (each row's own sums for LN(c)'s gain and shift, whatever n: so that their total, summed over
 * the rows in order, does not depend on how the batch was sliced). */
long rnnkit_backward_layout(int n, int cell, int T, int B, int H, int R, int flags, long* offsets) {
    const long G = cell == CELL_LSTM ? 4 : cell == CELL_GRU ? 3 : 1, rows = (long)T * B;
    const long sizes[D_PARTS] = {
        rows * G * H, cell == CELL_GRU ? rows * G * H : 0, (flags & HAS_LN_H) ? rows * G * H : 0,
        (flags & HAS_PROJ) ? rows * R : 0, (flags & HAS_LN_C) ? (long)B * 2 * H : 0,
    };
    long own[D_PARTS];
    return lay_out(D_PARTS, sizes, offsets != NULL ? offsets : own);
}

/* The plan of a whole stack (rnn_stack_forward): its ints before the cells', and each cell's. */
#define STACK_HEAD 9
#define STACK_CELL_INTS 7

/* The forward pass reads the weights where they lie, by dot products along their rows, when its
 * products cover at most rnnkit_rows_mode_max rows in all (T * B: a step or two of one sequence,
 * as when a model generates one token at a time) and W_hh has at least ROWS_MODE_MIN_WEIGHTS
 * numbers; else it transposes them into panels once per call. Transposing costs a read and a
 * write of the weights, which a large W_hh used once does not repay; a small one stays in cache,
 * where the panels' register tiles are the faster product (benchmarks/one_step.py times both). */
#define ROWS_MODE_MIN_WEIGHTS 65536
int rnnkit_rows_mode_max = 2;  /* (a variable, so that a benchmark can set it to 0 and compare) */
const long rnnkit_rows_mode_min_weights = ROWS_MODE_MIN_WEIGHTS;  /* (read by the tests) */

int rnnkit_kernels_version(void) { return 28; }

/* 1 when built with OpenMP: then slices of the batch, and a step's products, run in parallel. */
int rnnkit_kernels_parallel(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

#define REAL float
#define SFX(name) name##_f32
#define EXP exp_f32
#define TANH tanh_f32
#include "rnn_kernels_impl.h"
#undef REAL
#undef SFX
#undef EXP
#undef TANH

#define REAL double
#define SFX(name) name##_f64
#define EXP exp_f64
#define TANH tanh_f64
#include "rnn_kernels_impl.h"
#undef REAL
#undef SFX
#undef EXP
#undef TANH

/* int8 inference (float32 gate math): rnnkit::int8_stack and rnnkit::int8_linear */
#include "int8_kernels.h"
