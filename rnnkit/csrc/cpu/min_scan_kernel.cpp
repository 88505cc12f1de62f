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
    int steps, batch, H;  // (the C kernels' ints)
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
        const at::Tensor values = lengths->contiguous();
        const auto* n = values.data_ptr<int64_t>();
        for (int64_t b = 0; b < pre.size(1); ++b)
            TORCH_CHECK(n[b] >= 1 && n[b] <= pre.size(0), "rnnkit::min_scan: every length must be in [1, ",
                        pre.size(0), "], got ", n[b]);
    }
    return {static_cast<int>(pre.size(0)), static_cast<int>(pre.size(1)), static_cast<int>(H), lstm, candidate == "g"};
}

// The C kernels by element type, for AT_DISPATCH.
void scan_rows(const MinShape& s, int b0, int b1, const float* p, const float* h0, const int64_t* n, float* out,
               float* state) {
    min_scan_rows_f32(s.lstm, s.g, s.steps, s.batch, s.H, b0, b1, p, h0, n, out, state);
}
void scan_rows(const MinShape& s, int b0, int b1, const double* p, const double* h0, const int64_t* n, double* out,
               double* state) {
    min_scan_rows_f64(s.lstm, s.g, s.steps, s.batch, s.H, b0, b1, p, h0, n, out, state);
}
void scan_rows_backward(const MinShape& s, int b0, int b1, const float* dy, const float* p, const float* h0,
                        const float* y, const int64_t* n, float* dp, float* dh, float* carry, const float* zeros) {
    min_scan_backward_rows_f32(s.lstm, s.g, s.steps, s.batch, s.H, b0, b1, dy, p, h0, y, n, dp, dh, carry, zeros);
}
void scan_rows_backward(const MinShape& s, int b0, int b1, const double* dy, const double* p, const double* h0,
                        const double* y, const int64_t* n, double* dp, double* dh, double* carry, const double* zeros) {
    min_scan_backward_rows_f64(s.lstm, s.g, s.steps, s.batch, s.H, b0, b1, dy, p, h0, y, n, dp, dh, carry, zeros);
}

template <typename T>
const T* data_or_null(const c10::optional<at::Tensor>& t) {
    return t.has_value() ? t->data_ptr<T>() : nullptr;
}

c10::optional<at::Tensor> contiguous(const c10::optional<at::Tensor>& t) {
    return t.has_value() ? c10::optional<at::Tensor>(t->contiguous()) : c10::nullopt;
}

// The sequences are shared among torch's threads in contiguous ranges, each range scanned by the C
// kernels with a state buffer of its own.
at::Tensor min_scan_cpu(const at::Tensor& pre_, const c10::optional<at::Tensor>& h0_,
                        const c10::optional<at::Tensor>& lengths_, c10::string_view kind, c10::string_view candidate) {
    const MinShape s = check(pre_, h0_, lengths_, kind, candidate);
    const at::Tensor pre = pre_.contiguous();
    const c10::optional<at::Tensor> h0 = contiguous(h0_), lengths = contiguous(lengths_);
    at::Tensor out = at::empty({s.steps, s.batch, s.H}, pre.options());  // every element written
    AT_DISPATCH_FLOATING_TYPES(pre.scalar_type(), "rnnkit::min_scan", [&] {
        at::parallel_for(0, s.batch, 1, [&](int64_t b0, int64_t b1) {
            std::vector<scalar_t> state(static_cast<size_t>((b1 - b0) * s.H));
            scan_rows(s, static_cast<int>(b0), static_cast<int>(b1), pre.data_ptr<scalar_t>(),
                      data_or_null<scalar_t>(h0), data_or_null<int64_t>(lengths), out.data_ptr<scalar_t>(),
                      state.data());
        });
    });
    return out;
}

std::tuple<at::Tensor, at::Tensor> min_scan_backward_cpu(const at::Tensor& d_out_, const at::Tensor& pre_,
                                                         const c10::optional<at::Tensor>& h0_, const at::Tensor& out_,
                                                         const c10::optional<at::Tensor>& lengths_,
                                                         c10::string_view kind, c10::string_view candidate) {
    const MinShape s = check(pre_, h0_, lengths_, kind, candidate);
    const at::Tensor pre = pre_.contiguous(), out = out_.contiguous(), d_out = d_out_.contiguous();
    TORCH_CHECK(out.sizes() == d_out.sizes() && out.size(0) == s.steps && out.size(1) == s.batch && out.size(2) == s.H,
                "rnnkit::min_scan_backward: expected out and d_out (T, B, H)");
    const c10::optional<at::Tensor> h0 = contiguous(h0_), lengths = contiguous(lengths_);
    at::Tensor d_pre = at::empty_like(pre);  // every element written
    at::Tensor d_h0 = at::empty({s.batch, s.H}, pre.options());
    AT_DISPATCH_FLOATING_TYPES(pre.scalar_type(), "rnnkit::min_scan_backward", [&] {
        at::parallel_for(0, s.batch, 1, [&](int64_t b0, int64_t b1) {
            std::vector<scalar_t> carry(static_cast<size_t>((b1 - b0) * s.H)), zeros(static_cast<size_t>(s.H));
            scan_rows_backward(s, static_cast<int>(b0), static_cast<int>(b1), d_out.data_ptr<scalar_t>(),
                               pre.data_ptr<scalar_t>(), data_or_null<scalar_t>(h0), out.data_ptr<scalar_t>(),
                               data_or_null<int64_t>(lengths), d_pre.data_ptr<scalar_t>(),
                               d_h0.data_ptr<scalar_t>(), carry.data(), zeros.data());
        });
    });
    return {d_pre, d_h0};
}

}  // namespace

TORCH_LIBRARY_IMPL(rnnkit, CPU, m) {
    m.impl("min_scan", &min_scan_cpu);
    m.impl("min_scan_backward", &min_scan_backward_cpu);
}

}  // namespace rnnkit
