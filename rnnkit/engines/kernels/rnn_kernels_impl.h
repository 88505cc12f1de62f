/* The kernels for one floating-point type; included by rnn_kernels.c with REAL, SFX, EXP, TANH.
 *
 * Shapes (row-major, time-major): T steps, B batch, H hidden, G gates (1 RNN, 4 LSTM, 3 GRU),
 * S saved activations per unit (1 RNN, 4 LSTM and GRU). A "row" is one (t, b).
 */

typedef void (*SFX(gemm_t))(const char*, const char*, const int*, const int*, const int*,
                            const REAL*, const REAL*, const int*, const REAL*, const int*,
                            const REAL*, REAL*, const int*);

static int SFX(use_blas)(void* blas, int M, int N, int K) {
    return blas != NULL && (long)M * N * K >= BLAS_MIN_WORK;
}

/* C (M x N) = beta * C + A (M x K) @ op(Bm), row-major; op(Bm) = Bm^T with Bm (N x K) when
 * trans_b, else Bm (K x N). beta is 0 or 1. Without the BLAS, trans_b needs Bt, Bm transposed
 * (K x N), so that every loop runs along contiguous rows (no horizontal sums). */
static void SFX(matmul)(void* blas, int trans_b, int M, int N, int K, const REAL* A,
                        const REAL* Bm, const REAL* Bt, REAL beta, REAL* C) {
    if (SFX(use_blas)(blas, M, N, K)) {
        /* Column-major BLAS computes C^T = op(Bm)^T A^T. */
        const REAL one = 1;
        SFX(gemm_t) gemm = (SFX(gemm_t))blas;
        if (trans_b)
            gemm("T", "N", &N, &M, &K, &one, Bm, &K, A, &K, &beta, C, &N);
        else
            gemm("N", "N", &N, &M, &K, &one, Bm, &N, A, &K, &beta, C, &N);
        return;
    }
    const REAL* B_rows = trans_b ? Bt : Bm;  /* (K x N) */
    for (int i = 0; i < M; i++) {
        REAL* c = C + (long)i * N;
        const REAL* a = A + (long)i * K;
        if (beta == 0)
            memset(c, 0, sizeof(REAL) * N);
        for (int k = 0; k < K; k++) {
            const REAL ak = a[k];
            const REAL* b = B_rows + (long)k * N;
#pragma omp simd
            for (int j = 0; j < N; j++) c[j] += ak * b[j];
        }
    }
}

/* dst (cols x rows) = src (rows x cols)^T */
static void SFX(transpose)(int rows, int cols, const REAL* src, REAL* dst) {
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) dst[(long)c * rows + r] = src[(long)r * cols + c];
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

/* Forward over T steps.
 *   xp     (T, B, G*H)  the input side of every step's gates, W_ih x_t + b_ih (layer-normalised
 *                       with layer_norm), computed by the caller before the loop
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
 *   cand   (T, B, H)    LSTM: the candidate cell state c~_t (tanh of it, or of LN(c~_t), enters dh)
 *   hr     (T, B, H)    with whr: o * tanh(c~), what W_hr projects (0 past a sequence's length)
 *   ghat   (T, B, G*H), rstd_h (T, B): with ln_hh, LN(W_hh h)'s normalised rows (0 past a
 *                       sequence's length) and 1/sigma
 *   chat   (T, B, H),   rstd_c (T, B): with ln_cw, LN(c~)'s likewise
 * It runs the B sequences b0 .. b0+B-1 of a batch of BS (every (T, B, *) array above is
 * (T, BS, *), and (B, *) is (BS, *)), so that slices of one batch can run in parallel threads.
 * save = 0 (inference, nothing kept for a backward pass): hs and cs are (2, BS, *), the state
 * before and after the step alternating, h_T in hs[T % 2]; acts, cand, hr, ghat, rstd_h, chat
 * and rstd_c hold one step (1, BS, *), overwritten at every step.
 * Returns 0, or -1 when its scratch memory cannot be had.
 */
