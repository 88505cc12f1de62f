// CPU kernels of rnnkit::fused_rnn and rnnkit::fused_rnn_backward: one layer and direction over
// the whole sequence, forward and backward (backpropagation through time derived by hand), by
// the C kernels of rnn_kernels.c over the plan of the call (plan.cpp).
//
// In C, over weights packed once per call: the input projection x @ W_ih^T + b_ih; inside the
// time loop the recurrent product h_{t-1} @ W_hh^T, its layer norm and the gate math; and after
// the backward loop, while their sums run over few rows, the weight gradients (else torch's
// products here, weight_grads_by_torch). A call that needs no gradient keeps nothing.
#include "../fused_rnn.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <sstream>

namespace rnnkit {

namespace {

const void* ptr(const Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }
void* mut(const Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }
Tensor contig(const OptTensor& t) { return t.has_value() && t->defined() ? t->contiguous() : Tensor(); }
bool has(const OptTensor& t) { return t.has_value() && t->defined(); }

// The shape and dtype an argument of an operator must have: the kernels read raw memory.
void expect(const OptTensor& t, const char* op, const char* name, at::IntArrayRef shape, at::ScalarType dtype) {
    if (!has(t)) return;
    TORCH_CHECK(t->device().is_cpu(), op, ": expected ", name, " on the CPU, got ", t->device());
    TORCH_CHECK(t->scalar_type() == dtype, op, ": expected ", name, " of dtype ", dtype, ", got ", t->scalar_type());
    TORCH_CHECK(t->sizes() == shape, op, ": expected ", name, " of shape ", shape, ", got ", t->sizes());
}

// The arrays a kernel lays out, in one tensor (block) or, as the plan says for a large one, one
// tensor each (parts). The forward pass's saved one is always one block: an output of
// rnnkit::fused_rnn.
struct Workspace {
    template <int N>
    Workspace(const Tensor& like, const Layout<N>& layout, Tensor given = Tensor()) {
        at.assign(layout.at.begin(), layout.at.end());
        if (given.defined()) {
            block = given;
        } else if (!layout.parts) {
            block = like.new_empty({layout.total});
        } else {
            std::vector<long> ends;
            for (long o : at) if (o >= 0) ends.push_back(o);
            ends.push_back(layout.total);
            std::sort(ends.begin(), ends.end());
            for (long o : at) {
                if (o < 0) {
                    parts.emplace_back();
                } else {
                    const long end = *std::upper_bound(ends.begin(), ends.end(), o);
                    parts.push_back(like.new_empty({end - o}));
                }
                pointers.push_back(mut(parts.back()));
            }
        }
    }
    // Array i of the layout as shape; undefined when the layout has none.
    Tensor view(int i, at::IntArrayRef shape) const {
        const int64_t n = c10::multiply_integers(shape);
        if (!parts.empty()) return parts[i].defined() ? parts[i].slice(0, 0, n).view(shape) : Tensor();
        return at[i] < 0 ? Tensor() : block.slice(0, at[i], at[i] + n).view(shape);
    }
    void* data() const { return mut(block); }
    void* const* part_pointers() const { return pointers.empty() ? nullptr : pointers.data(); }

