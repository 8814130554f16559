"""Every registry (linear kinds, their configs, attention kinds) follows the same rules (issue 18)."""

from __future__ import annotations

import pytest
from torch import nn

from flyweight.attention import ATTENTION_KINDS, FullAttention, make_attention, register_attention, unregister_attention
from flyweight.linear import LINEAR_KINDS, DenseLinear, register_linear, unregister_linear
from flyweight.linear.config import CONFIG_CLASSES, SS1Config, register_config
from flyweight.utils.registry import Registry


def test_one_registry_type_behind_every_table():
    for reg in (LINEAR_KINDS, ATTENTION_KINDS, CONFIG_CLASSES):
        assert isinstance(reg, Registry)


@pytest.mark.parametrize("register,name", [(register_linear, "dense"), (register_attention, "full"),
                                           (register_config, "ss1")], ids=["linear", "attention", "config"])
def test_a_second_registration_of_a_name_is_refused(register, name):
    holder = {"dense": DenseLinear, "full": FullAttention, "ss1": SS1Config}[name]

    with pytest.raises(ValueError, match=rf"'{name}' is registered twice \(it is .*{holder.__qualname__}"):
        register(name)(type("Impostor", (), {}))
    reg = {"dense": LINEAR_KINDS, "full": ATTENTION_KINDS, "ss1": CONFIG_CLASSES}[name]
    assert reg[name] is holder  # the first registration is kept


def test_unregister_then_register_again_replaces_an_attention():
    @register_attention("registry-test")
    class First(FullAttention):
        pass

    try:
        assert make_attention("registry-test").kind == "registry-test" and type(make_attention("registry-test")) is First
        unregister_attention("registry-test")
        assert "registry-test" not in ATTENTION_KINDS

        @register_attention("registry-test")
        class Second(FullAttention):
            pass

        assert type(make_attention("registry-test")) is Second
    finally:
        unregister_attention("registry-test")


def test_unknown_names_list_the_valid_ones():
    reg: Registry[type] = Registry("widget", "valid widgets")
    reg.register("b")(type("B", (), {}))
    reg.register("a")(type("A", (), {}))
    assert reg["a"].kind == "a" and list(reg) == ["b", "a"] and len(reg) == 2
    with pytest.raises(ValueError, match=r"^unknown widget 'c'; valid widgets: a, b$"):
        reg.get_or_raise("c")
    with pytest.raises(ValueError, match="unknown attention 'nope'; valid: full, local, performer, sblocal"):
        make_attention("nope")


def test_registries_are_read_only_mappings():
    with pytest.raises(TypeError):
        LINEAR_KINDS["x"] = nn.Linear  # type: ignore[index]
    with pytest.raises(ValueError, match="non-empty string"):
        Registry("widget").add("", object)


def test_unregister_linear_removes_the_derived_config_too():
    from flyweight.linear import StructuredLinear

    @register_linear("registry-test")
    class Tiny(StructuredLinear):
        def __init__(self, in_features, out_features, bias=True, width=2, device=None, dtype=None):
            super().__init__(in_features, out_features, bias, device=device, dtype=dtype)

    assert "registry-test" in CONFIG_CLASSES and CONFIG_CLASSES["registry-test"].kind == "registry-test"
    unregister_linear("registry-test")
    assert "registry-test" not in LINEAR_KINDS and "registry-test" not in CONFIG_CLASSES
