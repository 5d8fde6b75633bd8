"""quant=int4_weight_only on the pytorch backend: every nn.Linear becomes an Int4Linear whose weight
is stored in 4 bits, group-wise along the input dimension (torchao's tinygemm quantization helpers),
and multiplied by torch's own CPU kernel ``aten._weight_int4pack_mm_for_cpu``. The artifact stays a
frozen TorchScript file like every pytorch cell.

Why not torchao's configs: in torchao 0.18 on x86, Int4WeightOnlyConfig's layouts need mslk (CUDA)
or an XPU/NPU, the CPU int4 kernels of Int8DynamicActivationIntxWeightConfig ("opaque" packing)
need torchao's C++ kernel library, which the PyPI wheel does not load here, and the remaining
formats keep the 4-bit values in int8 bytes and dequantize to fp32 on every call (measured: 6-35x
slower than fp32 on an mlp, at a third of its size)."""
from __future__ import annotations

from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from torch import nn

# The CPU packing kernel tiles K in chunks of inner_k_tiles * 16 and needs N in multiples of 16 (padded with
# zero weights when a layer is not a multiple; the padding is sliced off the output).
INNER_K_TILES = 2
K_ALIGN = INNER_K_TILES * 16
N_ALIGN = 16
COMPUTE = {0: torch.float32, 1: torch.float32, 3: torch.bfloat16}  # quant.accuracy_level -> activations


def _ceil_to(x: int, m: int) -> int:
    return -(-x // m) * m


def quantize_groups(w: torch.Tensor, group: int, symmetric: bool, dtype: torch.dtype):
    """4-bit codes (int32, 0..15) and tinygemm's packed [K/group, N, 2] scales and zeros, for
    w = (code - 8) * scale + zero per group. Asymmetric: torchao's groupwise_affine_quantize_tensor
    (min/max per group, float zero point). Symmetric: zero = 0, scale = max|w| / 7."""
    from torchao.quantization.utils import groupwise_affine_quantize_tensor, pack_tinygemm_scales_and_zeros

    if not symmetric:
        return groupwise_affine_quantize_tensor(w.to(dtype), 4, group, dtype=dtype)
    g = w.reshape(w.shape[0], -1, group)
    scale = (g.abs().amax(dim=-1) / 7.0).clamp(min=torch.finfo(torch.float32).tiny)
    codes = (torch.round(g / scale.unsqueeze(-1)).clamp(-8, 7) + 8).to(torch.int32).reshape(w.shape)
    return codes, pack_tinygemm_scales_and_zeros(scale.to(dtype), torch.zeros_like(scale).to(dtype), dtype)


class Int4Linear(nn.Module):
    def __init__(self, linear: nn.Linear, group: int, symmetric: bool, compute: torch.dtype) -> None:
        super().__init__()
        w = linear.weight.detach().float()
        n, k = w.shape
        kp, np_ = _ceil_to(k, max(group, K_ALIGN)), _ceil_to(n, N_ALIGN)
        codes, sz = quantize_groups(F.pad(w, (0, kp - k, 0, np_ - n)), group, symmetric, compute)
        self.register_buffer("packed", torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, INNER_K_TILES))
        self.register_buffer("scales_and_zeros", sz)
        self.register_buffer("bias", linear.bias.detach().float().clone() if linear.bias is not None
                             else torch.zeros(n))
        self.group, self.k_pad, self.n, self.compute = group, kp - k, n, compute

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])
        if self.k_pad:
            x2 = F.pad(x2, (0, self.k_pad))
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2.to(self.compute), self.packed, self.group,
                                                      self.scales_and_zeros)
        y = y[:, :self.n].to(x.dtype) + self.bias
        return y.reshape(lead + (self.n,))


def weight_elements(model: nn.Module) -> int:
    return sum(p.numel() for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding,
                                                                        nn.LSTM, nn.GRU))
               for p in m.parameters(recurse=False) if p.dim() >= 2)


def int4_linears(model: nn.Module, group: int, symmetric: bool, accuracy_level: int) -> Tuple[nn.Module, Dict]:
    """A copy of ``model`` with every nn.Linear as an Int4Linear; returns it with facts for the tags."""
    import copy

    compute = COMPUTE[accuracy_level]
    total = weight_elements(model)
    out = copy.deepcopy(model).eval()
    replaced = 0
    for name, module in list(out.named_modules()):
        for child_name, child in list(module.named_children()):
            if type(child) is nn.Linear:
                setattr(module, child_name, Int4Linear(child, group, symmetric, compute))
                replaced += 1
    left = weight_elements(out)
    return out, {"int4_linears": str(replaced), "compute_dtype": str(compute).replace("torch.", ""),
                 "low_bit_weight_fraction": f"{1.0 - left / total:.4f}" if total else "0"}
