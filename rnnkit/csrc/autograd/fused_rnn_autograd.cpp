// Autograd kernels of rnnkit::fused_rnn and rnnkit::fused_stack (torch::autograd::Function):
// the forward operator below autograd, and as backward its hand-derived backward operator
// (rnnkit::fused_rnn_backward, rnnkit::fused_stack_backward); or, when a graph of the gradient
// is asked for (grad mode on inside the backward: create_graph=True), the *_grad_by_reference
// operators, which run the reference equations again from the saved inputs and differentiate
// them (registered from Python: the hand-written backward pass is not itself differentiable).
#include "../fused_rnn.h"

#include <ATen/LegacyBatchedTensorImpl.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/stack.h>
#include <c10/util/Exception.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <algorithm>
#include <functional>
#include <iterator>
#include <tuple>

namespace rnnkit {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using BoolList = c10::List<bool>;

OptTensor opt(const Tensor& t) { return t.defined() ? OptTensor(t) : std::nullopt; }
Tensor val(const OptTensor& t) { return t.has_value() ? *t : Tensor(); }

constexpr int CELL_TENSORS = 15;  // rnnkit::fused_rnn's tensor arguments
constexpr int CELL_DIFFERENTIABLE = 11;  // of which the first 11 take gradients

const char* const NO_WORKSPACE = "rnnkit::fused_rnn was called with save=False, so it kept nothing for a backward pass";

auto& fused_rnn_op() {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("rnnkit::fused_rnn", "")
                         .typed<std::tuple<Tensor, Tensor, Tensor, Tensor>(
                             const Tensor&, const OptTensor&, const OptTensor&, const OptTensor&, const OptTensor&,
                             const Tensor&, const OptTensor&, const OptTensor&, const OptTensor&, const OptTensor&,
                             const OptTensor&, const OptTensor&, const OptTensor&, const OptTensor&, const OptTensor&,
                             c10::string_view, bool)>();
    return op;
}

auto& fused_rnn_backward_op() {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("rnnkit::fused_rnn_backward", "")
                         .typed<std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
                                           Tensor, Tensor>(
                             const OptTensor&, const OptTensor&, const OptTensor&, const Tensor&, const Tensor&,
                             const OptTensor&, const Tensor&, const OptTensor&, const OptTensor&, const OptTensor&,
                             const OptTensor&, const OptTensor&, const OptTensor&, const OptTensor&, c10::string_view,
                             bool, bool, const BoolList&)>();
    return op;
}

auto& fused_rnn_by_reference_op() {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("rnnkit::fused_rnn_grad_by_reference", "")
                         .typed<std::vector<Tensor>(
                             const OptTensor&, const OptTensor&, const OptTensor&, const Tensor&, const OptTensor&,
                             const OptTensor&, const OptTensor&, const OptTensor&, const Tensor&, const OptTensor&,
                             const OptTensor&, const OptTensor&, const OptTensor&, const OptTensor&, const OptTensor&,
                             const OptTensor&, const OptTensor&, const OptTensor&, c10::string_view,
                             const BoolList&)>();
    return op;
}

auto& fused_stack_op() {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("rnnkit::fused_stack", "")
                         .typed<std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, std::vector<Tensor>>(
                             const Tensor&, const OptTensor&, at::TensorList, const BoolList&, c10::string_view,
                             int64_t, int64_t)>();
    return op;
}

auto& fused_stack_backward_op() {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("rnnkit::fused_stack_backward", "")
                         .typed<std::vector<Tensor>(
                             const OptTensor&, const OptTensor&, const OptTensor&, const Tensor&, const OptTensor&,
                             at::TensorList, const BoolList&, const Tensor&, const Tensor&, at::TensorList,
                             c10::string_view, int64_t, int64_t, const BoolList&)>();
    return op;
}

auto& fused_stack_by_reference_op() {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("rnnkit::fused_stack_grad_by_reference", "")
                         .typed<std::vector<Tensor>(
                             const OptTensor&, const OptTensor&, const OptTensor&, const Tensor&, const OptTensor&,
                             at::TensorList, const BoolList&, c10::string_view, int64_t, int64_t, const BoolList&)>();
    return op;
}

class FusedRNNFunction : public torch::autograd::Function<FusedRNNFunction> {
   public:
    static variable_list forward(AutogradContext* ctx, const Tensor& x, const OptTensor& w_ih, const OptTensor& b_ih,
                                 const OptTensor& h0, const OptTensor& c0, const Tensor& w_hh, const OptTensor& b_hh,
                                 const OptTensor& w_hr, const OptTensor& ln_hh, const OptTensor& ln_cw,
                                 const OptTensor& ln_cb, const OptTensor& lengths, const OptTensor& h_mask,
                                 const OptTensor& keep_h, const OptTensor& keep_c, c10::string_view mode, bool save) {
        Tensor out, h_n, c_n, work;
        {
            at::AutoDispatchBelowADInplaceOrView guard;
            std::tie(out, h_n, c_n, work) = fused_rnn_op().call(x, w_ih, b_ih, h0, c0, w_hh, b_hh, w_hr, ln_hh, ln_cw,
                                                                 ln_cb, lengths, h_mask, keep_h, keep_c, mode, save);
        }
        ctx->saved_data["mode"] = std::string(mode.data(), mode.size());
        ctx->saved_data["save"] = save;
        ctx->save_for_backward({x, val(w_ih), val(b_ih), val(h0), val(c0), w_hh, val(b_hh), val(w_hr), val(ln_hh),
                                val(ln_cw), val(ln_cb), val(lengths), val(h_mask), val(keep_h), val(keep_c), work});
        ctx->mark_non_differentiable(mode == "LSTM" ? variable_list{work} : variable_list{c_n, work});
        ctx->set_materialize_grads(false);  // unused outputs' gradients come undefined, not zeros
        return {out, h_n, c_n, work};
    }