    std::vector<long> at;
    Tensor block;
    std::vector<Tensor> parts;
    std::vector<void*> pointers;
};

int flags_of(const OptTensor& w_hr, const OptTensor& ln_hh, const OptTensor& ln_cw) {
    return (has(w_hr) ? HAS_PROJ : 0) | (has(ln_hh) ? HAS_LN_H : 0) | (has(ln_cw) ? HAS_LN_C : 0);
}

// lengths, h_mask, keep_h and keep_c as the kernels read them: int64, contiguous, bytes.
struct Masks {
    Masks(const OptTensor& lengths_, const OptTensor& h_mask_, const OptTensor& keep_h_, const OptTensor& keep_c_)
        : lengths(has(lengths_) ? lengths_->to(at::kLong).contiguous() : Tensor()),
          h_mask(contig(h_mask_)),
          keep_h(has(keep_h_) ? keep_h_->contiguous().view(at::kByte) : Tensor()),
          keep_c(has(keep_c_) ? keep_c_->contiguous().view(at::kByte) : Tensor()) {}
    Tensor lengths, h_mask, keep_h, keep_c;
};

void check_status(int status, const char* pass) {
    TORCH_CHECK_WITH(OutOfMemoryError, status == 0, "rnnkit fused engine: no memory for the ", pass,
                     " kernel's scratch");
}

// The checks every operator of one cell makes of its arguments (op: its name for messages).
void check_cell_args(const char* op, Cell cell, const Tensor& x, const OptTensor& w_ih, const OptTensor& b_ih,
                     const OptTensor& h0, const OptTensor& c0, const Tensor& w_hh, const OptTensor& b_hh,
                     const OptTensor& w_hr, const OptTensor& ln_hh, const OptTensor& ln_cw, const OptTensor& ln_cb,
                     const OptTensor& h_mask, const OptTensor& keep_h, const OptTensor& keep_c) {
    TORCH_CHECK(x.device().is_cpu(), op, " runs on CPU, and the input is on ", x.device());
    const auto dtype = x.scalar_type();
    TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, op, " runs float32 and float64, and the input is ", dtype);
    TORCH_CHECK(x.dim() == 3, op, ": expected x of 3 dimensions (T, B, I), got shape ", x.sizes());
    TORCH_CHECK(w_hh.dim() == 2, op, ": expected w_hh of 2 dimensions (G*H, R), got shape ", w_hh.sizes());
    const int64_t T = x.size(0), B = x.size(1), GH = w_hh.size(0), R = w_hh.size(1), H = GH / gates_of(cell);
    TORCH_CHECK(GH % gates_of(cell) == 0, op, ": w_hh's rows (", GH, ") are not ", gates_of(cell), " gates");
    expect(w_hh, op, "w_hh", {GH, R}, dtype);
    if (has(w_ih)) {
        expect(w_ih, op, "w_ih", {GH, x.size(2)}, dtype);
    } else {
        TORCH_CHECK(x.size(2) == GH, op, ": without w_ih, x is the gates' input side (T, B, ", GH, "), got ",
                    x.sizes());
        TORCH_CHECK(!has(b_ih), op, ": b_ih is given without w_ih");
    }
    expect(b_ih, op, "b_ih", {GH}, dtype);
    expect(h0, op, "h0", {B, R}, dtype);
    TORCH_CHECK(!has(c0) || cell == LSTM, op, ": c0 is given to a cell without one");
    expect(c0, op, "c0", {B, H}, dtype);
    expect(b_hh, op, "b_hh", {GH}, dtype);
    if (has(w_hr)) TORCH_CHECK(cell == LSTM, op, ": w_hr is given to a cell without a projection");
    expect(w_hr, op, "w_hr", {R, H}, dtype);
    TORCH_CHECK(has(w_hr) || R == H, op, ": w_hh has ", R, " columns and no w_hr projects to them");
    expect(ln_hh, op, "ln_hh", {GH}, dtype);
    TORCH_CHECK(has(ln_cw) == has(ln_cb), op, ": ln_cw and ln_cb come together");
    expect(ln_cw, op, "ln_cw", {H}, dtype);
    expect(ln_cb, op, "ln_cb", {H}, dtype);
    expect(h_mask, op, "h_mask", {B, R}, dtype);
    expect(keep_h, op, "keep_h", {T, B, R}, at::kBool);
    TORCH_CHECK(!has(keep_c) || (cell == LSTM && has(keep_h)), op, ": keep_c comes with keep_h, for an LSTM");
    expect(keep_c, op, "keep_c", {T, B, H}, at::kBool);
}

template <typename real>
std::tuple<Tensor, Tensor, Tensor, Tensor> forward_impl(
    Cell cell, const Tensor& xp, const OptTensor& w_ih, const OptTensor& b_ih, const OptTensor& h0,
    const OptTensor& c0, const Tensor& w_hh, const OptTensor& b_hh, const OptTensor& w_hr, const OptTensor& ln_hh,
    const OptTensor& ln_cw, const OptTensor& ln_cb, const OptTensor& lengths, const OptTensor& h_mask,
    const OptTensor& keep_h, const OptTensor& keep_c, bool save) {
    const int64_t T = xp.size(0), B = xp.size(1), GH = w_hh.size(0), R = w_hh.size(1), H = GH / gates_of(cell);
    Tensor pre, x, w_ih_c, b_ih_c;
    int64_t inputs = 0;
    if (!has(w_ih)) {  // xp is the gates' input side (T, B, G*H), computed before the loop
        pre = xp.contiguous();
    } else {  // xp is the input x (T, B, I), which the kernel projects: x W_ih^T + b_ih (T, B, G*H)
        x = xp.contiguous();
        inputs = x.size(2);
        w_ih_c = w_ih->contiguous();
        b_ih_c = contig(b_ih);
    }
    const OptTensor lengths_c = checked_lengths(lengths, B, T);
    const Plan plan = plan_for(cell, sizeof(real), T, B, inputs, GH, R, flags_of(w_hr, ln_hh, ln_cw), num_threads());
    const Workspace work = save ? Workspace(xp, plan.saved, xp.new_empty({plan.saved.total}))
                                : Workspace(xp, plan.unsaved);
    Tensor out = xp.new_empty({T, B, R}), h_n = xp.new_empty({B, R});
    Tensor c_n = cell == LSTM ? xp.new_empty({B, H}) : xp.new_empty({0});
    const Tensor h0_c = contig(h0), c0_c = contig(c0), w_hh_c = w_hh.contiguous();
    const Tensor b_hh_c = contig(b_hh), w_hr_c = contig(w_hr), ln_hh_c = contig(ln_hh), ln_cw_c = contig(ln_cw);
    const Tensor ln_cb_c = contig(ln_cb);
    const Masks masks(lengths_c, h_mask, keep_h, keep_c);
    using P = const real*;
    const int status = Kernels<real>::forward(
        plan.slices, plan.threads, plan.pthreads, plan.chunk, cell, save, int(T), int(B), int(H), int(R), int(inputs),
        P(ptr(pre)), P(ptr(x)), P(ptr(w_ih_c)), P(ptr(b_ih_c)), P(ptr(w_hh_c)), P(ptr(b_hh_c)), P(ptr(w_hr_c)),
        P(ptr(ln_hh_c)), P(ptr(ln_cw_c)), P(ptr(ln_cb_c)), static_cast<const int64_t*>(ptr(masks.lengths)),
        P(ptr(masks.h_mask)), static_cast<const uint8_t*>(ptr(masks.keep_h)),
        static_cast<const uint8_t*>(ptr(masks.keep_c)), P(ptr(h0_c)), P(ptr(c0_c)), static_cast<real*>(mut(out)),
        static_cast<real*>(mut(h_n)), cell == LSTM ? static_cast<real*>(mut(c_n)) : nullptr,
        static_cast<real*>(work.data()), reinterpret_cast<real* const*>(work.part_pointers()));
    check_status(status, "forward");
    return {out, h_n, c_n, save ? work.block : xp.new_empty({0})};
}

// dx (when the kernel projected x), dW_ih, db_ih, dW_hh, db_hh, dW_hr and dln_hh as torch's
// products after the backward kernel, for sizes where they beat the kernel's own.
void weight_grads_by_torch(Cell cell, int64_t T, int64_t B, const Tensor& w_hh, const Tensor& w_hr,
                           const Tensor& ln_hh, const Tensor& x_in, const Tensor& w_ih, const Tensor& h_mask,
                           const Workspace& work, const Workspace& dwork, const std::array<bool, 11>& needs,
                           bool has_bias_ih, bool has_bias, std::vector<Tensor>& g) {
    const int64_t GH = w_hh.size(0), R = w_hh.size(1), H = GH / gates_of(cell), rows = T * B;
    const Tensor dgi = dwork.view(D_GI, {rows, GH});
    const Tensor dgh = dwork.view(D_GH, {rows, GH}), dgh_raw = dwork.view(D_GH_RAW, {rows, GH});
    const Tensor dg_post = dgh.defined() ? dgh : dgi;  // the recurrent side's gradient after its layer norm (GRU: dgh)
    const Tensor dg_rec = dgh_raw.defined() ? dgh_raw : dg_post;  // and before it
    if (x_in.defined() && w_ih.defined()) {  // the input projection's, when the kernel did it
        if (needs[0]) g[0] = at::mm(dgi, w_ih).view({T, B, -1});  // (T, B, I)
        if (needs[1]) g[1] = at::mm(dgi.t(), x_in);              // (G*H, I)
        if (needs[2] && has_bias_ih) g[2] = dgi.sum(0);
    }
    if (needs[5]) {
        const Tensor hs = work.view(W_HS, {T + 1, B, R}).slice(0, 0, T);
        const Tensor h_in = h_mask.defined() ? hs * h_mask : hs;  // (T, B, R): what met W_hh
        g[5] = at::mm(dg_rec.t(), h_in.reshape({rows, R}));     // (G*H, R)
    }
    if (has_bias && needs[6]) g[6] = dg_post.sum(0);
    if (w_hr.defined() && needs[7]) g[7] = at::mm(dwork.view(D_PROJ, {rows, R}).t(), work.view(W_HR, {rows, H}));
    if (ln_hh.defined() && needs[8]) g[8] = (dg_post * work.view(W_GHAT, {rows, GH})).sum(0);
}

template <typename real>
std::vector<Tensor> backward_impl(Cell cell, const OptTensor& d_out_, const OptTensor& d_hn, const OptTensor& d_cn,
                                  const Tensor& work_block, const Tensor& xp, const OptTensor& w_ih_,
                                  const Tensor& w_hh_, const OptTensor& w_hr_, const OptTensor& ln_hh_,
                                  const OptTensor& ln_cw_, const OptTensor& lengths, const OptTensor& h_mask,
                                  const OptTensor& keep_h, const OptTensor& keep_c, bool has_bias_ih, bool has_bias,
                                  const std::array<bool, 11>& needs) {
    const int64_t T = xp.size(0), B = xp.size(1), GH = w_hh_.size(0), R = w_hh_.size(1), H = GH / gates_of(cell);
    const Tensor x_in = has(w_ih_) ? xp.contiguous().view({T * B, -1}) : Tensor();  // (T*B, I)
    const Tensor w_hh = w_hh_.contiguous(), w_ih = contig(w_ih_), w_hr = contig(w_hr_), ln_hh = contig(ln_hh_);
    const Tensor ln_cw = contig(ln_cw_);
    const int64_t inputs = x_in.defined() ? x_in.size(1) : 0;
    const Plan plan = plan_for(cell, sizeof(real), T, B, inputs, GH, R, flags_of(w_hr_, ln_hh_, ln_cw_),
                               num_threads());
    TORCH_CHECK(work_block.numel() == plan.saved.total && work_block.scalar_type() == xp.scalar_type(),
                "rnnkit::fused_rnn_backward: expected the forward pass's workspace of ", plan.saved.total,
                " elements, got ", work_block.numel());
    const Workspace work(w_hh, plan.saved, work_block.contiguous());
    const Masks masks(lengths, h_mask, keep_h, keep_c);
    const Tensor d_out = has(d_out_) ? d_out_->contiguous() : w_hh.new_zeros({T, B, R});
    const Tensor dh = has(d_hn) ? d_hn->clone(at::MemoryFormat::Contiguous) : w_hh.new_zeros({B, R});
    Tensor dc;
    if (cell == LSTM) dc = has(d_cn) ? d_cn->clone(at::MemoryFormat::Contiguous) : w_hh.new_zeros({B, H});
    const Workspace dwork(w_hh, plan.dlayout);
    const bool in_kernel = plan.weight_threads > 0;  // the weight gradients in the kernel, else by torch after it
    std::vector<Tensor> g(11);  // dx, dw_ih, db_ih, dh0, dc0, dw_hh, db_hh, dw_hr, dln_hh, dln_cw, dln_cb
    if (in_kernel) {
        if (needs[0] && x_in.defined()) g[0] = w_hh.new_empty({T, B, inputs});
        if (x_in.defined() && needs[1]) g[1] = w_hh.new_empty({GH, inputs});
        if (x_in.defined() && needs[2] && has_bias_ih) g[2] = w_hh.new_empty({GH});
        if (needs[5]) g[5] = w_hh.new_empty({GH, R});
        if (has_bias && needs[6]) g[6] = w_hh.new_empty({GH});
        if (w_hr.defined() && needs[7]) g[7] = w_hh.new_empty({R, H});
        if (ln_hh.defined() && needs[8]) g[8] = w_hh.new_empty({GH});
    }
    if (ln_cw.defined() && needs[9]) g[9] = w_hh.new_empty({H});
    if (ln_cw.defined() && needs[10]) g[10] = w_hh.new_empty({H});
    using P = const real*;
    auto out = [&](int i) { return static_cast<real*>(mut(g[i])); };
    const int status = Kernels<real>::backward(
        plan.backward_slices, plan.backward_threads, plan.weight_threads, cell, int(T), int(B), int(H), int(R),
        int(inputs), P(ptr(w_hh)), P(ptr(w_hr)), P(ptr(ln_hh)), P(ptr(ln_cw)),
        static_cast<const int64_t*>(ptr(masks.lengths)), P(ptr(masks.h_mask)),
        static_cast<const uint8_t*>(ptr(masks.keep_h)), static_cast<const uint8_t*>(ptr(masks.keep_c)),
        P(work.data()), nullptr, P(ptr(d_out)), static_cast<real*>(mut(dh)), static_cast<real*>(mut(dc)),
        static_cast<real*>(dwork.data()), reinterpret_cast<real* const*>(dwork.part_pointers()), P(ptr(x_in)),
        P(ptr(w_ih)), out(0), out(1), out(2), out(5), out(6), out(7), out(8), out(9), out(10));
    check_status(status, "backward");
    if (!x_in.defined() && needs[0]) g[0] = dwork.view(D_GI, {T, B, GH});  // the gates' input side came in: dgi
    if (!in_kernel) {
        weight_grads_by_torch(cell, T, B, w_hh, w_hr, ln_hh, x_in, w_ih, masks.h_mask, work, dwork, needs,
                              has_bias_ih, has_bias, g);
    }
    if (needs[3]) g[3] = dh;
    if (needs[4]) g[4] = dc;
    return g;
}

}  // namespace

