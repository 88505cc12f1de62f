/* The kernels for one floating-point type; included by rnn_kernels.c with REAL, SFX, EXP, TANH.
 *
 * Shapes (row-major, time-major): T steps, B batch, H hidden, G gates (1 RNN, 4 LSTM, 3 GRU),
 * S saved activations per unit (1 RNN, 4 LSTM and GRU). A "row" is one (t, b).
 */

/* The matrix products, C (M x N) = A (M x K) @ B (K x N), B read in panels of NR columns, two
 * vectors: packed once per call into K x NR panels (zero-padded past N) so that the inner loop
 * reads it contiguously, or, when row-major and used once over few rows, read in place;
 * register tiles of GEMM_MR rows x NR columns. At the recurrent products' shapes (few rows: the
 * batch slice) this runs 1.1-1.7x faster than the BLAS sgemm torch ships with
 * (benchmarks/README.md), which repacks B at every call; at large shapes about as fast. */
typedef REAL SFX(vec) __attribute__((vector_size(VEC_BYTES), aligned(sizeof(REAL))));
enum { SFX(VL) = VEC_BYTES / sizeof(REAL), SFX(NR) = 2 * SFX(VL) };

/* Elements of the packed copy of a B with N columns and K rows. */
static long SFX(packed_size)(int N, int K) { return (long)(N + SFX(NR) - 1) / SFX(NR) * SFX(NR) * K; }

/* The panels p0 .. p1-1 of P = B packed in panels: P[p][k][j] = B(k, p*NR + j), 0 past N, where
 * B(k, n) = src[n * K + k] when trans (src is B^T, N x K, as W_hh for h @ W_hh^T), else
 * src[k * N + n] (times mask[(k % rows) * N + n] with a mask, rows (rows, N) repeating: the
 * recurrent dropout mask of each step's h).
 * The transposed copy goes by 8 x 8 blocks, then 4 x 4, each turned in registers (TRANSPOSE8,
 * TRANSPOSE4): element by element it cost more than the products themselves at small T x B,
 * and a panel the blocks filled whole gets no second, per-row pass (with both, packing W
 * (800 x 200) took 23.5 us in a C benchmark, against 42.7 us by 4 x 4 blocks and that pass). */
static void SFX(pack_panels)(int trans, int N, int K, const REAL* src, const REAL* mask, int rows, REAL* P,
                             int p0, int p1) {
    const int NR = SFX(NR);
    for (int n0 = p0 * NR; n0 < N && n0 < p1 * NR; n0 += NR) {
        REAL* panel = P + (long)n0 * K;
        const int w = N - n0 < NR ? N - n0 : NR;
        int j0 = 0;
#ifdef TRANSPOSE4
        if (trans) {
            typedef REAL v8 __attribute__((vector_size(8 * sizeof(REAL)), aligned(sizeof(REAL))));
            for (; j0 + 8 <= w; j0 += 8) {  /* eight rows of src at once: eight columns of B */
                const REAL* s = src + (long)(n0 + j0) * K;
                int k = 0;
                for (; k + 8 <= K; k += 8) {
                    v8 r[8];
                    for (int i = 0; i < 8; i++) r[i] = *(const v8*)(s + (long)i * K + k);
                    TRANSPOSE8(r);
                    for (int i = 0; i < 8; i++) *(v8*)(panel + (long)(k + i) * NR + j0) = r[i];
                }
                for (; k < K; k++)
                    for (int j = 0; j < 8; j++) panel[(long)k * NR + j0 + j] = s[(long)j * K + k];
            }
            typedef REAL v4 __attribute__((vector_size(4 * sizeof(REAL)), aligned(sizeof(REAL))));
            for (; j0 + 4 <= w; j0 += 4) {  /* four rows of src at once: four columns of B */
                const REAL* s = src + (long)(n0 + j0) * K;
                int k = 0;
                for (; k + 4 <= K; k += 4) {
                    v4 r0 = *(const v4*)(s + k), r1 = *(const v4*)(s + K + k);
                    v4 r2 = *(const v4*)(s + 2L * K + k), r3 = *(const v4*)(s + 3L * K + k);
                    TRANSPOSE4(r0, r1, r2, r3);
                    *(v4*)(panel + (long)k * NR + j0) = r0;
                    *(v4*)(panel + (long)(k + 1) * NR + j0) = r1;
                    *(v4*)(panel + (long)(k + 2) * NR + j0) = r2;
                    *(v4*)(panel + (long)(k + 3) * NR + j0) = r3;
                }
                for (; k < K; k++)
                    for (int j = 0; j < 4; j++) panel[(long)k * NR + j0 + j] = s[(long)j * K + k];
            }
        }
#endif
        if (trans && j0 == NR) continue;  /* a whole panel turned by blocks: nothing left */
        for (int k = 0; k < K; k++) {
            REAL* row = panel + (long)k * NR;
            if (trans) {
                for (int j = j0; j < w; j++) row[j] = src[(long)(n0 + j) * K + k];
            } else if (mask != NULL) {
                const REAL* m = mask + (long)(k % rows) * N + n0;
                for (int j = 0; j < w; j++) row[j] = src[(long)k * N + n0 + j] * m[j];
            } else if (w == NR) {  /* a whole panel row: two vectors, not a call to memcpy */
                typedef SFX(vec) vec;
                const REAL* from = src + (long)k * N + n0;
                *(vec*)row = *(const vec*)from;
                *(vec*)(row + SFX(VL)) = *(const vec*)(from + SFX(VL));
            } else {
                for (int j = 0; j < w; j++) row[j] = src[(long)k * N + n0 + j];
            }
            for (int j = w; j < NR; j++) row[j] = 0;
        }
    }
}

/* P = B packed in panels (pack_panels), all of them; on `threads` threads, each its share of
 * the panels (for work shared by threads at every step, where one thread packing alone would
 * leave the others waiting). */
static void SFX(pack)(int threads, int trans, int N, int K, const REAL* src, const REAL* mask, int rows, REAL* P) {
    const int panels = (N + SFX(NR) - 1) / SFX(NR);
    if (threads > panels) threads = panels;
    if (threads <= 1) {
        SFX(pack_panels)(trans, N, K, src, mask, rows, P, 0, panels);
        return;
    }
#pragma omp parallel for num_threads(threads) schedule(static, 1)
    for (int s = 0; s < threads; s++)
        SFX(pack_panels)(trans, N, K, src, mask, rows, P, (int)((long)s * panels / threads),
                         (int)((long)(s + 1) * panels / threads));
}

/* A matrix B for the products: packed (p: every panel, as pack lays it out), or read where it
 * lies (d: B(k, n) = d[k * ld + n], rows ld apart) with only its last panel, when partial,
 * packed (p: K x NR): reading a whole panel there would run past the matrix. In place suits a
 * row-major B used once over few rows (the weight gradients while T*B is small, dx): its
 * panels' rows are contiguous already. A B read at every step, or over many rows, is packed:
 * rows read in place lie ld apart, and with ld a power of two they share few cache sets. */
typedef struct { const REAL* p; const REAL* d; long ld; const REAL* w; } SFX(bmat);

static SFX(bmat) SFX(packed)(const REAL* P) { return (SFX(bmat)){P, NULL, 0, NULL}; }

/* B = W^T for a row-major W (N x K, rows ld apart), read where it lies by dot products along W's
 * rows (gemm_rows): for the forward pass's products when all of them together cover so few rows
 * that transposing a large W into panels would cost more than reading it (rnnkit_rows_mode_max). */
static SFX(bmat) SFX(rows)(const REAL* W, long ld) { return (SFX(bmat)){NULL, NULL, ld, W}; }

/* B (K x N, rows ld apart) read in place; its last panel packed into tail (K x NR), when partial. */
static SFX(bmat) SFX(in_place)(int N, int K, const REAL* B, long ld, REAL* tail) {
    const int NR = SFX(NR), n0 = N / NR * NR, w = N - n0;
    if (w > 0)
        for (int k = 0; k < K; k++) {
            for (int j = 0; j < w; j++) tail[(long)k * NR + j] = B[(long)k * ld + n0 + j];
            for (int j = w; j < NR; j++) tail[(long)k * NR + j] = 0;
        }
    return (SFX(bmat)){tail, B, ld, NULL};
}

/* One register tile: C[0:mr, 0:w] (+)= A[0:mr, 0:kc] @ panel[0:kc, :] (rows ldp apart),
 * A(i, k) = A[i * sa + k * sk]
 * (sk = 1: A row-major; sa = 1: A given transposed, as the rows of dg for dW = dg^T h). mr, nv
 * and the stride that is 1 are constants at each call site below, so that the compiler unrolls
 * the row loops and keeps the nv*mr accumulators in registers. nv: the vectors of the panel
 * computed, 2, or 1 for a last panel of at most one vector's columns (w <= VL), which would
 * otherwise spend half its multiply-adds on zero padding. w < NR goes through a buffer. */
static inline __attribute__((always_inline)) void SFX(tile)(const int mr, const int nv, int kc, const REAL* A,
                                                            long sa, long sk, const REAL* panel, long ldp,
                                                            int add, int w, REAL* C, long ldc) {
    typedef SFX(vec) vec;
    const int VL = SFX(VL), NR = SFX(NR);
    vec c0[GEMM_MR], c1[GEMM_MR];
    for (int i = 0; i < mr; i++) { c0[i] = (vec){0}; c1[i] = (vec){0}; }
    for (int k = 0; k < kc; k++) {
        const vec b0 = *(const vec*)(panel + k * ldp);
        const vec b1 = nv == 2 ? *(const vec*)(panel + k * ldp + VL) : (vec){0};
        for (int i = 0; i < mr; i++) {
            const REAL a = A[i * sa + k * sk];
            c0[i] += a * b0;
            if (nv == 2) c1[i] += a * b1;
        }
    }
    if (w == NR) {
        for (int i = 0; i < mr; i++) {
            vec* c = (vec*)(C + i * ldc);
            if (add) { c[0] += c0[i]; c[1] += c1[i]; } else { c[0] = c0[i]; c[1] = c1[i]; }
        }
    } else {
        REAL buf[2 * SFX(VL)];
        for (int i = 0; i < mr; i++) {
            *(vec*)buf = c0[i];
            *(vec*)(buf + VL) = c1[i];
            REAL* c = C + i * ldc;
            for (int j = 0; j < w; j++) c[j] = add ? c[j] + buf[j] : buf[j];
        }
    }
}