    static variable_list backward(AutogradContext* ctx, variable_list grads) {
        const variable_list saved = ctx->get_saved_variables();
        const Tensor& work = saved[CELL_TENSORS];
        const std::string mode = ctx->saved_data["mode"].toStringRef();
        // which gradients are wanted: an absent input has none, and no edge (the edges count the
        // tensors given)
        std::array<bool, CELL_DIFFERENTIABLE> needs{};
        size_t edge = 0;
        for (int i = 0; i < CELL_DIFFERENTIABLE; i++)
            if (saved[i].defined()) needs[i] = ctx->needs_input_grad(edge++);
        BoolList needs_list;
        for (bool n : needs) needs_list.push_back(n);
        variable_list result(CELL_TENSORS + 2);  // lengths, masks, mode and save: no gradient
        std::vector<Tensor> computed;
        if (at::GradMode::is_enabled()) {  // create_graph=True: a gradient that is differentiable itself
            computed = fused_rnn_by_reference_op().call(
                opt(grads[0]), opt(grads[1]), opt(grads[2]), saved[0], opt(saved[1]), opt(saved[2]), opt(saved[3]),
                opt(saved[4]), saved[5], opt(saved[6]), opt(saved[7]), opt(saved[8]), opt(saved[9]), opt(saved[10]),
                opt(saved[11]), opt(saved[12]), opt(saved[13]), opt(saved[14]), mode, needs_list);
        } else {
            TORCH_CHECK(ctx->saved_data["save"].toBool(), NO_WORKSPACE);
            if (std::none_of(needs.begin(), needs.end(), [](bool n) { return n; })) return result;
            const auto g = fused_rnn_backward_op().call(
                opt(grads[0]), opt(grads[1]), opt(grads[2]), work, saved[0], opt(saved[1]), saved[5], opt(saved[7]),
                opt(saved[8]), opt(saved[9]), opt(saved[11]), opt(saved[12]), opt(saved[13]), opt(saved[14]), mode,
                saved[2].defined(), saved[6].defined(), needs_list);
            computed = {std::get<0>(g), std::get<1>(g), std::get<2>(g), std::get<3>(g), std::get<4>(g),
                        std::get<5>(g), std::get<6>(g), std::get<7>(g), std::get<8>(g), std::get<9>(g),
                        std::get<10>(g)};
        }
        for (int i = 0; i < CELL_DIFFERENTIABLE; i++)
            if (needs[i]) result[i] = computed[i];
        return result;
    }
};

std::tuple<Tensor, Tensor, Tensor, Tensor> fused_rnn_autograd(
    const Tensor& x, const OptTensor& w_ih, const OptTensor& b_ih, const OptTensor& h0, const OptTensor& c0,
    const Tensor& w_hh, const OptTensor& b_hh, const OptTensor& w_hr, const OptTensor& ln_hh, const OptTensor& ln_cw,
    const OptTensor& ln_cb, const OptTensor& lengths, const OptTensor& h_mask, const OptTensor& keep_h,
    const OptTensor& keep_c, c10::string_view mode, bool save) {
    const auto r = FusedRNNFunction::apply(x, w_ih, b_ih, h0, c0, w_hh, b_hh, w_hr, ln_hh, ln_cw, ln_cb, lengths,
                                           h_mask, keep_h, keep_c, mode, save);
    return {r[0], r[1], r[2], r[3]};
}

// rnnkit::fused_stack_backward under the batched gradients of autograd.grad(is_grads_batched=True)
// (torch's legacy vmap, whose generic fallback takes no list of outputs): once per slice of the
// output gradients, stacked. call: the operator on one slice's d_out, d_hn, d_cn.
std::vector<Tensor> per_slice(const std::array<OptTensor, 3>& grads,
                              const std::function<std::vector<Tensor>(const std::array<OptTensor, 3>&)>& call) {
    int64_t level = -1, size = 0;
    std::array<Tensor, 3> values;  // each gradient with its batch dimension first
    for (size_t i = 0; i < grads.size(); i++) {
        if (!grads[i] || !at::isBatchedTensor(*grads[i])) continue;
        const auto* impl = at::maybeGetBatchedImpl(*grads[i]);
        TORCH_CHECK(impl->bdims().size() == 1 && (level < 0 || impl->bdims()[0].level() == level),
                    "rnnkit::fused_stack: batched gradients of batched gradients are not supported");
        level = impl->bdims()[0].level();
        values[i] = impl->value().movedim(impl->bdims()[0].dim(), 0);
        size = values[i].size(0);
    }
    std::vector<std::vector<Tensor>> slices;
    for (int64_t b = 0; b < size; b++) {
        std::array<OptTensor, 3> slice;
        for (size_t i = 0; i < grads.size(); i++) slice[i] = values[i].defined() ? OptTensor(values[i][b]) : grads[i];
        slices.push_back(call(slice));
    }
    std::vector<Tensor> result;
    for (size_t j = 0; j < slices.front().size(); j++) {
        std::vector<Tensor> parts;
        for (const auto& s : slices) parts.push_back(s[j]);
        result.push_back(at::makeBatched(at::stack(parts), {at::BatchDim(level, 0)}));
    }
    return result;
}

bool any_batched(const variable_list& grads) {
    return std::any_of(grads.begin(), grads.end(), [](const Tensor& g) { return g.defined() && at::isBatchedTensor(g); });
}

class FusedStackFunction : public torch::autograd::Function<FusedStackFunction> {
   public:
    static variable_list forward(AutogradContext* ctx, const Tensor& x, const OptTensor& lengths,
                                 at::TensorList weights, const BoolList& present, c10::string_view mode,
                                 int64_t layers, int64_t directions) {
        Tensor out, h_n, c_n, inner, revs;
        std::vector<Tensor> works;  // one per cell
        {
            at::AutoDispatchBelowADInplaceOrView guard;
            std::tie(out, h_n, c_n, inner, revs, works) =
                fused_stack_op().call(x, lengths, weights, present, mode, layers, directions);
        }
        ctx->saved_data["mode"] = std::string(mode.data(), mode.size());
        ctx->saved_data["layers"] = layers;
        ctx->saved_data["directions"] = directions;
        ctx->saved_data["present"] = present;
        ctx->saved_data["weights"] = static_cast<int64_t>(weights.size());
        variable_list to_save{x, val(lengths)};
        to_save.insert(to_save.end(), weights.begin(), weights.end());
        to_save.insert(to_save.end(), {inner, revs});
        to_save.insert(to_save.end(), works.begin(), works.end());
        ctx->save_for_backward(to_save);
        variable_list fixed{inner, revs};
        fixed.insert(fixed.end(), works.begin(), works.end());
        if (mode != "LSTM") fixed.push_back(c_n);
        ctx->mark_non_differentiable(fixed);
        ctx->set_materialize_grads(false);
        variable_list outputs{out, h_n, c_n, inner, revs};
        outputs.insert(outputs.end(), works.begin(), works.end());
        return outputs;
    }

