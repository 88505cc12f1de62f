// The plan of a kernel call: how many threads, slices of the batch and projection chunks, and the
// workspaces' layouts, from the call's shape and torch's thread count. The plan changes no
// number: the kernels give the same bits on any thread count (tests/engines/test_threads.py).
// The measurements behind each constant are in benchmarks/README.md ("The kernels' policy").
#include "../fused_rnn.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <string>

namespace rnnkit {

namespace {

struct Policy {
    int64_t parallel_min_rows, parallel_min_work, step_parallel_min_work, shared_step_min_bytes,
        shared_step_max_rows, projection_chunk, kernel_weight_grads_max_work, workspace_block_max, threads,
        int8_step_parallel_min_work;
};

Policy& the_policy() {
    static Policy p{
        8,  // parallel_min_rows: each thread's slice of the batch has at least this many sequences
        // parallel_min_work: multiply-adds below which one thread runs a loop's products (a
        // step's synchronisation costs about as much as 1M multiply-adds of work)
        1'000'000,
        // step_parallel_min_work: one step's recurrent product (B * G*H * R) from which an
        // unsliced batch shares it among threads
        100'000,
        // shared_step_min_bytes, shared_step_max_rows: the forward pass shares each step's product
        // instead of slicing the batch when W_hh has at least this many bytes and the slices
        // would have at most this many rows (slices each stream all of W_hh at every step)
        int64_t(1) << 22, 16,
        // projection_chunk: numbers of the input projection held at once (memory stays bounded)
        int64_t(1) << 21,
        // kernel_weight_grads_max_work: multiply-adds of the weight gradients up to which the
        // backward kernel computes them (summing over few rows, its products beat the BLAS's)
        50'000'000,
        // workspace_block_max: bytes up to which a workspace is one allocation (glibc maps
        // larger ones fresh, faulted in and zeroed, at each call)
        int64_t(1) << 24,
        0,  // threads: the kernels' thread count; 0: torch's
        // int8_step_parallel_min_work: one step's int8 recurrent product (B * G*H * R) from which
        // the int8 kernels share each step among threads (int8 multiply-adds cost about a quarter
        // of float32 ones)
        400'000,
    };
    return p;
}

int slice_count(bool parallel, int64_t T, int64_t B, int64_t GH, int64_t H, int threads) {
    const Policy& p = the_policy();
    if (!parallel || T * B * GH * H < p.parallel_min_work) return 1;
    return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, B / p.parallel_min_rows)));
}

// The forward's slices: the backward's, or one for large weights over slices of few rows.
int forward_slices(int slices, int64_t B, int64_t GH, int64_t R, int itemsize) {
    const Policy& p = the_policy();
    if (slices > 1 && B / slices <= p.shared_step_max_rows && GH * R * itemsize >= p.shared_step_min_bytes) return 1;
    return slices;
}

// Threads sharing each step's products: all of them for an unsliced batch whose steps pay for it.
int product_threads(bool parallel, int slices, int64_t T, int64_t B, int64_t GH, int64_t R, int threads) {
    const Policy& p = the_policy();
    const int64_t step = B * GH * R;
    if (slices > 1 || !parallel || step < p.step_parallel_min_work || T * step < p.parallel_min_work) return 1;
    return threads;
}

// Threads for a product done once a call (the projection, the weight gradients).
int all_threads(bool parallel, int64_t work, int threads) {
    return parallel && work >= the_policy().parallel_min_work ? threads : 1;
}

}  // namespace

int64_t& policy_setting(std::string_view name) {
    Policy& p = the_policy();
    if (name == "parallel_min_rows") return p.parallel_min_rows;
    if (name == "parallel_min_work") return p.parallel_min_work;
    if (name == "step_parallel_min_work") return p.step_parallel_min_work;
    if (name == "shared_step_min_bytes") return p.shared_step_min_bytes;
    if (name == "shared_step_max_rows") return p.shared_step_max_rows;
    if (name == "projection_chunk") return p.projection_chunk;
    if (name == "kernel_weight_grads_max_work") return p.kernel_weight_grads_max_work;
    if (name == "workspace_block_max") return p.workspace_block_max;
    if (name == "threads") return p.threads;
    if (name == "int8_step_parallel_min_work") return p.int8_step_parallel_min_work;
    TORCH_CHECK_VALUE(false, "rnnkit::_policy: no setting named '", std::string(name), "'");
}

