import pytest
import torch

from lavis_goal.models.long_text import causal_mask, stretch_positional_embedding


def test_stretch_to_248_shape_and_values():
    torch.manual_seed(0)
    pe = torch.randn(77, 8)
    out = stretch_positional_embedding(pe, 248, keep=20)

    assert out.shape == (248, 8)
    assert torch.equal(out[:20], pe[:20])
    for p in (20, 21, 50, 75):
        for k in range(4):
            expected = pe[p] * (1 - k / 4) + pe[p + 1] * (k / 4)
            assert torch.allclose(out[20 + 4 * (p - 20) + k], expected, atol=1e-6), (p, k)
    for k in range(4):
        expected = pe[76] + k * (pe[76] - pe[75]) / 4
        assert torch.allclose(out[244 + k], expected, atol=1e-6), k


def test_stretch_hand_computed_values():
    pe = torch.arange(77, dtype=torch.float32)[:, None]  # pe[p] = p
    out = stretch_positional_embedding(pe, 248, keep=20)[:, 0]
    assert out[19].item() == 19.0
    assert out[20:24].tolist() == [20.0, 20.25, 20.5, 20.75]
    assert out[240:244].tolist() == [75.0, 75.25, 75.5, 75.75]
    assert out[244:248].tolist() == [76.0, 76.25, 76.5, 76.75]


def test_stretch_same_length_is_copy():
    pe = torch.randn(77, 4)
    out = stretch_positional_embedding(pe, 77)
    assert torch.equal(out, pe)
    assert out.data_ptr() != pe.data_ptr()


def test_stretch_other_length_truncates_tail():
    pe = torch.randn(77, 4)
    out = stretch_positional_embedding(pe, 200, keep=20)
    assert out.shape == (200, 4)
    assert torch.equal(out, stretch_positional_embedding(pe, 248, keep=20)[:200])


def test_stretch_rejects_shorter_target():
    with pytest.raises(ValueError, match="shorter than"):
        stretch_positional_embedding(torch.randn(77, 4), 64)


def test_causal_mask():
    mask = causal_mask(4)
    assert mask.shape == (4, 4)
    assert torch.isinf(mask[0, 1])
    assert mask[1, 0] == 0
    assert mask[2, 2] == 0
