"""int8 and bfloat16 inference (and bfloat16 training) on the CPU, paired in one process (shuffled rounds, medians):
rnnkit.quantize's int8 layers against torch's dynamically quantized ones
(torch.ao.quantization.quantize_dynamic, int8 weights and activations, fbgemm), and both against
float32 (rnnkit's default engine and torch.nn), under torch.inference_mode.

1. Whole sequences at the grid's sizes (T, B, I, H), LSTM and GRU.
2. One-step generation with the `rnnkit train lm` default model (embedding 64, 2 LSTM layers of
   256, a linear head over 96 characters; T = B = 1, the state carried in): the model as a whole,
   its recurrent layer and head both quantized, as torch's tutorial quantizes its LSTM model.
3. bfloat16 modules (`.to(torch.bfloat16)`) at the grid's sizes: rnnkit's (rnnkit::bf16_stack on
   AVX-512 BF16) against torch.nn's in bfloat16 and rnnkit's in float32.
4. The same in training (a forward and backward pass, outside inference_mode): rnnkit's bfloat16
   kernels (rnnkit::fused_stack of bfloat16 tensors; oneDNN's for an LSTM below 256 units)
   against torch.nn's in bfloat16 and rnnkit's fused float32 engine.

    python benchmarks/int8.py > benchmarks/int8.txt

rnnkit's int8 products use AVX-512 VNNI where the CPU has it (said in the first line), AVX2's
16-bit products else; the numbers are this machine's.
"""

from __future__ import annotations

import argparse
import copy
import warnings

import torch
from torch import nn

import rnnkit
from rnnkit.bench import DEFAULT_SIZES, paired_medians
from rnnkit.engines import _library
from rnnkit.models import LanguageModel, LanguageModelConfig


