"""Tests for adv2core.metrics: properties and independent (pure Python / numpy) reference computations."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

import adv2core.metrics as M
from adv2core.errors import Adv2Error

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _ref_topk(values: list[float], k: int) -> set[int]:
    """Independent top-k: value descending, then lower flat index."""
    return set(sorted(range(len(values)), key=lambda i: (-values[i], i))[:k])


def _ref_count(k_percent: float, n: int) -> int:
    """Round-half-up with exact rationals, at least 1."""
    x = Fraction(k_percent).limit_denominator(10**6) * n / 100
    return min(n, max(1, math.floor(x + Fraction(1, 2))))


def _ref_iou(a: torch.Tensor, b: torch.Tensor, k_percent: float) -> list[float]:
    out = []
    for ai, bi in zip(a.flatten(1).tolist(), b.flatten(1).tolist()):
        k = _ref_count(k_percent, len(ai))
        sa, sb = _ref_topk(ai, k), _ref_topk(bi, k)
        out.append(len(sa & sb) / len(sa | sb))
    return out


# ----------------------------------------------------------------------------------------------
# classification
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_classification_against_numpy(device: str) -> None:
    logits = torch.randn(16, 10, generator=_gen(0)).to(device)
    target = torch.randint(0, 10, (16,), generator=_gen(1)).to(device)
    target[:4] = logits[:4].argmax(1)  # make some successes certain
    lg = logits.cpu().double().numpy()
    p = np.exp(lg - lg.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    t = target.cpu().numpy()
    succ = M.attack_success(logits, target)
    assert succ.dtype == torch.bool and succ.shape == (16,)
    assert succ.cpu().numpy().tolist() == (lg.argmax(1) == t).tolist()
    np.testing.assert_allclose(M.confidence(logits).cpu().numpy(), p.max(1), rtol=1e-5)
    np.testing.assert_allclose(M.target_probability(logits, target).cpu().numpy(), p[np.arange(16), t], rtol=1e-5)
    # when successful, confidence == target probability
    s = succ.cpu()
    assert torch.allclose(M.confidence(logits).cpu()[s], M.target_probability(logits, target).cpu()[s])


def test_classification_nan_rows() -> None:
    logits = torch.randn(4, 5, generator=_gen(2))
    target = logits.argmax(1)
    bad = logits.clone()
    bad[1, 3] = math.nan
    succ = M.attack_success(bad, target)
    assert succ.tolist() == [True, False, True, True]
    conf = M.confidence(bad)
    assert torch.isnan(conf[1]) and torch.equal(conf[[0, 2, 3]], M.confidence(logits)[[0, 2, 3]])
    assert torch.isnan(M.target_probability(bad, target)[1])


# ----------------------------------------------------------------------------------------------
# quantisation and int16 storage
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("device", DEVICES)
def test_int16_storage_bit_exact(dtype: torch.dtype, device: str) -> None:
    g = _gen(3)
    x = torch.rand(8, 3, 32, 32, generator=g, dtype=dtype)
    x[0] = torch.randint(0, 256, (3, 32, 32), generator=g).to(dtype) / 255  # already on the grid
    x_adv = (x + (torch.rand(x.shape, generator=g, dtype=dtype) * 2 - 1) * 0.05).clamp(0, 1)
    # exact half-way points and out-of-range values must agree too
    x_adv[1].view(-1)[:256] = (torch.arange(256, dtype=dtype) + 0.5) / 255
    x_adv[2, 0, 0, :4] = torch.tensor([-0.3, 1.4, 0.0, 1.0], dtype=dtype)
    x, x_adv = x.to(device), x_adv.to(device)
    delta = M.perturbation_to_int16(x_adv, x)
    assert delta.dtype == torch.int16
    assert int(delta.abs().max()) <= 255
    rebuilt = M.apply_int16_perturbation(x, delta)
    q = M.quantize_uint8(x_adv, "round")
    assert rebuilt.dtype == dtype
    assert torch.equal(rebuilt, q)  # bit-exact
    # and the levels agree with an independent numpy rounding (numpy rint is also half-to-even)
    ref = np.rint(np.clip(x_adv.cpu().numpy(), 0, 1) * 255)
    np.testing.assert_array_equal((q.cpu().numpy() * 255).round(), ref)
    assert torch.equal(M.to_uint8(x_adv).cpu(), torch.from_numpy(ref.astype(np.uint8)))


def test_quantize_trunc_matches_astype_uint8() -> None:
    x = torch.rand(4, 3, 16, 16, generator=_gen(4), dtype=torch.float64)
    x[0].view(-1)[:256] = torch.arange(256, dtype=torch.float64) / 255  # grid values stress float noise
    ref = (x.numpy() * 255).astype(np.uint8).astype(np.float64) / 255
    np.testing.assert_array_equal(M.quantize_uint8(x, "trunc").numpy(), ref)
    # truncation never exceeds rounding, and differs from it somewhere
    assert bool((M.quantize_uint8(x, "trunc") <= M.quantize_uint8(x, "round")).all())
    assert not torch.equal(M.quantize_uint8(x, "trunc"), M.quantize_uint8(x, "round"))


def test_quantize_errors() -> None:
    x = torch.rand(2, 3, 4, 4)
    with pytest.raises(ValueError):
        M.quantize_uint8(x, "floor")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        M.perturbation_to_int16(x, x[:1])
    bad = x.clone()
    bad[0, 0, 0, 0] = math.nan
    with pytest.raises(Adv2Error):
        M.perturbation_to_int16(bad, x)
    assert torch.isnan(M.quantize_uint8(bad)[0, 0, 0, 0])


# ----------------------------------------------------------------------------------------------
# distances
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("side", [7, 28, 56])
def test_lp_hand_examples(side: int) -> None:
    n = side * side
    counts = [0, 1, 5, n]
    vals = [0.25, 0.5, 1.0, 0.75]
    a = torch.zeros(len(counts), 1, side, side)
    b = torch.zeros_like(a)
    for i, (c, v) in enumerate(zip(counts, vals)):
        b[i].view(-1)[:c] = v
    l1, l2 = M.l1_distance(a, b), M.l2_distance(b, a)
    for i, (c, v) in enumerate(zip(counts, vals)):
        assert l1[i].item() == pytest.approx(c * v / n, rel=1e-6, abs=1e-9)
        assert l2[i].item() == pytest.approx(v * math.sqrt(c / n), rel=1e-6, abs=1e-9)


def test_lp_random_against_numpy_and_bounds() -> None:
    g = _gen(5)
    a, b = torch.rand(6, 1, 28, 28, generator=g), torch.rand(6, 1, 28, 28, generator=g)
    d = (a - b).double().numpy().reshape(6, -1)
    np.testing.assert_allclose(M.l1_distance(a, b).numpy(), np.abs(d).sum(1) / 784, rtol=1e-5)
    np.testing.assert_allclose(M.l2_distance(a, b).numpy(), np.linalg.norm(d, axis=1) / 28, rtol=1e-5)
    assert bool((M.l1_distance(a, b) <= M.l2_distance(a, b) + 1e-7).all())  # mean <= RMS
    assert torch.equal(M.l1_distance(a, a), torch.zeros(6))


def test_lp_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError):
        M.l1_distance(torch.rand(2, 1, 7, 7), torch.rand(2, 1, 14, 14))
    with pytest.raises(Adv2Error):
        M.l2_distance(torch.rand(2, 1, 7, 7), torch.rand(3, 1, 7, 7))


# ----------------------------------------------------------------------------------------------
# top-k and IoU
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_side", [4, 7, 8, 28, 56])
def test_topk_count_exact(n_side: int) -> None:
    n = n_side * n_side
    sal = torch.rand(5, 1, n_side, n_side, generator=_gen(6))
    for k in (*M.DEFAULT_KS, 0.1, 2.5, 100):
        expected = _ref_count(k, n)
        assert M.topk_count(k, n) == expected
        assert M.topk_mask(sal, k).flatten(1).sum(1).tolist() == [expected] * 5
    with pytest.raises(ValueError):
        M.topk_count(0, n)
    with pytest.raises(ValueError):
        M.topk_count(101, n)


def test_topk_tie_break_constant_map_is_index_order() -> None:
    sal = torch.full((3, 1, 7, 7), 0.4)
    for k in M.DEFAULT_KS:
        kk = M.topk_count(k, 49)
        expected = torch.zeros(49, dtype=torch.bool)
        expected[:kk] = True
        assert torch.equal(M.topk_mask(sal, k).flatten(1), expected.expand(3, -1))


def test_topk_tie_break_against_reference_with_many_ties() -> None:
    # 4 levels only -> lots of ties; includes -0.0 vs 0.0
    sal = torch.randint(0, 4, (6, 1, 8, 8), generator=_gen(7)).float() / 3
    sal[0, 0, 0, :3] = torch.tensor([-0.0, 0.0, -0.0])
    for k in M.DEFAULT_KS:
        mask = M.topk_mask(sal, k).flatten(1)
        for i, row in enumerate(sal.flatten(1).tolist()):
            got = set(torch.nonzero(mask[i]).flatten().tolist())
            assert got == _ref_topk(row, _ref_count(k, 64))


@pytest.mark.parametrize("device", DEVICES)
def test_iou_identical_is_one_and_matches_reference(device: str) -> None:
    g = _gen(8)
    a = (torch.randint(0, 6, (5, 1, 14, 14), generator=g).float() / 5).to(device)
    b = (torch.randint(0, 6, (5, 1, 14, 14), generator=g).float() / 5).to(device)
    assert torch.equal(M.iou_curve(a, a), torch.ones(5, len(M.DEFAULT_KS), device=device))
    curve = M.iou_curve(a, b)
    assert curve.shape == (5, len(M.DEFAULT_KS))
    for j, k in enumerate(M.DEFAULT_KS):
        np.testing.assert_allclose(curve[:, j].cpu().numpy(), _ref_iou(a.cpu(), b.cpu(), k), rtol=1e-6)
        assert torch.equal(M.iou_topk(a, b, k), curve[:, j])
    assert torch.allclose(M.iou_mean(a, b), curve.mean(1))


def test_iou_disjoint_supports_is_zero() -> None:
    g = _gen(9)
    a = torch.zeros(4, 1, 8, 8)
    b = torch.zeros(4, 1, 8, 8)
    a[:, :, :4] = torch.rand(4, 1, 4, 8, generator=g) + 0.1  # top half (32 px)
    b[:, :, 4:] = torch.rand(4, 1, 4, 8, generator=g) + 0.1  # bottom half
    ks = [k for k in M.DEFAULT_KS if M.topk_count(k, 64) <= 32]
    assert len(ks) >= 5
    assert torch.equal(M.iou_curve(a, b, ks), torch.zeros(4, len(ks)))
    # beyond the support size the sets must overlap, so the test above is not vacuous
    assert bool((M.iou_topk(a, b, 90) > 0).all())


def test_iou_nan_propagates_per_sample() -> None:
    g = _gen(10)
    a, b = torch.rand(3, 1, 7, 7, generator=g), torch.rand(3, 1, 7, 7, generator=g)
    bad = a.clone()
    bad[1, 0, 3, 3] = math.nan
    curve = M.iou_curve(bad, b)
    assert bool(torch.isnan(curve[1]).all())
    assert torch.equal(curve[[0, 2]], M.iou_curve(a, b)[[0, 2]])
    l1 = M.l1_distance(bad, b)
    assert torch.isnan(l1[1]) and torch.equal(l1[[0, 2]], M.l1_distance(a, b)[[0, 2]])
    assert torch.isnan(M.l2_distance(b, bad)[1])
    # NaN pixel ranks last, deterministically
    assert not bool(M.topk_mask(bad, 90)[1, 0, 3, 3])


def test_iou_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError):
        M.iou_curve(torch.rand(2, 1, 7, 7), torch.rand(2, 1, 8, 8))


# ----------------------------------------------------------------------------------------------
# localisation
# ----------------------------------------------------------------------------------------------
def _block_gt(n: int, side: int, cell: int, seed: int, frac: float) -> tuple[torch.Tensor, torch.Tensor]:
    """GT at image resolution made of whole map cells; returns (gt [N,1,S,S], cells [N,1,side,side])."""
    cells = (torch.rand(n, 1, side, side, generator=_gen(seed)) < frac).float()
    cells.view(n, -1)[:, 0] = 1.0  # never empty
    gt = cells.repeat_interleave(cell, dim=2).repeat_interleave(cell, dim=3)
    return gt, cells


@pytest.mark.parametrize("device", DEVICES)
def test_localization_one_for_gt_zero_for_complement(device: str) -> None:
    gt, cells = _block_gt(6, 7, 32, seed=11, frac=0.3)  # 224 -> 7
    gt, cells = gt.to(device), cells.to(device)
    assert torch.equal(M.localization_iou(cells, gt), torch.ones(6, device=device))
    comp = M.localization_iou(1 - cells, gt)  # GT has < half the cells, so the top-k avoids it
    assert bool((cells.flatten(1).sum(1) <= 24).all())
    assert torch.equal(comp, torch.zeros(6, device=device))
    # graded saliency inside the object keeps IoU 1 (only the top-k set matters)
    graded = cells * torch.linspace(0.5, 1.0, 49, device=device).view(1, 1, 7, 7)
    assert torch.equal(M.localization_iou(graded, gt), torch.ones(6, device=device))


def test_localization_area_rule_and_fallbacks() -> None:
    side, cell = 8, 8  # 64 -> 8
    gt = torch.zeros(3, 1, 64, 64)
    gt[0, 0, 0:8, 0:4] = 1  # cell (0,0) covered exactly 0.5 -> kept
    gt[0, 0, 8:16, 8:11] = 1  # cell (1,1) covered 0.375 -> dropped
    gt[0, 0, 16:24, 16:24] = 1  # cell (2,2) fully covered -> kept (so no fallback for image 0)
    gt[1, 0, 20:22, 40:43] = 1  # tiny object, < 0.5 everywhere -> argmax cell (2,5)
    # gt[2] empty -> NaN
    cells, usable = M.gt_cells(gt, (side, side))
    ref = gt.numpy().reshape(3, side, cell, side, cell).mean(axis=(2, 4)).reshape(3, -1)
    assert cells[0].tolist() == (ref[0] >= 0.5).tolist()
    assert cells[0].nonzero().flatten().tolist() == [0, 2 * side + 2]
    assert cells[1].nonzero().flatten().tolist() == [2 * side + 5]
    assert usable.tolist() == [True, True, False]
    sal = torch.zeros(3, 1, side, side)
    sal[1, 0, 2, 5] = 1.0
    sal[0, 0, 0, 0] = 1.0
    sal[0, 0, 2, 2] = 0.9
    out = M.localization_iou(sal, gt)
    assert out[0].item() == 1.0 and out[1].item() == 1.0 and math.isnan(out[2].item())


def test_localization_matches_reference_per_image_k() -> None:
    gt, cells = _block_gt(8, 7, 32, seed=12, frac=0.4)
    sal = torch.rand(8, 1, 7, 7, generator=_gen(13))
    out = M.localization_iou(sal, gt)
    for i in range(8):
        g = set(torch.nonzero(cells[i].flatten()).flatten().tolist())
        top = _ref_topk(sal[i].flatten().tolist(), len(g))
        assert out[i].item() == pytest.approx(len(top & g) / len(top | g))


# ----------------------------------------------------------------------------------------------
# batch == one-by-one, transfer entry
# ----------------------------------------------------------------------------------------------
def test_batch_equals_one_by_one() -> None:
    g = _gen(14)
    a, b = torch.rand(5, 1, 7, 7, generator=g), torch.rand(5, 1, 7, 7, generator=g)
    gt, _ = _block_gt(5, 7, 32, seed=15, frac=0.5)  # different k per image
    logits, target = torch.randn(5, 10, generator=g), torch.randint(0, 10, (5,), generator=g)
    fns = {
        "l1": lambda s: M.l1_distance(a[s], b[s]),
        "l2": lambda s: M.l2_distance(a[s], b[s]),
        "iou_curve": lambda s: M.iou_curve(a[s], b[s]),
        "iou_mean": lambda s: M.iou_mean(a[s], b[s]),
        "loc": lambda s: M.localization_iou(a[s], gt[s]),
        "topk": lambda s: M.topk_mask(a[s], 30),
        "succ": lambda s: M.attack_success(logits[s], target[s]),
        "conf": lambda s: M.confidence(logits[s]),
        "pt": lambda s: M.target_probability(logits[s], target[s]),
    }
    for name, fn in fns.items():
        batch = fn(slice(None))
        single = torch.cat([fn(slice(i, i + 1)) for i in range(5)])
        assert torch.equal(batch, single), name


# ----------------------------------------------------------------------------------------------
# aggregation
# ----------------------------------------------------------------------------------------------
def test_bootstrap_contains_mean_shrinks_and_is_deterministic() -> None:
    rng = np.random.default_rng(0)
    small, large = rng.exponential(size=40), rng.exponential(size=4000)
    m_s, lo_s, hi_s = M.bootstrap_ci(small)
    m_l, lo_l, hi_l = M.bootstrap_ci(large)
    assert m_s == pytest.approx(small.mean()) and m_l == pytest.approx(large.mean())
    assert lo_s < m_s < hi_s and lo_l < m_l < hi_l
    assert (hi_l - lo_l) < 0.3 * (hi_s - lo_s)  # ~ 1/sqrt(100) = 0.1 expected
    assert M.bootstrap_ci(small, seed=3) == M.bootstrap_ci(small, seed=3)
    assert M.bootstrap_ci(small, seed=3) != M.bootstrap_ci(small, seed=4)
    # a lower alpha gives a wider interval
    _, lo99, hi99 = M.bootstrap_ci(small, alpha=0.01)
    assert lo99 <= lo_s and hi99 >= hi_s


def test_bootstrap_nan_safe_and_edge_cases() -> None:
    v = np.array([0.1, np.nan, 0.5, 0.3, np.nan, 0.9])
    assert M.bootstrap_ci(v) == M.bootstrap_ci(v[~np.isnan(v)])
    assert all(math.isnan(x) for x in M.bootstrap_ci(np.array([np.nan, np.nan])))
    assert all(math.isnan(x) for x in M.bootstrap_ci(np.array([])))
    assert M.bootstrap_ci(np.array([0.7])) == (0.7, 0.7, 0.7)
    assert M.bootstrap_ci(torch.tensor([0.1, 0.5, 0.3, 0.9], dtype=torch.float64)) == M.bootstrap_ci(np.array([0.1, 0.5, 0.3, 0.9]))


def test_success_rate_wilson() -> None:
    rate, lo, hi = M.success_rate(np.array([1] * 30 + [0] * 10, dtype=bool))
    assert rate == 0.75 and lo < 0.75 < hi
    # independent Wilson formula with z = 1.96
    z, n, p = 1.959963984540054, 40, 0.75
    c = (p + z * z / (2 * n)) / (1 + z * z / n)
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert (lo, hi) == pytest.approx((c - h, c + h))
    r0, lo0, hi0 = M.success_rate(np.zeros(20, dtype=bool))
    assert r0 == 0 and lo0 == 0 and 0 < hi0 < 0.25
    r1, lo1, hi1 = M.success_rate(torch.ones(20, dtype=torch.bool))
    assert r1 == 1.0 and hi1 == 1.0 and 0.75 < lo1 < 1


def test_summarize_means_over_successful_only() -> None:
    rng = np.random.default_rng(1)
    success = np.array([True, False] * 20)
    l1 = np.where(success, rng.uniform(0.0, 0.1, 40), rng.uniform(0.5, 1.0, 40))  # failures are far off
    l1[2] = np.nan  # a successful sample with an undefined metric is skipped, not fatal
    row = M.summarize(success, {"l1": l1, "conf": torch.from_numpy(rng.uniform(size=40))})
    ok = l1[success & ~np.isnan(l1)]
    assert row["n_attacked"] == 40 and row["n_success"] == 20
    assert row["success_rate"] == 0.5
    assert row["l1_n"] == 19
    assert row["l1_mean"] == pytest.approx(ok.mean())
    assert row["l1_std"] == pytest.approx(ok.std(ddof=1))
    assert abs(row["l1_mean"] - np.nanmean(l1)) > 0.2  # all-images mean would be very different
    assert row["l1_lo"] <= row["l1_mean"] <= row["l1_hi"] < 0.1
    assert {"conf_mean", "conf_lo", "conf_hi", "conf_std", "conf_n"} <= set(row)
    with pytest.raises(ValueError):
        M.summarize(success, {"l1": l1[:10]})


def test_summarize_no_success_gives_nan_means() -> None:
    row = M.summarize(np.zeros(5, dtype=bool), {"l1": np.ones(5)})
    assert row["success_rate"] == 0 and row["n_success"] == 0 and row["l1_n"] == 0
    assert math.isnan(row["l1_mean"]) and math.isnan(row["l1_std"])
