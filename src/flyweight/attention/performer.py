"""FAVOR+ (Performer): softmax attention through positive orthogonal random features, O(T * m) memory.

``causal=True``: query i sums over keys j <= i only (chunked prefix sums, ``causal_feature_sums``).
On CUDA fp16/bf16 (``impl="auto"``) fused Triton kernels compute it, forward and backward: non-causal
(flyweight.kernels.feature_attention / performer_backward) and causal (causal_feature_attention /
causal_lowrank_backward). ``impl="torch"`` forces the PyTorch path.
"""

from __future__ import annotations

import math
import numbers

import torch

from flyweight.attention.base import Attention, AttentionCost, check_impl, no_queries, register_attention, use_kernel
from flyweight.attention.features import causal_feature_sums, gaussian_orthogonal_matrix, log_features


class RandomFeatureAttention(Attention):
    """Holds the (m, E) projection buffer ``features``, drawn lazily from ``seed`` once E is known."""

    cosh = False

    @property
    def backward_kernel_dtypes(self) -> tuple:
        """The dtypes whose backward kernels passed the H200 numerics check (BENCHMARKS.md): fp16, and
        bf16 for the non-causal kernels (every case, 3x logits and padding included). The causal bf16
        backward failed at 3x logits before the fp32 saved output and is not re-checked since, so
        impl='auto' trains it through the PyTorch path."""
        return (torch.float16,) if self.causal else (torch.float16, torch.bfloat16)

    def __init__(self, nb_features: int = 256, seed: int = 0, causal: bool = False, impl: str = "auto"):
        super().__init__()
        self.causal = bool(causal)
        self.impl = check_impl(impl)
        if (isinstance(nb_features, bool) or not isinstance(nb_features, numbers.Integral) or nb_features < 1
                or (self.cosh and nb_features % 2)):
            raise ValueError(
                f"nb_features must be a positive{' even' if self.cosh else ''} integer, got {nb_features!r}"
            )
        self.nb_features = int(nb_features)
        self.seed = int(seed)
        self.register_buffer("features", torch.empty(0), persistent=True)

    @property
    def nb_projections(self) -> int:
        return self.nb_features // 2 if self.cosh else self.nb_features

    def redraw_features(self, seed: int | None = None, head_dim: int | None = None) -> None:
        """Draw a fresh projection (from ``seed``, or the current seed + 1 when None)."""
        self.seed = self.seed + 1 if seed is None else int(seed)
        dim = head_dim if head_dim is not None else self.features.shape[-1]
        if not dim:
            raise ValueError(
                f"{self.kind}.redraw_features: head_dim is unknown before the first call; pass head_dim"
            )
        w = gaussian_orthogonal_matrix(self.nb_projections, dim, self.seed)
        self.features = w.to(self.features.device)

    def _projection(self, head_dim: int, device) -> torch.Tensor:
        if self.features.numel() == 0 or self.features.shape[-1] != head_dim:
            if self.features.numel():
                raise ValueError(
                    f"{self.kind}: features were drawn for head_dim {self.features.shape[-1]}, "
                    f"called with {head_dim}"
                )
            self.redraw_features(self.seed, head_dim)
        if self.features.device != device:
            self.features = self.features.to(device)
        return self.features

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # a buffer still empty (head_dim unknown until the first call) takes the stored shape; a drawn one
        # keeps its shape, so a mismatch is reported by load_state_dict
        key = prefix + "features"
        if key in state_dict and self.features.numel() == 0:
            self.features = torch.empty_like(state_dict[key], device=self.features.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _use_kernel(self, q, k, v) -> bool:
        return use_kernel(self.impl, q, k, v, self.backward_kernel_dtypes)

    def extra_repr(self):
        return f"nb_features={self.nb_features}, seed={self.seed}, causal={self.causal}, impl={self.impl}"


@register_attention("performer")
class PerformerAttention(RandomFeatureAttention):
    """out_i = phi(q_i).(sum_j phi(k_j) v_j^T) / phi(q_i).(sum_j phi(k_j)), phi the positive "exp" map."""

    ACCEPTS = ("nb_features", "seed", "eps", "causal", "impl")

    def __init__(self, nb_features: int = 256, seed: int = 0, eps: float = 0.0, causal: bool = False,
                 impl: str = "auto"):
        super().__init__(nb_features=nb_features, seed=seed, causal=causal, impl=impl)
        # eps > 0: out = num / (den + eps) on the unshifted features (the official T2T token performer's 1e-8)
        self.eps = float(eps)

    def forward(self, q, k, v, softmax_temp=None, key_padding_mask=None):
        self._check(q, k, v, key_padding_mask)
        if (empty := no_queries(q, v)) is not None:
            return empty
        E = q.shape[-1]
        temp = self._temp(softmax_temp, E)
        proj = self._projection(E, q.device)
        if self._use_kernel(q, k, v):
            from flyweight.kernels.causal_lowrank_backward import causal_performer_attention
            from flyweight.kernels.performer_backward import performer_attention

            fn = causal_performer_attention if self.causal else performer_attention
            return fn(q, k, v, proj, temp, self.eps, key_padding_mask)  # forward and backward kernels
        return self._torch_forward(q, k, v, proj, temp, key_padding_mask)

    def _torch_forward(self, q, k, v, proj, temp, key_padding_mask):
        lq = log_features(q, proj, temp, self.cosh)
        lk = log_features(k, proj, temp, self.cosh)
        if key_padding_mask is not None:  # padded keys get zero features and do not set the offset
            lk = lk.masked_fill(key_padding_mask[:, None, :, None], float("-inf"))
        # per-query and per-(batch, head) key offsets cancel between numerator and denominator
        cq = lq.amax(-1, keepdim=True)
        ck = lk.amax((-2, -1), keepdim=True).clamp_min(torch.finfo(lk.dtype).min)
        fq, fk = torch.exp(lq - cq), torch.exp(lk - ck)
        if self.causal:
            num, den = causal_feature_sums(fq, fk, v.to(fk.dtype))
        else:
            kv = torch.einsum("bhtm,bhte->bhme", fk, v.to(fk.dtype))
            num = torch.einsum("bhtm,bhme->bhte", fq, kv)
            den = torch.einsum("bhtm,bhm->bht", fq, fk.sum(-2))[..., None]
        if self.eps > 0:  # eps on the unshifted scale: phi = exp(cq + ck) / m * (shifted phi)
            den = den + torch.exp((math.log(self.eps * self.nb_features) - cq - ck).clamp(max=80.0))
        return (num / den.clamp_min(1e-30)).to(v.dtype)

    def cost(self, T, head_dim):
        m, E = self.nb_features, head_dim
        # q/k feature maps 2*2*T*E*m_proj, phi(K)^T V and phi(Q) (.) each 2*T*m*E, normaliser 2*2*T*m
        flops = 4 * T * E * self.nb_projections + 4 * T * m * E + 4 * T * m
        return AttentionCost(memory=2 * T * m, flops=flops)
