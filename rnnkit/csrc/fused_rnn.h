// rnnkit's operator library: what its files share.
//
// The operators (schemas in ops.cpp, torchvision's layout):
//   rnnkit::fused_rnn / fused_rnn_backward      one layer and direction over the whole sequence
//   rnnkit::fused_stack / fused_stack_backward  every layer and direction of a stack
//   rnnkit::min_scan / min_scan_backward        one layer and direction of a minGRU or minLSTM
//   rnnkit::int8_pack / int8_stack / int8_linear int8 inference (cpu/int8_kernel.cpp)
//   rnnkit::bf16_pack / bf16_stack               bfloat16 inference (the same file)
//   (rnnkit::fused_stack of bfloat16 tensors: bfloat16 training, cpu/bf16_train_kernel.cpp)
// with their CPU kernels (cpu/), which plan and call the C kernels (cpu/rnn_kernels.c), and their
// autograd kernels (autograd/). The plan of a call (threads, slices of the batch, projection
// chunks, workspaces) is made here in C++, so that a graph run without Python (AOTInductor)
// makes the same choices, and gives the same bits, as a call from Python.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

extern "C" {
#define RNNKIT_DECLARE_MIN_KERNELS(REAL, SFX)                                                                      \
    void min_scan_rows##SFX(int lstm, int g, int T, int B, int H, int b0, int b1, const REAL* pre, const REAL* h0, \
                            const int64_t* lengths, REAL* out, REAL* h);                                          \
    void min_scan_backward_rows##SFX(int lstm, int g, int T, int B, int H, int b0, int b1, const REAL* d_out,     \
                                     const REAL* pre, const REAL* h0, const REAL* out, const int64_t* lengths,    \
                                     REAL* d_pre, REAL* d_h0, REAL* carry, const REAL* zeros);
RNNKIT_DECLARE_MIN_KERNELS(float, _f32)
RNNKIT_DECLARE_MIN_KERNELS(double, _f64)
#undef RNNKIT_DECLARE_MIN_KERNELS
typedef struct {
    const int8_t* P;
    const int32_t* sums;
    const float* scale;
} rnnkit_int8_matrix;
long rnnkit_int8_packed_size(int G, int H, int K);
void rnnkit_int8_pack(int G, int H, int K, const int8_t* w, int8_t* P, int32_t* sums);
int rnnkit_int8_linear(int threads, int M, int N, int K, const float* x, long ldx, rnnkit_int8_matrix w,
                       const float* bias, float* y, long ldy);
int rnnkit_int8_cell(int threads, int cell, int reverse, int T, int B, int I, int H, int R, const float* x, long ldx,
                     rnnkit_int8_matrix wih, rnnkit_int8_matrix whh, rnnkit_int8_matrix whr, const float* bih,
                     const float* bhh, const int64_t* lengths, const float* h0, const float* c0, float* out,
                     long ldo, float* hn, float* cn);
int rnnkit_bf16_cell(int threads, int cell, int reverse, int T, int B, int I, int H, int R, const float* x,
                     const uint16_t* xb, long ldx,
                     rnnkit_int8_matrix wih, rnnkit_int8_matrix whh, rnnkit_int8_matrix whr, const float* bih,
                     const float* bhh, const int64_t* lengths, const float* h0, const float* c0, float* out,
                     long ldo, float* hn, float* cn);
int rnnkit_bf16_cell_saved(int threads, int cell, int reverse, int T, int B, int I, int H, const float* x,
                           const uint16_t* xb, long ldx,
                           rnnkit_int8_matrix wih, rnnkit_int8_matrix whh, const float* bih, const float* bhh,
                           const int64_t* lengths, const float* h0, const float* c0, float* out, long ldo, float* hn,
                           float* cn, float* saved);
int rnnkit_bf16_cell_backward(int threads, int cell, int reverse, int T, int B, int H, rnnkit_int8_matrix whh_t,
                              const float* saved, const uint16_t* out, long ldo, const int64_t* lengths,
                              const float* h0, const float* c0, const uint16_t* dout, long ldd, const float* dhn,
                              const float* dcn, uint16_t* dgx, uint16_t* dgh, long ldg, uint16_t* hprev, float* dbx,
                              float* dbh, float* dh0, float* dc0);
long rnnkit_bf16_packed_size(int G, int H, int K);
void rnnkit_bf16_pack(int G, int H, int K, const uint16_t* w, uint16_t* P);
int rnnkit_bf16_native(void);
extern int rnnkit_int8_path;
extern long rnnkit_int8_chunk_bytes;
int rnnkit_int8_vnni(void);
long rnnkit_forward_layout(int cell, int save, int T, int B, int H, int R, int flags, long* offsets);
long rnnkit_backward_layout(int n, int cell, int T, int B, int H, int R, int flags, long* offsets);
int rnnkit_kernels_parallel(void);
int rnnkit_kernels_version(void);
extern int rnnkit_rows_mode_max;
extern const long rnnkit_rows_mode_min_weights;