/* The row tiles of rows m0 .. me-1 against one panel (see tile), nv a constant at each call. */
static inline __attribute__((always_inline)) void SFX(row_tiles)(const int nv, int m0, int me, int kc,
                                                                 const REAL* A, long sa, long sk,
                                                                 const REAL* panel, long ldp, int acc, int w,
                                                                 REAL* C, long ldc) {
    for (; m0 + GEMM_MR <= me; m0 += GEMM_MR)
        SFX(tile)(GEMM_MR, nv, kc, A + m0 * sa, sa, sk, panel, ldp, acc, w, C + m0 * ldc, ldc);
    const REAL* a = A + m0 * sa;
    REAL* c = C + m0 * ldc;
    switch (me - m0) {  /* the last rows, each count with its own unrolled tile */
        case 1: SFX(tile)(1, nv, kc, a, sa, sk, panel, ldp, acc, w, c, ldc); break;
        case 2: SFX(tile)(2, nv, kc, a, sa, sk, panel, ldp, acc, w, c, ldc); break;
        case 3: SFX(tile)(3, nv, kc, a, sa, sk, panel, ldp, acc, w, c, ldc); break;
        case 4: SFX(tile)(4, nv, kc, a, sa, sk, panel, ldp, acc, w, c, ldc); break;
        case 5: SFX(tile)(5, nv, kc, a, sa, sk, panel, ldp, acc, w, c, ldc); break;
#if GEMM_MR > 6
        case 6: SFX(tile)(6, nv, kc, a, sa, sk, panel, ldp, acc, w, c, ldc); break;
        case 7: SFX(tile)(7, nv, kc, a, sa, sk, panel, ldp, acc, w, c, ldc); break;
#endif
        default: break;
    }
}

/* The panels p0 .. p1-1 of C (M x N, rows ldc apart) = [C +] A (M x K, A(i, k) = A[i*sa + k*sk])
 * @ B (Bm). Inlined into gemm_panels_n and gemm_panels_t, each with its unit stride a constant. */
static inline __attribute__((always_inline)) void SFX(gemm_panels_any)(
        int p0, int p1, int M, int N, int K, const REAL* A, long sa, long sk, SFX(bmat) Bm, int add,
        REAL* C, long ldc) {
    /* K in chunks: a chunk of a panel stays in L1 across row tiles; M in blocks: a block of A's
     * rows stays in L2 across panels (one block for the per-step products' few rows) */
    const int NR = SFX(NR), KC = 256, MC = 16 * GEMM_MR;
    for (int mb = 0; mb < M; mb += MC) {
        const int me = M - mb < MC ? M : mb + MC;  /* rows mb .. me-1 */
        for (int p = p0; p < p1; p++) {
            const int n0 = p * NR, w = N - n0 < NR ? N - n0 : NR;
            for (int k0 = 0; k0 < K; k0 += KC) {
                const int kc = K - k0 < KC ? K - k0 : KC;
                const int acc = add || k0 > 0;
                const REAL* panel;
                long ldp = NR;
                if (Bm.d == NULL) panel = Bm.p + (long)n0 * K + (long)k0 * NR;
                else if (w == NR) { panel = Bm.d + (long)k0 * Bm.ld + n0; ldp = Bm.ld; }
                else panel = Bm.p + (long)k0 * NR;
                if (w <= SFX(VL))
                    SFX(row_tiles)(1, mb, me, kc, A + k0 * sk, sa, sk, panel, ldp, acc, w, C + n0, ldc);
                else
                    SFX(row_tiles)(2, mb, me, kc, A + k0 * sk, sa, sk, panel, ldp, acc, w, C + n0, ldc);
            }
        }
    }
}

static void SFX(gemm_panels_n)(int p0, int p1, int M, int N, int K, const REAL* A, long lda,
                               SFX(bmat) Bm, int add, REAL* C, long ldc) {
    SFX(gemm_panels_any)(p0, p1, M, N, K, A, lda, 1, Bm, add, C, ldc);
}

static void SFX(gemm_panels_t)(int p0, int p1, int M, int N, int K, const REAL* At, long ldat,
                               SFX(bmat) Bm, int add, REAL* C, long ldc) {
    SFX(gemm_panels_any)(p0, p1, M, N, K, At, 1, ldat, Bm, add, C, ldc);
}

/* C (M x N, rows ldc apart) = [C +] A (M x K, rows lda apart) @ W^T, W (N x K) row-major with
 * rows ldw apart (SFX(rows)): each element one dot product along a row of W, whose summation
 * order depends on K alone. On `threads` threads, each its share of the columns. */
static void SFX(gemm_rows)(int threads, int M, int N, int K, const REAL* A, long lda, const REAL* W, long ldw,
                           int add, REAL* C, long ldc) {
    if (threads > N) threads = N;
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
    for (int n = 0; n < N; n++) {
        const REAL* w = W + (long)n * ldw;
        for (int i = 0; i < M; i++) {
            const REAL* a = A + (long)i * lda;
            REAL sum = 0;
#pragma omp simd reduction(+ : sum)
            for (int k = 0; k < K; k++) sum += a[k] * w[k];
            REAL* c = C + (long)i * ldc + n;
            *c = add ? *c + sum : sum;
        }
    }
}

/* C (M x N, rows ldc apart) = [C +] A (M x K, rows lda apart) @ B (Bm); on
 * `threads` threads, each its share of the column panels (for a batch too small to slice). */
static void SFX(gemm)(int threads, int M, int N, int K, const REAL* A, long lda, SFX(bmat) Bm,
                      int add, REAL* C, long ldc) {
    if (Bm.w != NULL) {
        SFX(gemm_rows)(threads, M, N, K, A, lda, Bm.w, Bm.ld, add, C, ldc);
        return;
    }
    const int panels = (N + SFX(NR) - 1) / SFX(NR);
    if (threads > panels) threads = panels;
    if (threads <= 1) {
        SFX(gemm_panels_n)(0, panels, M, N, K, A, lda, Bm, add, C, ldc);
        return;
    }
#pragma omp parallel for num_threads(threads) schedule(static, 1)
    for (int s = 0; s < threads; s++)
        SFX(gemm_panels_n)((int)((long)s * panels / threads), (int)((long)(s + 1) * panels / threads),
                           M, N, K, A, lda, Bm, add, C, ldc);
}

/* C (M x N, rows ldc apart) = At^T @ B (Bm), At (K x M) with rows ldat apart:
 * the weight gradients, dW = dg^T h, over all T*B rows at once. On `threads` threads, each its
 * share of C's rows (M is the large side here: G*H). */
static void SFX(gemm_t)(int threads, int M, int N, int K, const REAL* At, long ldat, SFX(bmat) Bm,
                        REAL* C, long ldc) {
    const int panels = (N + SFX(NR) - 1) / SFX(NR), blocks = (M + GEMM_MR - 1) / GEMM_MR;
    if (threads > blocks) threads = blocks;
    if (threads <= 1) {
        SFX(gemm_panels_t)(0, panels, M, N, K, At, ldat, Bm, 0, C, ldc);
        return;
    }
#pragma omp parallel for num_threads(threads) schedule(static, 1)
    for (int s = 0; s < threads; s++) {
        const int m0 = (int)((long)s * blocks / threads) * GEMM_MR;
        const int m1 = (int)((long)(s + 1) * blocks / threads) * GEMM_MR;
        SFX(gemm_panels_t)(0, panels, (m1 < M ? m1 : M) - m0, N, K, At + m0, ldat, Bm, 0, C + (long)m0 * ldc, ldc);
    }
}

static inline REAL SFX(sigmoid)(REAL v) { return (REAL)1 / ((REAL)1 + EXP(-v)); }

/* Layer normalisation of one row v (n) in place: v = gain * (v - mean) / sqrt(var + eps) + shift
 * (shift may be NULL); keeps v_hat (n), the normalised row, and returns 1 / sqrt(var + eps). */
static REAL SFX(layer_norm)(int n, REAL* v, const REAL* gain, const REAL* shift, REAL* v_hat) {
    double sum = 0, var = 0;  /* row sums in double: float32 rows keep full precision */
#pragma omp simd reduction(+ : sum)
    for (int j = 0; j < n; j++) sum += v[j];
    const double mean_d = sum / n;
#pragma omp simd reduction(+ : var)
    for (int j = 0; j < n; j++) var += (v[j] - mean_d) * (v[j] - mean_d);
    const REAL mean = (REAL)mean_d;
    const REAL rstd = (REAL)(1.0 / sqrt(var / n + LAYER_NORM_EPS));
#pragma omp simd
    for (int j = 0; j < n; j++) {
        v_hat[j] = (v[j] - mean) * rstd;
        v[j] = gain[j] * v_hat[j] + (shift != NULL ? shift[j] : 0);
    }
    return rstd;
}

/* The mirror of layer_norm: given dy (n), the gradient of its output, write into dx (n) the
 * gradient of its input: dx = rstd * (g - mean(g) - v_hat * mean(g * v_hat)), g = dy * gain. */
static void SFX(layer_norm_backward)(int n, const REAL* dy, const REAL* gain, const REAL* v_hat,
                                     REAL rstd, REAL* dx) {
    double s1 = 0, s2 = 0;  /* row sums in double, as in layer_norm */
#pragma omp simd reduction(+ : s1, s2)
    for (int j = 0; j < n; j++) {
        const double g = (double)dy[j] * gain[j];
        s1 += g;
        s2 += g * v_hat[j];
    }
    const REAL m1 = (REAL)(s1 / n), m2 = (REAL)(s2 / n);
#pragma omp simd
    for (int j = 0; j < n; j++) dx[j] = rstd * (dy[j] * gain[j] - m1 - v_hat[j] * m2);
}

/* Gate math of one row that has a zoneout mask (keep: 1 keeps the unit's previous value) or
 * not (keep NULL). Each is always inlined and called apart for keep NULL and not NULL, so that
 * both copies test nothing per element: a load of keep[j] under a test of keep is a conditional
 * load, which AVX2 compilers do not vectorise (the whole loop then ran one element at a time). */

/* GRU, forward: a = r, z (in), then n and W_hn h + b_hn; h_t into hn and out. */
static inline __attribute__((always_inline)) void SFX(gru_cell)(int H, const REAL* xr, const REAL* g, const REAL* hp,
                                                                const uint8_t* keep, REAL* a, REAL* hn, REAL* out) {
#pragma omp simd
    for (int j = 0; j < H; j++) {
        const REAL r = a[j], z = a[H + j];
        const REAL ghn = g[2 * H + j];          /* W_hn h + b_hn */
        const REAL n = TANH(xr[2 * H + j] + r * ghn);
        REAL h = (1 - z) * n + z * hp[j];       /* h~ = (1 - z) * n + z * h */
        a[2 * H + j] = n; a[3 * H + j] = ghn;
        if (keep != NULL) h = keep[j] ? hp[j] : h;
        hn[j] = h; out[j] = h;
    }
}

/* RNN (tanh, or relu), forward: a = h~; h_t into hn and out. */
static inline __attribute__((always_inline)) void SFX(rnn_cell)(int H, int relu, const REAL* xr, const REAL* g,
                                                                const REAL* hp, const uint8_t* keep, REAL* a,
                                                                REAL* hn, REAL* out) {
#pragma omp simd
    for (int j = 0; j < H; j++) {
        const REAL pre = xr[j] + g[j];
        REAL h = relu ? (pre > 0 ? pre : 0) : TANH(pre);
        a[j] = h;
        if (keep != NULL) h = keep[j] ? hp[j] : h;
        hn[j] = h; out[j] = h;
    }
}

