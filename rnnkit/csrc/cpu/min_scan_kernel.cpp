// rnnkit::min_scan and its backward pass on CPU: the minimal GRU and LSTM (rnnkit/cells/_min.py),
// whose gates read the input alone, from their pre-activations pre = W_ih x + b_ih (T, B, G*H),
// computed for all steps by one matrix product before the call.
//
//   minGRU  (G = 2: rows z, c):    z = sigmoid(k_z), h~ = cand(c),  h_t = (1 - z) h_{t-1} + z h~
//   minLSTM (G = 3: rows f, i, c): f, i = sigmoid(k_f), sigmoid(k_i), h~ = cand(c),
//                                  h_t = (f h_{t-1} + i h~) / (f + i)
//   cand: g(c) = c + 0.5 for c >= 0, sigmoid(c) below ("g"), or c itself ("linear").
//
// The sequences are independent of each other: torch's threads share them in ranges, and the C
// kernels (min_scan_rows in rnn_kernels_impl.h) run a range's steps in order, each step's rows
// next to each other in memory, with the gate math inline and vectorised along the units (no
// tensor of gates is written). Past a sequence's length the output is 0 and its
// gradient is not read. The backward pass runs the steps backwards, reading h_{t-1} from the
// forward's output: d pre (T, B, G*H) and d h0 (B, H).
#include "../fused_rnn.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <vector>
#include <string_view>

