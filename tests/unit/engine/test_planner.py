"""The memory planner: one pass when it fits, whole-layer tiles when not, a clear refusal."""

from __future__ import annotations

import pytest

from universal_neurons.engine.layout import Layout, ModelShape, pairs_for
from universal_neurons.engine.planner import plan_correlation
from universal_neurons.engine.sizes import format_bytes, parse_bytes
from universal_neurons.errors import UserError

SHAPES = [ModelShape(f"m{i}", 4, 256) for i in range(4)]


def covered(plan, shapes=SHAPES) -> list[tuple[int, int, int, int]]:
    """(row model, layer, partner, partner layer) the plan accumulates, sorted."""
    layout = Layout(shapes)
    return sorted((b.row, layer, p, lp) for blocks in plan.passes for b in blocks
                  for layer in range(b.layer_start, b.layer_stop)
                  for p, lo, hi in layout.block_partner_layers(b) for lp in range(lo, hi))


@pytest.mark.parametrize("mode", ["reference", "all-pairs"])
def test_one_pass_when_everything_fits(mode):
    plan = plan_correlation(SHAPES, mode, 2**34)
    assert plan.n_passes == 1 and plan.rows_per_gemm == 4096
    want = sorted((a, layer, b, lb) for a, b in pairs_for(4, mode) for layer in range(4)
                  for lb in range(4))
    assert covered(plan) == want
    n = 1024
    cross = sum(n * n * 8 for _ in pairs_for(4, mode))
    assert plan.bytes["cross"] == cross
    assert plan.bytes["layer_cov"] == 4 * 4 * 256 * 256 * 8 + 4 * n * 8
    assert plan.bytes["buffer"] == 4097 * 4 * n * 4
    assert plan.total_bytes <= 2**34


def test_tiles_reference_layers_over_passes_when_short_of_memory():
    big = plan_correlation(SHAPES, "all-pairs", 2**34)
    budget = big.total_bytes - big.bytes["buffer"] - big.bytes["cross"] // 2
    plan = plan_correlation(SHAPES, "all-pairs", budget)
    assert plan.n_passes > 1 and plan.total_bytes <= budget
    assert covered(plan) == covered(big)  # every (row layer, partner) exactly once
    assert plan.bytes["cross"] < big.bytes["cross"]


def test_lowers_rows_per_gemm_before_adding_passes():
    weights = 2**27  # every extra pass re-runs the forward passes
    big = plan_correlation(SHAPES, "reference", 2**34, model_bytes=weights)
    budget = big.total_bytes - big.bytes["buffer"] // 2 + 2**16
    plan = plan_correlation(SHAPES, "reference", budget, model_bytes=weights)
    assert plan.n_passes == 1 and plan.rows_per_gemm < 4096


def test_lowers_the_batch_when_that_saves_passes():
    big = plan_correlation(SHAPES, "reference", 2**34, forward_bytes=2**26, batch_size=8,
                           model_bytes=2**27)
    assert big.batch_size == 8 and big.n_passes == 1
    budget = big.total_bytes - 2**25  # half the forward activations must go
    plan = plan_correlation(SHAPES, "reference", budget, forward_bytes=2**26, batch_size=8,
                            model_bytes=2**27)
    assert plan.n_passes == 1 and plan.batch_size <= 4 and plan.total_bytes <= budget


def test_tiles_partner_layers_when_one_layer_does_not_fit():
    """GPT-2-small shape, 5 seeds, from shapes alone: a budget below one whole layer against
    its partners still plans, with column tiles covering every (layer, partner layer)."""
    shapes = [ModelShape(f"s{c}", 12, 3072) for c in "abcde"]
    plan = plan_correlation(shapes, "reference", 10 * 2**30, model_bytes=5 * 340 * 2**20)
    assert plan.total_bytes <= 10 * 2**30
    assert any(b.col_layer_stop is not None for p in plan.passes for b in p)
    want = sorted((0, layer, p, lp) for layer in range(12) for p in range(1, 5)
                  for lp in range(12))
    assert covered(plan, shapes) == want
    # whole study of GPT-2 small x 5 in one pass on an 80 GB GPU
    gpu = plan_correlation(shapes, "reference", int(0.9 * 80e9), device_type="cuda",
                           model_bytes=5 * 500 * 2**20)
    assert gpu.n_passes == 1