/* LSTM, backward through c~ = f c + i g: from dc (dL/dc_t in, dL/dc_{t-1} out) and d_c (dL/dc~
 * from h~), the gate gradients of i, f, g into dg; a = i, f, g, o; cp = c_{t-1}. */
static inline __attribute__((always_inline)) void SFX(lstm_cell_backward)(int H, const REAL* a, const REAL* cp,
                                                                          const REAL* d_c, const uint8_t* keep,
                                                                          REAL* dc, REAL* dg) {
#pragma omp simd
    for (int j = 0; j < H; j++) {
        const REAL i = a[j], f = a[H + j], gg = a[2 * H + j];
        const REAL dc_in = dc[j];
        const REAL dc_cand = (keep != NULL && keep[j] ? 0 : dc_in) + d_c[j];
        const REAL dc_keep = keep != NULL && keep[j] ? dc_in : 0;
        const REAL d_i = dc_cand * gg;                    /* c~ = f c + i g */
        const REAL d_f = dc_cand * cp[j];
        const REAL d_g = dc_cand * i;
        dc[j] = dc_cand * f + dc_keep;                    /* dL/dc_{t-1} */
        dg[j] = d_i * i * (1 - i);                        /* through the sigmoids */
        dg[H + j] = d_f * f * (1 - f);
        dg[2 * H + j] = d_g * (1 - gg * gg);              /* and the tanh */
    }
}

/* One step of rnn_forward as the gate math of its rows sees it: every pointer at the slice's
 * first row (hp h_{t-1}, hn h_t, cp c_{t-1}, cn c_t; xr the rows' input side, G*H apart; lengths
 * from b0), in_row0 and row0 that row's index in the (T, BS, *) arrays and in the saved ones. */
typedef struct {
    int cell, t, H, R;
    long in_row0, row0;
    const REAL *hp, *cp, *xr, *bhh, *whr, *ln_hh, *ln_cw, *ln_cb;
    const int64_t* lengths;
    const uint8_t *keep_h, *keep_c;
    REAL *hn, *cn, *out, *work_g, *work_h, *work_c, *acts, *cand, *hr, *ghat, *rstd_h, *chat, *rstd_c;
} SFX(fstep);

/* The gate math of rows lo .. hi-1 of one forward step (after its products): rows never meet, so
 * threads that share a step's products share its rows too. */
static inline __attribute__((always_inline)) void SFX(forward_rows)(const SFX(fstep)* s, int lo, int hi) {
    const int cell = s->cell, H = s->H, R = s->R, GH = gates_of(cell) * H, SH = saved_of(cell) * H;
    for (int b = lo; b < hi; b++) {
        const long in_row = s->in_row0 + b;  /* index of (t, b) in (T, BS, *) arrays */
        const long row = s->row0 + b;        /* and in the saved ones */
        const REAL* hpb = s->hp + (long)b * R;
        REAL* hnb = s->hn + (long)b * R;
        REAL* ob = s->out + in_row * R;
        const REAL* cpb = cell == CELL_LSTM ? s->cp + (long)b * H : NULL;
        REAL* cnb = cell == CELL_LSTM ? s->cn + (long)b * H : NULL;
        if (s->lengths != NULL && s->t >= s->lengths[b]) {  /* past the end: keep the state, output 0 */
            memcpy(hnb, hpb, sizeof(REAL) * R);
            if (cell == CELL_LSTM) memcpy(cnb, cpb, sizeof(REAL) * H);
            memset(ob, 0, sizeof(REAL) * R);
            if (s->ln_hh != NULL) memset(s->ghat + row * GH, 0, sizeof(REAL) * GH);  /* summed later */
            if (s->whr != NULL) memset(s->hr + row * H, 0, sizeof(REAL) * H);
            /* never read, but kept: rnnkit::fused_rnn returns them, and all it returns is set */
            memset(s->acts + row * SH, 0, sizeof(REAL) * SH);
            if (cell == CELL_LSTM) memset(s->cand + row * H, 0, sizeof(REAL) * H);
            if (s->ln_hh != NULL) s->rstd_h[row] = 0;
            if (s->chat != NULL) {
                memset(s->chat + row * H, 0, sizeof(REAL) * H);
                s->rstd_c[row] = 0;
            }
            continue;
        }
        const REAL* xr = s->xr + (long)b * GH;  /* input side */
        REAL* g = s->work_g + (long)b * GH;
        if (s->ln_hh != NULL)
            s->rstd_h[row] = SFX(layer_norm)(GH, g, s->ln_hh, s->bhh, s->ghat + row * GH);
        REAL* a = s->acts + row * SH;
        const uint8_t* kh = s->keep_h != NULL ? s->keep_h + in_row * R : NULL;
        if (cell == CELL_LSTM) {
            const uint8_t* kc = s->keep_c != NULL ? s->keep_c + in_row * H : NULL;
            REAL* cc = s->work_c + (long)b * H;            /* c~ */
            REAL* tc = s->cand + row * H;                  /* tanh(c~), or of LN(c~), kept */
            /* i, f, g, o = sigmoid, sigmoid, tanh, sigmoid of (gi + gh); a loop per kind of
             * gate: one in a loop keeps every value in a register, four spill */
#pragma omp simd
            for (int j = 0; j < 2 * H; j++) a[j] = SFX(sigmoid)(xr[j] + g[j]);  /* i, f */
#pragma omp simd
            for (int j = 2 * H; j < 3 * H; j++) a[j] = TANH(xr[j] + g[j]);      /* g */
#pragma omp simd
            for (int j = 3 * H; j < 4 * H; j++) a[j] = SFX(sigmoid)(xr[j] + g[j]);  /* o */
            if (kc == NULL) {  /* loops without the zoneout test, which would cost a masked load */
#pragma omp simd
                for (int j = 0; j < H; j++) {
                    cc[j] = a[H + j] * cpb[j] + a[j] * a[2 * H + j];  /* c~ = f * c + i * g */
                    cnb[j] = cc[j];
                }
            } else {
#pragma omp simd
                for (int j = 0; j < H; j++) {
                    cc[j] = a[H + j] * cpb[j] + a[j] * a[2 * H + j];
                    cnb[j] = kc[j] ? cpb[j] : cc[j];                 /* zoneout keeps c */
                }
            }
            REAL* c_out = cc;                           /* what enters the tanh of h~ */
            if (s->ln_cw != NULL) {                        /* LN(c~) into work_h's row */
                c_out = s->work_h + (long)b * H;
                memcpy(c_out, cc, sizeof(REAL) * H);
                s->rstd_c[row] = SFX(layer_norm)(H, c_out, s->ln_cw, s->ln_cb, s->chat + row * H);
            }
            if (s->whr != NULL) {                          /* h~ before W_hr, projected below */
                REAL* hrb = s->hr + row * H;
#pragma omp simd
                for (int j = 0; j < H; j++) {
                    tc[j] = TANH(c_out[j]);
                    hrb[j] = a[3 * H + j] * tc[j];
                }
            } else {
#pragma omp simd
                for (int j = 0; j < H; j++) {
                    tc[j] = TANH(c_out[j]);
                    hnb[j] = a[3 * H + j] * tc[j];           /* h~ = o * tanh(c~) */
                }
                if (kh != NULL)                               /* zoneout keeps h */
                    for (int j = 0; j < H; j++) hnb[j] = kh[j] ? hpb[j] : hnb[j];
                memcpy(ob, hnb, sizeof(REAL) * H);
            }
        } else if (cell == CELL_GRU) {
#pragma omp simd
            for (int j = 0; j < 2 * H; j++) a[j] = SFX(sigmoid)(xr[j] + g[j]);  /* r, z */
            if (kh == NULL) SFX(gru_cell)(H, xr, g, hpb, NULL, a, hnb, ob);
            else SFX(gru_cell)(H, xr, g, hpb, kh, a, hnb, ob);
        } else {
            const int relu = cell == CELL_RNN_RELU;
            if (kh == NULL) SFX(rnn_cell)(H, relu, xr, g, hpb, NULL, a, hnb, ob);
            else SFX(rnn_cell)(H, relu, xr, g, hpb, kh, a, hnb, ob);
        }
    }
}

/* Forward over the steps t0 .. t1-1 of T (state carried in hs and cs from step t0 - 1).
 *   xp     (t1 - t0, B, G*H)  the input side of these steps' gates, W_ih x_t + b_ih (layer-
 *                       normalised with layer_norm), computed by the caller; or NULL, and
 *   x      (T, B, I)    the input, whose projection xp_t = x_t @ W_ih^T + b_ih runs at each step
 *                       beside the recurrent one (wih_p: W_ih (G*H, I) packed; bih (G*H,) or NULL)
 *   whh    (G*H, R)     W_hh, R = P with a projection (LSTM), else H;  bhh (G*H,) or NULL
 *   whr    (P, H) or NULL: LSTM projection W_hr; then R = P and h_t = W_hr (o * tanh(c~))
 *   ln_hh  (G*H,) or NULL: gain of LN(W_hh h); then gh = ln_hh * LN(W_hh h) + b_hh
 *   ln_cw, ln_cb (H,) or NULL: LSTM, gain and shift of LN(c) before its tanh
 *   lengths (B,) or NULL: sequence b is valid at steps t < lengths[b]; past it the state is
 *          kept and the output is 0
 *   hmask  (B, R) or NULL: recurrent dropout, multiplies h_{t-1} where it enters W_hh
 *   keep_h (T, B, R), keep_c (T, B, H) or NULL: zoneout, 1 keeps the previous value of a unit
 *   h0 (B, R), c0 (B, H) the initial state (c0: LSTM only); NULL for zeros
 * Writes, for the backward pass
 *   hs     (T+1, B, R)  the state h before and after every step; hs[0] = h_0
 *   cs     (T+1, B, H)  LSTM: the cell state likewise
 *   out    (T, B, R)    h_t, or 0 past a sequence's length
 *   acts   (T, B, S*H)  gate activations: LSTM i, f, g, o; GRU r, z, n, (W_hn h + b_hn) after
 *                       its layer norm; RNN the candidate h~
 *   cand   (T, B, H)    LSTM: tanh(c~_t), or tanh(LN(c~_t)), of the candidate cell state
 *   hr     (T, B, H)    with whr: o * tanh(c~), what W_hr projects (0 past a sequence's length)
 *   ghat   (T, B, G*H), rstd_h (T, B): with ln_hh, LN(W_hh h)'s normalised rows (0 past a
 *                       sequence's length) and 1/sigma
 *   chat   (T, B, H),   rstd_c (T, B): with ln_cw, LN(c~)'s likewise
 * It runs the B sequences b0 .. b0+B-1 of a batch of BS (every (T, B, *) array above is
 * (T, BS, *), and (B, *) is (BS, *)), so that slices of one batch can run in parallel threads.
 * save = 0 (inference, nothing kept for a backward pass): hs and cs are (2, BS, *), the state
 * before and after the step alternating, h_T in hs[T % 2]; acts, cand, hr, ghat, rstd_h, chat
 * and rstd_c hold one step (1, BS, *), overwritten at every step.
 * threads: how many threads share each step's products and its rows' gate math (for one slice
 * alone).
 * Returns 0, or -1 when its scratch memory cannot be had.
 */