int SFX(rnn_forward)(int cell, int save, void* blas, int T, int BS, int b0, int B, int H, int R,
                     const REAL* xp, const REAL* whh, const REAL* bhh, const REAL* whr,
                     const REAL* ln_hh, const REAL* ln_cw, const REAL* ln_cb,
                     const int64_t* lengths, const REAL* hmask, const uint8_t* keep_h,
                     const uint8_t* keep_c, const REAL* h0, const REAL* c0, REAL* hs, REAL* cs,
                     REAL* out, REAL* acts, REAL* cand, REAL* hr, REAL* ghat, REAL* rstd_h,
                     REAL* chat, REAL* rstd_c) {
    const int G = gates_of(cell), S = saved_of(cell), GH = G * H, SH = S * H;
    const long BR = (long)B * R, BH = (long)B * H;
    const int own_product = !SFX(use_blas)(blas, B, GH, R);
    const int own_projection = whr != NULL && !SFX(use_blas)(blas, B, R, H);
    /* scratch: work_g (B, G*H) the recurrent pre-activations; work_h (B, H) the masked h, then
     * LN(c~) rows; work_p (B, R) the projection; for the kernels' own products W_hh^T (R, G*H)
     * and W_hr^T (H, R) */
    REAL* scratch = malloc(sizeof(REAL) * ((long)B * GH + BH + BR + (own_product ? (long)R * GH : 0)
                                           + (own_projection ? (long)H * R : 0)));
    if (scratch == NULL) return -1;
    REAL* work_g = scratch;
    REAL* work_h = work_g + (long)B * GH;
    REAL* work_p = work_h + BH;
    REAL* next = work_p + BR;
    const REAL* whh_t = NULL;
    if (own_product) {
        SFX(transpose)(GH, R, whh, next);
        whh_t = next;
        next += (long)R * GH;
    }
    const REAL* whr_t = NULL;
    if (own_projection) {
        SFX(transpose)(R, H, whr, next);
        whr_t = next;
    }
    const long step_r = (long)BS * R, step_h = (long)BS * H;  /* one step of (T, BS, R|H) */
    const long off_r = (long)b0 * R, off_h = (long)b0 * H;     /* this slice's first row */
    if (h0 != NULL) memcpy(hs + off_r, h0 + off_r, sizeof(REAL) * BR); else memset(hs + off_r, 0, sizeof(REAL) * BR);
    if (cell == CELL_LSTM) {
        if (c0 != NULL) memcpy(cs + off_h, c0 + off_h, sizeof(REAL) * BH); else memset(cs + off_h, 0, sizeof(REAL) * BH);
    }
    /* b_hh goes in before the product without layer norm, after it with */
    const int bias_first = bhh != NULL && ln_hh == NULL;
    const long keep_t = save ? 1 : 0;  /* steps kept in the saved arrays: all, or the current one */
    for (int t = 0; t < T; t++) {
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
        SFX(matmul)(blas, 1, B, GH, R, h_in, whh, whh_t, bias_first ? 1 : 0, work_g);

        for (int b = 0; b < B; b++) {
            const long in_row = (long)t * BS + b0 + b;  /* index of (t, b) in (T, BS, *) arrays */
            const long row = keep_t * t * BS + b0 + b;  /* and in the saved ones */
            const REAL* hpb = hp + (long)b * R;
            REAL* hnb = hn + (long)b * R;
            REAL* ob = out + in_row * R;
            const REAL* cpb = cell == CELL_LSTM ? cs + slot * step_h + off_h + (long)b * H : NULL;
            REAL* cnb = cell == CELL_LSTM ? cs + next_slot * step_h + off_h + (long)b * H : NULL;
            if (lengths != NULL && t >= lengths[b0 + b]) {  /* past the end: keep the state, output 0 */
                memcpy(hnb, hpb, sizeof(REAL) * R);
                if (cell == CELL_LSTM) memcpy(cnb, cpb, sizeof(REAL) * H);
                memset(ob, 0, sizeof(REAL) * R);
                if (ln_hh != NULL) memset(ghat + row * GH, 0, sizeof(REAL) * GH);  /* summed later */
                if (whr != NULL) memset(hr + row * H, 0, sizeof(REAL) * H);
                continue;
            }
            const REAL* x = xp + in_row * GH;
            REAL* g = work_g + (long)b * GH;
            if (ln_hh != NULL)
                rstd_h[row] = SFX(layer_norm)(GH, g, ln_hh, bhh, ghat + row * GH);
            REAL* a = acts + row * SH;
            const uint8_t* kh = keep_h != NULL ? keep_h + in_row * R : NULL;
            if (cell == CELL_LSTM) {
                const uint8_t* kc = keep_c != NULL ? keep_c + in_row * H : NULL;
                REAL* cc = cand + row * H;
#pragma omp simd
                for (int j = 0; j < H; j++) {
                    /* i, f, g, o = sigmoid, sigmoid, tanh, sigmoid of (gi + gh) */
                    const REAL i = SFX(sigmoid)(x[j] + g[j]);
                    const REAL f = SFX(sigmoid)(x[H + j] + g[H + j]);
                    const REAL gg = TANH(x[2 * H + j] + g[2 * H + j]);
                    const REAL o = SFX(sigmoid)(x[3 * H + j] + g[3 * H + j]);
                    a[j] = i; a[H + j] = f; a[2 * H + j] = gg; a[3 * H + j] = o;
                    cc[j] = f * cpb[j] + i * gg;            /* c~ = f * c + i * g */
                    cnb[j] = kc != NULL && kc[j] ? cpb[j] : cc[j];  /* zoneout keeps c */
                }
                REAL* c_out = cc;                           /* what enters the tanh of h~ */
                if (ln_cw != NULL) {                        /* LN(c~) into work_h's row */
                    c_out = work_h + (long)b * H;
                    memcpy(c_out, cc, sizeof(REAL) * H);
                    rstd_c[row] = SFX(layer_norm)(H, c_out, ln_cw, ln_cb, chat + row * H);
                }
                if (whr != NULL) {                          /* h~ before W_hr, projected below */
                    REAL* hrb = hr + row * H;
#pragma omp simd
                    for (int j = 0; j < H; j++) hrb[j] = a[3 * H + j] * TANH(c_out[j]);
                } else {
#pragma omp simd
                    for (int j = 0; j < H; j++) {
                        REAL h = a[3 * H + j] * TANH(c_out[j]);  /* h~ = o * tanh(c~) */
                        if (kh != NULL) h = kh[j] ? hpb[j] : h;   /* zoneout keeps h */
                        hnb[j] = h; ob[j] = h;
                    }
                }
            } else if (cell == CELL_GRU) {
#pragma omp simd
                for (int j = 0; j < H; j++) {
                    const REAL r = SFX(sigmoid)(x[j] + g[j]);
                    const REAL z = SFX(sigmoid)(x[H + j] + g[H + j]);
                    const REAL ghn = g[2 * H + j];          /* W_hn h + b_hn */
                    const REAL n = TANH(x[2 * H + j] + r * ghn);
                    REAL h = (1 - z) * n + z * hpb[j];      /* h~ = (1 - z) * n + z * h */
                    a[j] = r; a[H + j] = z; a[2 * H + j] = n; a[3 * H + j] = ghn;
                    if (kh != NULL) h = kh[j] ? hpb[j] : h;
                    hnb[j] = h; ob[j] = h;
                }
            } else {
                const int relu = cell == CELL_RNN_RELU;
#pragma omp simd
                for (int j = 0; j < H; j++) {
                    const REAL pre = x[j] + g[j];
                    REAL h = relu ? (pre > 0 ? pre : 0) : TANH(pre);
                    a[j] = h;
                    if (kh != NULL) h = kh[j] ? hpb[j] : h;
                    hnb[j] = h; ob[j] = h;
                }
            }
        }
        if (whr != NULL) {  /* h_t = W_hr h~ for the whole slice: work_p (B, R) = hr[t] @ W_hr^T */
            SFX(matmul)(blas, 1, B, R, H, hr + (keep_t * t * BS + b0) * H, whr, whr_t, 0, work_p);
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
 *   dln_cw, dln_cb (H,)  with ln_cw: the gradients of LN(c)'s gain and shift, accumulated
 *                        (give each slice its own, and sum them)
 * Like rnn_forward, it runs the B sequences b0 .. b0+B-1 of a batch of BS.
 * Returns 0, or -1 when its scratch memory cannot be had.
 */
int SFX(rnn_backward)(int cell, void* blas, int T, int BS, int b0, int B, int H, int R,
                      const REAL* whh, const REAL* whr, const REAL* ln_hh, const REAL* ln_cw,
                      const REAL* ln_cb, const int64_t* lengths, const REAL* hmask,
                      const uint8_t* keep_h, const uint8_t* keep_c, const REAL* hs,
                      const REAL* cs, const REAL* acts, const REAL* cand, const REAL* ghat,
                      const REAL* rstd_h, const REAL* chat, const REAL* rstd_c,
                      const REAL* d_out, REAL* dh, REAL* dc, REAL* dgi, REAL* dgh,
                      REAL* dgh_raw, REAL* dproj, REAL* dln_cw, REAL* dln_cb) {
    const int G = gates_of(cell), S = saved_of(cell), GH = G * H, SH = S * H;
    const long BR = (long)B * R, BH = (long)B * H;
    /* scratch: work (B, R) dg_t @ W_hh; d_raw (B, H) dL/d(o * tanh(c_out)); two (H,) rows */
    REAL* work = malloc(sizeof(REAL) * (BR + BH + 2 * (long)H));
    if (work == NULL) return -1;
    REAL* d_raw = work + BR;
    REAL* d_cout = d_raw + BH;  /* (H,) dL/d LN(c~) */
    REAL* d_cln = d_cout + H;   /* (H,) dL/dc~ through LN */
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
            SFX(matmul)(blas, 0, B, H, R, dproj + ((long)t * BS + b0) * R, whr, NULL, 0, d_raw);
        for (int b = 0; b < B; b++) {
            const long row = (long)t * BS + b0 + b;
            if (lengths != NULL && t >= lengths[b0 + b]) continue;
            REAL* dhb = dh + (long)b * R;
            REAL* dgib = dgi + row * GH;
            const REAL* hpb = hp + (long)b * R;
            const REAL* a = acts + row * SH;
            if (cell == CELL_LSTM) {
                const uint8_t* kc = keep_c != NULL ? keep_c + row * H : NULL;
                const REAL* cpb = cs + t * step_h + off_h + (long)b * H;  /* c_{t-1} */
                const REAL* cc = cand + row * H;                          /* c~_t */
                const REAL* ch = ln_cw != NULL ? chat + row * H : NULL;
                const REAL* dr = d_raw + (long)b * H;  /* dL/d(o * tanh(c_out)) */
                REAL* dcb = dc + (long)b * H;
                /* o * tanh(c_out), c_out = c~ or LN(c~): dL/d c_out into d_cout */
#pragma omp simd
                for (int j = 0; j < H; j++) {
                    const REAL o = a[3 * H + j];
                    const REAL tc = TANH(ch != NULL ? ln_cw[j] * ch[j] + ln_cb[j] : cc[j]);
                    d_cout[j] = dr[j] * o * (1 - tc * tc);
                    dgib[3 * H + j] = dr[j] * tc * o * (1 - o);        /* through sigmoid(o) */
                }
                const REAL* d_c = d_cout;                              /* dL/dc~ from h~ */
                if (ch != NULL) {
#pragma omp simd
                    for (int j = 0; j < H; j++) {
                        dln_cw[j] += d_cout[j] * ch[j];
                        dln_cb[j] += d_cout[j];
                    }
                    SFX(layer_norm_backward)(H, d_cout, ln_cw, ch, rstd_c[row], d_cln);
                    d_c = d_cln;
                }
#pragma omp simd
                for (int j = 0; j < H; j++) {
                    const REAL i = a[j], f = a[H + j], gg = a[2 * H + j];
                    const REAL dc_in = dcb[j];
                    const REAL dc_cand = (kc != NULL && kc[j] ? 0 : dc_in) + d_c[j];
                    const REAL dc_keep = kc != NULL && kc[j] ? dc_in : 0;
                    const REAL d_i = dc_cand * gg;                    /* c~ = f c + i g */
                    const REAL d_f = dc_cand * cpb[j];
                    const REAL d_g = dc_cand * i;
                    dcb[j] = dc_cand * f + dc_keep;                   /* dL/dc_{t-1} */
                    dgib[j] = d_i * i * (1 - i);                      /* through the sigmoids */
                    dgib[H + j] = d_f * f * (1 - f);
                    dgib[2 * H + j] = d_g * (1 - gg * gg);            /* and the tanh */
                }
            } else if (cell == CELL_GRU) {
                const REAL* dcand = work + (long)b * R;
                REAL* dghb = dgh + row * GH;
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
                const REAL* dcand = work + (long)b * R;
#pragma omp simd
                for (int j = 0; j < H; j++) {
                    const REAL hc = a[j];                             /* h~ = act(pre) */
                    dgib[j] = relu ? (hc > 0 ? dcand[j] : 0) : dcand[j] * (1 - hc * hc);
                }
            }
            if (ln_hh != NULL)  /* gh = ln_hh * LN(W_hh h) + b_hh: back through the LN */
                SFX(layer_norm_backward)(GH, dg_post + row * GH, ln_hh, ghat + row * GH,
                                         rstd_h[row], dgh_raw + row * GH);
        }
        /* dL/dh_{t-1} += (dg_t @ W_hh) * mask: work (B, R) = dg_rec[t] (B, G*H) @ W_hh (G*H, R) */
        SFX(matmul)(blas, 0, B, R, GH, dg_rec + ((long)t * BS + b0) * GH, whh, NULL, 0, work);
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

/* Run the batch as n slices of consecutive sequences in an OpenMP parallel region, each slice's
 * whole time loop in one thread: sequences never meet, so no step waits for another thread.
 * The region runs on the OpenMP runtime torch already uses, and a BLAS called inside it runs on
 * one thread. dln_c: with ln_cw, (n, 2, H), each slice's sums of dln_cw and dln_cb. */
int SFX(rnn_forward_slices)(int n, int cell, int save, void* blas, int T, int B, int H, int R,
                            const REAL* xp, const REAL* whh, const REAL* bhh, const REAL* whr,
                            const REAL* ln_hh, const REAL* ln_cw, const REAL* ln_cb,
                            const int64_t* lengths, const REAL* hmask, const uint8_t* keep_h,
                            const uint8_t* keep_c, const REAL* h0, const REAL* c0, REAL* hs,
                            REAL* cs, REAL* out, REAL* acts, REAL* cand, REAL* hr, REAL* ghat,
                            REAL* rstd_h, REAL* chat, REAL* rstd_c) {
    if (n <= 1)  /* no region at all: inside one, even an inactive one, the BLAS would start a
                  * nested team of threads at every call */
        return SFX(rnn_forward)(cell, save, blas, T, B, 0, B, H, R, xp, whh, bhh, whr, ln_hh, ln_cw,
                                ln_cb, lengths, hmask, keep_h, keep_c, h0, c0, hs, cs, out, acts,
                                cand, hr, ghat, rstd_h, chat, rstd_c);
    int status = 0;
#pragma omp parallel for num_threads(n) schedule(static, 1) reduction(| : status)
    for (int s = 0; s < n; s++) {
        const int b0 = (int)((long)s * B / n), b1 = (int)((long)(s + 1) * B / n);
        status |= SFX(rnn_forward)(cell, save, blas, T, B, b0, b1 - b0, H, R, xp, whh, bhh, whr, ln_hh,
                                   ln_cw, ln_cb, lengths, hmask, keep_h, keep_c, h0, c0, hs, cs,
                                   out, acts, cand, hr, ghat, rstd_h, chat, rstd_c);
    }
    return status;
}

int SFX(rnn_backward_slices)(int n, int cell, void* blas, int T, int B, int H, int R,
                             const REAL* whh, const REAL* whr, const REAL* ln_hh,
                             const REAL* ln_cw, const REAL* ln_cb, const int64_t* lengths,
                             const REAL* hmask, const uint8_t* keep_h, const uint8_t* keep_c,
                             const REAL* hs, const REAL* cs, const REAL* acts, const REAL* cand,
                             const REAL* ghat, const REAL* rstd_h, const REAL* chat,
                             const REAL* rstd_c, const REAL* d_out, REAL* dh, REAL* dc,
                             REAL* dgi, REAL* dgh, REAL* dgh_raw, REAL* dproj, REAL* dln_c) {
    if (n <= 1)  /* as in rnn_forward_slices */
        return SFX(rnn_backward)(cell, blas, T, B, 0, B, H, R, whh, whr, ln_hh, ln_cw, ln_cb,
                                 lengths, hmask, keep_h, keep_c, hs, cs, acts, cand, ghat, rstd_h,
                                 chat, rstd_c, d_out, dh, dc, dgi, dgh, dgh_raw, dproj, dln_c,
                                 dln_c != NULL ? dln_c + H : NULL);
    int status = 0;
#pragma omp parallel for num_threads(n) schedule(static, 1) reduction(| : status)
    for (int s = 0; s < n; s++) {
        const int b0 = (int)((long)s * B / n), b1 = (int)((long)(s + 1) * B / n);
        REAL* own = dln_c != NULL ? dln_c + (long)s * 2 * H : NULL;  /* (2, H) */
        status |= SFX(rnn_backward)(cell, blas, T, B, b0, b1 - b0, H, R, whh, whr, ln_hh, ln_cw,
                                    ln_cb, lengths, hmask, keep_h, keep_c, hs, cs, acts, cand,
                                    ghat, rstd_h, chat, rstd_c, d_out, dh, dc, dgi, dgh, dgh_raw,
                                    dproj, own, own != NULL ? own + H : NULL);
    }
    return status;
}
