"""The common base of every structured linear layer, and the registry of kinds."""

from __future__ import annotations

import difflib
import inspect
import math
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from flyweight.utils.registry import Registry

LINEAR_KINDS: Registry[type["StructuredLinear"]] = Registry("linear kind", "valid kinds")


def register_linear(kind: str) -> Callable[[type["StructuredLinear"]], type["StructuredLinear"]]:
    """Class decorator: make a layer available under ``kind`` to ``make_linear``, ``convert``,
    ``build_gpt2`` and checkpoint loading. A kind without a typed config of its own
    (``flyweight.linear.config``) gets one derived from its constructor's keyword arguments."""

    def wrap(cls: type["StructuredLinear"]) -> type["StructuredLinear"]:
        from flyweight.linear.config import CONFIG_CLASSES, derive_config_class

        LINEAR_KINDS.register(kind)(cls)
        if kind not in CONFIG_CLASSES:
            derive_config_class(cls)
        return cls

    return wrap


def unregister_linear(kind: str) -> None:
    """Remove a kind (and its derived config) from the registry, e.g. a kind defined in a test."""
    from flyweight.linear.config import CONFIG_CLASSES

    LINEAR_KINDS.unregister(kind)
    CONFIG_CLASSES.unregister(kind)


def linear_class(kind: str) -> type["StructuredLinear"]:
    return LINEAR_KINDS.get_or_raise(kind)


def make_linear(kind: str, in_features: int, out_features: int, bias: bool = True, **settings: Any):
    """Build a linear layer by registry name ("dense", "lowrank", "monarch", "ss1") with the kind's settings."""
    cls = linear_class(kind)
    check_settings(cls, settings)
    return cls(in_features, out_features, bias=bias, **settings)


def setting_names(cls: type["StructuredLinear"]) -> tuple[str, ...]:
    """The settings of a kind: the keyword arguments its constructor accepts besides in/out features and bias."""
    params = inspect.signature(cls.__init__).parameters
    return tuple(n for n in params if n not in ("self", "in_features", "out_features", "bias")
                 and params[n].kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD))


def check_settings(cls: type["StructuredLinear"], settings: dict[str, Any]) -> None:
    """A misspelt setting names itself, its likely meaning and the valid ones (not a bare TypeError)."""
    valid = setting_names(cls)
    unknown = [k for k in settings if k not in valid]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, valid, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise TypeError(f"linear kind {cls.kind!r} has no argument {key!r}{hint}; valid arguments: "
                        f"{', '.join(valid) or 'none'}")


def validate_linear(kind: str, in_features: int, out_features: int, bias: bool = True, **settings: Any) -> dict:
    """Check that ``make_linear(kind, in_features, out_features, bias, **settings)`` would succeed,
    without allocating (the layer is built on the meta device); return its ``settings()``.

    Meant for configs: call it for every layer shape before any data is loaded or tokenized, so a bad
    ``compression`` or a misspelt argument fails in a second, with the layer's own message.
    """
    layer = make_linear(kind, in_features, out_features, bias=bias, device="meta", **settings)
    return layer.settings()


def check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def uniform_(tensor: torch.Tensor, fan_in: int) -> torch.Tensor:
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): nn.Linear's bound for the given fan-in."""
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    with torch.no_grad():
        return tensor.uniform_(-bound, bound)