static int SFX(rnn_forward)(int cell, int save, int threads, SFX(bmat) whh_p, SFX(bmat) whr_p,
                     SFX(bmat) wih_p, int t0, int t1, int BS, int b0, int B, int H, int R, int I,
                     const REAL* xp, const REAL* x, const REAL* bih, const REAL* bhh, const REAL* whr,
                     const REAL* ln_hh, const REAL* ln_cw, const REAL* ln_cb,
                     const int64_t* lengths, const REAL* hmask, const uint8_t* keep_h,
                     const uint8_t* keep_c, const REAL* h0, const REAL* c0, REAL* hs, REAL* cs,
                     REAL* out, REAL* acts, REAL* cand, REAL* hr, REAL* ghat, REAL* rstd_h,
                     REAL* chat, REAL* rstd_c) {
    const int GH = gates_of(cell) * H;
    const long BR = (long)B * R, BH = (long)B * H;
    /* scratch: work_g (B, G*H) the recurrent pre-activations; work_h (B, H) the masked h, then
     * LN(c~) rows; work_c (B, H) c~; work_p (B, R) the projection; work_x (B, G*H) this step's
     * xp, from x */
    REAL* scratch = malloc(sizeof(REAL) * ((long)B * GH * (x != NULL ? 2 : 1) + 2 * BH + BR));
    if (scratch == NULL) return -1;
    REAL* work_g = scratch;
    REAL* work_h = work_g + (long)B * GH;
    REAL* work_c = work_h + BH;
    REAL* work_p = work_c + BH;
    REAL* work_x = work_p + BR;
    const long step_r = (long)BS * R, step_h = (long)BS * H;  /* one step of (T, BS, R|H) */
    const long off_r = (long)b0 * R, off_h = (long)b0 * H;     /* this slice's first row */
    if (t0 == 0 && h0 != NULL) memcpy(hs + off_r, h0 + off_r, sizeof(REAL) * BR);
    else if (t0 == 0) memset(hs + off_r, 0, sizeof(REAL) * BR);
    if (t0 == 0 && cell == CELL_LSTM) {
        if (c0 != NULL) memcpy(cs + off_h, c0 + off_h, sizeof(REAL) * BH); else memset(cs + off_h, 0, sizeof(REAL) * BH);
    }
    /* b_hh goes in before the product without layer norm, after it with */
    const int bias_first = bhh != NULL && ln_hh == NULL;
    const long keep_t = save ? 1 : 0;  /* steps kept in the saved arrays: all, or the current one */
    for (int t = t0; t < t1; t++) {
        const long slot = save ? t : (t & 1);             /* h_{t-1}'s place in hs and cs */
        const long next_slot = save ? t + 1 : ((t + 1) & 1);
        const REAL* hp = hs + slot * step_r + off_r;      /* h_{t-1} (B, R) */
        REAL* hn = hs + next_slot * step_r + off_r;       /* h_t     (B, R) */
        const REAL* h_in = hp;                            /* what enters W_hh */
        if (hmask != NULL) {
#pragma omp simd
            for (long k = 0; k < BR; k++) work_h[k] = hp[k] * hmask[off_r + k];
            h_in = work_h;
        }
        /* work_g (B, G*H) = b_hh + h_in @ W_hh^T, or ln_hh * LN(h_in @ W_hh^T) + b_hh */
        if (bias_first)
            for (int b = 0; b < B; b++) memcpy(work_g + (long)b * GH, bhh, sizeof(REAL) * GH);
        SFX(gemm)(threads, B, GH, R, h_in, R, whh_p, bias_first, work_g, GH);
        if (x != NULL) {  /* work_x (B, G*H) = b_ih + x_t @ W_ih^T */
            if (bih != NULL)
                for (int b = 0; b < B; b++) memcpy(work_x + (long)b * GH, bih, sizeof(REAL) * GH);
            SFX(gemm)(threads, B, GH, I, x + ((long)t * BS + b0) * I, I, wih_p, bih != NULL, work_x, GH);
        }

        const SFX(fstep) step = {
            cell, t, H, R, (long)t * BS + b0, keep_t * t * BS + b0, hp,
            cell == CELL_LSTM ? cs + slot * step_h + off_h : NULL,
            x != NULL ? work_x : xp + ((long)(t - t0) * BS + b0) * GH, bhh, whr, ln_hh, ln_cw, ln_cb,
            lengths != NULL ? lengths + b0 : NULL, keep_h, keep_c, hn,
            cell == CELL_LSTM ? cs + next_slot * step_h + off_h : NULL, out, work_g, work_h, work_c,
            acts, cand, hr, ghat, rstd_h, chat, rstd_c};
        const int row_threads = threads < B ? threads : B;
        if (row_threads > 1) {
#pragma omp parallel for num_threads(row_threads) schedule(static, 1)
            for (int s = 0; s < row_threads; s++)
                SFX(forward_rows)(&step, (int)((long)s * B / row_threads), (int)((long)(s + 1) * B / row_threads));
        } else {
            SFX(forward_rows)(&step, 0, B);
        }
        if (whr != NULL) {  /* h_t = W_hr h~ for the whole slice: work_p (B, R) = hr[t] @ W_hr^T */
            SFX(gemm)(threads, B, R, H, hr + (keep_t * t * BS + b0) * H, H, whr_p, 0, work_p, R);
            for (int b = 0; b < B; b++) {
                const long row = (long)t * BS + b0 + b;
                if (lengths != NULL && t >= lengths[b0 + b]) continue;  /* done above */
                const REAL* pb = work_p + (long)b * R;
                const REAL* hpb = hp + (long)b * R;
                const uint8_t* kh = keep_h != NULL ? keep_h + row * R : NULL;
                REAL* hnb = hn + (long)b * R;
                REAL* ob = out + row * R;
#pragma omp simd
                for (int j = 0; j < R; j++) {
                    const REAL h = kh != NULL && kh[j] ? hpb[j] : pb[j];
                    hnb[j] = h; ob[j] = h;
                }
            }
        }
    }
    free(scratch);
    return 0;
}

/* One step of rnn_backward as the gate math of its rows sees it: every pointer at the slice's
 * first row (hp h_{t-1}, cp c_{t-1}; dcand dL/dh~ of RNN and GRU; d_raw and d_cout (B, H) and
 * d_cln (H,) scratch of LSTM; lengths from b0), row0 that row's index in the (T, BS, *) arrays. */
typedef struct {
    int cell, t, H, R;
    long row0;
    const REAL *hp, *cp, *acts, *cand, *chat, *rstd_c, *ghat, *rstd_h, *ln_cw, *ln_hh, *d_raw, *dcand;
    const int64_t* lengths;
    const uint8_t* keep_c;
    REAL *dh, *dc, *dgi, *dgh, *dg_post, *dgh_raw, *d_cout, *d_cln, *dln_cw, *dln_cb;
} SFX(bstep);

/* The gate gradients of rows lo .. hi-1 of one backward step, before its product; rows never
 * meet (each adds into its own row of dln_cw and dln_cb, rows 2H apart; but with ln_cw they share
 * the scratch d_cln: then one thread runs them). */
static inline __attribute__((always_inline)) void SFX(backward_rows)(const SFX(bstep)* s, int lo, int hi) {
    const int cell = s->cell, H = s->H, R = s->R, GH = gates_of(cell) * H, SH = saved_of(cell) * H;
    for (int b = lo; b < hi; b++) {
        const long row = s->row0 + b;
        if (s->lengths != NULL && s->t >= s->lengths[b]) continue;
        REAL* dhb = s->dh + (long)b * R;
        REAL* dgib = s->dgi + row * GH;
        const REAL* hpb = s->hp + (long)b * R;
        const REAL* a = s->acts + row * SH;
        if (cell == CELL_LSTM) {
            const uint8_t* kc = s->keep_c != NULL ? s->keep_c + row * H : NULL;
            const REAL* cpb = s->cp + (long)b * H;  /* c_{t-1} */
            const REAL* tcb = s->cand + row * H;   /* tanh(c_out) */
            const REAL* ch = s->ln_cw != NULL ? s->chat + row * H : NULL;
            const REAL* dr = s->d_raw + (long)b * H;  /* dL/d(o * tanh(c_out)) */
            REAL* dcb = s->dc + (long)b * H;
            REAL* d_cout = s->d_cout + (long)b * H;  /* dL/d LN(c~) */
            REAL* d_cln = s->d_cln;                  /* dL/dc~ through LN: one row, one thread */
            /* o * tanh(c_out), c_out = c~ or LN(c~): dL/d c_out into d_cout */
#pragma omp simd
            for (int j = 0; j < H; j++) {
                const REAL o = a[3 * H + j];
                const REAL tc = tcb[j];
                d_cout[j] = dr[j] * o * (1 - tc * tc);
                dgib[3 * H + j] = dr[j] * tc * o * (1 - o);        /* through sigmoid(o) */
            }
            const REAL* d_c = d_cout;                              /* dL/dc~ from h~ */
            if (ch != NULL) {
#pragma omp simd
                for (int j = 0; j < H; j++) {
                    s->dln_cw[(long)b * 2 * H + j] += d_cout[j] * ch[j];
                    s->dln_cb[(long)b * 2 * H + j] += d_cout[j];
                }
                SFX(layer_norm_backward)(H, d_cout, s->ln_cw, ch, s->rstd_c[row], d_cln);
                d_c = d_cln;
            }
            if (kc == NULL) SFX(lstm_cell_backward)(H, a, cpb, d_c, NULL, dcb, dgib);
            else SFX(lstm_cell_backward)(H, a, cpb, d_c, kc, dcb, dgib);
        } else if (cell == CELL_GRU) {
            const REAL* dcand = s->dcand + (long)b * R;
            REAL* dghb = s->dgh + row * GH;
#pragma omp simd
            for (int j = 0; j < H; j++) {
                const REAL r = a[j], z = a[H + j], n = a[2 * H + j], ghn = a[3 * H + j];
                const REAL d_z = dcand[j] * (hpb[j] - n);         /* h~ = (1-z) n + z h */
                const REAL d_n = dcand[j] * (1 - z);
                const REAL d_npre = d_n * (1 - n * n);            /* n = tanh(i_n + r ghn) */
                const REAL d_r = d_npre * ghn;
                const REAL d_rpre = d_r * r * (1 - r);
                const REAL d_zpre = d_z * z * (1 - z);
                dgib[j] = d_rpre; dgib[H + j] = d_zpre; dgib[2 * H + j] = d_npre;
                dghb[j] = d_rpre; dghb[H + j] = d_zpre; dghb[2 * H + j] = d_npre * r;
                dhb[j] += dcand[j] * z;
            }
        } else {
            const int relu = cell == CELL_RNN_RELU;
            const REAL* dcand = s->dcand + (long)b * R;
#pragma omp simd
            for (int j = 0; j < H; j++) {
                const REAL hc = a[j];                             /* h~ = act(pre) */
                dgib[j] = relu ? (hc > 0 ? dcand[j] : 0) : dcand[j] * (1 - hc * hc);
            }
        }
        if (s->ln_hh != NULL)  /* gh = ln_hh * LN(W_hh h) + b_hh: back through the LN */
            SFX(layer_norm_backward)(GH, s->dg_post + row * GH, s->ln_hh, s->ghat + row * GH,
                                     s->rstd_h[row], s->dgh_raw + row * GH);
    }
}