int num_threads() {
    const int64_t threads = the_policy().threads;
    return threads > 0 ? static_cast<int>(threads) : at::get_num_threads();
}

Cell cell_of(std::string_view mode) {
    if (mode == "RNN_TANH") return RNN_TANH;
    if (mode == "RNN_RELU") return RNN_RELU;
    if (mode == "LSTM") return LSTM;
    if (mode == "GRU") return GRU;
    TORCH_CHECK_VALUE(false, "rnnkit: unknown cell family '", std::string(mode),
                      "': expected 'RNN_TANH', 'RNN_RELU', 'LSTM' or 'GRU'");
}

int gates_of(Cell cell) { return cell == LSTM ? 4 : cell == GRU ? 3 : 1; }

Plan plan_for(Cell cell, int itemsize, int64_t T, int64_t B, int64_t I, int64_t GH, int64_t R, int flags, int threads) {
    const bool parallel = rnnkit_kernels_parallel() != 0;
    const int64_t H = GH / gates_of(cell);
    Plan plan{};
    plan.backward_slices = slice_count(parallel, T, B, GH, H, threads);
    plan.slices = forward_slices(plan.backward_slices, B, GH, R, itemsize);
    plan.threads = product_threads(parallel, plan.slices, T, B, GH, R, threads);
    plan.backward_threads = product_threads(parallel, plan.backward_slices, T, B, GH, R, threads);
    plan.pthreads = all_threads(parallel, T * B * GH * I, threads);  // the projection of all steps at once
    const int64_t per_step = B * GH;
    plan.chunk = static_cast<int>(
        per_step == 0 ? T : std::min<int64_t>(T, std::max<int64_t>(1, the_policy().projection_chunk / per_step)));
    const int64_t weight_work = T * B * GH * (R + I);
    plan.weight_threads =
        weight_work <= the_policy().kernel_weight_grads_max_work ? all_threads(parallel, weight_work, threads) : 0;
    const int t = static_cast<int>(T), b = static_cast<int>(B), h = static_cast<int>(H), r = static_cast<int>(R);
    plan.saved.total = rnnkit_forward_layout(cell, 1, t, b, h, r, flags, plan.saved.at.data());
    plan.unsaved.total = rnnkit_forward_layout(cell, 0, t, b, h, r, flags, plan.unsaved.at.data());
    plan.dlayout.total = rnnkit_backward_layout(plan.backward_slices, cell, t, b, h, r, flags, plan.dlayout.at.data());
    // (the saved one is an output of rnnkit::fused_rnn, which has one tensor for it)
    plan.unsaved.parts = plan.unsaved.total * itemsize > the_policy().workspace_block_max;
    plan.dlayout.parts = plan.dlayout.total * itemsize > the_policy().workspace_block_max;
    return plan;
}

StackPlan stack_plan_for(Cell cell, at::ScalarType dtype, int64_t L, int64_t D, int64_t T, int64_t B, int64_t I,
                         int64_t GH, int64_t R, int flags, int threads) {
    const int itemsize = dtype == at::kDouble ? 8 : 4;
    StackPlan stack{};
    stack.ints = {cell, int(L), int(D), int(T), int(B), int(GH / gates_of(cell)), int(R), int(I), flags};
    bool kernel_grads = true;
    for (int64_t layer = 0; layer < L; layer++) {
        const Plan plan = plan_for(cell, itemsize, T, B, layer == 0 ? I : D * R, GH, R, flags, threads);
        for (int64_t d = 0; d < D; d++) {
            stack.ints.insert(stack.ints.end(), {plan.slices, plan.threads, plan.pthreads, plan.chunk,
                                                 plan.backward_slices, plan.backward_threads, plan.weight_threads});
            stack.cells.push_back(plan);
            kernel_grads = kernel_grads && plan.weight_threads > 0;
        }
    }
    // the backward kernel's `below` is a bit mask of layers
    stack.one_call = L <= 30 && kernel_grads;
    stack.scratch = by_dtype(dtype, [&](auto zero) {
        return Kernels<decltype(zero)>::stack_scratch(stack.ints.data());
    });
    return stack;
}

}  // namespace rnnkit