OptTensor checked_lengths(const OptTensor& lengths, int64_t B, int64_t T) {
    if (!has(lengths)) return std::nullopt;
    TORCH_CHECK_VALUE(lengths->device().is_cpu(), "rnnkit: expected lengths on the CPU, got ", lengths->device());
    const Tensor c = lengths->to(at::kLong).contiguous();
    bool ok = c.dim() == 1 && c.size(0) == B;
    if (ok) {
        const int64_t* n = c.const_data_ptr<int64_t>();
        for (int64_t b = 0; b < B && ok; b++) ok = n[b] >= 1 && n[b] <= T;
    }
    if (!ok) {
        std::ostringstream got;
        const Tensor flat = c.reshape({-1});
        const int64_t* n = flat.const_data_ptr<int64_t>();
        for (int64_t i = 0; i < flat.numel(); i++) got << (i ? ", " : "") << n[i];
        TORCH_CHECK_VALUE(false, "rnnkit: expected ", B, " lengths in [1, ", T, "], got [", got.str(), "]");
    }
    return c;
}

Tensor reverse_padded(const Tensor& x, const OptTensor& lengths) {
    if (!has(lengths)) return x.flip({0});
    const int64_t T = x.size(0), B = x.size(1);
    const Tensor t = at::arange(T, x.options().dtype(at::kLong)).unsqueeze(1);  // (T, 1)
    const Tensor n = lengths->to(at::kLong);
    Tensor index = at::where(t < n, n - 1 - t, t);  // (T, B): source step of each slot
    std::vector<int64_t> shape{T, B};
    shape.resize(x.dim(), 1);
    return x.gather(0, index.view(shape).expand_as(x));
}