/* Backward over t = T-1 .. 0, the mirror image of rnn_forward.
 * Takes the forward's inputs and saved arrays, and
 *   d_out (T, B, R)  dL/d out_t
 *   dh    (B, R)     in: dL/dh_T (grad of h_n); out: dL/dh_0
 *   dc    (B, H)     LSTM; in: dL/dc_T; out: dL/dc_0
 * Writes
 *   dgi     (T, B, G*H)  dL/dxp: the gradient of the gates' input side
 *   dgh     (T, B, G*H)  GRU only: dL/d(gh), the recurrent side after its layer norm, which
 *                        differs from dgi in the n gate; for RNN and LSTM it is dgi (not written)
 *   dgh_raw (T, B, G*H)  with ln_hh: dL/d(W_hh h), the recurrent side before its layer norm
 *   dproj   (T, B, R)    with whr: dL/d(W_hr h~), for dW_hr = dproj^T hr (0 past a length)
 *   dln_cw, dln_cb (B, H) with ln_cw: the gradients of LN(c)'s gain and shift, accumulated
 *                        row by row, rows 2H apart (the caller sums the rows)
 * Like rnn_forward, it runs the B sequences b0 .. b0+B-1 of a batch of BS, its products and
 * rows' gate math on `threads` threads (its rows on one with ln_cw).
 * Returns 0, or -1 when its scratch memory cannot be had.
 */
static int SFX(rnn_backward)(int cell, int threads, SFX(bmat) whh_p, SFX(bmat) whr_p, int T,
                      int BS, int b0, int B, int H, int R, const REAL* whr, const REAL* ln_hh,
                      const REAL* ln_cw, const int64_t* lengths, const REAL* hmask,
                      const uint8_t* keep_h, const uint8_t* keep_c, const REAL* hs,
                      const REAL* cs, const REAL* acts, const REAL* cand, const REAL* ghat,
                      const REAL* rstd_h, const REAL* chat, const REAL* rstd_c,
                      const REAL* d_out, REAL* dh, REAL* dc, REAL* dgi, REAL* dgh,
                      REAL* dgh_raw, REAL* dproj, REAL* dln_cw, REAL* dln_cb) {
    const int GH = gates_of(cell) * H;
    const long BR = (long)B * R, BH = (long)B * H;
    /* scratch: work (B, R) dL/dh~ (RNN, GRU), then dg_t @ W_hh; d_raw (B, H) dL/d(o * tanh(c_out));
     * d_cout (B, H) dL/d LN(c~); d_cln (H,) dL/dc~ through LN (with ln_cw one thread runs the rows) */
    REAL* work = malloc(sizeof(REAL) * (BR + 2 * BH + H));
    if (work == NULL) return -1;
    REAL* d_raw = work + BR;
    REAL* d_cout = d_raw + BH;
    REAL* d_cln = d_cout + BH;
    REAL* dg_post = cell == CELL_GRU ? dgh : dgi;      /* recurrent side, after its LN */
    REAL* dg_rec = ln_hh != NULL ? dgh_raw : dg_post;  /* what flows back through W_hh */
    const long step_r = (long)BS * R, step_h = (long)BS * H;
    const long off_r = (long)b0 * R, off_h = (long)b0 * H;
    dh += off_r;
    if (dc != NULL) dc += off_h;
    for (int t = T - 1; t >= 0; t--) {
        const REAL* hp = hs + t * step_r + off_r;  /* h_{t-1} */
        /* h's side of each row first: zoneout splits dL/dh_t between h~ and h_{t-1}; with a
         * projection, h~ = W_hr (o * tanh(c_out)) takes one product for the whole slice */
        for (int b = 0; b < B; b++) {
            const long row = (long)t * BS + b0 + b;
            REAL* dhb = dh + (long)b * R;
            if (lengths != NULL && t >= lengths[b0 + b]) {  /* state passed through: grads pass too */
                memset(dgi + row * GH, 0, sizeof(REAL) * GH);
                if (cell == CELL_GRU) memset(dgh + row * GH, 0, sizeof(REAL) * GH);
                if (ln_hh != NULL) memset(dgh_raw + row * GH, 0, sizeof(REAL) * GH);
                if (whr != NULL) memset(dproj + row * R, 0, sizeof(REAL) * R);
                if (cell == CELL_LSTM && whr == NULL) memset(d_raw + (long)b * H, 0, sizeof(REAL) * H);
                continue;
            }
            const REAL* dob = d_out + row * R;
            const uint8_t* kh = keep_h != NULL ? keep_h + row * R : NULL;
            REAL* dcand = cell == CELL_LSTM ? (whr != NULL ? dproj + row * R : d_raw + (long)b * H)
                                            : work + (long)b * R;  /* dL/dh~ */
#pragma omp simd
            for (int j = 0; j < R; j++) {
                const REAL dh_t = dhb[j] + dob[j];                    /* dL/dh_t */
                dcand[j] = kh != NULL && kh[j] ? 0 : dh_t;            /* zoneout: to h~ */
                dhb[j] = dh_t - dcand[j];                             /* or to h_{t-1} */
            }
        }
        if (whr != NULL)  /* d_raw (B, H) = dproj[t] (B, R) @ W_hr (R, H) */
            SFX(gemm)(threads, B, H, R, dproj + ((long)t * BS + b0) * R, R, whr_p, 0, d_raw, H);
        const SFX(bstep) step = {
            cell, t, H, R, (long)t * BS + b0, hp, cell == CELL_LSTM ? cs + t * step_h + off_h : NULL, acts,
            cand, chat, rstd_c, ghat, rstd_h, ln_cw, ln_hh, d_raw, work, lengths != NULL ? lengths + b0 : NULL,
            keep_c, dh, dc, dgi, dgh, dg_post, dgh_raw, d_cout, d_cln, dln_cw, dln_cb};
        const int row_threads = ln_cw != NULL ? 1 : threads < B ? threads : B;
        if (row_threads > 1) {
#pragma omp parallel for num_threads(row_threads) schedule(static, 1)
            for (int s = 0; s < row_threads; s++)
                SFX(backward_rows)(&step, (int)((long)s * B / row_threads), (int)((long)(s + 1) * B / row_threads));
        } else {
            SFX(backward_rows)(&step, 0, B);
        }
        /* dL/dh_{t-1} += (dg_t @ W_hh) * mask: work (B, R) = dg_rec[t] (B, G*H) @ W_hh (G*H, R) */
        SFX(gemm)(threads, B, R, GH, dg_rec + ((long)t * BS + b0) * GH, GH, whh_p, 0, work, R);
        if (hmask != NULL) {
#pragma omp simd
            for (long k = 0; k < BR; k++) dh[k] += work[k] * hmask[off_r + k];
        } else {
#pragma omp simd
            for (long k = 0; k < BR; k++) dh[k] += work[k];
        }
    }
    free(work);
    return 0;
}

/* W_hh (G*H, R), W_hr (R, H) or NULL and W_ih (G*H, I) or NULL, transposed and packed for the
 * products of rnn_forward (h @ W^T) in one block, which is returned (NULL when no memory);
 * *whr_p and *wih_p point into it, or are NULL. */
static REAL* SFX(pack_weights)(int threads, int GH, int H, int R, int I, const REAL* whh, const REAL* whr,
                               const REAL* wih, const REAL** whr_p, const REAL** wih_p) {
    const long size_hh = SFX(packed_size)(GH, R);
    const long size_hr = whr == NULL ? 0 : SFX(packed_size)(R, H);
    const long size_ih = wih == NULL ? 0 : SFX(packed_size)(GH, I);
    REAL* block = aligned_alloc(64, sizeof(REAL) * (size_t)((size_hh + size_hr + size_ih + 15) / 16 * 16));
    if (block == NULL) return NULL;
    SFX(pack)(threads, 1, GH, R, whh, NULL, 1, block);
    *whr_p = *wih_p = NULL;
    if (whr != NULL) {
        SFX(pack)(threads, 1, R, H, whr, NULL, 1, block + size_hh);
        *whr_p = block + size_hh;
    }
    if (wih != NULL) {
        SFX(pack)(threads, 1, GH, I, wih, NULL, 1, block + size_hh + size_hr);
        *wih_p = block + size_hh + size_hr;
    }
    return block;
}

/* Run the batch as n slices of consecutive sequences in an OpenMP parallel region, each slice's
 * whole time loop in one thread: sequences never meet, so no step waits for another thread.
 * The region runs on the OpenMP runtime torch already uses. The weights are packed once, for all
 * slices. With one slice (n = 1), `threads` threads share each step's products instead.
 * The arrays kept for the backward pass (hs, cs, acts, ...: rnnkit_forward_layout) lie in work
 * at the layout's offsets, or, with parts, at parts[W_*] (each its own allocation). h_T and c_T
 * are written to hn and cn. */
