// bfloat16 training on the CPU: rnnkit::fused_stack and rnnkit::fused_stack_backward for a stack
// whose input, states and weights are bfloat16 (fused_stack_kernel.cpp sends them here).
//
// The forward pass runs each cell by the bfloat16 inference kernel (int8_kernels.h:
// rnnkit_bf16_cell_saved), which also keeps the gate activations in float32. The backward pass
// runs the recurrence through time in C (rnnkit_bf16_cell_backward: the gate math's derivatives
// in float32, dh_{t-1} = dG_t W_hh by the same bfloat16 products) and leaves what sums over all
// steps to three matrix products per cell over the whole sequence, in bfloat16 with float32 sums
// (torch's, oneDNN's on this CPU): dW_ih = dG^T x, dW_hh = dG^T h_{t-1}, dx = dG W_ih. The
// biases' gradients are summed in float32 in C. Outputs, saved inputs and gradients are bfloat16;
// the state and the gate math inside a pass are float32. No projection (rnnkit.layers sends
// an LSTM with proj_size elsewhere).
#include "../fused_rnn.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <algorithm>

namespace rnnkit {

namespace {

constexpr const char* OP = "rnnkit::fused_stack (bfloat16)";

Tensor f32(const Tensor& t) { return t.defined() ? t.to(at::kFloat).contiguous() : t; }
const float* fptr(const Tensor& t) { return t.defined() ? t.data_ptr<float>() : nullptr; }

// w (rows, K) bfloat16 packed for the products (rnnkit_bf16_pack of `gates` gates).
Tensor pack(const Tensor& w, int64_t gates) {
    const Tensor c = w.contiguous();
    const int64_t H = c.size(0) / gates, K = c.size(1);
    Tensor packed = at::empty({rnnkit_bf16_packed_size(gates, H, K)}, c.options());
    rnnkit_bf16_pack(static_cast<int>(gates), static_cast<int>(H), static_cast<int>(K),
                     reinterpret_cast<const uint16_t*>(c.data_ptr()), reinterpret_cast<uint16_t*>(packed.data_ptr()));
    return packed;
}

rnnkit_int8_matrix matrix(const Tensor& packed) { return {static_cast<const int8_t*>(packed.data_ptr()), nullptr, nullptr}; }

int threads_for(int64_t B, int64_t GH, int64_t H) {
    return B * GH * H >= policy_setting("int8_step_parallel_min_work") ? num_threads() : 1;
}

}  // namespace

int64_t bf16_saved_size(Cell cell, int64_t T, int64_t B, int64_t H) {
    return T * B * H * (cell == LSTM || cell == GRU ? 5 : 1);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, std::vector<Tensor>> bf16_stack_forward(
    Cell cell, int64_t L, int64_t D, const Tensor& x, const OptTensor& lengths, const std::vector<Tensor>& flat) {
    const int64_t T = x.size(0), B = x.size(1), G = gates_of(cell), H = flat[4].size(1), wide = D * H;
    TORCH_CHECK(!flat[6].defined(), OP, ": an LSTM with a projection (proj_size) has no bfloat16 training kernel");
    const auto f = x.options().dtype(at::kFloat);
    Tensor h_n = at::empty({L * D, B, H}, f);
    Tensor c_n = cell == LSTM ? at::empty({L * D, B, H}, f) : at::empty({0}, f);
    Tensor inner = x.new_empty({L, T, B, wide});  // every layer's output, the top's too
    std::vector<Tensor> works;
    const int64_t* n = lengths ? lengths->const_data_ptr<int64_t>() : nullptr;
    const int threads = threads_for(B, G * H, H);
    Tensor input = x;  // bfloat16: x, then the layer below's output (inner), read as given
    for (int64_t layer = 0; layer < L; layer++) {
        const int64_t I = input.size(2);
        Tensor out32 = at::empty({T, B, wide}, f);
        for (int64_t direction = 0; direction < D; direction++) {
            const int64_t k = layer * D + direction;
            const Tensor* w = flat.data() + STACK_CELL_ARGS * k;  // h0, c0, w_ih, b_ih, w_hh, b_hh, w_hr
            const Tensor wih = pack(w[2], G), whh = pack(w[4], G);
            const Tensor h0 = f32(w[0]), c0 = f32(w[1]), bih = f32(w[3]), bhh = f32(w[5]);
            works.push_back(at::empty({bf16_saved_size(cell, T, B, H)}, f));
            const int failed = rnnkit_bf16_cell_saved(
                threads, cell, static_cast<int>(direction), static_cast<int>(T), static_cast<int>(B),
                static_cast<int>(I), static_cast<int>(H), nullptr, reinterpret_cast<const uint16_t*>(input.data_ptr()),
                I, matrix(wih), matrix(whh),
                fptr(bih), fptr(bhh), n, fptr(h0), fptr(c0), out32.data_ptr<float>() + direction * H, wide,
                h_n[k].data_ptr<float>(), cell == LSTM ? c_n[k].data_ptr<float>() : nullptr,
                works.back().data_ptr<float>());
            TORCH_CHECK_WITH(OutOfMemoryError, failed == 0, OP, ": out of memory");
        }
        inner[layer].copy_(out32);  // (rounded to bfloat16, as the next layer's products read it)
        input = inner[layer];
    }
    return {inner[L - 1].clone(), h_n.to(at::kBFloat16), c_n.to(at::kBFloat16), inner, x.new_empty({0}), works};
}

std::pair<Tensor, std::vector<Tensor>> bf16_stack_backward(Cell cell, int64_t L, int64_t D, const Tensor& x,
                                                           const OptTensor& lengths, const std::vector<Tensor>& flat,
                                                           const Tensor& inner, at::TensorList works,
                                                           const OptTensor& d_out, const OptTensor& d_hn,
                                                           const OptTensor& d_cn, bool needs_x,
                                                           const std::vector<bool>& needs_flat) {
    const int64_t T = x.size(0), B = x.size(1), G = gates_of(cell), H = flat[4].size(1), GH = G * H, wide = D * H;
    const int64_t rows = T * B;
    const int64_t* n = lengths ? lengths->const_data_ptr<int64_t>() : nullptr;
    const int threads = threads_for(B, GH, H);
    const auto has = [](const OptTensor& t) { return t.has_value() && t->defined(); };
    const auto bf = x.options();
    const Tensor d_hn32 = has(d_hn) ? f32(*d_hn) : Tensor();
    const Tensor d_cn32 = has(d_cn) && cell == LSTM ? f32(*d_cn) : Tensor();
    std::vector<Tensor> grads(flat.size());
    Tensor d_layer = has(d_out) ? d_out->contiguous() : Tensor();  // (T, B, D*H) bfloat16
    for (int64_t layer = L - 1; layer >= 0; layer--) {
        const Tensor layer_in = layer == 0 ? x : inner[layer - 1];  // (T, B, I) bfloat16
        const int64_t I = layer_in.size(2);
        // the layer's dG for x_t, both directions side by side: rows (t, b) of D * G * H
        Tensor dgx = at::empty({rows, D * GH}, bf);
        Tensor dgh = cell == GRU ? at::empty({rows, D * GH}, bf) : Tensor();  // a GRU's dG for h_{t-1}
        // whether anything below this layer needs a gradient: x, or a weight or state of a lower layer
        const bool below = needs_x || std::any_of(needs_flat.begin(), needs_flat.begin() + STACK_CELL_ARGS * D * layer,
                                                  [](bool need) { return need; });
        for (int64_t direction = 0; direction < D; direction++) {
            const int64_t k = layer * D + direction, first = STACK_CELL_ARGS * k;
            const Tensor* w = flat.data() + first;
            const Tensor whh_t = pack(w[4].t(), 1);
            const Tensor h0 = f32(w[0]), c0 = f32(w[1]);
            Tensor hprev = at::empty({rows, H}, bf);
            Tensor dbx = at::empty({GH}, x.options().dtype(at::kFloat)), dbh = at::empty_like(dbx);
            Tensor dh0 = at::empty({B, H}, dbx.options()), dc0 = at::empty({B, H}, dbx.options());
            const Tensor& outs = inner[layer];  // the forward pass's h_t, bfloat16
            const uint16_t* dptr = d_layer.defined()
                ? reinterpret_cast<const uint16_t*>(d_layer.data_ptr()) + direction * H : nullptr;
            const int failed = rnnkit_bf16_cell_backward(
                threads, cell, static_cast<int>(direction), static_cast<int>(T), static_cast<int>(B),
                static_cast<int>(H), matrix(whh_t), works[k].data_ptr<float>(),
                reinterpret_cast<const uint16_t*>(outs.data_ptr()) + direction * H, wide, n, fptr(h0), fptr(c0),
                dptr, wide, d_hn32.defined() ? d_hn32[k].data_ptr<float>() : nullptr,
                d_cn32.defined() ? d_cn32[k].data_ptr<float>() : nullptr,
                reinterpret_cast<uint16_t*>(dgx.data_ptr()) + direction * GH,
                dgh.defined() ? reinterpret_cast<uint16_t*>(dgh.data_ptr()) + direction * GH : nullptr, D * GH,
                reinterpret_cast<uint16_t*>(hprev.data_ptr()), dbx.data_ptr<float>(), dbh.data_ptr<float>(),
                dh0.data_ptr<float>(), cell == LSTM ? dc0.data_ptr<float>() : nullptr);
            TORCH_CHECK_WITH(OutOfMemoryError, failed == 0, OP, ": out of memory in the backward pass");
            const Tensor gx = dgx.slice(1, direction * GH, (direction + 1) * GH);
            const Tensor gh = cell == GRU ? dgh.slice(1, direction * GH, (direction + 1) * GH) : gx;
            const auto need = [&](int j) { return bool(needs_flat[first + j]); };
            if (need(0)) grads[first] = dh0.to(at::kBFloat16);
            if (need(1)) grads[first + 1] = dc0.to(at::kBFloat16);
            if (need(2)) grads[first + 2] = at::mm(gx.t(), layer_in.reshape({rows, I}));
            if (need(3)) grads[first + 3] = dbx.to(at::kBFloat16);
            if (need(4)) grads[first + 4] = at::mm(gh.t(), hprev);
            if (need(5)) grads[first + 5] = dbh.to(at::kBFloat16);
        }
        if (!below) {
            d_layer = Tensor();
            break;
        }
        // dx = dG W_ih over both directions at once (one sum in float32)
        std::vector<Tensor> w_ih;
        for (int64_t direction = 0; direction < D; direction++) w_ih.push_back(flat[STACK_CELL_ARGS * (layer * D + direction) + 2]);
        d_layer = at::mm(dgx, D == 1 ? w_ih[0] : at::cat(w_ih, 0)).view({T, B, I});
    }
    return {needs_x ? d_layer : Tensor(), grads};
}

}  // namespace rnnkit
