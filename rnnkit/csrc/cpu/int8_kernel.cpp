// int8 inference on CPU (rnnkit.quantized): the operators' CPU kernels, which check their
// arguments and call the C kernels (int8_kernels.h, in rnn_kernels.c).
//
//   int8_pack(w (G*H, K) int8, G) -> packed (G*HB, K4, 16, 4) int8, sums (G*HB*16,) int32
//       HB = ceil(H / 16), K4 = ceil(K / 4): the layout the products read (int8_kernels.h)
//   int8_linear(x (*, K) float32, packed, sums, scale (N,) float32, bias (N,) or None) -> (*, N)
//   int8_stack(x (T, B, I) float32, lengths (B,) int64 or None, h0 (L*D, B, R) or None,
//              c0 (L*D, B, H) or None, weights, mode, L, D) -> out (T, B, D*R), h_n (L*D, B, R),
//              c_n (L*D, B, H) for an LSTM, else (0,)
//       weights: per layer and direction (index layer * D + direction), 11 tensors:
//       w_ih packed, sums, scale; w_hh packed, sums, scale; b_ih, b_hh (G*H,) or None;
//       w_hr packed, sums, scale or None (the LSTM's projection, R x H).
// Inference only: their autograd kernels run the CPU kernels below autograd and, where an input
// requires grad, give the outputs a backward that raises saying so (a float embedding before an
// int8 LSTM runs, and a loss through it cannot be trained by mistake).
#include "../fused_rnn.h"

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <string>