std::tuple<Tensor, Tensor, Tensor, Tensor> fused_rnn_cpu(
    const Tensor& x, const OptTensor& w_ih, const OptTensor& b_ih, const OptTensor& h0, const OptTensor& c0,
    const Tensor& w_hh, const OptTensor& b_hh, const OptTensor& w_hr, const OptTensor& ln_hh,
    const OptTensor& ln_cw, const OptTensor& ln_cb, const OptTensor& lengths, const OptTensor& h_mask,
    const OptTensor& keep_h, const OptTensor& keep_c, c10::string_view mode, bool save) {
    const Cell cell = cell_of(std::string_view(mode.data(), mode.size()));
    check_cell_args("rnnkit::fused_rnn", cell, x, w_ih, b_ih, h0, c0, w_hh, b_hh, w_hr, ln_hh, ln_cw, ln_cb, h_mask,
                    keep_h, keep_c);
    return by_dtype(x.scalar_type(), [&](auto zero) {
        return forward_impl<decltype(zero)>(cell, x, w_ih, b_ih, h0, c0, w_hh, b_hh, w_hr, ln_hh, ln_cw, ln_cb,
                                            lengths, h_mask, keep_h, keep_c, save);
    });
}

std::vector<Tensor> cell_backward(Cell cell, const OptTensor& d_out, const OptTensor& d_hn, const OptTensor& d_cn,
                                  const Tensor& work, const Tensor& x, const OptTensor& w_ih, const Tensor& w_hh,
                                  const OptTensor& w_hr, const OptTensor& ln_hh, const OptTensor& ln_cw,
                                  const OptTensor& lengths, const OptTensor& h_mask, const OptTensor& keep_h,
                                  const OptTensor& keep_c, bool has_bias_ih, bool has_bias,
                                  const std::array<bool, 11>& needs) {
    return by_dtype(x.scalar_type(), [&](auto zero) {
        return backward_impl<decltype(zero)>(cell, d_out, d_hn, d_cn, work, x, w_ih, w_hh, w_hr, ln_hh, ln_cw,
                                             lengths, h_mask, keep_h, keep_c, has_bias_ih, has_bias, needs);
    });
}