class StructuredLinear(nn.Module):
    """A drop-in replacement for ``nn.Linear``: y = x W^T + b with a structured W.

    Subclasses implement ``_matmul`` (x of shape (M, in) -> (M, out), no bias), ``to_dense``,
    ``from_dense``, ``flops_per_token``, ``settings`` and ``normal_init_`` (the kind owns
    its initialisation: ``build_gpt2`` calls it).
    """

    kind: ClassVar[str] = "?"
    # True when the layer's only weight is a 2-D ``weight`` consumed by a plain (out, in) matmul, so
    # torchao's weight tensor subclasses can stand in for it (``flyweight.integrations.torchao``)
    torchao_quantizable: ClassVar[bool] = False

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None):
        super().__init__()
        self.in_features = check_positive_int("in_features", in_features)
        self.out_features = check_positive_int("out_features", out_features)
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features, device=device, dtype=dtype))
        else:
            self.register_parameter("bias", None)

    # ---- the function ----------------------------------------------------------------------
    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"{type(self).__name__}: input's last dimension must equal "
                f"in_features={self.in_features}, got input shape {tuple(x.shape)}"
            )
        if not x.is_floating_point():  # weights cast to an integer dtype would compute garbage silently
            raise TypeError(
                f"{type(self).__name__}: input must be a floating-point tensor (as for nn.Linear), got dtype "
                f"{x.dtype}; convert it first, e.g. x.float()"
            )
        if x.is_meta:
            devices = {p.device for p in self._parameters.values() if p is not None and not p.is_meta}
            if devices:  # some ops accept a meta input with real weights and return uninitialised memory
                raise RuntimeError(
                    f"{type(self).__name__}: input is on the meta device (no values) but the layer's weights "
                    f"are on {devices.pop()}; move the input to that device, or the layer to 'meta' for "
                    "shape inference"
                )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        lead = x.shape[:-1]
        x2d = x.reshape(-1, self.in_features)
        y = self._matmul(x2d)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.view(*lead, self.out_features)

    def _matmul(self, x2d: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def to_dense(self) -> torch.Tensor:
        """The equivalent dense weight, shape (out_features, in_features), nn.Linear layout."""
        raise NotImplementedError

    @classmethod
    def from_dense(cls, weight: torch.Tensor, bias: torch.Tensor | None = None, **kwargs: Any):
        """Project a dense (out, in) weight onto this structure (bias copied)."""
        raise NotImplementedError

    @classmethod
    def settings_for(cls, in_features: int, out_features: int, settings: dict[str, Any]) -> dict[str, Any]:
        """``settings`` completed with what this kind needs to take these sizes, for callers that sweep
        sizes (the layer benchmark); a kind with such a rule overrides it (SS1: padding). A copy."""
        return dict(settings)

    # ---- bookkeeping: the one place parameters and FLOPs are counted ------------------------
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self) -> int:
        """Forward FLOPs for one input row (multiply-add = 2 FLOPs; bias not counted)."""
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        """The kind's settings (keyword arguments) that rebuild this exact structure with ``make_linear``."""
        return {}

    def linear_config(self):
        """This layer's structure as its kind's typed config (``flyweight.linear.config``)."""
        from flyweight.linear.config import config_class

        return config_class(self.kind).from_dict(self.settings())

    def normal_init_(self, std: float, generator: torch.Generator | None = None) -> "StructuredLinear":
        """Draw the weights so the entries of ``to_dense()`` have mean 0 and std ``std``; zero the bias.

        GPT-2's initialisation in the dense-equivalent sense: GPT-2 draws every weight from N(0, std),
        and a structured layer asks the same of its dense equivalent W = to_dense(), so for
        uncorrelated inputs the output variance equals that of a dense GPT-2 layer (K * std**2 *
        Var(x)). Each kind gets there its own way: dense and SS1 store each entry of W once (the
        stored weight ~ N(0, std)); low-rank and Monarch sum products of two factors per entry and
        balance the factors' stds, so Adam's equal step sizes move both alike.
        """
        raise NotImplementedError(
            f"{type(self).__name__} (kind {self.kind!r}) does not define normal_init_(std, generator): "
            "add it to the class, drawing the weights so that to_dense() has entries of std `std`"
        )

    def _zero_bias(self) -> None:
        if self.bias is not None:
            with torch.no_grad():
                self.bias.zero_()

    def extra_repr(self) -> str:
        extra = ", ".join(f"{k}={v}" for k, v in self.settings().items())
        base = f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
        return f"{base}, {extra}" if extra else base

    # ---- helpers for subclasses --------------------------------------------------------------
    @staticmethod
    def _check_dense(weight: torch.Tensor, bias: torch.Tensor | None) -> tuple[int, int]:
        if weight.dim() != 2:
            raise ValueError(f"from_dense: weight must be 2-D (out, in), got shape {tuple(weight.shape)}")
        out_features, in_features = weight.shape
        if bias is not None and tuple(bias.shape) != (out_features,):
            raise ValueError(
                f"from_dense: bias must have shape ({out_features},), got {tuple(bias.shape)}"
            )
        return in_features, out_features

    @classmethod
    def _empty_like_dense(cls, weight: torch.Tensor, bias: torch.Tensor | None, kwargs: dict[str, Any]):
        """A new layer of this kind sized for a dense (out, in) weight, on its device and dtype."""
        in_features, out_features = cls._check_dense(weight, bias)
        kwargs = {"bias": bias is not None, "device": weight.device, "dtype": weight.dtype, **kwargs}
        return cls(in_features, out_features, **kwargs)

    def _copy_bias(self, bias: torch.Tensor | None) -> None:
        if self.bias is not None:
            with torch.no_grad():
                if bias is None:
                    self.bias.zero_()
                else:
                    self.bias.copy_(bias)

    def _weight_like(self, param: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Parameters follow the input's dtype (the output dtype is the input dtype)."""
        return param if param.dtype == x.dtype else param.to(x.dtype)