namespace rnnkit {
namespace {

constexpr int CELL_ARGS = 11;

std::tuple<Tensor, Tensor> int8_pack_cpu(const Tensor& w_, int64_t gates) {
    TORCH_CHECK(w_.dim() == 2 && w_.scalar_type() == at::kChar, "rnnkit::int8_pack: expected w (G*H, K) int8, got ",
                w_.dim(), "-D ", w_.scalar_type());
    TORCH_CHECK(gates >= 1 && w_.size(0) % gates == 0 && w_.size(0) > 0 && w_.size(1) > 0,
                "rnnkit::int8_pack: w's ", w_.size(0), " rows are not ", gates, " gates of H >= 1 rows, or K is 0");
    const Tensor w = w_.contiguous();
    const int G = static_cast<int>(gates), H = static_cast<int>(w.size(0) / gates), K = static_cast<int>(w.size(1));
    const int64_t HB = (H + 15) / 16, K4 = (K + 3) / 4;
    Tensor packed = at::empty({G * HB, K4, 16, 4}, w.options());
    Tensor sums = at::empty({G * HB * 16}, w.options().dtype(at::kInt));
    rnnkit_int8_pack(G, H, K, w.data_ptr<int8_t>(), packed.data_ptr<int8_t>(), sums.data_ptr<int32_t>());
    return {packed, sums};
}

// A packed matrix of G gates of H rows over K inputs, checked against what its packing gives.
rnnkit_int8_matrix matrix(const char* name, const Tensor& packed, const Tensor& sums, const Tensor& scale, int64_t G,
                          int64_t H, int64_t K) {
    const int64_t HB = (H + 15) / 16, K4 = (K + 3) / 4;
    TORCH_CHECK(packed.scalar_type() == at::kChar && packed.is_contiguous() && packed.dim() == 4 &&
                    packed.size(0) == G * HB && packed.size(1) == K4 && packed.size(2) == 16 && packed.size(3) == 4,
                "rnnkit: ", name, ": expected packed int8 weights (", G * HB, ", ", K4, ", 16, 4) (from "
                "rnnkit::int8_pack of ", G, " gates of ", H, " rows over ", K, " inputs), got ", packed.sizes(), " ",
                packed.scalar_type());
    TORCH_CHECK(sums.scalar_type() == at::kInt && sums.is_contiguous() && sums.dim() == 1 &&
                    sums.size(0) == G * HB * 16,
                "rnnkit: ", name, ": expected row sums (", G * HB * 16, ",) int32, got ", sums.sizes());
    TORCH_CHECK(scale.scalar_type() == at::kFloat && scale.is_contiguous() && scale.dim() == 1 &&
                    scale.size(0) == G * H,
                "rnnkit: ", name, ": expected scales (", G * H, ",) float32, got ", scale.sizes(), " ",
                scale.scalar_type());
    return {packed.data_ptr<int8_t>(), sums.data_ptr<int32_t>(), scale.data_ptr<float>()};
}

const float* floats_or_null(const char* name, const OptTensor& t, int64_t n) {
    if (!t.has_value()) return nullptr;
    TORCH_CHECK(t->scalar_type() == at::kFloat && t->is_contiguous() && t->numel() == n, "rnnkit: ", name,
                ": expected ", n, " contiguous float32 numbers, got ", t->sizes(), " ", t->scalar_type());
    return t->data_ptr<float>();
}

Tensor int8_linear_cpu(const Tensor& x_, const Tensor& packed, const Tensor& sums, const Tensor& scale,
                       const OptTensor& bias) {
    TORCH_CHECK(x_.scalar_type() == at::kFloat && x_.dim() >= 1, "rnnkit::int8_linear: expected a float32 input, got ",
                x_.scalar_type());
    const int64_t K = x_.size(-1), N = scale.size(0);
    const rnnkit_int8_matrix w = matrix("int8_linear", packed, sums, scale, 1, N, K);
    const float* b = floats_or_null("int8_linear bias", bias, N);
    const Tensor x = x_.contiguous();
    std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
    shape.back() = N;
    Tensor y = at::empty(shape, x.options());
    const int64_t M = K > 0 ? x.numel() / K : 0;
    if (M == 0) return y;
    const int threads = M * N * K >= 1'000'000 ? num_threads() : 1;
    TORCH_CHECK(rnnkit_int8_linear(threads, static_cast<int>(M), static_cast<int>(N), static_cast<int>(K),
                                   x.data_ptr<float>(), K, w, b, y.data_ptr<float>(), N) == 0,
                "rnnkit::int8_linear: out of memory");
    return y;
}

std::tuple<Tensor, Tensor, Tensor> int8_stack_cpu(const Tensor& x_, const OptTensor& lengths_, const OptTensor& h0_,
                                                  const OptTensor& c0_, const c10::List<OptTensor>& weights,
                                                  c10::string_view mode_, int64_t layers, int64_t directions) {
    const Cell cell = cell_of(std::string_view(mode_.data(), mode_.size()));
    const int64_t G = gates_of(cell);
    TORCH_CHECK(x_.scalar_type() == at::kFloat && x_.dim() == 3, "rnnkit::int8_stack: expected x (T, B, I) float32, "
                "got ", x_.dim(), "-D ", x_.scalar_type());
    TORCH_CHECK(layers >= 1 && (directions == 1 || directions == 2) &&
                    static_cast<int64_t>(weights.size()) == layers * directions * CELL_ARGS,
                "rnnkit::int8_stack: expected ", CELL_ARGS, " weights per layer and direction");
    const int64_t T = x_.size(0), B = x_.size(1), cells = layers * directions;
    auto at_ = [&](int64_t i) -> OptTensor { return weights.get(i); };
    const OptTensor first_hh_scale = at_(5), first_hr_scale = at_(10);
    TORCH_CHECK(first_hh_scale.has_value() && first_hh_scale->numel() % G == 0,
                "rnnkit::int8_stack: missing the scales of w_hh");
    const int64_t H = first_hh_scale->numel() / G;
    const int64_t R = first_hr_scale.has_value() ? first_hr_scale->numel() : H;
    TORCH_CHECK(cell == LSTM || !first_hr_scale.has_value(), "rnnkit::int8_stack: a projection needs an LSTM");
    const OptTensor lengths = checked_lengths(lengths_, B, T);
    Tensor h0, c0;
    if (h0_.has_value()) {
        TORCH_CHECK(h0_->scalar_type() == at::kFloat && h0_->dim() == 3 && h0_->size(0) == cells &&
                        h0_->size(1) == B && h0_->size(2) == R,
                    "rnnkit::int8_stack: expected h0 (", cells, ", ", B, ", ", R, ") float32, got ", h0_->sizes());
        h0 = h0_->contiguous();
    }
    if (c0_.has_value() && cell == LSTM) {
        TORCH_CHECK(c0_->scalar_type() == at::kFloat && c0_->dim() == 3 && c0_->size(0) == cells &&
                        c0_->size(1) == B && c0_->size(2) == H,
                    "rnnkit::int8_stack: expected c0 (", cells, ", ", B, ", ", H, ") float32, got ", c0_->sizes());
        c0 = c0_->contiguous();
    }
    Tensor hn = at::zeros({cells, B, R}, x_.options());
    Tensor cn = cell == LSTM ? at::zeros({cells, B, H}, x_.options()) : at::empty({0}, x_.options());
    Tensor input = x_.contiguous();
    if (B == 0) return {at::empty({T, 0, directions * R}, x_.options()), hn, cn};
    const int threads = B * G * H * R >= policy_setting("int8_step_parallel_min_work") ? num_threads() : 1;
    for (int64_t layer = 0; layer < layers; ++layer) {
        const int64_t I = input.size(2);
        Tensor out = at::empty({T, B, directions * R}, x_.options());
        for (int64_t direction = 0; direction < directions; ++direction) {
            const int64_t index = layer * directions + direction, base = index * CELL_ARGS;
            const std::string where = "layer " + std::to_string(layer) + (direction ? " reverse" : "");
            const OptTensor wih_p = at_(base), wih_s = at_(base + 1), wih_scale = at_(base + 2);
            const OptTensor whh_p = at_(base + 3), whh_s = at_(base + 4), whh_scale = at_(base + 5);
            const OptTensor whr_p = at_(base + 8), whr_s = at_(base + 9), whr_scale = at_(base + 10);
            TORCH_CHECK(wih_p && wih_s && wih_scale && whh_p && whh_s && whh_scale,
                        "rnnkit::int8_stack: ", where, ": missing w_ih or w_hh");
            TORCH_CHECK(whr_p.has_value() == first_hr_scale.has_value() && whr_s.has_value() == whr_p.has_value() &&
                            whr_scale.has_value() == whr_p.has_value(),
                        "rnnkit::int8_stack: ", where, ": every cell has a projection, or none");
            const rnnkit_int8_matrix wih = matrix(("w_ih of " + where).c_str(), *wih_p, *wih_s, *wih_scale, G, H, I);
            const rnnkit_int8_matrix whh = matrix(("w_hh of " + where).c_str(), *whh_p, *whh_s, *whh_scale, G, H, R);
            const rnnkit_int8_matrix whr = whr_p ? matrix(("w_hr of " + where).c_str(), *whr_p, *whr_s, *whr_scale, 1, R, H)
                                                 : rnnkit_int8_matrix{nullptr, nullptr, nullptr};
            const float* bih = floats_or_null("b_ih", at_(base + 6), G * H);
            const float* bhh = floats_or_null("b_hh", at_(base + 7), G * H);
            const int failed = rnnkit_int8_cell(
                threads, static_cast<int>(cell), static_cast<int>(direction), static_cast<int>(T), static_cast<int>(B),
                static_cast<int>(I), static_cast<int>(H), static_cast<int>(R), input.data_ptr<float>(), I, wih, whh,
                whr, bih, bhh, lengths ? lengths->data_ptr<int64_t>() : nullptr,
                h0.defined() ? h0[index].data_ptr<float>() : nullptr,
                c0.defined() ? c0[index].data_ptr<float>() : nullptr, out.data_ptr<float>() + direction * R,
                directions * R, hn[index].data_ptr<float>(), cell == LSTM ? cn[index].data_ptr<float>() : nullptr);
            TORCH_CHECK(failed == 0, "rnnkit::int8_stack: out of memory");
        }
        input = out;
    }
    return {input, hn, cn};
}

// bfloat16 (rnnkit.layers' fast path for bfloat16 inference):
//   bf16_pack(w (G*H, K) bfloat16, G) -> packed (G*HB, K2, 16, 2) bfloat16, K2 = ceil(K / 2)
//   bf16_stack(x (T, B, I), lengths, h0 (L*D, B, R), c0 (L*D, B, H), weights, mode, L, D, H, R)
//       -> out (T, B, D*R), h_n, c_n (LSTM, else (0,)) in x's dtype; weights: per layer and
//       direction 5 tensors, w_ih packed, w_hh packed, b_ih, b_hh (G*H,) or None, w_hr packed or None.
constexpr int BF16_CELL_ARGS = 5;

Tensor bf16_pack_cpu(const Tensor& w_, int64_t gates) {
    TORCH_CHECK(w_.dim() == 2 && w_.scalar_type() == at::kBFloat16, "rnnkit::bf16_pack: expected w (G*H, K) bfloat16, "
                "got ", w_.dim(), "-D ", w_.scalar_type());
    TORCH_CHECK(gates >= 1 && w_.size(0) % gates == 0 && w_.size(0) > 0 && w_.size(1) > 0,
                "rnnkit::bf16_pack: w's ", w_.size(0), " rows are not ", gates, " gates of H >= 1 rows, or K is 0");
    const Tensor w = w_.contiguous();
    const int G = static_cast<int>(gates), H = static_cast<int>(w.size(0) / gates), K = static_cast<int>(w.size(1));
    Tensor packed = at::empty({G * ((H + 15) / 16), (K + 1) / 2, 16, 2}, w.options());
    rnnkit_bf16_pack(G, H, K, reinterpret_cast<const uint16_t*>(w.data_ptr()),
                     reinterpret_cast<uint16_t*>(packed.data_ptr()));
    return packed;
}

rnnkit_int8_matrix bf16_matrix(const std::string& name, const OptTensor& packed, int64_t G, int64_t H, int64_t K) {
    TORCH_CHECK(packed.has_value(), "rnnkit::bf16_stack: missing ", name);
    TORCH_CHECK(packed->scalar_type() == at::kBFloat16 && packed->is_contiguous() && packed->dim() == 4 &&
                    packed->size(0) == G * ((H + 15) / 16) && packed->size(1) == (K + 1) / 2 && packed->size(2) == 16 &&
                    packed->size(3) == 2,
                "rnnkit::bf16_stack: expected ", name, " packed by rnnkit::bf16_pack (", G * ((H + 15) / 16), ", ",
                (K + 1) / 2, ", 16, 2) bfloat16, got ", packed->sizes(), " ", packed->scalar_type());
    return {static_cast<const int8_t*>(packed->data_ptr()), nullptr, nullptr};
}

std::tuple<Tensor, Tensor, Tensor> bf16_stack_cpu(const Tensor& x_, const OptTensor& lengths_, const OptTensor& h0_,
                                                  const OptTensor& c0_, const c10::List<OptTensor>& weights,
                                                  c10::string_view mode_, int64_t layers, int64_t directions,
                                                  int64_t H, int64_t proj) {
    const Cell cell = cell_of(std::string_view(mode_.data(), mode_.size()));
    const int64_t G = gates_of(cell), R = proj > 0 ? proj : H;
    TORCH_CHECK(x_.dim() == 3 && (x_.scalar_type() == at::kBFloat16 || x_.scalar_type() == at::kFloat),
                "rnnkit::bf16_stack: expected x (T, B, I) bfloat16 or float32, got ", x_.dim(), "-D ", x_.scalar_type());
    TORCH_CHECK(layers >= 1 && (directions == 1 || directions == 2) && H >= 1 && proj >= 0 &&
                    static_cast<int64_t>(weights.size()) == layers * directions * BF16_CELL_ARGS,
                "rnnkit::bf16_stack: expected ", BF16_CELL_ARGS, " weights per layer and direction");
    TORCH_CHECK(cell == LSTM || proj == 0, "rnnkit::bf16_stack: a projection needs an LSTM");
    const int64_t T = x_.size(0), B = x_.size(1), cells = layers * directions;
    const OptTensor lengths = checked_lengths(lengths_, B, T);
    const auto f32 = [](const Tensor& t) { return t.to(at::kFloat).contiguous(); };
    Tensor h0, c0;
    if (h0_.has_value()) {
        TORCH_CHECK(h0_->dim() == 3 && h0_->size(0) == cells && h0_->size(1) == B && h0_->size(2) == R,
                    "rnnkit::bf16_stack: expected h0 (", cells, ", ", B, ", ", R, "), got ", h0_->sizes());
        h0 = f32(*h0_);
    }
    if (c0_.has_value() && cell == LSTM) {
        TORCH_CHECK(c0_->dim() == 3 && c0_->size(0) == cells && c0_->size(1) == B && c0_->size(2) == H,
                    "rnnkit::bf16_stack: expected c0 (", cells, ", ", B, ", ", H, "), got ", c0_->sizes());
        c0 = f32(*c0_);
    }
    const auto options = x_.options().dtype(at::kFloat);
    Tensor hn = at::zeros({cells, B, R}, options);
    Tensor cn = cell == LSTM ? at::zeros({cells, B, H}, options) : at::empty({0}, options);
    const auto back = [&](const Tensor& t) { return t.to(x_.scalar_type()); };
    if (B == 0) return {back(at::empty({T, 0, directions * R}, options)), back(hn), back(cn)};
    // the first layer reads x in bfloat16 as given (no float32 copy); the others their float32 input
    Tensor input = x_.scalar_type() == at::kBFloat16 ? x_.contiguous() : f32(x_);
    const int threads = B * G * H * R >= policy_setting("int8_step_parallel_min_work") ? num_threads() : 1;
    for (int64_t layer = 0; layer < layers; ++layer) {
        const int64_t I = input.size(2);
        const bool given = input.scalar_type() == at::kBFloat16;
        Tensor out = at::empty({T, B, directions * R}, options);
        for (int64_t direction = 0; direction < directions; ++direction) {
            const int64_t index = layer * directions + direction, base = index * BF16_CELL_ARGS;
            const std::string where = " of layer " + std::to_string(layer) + (direction ? " reverse" : "");
            const rnnkit_int8_matrix wih = bf16_matrix("w_ih" + where, weights.get(base), G, H, I);
            const rnnkit_int8_matrix whh = bf16_matrix("w_hh" + where, weights.get(base + 1), G, H, R);
            const OptTensor whr_p = weights.get(base + 4);
            TORCH_CHECK(whr_p.has_value() == (proj > 0), "rnnkit::bf16_stack: w_hr", where, " given without proj, "
                        "or missing");
            const rnnkit_int8_matrix whr = proj > 0 ? bf16_matrix("w_hr" + where, whr_p, 1, R, H)
                                                    : rnnkit_int8_matrix{nullptr, nullptr, nullptr};
            Tensor bih, bhh;
            for (auto [at_, bias] : {std::pair<int64_t, Tensor*>{base + 2, &bih}, {base + 3, &bhh}}) {
                const OptTensor b = weights.get(at_);
                if (!b.has_value()) continue;
                TORCH_CHECK(b->numel() == G * H, "rnnkit::bf16_stack: expected biases of ", G * H, " numbers");
                *bias = f32(*b);
            }
            const int failed = rnnkit_bf16_cell(
                threads, static_cast<int>(cell), static_cast<int>(direction), static_cast<int>(T), static_cast<int>(B),
                static_cast<int>(I), static_cast<int>(H), static_cast<int>(R),
                given ? nullptr : input.data_ptr<float>(),
                given ? reinterpret_cast<const uint16_t*>(input.data_ptr()) : nullptr, I, wih, whh,
                whr, bih.defined() ? bih.data_ptr<float>() : nullptr, bhh.defined() ? bhh.data_ptr<float>() : nullptr,
                lengths ? lengths->data_ptr<int64_t>() : nullptr, h0.defined() ? h0[index].data_ptr<float>() : nullptr,
                c0.defined() ? c0[index].data_ptr<float>() : nullptr, out.data_ptr<float>() + direction * R,
                directions * R, hn[index].data_ptr<float>(), cell == LSTM ? cn[index].data_ptr<float>() : nullptr);
            TORCH_CHECK(failed == 0, "rnnkit::bf16_stack: out of memory");
        }
        input = out;
    }
    return {back(input), back(hn), back(cn)};
}

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

const char* const NO_GRADIENT =
    "rnnkit's int8 modules are for inference and have no gradient: train the float model, then quantize it "
    "(run the quantized model under torch.no_grad() or torch.inference_mode())";

class Int8StackFunction : public torch::autograd::Function<Int8StackFunction> {
   public:
    static variable_list forward(AutogradContext* ctx, const Tensor& x, const OptTensor& lengths, const OptTensor& h0,
                                 const OptTensor& c0, const c10::List<OptTensor>& weights, c10::string_view mode,
                                 int64_t layers, int64_t directions) {
        static auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("rnnkit::int8_stack", "")
                             .typed<std::tuple<Tensor, Tensor, Tensor>(
                                 const Tensor&, const OptTensor&, const OptTensor&, const OptTensor&,
                                 const c10::List<OptTensor>&, c10::string_view, int64_t, int64_t)>();
        at::AutoDispatchBelowADInplaceOrView guard;
        const auto [out, h_n, c_n] = op.call(x, lengths, h0, c0, weights, mode, layers, directions);
        return {out, h_n, c_n};
    }
    static variable_list backward(AutogradContext*, variable_list) { TORCH_CHECK(false, NO_GRADIENT); }
};

class Int8LinearFunction : public torch::autograd::Function<Int8LinearFunction> {
   public:
    static variable_list forward(AutogradContext* ctx, const Tensor& x, const Tensor& packed, const Tensor& sums,
                                 const Tensor& scale, const OptTensor& bias) {
        static auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("rnnkit::int8_linear", "")
                             .typed<Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                           const OptTensor&)>();
        at::AutoDispatchBelowADInplaceOrView guard;
        return {op.call(x, packed, sums, scale, bias)};
    }
    static variable_list backward(AutogradContext*, variable_list) { TORCH_CHECK(false, NO_GRADIENT); }
};

std::tuple<Tensor, Tensor, Tensor> int8_stack_autograd(const Tensor& x, const OptTensor& lengths, const OptTensor& h0,
                                                       const OptTensor& c0, const c10::List<OptTensor>& weights,
                                                       c10::string_view mode, int64_t layers, int64_t directions) {
    const auto r = Int8StackFunction::apply(x, lengths, h0, c0, weights, mode, layers, directions);
    return {r[0], r[1], r[2]};
}

Tensor int8_linear_autograd(const Tensor& x, const Tensor& packed, const Tensor& sums, const Tensor& scale,
                            const OptTensor& bias) {
    return Int8LinearFunction::apply(x, packed, sums, scale, bias)[0];
}

}  // namespace