int SFX(rnn_forward_slices)(int n, int threads, int pthreads, int chunk, int cell, int save, int T, int B, int H, int R,
                            int I, const REAL* xp, const REAL* x, const REAL* wih, const REAL* bih,
                            const REAL* whh, const REAL* bhh, const REAL* whr,
                            const REAL* ln_hh, const REAL* ln_cw, const REAL* ln_cb,
                            const int64_t* lengths, const REAL* hmask, const uint8_t* keep_h,
                            const uint8_t* keep_c, const REAL* h0, const REAL* c0, REAL* out,
                            REAL* hn, REAL* cn, REAL* work, REAL* const* parts) {
    long at[W_PARTS];
    rnnkit_forward_layout(cell, save, T, B, H, R, (whr != NULL ? HAS_PROJ : 0) | (ln_hh != NULL ? HAS_LN_H : 0)
                          | (ln_cw != NULL ? HAS_LN_C : 0), at);
    if (parts == NULL)
        clear_forward_gaps(work, sizeof(REAL), cell, save, T, B, H, R, (whr != NULL ? HAS_PROJ : 0)
                           | (ln_hh != NULL ? HAS_LN_H : 0) | (ln_cw != NULL ? HAS_LN_C : 0));
#define PART(i) (parts != NULL ? parts[i] : at[i] < 0 ? NULL : work + at[i])
    REAL *hs = PART(W_HS), *cs = PART(W_CS), *acts = PART(W_ACTS), *cand = PART(W_CAND), *hr = PART(W_HR);
    REAL *ghat = PART(W_GHAT), *rstd_h = PART(W_RSTD_H), *chat = PART(W_CHAT), *rstd_c = PART(W_RSTD_C);
#undef PART
    const int GH = gates_of(cell) * H;
    const REAL *whr_packed, *wih_packed;
    /* packed on the threads about to run the loop or the projection: one alone would leave them waiting */
    const int pack_threads = n > 1 ? n : threads > pthreads ? threads : pthreads;
    REAL* block = NULL;
    SFX(bmat) whh_p, whr_p, wih_p;
    if ((long)T * B <= rnnkit_rows_mode_max && (long)GH * R >= ROWS_MODE_MIN_WEIGHTS) {  /* read in place */
        whh_p = SFX(rows)(whh, R);
        whr_p = SFX(rows)(whr, H);
        wih_p = SFX(rows)(x != NULL ? wih : NULL, I);
    } else {
        block = SFX(pack_weights)(pack_threads, GH, H, R, I, whh, whr, x != NULL ? wih : NULL, &whr_packed,
                                  &wih_packed);
        if (block == NULL) return -1;
        whh_p = SFX(packed)(block);
        whr_p = SFX(packed)(whr_packed);
        wih_p = SFX(packed)(wih_packed);
    }
    /* One slice: x's projection, xp = b_ih + x @ W_ih^T (T*B rows, G*H), in chunks of `chunk`
     * steps: all rows of a chunk in one product (W_ih read once per chunk, on pthreads threads),
     * then the time loop over the chunk. Slices: each projects its rows at every step, beside
     * the recurrent product (measured faster than writing and reading back the chunk). */
    const long per_step = (long)B * GH;
    const REAL* x1 = n <= 1 ? x : NULL;  /* what is projected here */
    if (x1 == NULL || chunk < 1 || chunk > T) chunk = T;
    REAL* pre = NULL;
    if (x1 != NULL) {
        pre = malloc(sizeof(REAL) * (size_t)((chunk < T ? chunk : T) * per_step));
        if (pre == NULL) { free(block); return -1; }
    }
    int status = 0;
    for (int t0 = 0; t0 < T && status == 0; t0 += chunk) {
        const int t1 = T - t0 < chunk ? T : t0 + chunk;
        const REAL* xc = xp != NULL ? xp + (long)t0 * per_step : pre;  /* this chunk's input side */
        if (x1 != NULL) {
            if (bih != NULL)
                for (long r = 0; r < (long)(t1 - t0) * B; r++) memcpy(pre + r * GH, bih, sizeof(REAL) * GH);
            SFX(gemm)(pthreads, (t1 - t0) * B, GH, I, x + (long)t0 * B * I, I, wih_p, bih != NULL, pre, GH);
        }
        if (n <= 1) {  /* no parallel region at all: starting one costs more than small work */
            status = SFX(rnn_forward)(cell, save, threads, whh_p, whr_p, wih_p, t0, t1, B, 0, B, H, R, I, xc,
                                      NULL, NULL, bhh, whr, ln_hh, ln_cw, ln_cb, lengths, hmask, keep_h,
                                      keep_c, h0, c0, hs, cs, out, acts, cand, hr, ghat, rstd_h, chat, rstd_c);
        } else {
#pragma omp parallel for num_threads(n) schedule(static, 1) reduction(| : status)
            for (int s = 0; s < n; s++) {
                const int b0 = (int)((long)s * B / n), b1 = (int)((long)(s + 1) * B / n);
                status |= SFX(rnn_forward)(cell, save, 1, whh_p, whr_p, wih_p, t0, t1, B, b0, b1 - b0, H, R, I,
                                           x != NULL ? NULL : xc, x, bih, bhh, whr, ln_hh, ln_cw, ln_cb,
                                           lengths, hmask, keep_h, keep_c, h0, c0, hs, cs, out, acts, cand,
                                           hr, ghat, rstd_h, chat, rstd_c);
            }
        }
    }
    free(pre);
    free(block);
    const long last = save ? T : T % 2;  /* where h_T and c_T are */
    memcpy(hn, hs + last * B * R, sizeof(REAL) * B * R);
    if (cn != NULL) memcpy(cn, cs + last * B * H, sizeof(REAL) * B * H);
    return status;
}

/* Column sums of rows (M x N, rows ld apart) into out (N), each times w's row (M x N) with w,
 * added into double sums so that float32 keeps its precision over T*B rows. */
static void SFX(column_sums)(int M, int N, const REAL* rows, long ld, const REAL* w, double* acc, REAL* out) {
    memset(acc, 0, sizeof(double) * N);
    for (int m = 0; m < M; m++) {
        const REAL* r = rows + (long)m * ld;
        if (w != NULL) {
            const REAL* wr = w + (long)m * ld;
#pragma omp simd
            for (int j = 0; j < N; j++) acc[j] += (double)(r[j] * wr[j]);
        } else {
#pragma omp simd
            for (int j = 0; j < N; j++) acc[j] += r[j];
        }
    }
    for (int j = 0; j < N; j++) out[j] = (REAL)acc[j];
}

/* dW = At^T @ B for At (K x M, rows ldat apart) and B (K x N): B read in place while short, else
 * (and with a mask, times it) packed here: a panel's rows read in place lie N apart, in few
 * cache sets when N is a power of two, and every block of rows of dW reads them again. */
static int SFX(weight_grad)(int threads, int M, int N, int K, const REAL* At, long ldat, const REAL* B,
                            const REAL* mask, int rows, REAL* dW) {
    const int pack = mask != NULL || K > 256;
    REAL* P = aligned_alloc(64, sizeof(REAL) * (size_t)((SFX(packed_size)(pack ? N : 1, K) + 15) / 16 * 16));
    if (P == NULL) return -1;
    if (pack) SFX(pack)(threads, 0, N, K, B, mask, rows, P);
    SFX(gemm_t)(threads, M, N, K, At, ldat, pack ? SFX(packed)(P) : SFX(in_place)(N, K, B, N, P), dW, N);
    free(P);
    return 0;
}

/* The gradients of the weights (and of x, when the forward projected it), from the backward
 * loop's dgi, dgh, dgh_raw and dproj over all TB = T*B rows; each output NULL when not wanted:
 *   dwhh (G*H, R) = dg_rec^T (h_{t-1} * hmask)   dbhh (G*H) = column sums of dg_post
 *   dwih (G*H, I) = dgi^T x                      dbih (G*H) = column sums of dgi
 *   dx   (T, B, I) = dgi @ W_ih                  dln_hh (G*H) = column sums of dg_post * ghat
 *   dwhr (P, H)   = dproj^T hr
 * on `threads` threads. Returns 0, or -1 when its scratch memory cannot be had. */
static int SFX(weight_grads)(int threads, int cell, int T, int B, int H, int R, int I,
                             const REAL* hmask, const REAL* hs, const REAL* x, const REAL* wih,
                             const REAL* hr, const REAL* ghat, const REAL* dgi, const REAL* dgh,
                             const REAL* dgh_raw, const REAL* dproj, REAL* dx, REAL* dwih,
                             REAL* dbih, REAL* dwhh, REAL* dbhh, REAL* dwhr, REAL* dln_hh) {
    const int GH = gates_of(cell) * H, TB = T * B;
    const REAL* dg_post = cell == CELL_GRU ? dgh : dgi;
    const REAL* dg_rec = ghat != NULL ? dgh_raw : dg_post;
    int status = 0;
    if (dwhh != NULL) status |= SFX(weight_grad)(threads, GH, R, TB, dg_rec, GH, hs, hmask, B, dwhh);
    if (dwih != NULL) status |= SFX(weight_grad)(threads, GH, I, TB, dgi, GH, x, NULL, 1, dwih);
    if (dwhr != NULL) status |= SFX(weight_grad)(threads, R, H, TB, dproj, R, hr, NULL, 1, dwhr);
    if (dx != NULL) {  /* (TB, I) = dgi (TB, G*H) @ W_ih (G*H, I), by rows on the threads */
        REAL* P = aligned_alloc(64, sizeof(REAL) * (size_t)((SFX(packed_size)(1, GH) + 15) / 16 * 16));
        if (P == NULL) return -1;
        const SFX(bmat) wih_b = SFX(in_place)(I, GH, wih, I, P);
        const int panels = (I + SFX(NR) - 1) / SFX(NR), blocks = (TB + GEMM_MR - 1) / GEMM_MR;
        const int n = threads < blocks ? threads : blocks;
#pragma omp parallel for num_threads(n) schedule(static, 1) if (n > 1)
        for (int s = 0; s < n; s++) {
            const int m0 = (int)((long)s * blocks / n) * GEMM_MR;
            int m1 = (int)((long)(s + 1) * blocks / n) * GEMM_MR;
            m1 = m1 < TB ? m1 : TB;
            SFX(gemm_panels_n)(0, panels, m1 - m0, I, GH, dgi + (long)m0 * GH, GH, wih_b, 0, dx + (long)m0 * I, I);
        }
        free(P);
    }
    if (dbih != NULL || dbhh != NULL || dln_hh != NULL) {
        double* acc = malloc(sizeof(double) * GH);
        if (acc == NULL) return -1;
        if (dbih != NULL) SFX(column_sums)(TB, GH, dgi, GH, NULL, acc, dbih);
        if (dbhh != NULL) SFX(column_sums)(TB, GH, dg_post, GH, NULL, acc, dbhh);
        if (dln_hh != NULL) SFX(column_sums)(TB, GH, dg_post, GH, ghat, acc, dln_hh);
        free(acc);
    }
    return status;
}

/* The backward loop (rnn_backward) over n slices of the batch, as rnn_forward_slices (work or
 * parts: the forward's arrays; dwork or dparts: its own, rnnkit_backward_layout); then, with
 * wthreads > 0, the weight gradients (weight_grads, on wthreads threads; its outputs x .. dln_hh
 * may each be NULL). dln_c: with ln_cw, (B, 2, H), each row's sums of dln_cw and dln_cb, added
 * up in the order of the rows: the same bits on any number of slices and threads. */
