"""T2T-ViT (Tokens-to-Token ViT, ICCV 2021) with the token-transformer attentions taken from the registry.

224x224 image -> Unfold(7, stride 4, pad 2) -> token transformer 1 -> re-fold to a grid -> Unfold(3, 2, 1)
-> token transformer 2 -> re-fold -> Unfold(3, 2, 1) -> Linear to embed_dim -> [cls] + fixed sinusoidal
positions -> depth pre-LN blocks -> LN -> head on the cls token.

Only the two token-transformer attentions are swappable (``t2t_attention``): they see 3136 and 784 tokens
at 224 pixels, where full attention is the memory bottleneck. The official "transformer" T2T module scales
q.k by in_dim^-1/2 (147^-1/2 and 576^-1/2); the "performer" one (T2T-ViT-14 and friends) uses FAVOR+ with
32 fixed features at temperature 1, which is exactly ``make_attention("performer", nb_features=32)``
loaded with the checkpoint's feature matrix.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from flyweight.attention import make_attention

# name -> architecture (the official registry's numbers)
T2T_VIT_VARIANTS: dict[str, dict[str, Any]] = {
    "t2t_vit_7": dict(tokens_type="performer", embed_dim=256, depth=7, num_heads=4, mlp_ratio=2.0),
    "t2t_vit_10": dict(tokens_type="performer", embed_dim=256, depth=10, num_heads=4, mlp_ratio=2.0),
    "t2t_vit_12": dict(tokens_type="performer", embed_dim=256, depth=12, num_heads=4, mlp_ratio=2.0),
    "t2t_vit_14": dict(tokens_type="performer", embed_dim=384, depth=14, num_heads=6, mlp_ratio=3.0),
    "t2t_vit_19": dict(tokens_type="performer", embed_dim=448, depth=19, num_heads=7, mlp_ratio=3.0),
    "t2t_vit_24": dict(tokens_type="performer", embed_dim=512, depth=24, num_heads=8, mlp_ratio=3.0),
    "t2t_vit_t_7": dict(tokens_type="transformer", embed_dim=256, depth=7, num_heads=4, mlp_ratio=2.0),
    "t2t_vit_t_14": dict(tokens_type="transformer", embed_dim=384, depth=14, num_heads=6, mlp_ratio=3.0),
    "t2t_vit_t_19": dict(tokens_type="transformer", embed_dim=448, depth=19, num_heads=7, mlp_ratio=3.0),
    "t2t_vit_t_24": dict(tokens_type="transformer", embed_dim=512, depth=24, num_heads=8, mlp_ratio=3.0),
}
TOKENS_TYPES = ("transformer", "performer")


@dataclass
class T2TViTConfig:
    img_size: int = 224
    in_chans: int = 3
    num_classes: int = 1000
    tokens_type: str = "transformer"  # "transformer" (T2T-ViT-t-*) or "performer" (T2T-ViT-*)
    token_dim: int = 64
    embed_dim: int = 384
    depth: int = 14
    num_heads: int = 6
    mlp_ratio: float = 3.0
    qkv_bias: bool = False
    qk_scale: float | None = None  # blocks' q.k scale; None = head_dim^-1/2 (the official eval path)
    drop_rate: float = 0.0
    drop_path_rate: float = 0.1
    # registry specs of the two token-transformer attentions ({"name": ..., window_size/nb_features/seed});
    # None = the architecture's own ("full" for transformer, 32-feature "performer" for performer)
    t2t_attention1: dict | None = None
    t2t_attention2: dict | None = None

    def __post_init__(self):
        if self.tokens_type not in TOKENS_TYPES:
            raise ValueError(f"tokens_type must be one of {TOKENS_TYPES}, got {self.tokens_type!r}")
        if self.img_size % 16:
            raise ValueError(
                f"img_size must be a multiple of 16 (three stride-4/2/2 splits), got {self.img_size}"
            )
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")

    @classmethod
    def from_name(cls, name: str, **overrides) -> "T2TViTConfig":
        if name not in T2T_VIT_VARIANTS:
            raise ValueError(f"unknown T2T-ViT variant {name!r}; valid: {', '.join(T2T_VIT_VARIANTS)}")
        return cls(**{**T2T_VIT_VARIANTS[name], **overrides})

    @classmethod
    def from_dict(cls, d: dict) -> "T2TViTConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown T2TViTConfig keys {sorted(unknown)}; valid: {sorted(known)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def token_grids(self) -> tuple[int, int, int]:
        """Side lengths of the three token grids (56, 28, 14 at 224 pixels)."""
        return self.img_size // 4, self.img_size // 8, self.img_size // 16

    def stage_tokens(self) -> tuple[int, int]:
        g1, g2, _ = self.token_grids
        return g1 * g1, g2 * g2

    def attention_spec(self, stage: int) -> dict:
        spec = self.t2t_attention1 if stage == 1 else self.t2t_attention2
        if spec is None:
            spec = (
                {"name": "full"}
                if self.tokens_type == "transformer"
                else {"name": "performer", "nb_features": 32, "eps": 1e-8}
            )
        return dict(spec)


def sinusoid_positions(n_position: int, dim: int) -> torch.Tensor:
    """(1, n_position, dim): sin on even, cos on odd channels, wavelength 10000^(2*(c//2)/dim)."""
    pos = torch.arange(n_position, dtype=torch.float64)[:, None]
    c = torch.arange(dim)
    angle = pos / torch.pow(10000.0, (2 * (c // 2)).double() / dim)[None]
    table = torch.where(c % 2 == 0, torch.sin(angle), torch.cos(angle))
    return table.float()[None]


def _build_attention(spec: dict, head_dim: int):
    spec = dict(spec)
    if "name" not in spec:
        raise ValueError(f"a T2T attention spec needs a 'name' (full, local, performer, sblocal); got {spec}")
    attn = make_attention(spec.pop("name"), **spec)
    if hasattr(attn, "redraw_features"):
        attn.redraw_features(attn.seed, head_dim=head_dim)  # draw now so state_dict() is complete
    return attn


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(F.gelu(self.fc1(x)))))


class DropPath(nn.Module):
    """Stochastic depth: drop a sample's whole residual branch with probability p (training only)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        keep = torch.rand(x.shape[0], *([1] * (x.dim() - 1)), device=x.device) >= self.p
        return x * keep.to(x.dtype) / (1 - self.p)


class TokenTransformer(nn.Module):
    """One head from in_dim to token_dim; the residual adds v (the input width differs from the output)."""

    def __init__(self, in_dim: int, token_dim: int, attention: dict, softmax_temp: float, qkv_bias: bool):
        super().__init__()
        self.token_dim = token_dim
        self.softmax_temp = softmax_temp
        self.norm1 = nn.LayerNorm(in_dim)
        self.qkv = nn.Linear(in_dim, 3 * token_dim, bias=qkv_bias)
        spec = dict(attention)
        self.attn = _build_attention(spec, token_dim)
        self.proj = nn.Linear(token_dim, token_dim)
        self.norm2 = nn.LayerNorm(token_dim)
        self.mlp = Mlp(token_dim, token_dim)

    def forward(self, x):
        B, T, _ = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(B, T, 3, 1, self.token_dim).permute(2, 0, 3, 1, 4)
        y = self.attn(q, k, v, softmax_temp=self.softmax_temp)  # (B, 1, T, token_dim)
        x = v[:, 0] + self.proj(y[:, 0])
        return x + self.mlp(self.norm2(x))


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, qk_scale: float | None):
        super().__init__()
        self.num_heads = num_heads
        self.scale = qk_scale if qk_scale is not None else (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class Block(nn.Module):
    def __init__(self, cfg: T2TViTConfig, drop_path: float):
        super().__init__()
        dim = cfg.embed_dim
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, cfg.num_heads, cfg.qkv_bias, cfg.qk_scale)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * cfg.mlp_ratio), cfg.drop_rate)
        self.drop_path = DropPath(drop_path)

    def forward(self, x):
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class T2TModule(nn.Module):
    def __init__(self, cfg: T2TViTConfig):
        super().__init__()
        c, d = cfg.in_chans, cfg.token_dim
        performer = cfg.tokens_type == "performer"
        # transformer type: q.k / sqrt(in_dim); performer type: FAVOR+ of exp(q.k) (temperature 1)
        self.token1 = TokenTransformer(
            c * 49, d, cfg.attention_spec(1), 1.0 if performer else (c * 49) ** -0.5, qkv_bias=performer
        )
        self.token2 = TokenTransformer(
            d * 9, d, cfg.attention_spec(2), 1.0 if performer else (d * 9) ** -0.5, qkv_bias=performer
        )
        self.project = nn.Linear(d * 9, cfg.embed_dim)
        self.grids = cfg.token_grids

    @staticmethod
    def _refold(x, side):
        B, T, C = x.shape
        return x.transpose(1, 2).reshape(B, C, side, side)

    def forward(self, img):
        g1, g2, _ = self.grids
        x = F.unfold(img, kernel_size=7, stride=4, padding=2).transpose(1, 2)
        x = self.token1(x)
        x = F.unfold(self._refold(x, g1), kernel_size=3, stride=2, padding=1).transpose(1, 2)
        x = self.token2(x)
        x = F.unfold(self._refold(x, g2), kernel_size=3, stride=2, padding=1).transpose(1, 2)
        return self.project(x)


class T2TViT(nn.Module):
    def __init__(self, cfg: T2TViTConfig):
        super().__init__()
        self.cfg = cfg
        self.t2t = T2TModule(cfg)
        n_patches = cfg.token_grids[2] ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.register_buffer("pos_embed", sinusoid_positions(n_patches + 1, cfg.embed_dim))
        self.pos_drop = nn.Dropout(cfg.drop_rate)
        rates = torch.linspace(0, cfg.drop_path_rate, cfg.depth).tolist()
        self.blocks = nn.ModuleList([Block(cfg, r) for r in rates])
        self.norm = nn.LayerNorm(cfg.embed_dim)
        self.head = nn.Linear(cfg.embed_dim, cfg.num_classes)
        self.apply(self._init)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    @staticmethod
    def _init(m):
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward_features(self, img):
        x = self.t2t(img)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.pos_drop(x)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)[:, 0]

    def forward(self, img):
        return self.head(self.forward_features(img))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def no_weight_decay(self) -> set[str]:
        return {"cls_token"}

    def attention_modules(self):
        return [self.t2t.token1.attn, self.t2t.token2.attn]

    def attention_cost(self) -> dict[str, int]:
        """Memory (elements) and FLOPs of the two token-transformer attentions for one image."""
        mem = flops = 0
        for attn, T in zip(self.attention_modules(), self.cfg.stage_tokens()):
            c = attn.cost(T, self.cfg.token_dim)
            mem, flops = mem + c.memory, flops + c.flops
        return {"attention_memory": mem, "attention_flops": flops}

    def set_t2t_attention(self, spec1: dict, spec2: dict) -> None:
        """Swap the two token-transformer attentions (no parameters; trained weights stay)."""
        for tok, spec in ((self.t2t.token1, spec1), (self.t2t.token2, spec2)):
            spec = dict(spec)
            device = next(tok.parameters()).device
            tok.attn = _build_attention(spec, tok.token_dim).to(device)
        self.cfg.t2t_attention1, self.cfg.t2t_attention2 = dict(spec1), dict(spec2)


# tensors the attention variants own (random features): absent from other checkpoints, redrawn from seed
ATTENTION_BUFFER_SUFFIXES = (".attn.features",)


def load_state_dict_strict(model: T2TViT, state: dict[str, torch.Tensor]) -> None:
    """Load every tensor by name with shapes checked; only attention-owned buffers may be missing."""
    own = model.state_dict()
    unexpected = sorted(set(state) - set(own))
    missing = sorted(k for k in set(own) - set(state) if not k.endswith(ATTENTION_BUFFER_SUFFIXES))
    bad_shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in state
        if k in own and own[k].numel() and state[k].shape != own[k].shape
    ]
    if unexpected or missing or bad_shapes:
        raise ValueError(
            "checkpoint does not match the model:"
            + (f"\n  unexpected: {unexpected}" if unexpected else "")
            + (f"\n  missing: {missing}" if missing else "")
            + ("\n  shape mismatch: " + "; ".join(bad_shapes) if bad_shapes else "")
        )
    model.load_state_dict(state, strict=False)


def build_t2t_vit(name: str | None = None, **overrides) -> T2TViT:
    cfg = T2TViTConfig.from_name(name, **overrides) if name else T2TViTConfig(**overrides)
    return T2TViT(cfg)