#define RNNKIT_DECLARE_KERNELS(REAL, SFX)                                                                          \
    int rnn_forward_slices##SFX(                                                                                   \
        int n, int threads, int pthreads, int chunk, int cell, int save, int T, int B, int H, int R, int I,      \
        const REAL* xp, const REAL* x, const REAL* wih, const REAL* bih, const REAL* whh, const REAL* bhh,        \
        const REAL* whr, const REAL* ln_hh, const REAL* ln_cw, const REAL* ln_cb, const int64_t* lengths,         \
        const REAL* hmask, const uint8_t* keep_h, const uint8_t* keep_c, const REAL* h0, const REAL* c0,          \
        REAL* out, REAL* hn, REAL* cn, REAL* work, REAL* const* parts);                                           \
    int rnn_backward_slices##SFX(                                                                                  \
        int n, int threads, int wthreads, int cell, int T, int B, int H, int R, int I, const REAL* whh,          \
        const REAL* whr, const REAL* ln_hh, const REAL* ln_cw, const int64_t* lengths, const REAL* hmask,         \
        const uint8_t* keep_h, const uint8_t* keep_c, const REAL* work, const REAL* const* parts,                 \
        const REAL* d_out, REAL* dh, REAL* dc, REAL* dwork, REAL* const* dparts, const REAL* x, const REAL* wih,  \
        REAL* dx, REAL* dwih, REAL* dbih, REAL* dwhh, REAL* dbhh, REAL* dwhr, REAL* dln_hh, REAL* dln_cw,         \
        REAL* dln_cb);                                                                                           \
    int rnn_stack_forward##SFX(const int* plan, const REAL* x, const int64_t* lengths, const REAL* const* weights, \
                               REAL* inner, REAL* out, REAL* revs, REAL* hn, REAL* cn, REAL* const* works,       \
                               REAL* scratch);                                                                   \
    long rnn_stack_backward_scratch##SFX(const int* plan);                                                        \
    int rnn_stack_backward##SFX(const int* plan, const REAL* x, const int64_t* lengths, const REAL* const* weights, \
                                const REAL* inner, const REAL* revs, const REAL* const* works,                   \
                                const REAL* d_out, const REAL* d_hn, const REAL* d_cn, REAL* const* grads,       \
                                REAL* dx, int below, REAL* scratch);
RNNKIT_DECLARE_KERNELS(float, _f32)
RNNKIT_DECLARE_KERNELS(double, _f64)
#undef RNNKIT_DECLARE_KERNELS
}