def torch_int8(model: nn.Module) -> nn.Module:
    """torch's dynamic quantization of the model's LSTM, GRU and Linear layers (a layer given
    alone goes in a container: quantize_dynamic replaces children, never the module it is given)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its deprecation notice (torch.ao.quantization)
        from torch.ao.quantization import quantize_dynamic

        if isinstance(model, (nn.LSTM, nn.GRU)):
            return quantize_dynamic(nn.ModuleDict({"layer": model}), {type(model)}, dtype=torch.qint8)["layer"]
        return quantize_dynamic(model, {nn.LSTM, nn.GRU, nn.Linear}, dtype=torch.qint8)


def time_all(fns: dict, budget: float) -> dict[str, float]:
    for fn in fns.values():
        for _ in range(3):
            fn()
    return {k: v * 1e3 for k, v in paired_medians(fns, rounds=5, budget_s=budget, seed=None).items()}


def sequences(budget: float) -> None:
    print("\n## Whole sequences: median ms; int8 speed-up = the other / rnnkit int8")
    print("| cell | (T, B, I, H) | torch.nn f32 | torch int8 | rnnkit f32 | rnnkit int8 | vs torch int8 | "
          "vs rnnkit f32 | largest difference to f32 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for cell in ("LSTM", "GRU"):
        for T, B, I, H in DEFAULT_SIZES:
            torch.manual_seed(0)
            ref = getattr(nn, cell)(I, H).eval()
            ours = rnnkit.from_torch(ref).eval()
            tq, rq = torch_int8(copy.deepcopy(ref)), rnnkit.quantize(ours)
            x = torch.randn(T, B, I)
            assert type(tq) is not type(ref), "torch's quantize_dynamic left the layer in float"
            with torch.inference_mode():
                diff = (rq(x)[0] - ours(x)[0]).abs().max().item()
                t = time_all({"torch": lambda: ref(x), "torch int8": lambda: tq(x), "rnnkit": lambda: ours(x),
                              "rnnkit int8": lambda: rq(x)}, budget)
            print(f"| {cell} | ({T}, {B}, {I}, {H}) | {t['torch']:.3f} | {t['torch int8']:.3f} | {t['rnnkit']:.3f} | "
                  f"{t['rnnkit int8']:.3f} | {t['torch int8'] / t['rnnkit int8']:.2f}x | "
                  f"{t['rnnkit'] / t['rnnkit int8']:.2f}x | {diff:.1e} |", flush=True)


def generation(budget: float) -> None:
    print("\n## One-step generation, the `train lm` default model (T = B = 1): median us")
    torch.manual_seed(0)
    ours = LanguageModel(LanguageModelConfig(vocab_size=96)).eval()
    ref = copy.deepcopy(ours)
    ref.rnn = rnnkit.to_torch(ours.rnn)
    tq, rq = torch_int8(copy.deepcopy(ref)), rnnkit.quantize(ours)
    token = torch.tensor([[5]])
    with torch.inference_mode():
        states = {name: model(token)[1] for name, model in
                  (("torch", ref), ("torch int8", tq), ("rnnkit", ours), ("rnnkit int8", rq))}
        models = {"torch": ref, "torch int8": tq, "rnnkit": ours, "rnnkit int8": rq}
        fns = {name: (lambda m=model, s=states[name]: m(token, s)) for name, model in models.items()}
        t = time_all(fns, budget)
    print("| torch.nn f32 | torch int8 | rnnkit f32 | rnnkit int8 | vs torch int8 | vs torch.nn f32 | vs rnnkit f32 |")
    print("|---|---|---|---|---|---|---|")
    us = {k: v * 1e3 for k, v in t.items()}
    print(f"| {us['torch']:.1f} | {us['torch int8']:.1f} | {us['rnnkit']:.1f} | {us['rnnkit int8']:.1f} | "
          f"{us['torch int8'] / us['rnnkit int8']:.2f}x | {us['torch'] / us['rnnkit int8']:.2f}x | "
          f"{us['rnnkit'] / us['rnnkit int8']:.2f}x |", flush=True)


def bfloat16(budget: float, *, training: bool) -> None:
    """The bfloat16 tables: inference (under inference_mode) or training (a forward and backward
    pass), rnnkit's bfloat16 against torch.nn's bfloat16 and rnnkit's float32."""
    if training:
        title, last = "training, a forward and backward pass", "W_hh's gradient: largest difference to f32, of its largest"
    else:
        title, last = "modules, whole sequences", "largest difference to f32"
    print(f"\n## bfloat16 {title}: median ms; speed-up = the other / rnnkit bf16")
    print(f"| cell | (T, B, I, H) | torch.nn bf16 | rnnkit f32 | rnnkit bf16 | vs torch.nn bf16 | vs rnnkit f32 | {last} |")
    print("|---|---|---|---|---|---|---|---|")

    def step(model: nn.Module, inputs: torch.Tensor) -> None:
        model.zero_grad(set_to_none=True)
        model(inputs)[0].float().sum().backward()

    for cell in ("LSTM", "GRU"):
        for T, B, I, H in DEFAULT_SIZES:
            torch.manual_seed(0)
            ours = getattr(rnnkit, cell)(I, H).train(training)
            ours16 = copy.deepcopy(ours).to(torch.bfloat16)
            ref16 = rnnkit.to_torch(ours).to(torch.bfloat16).train(training)
            x = torch.randn(T, B, I)
            x16 = x.to(torch.bfloat16)
            if training:
                step(ours, x)
                step(ours16, x16)
                want, got = ours.weight_hh_l0.grad, ours16.weight_hh_l0.grad.float()
                diff = ((got - want).abs().max() / want.abs().max()).item()
                t = time_all({"torch bf16": lambda: step(ref16, x16), "rnnkit": lambda: step(ours, x),
                              "rnnkit bf16": lambda: step(ours16, x16)}, budget)
            else:
                with torch.inference_mode():
                    diff = (ours16(x16)[0].float() - ours(x)[0]).abs().max().item()
                    t = time_all({"torch bf16": lambda: ref16(x16), "rnnkit": lambda: ours(x),
                                  "rnnkit bf16": lambda: ours16(x16)}, budget)
            print(f"| {cell} | ({T}, {B}, {I}, {H}) | {t['torch bf16']:.3f} | {t['rnnkit']:.3f} | "
                  f"{t['rnnkit bf16']:.3f} | {t['torch bf16'] / t['rnnkit bf16']:.2f}x | "
                  f"{t['rnnkit'] / t['rnnkit bf16']:.2f}x | {diff:.1e} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=4.0, help="seconds of timing per comparison")
    args = parser.parse_args()
    loaded = _library.load()
    assert not isinstance(loaded, str), loaded
    vnni = bool(torch.ops.rnnkit._policy("int8_vnni"))
    bf16 = bool(torch.ops.rnnkit._policy("bf16_native"))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; rnnkit's int8 products: "
          f"{'AVX-512 VNNI' if vnni else 'AVX2 / portable'}; bfloat16: "
          f"{'AVX-512 BF16' if bf16 else 'none (bfloat16 layers run torch kernels)'}")
    sequences(args.budget)
    generation(args.budget)
    bfloat16(args.budget, training=False)
    bfloat16(args.budget, training=True)


if __name__ == "__main__":
    main()
