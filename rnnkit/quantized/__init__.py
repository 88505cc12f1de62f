"""int8 inference on a CPU: rnnkit.quantize(model) replaces a trained model's recurrent layers
(rnnkit's and torch.nn's RNN, LSTM, GRU) and linear layers by the int8 modules here, whose
kernels (rnnkit::int8_stack, rnnkit::int8_linear) multiply int8 weights by int8 activations
with AVX-512 VNNI where the CPU has it, and a portable path where it does not.

    qmodel = rnnkit.quantize(model)      # a copy; model is unchanged
    with torch.inference_mode():
        out, h_n = qmodel.rnn(x)         # same shapes, float32 in and out
"""

from rnnkit.quantized._modules import GRU, LSTM, RNN, Linear, WeightOnly
from rnnkit.quantized._quantize import quantize

__all__ = ["GRU", "LSTM", "RNN", "Linear", "WeightOnly", "quantize"]


def _register_with_torch() -> None:
    """rnnkit's layers in the mapping of torch's dynamic quantization (torch.ao.quantization, which
    torch imports), so that quantize_dynamic(model, {rnnkit.LSTM, ...}) swaps them for these."""
    try:
        from torch.ao.quantization.quantization_mappings import DEFAULT_DYNAMIC_QUANT_MODULE_MAPPINGS
    except ImportError:  # a torch without it
        return
    import rnnkit.layers as layers

    for float_type, int8_type in ((layers.RNN, RNN), (layers.LSTM, LSTM), (layers.GRU, GRU)):
        DEFAULT_DYNAMIC_QUANT_MODULE_MAPPINGS.setdefault(float_type, int8_type)


_register_with_torch()