namespace rnnkit {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

// The cell families, as the kernels number them, and their gates.
enum Cell { RNN_TANH = 0, RNN_RELU = 1, LSTM = 2, GRU = 3 };
Cell cell_of(std::string_view mode);
int gates_of(Cell cell);

// Where the kernels lay out their workspaces (rnn_kernels.c: W_* and D_*)
enum { W_HS = 0, W_CS, W_ACTS, W_CAND, W_HR, W_GHAT, W_RSTD_H, W_CHAT, W_RSTD_C, W_PARTS };
enum { D_GI = 0, D_GH, D_GH_RAW, D_PROJ, D_LN_C, D_PARTS };
enum { HAS_PROJ = 1, HAS_LN_H = 2, HAS_LN_C = 4 };
constexpr int STACK_CELL_ARGS = 7;  // per cell of a stack: h0, c0, w_ih, b_ih, w_hh, b_hh, w_hr

// A layout function's total size (elements) and where each array starts (-1: absent).
template <int N>
struct Layout {
    long total = 0;
    std::array<long, N> at{};
    bool parts = false;  // each array its own allocation (a large workspace), else one block
};

// What the kernels' calls for one shape need beyond its tensors (cpu/plan.cpp).
struct Plan {
    int slices;            // the forward's slices of the batch
    int threads;           // the forward's threads sharing each step's products
    int backward_slices;
    int backward_threads;
    int pthreads;          // the input projection's threads
    int chunk;             // steps projected at once
    int weight_threads;    // the weight gradients' threads in the backward kernel; 0: by torch after it
    Layout<W_PARTS> saved;    // the forward workspace: all steps kept
    Layout<W_PARTS> unsaved;  // and for a call that keeps nothing
    Layout<D_PARTS> dlayout;  // the backward workspace
};

Plan plan_for(Cell cell, int itemsize, int64_t T, int64_t B, int64_t I, int64_t GH, int64_t R, int flags, int threads);

struct StackPlan {
    bool one_call;            // one kernel call serves the backward pass too
    std::vector<int> ints;    // STACK_HEAD ints, then STACK_CELL_INTS per cell (rnn_kernels.c)
    long scratch;             // the backward pass's scratch (rnn_stack_backward_scratch)
    std::vector<Plan> cells;
};

StackPlan stack_plan_for(Cell cell, at::ScalarType dtype, int64_t L, int64_t D, int64_t T, int64_t B, int64_t I,
                         int64_t GH, int64_t R, int flags, int threads);

// The kernels' policy (cpu/plan.cpp): thresholds that decide how a call is planned, never its
// numbers; one of them by name, for rnnkit::_policy (tests and benchmarks set them).
int64_t& policy_setting(std::string_view name);

// The kernels' threads: torch's (at::get_num_threads()), unless the policy's "threads" is set.
int num_threads();

// CPU kernels of the operators (cpu/), also called by the other files.
std::tuple<Tensor, Tensor, Tensor, Tensor> fused_rnn_cpu(
    const Tensor& x, const OptTensor& w_ih, const OptTensor& b_ih, const OptTensor& h0, const OptTensor& c0,
    const Tensor& w_hh, const OptTensor& b_hh, const OptTensor& w_hr, const OptTensor& ln_hh,
    const OptTensor& ln_cw, const OptTensor& ln_cb, const OptTensor& lengths, const OptTensor& h_mask,
    const OptTensor& keep_h, const OptTensor& keep_c, c10::string_view mode, bool save);

// The backward pass of one cell: the gradients of x, w_ih, b_ih, h0, c0, w_hh, b_hh, w_hr, ln_hh,
// ln_cw and ln_cb (undefined where not needed).
std::vector<Tensor> cell_backward(Cell cell, const OptTensor& d_out, const OptTensor& d_hn, const OptTensor& d_cn,
                                  const Tensor& work, const Tensor& x, const OptTensor& w_ih, const Tensor& w_hh,
                                  const OptTensor& w_hr, const OptTensor& ln_hh, const OptTensor& ln_cw,
                                  const OptTensor& lengths, const OptTensor& h_mask, const OptTensor& keep_h,
                                  const OptTensor& keep_c, bool has_bias_ih, bool has_bias,
                                  const std::array<bool, 11>& needs);

// lengths (B,) as the kernels read them, int64 and contiguous; refused outside [1, T].
OptTensor checked_lengths(const OptTensor& lengths, int64_t B, int64_t T);

// x (T, B, *) with each sequence reversed within its length (rnnkit.engines.reverse_padded).
Tensor reverse_padded(const Tensor& x, const OptTensor& lengths);

// rnnkit::fused_stack and its backward pass for a bfloat16 stack (cpu/bf16_train_kernel.cpp):
// flat holds STACK_CELL_ARGS tensors per cell (undefined where absent; no w_hr). The forward
// pass returns out, h_n, c_n, inner (every layer's output, (L, T, B, D*H)), an
// empty revs, and each cell's saved float32 activations; the backward pass x's gradient and the
// flat entries' (undefined where not needed).
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, std::vector<Tensor>> bf16_stack_forward(
    Cell cell, int64_t L, int64_t D, const Tensor& x, const OptTensor& lengths, const std::vector<Tensor>& flat);
std::pair<Tensor, std::vector<Tensor>> bf16_stack_backward(Cell cell, int64_t L, int64_t D, const Tensor& x,
                                                           const OptTensor& lengths, const std::vector<Tensor>& flat,
                                                           const Tensor& inner, at::TensorList works,
                                                           const OptTensor& d_out, const OptTensor& d_hn,
                                                           const OptTensor& d_cn, bool needs_x,
                                                           const std::vector<bool>& needs_flat);
// The numbers a bfloat16 stack's forward pass saves per cell: T * B * (5 H for an LSTM or GRU, H
// for an RNN), float32.
int64_t bf16_saved_size(Cell cell, int64_t T, int64_t B, int64_t H);

// The C kernels of one floating-point type.
template <typename real>
struct Kernels;
template <>
struct Kernels<float> {
    static constexpr auto forward = rnn_forward_slices_f32;
    static constexpr auto backward = rnn_backward_slices_f32;
    static constexpr auto stack_forward = rnn_stack_forward_f32;
    static constexpr auto stack_backward = rnn_stack_backward_f32;
    static constexpr auto stack_scratch = rnn_stack_backward_scratch_f32;
};
template <>
struct Kernels<double> {
    static constexpr auto forward = rnn_forward_slices_f64;
    static constexpr auto backward = rnn_backward_slices_f64;
    static constexpr auto stack_forward = rnn_stack_forward_f64;
    static constexpr auto stack_backward = rnn_stack_backward_f64;
    static constexpr auto stack_scratch = rnn_stack_backward_scratch_f64;
};

// f(real{}) for the dtype's C type, real float or double (the operators' two dtypes).
template <typename F>
auto by_dtype(at::ScalarType dtype, F f) {
    return dtype == at::kDouble ? f(double{}) : f(float{});
}

}  // namespace rnnkit