namespace {

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>
fused_rnn_backward_cpu(const OptTensor& d_out, const OptTensor& d_hn, const OptTensor& d_cn, const Tensor& work,
                       const Tensor& x, const OptTensor& w_ih, const Tensor& w_hh, const OptTensor& w_hr,
                       const OptTensor& ln_hh, const OptTensor& ln_cw, const OptTensor& lengths,
                       const OptTensor& h_mask, const OptTensor& keep_h, const OptTensor& keep_c,
                       c10::string_view mode, bool has_bias_ih, bool has_bias, const c10::List<bool>& needs_list) {
    const std::vector<bool> needs_ = needs_list.vec();
    const Cell cell = cell_of(std::string_view(mode.data(), mode.size()));
    const char* op = "rnnkit::fused_rnn_backward";
    // (ln_cb is no input of the backward pass: ln_cw stands in for it, which it must match)
    check_cell_args(op, cell, x, w_ih, std::nullopt, std::nullopt, std::nullopt, w_hh, std::nullopt, w_hr, ln_hh,
                    ln_cw, ln_cw, h_mask, keep_h, keep_c);
    TORCH_CHECK(needs_.size() == 11, op, ": expected 11 needs, got ", needs_.size());
    const int64_t T = x.size(0), B = x.size(1), R = w_hh.size(1), H = w_hh.size(0) / gates_of(cell);
    expect(d_out, op, "d_out", {T, B, R}, x.scalar_type());
    expect(d_hn, op, "d_hn", {B, R}, x.scalar_type());
    if (cell == LSTM) expect(d_cn, op, "d_cn", {B, H}, x.scalar_type());
    const OptTensor lengths_c = checked_lengths(lengths, B, T);
    std::array<bool, 11> needs{};
    std::copy(needs_.begin(), needs_.end(), needs.begin());
    auto g = cell_backward(cell, d_out, d_hn, cell == LSTM ? d_cn : std::nullopt, work, x, w_ih, w_hh, w_hr, ln_hh,
                           ln_cw, lengths_c, h_mask, keep_h, keep_c, has_bias_ih, has_bias, needs);
    for (auto& t : g) if (!t.defined()) t = x.new_empty({0});
    return {g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7], g[8], g[9], g[10]};
}

}  // namespace

TORCH_LIBRARY_IMPL(rnnkit, CPU, m) {
    m.impl("fused_rnn", &fused_rnn_cpu);
    m.impl("fused_rnn_backward", &fused_rnn_backward_cpu);
}

}  // namespace rnnkit