    static variable_list backward(AutogradContext* ctx, variable_list grads) {
        const variable_list saved = ctx->get_saved_variables();
        // saved: x, lengths, the weights, inner, revs, then each cell's workspace
        const size_t count = static_cast<size_t>(ctx->saved_data["weights"].toInt());
        const std::string mode = ctx->saved_data["mode"].toStringRef();
        const int64_t layers = ctx->saved_data["layers"].toInt(), directions = ctx->saved_data["directions"].toInt();
        const BoolList present = ctx->saved_data["present"].toBoolList();
        const OptTensor lengths = opt(saved[1]);
        const std::vector<Tensor> weights(saved.begin() + 2, saved.begin() + 2 + count);
        const size_t first = lengths ? 2 : 1;  // the weights' first edge
        BoolList needs;
        needs.push_back(ctx->needs_input_grad(0));
        bool any = needs.get(0);
        for (size_t j = 0; j < count; j++) {
            needs.push_back(ctx->needs_input_grad(first + j));
            any = any || needs.get(j + 1);
        }
        variable_list result(count + 6);  // x, lengths, the weights, present, mode, layers, directions
        if (!any) return result;
        std::vector<Tensor> computed;
        if (at::GradMode::is_enabled()) {  // create_graph=True: the gradient as a graph, by the reference equations
            computed = fused_stack_by_reference_op().call(opt(grads[0]), opt(grads[1]), opt(grads[2]), saved[0],
                                                          lengths, weights, present, mode, layers, directions, needs);
        } else {
            const Tensor& inner = saved[2 + count];
            const Tensor& revs = saved[3 + count];
            const std::vector<Tensor> works(saved.begin() + 4 + count, saved.end());
            const auto call = [&](const std::array<OptTensor, 3>& d) {
                return fused_stack_backward_op().call(d[0], d[1], mode == "LSTM" ? d[2] : std::nullopt, saved[0],
                                                      lengths, weights, present, inner, revs, works, mode, layers,
                                                      directions, needs);
            };
            const std::array<OptTensor, 3> d{opt(grads[0]), opt(grads[1]), opt(grads[2])};
            computed = any_batched(grads) ? per_slice(d, call) : call(d);
        }
        if (needs.get(0)) result[0] = computed[0];
        for (size_t j = 0; j < count; j++)
            if (needs.get(j + 1)) result[2 + j] = computed[1 + j];
        return result;
    }
};

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, std::vector<Tensor>> fused_stack_autograd(
    const Tensor& x, const OptTensor& lengths, at::TensorList weights, const BoolList& present, c10::string_view mode,
    int64_t layers, int64_t directions) {
    const auto r = FusedStackFunction::apply(x, lengths, weights, present, mode, layers, directions);
    return {r[0], r[1], r[2], r[3], r[4], std::vector<Tensor>(r.begin() + 5, r.end())};
}

// The backward operators' autograd kernels: the operator below autograd, without torch's boxed
// fallback for operators with no autograd kernel, which boxed every argument at every backward
// pass. Neither operator has a derivative of its own (a graph of the gradient is the forward
// operator's backward with create_graph=True, by the reference equations). A call that autograd
// records (grad mode on and an input that needs a gradient: a traced training step run as a
// graph) runs, and its outputs get a node that fails if anything is differentiated through them.
class NoDerivative : public torch::autograd::Function<NoDerivative> {
   public:
    // outputs: what the operator gave, returned with this node as their grad_fn; inputs: its
    // tensors, the node's edges
    static variable_list forward(AutogradContext* ctx, const std::string& op, variable_list outputs,
                                 at::TensorList inputs) {
        ctx->saved_data["op"] = op;
        return outputs;
    }