int SFX(rnn_backward_slices)(int n, int threads, int wthreads, int cell, int T, int B, int H, int R, int I,
                             const REAL* whh, const REAL* whr, const REAL* ln_hh,
                             const REAL* ln_cw, const int64_t* lengths,
                             const REAL* hmask, const uint8_t* keep_h, const uint8_t* keep_c,
                             const REAL* work, const REAL* const* parts, const REAL* d_out, REAL* dh,
                             REAL* dc, REAL* dwork, REAL* const* dparts,
                             const REAL* x, const REAL* wih, REAL* dx, REAL* dwih, REAL* dbih,
                             REAL* dwhh, REAL* dbhh, REAL* dwhr, REAL* dln_hh, REAL* dln_cw, REAL* dln_cb) {
    const int flags = (whr != NULL ? HAS_PROJ : 0) | (ln_hh != NULL ? HAS_LN_H : 0) | (ln_cw != NULL ? HAS_LN_C : 0);
    long at[W_PARTS], dat[D_PARTS];
    rnnkit_forward_layout(cell, 1, T, B, H, R, flags, at);
    rnnkit_backward_layout(n, cell, T, B, H, R, flags, dat);
#define PART(i) (parts != NULL ? parts[i] : at[i] < 0 ? NULL : work + at[i])
    const REAL *hs = PART(W_HS), *cs = PART(W_CS), *acts = PART(W_ACTS), *cand = PART(W_CAND), *hr = PART(W_HR);
    const REAL *ghat = PART(W_GHAT), *rstd_h = PART(W_RSTD_H), *chat = PART(W_CHAT), *rstd_c = PART(W_RSTD_C);
#undef PART
#define PART(i) (dparts != NULL ? dparts[i] : dat[i] < 0 ? NULL : dwork + dat[i])
    REAL *dgi = PART(D_GI), *dgh = PART(D_GH), *dgh_raw = PART(D_GH_RAW), *dproj = PART(D_PROJ), *dln_c = PART(D_LN_C);
#undef PART
    if (dln_c != NULL) memset(dln_c, 0, sizeof(REAL) * B * 2 * H);
    /* W_hh (G*H, R) and W_hr (R, H) packed: read at every step, a packed panel is contiguous,
     * where rows read in place lie R apart (with R a power of two, in few cache sets) */
    const int GH = gates_of(cell) * H;
    const long size_hh = SFX(packed_size)(R, GH), size_hr = whr != NULL ? SFX(packed_size)(H, R) : 0;
    REAL* tails = aligned_alloc(64, sizeof(REAL) * (size_t)((size_hh + size_hr + 15) / 16 * 16));
    if (tails == NULL) return -1;
    const int pack_threads = n > 1 ? n : threads;  /* the threads about to run the loop */
    SFX(pack)(pack_threads, 0, R, GH, whh, NULL, 1, tails);
    if (whr != NULL) SFX(pack)(pack_threads, 0, H, R, whr, NULL, 1, tails + size_hh);
    const SFX(bmat) whh_p = SFX(packed)(tails), whr_p = SFX(packed)(whr != NULL ? tails + size_hh : NULL);
    int status = 0;
    if (n <= 1) {
        status = SFX(rnn_backward)(cell, threads, whh_p, whr_p, T, B, 0, B, H, R, whr, ln_hh, ln_cw,
                                   lengths, hmask, keep_h, keep_c, hs, cs, acts, cand, ghat,
                                   rstd_h, chat, rstd_c, d_out, dh, dc, dgi, dgh, dgh_raw, dproj,
                                   dln_c, dln_c != NULL ? dln_c + H : NULL);
    } else {
#pragma omp parallel for num_threads(n) schedule(static, 1) reduction(| : status)
        for (int s = 0; s < n; s++) {
            const int b0 = (int)((long)s * B / n), b1 = (int)((long)(s + 1) * B / n);
            REAL* own = dln_c != NULL ? dln_c + (long)b0 * 2 * H : NULL;  /* the slice's rows (b1 - b0, 2, H) */
            status |= SFX(rnn_backward)(cell, 1, whh_p, whr_p, T, B, b0, b1 - b0, H, R, whr, ln_hh,
                                        ln_cw, lengths, hmask, keep_h, keep_c, hs, cs, acts,
                                        cand, ghat, rstd_h, chat, rstd_c, d_out, dh, dc, dgi, dgh,
                                        dgh_raw, dproj, own, own != NULL ? own + H : NULL);
        }
    }
    free(tails);
    if (dln_c != NULL) {  /* the rows' sums, added in their order, into whichever of the two is wanted */
        for (int part = 0; part < 2; part++) {
            REAL* sum = part == 0 ? dln_cw : dln_cb;
            if (sum == NULL) continue;
            for (int j = 0; j < H; j++) sum[j] = 0;
            for (long b = 0; b < B; b++)
                for (int j = 0; j < H; j++) sum[j] += dln_c[b * 2 * H + (long)part * H + j];
        }
    }
    if (status == 0 && wthreads > 0)
        status = SFX(weight_grads)(wthreads, cell, T, B, H, R, I, hmask, hs, x, wih, hr, ghat, dgi, dgh,
                                   dgh_raw, dproj, dx, dwih, dbih, dwhh, dbhh, dwhr, dln_hh);
    return status;
}

/* dst[t, b, 0:C] = src[s, b, 0:C] (add: +=) for every step t and row b, where s = t, or with
 * reverse the step t reads within the row's length (lengths[b] - 1 - t for t < lengths[b]; the
 * padding stays in place; NULL lengths: all T). Rows of src lie ss numbers apart, of dst ds: a
 * column block of a wider array (a direction's half of a layer's output) is read or written
 * where it lies. As rnnkit.engines.reverse_padded, whose inverse it is too. */
static void SFX(stack_copy)(int T, int B, int C, const int64_t* lengths, int reverse, int add, const REAL* src,
                            long ss, REAL* dst, long ds) {
    for (int t = 0; t < T; t++)
        for (int b = 0; b < B; b++) {
            long s = t;
            if (reverse) {
                const long len = lengths != NULL ? lengths[b] : T;
                if (t < len) s = len - 1 - t;
            }
            const REAL* from = src + (s * B + b) * ss;
            REAL* to = dst + ((long)t * B + b) * ds;
            if (add) {
                for (int c = 0; c < C; c++) to[c] += from[c];
            } else {
                memcpy(to, from, sizeof(REAL) * (size_t)C);
            }
        }
}

/* A whole stack (layers L, directions D) of one cell family, forward and backward, in one call
 * each: the cells' kernels (rnn_forward_slices, rnn_backward_slices) in turn, with the
 * reversals of the second direction and the concatenation of a layer's directions done here.
 * No layer norm, noise or dropout between layers; the weight gradients in the kernels.
 *
 * plan (ints, STACK_HEAD of them first): cell, L, D, T, B, H, R, I0 and the cells' flags
 * (HAS_PROJ or 0); then per cell (k = layer * D + direction) its forward's slices, threads,
 * projection threads and chunk, and its backward's slices, threads and weight-gradient threads
 * (STACK_CELL_INTS). Arrays: x (T, B, I0); lengths (B) or NULL;
 * weights: per cell h0, c0, w_ih, b_ih, w_hh, b_hh, w_hr (NULL where absent); inner (L-1, T, B,
 * D*R), the output of every layer but the last (the next one's input); out (T, B, D*R), the
 * last's; revs (D = 2): each layer's input reversed within the lengths, layer 0's (T, B, I0)
 * then the others' (T, B, D*R); hn (L*D, B, R) and cn (L*D, B, H) (LSTM; else NULL); works: the
 * cells' forward workspaces, one each (as rnnkit_forward_layout lays it out; one allocation per
 * cell, as when each cell runs alone); scratch (T, B, R) for D = 2. */
int SFX(rnn_stack_forward)(const int* plan, const REAL* x, const int64_t* lengths, const REAL* const* weights,
                           REAL* inner, REAL* out, REAL* revs, REAL* hn, REAL* cn, REAL* const* works,
                           REAL* scratch) {
    const int cell = plan[0], L = plan[1], D = plan[2], T = plan[3], B = plan[4], H = plan[5], R = plan[6];
    const int I0 = plan[7];
    const long TB = (long)T * B, DR = (long)D * R;
    for (int l = 0; l < L; l++) {
        const int I = l == 0 ? I0 : (int)DR;
        const REAL* in = l == 0 ? x : inner + (l - 1) * TB * DR;
        REAL* layer_out = l == L - 1 ? out : inner + l * TB * DR;
        for (int d = 0; d < D; d++) {
            const int k = l * D + d;
            const int* q = plan + STACK_HEAD + STACK_CELL_INTS * k;
            const REAL* const* w = weights + 7 * k;
            const REAL* seen = in;
            if (d == 1) {
                REAL* rev = revs + (l == 0 ? 0 : TB * I0 + (l - 1) * TB * DR);
                SFX(stack_copy)(T, B, I, lengths, 1, 0, in, I, rev, I);
                seen = rev;
            }
            REAL* o = D == 1 ? layer_out : scratch;
            const int status = SFX(rnn_forward_slices)(
                q[0], q[1], q[2], q[3], cell, 1, T, B, H, R, I, NULL, seen, w[2], w[3], w[4], w[5], w[6], NULL,
                NULL, NULL, lengths, NULL, NULL, NULL, w[0], w[1], o, hn + (long)k * B * R,
                cn != NULL ? cn + (long)k * B * H : NULL, works[k], NULL);
            if (status != 0) return status;
            if (D > 1) SFX(stack_copy)(T, B, R, lengths, d == 1, 0, scratch, R, layer_out + (long)d * R, DR);
        }
    }
    return 0;
}

/* The scratch rnn_stack_backward needs: two layers' output gradients (T, B, D*R), a direction's
 * (T, B, R), an input gradient (T, B, max(I0, D*R)), dh (B, R), dc (B, H) and the largest of the
 * cells' backward workspaces, each from a 64-byte line (at: where each starts). Returns the
 * elements in all. */
static long SFX(stack_scratch)(const int* plan, long* at) {
    const int cell = plan[0], L = plan[1], D = plan[2], T = plan[3], B = plan[4], H = plan[5], R = plan[6];
    const long TB = (long)T * B, DR = (long)D * R, I = plan[7] > DR ? plan[7] : DR;
    long dwork = 0;
    for (int k = 0; k < L * D; k++) {
        const long size = rnnkit_backward_layout(plan[STACK_HEAD + STACK_CELL_INTS * k + 4], cell, T, B, H, R,
                                                 plan[8], NULL);
        if (size > dwork) dwork = size;
    }
    const long sizes[6] = {2 * TB * DR, TB * R, TB * I, (long)B * R, (long)B * H, dwork};
    return lay_out(6, sizes, at);
}

long SFX(rnn_stack_backward_scratch)(const int* plan) {
    long at[6];
    return SFX(stack_scratch)(plan, at);
}

