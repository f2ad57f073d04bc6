import math

import pytest
import torch
import torch.nn.functional as F

from lavis_goal.losses import GoalLoss, GoalLossConfig, contrastive_loss, tsl_loss


def _unit(*rows):
    return F.normalize(torch.tensor(rows, dtype=torch.float64), dim=-1)


def test_contrastive_hand_computed():
    image = _unit([1.0, 0.0], [0.0, 1.0])
    text = _unit([1.0, 0.0], [1.0, 1.0])
    scale = torch.tensor(2.0, dtype=torch.float64)
    # Logits i2t: [[2, sqrt2], [0, sqrt2]]; t2i is the transpose.
    r = math.sqrt(2)
    ce_i0 = -math.log(math.exp(2) / (math.exp(2) + math.exp(r)))
    ce_i1 = -math.log(math.exp(r) / (math.exp(0) + math.exp(r)))
    ce_t0 = -math.log(math.exp(2) / (math.exp(2) + math.exp(0)))
    ce_t1 = -math.log(math.exp(r) / (math.exp(r) + math.exp(r)))
    expected = ((ce_i0 + ce_t0) / 2 + (ce_i1 + ce_t1) / 2) / 2
    assert contrastive_loss(image, text, scale).item() == pytest.approx(expected, rel=1e-9)


def test_contrastive_invalid_samples_are_neither_rows_nor_columns():
    torch.manual_seed(0)
    image = F.normalize(torch.randn(5, 4, dtype=torch.float64), dim=-1)
    text = F.normalize(torch.randn(5, 4, dtype=torch.float64), dim=-1)
    valid = torch.tensor([True, False, True, True, False])
    scale = torch.tensor(10.0, dtype=torch.float64)
    masked = contrastive_loss(image, text, scale, valid)
    kept = contrastive_loss(image[valid], text[valid], scale)
    assert masked.item() == pytest.approx(kept.item(), rel=1e-9)


def test_tsl_diagonal_hand_computed():
    pooled = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]], dtype=torch.float64)
    target = torch.tensor([[1.0, 1.0], [0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)
    valid = torch.tensor([True, True, False])
    # cos: 1/sqrt2, 1, (ignored); (1 - cos)^2 averaged over the two valid rows.
    expected = ((1 - 1 / math.sqrt(2)) ** 2 + 0.0) / 2
    assert tsl_loss(pooled, target, valid).item() == pytest.approx(expected, rel=1e-9)


def test_tsl_matrix_hand_computed():
    pooled = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    target = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    valid = torch.tensor([True, True])
    # cos matrix [[1, 1/sqrt2], [0, 1/sqrt2]] against the identity.
    c = 1 / math.sqrt(2)
    row0 = ((1 - 1) ** 2 + c**2) / 2
    row1 = (0**2 + (c - 1) ** 2) / 2
    assert tsl_loss(pooled, target, valid, mode="matrix").item() == pytest.approx((row0 + row1) / 2, rel=1e-9)


def test_tsl_all_invalid_is_zero_with_graph():
    pooled = torch.randn(3, 4, requires_grad=True)
    loss = tsl_loss(pooled, torch.randn(3, 4), torch.zeros(3, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.count_nonzero(pooled.grad) == 0


def _inputs(batch=4, dim=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    unit = lambda: F.normalize(torch.randn(batch, dim, generator=g, dtype=torch.float64), dim=-1)
    return dict(
        image_global=unit(), text_global=unit(), image_local=unit(), text_local=unit(),
        local_valid=torch.tensor([True, True, True, False]),
        region_pooled=torch.randn(batch, dim, generator=g, dtype=torch.float64),
        region_valid=torch.tensor([True, False, True, True]),
        span_pooled=torch.randn(batch, dim, generator=g, dtype=torch.float64),
        span_valid=torch.tensor([True, True, False, True]),
    )


def test_goal_loss_weights_combine_terms():
    inputs = _inputs()
    scale = torch.tensor(5.0, dtype=torch.float64)
    out = GoalLoss(GoalLossConfig())(scale, **inputs)
    expected = out["loss_global"] + 0.5 * out["loss_local"] + out["loss_tsl_image"] + out["loss_tsl_text"]
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-12)
    assert out["loss_tsl_image"].item() == pytest.approx(
        tsl_loss(inputs["region_pooled"], inputs["image_local"], torch.tensor([True, False, True, False])).item()
    )


@pytest.mark.parametrize(
    "weights,active",
    [
        (dict(global_weight=1.0, local_weight=0.0, tsl_image_weight=0.0, tsl_text_weight=0.0), {"loss_global"}),
        (dict(global_weight=0.0, local_weight=0.5, tsl_image_weight=0.0, tsl_text_weight=0.0), {"loss_local"}),
        (dict(global_weight=1.0, local_weight=0.5, tsl_image_weight=0.0, tsl_text_weight=0.0), {"loss_global", "loss_local"}),
    ],
)
def test_goal_loss_zero_weight_skips_term(weights, active):
    out = GoalLoss(GoalLossConfig(**weights))(torch.tensor(5.0, dtype=torch.float64), **_inputs())
    for name in ("loss_global", "loss_local", "loss_tsl_image", "loss_tsl_text"):
        assert (out[name].item() != 0.0) == (name in active), name


def test_loss_config_rejects_unknown_key_and_target():
    with pytest.raises(ValueError, match="tsl_weigth"):
        GoalLossConfig.from_dict({"tsl_weigth": 1.0})
    with pytest.raises(ValueError, match="tsl_target"):
        GoalLossConfig(tsl_target="full")
