"""Mixed-precision strategies: frozen, validated, and resolved per operator and layer."""

from __future__ import annotations

import dataclasses

import pytest

from lowprec_workloads.strategies import OPERATORS, builtin_strategies, custom, strategy

NAMES = ["fp16_baseline", "fp8_balanced", "w4a16_aggressive", "nvfp4_weights", "hybrid_long_context",
         "layerwise_gradient"]


def test_every_named_strategy_exists_and_says_a_precision_for_every_operator():
    known = builtin_strategies()
    assert list(known) == NAMES
    for s in known.values():
        assert all(s.precision(op) for op in OPERATORS)


def test_a_strategy_is_frozen():
    s = strategy("fp8_balanced")
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.name = "other"
    with pytest.raises(TypeError):
        s.precisions["q_proj"] = "bf16"


def test_layerwise_gradient_runs_early_layers_16bit_middle_fp8_late_nvfp4():
    s = strategy("layerwise_gradient")
    assert [s.precision("ffn_up", layer, 6) for layer in range(6)] == ["bf16", "bf16", "fp8", "fp8", "nvfp4",
                                                                       "nvfp4"]
    assert s.precision("kv_cache", 5, 6) == "bf16"


def test_a_custom_strategy_changes_only_what_its_mapping_names():
    s = custom("mine", {"kv_cache": "nvfp4"}, base="fp8_balanced")
    assert s.precision("kv_cache") == "nvfp4" and s.precision("q_proj") == "fp8" and s.name == "mine"


def test_an_unknown_strategy_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown strategy 'fp3'; known strategies: fp16_baseline, fp8_balanced"):
        strategy("fp3")


def test_a_precision_an_operator_cannot_take_is_refused_with_the_valid_ones():
    with pytest.raises(ValueError, match="norm cannot run in 'fp8'; valid for norm: fp32, bf16, fp16"):
        custom("bad", {"norm": "fp8"})


def test_a_layer_range_outside_the_stack_is_refused():
    from lowprec_workloads.strategies import LayerOverride, Strategy

    with pytest.raises(ValueError, match=r"layer range \[0.5, 1.5\) must lie in \[0, 1\]"):
        Strategy("bad", strategy("fp16_baseline").precisions, (LayerOverride(0.5, 1.5, {"q_proj": "fp8"}),))