def test_refuses_with_the_bytes_needed():
    with pytest.raises(UserError, match=r"needs [\d,]+ bytes") as e:
        plan_correlation(SHAPES, "reference", 10**6)
    assert "\n" not in str(e.value) and "--max-memory" in str(e.value)
    need = int(str(e.value).split("needs ")[1].split(" bytes")[0].replace(",", ""))
    plan = plan_correlation(SHAPES, "reference", need)  # exactly enough is enough
    assert plan.total_bytes <= need
    with pytest.raises(UserError, match="one layer of a partner"):
        plan_correlation(SHAPES, "reference", need - 1)


def test_single_model_is_refused():
    with pytest.raises(UserError, match="at least two models"):
        plan_correlation(SHAPES[:1], "reference", 2**30)


def test_parse_and_format_bytes():
    assert parse_bytes("8G") == 8 * 2**30 == parse_bytes("8GiB")
    assert parse_bytes("8GB") == 8 * 10**9
    assert parse_bytes("1.5e9") == 1_500_000_000
    assert parse_bytes("512M") == 512 * 2**20
    with pytest.raises(UserError, match="bad memory size"):
        parse_bytes("lots")
    assert format_bytes(3 * 2**30) == "3.0 GiB"


def test_gpt2_medium_shape_plans_on_a_gpu_and_refuses_small_budgets_with_the_need():
    """GPT-2 medium x 5 from shapes alone: tiles on an 80 GB GPU; below the finest tile a
    one-line refusal whose number is exactly the smallest budget that plans."""
    shapes = [ModelShape(f"m{c}", 24, 4096) for c in "abcde"]
    weights = 5 * 355 * 10**6 * 4
    gpu = plan_correlation(shapes, "reference", int(0.9 * 80e9), device_type="cuda",
                           model_bytes=weights)
    assert 1 < gpu.n_passes <= 8 and gpu.total_bytes <= 0.9 * 80e9
    layout = Layout(shapes)
    assert sum(len(list(range(lo, hi))) for p in gpu.passes for b in p
               for _m, lo, hi in layout.block_partner_layers(b)
               for _ in range(b.layer_start, b.layer_stop)) == 24 * 4 * 24
    with pytest.raises(UserError, match=r"needs [\d,]+ bytes") as e:
        plan_correlation(shapes, "reference", 20 * 2**30, model_bytes=weights)
    need = int(str(e.value).split("needs ")[1].split(" bytes")[0].replace(",", ""))
    assert 20 * 2**30 < need < 40 * 2**30  # co-moments of 5 x 24 x 4096^2 float64 dominate
    assert plan_correlation(shapes, "reference", need, model_bytes=weights).total_bytes <= need


def test_first_pass_counts_the_extra_sites_it_captures():
    """The activation statistics capture pre- and post-activations in the first pass only:
    its stream term is ``forward_first``, later passes keep ``forward``."""
    from universal_neurons.engine.planner import phase_bytes

    kw = dict(forward_bytes=2**26, batch_size=8, model_bytes=2**27)
    one = plan_correlation(SHAPES, "reference", 2**34, **kw)
    two = plan_correlation(SHAPES, "reference", 2**34, forward_first_bytes=2**27, **kw)
    assert two.bytes["forward_first"] == 2**27 and two.bytes["forward"] == 2**26
    assert two.total_bytes - one.total_bytes == 2**26  # one pass: the first pass's term
    first, later = phase_bytes(two.bytes)
    assert first == two.total_bytes and later < first
    # a budget that fits the single-site first pass but not the two-site one is re-planned
    budget = one.total_bytes
    plan = plan_correlation(SHAPES, "reference", budget, forward_first_bytes=2**27, **kw)
    assert plan.total_bytes <= budget
    assert (plan.batch_size, plan.n_passes) != (one.batch_size, one.n_passes)