    static variable_list backward(AutogradContext* ctx, variable_list) {
        TORCH_CHECK(false, ctx->saved_data["op"].toStringRef(), " has no derivative: for a graph of the gradient, ",
                    "differentiate the forward operator with create_graph=True");
        return {};
    }
};

// With grad mode on (the callers check it first, before gathering the inputs): outputs, or where
// an input needs a gradient, outputs given a NoDerivative node
std::vector<Tensor> refuse_derivative(const std::string& op, const std::vector<Tensor>& inputs,
                                      std::vector<Tensor> outputs) {
    if (std::none_of(inputs.begin(), inputs.end(), [](const Tensor& t) { return t.defined() && t.requires_grad(); }))
        return outputs;
    std::vector<Tensor> given, made;  // (the node takes defined tensors only)
    std::copy_if(inputs.begin(), inputs.end(), std::back_inserter(given), [](const Tensor& t) { return t.defined(); });
    std::copy_if(outputs.begin(), outputs.end(), std::back_inserter(made), [](const Tensor& t) { return t.defined(); });
    const variable_list tracked = NoDerivative::apply(op, std::move(made), at::TensorList(given));
    size_t next = 0;
    for (Tensor& t : outputs)
        if (t.defined()) t = tracked[next++];
    return outputs;
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>
fused_rnn_backward_autograd(const OptTensor& d_out, const OptTensor& d_hn, const OptTensor& d_cn, const Tensor& work,
                            const Tensor& x, const OptTensor& w_ih, const Tensor& w_hh, const OptTensor& w_hr,
                            const OptTensor& ln_hh, const OptTensor& ln_cw, const OptTensor& lengths,
                            const OptTensor& h_mask, const OptTensor& keep_h, const OptTensor& keep_c,
                            c10::string_view mode, bool has_bias_ih, bool has_bias, const BoolList& needs) {
    auto outputs = [&] {
        at::AutoDispatchBelowADInplaceOrView guard;
        return fused_rnn_backward_op().call(d_out, d_hn, d_cn, work, x, w_ih, w_hh, w_hr, ln_hh, ln_cw, lengths,
                                            h_mask, keep_h, keep_c, mode, has_bias_ih, has_bias, needs);
    }();
    if (!at::GradMode::is_enabled()) return outputs;
    const auto r = refuse_derivative(
        "rnnkit::fused_rnn_backward",
        {val(d_out), val(d_hn), val(d_cn), work, x, val(w_ih), w_hh, val(w_hr), val(ln_hh), val(ln_cw), val(h_mask),
         val(keep_h), val(keep_c)},
        std::apply([](const auto&... t) { return std::vector<Tensor>{t...}; }, outputs));
    return {r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10]};
}

std::vector<Tensor> fused_stack_backward_autograd(const OptTensor& d_out, const OptTensor& d_hn,
                                                  const OptTensor& d_cn, const Tensor& x, const OptTensor& lengths,
                                                  at::TensorList weights, const BoolList& present, const Tensor& inner,
                                                  const Tensor& revs, at::TensorList works, c10::string_view mode,
                                                  int64_t layers, int64_t directions, const BoolList& needs) {
    auto outputs = [&] {
        at::AutoDispatchBelowADInplaceOrView guard;
        return fused_stack_backward_op().call(d_out, d_hn, d_cn, x, lengths, weights, present, inner, revs, works,
                                              mode, layers, directions, needs);
    }();
    if (!at::GradMode::is_enabled()) return outputs;
    std::vector<Tensor> inputs{val(d_out), val(d_hn), val(d_cn), x, inner, revs};
    inputs.insert(inputs.end(), weights.begin(), weights.end());
    inputs.insert(inputs.end(), works.begin(), works.end());
    return refuse_derivative("rnnkit::fused_stack_backward", inputs, std::move(outputs));
}

}  // namespace

TORCH_LIBRARY_IMPL(rnnkit, Autograd, m) {
    m.impl("fused_rnn", &fused_rnn_autograd);
    m.impl("fused_stack", &fused_stack_autograd);
    m.impl("fused_rnn_backward", &fused_rnn_backward_autograd);
    m.impl("fused_stack_backward", &fused_stack_backward_autograd);
}

}  // namespace rnnkit
