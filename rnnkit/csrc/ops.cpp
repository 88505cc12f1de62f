// rnnkit's operators: their schemas, and two helpers for tests and benchmarks.
//
// Kernels: cpu/ (CPU, float32 and float64), autograd/ (the autograd formulas). Python registers
// what must be Python (rnnkit/engines/_fused_op.py): the fake kernels for tracing, the vmap rules,
// and the *_grad_by_reference operators, which differentiate the reference equations when a graph
// of the gradient is asked for (create_graph=True). A process that loads this library alone (an
// AOTInductor package served without rnnkit) runs the operators' kernels, forward and backward.
#include "fused_rnn.h"

#include <c10/util/Exception.h>
#include <torch/library.h>

namespace rnnkit {

namespace {

// Reads, and with value >= 0 sets, a setting of the kernels' policy (cpu/plan.cpp); returns the
// value before. "kernels_parallel", "kernels_version", "rows_mode_min_weights", "int8_vnni" and
// "bf16_native" are read-only.
int64_t policy_op(c10::string_view name_, int64_t value) {
    const std::string_view name(name_.data(), name_.size());
    if (name == "kernels_parallel") return rnnkit_kernels_parallel();
    if (name == "kernels_version") return rnnkit_kernels_version();
    if (name == "rows_mode_min_weights") return rnnkit_rows_mode_min_weights;
    if (name == "int8_vnni") return rnnkit_int8_vnni();
    if (name == "bf16_native") return rnnkit_bf16_native();
    if (name == "int8_path") {  // the int8 products: 0 the best built, 1 AVX2's, 2 plain C (int8_kernels.h)
        const int64_t before = rnnkit_int8_path;
        if (value >= 0) rnnkit_int8_path = static_cast<int>(value);
        return before;
    }
    if (name == "int8_chunk_bytes") {  // bytes of input projections the int8 kernels compute at a time
        const int64_t before = rnnkit_int8_chunk_bytes;
        if (value >= 0) rnnkit_int8_chunk_bytes = static_cast<long>(value);
        return before;
    }
    if (name == "rows_mode_max") {  // the kernels' own (rnn_kernels.c)
        const int64_t before = rnnkit_rows_mode_max;
        if (value >= 0) rnnkit_rows_mode_max = static_cast<int>(value);
        return before;
    }
    int64_t& setting = policy_setting(name);
    const int64_t before = setting;
    if (value >= 0) setting = value;
    return before;
}

// A cell's plan as ints: slices, threads, backward_slices, backward_threads, pthreads, chunk,
// weight_threads, the workspaces' sizes (saved, unsaved, backward), and whether the unsaved and
// backward ones are parts.
std::vector<int64_t> plan_op(c10::string_view mode, at::ScalarType dtype, int64_t T, int64_t B, int64_t I,
                             int64_t GH, int64_t R, int64_t flags) {
    const Plan p = plan_for(cell_of(std::string_view(mode.data(), mode.size())), dtype == at::kDouble ? 8 : 4, T, B,
                            I, GH, R, static_cast<int>(flags), num_threads());
    return {p.slices, p.threads, p.backward_slices, p.backward_threads, p.pthreads, p.chunk, p.weight_threads,
            p.saved.total, p.unsaved.total, p.dlayout.total, p.unsaved.parts, p.dlayout.parts};
}

// A stack's plan as ints: one_call, scratch, then the kernels' plan ints.
std::vector<int64_t> stack_plan_op(c10::string_view mode, at::ScalarType dtype, int64_t L, int64_t D, int64_t T,
                                   int64_t B, int64_t I, int64_t GH, int64_t R, int64_t flags) {
    const StackPlan p = stack_plan_for(cell_of(std::string_view(mode.data(), mode.size())), dtype, L, D, T, B, I, GH,
                                       R, static_cast<int>(flags), num_threads());
    std::vector<int64_t> ints{p.one_call, p.scratch};
    ints.insert(ints.end(), p.ints.begin(), p.ints.end());
    return ints;
}

}  // namespace

TORCH_LIBRARY(rnnkit, m) {
    // the fake kernels, vmap rules and *_grad_by_reference kernels are registered by this module
    m.set_python_module("rnnkit.engines._fused_op");
    m.def(
        "fused_rnn(Tensor x, Tensor? w_ih, Tensor? b_ih, Tensor? h0, Tensor? c0, Tensor w_hh, Tensor? b_hh, "
        "Tensor? w_hr, Tensor? ln_hh, Tensor? ln_cw, Tensor? ln_cb, Tensor? lengths, Tensor? h_mask, "
        "Tensor? keep_h, Tensor? keep_c, str mode, bool save) -> (Tensor, Tensor, Tensor, Tensor)");
    m.def(
        "fused_rnn_backward(Tensor? d_out, Tensor? d_hn, Tensor? d_cn, Tensor work, Tensor x, Tensor? w_ih, "
        "Tensor w_hh, Tensor? w_hr, Tensor? ln_hh, Tensor? ln_cw, Tensor? lengths, Tensor? h_mask, Tensor? keep_h, "
        "Tensor? keep_c, str mode, bool has_bias_ih, bool has_bias, bool[] needs) -> (Tensor, Tensor, Tensor, "
        "Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
    m.def(
        "fused_stack(Tensor x, Tensor? lengths, Tensor[] weights, bool[] present, str mode, int layers, "
        "int directions) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor[])");
    m.def(
        "fused_stack_backward(Tensor? d_out, Tensor? d_hn, Tensor? d_cn, Tensor x, Tensor? lengths, "
        "Tensor[] weights, bool[] present, Tensor inner, Tensor revs, Tensor[] works, str mode, int layers, "
        "int directions, bool[] needs) -> Tensor[]");
    m.def(
        "fused_rnn_grad_by_reference(Tensor? d_out, Tensor? d_hn, Tensor? d_cn, Tensor x, Tensor? w_ih, "
        "Tensor? b_ih, Tensor? h0, Tensor? c0, Tensor w_hh, Tensor? b_hh, Tensor? w_hr, Tensor? ln_hh, "
        "Tensor? ln_cw, Tensor? ln_cb, Tensor? lengths, Tensor? h_mask, Tensor? keep_h, Tensor? keep_c, str mode, "
        "bool[] needs) -> Tensor[]");
    m.def(
        "fused_stack_grad_by_reference(Tensor? d_out, Tensor? d_hn, Tensor? d_cn, Tensor x, Tensor? lengths, "
        "Tensor[] weights, bool[] present, str mode, int layers, int directions, bool[] needs) -> Tensor[]");
    // the minimal GRU and LSTM (cpu/min_scan_kernel.cpp); autograd, fake kernel and vmap rule in
    // rnnkit/engines/_min_op.py
    m.def("min_scan(Tensor pre, Tensor? h0, Tensor? lengths, str kind, str candidate) -> Tensor");
    m.def("min_scan_backward(Tensor d_out, Tensor pre, Tensor? h0, Tensor out, Tensor? lengths, str kind, "
          "str candidate) -> (Tensor, Tensor)");
    m.def("_policy(str name, int value=-1) -> int", &policy_op);
    m.def("_plan(str mode, ScalarType dtype, int T, int B, int I, int GH, int R, int flags) -> int[]", &plan_op);
    m.def("_stack_plan(str mode, ScalarType dtype, int L, int D, int T, int B, int I, int GH, int R, int flags) "
          "-> int[]", &stack_plan_op);
}

}  // namespace rnnkit
