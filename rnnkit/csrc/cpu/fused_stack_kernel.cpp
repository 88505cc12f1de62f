// CPU kernels of rnnkit::fused_stack and rnnkit::fused_stack_backward: every layer and direction
// of a stack, each pass one call of the C kernels (rnn_stack_forward, rnn_stack_backward: each
// cell's kernels in turn, with the second direction's reversals and the concatenation of a
// layer's directions in C). Where the stack's plan keeps the weight gradients out of the kernels
// (large sizes, where they are torch's products), the backward pass runs each cell's backward in
// turn from here instead, on what the one forward call saved.
#include "../fused_rnn.h"

#include <ATen/ATen.h>
#include <ATen/EmptyTensor.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

namespace rnnkit {

namespace {

constexpr const char* OP = "rnnkit::fused_stack";

const void* ptr(const Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }
bool has(const OptTensor& t) { return t.has_value() && t->defined(); }

// A new CPU tensor of dtype, allocated without the dispatcher's two hops (new_empty, empty) that
// each of a call's allocations paid; at small sizes the operators' overhead is most of a step
// (benchmarks/small_lstm_bound.txt)
Tensor fresh(at::IntArrayRef sizes, at::ScalarType dtype) { return at::detail::empty_cpu(sizes, dtype); }

// A stack's flat entries (STACK_CELL_ARGS per cell) from the tensors present and the mask.
std::vector<Tensor> unpresent(const std::vector<bool>& present, at::TensorList weights) {
    std::vector<Tensor> flat;
    size_t next = 0;
    for (bool p : present) {
        TORCH_CHECK(!p || next < weights.size(), OP, ": fewer weights than `present` names");
        flat.push_back(p ? weights[next++] : Tensor());
    }
    TORCH_CHECK(next == weights.size(), OP, ": more weights than `present` names");
    return flat;
}

struct Stack {
    Cell cell;
    int64_t L, D, T, B, I, GH, R, H;
    std::vector<Tensor> flat;
};

// The checks of a stack's arguments: the kernels read raw memory.
Stack check_stack(const Tensor& x, at::TensorList weights, const std::vector<bool>& present, c10::string_view mode,
                  int64_t layers, int64_t directions) {
    Stack s{};
    s.cell = cell_of(std::string_view(mode.data(), mode.size()));
    TORCH_CHECK(x.device().is_cpu(), OP, " runs on CPU, and the input is on ", x.device());
    const auto dtype = x.scalar_type();
    TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kBFloat16, OP,
                " runs float32, float64 and bfloat16, and the input is ", dtype);
    TORCH_CHECK(x.dim() == 3, OP, ": expected x of 3 dimensions (T, B, I), got shape ", x.sizes());
    TORCH_CHECK(layers >= 1 && (directions == 1 || directions == 2), OP, ": expected layers >= 1 and 1 or 2 ",
                "directions, got ", layers, " and ", directions);
    s.L = layers, s.D = directions, s.T = x.size(0), s.B = x.size(1), s.I = x.size(2);
    TORCH_CHECK(int64_t(present.size()) == STACK_CELL_ARGS * layers * directions, OP, ": expected ",
                STACK_CELL_ARGS * layers * directions, " entries in `present`, got ", present.size());
    s.flat = unpresent(present, weights);
    const Tensor& w_hh0 = s.flat[4];
    TORCH_CHECK(w_hh0.defined() && w_hh0.dim() == 2, OP, ": expected each cell's w_hh (G*H, R)");
    s.GH = w_hh0.size(0), s.R = w_hh0.size(1), s.H = s.GH / gates_of(s.cell);
    TORCH_CHECK(s.GH % gates_of(s.cell) == 0, OP, ": w_hh's rows (", s.GH, ") are not ", gates_of(s.cell), " gates");
    const bool proj = s.flat[6].defined();
    TORCH_CHECK(!proj || s.cell == LSTM, OP, ": w_hr is given to a cell without a projection");
    TORCH_CHECK(proj || s.R == s.H, OP, ": w_hh has ", s.R, " columns and no w_hr projects to them");
    for (int64_t k = 0; k < layers * directions; k++) {
        const int64_t inputs = k < directions ? s.I : directions * s.R;
        const Tensor* w = s.flat.data() + STACK_CELL_ARGS * k;
        const int64_t GH = s.GH, R = s.R, H = s.H, B = s.B;
        const int64_t shapes[STACK_CELL_ARGS][2]{{B, R}, {B, H}, {GH, inputs}, {GH, 0}, {GH, R}, {GH, 0}, {R, H}};
        const size_t dims[STACK_CELL_ARGS]{2, 2, 2, 1, 2, 1, 2};
        const char* names[STACK_CELL_ARGS] = {"h0", "c0", "w_ih", "b_ih", "w_hh", "b_hh", "w_hr"};
        TORCH_CHECK(w[2].defined() && w[4].defined(), OP, ": cell ", k, " lacks w_ih or w_hh");
        TORCH_CHECK(w[6].defined() == proj, OP, ": cell ", k, (proj ? " lacks" : " has"), " a w_hr");
        TORCH_CHECK(!w[1].defined() || s.cell == LSTM, OP, ": c0 is given to a cell without one");
        for (int j = 0; j < STACK_CELL_ARGS; j++) {
            if (!w[j].defined()) continue;
            TORCH_CHECK(w[j].device().is_cpu() && w[j].scalar_type() == dtype, OP, ": expected cell ", k, "'s ",
                        names[j], " on the CPU in ", dtype, ", got ", w[j].scalar_type(), " on ", w[j].device());
            const at::IntArrayRef shape(shapes[j], dims[j]);
            TORCH_CHECK(w[j].sizes() == shape, OP, ": expected cell ", k, "'s ", names[j], " of shape ", shape,
                        ", got ", w[j].sizes());
        }
    }
    return s;
}

StackPlan plan_of(const Stack& s, at::ScalarType dtype) {
    return stack_plan_for(s.cell, dtype, s.L, s.D, s.T, s.B, s.I, s.GH, s.R, s.flat[6].defined() ? HAS_PROJ : 0,
                          num_threads());
}

std::vector<const void*> pointers(const std::vector<Tensor>& tensors) {
    std::vector<const void*> p;
    for (const Tensor& t : tensors) p.push_back(ptr(t));
    return p;
}

std::vector<Tensor> contiguous(const std::vector<Tensor>& tensors) {
    std::vector<Tensor> c;
    for (const Tensor& t : tensors) c.push_back(t.defined() ? t.contiguous() : t);
    return c;
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, std::vector<Tensor>> fused_stack_cpu(
    const Tensor& x_, const OptTensor& lengths, at::TensorList weights, const c10::List<bool>& present_list,
    c10::string_view mode, int64_t layers, int64_t directions) {
    const std::vector<bool> present = present_list.vec();
    const Stack s = check_stack(x_, weights, present, mode, layers, directions);
    const Tensor x = x_.contiguous();
    if (x.scalar_type() == at::kBFloat16)  // bfloat16 training (bf16_train_kernel.cpp)
        return bf16_stack_forward(s.cell, s.L, s.D, x, checked_lengths(lengths, s.B, s.T), s.flat);
    const StackPlan plan = plan_of(s, x.scalar_type());
    const OptTensor lengths_c = checked_lengths(lengths, s.B, s.T);
    const std::vector<Tensor> held = contiguous(s.flat);
    const std::vector<const void*> w = pointers(held);
    const int64_t cells = s.L * s.D, wide = s.D * s.R, rows = s.T * s.B;
    const auto dtype = x.scalar_type();
    Tensor out = fresh({s.T, s.B, wide}, dtype), h_n = fresh({cells, s.B, s.R}, dtype);
    Tensor c_n = fresh(s.cell == LSTM ? at::IntArrayRef({cells, s.B, s.H}) : at::IntArrayRef({0}), dtype);
    Tensor inner = s.L > 1 ? fresh({s.L - 1, s.T, s.B, wide}, dtype) : fresh({0}, dtype);
    // the second direction's reversed inputs: layer 0's T*B*I numbers, then each other layer's T*B*D*R
    Tensor revs = fresh({s.D == 2 ? rows * s.I + (s.L - 1) * rows * wide : 0}, dtype);
    // each cell's workspace its own tensor, as when the cells run alone (one block for all would
    // pass glibc's mmap threshold sooner, and be mapped and zeroed afresh at every call)
    std::vector<Tensor> works;
    std::vector<void*> work_ptrs;
    for (const Plan& cell : plan.cells) {
        works.push_back(fresh({cell.saved.total}, dtype));
        work_ptrs.push_back(works.back().data_ptr());
    }
    Tensor scratch = s.D == 2 ? fresh({s.T, s.B, s.R}, dtype) : Tensor();
    const int64_t* n = lengths_c ? lengths_c->const_data_ptr<int64_t>() : nullptr;
    const int status = by_dtype(x.scalar_type(), [&](auto zero) {
        using real = decltype(zero);
        return Kernels<real>::stack_forward(
            plan.ints.data(), static_cast<const real*>(ptr(x)), n, reinterpret_cast<const real* const*>(w.data()),
            s.L > 1 ? inner.data_ptr<real>() : nullptr, out.data_ptr<real>(),
            s.D == 2 ? revs.data_ptr<real>() : nullptr, h_n.data_ptr<real>(),
            s.cell == LSTM ? c_n.data_ptr<real>() : nullptr, reinterpret_cast<real* const*>(work_ptrs.data()),
            s.D == 2 ? scratch.data_ptr<real>() : nullptr);
    });
    TORCH_CHECK_WITH(OutOfMemoryError, status == 0, "rnnkit fused engine: no memory for the forward kernel's scratch");
    return {out, h_n, c_n, inner, revs, works};
}

// The input cell k read: x, the layer below's output, or (direction 1) it reversed within the
// lengths, as the forward call left it in revs.
Tensor seen_by(const Stack& s, int64_t k, const Tensor& x, const Tensor& inner, const Tensor& revs) {
    const int64_t layer = k / s.D, rows = s.T * s.B, wide = s.D * s.R;
    if (k % s.D == 1) {
        const int64_t start = layer == 0 ? 0 : rows * s.I + (layer - 1) * rows * wide;
        const int64_t width = layer == 0 ? s.I : wide;
        return revs.slice(0, start, start + rows * width).view({s.T, s.B, width});
    }
    return layer == 0 ? x : inner[layer - 1];
}

// Whether layer's input needs its gradient: when x, or any weight or state below the layer, does.
bool input_grad_needed(const Stack& s, int64_t layer, bool needs_x, const std::vector<bool>& needs_flat) {
    const auto below = needs_flat.begin() + STACK_CELL_ARGS * s.D * layer;
    return needs_x || std::any_of(needs_flat.begin(), below, [](bool n) { return n; });
}

// The backward pass cell by cell, from the top layer down, each direction's input gradient (put
// back in order) summed into the layer below's output gradient.
std::pair<Tensor, std::vector<Tensor>> cells_backward(const Stack& s, const Tensor& x,
                                                      const OptTensor& lengths, const Tensor& inner,
                                                      const Tensor& revs, at::TensorList works, const OptTensor& d_out,
                                                      const OptTensor& d_hn, const OptTensor& d_cn, bool needs_x,
                                                      const std::vector<bool>& needs_flat) {
    std::vector<Tensor> grads(s.flat.size());
    Tensor d_layer = has(d_out) ? *d_out : Tensor();
    for (int64_t layer = s.L - 1; layer >= 0; layer--) {
        const bool below = input_grad_needed(s, layer, needs_x, needs_flat);
        Tensor d_in;
        for (int64_t direction = 0; direction < s.D; direction++) {
            const int64_t k = layer * s.D + direction, first = STACK_CELL_ARGS * k;
            const Tensor* w = s.flat.data() + first;  // h0, c0, w_ih, b_ih, w_hh, b_hh, w_hr
            const auto need = [&](int j) { return bool(needs_flat[first + j]); };
            const std::array<bool, 11> needs{below, need(2), need(3), need(0), need(1), need(4), need(5), need(6),
                                             false, false, false};
            Tensor d_part;
            if (d_layer.defined()) {
                d_part = s.D == 1 ? d_layer : d_layer.slice(2, direction * s.R, (direction + 1) * s.R);
                if (direction == 1) d_part = reverse_padded(d_part, lengths);
            }
            const OptTensor d_hn_k = has(d_hn) ? OptTensor((*d_hn)[k]) : std::nullopt;
            const OptTensor d_cn_k = has(d_cn) && s.cell == LSTM ? OptTensor((*d_cn)[k]) : std::nullopt;
            const bool any_need = std::any_of(needs.begin(), needs.end(), [](bool b) { return b; });
            if ((!d_part.defined() && !d_hn_k && !d_cn_k) || !any_need) continue;
            const std::vector<Tensor> g = cell_backward(
                s.cell, d_part.defined() ? OptTensor(d_part) : std::nullopt, d_hn_k, d_cn_k, works[k],
                seen_by(s, k, x, inner, revs), w[2], w[4], w[6].defined() ? OptTensor(w[6]) : std::nullopt,
                std::nullopt, std::nullopt, lengths, std::nullopt, std::nullopt, std::nullopt, w[3].defined(),
                w[5].defined(), needs);
            const Tensor cell_grads[STACK_CELL_ARGS] = {g[3], g[4], g[1], g[2], g[5], g[6], g[7]};
            std::copy(cell_grads, cell_grads + STACK_CELL_ARGS, grads.begin() + first);
            Tensor dx = g[0];
            if (dx.defined()) {
                if (direction == 1) dx = reverse_padded(dx, lengths);
                d_in = d_in.defined() ? d_in + dx : dx;
            }
        }
        d_layer = d_in;
    }
    return {needs_x ? d_layer : Tensor(), grads};
}

// The backward pass in one kernel call (rnn_stack_backward).
std::pair<Tensor, std::vector<Tensor>> one_call_backward(const Stack& s, const StackPlan& plan, const Tensor& x,
                                                         const OptTensor& lengths, const Tensor& inner,
                                                         const Tensor& revs, at::TensorList works,
                                                         const OptTensor& d_out, const OptTensor& d_hn,
                                                         const OptTensor& d_cn, bool needs_x,
                                                         const std::vector<bool>& needs_flat) {
    const std::vector<Tensor> held = contiguous(s.flat);
    const std::vector<const void*> w = pointers(held);
    std::vector<Tensor> grads(held.size());
    std::vector<void*> g(held.size(), nullptr);
    for (size_t i = 0; i < held.size(); i++) {
        if (held[i].defined() && needs_flat[i]) {
            grads[i] = fresh(held[i].sizes(), held[i].scalar_type());  // (contiguous, as held is)
            g[i] = grads[i].data_ptr();
        }
    }
    Tensor dx = needs_x ? fresh(x.sizes(), x.scalar_type()) : Tensor();
    int below = 0;  // bit l: layer l's input needs its gradient
    for (int64_t layer = 0; layer < s.L; layer++)
        if (input_grad_needed(s, layer, needs_x, needs_flat)) below |= 1 << layer;
    std::vector<const void*> work_ptrs;
    for (const Tensor& w : works) work_ptrs.push_back(w.data_ptr());
    const Tensor d_out_c = has(d_out) ? d_out->contiguous() : Tensor();
    const Tensor d_hn_c = has(d_hn) ? d_hn->contiguous() : Tensor();
    const Tensor d_cn_c = has(d_cn) && s.cell == LSTM ? d_cn->contiguous() : Tensor();
    Tensor scratch = fresh({plan.scratch}, x.scalar_type());
    const int64_t* n = lengths ? lengths->const_data_ptr<int64_t>() : nullptr;
    const int status = by_dtype(x.scalar_type(), [&](auto zero) {
        using real = decltype(zero);
        using P = const real*;
        return Kernels<real>::stack_backward(
            plan.ints.data(), P(ptr(x)), n, reinterpret_cast<const real* const*>(w.data()),
            P(s.L > 1 ? ptr(inner) : nullptr), P(s.D == 2 ? ptr(revs) : nullptr),
            reinterpret_cast<const real* const*>(work_ptrs.data()), P(ptr(d_out_c)), P(ptr(d_hn_c)), P(ptr(d_cn_c)),
            reinterpret_cast<real* const*>(g.data()), dx.defined() ? dx.data_ptr<real>() : nullptr, below,
            scratch.data_ptr<real>());
    });
    TORCH_CHECK_WITH(OutOfMemoryError, status == 0, "rnnkit fused engine: no memory for the backward kernel's scratch");
    return {dx, grads};
}

std::vector<Tensor> fused_stack_backward_cpu(const OptTensor& d_out, const OptTensor& d_hn, const OptTensor& d_cn,
                                             const Tensor& x_, const OptTensor& lengths, at::TensorList weights,
                                             const c10::List<bool>& present_list, const Tensor& inner,
                                             const Tensor& revs, at::TensorList works_, c10::string_view mode,
                                             int64_t layers, int64_t directions, const c10::List<bool>& needs_list) {
    const std::vector<bool> present = present_list.vec(), needs = needs_list.vec();
    const Stack s = check_stack(x_, weights, present, mode, layers, directions);
    const Tensor x = x_.contiguous();
    const auto dtype = x.scalar_type();
    const bool bf16 = dtype == at::kBFloat16;
    const StackPlan plan = bf16 ? StackPlan{} : plan_of(s, dtype);
    const int64_t cells = s.L * s.D, wide = s.D * s.R, rows = s.T * s.B;
    const char* op = "rnnkit::fused_stack_backward";
    TORCH_CHECK(needs.size() == 1 + weights.size(), op, ": expected ", 1 + weights.size(), " needs, got ",
                needs.size());
    if (bf16) {  // the workspaces and inner as bf16_stack_forward left them
        TORCH_CHECK(!s.flat[6].defined(), op, ": an LSTM with a projection has no bfloat16 training kernel");
        TORCH_CHECK(static_cast<int64_t>(works_.size()) == cells, op, ": expected ", cells, " workspaces, got ",
                    works_.size());
        for (size_t k = 0; k < works_.size(); k++)
            TORCH_CHECK(works_[k].scalar_type() == at::kFloat && works_[k].is_contiguous() &&
                            works_[k].numel() == bf16_saved_size(s.cell, s.T, s.B, s.H),
                        op, ": expected cell ", k, "'s workspace of ", bf16_saved_size(s.cell, s.T, s.B, s.H),
                        " float32 numbers, got ", works_[k].numel(), " ", works_[k].scalar_type());
        TORCH_CHECK(inner.scalar_type() == dtype && inner.sizes() == at::IntArrayRef({s.L, s.T, s.B, wide}), op,
                    ": expected inner of shape (", s.L, ", ", s.T, ", ", s.B, ", ", wide, "), got ", inner.sizes());
    } else {
        TORCH_CHECK(works_.size() == plan.cells.size(), op, ": expected ", plan.cells.size(), " workspaces, got ",
                    works_.size());
        for (size_t k = 0; k < works_.size(); k++)
            TORCH_CHECK(works_[k].scalar_type() == dtype && works_[k].numel() == plan.cells[k].saved.total, op,
                        ": expected cell ", k, "'s workspace of ", plan.cells[k].saved.total, " elements, got ",
                        works_[k].numel());
        TORCH_CHECK(s.L == 1 || (inner.scalar_type() == dtype &&
                                 inner.sizes() == at::IntArrayRef({s.L - 1, s.T, s.B, wide})),
                    op, ": expected inner of shape (", s.L - 1, ", ", s.T, ", ", s.B, ", ", wide, "), got ",
                    inner.sizes());
        TORCH_CHECK(s.D == 1 || (revs.scalar_type() == dtype && revs.numel() == rows * s.I + (s.L - 1) * rows * wide),
                    op, ": expected revs of ", rows * s.I + (s.L - 1) * rows * wide, " elements, got ", revs.numel());
    }
    const auto check = [&](const OptTensor& t, const char* name, at::IntArrayRef shape) {
        TORCH_CHECK(!has(t) || (t->scalar_type() == dtype && t->sizes() == shape), op, ": expected ", name,
                    " of shape ", shape, " in ", dtype);
    };
    check(d_out, "d_out", {s.T, s.B, wide});
    check(d_hn, "d_hn", {cells, s.B, s.R});
    if (s.cell == LSTM) check(d_cn, "d_cn", {cells, s.B, s.H});
    const OptTensor lengths_c = checked_lengths(lengths, s.B, s.T);
    std::vector<bool> needs_flat;
    size_t next = 1;
    for (bool p : present) needs_flat.push_back(p && needs[next++]);
    const std::vector<Tensor> works = contiguous(works_.vec());
    const Tensor inner_c = s.L > 1 || bf16 ? inner.contiguous() : inner;
    const Tensor revs_c = s.D == 2 && !bf16 ? revs.contiguous() : revs;
    auto [dx, grads] = bf16
        ? bf16_stack_backward(s.cell, s.L, s.D, x, lengths_c, s.flat, inner_c, works, d_out, d_hn, d_cn, needs[0],
                              needs_flat)
        : plan.one_call
        ? one_call_backward(s, plan, x, lengths_c, inner_c, revs_c, works, d_out, d_hn, d_cn, needs[0], needs_flat)
        : cells_backward(s, x, lengths_c, inner_c, revs_c, works, d_out, d_hn, d_cn, needs[0], needs_flat);
    // x's gradient, then each present weight's: zeros where needed and no gradient reaches it,
    // empty (0,) where not needed
    std::vector<Tensor> result;
    const auto add = [&](const Tensor& g, const Tensor& like, bool need) {
        result.push_back(g.defined() ? g : need ? at::zeros_like(like) : fresh({0}, dtype));
    };
    add(dx, x, needs[0]);
    for (size_t i = 0; i < present.size(); i++)
        if (present[i]) add(grads[i], s.flat[i], needs_flat[i]);
    return result;
}

}  // namespace

TORCH_LIBRARY_IMPL(rnnkit, CPU, m) {
    m.impl("fused_stack", &fused_stack_cpu);
    m.impl("fused_stack_backward", &fused_stack_backward_cpu);
}

}  // namespace rnnkit