/* The backward pass of rnn_stack_forward, from the top layer down: d_out (T, B, D*R), d_hn
 * (L*D, B, R), d_cn (L*D, B, H), each NULL for zeros; grads: per cell dh0, dc0, dw_ih, db_ih,
 * dw_hh, db_hh, dw_hr, NULL where not wanted; dx (T, B, I0) or NULL; below: bit l set when layer
 * l's input needs its gradient (the input of the stack, or a weight or state below). Each
 * direction's input gradient, put back in order, is summed into the layer below's output
 * gradient. scratch: rnn_stack_backward_scratch's elements. */
int SFX(rnn_stack_backward)(const int* plan, const REAL* x, const int64_t* lengths, const REAL* const* weights,
                            const REAL* inner, const REAL* revs, const REAL* const* works,
                            const REAL* d_out, const REAL* d_hn, const REAL* d_cn, REAL* const* grads, REAL* dx,
                            int below, REAL* scratch) {
    const int cell = plan[0], L = plan[1], D = plan[2], T = plan[3], B = plan[4], H = plan[5], R = plan[6];
    const int I0 = plan[7];
    const long TB = (long)T * B, DR = (long)D * R;
    long at[6];
    SFX(stack_scratch)(plan, at);
    REAL* layer_grads[2] = {scratch + at[0], scratch + at[0] + TB * DR};
    REAL *d_part = scratch + at[1], *d_in_cell = scratch + at[2], *dh_own = scratch + at[3];
    REAL *dc_own = scratch + at[4], *dwork = scratch + at[5];
    const REAL* d_layer = d_out;  /* the output gradient of layer l (T, B, D*R); NULL: zeros */
    for (int l = L - 1; l >= 0; l--) {
        const int I = l == 0 ? I0 : (int)DR;
        const int need_in = (below >> l) & 1;
        REAL* d_in = !need_in ? NULL : l == 0 ? dx : layer_grads[l & 1];
        int d_in_set = 0;
        for (int d = 0; d < D; d++) {
            const int k = l * D + d;
            const int* q = plan + STACK_HEAD + STACK_CELL_INTS * k;
            const REAL* const* w = weights + 7 * k;
            REAL* const* g = grads + 7 * k;
            int wanted = need_in;
            for (int j = 0; j < 7; j++) wanted |= g[j] != NULL;
            if (!wanted) continue;
            if (d_layer != NULL) {
                SFX(stack_copy)(T, B, R, lengths, d == 1, 0, d_layer + (long)d * R, DR, d_part, R);
            } else {
                memset(d_part, 0, sizeof(REAL) * (size_t)(TB * R));
            }
            REAL* dh = g[0] != NULL ? g[0] : dh_own;  /* in: dh_T; out: dh_0 */
            if (d_hn != NULL) memcpy(dh, d_hn + (long)k * B * R, sizeof(REAL) * (size_t)B * R);
            else memset(dh, 0, sizeof(REAL) * (size_t)B * R);
            REAL* dc = NULL;
            if (cell == CELL_LSTM) {
                dc = g[1] != NULL ? g[1] : dc_own;
                if (d_cn != NULL) memcpy(dc, d_cn + (long)k * B * H, sizeof(REAL) * (size_t)B * H);
                else memset(dc, 0, sizeof(REAL) * (size_t)B * H);
            }
            const REAL* seen = l == 0 ? (d == 1 ? revs : x)
                                      : (d == 1 ? revs + TB * I0 + (l - 1) * TB * DR : inner + (l - 1) * TB * DR);
            const int status = SFX(rnn_backward_slices)(
                q[4], q[5], q[6], cell, T, B, H, R, I, w[4], w[6], NULL, NULL, lengths, NULL, NULL, NULL,
                works[k], NULL, d_part, dh, dc, dwork, NULL, seen, w[2], need_in ? d_in_cell : NULL,
                g[2], g[3], g[4], g[5], g[6], NULL, NULL, NULL);
            if (status != 0) return status;
            if (need_in) {
                SFX(stack_copy)(T, B, I, lengths, d == 1, d_in_set, d_in_cell, I, d_in, I);
                d_in_set = 1;
            }
        }
        if (need_in && !d_in_set) memset(d_in, 0, sizeof(REAL) * (size_t)(TB * I));
        d_layer = d_in;
    }
    return 0;
}

/* The minimal cells' candidate h~ from its pre-activation c: g(c) = c + 1/2 for c >= 0, sigmoid(c)
 * below (g), else c; and its derivative. (One condition a line: nested ones do not vectorise.) */
static inline __attribute__((always_inline)) REAL SFX(min_candidate)(int g, REAL c) {
    const REAL sc = SFX(sigmoid)(c);
    const REAL gc = c >= 0 ? c + (REAL)0.5 : sc;
    return g ? gc : c;
}

static inline __attribute__((always_inline)) REAL SFX(min_candidate_slope)(int g, REAL c) {
    const REAL sc = SFX(sigmoid)(c);
    const REAL dg = c >= 0 ? (REAL)1 : sc * ((REAL)1 - sc);
    return g ? dg : (REAL)1;
}

/* The minimal GRU and LSTM (rnnkit/cells/_min.py; rnnkit::min_scan, cpu/min_scan_kernel.cpp):
 * sequences b0 .. b1 - 1 over all steps, from the gates' pre-activations pre (T, B, G*H) (G = 2:
 * z, c; G = 3: f, i, c), into out (T, B, H), zeros past each sequence's length; h (scratch,
 * (b1 - b0) * H) carries the state. The candidate: min_candidate. Step by step, the rows of a
 * step lie next to each other in pre and out, so the pass streams through memory; each unit's step is a few lines of elementwise math, which the
 * compiler vectorises along the row. */
static inline __attribute__((always_inline)) void SFX(min_row)(int lstm, int g, int H, const REAL* p, REAL* h,
                                                               REAL* o) {
    const REAL* pc = p + (long)(lstm ? 2 : 1) * H;
    if (lstm) {
        const REAL* pi = p + H;
#pragma omp simd
        for (int j = 0; j < H; j++) {
            const REAL cand = SFX(min_candidate)(g, pc[j]);
            const REAL f = SFX(sigmoid)(p[j]), i = SFX(sigmoid)(pi[j]);
            const REAL hn = (f * h[j] + i * cand) / (f + i);
            h[j] = hn;
            o[j] = hn;
        }
    } else {
#pragma omp simd
        for (int j = 0; j < H; j++) {
            const REAL cand = SFX(min_candidate)(g, pc[j]);
            const REAL z = SFX(sigmoid)(p[j]);
            const REAL hn = ((REAL)1 - z) * h[j] + z * cand;
            h[j] = hn;
            o[j] = hn;
        }
    }
}

void SFX(min_scan_rows)(int lstm, int g, int T, int B, int H, int b0, int b1, const REAL* pre, const REAL* h0,
                        const int64_t* lengths, REAL* out, REAL* h) {
    const long GH = (long)(lstm ? 3 : 2) * H;
    for (int b = b0; b < b1; b++)
        for (int j = 0; j < H; j++) h[(long)(b - b0) * H + j] = h0 != NULL ? h0[(long)b * H + j] : 0;
    for (int t = 0; t < T; t++)
        for (int b = b0; b < b1; b++) {
            REAL* o = out + ((long)t * B + b) * H;
            if (lengths != NULL && t >= lengths[b]) {  /* past the sequence's length */
                memset(o, 0, sizeof(REAL) * (size_t)H);
                continue;
            }
            SFX(min_row)(lstm, g, H, pre + ((long)t * B + b) * GH, h + (long)(b - b0) * H, o);
        }
}

/* Its backward pass over the same sequences, steps in reverse, h_{t-1} read from out (h0, or 0, at
 * the first step): d_pre (T, B, G*H) at those rows, zeros past each length, and d_h0 (B, H); carry
 * (scratch, (b1 - b0) * H) holds dL/dh_t through the later steps. d_out (T, B, H) is the gradient of
 * out, the final state's included. */
static inline __attribute__((always_inline)) void SFX(min_row_backward)(int lstm, int g, int H, const REAL* dout,
                                                                        const REAL* p, const REAL* hp, REAL* dp,
                                                                        REAL* carry) {
    const REAL* pc = p + (long)(lstm ? 2 : 1) * H;
    REAL* dpc = dp + (long)(lstm ? 2 : 1) * H;
    if (lstm) {
        const REAL* pi = p + H;
        REAL* dpi = dp + H;
#pragma omp simd
        for (int j = 0; j < H; j++) {
            const REAL gt = dout[j] + carry[j];
            const REAL cand = SFX(min_candidate)(g, pc[j]), dcand = SFX(min_candidate_slope)(g, pc[j]);
            const REAL f = SFX(sigmoid)(p[j]), i = SFX(sigmoid)(pi[j]), s = f + i;
            const REAL d_fn = gt * hp[j], d_in = gt * cand;  /* d of f / (f + i) and of i / (f + i) */
            dp[j] = (d_fn - d_in) * i / (s * s) * f * ((REAL)1 - f);
            dpi[j] = (d_in - d_fn) * f / (s * s) * i * ((REAL)1 - i);
            dpc[j] = gt * (i / s) * dcand;
            carry[j] = gt * (f / s);
        }
    } else {
#pragma omp simd
        for (int j = 0; j < H; j++) {
            const REAL gt = dout[j] + carry[j];
            const REAL cand = SFX(min_candidate)(g, pc[j]), dcand = SFX(min_candidate_slope)(g, pc[j]);
            const REAL z = SFX(sigmoid)(p[j]);
            dp[j] = gt * (cand - hp[j]) * z * ((REAL)1 - z);
            dpc[j] = gt * z * dcand;
            carry[j] = gt * ((REAL)1 - z);
        }
    }
}

void SFX(min_scan_backward_rows)(int lstm, int g, int T, int B, int H, int b0, int b1, const REAL* d_out,
                                 const REAL* pre, const REAL* h0, const REAL* out, const int64_t* lengths,
                                 REAL* d_pre, REAL* d_h0, REAL* carry, const REAL* zeros) {
    const long GH = (long)(lstm ? 3 : 2) * H;
    memset(carry, 0, sizeof(REAL) * (size_t)(b1 - b0) * (size_t)H);
    for (int t = T - 1; t >= 0; t--)
        for (int b = b0; b < b1; b++) {
            const long row = (long)t * B + b;
            if (lengths != NULL && t >= lengths[b]) {  /* past the sequence's length: no gradient */
                memset(d_pre + row * GH, 0, sizeof(REAL) * (size_t)GH);
                continue;
            }
            const REAL* hp = t > 0 ? out + (row - B) * H : (h0 != NULL ? h0 + (long)b * H : zeros);
            SFX(min_row_backward)(lstm, g, H, d_out + row * H, pre + row * GH, hp, d_pre + row * GH,
                                  carry + (long)(b - b0) * H);
        }
    memcpy(d_h0 + (long)b0 * H, carry, sizeof(REAL) * (size_t)(b1 - b0) * (size_t)H);
}