namespace rnnkit {
namespace {

struct MinShape {
    int64_t steps, batch, H;
    bool lstm, g;
};

MinShape check(const at::Tensor& pre, const c10::optional<at::Tensor>& h0, const c10::optional<at::Tensor>& lengths,
               c10::string_view kind_, c10::string_view candidate_) {
    const std::string_view kind(kind_.data(), kind_.size()), candidate(candidate_.data(), candidate_.size());
    TORCH_CHECK(kind == "mingru" || kind == "minlstm", "rnnkit::min_scan: kind must be 'mingru' or 'minlstm', got ",
                kind);
    TORCH_CHECK(candidate == "g" || candidate == "linear",
                "rnnkit::min_scan: candidate must be 'g' or 'linear', got ", candidate);
    TORCH_CHECK(pre.dim() == 3, "rnnkit::min_scan: expected pre (T, B, G*H), got ", pre.dim(), "-D");
    TORCH_CHECK(pre.scalar_type() == at::kFloat || pre.scalar_type() == at::kDouble,
                "rnnkit::min_scan: float32 or float64, got ", pre.scalar_type());
    const bool lstm = kind == "minlstm";
    const int64_t gates = lstm ? 3 : 2;
    TORCH_CHECK(pre.size(2) % gates == 0, "rnnkit::min_scan: pre's last dimension ", pre.size(2),
                " is not a multiple of ", gates);
    const int64_t H = pre.size(2) / gates;
    if (h0.has_value()) {
        TORCH_CHECK(h0->dim() == 2 && h0->size(0) == pre.size(1) && h0->size(1) == H,
                    "rnnkit::min_scan: expected h0 (B, H) = (", pre.size(1), ", ", H, "), got ", h0->sizes());
        TORCH_CHECK(h0->scalar_type() == pre.scalar_type(), "rnnkit::min_scan: h0 of another dtype than pre");
    }
    if (lengths.has_value()) {
        TORCH_CHECK(lengths->dim() == 1 && lengths->size(0) == pre.size(1) && lengths->scalar_type() == at::kLong,
                    "rnnkit::min_scan: expected lengths (B,) int64");
        const auto* n = lengths->data_ptr<int64_t>();
        for (int64_t b = 0; b < pre.size(1); ++b)
            TORCH_CHECK(n[b] >= 1 && n[b] <= pre.size(0), "rnnkit::min_scan: every length must be in [1, ",
                        pre.size(0), "], got ", n[b]);
    }
    return {pre.size(0), pre.size(1), H, lstm, candidate == "g"};
}

// The sequences are shared among torch's threads in contiguous ranges, each range scanned by the C
// kernels with a state buffer of its own.
template <typename F>
void over_rows(const MinShape& s, F rows) {
    at::parallel_for(0, s.batch, 1, [&](int64_t first, int64_t last) {
        rows(static_cast<int>(first), static_cast<int>(last));
    });
}

at::Tensor min_scan_cpu(const at::Tensor& pre_, const c10::optional<at::Tensor>& h0_,
                        const c10::optional<at::Tensor>& lengths, c10::string_view kind, c10::string_view candidate) {
    const MinShape s = check(pre_, h0_, lengths, kind, candidate);
    const at::Tensor pre = pre_.contiguous();
    const c10::optional<at::Tensor> h0 = h0_.has_value() ? c10::optional<at::Tensor>(h0_->contiguous()) : c10::nullopt;
    at::Tensor out = at::empty({s.steps, s.batch, s.H}, pre.options());  // every element written
    const int T = static_cast<int>(s.steps), B = static_cast<int>(s.batch), H = static_cast<int>(s.H);
    const int64_t* n = lengths ? lengths->data_ptr<int64_t>() : nullptr;
    if (pre.scalar_type() == at::kFloat) {
        const float *p = pre.data_ptr<float>(), *h = h0 ? h0->data_ptr<float>() : nullptr;
        float* o = out.data_ptr<float>();
        over_rows(s, [&](int b0, int b1) {
            std::vector<float> state(static_cast<size_t>(b1 - b0) * H);
            min_scan_rows_f32(s.lstm, s.g, T, B, H, b0, b1, p, h, n, o, state.data());
        });
    } else {
        const double *p = pre.data_ptr<double>(), *h = h0 ? h0->data_ptr<double>() : nullptr;
        double* o = out.data_ptr<double>();
        over_rows(s, [&](int b0, int b1) {
            std::vector<double> state(static_cast<size_t>(b1 - b0) * H);
            min_scan_rows_f64(s.lstm, s.g, T, B, H, b0, b1, p, h, n, o, state.data());
        });
    }
    return out;
}

std::tuple<at::Tensor, at::Tensor> min_scan_backward_cpu(const at::Tensor& d_out_, const at::Tensor& pre_,
                                                         const c10::optional<at::Tensor>& h0_, const at::Tensor& out_,
                                                         const c10::optional<at::Tensor>& lengths,
                                                         c10::string_view kind, c10::string_view candidate) {
    const MinShape s = check(pre_, h0_, lengths, kind, candidate);
    const at::Tensor pre = pre_.contiguous(), out = out_.contiguous(), d_out = d_out_.contiguous();
    TORCH_CHECK(out.sizes() == d_out.sizes() && out.size(0) == s.steps && out.size(1) == s.batch && out.size(2) == s.H,
                "rnnkit::min_scan_backward: expected out and d_out (T, B, H)");
    const c10::optional<at::Tensor> h0 = h0_.has_value() ? c10::optional<at::Tensor>(h0_->contiguous()) : c10::nullopt;
    at::Tensor d_pre = at::empty_like(pre);  // every element written
    at::Tensor d_h0 = at::empty({s.batch, s.H}, pre.options());
    const int T = static_cast<int>(s.steps), B = static_cast<int>(s.batch), H = static_cast<int>(s.H);
    const int64_t* n = lengths ? lengths->data_ptr<int64_t>() : nullptr;
    if (pre.scalar_type() == at::kFloat) {
        const float *dy = d_out.data_ptr<float>(), *p = pre.data_ptr<float>(), *y = out.data_ptr<float>();
        const float* h = h0 ? h0->data_ptr<float>() : nullptr;
        float *dp = d_pre.data_ptr<float>(), *dh = d_h0.data_ptr<float>();
        over_rows(s, [&](int b0, int b1) {
            std::vector<float> carry(static_cast<size_t>(b1 - b0) * H), zeros(static_cast<size_t>(H));
            min_scan_backward_rows_f32(s.lstm, s.g, T, B, H, b0, b1, dy, p, h, y, n, dp, dh, carry.data(),
                                       zeros.data());
        });
    } else {
        const double *dy = d_out.data_ptr<double>(), *p = pre.data_ptr<double>(), *y = out.data_ptr<double>();
        const double* h = h0 ? h0->data_ptr<double>() : nullptr;
        double *dp = d_pre.data_ptr<double>(), *dh = d_h0.data_ptr<double>();
        over_rows(s, [&](int b0, int b1) {
            std::vector<double> carry(static_cast<size_t>(b1 - b0) * H), zeros(static_cast<size_t>(H));
            min_scan_backward_rows_f64(s.lstm, s.g, T, B, H, b0, b1, dy, p, h, y, n, dp, dh, carry.data(),
                                       zeros.data());
        });
    }
    return {d_pre, d_h0};
}

}  // namespace

TORCH_LIBRARY_IMPL(rnnkit, CPU, m) {
    m.impl("min_scan", &min_scan_cpu);
    m.impl("min_scan_backward", &min_scan_backward_cpu);
}

}  // namespace rnnkit