// The int8 operators' schemas (a fragment of ops.cpp's library); their fake kernels are Python
TORCH_LIBRARY_FRAGMENT(rnnkit, m) {
    m.set_python_module("rnnkit.quantized._ops");
    m.def("int8_pack(Tensor w, int gates) -> (Tensor, Tensor)");
    m.def("int8_linear(Tensor x, Tensor packed, Tensor sums, Tensor scale, Tensor? bias) -> Tensor");
    m.def("int8_stack(Tensor x, Tensor? lengths, Tensor? h0, Tensor? c0, Tensor?[] weights, str mode, int layers, "
          "int directions) -> (Tensor, Tensor, Tensor)");
    m.def("bf16_pack(Tensor w, int gates) -> Tensor");
    m.def("bf16_stack(Tensor x, Tensor? lengths, Tensor? h0, Tensor? c0, Tensor?[] weights, str mode, int layers, "
          "int directions, int hidden, int proj) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(rnnkit, CPU, m) {
    m.impl("int8_pack", &int8_pack_cpu);
    m.impl("int8_linear", &int8_linear_cpu);
    m.impl("int8_stack", &int8_stack_cpu);
    m.impl("bf16_pack", &bf16_pack_cpu);
    m.impl("bf16_stack", &bf16_stack_cpu);
}

TORCH_LIBRARY_IMPL(rnnkit, Autograd, m) {
    m.impl("int8_stack", &int8_stack_autograd);
    m.impl("int8_linear", &int8_linear_autograd);
}

}  // namespace rnnkit
