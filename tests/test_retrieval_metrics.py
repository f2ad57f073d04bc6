import numpy as np
import pytest

from lavis_goal.tasks.retrieval_metrics import retrieval_metrics, retrieval_ranks


def _brute_force(score_i2t, img2txt, txt2img, ks):
    """Row-by-row reference: count wrong items scored at least as high as the best correct one."""
    n_images, n_texts = score_i2t.shape
    i2t = []
    for i in range(n_images):
        best = max(score_i2t[i, j] for j in img2txt[i])
        i2t.append(sum(1 for j in range(n_texts) if j not in img2txt[i] and score_i2t[i, j] >= best))
    t2i = []
    for t in range(n_texts):
        correct = score_i2t[txt2img[t], t]
        t2i.append(sum(1 for i in range(n_images) if i != txt2img[t] and score_i2t[i, t] >= correct))
    out = {}
    for k in ks:
        out[f"t2i_r{k}"] = 100.0 * np.mean([r < k for r in t2i])
        out[f"i2t_r{k}"] = 100.0 * np.mean([r < k for r in i2t])
    return out


@pytest.mark.parametrize("captions_per_image", [1, 2, 5])
def test_metrics_match_brute_force(captions_per_image):
    rng = np.random.default_rng(captions_per_image)
    n_images = 37
    img2txt = {i: [i * captions_per_image + c for c in range(captions_per_image)] for i in range(n_images)}
    txt2img = {t: i for i, ts in img2txt.items() for t in ts}
    scores = rng.normal(size=(n_images, n_images * captions_per_image)).astype(np.float32)
    # Make some correct pairs strong so recalls are not all near chance.
    for i, ts in img2txt.items():
        if i % 3 == 0:
            scores[i, ts[0]] += 3.0
    ks = (1, 5, 10, 25, 50)
    metrics = retrieval_metrics(scores, scores.T, img2txt, txt2img, ks)
    expected = _brute_force(scores, img2txt, txt2img, ks)
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value), key
    assert metrics["mean_r1"] == pytest.approx((expected["t2i_r1"] + expected["i2t_r1"]) / 2)


def test_ties_count_against_the_model():
    scores = np.zeros((3, 3), dtype=np.float32)
    img2txt = {0: [0], 1: [1], 2: [2]}
    txt2img = {0: 0, 1: 1, 2: 2}
    i2t, t2i = retrieval_ranks(scores, scores.T, img2txt, txt2img)
    assert i2t.tolist() == [2, 2, 2]
    assert t2i.tolist() == [2, 2, 2]
    metrics = retrieval_metrics(scores, scores.T, img2txt, txt2img, (1, 5))
    assert metrics["t2i_r1"] == 0.0
    assert metrics["i2t_r5"] == 100.0


def test_perfect_scores_give_full_recall():
    scores = np.eye(4, dtype=np.float32)
    mapping = {i: [i] for i in range(4)}
    metrics = retrieval_metrics(scores, scores.T, mapping, {i: i for i in range(4)}, (1,))
    assert metrics["t2i_r1"] == 100.0
    assert metrics["i2t_r1"] == 100.0


def test_image_without_caption_is_rejected():
    scores = np.zeros((2, 1), dtype=np.float32)
    with pytest.raises(ValueError, match="Image 1 has no caption"):
        retrieval_ranks(scores, scores.T, {0: [0], 1: []}, {0: 0})
