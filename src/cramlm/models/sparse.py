"""SWAT's sparse linear layer (Sparse Weight Activation Training, Raihan & Aamodt 2020).

Forward: y = x W_k^T with W_k the top-K magnitudes of W (the rest zeroed). The backward keeps only the top-K
magnitudes of x: dL/dW = dy^T x_k (sparse activations), dL/dx = dy W_k (sparse weights). The gradient lands on
the dense W (straight-through), so weights outside the mask keep learning and can re-enter it.

x_k is saved compactly (a bit mask plus the kept values), so the memory saved for the backward really shrinks;
the weight mask is computed once per optimizer step (the run's `Swat.update` clears it before each step; the
weights do not change between micro-batches), and afresh in every forward without gradients (evaluation).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Granularity = Literal["tensor", "row"]
_BITS = 2 ** torch.arange(8, dtype=torch.uint8)


def keep_count(n: int, sparsity: float) -> int:
    """How many of `n` values top-K keeps at `sparsity`: max(1, round((1 - sparsity) n))."""
    return max(1, round((1.0 - sparsity) * n))


def topk_mask(x: Tensor, sparsity: float, granularity: Granularity) -> Tensor:
    """Boolean mask of the top-K |x|: exactly keep_count(numel) per tensor, or keep_count(last dim) per row."""
    mag = x.detach().abs()
    mask = torch.zeros(x.shape, dtype=torch.bool, device=x.device)
    if granularity == "row":
        idx = mag.topk(keep_count(x.shape[-1], sparsity), dim=-1, sorted=False).indices
        return mask.scatter_(-1, idx, True)
    idx = mag.flatten().topk(keep_count(x.numel(), sparsity), sorted=False).indices
    mask.view(-1)[idx] = True
    return mask


def mask_2_4(w: Tensor) -> Tensor:
    """2:4 semi-structured mask: in every 4 consecutive weights of a row, the 2 largest |w| (what Ampere's sparse
    tensor cores execute). The input width must be a multiple of 4."""
    out, inp = w.shape
    if inp % 4:
        raise ValueError(f"2:4 sparsity needs an input width divisible by 4 (got {inp})")
    groups = w.detach().abs().reshape(out, inp // 4, 4)
    idx = groups.topk(2, dim=-1, sorted=False).indices
    return torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, idx, True).reshape(out, inp)


def pack_bits(mask: Tensor) -> Tensor:
    """A boolean tensor as uint8 bytes, 8 flags each (1 bit per element instead of 1 byte)."""
    flat = mask.reshape(-1)
    pad = -flat.numel() % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return (flat.view(-1, 8).to(torch.uint8) * _BITS.to(mask.device)).sum(-1, dtype=torch.uint8)


def unpack_bits(packed: Tensor, shape: torch.Size) -> Tensor:
    """Inverse of `pack_bits`."""
    n = shape.numel()
    flags = packed[:, None].bitwise_and(_BITS.to(packed.device)).ne(0)
    return flags.reshape(-1)[:n].reshape(shape)


class _SwatLinearFn(torch.autograd.Function):
    """F.linear with sparse weights, whose backward uses top-K activations (see the module docstring)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, w_mask: Tensor, semi: Tensor | None,
                a_sparsity: float, granularity: Granularity) -> Tensor:  # type: ignore[override]
        y = F.linear(x, weight * w_mask if semi is None else semi, bias)
        a_mask = topk_mask(x, a_sparsity, granularity)
        dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
        # kept in the dtype the matmul runs in, as autograd would save x for a dense F.linear
        ctx.save_for_backward(x.masked_select(a_mask).to(dtype), pack_bits(a_mask), weight, w_mask)
        ctx.x_shape, ctx.has_bias = x.shape, bias is not None
        return y

    @staticmethod
    def backward(ctx, grad_y: Tensor):  # type: ignore[override]
        values, bits, weight, w_mask = ctx.saved_tensors
        g = grad_y.reshape(-1, grad_y.shape[-1])
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = (g @ (weight * w_mask).to(g.dtype)).reshape(ctx.x_shape)
        if ctx.needs_input_grad[1]:
            a_mask = unpack_bits(bits, ctx.x_shape)
            x_sparse = torch.zeros(ctx.x_shape, dtype=values.dtype, device=values.device).masked_scatter_(
                a_mask, values)
            grad_w = (g.t() @ x_sparse.reshape(-1, ctx.x_shape[-1]).to(g.dtype)).to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g.sum(0)
        return grad_x, grad_w, grad_b, None, None, None, None


class SwatLinear(nn.Linear):
    """An nn.Linear (same parameters and state dict) whose forward follows SWAT while `active`.

    `sparsify()` turns a built nn.Linear into one in place, so checkpoints, optimizers and exports see the usual
    module; inactive (the dense warm-up) it runs F.linear as before.
    """

    active: bool
    w_sparsity: float
    a_sparsity: float
    granularity: Granularity
    two_four: bool

    @classmethod
    def sparsify(cls, linear: nn.Linear, weights: float, activations: float, granularity: Granularity,
                 two_four: bool = False) -> "SwatLinear":
        linear.__class__ = cls
        linear.active, linear.w_sparsity, linear.a_sparsity = False, weights, activations
        linear.granularity, linear.two_four = granularity, two_four
        linear._cache_key, linear._cache = None, None
        return linear  # type: ignore[return-value]

    def weight_mask(self) -> Tensor:
        """The top-K (or 2:4) mask of the current weight."""
        if self.two_four:
            return mask_2_4(self.weight)
        return topk_mask(self.weight, self.w_sparsity, self.granularity)

    def _masks(self, dtype: torch.dtype) -> tuple[Tensor, Tensor | None]:
        """(weight mask, 2:4 semi-structured weight or None); while training, kept until `_cache_key` is reset or
        the weight is replaced or changed in place by a non-fused kernel (a fused optimizer step leaves `_version`
        as it was, hence the reset each step)."""
        w = self.weight
        key = (w._version, w.data_ptr(), dtype)
        if key != self._cache_key or not torch.is_grad_enabled():
            mask = self.weight_mask()
            packed = None
            if self.two_four:
                from torch.sparse import to_sparse_semi_structured

                packed = to_sparse_semi_structured((w.detach() * mask).to(dtype))
            self._cache_key, self._cache = key, (mask, packed)
        return self._cache

    def forward(self, x: Tensor) -> Tensor:
        if not self.active:
            return F.linear(x, self.weight, self.bias)
        dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
        mask, packed = self._masks(dtype)
        bias = self.bias
        if packed is not None:  # a semi-structured matmul takes its operands in its own dtype
            x, bias = x.to(dtype), bias.to(dtype) if bias is not None else None
        if not torch.is_grad_enabled():
            return F.linear(x, self.weight * mask if packed is None else packed, bias)
        return _SwatLinearFn.apply(x, self.weight, bias, mask, packed, self.a_sparsity, self.granularity)

    def extra_repr(self) -> str:
        kind = "2:4" if self.two_four else f"{self.w_sparsity:g} per {self.granularity}"
        return f"{super().extra_repr()}, swat weights {kind}, activations {self.a_sparsity:g}, active={self.active}"
