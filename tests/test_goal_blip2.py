"""Tests of ``goal_blip2``: the tiny BLIP-2 built offline, GOAL's terms on the Q-Former, retrieval and configs.

Only the ``tiny`` model type is built. ``pretrain`` and ``pretrain_vitL``
download bert-base-uncased and LAVIS's vision-encoder weights, so their
configs are read but never built.
"""

import argparse
import contextlib
import datetime
import json
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lavis.common.config import Config
from lavis.models import load_model, load_model_and_preprocess
from lavis.models.blip2_models.blip2_qformer import Blip2Qformer
from lavis.models.eva_vit import VisionTransformer
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, Dataset
from transformers import BertTokenizer

import lavis_goal
from lavis_goal import evaluate, train
from lavis_goal.geometry import boxes_to_patch_mask
from lavis_goal.losses import GoalLoss, GoalLossConfig, contrastive_loss, tsl_loss
from lavis_goal.models import GoalBlip2
from lavis_goal.models.blip2.backbones import build_bert_tokenizer
from lavis_goal.models.blip2.retrieval import rerank_with_itm
from lavis_goal.text_spans import SpanTokenizer, split_sentence_offsets

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "projects" / "goal" / "train"
DEMO_CONFIG = REPO / "projects" / "goal" / "blip2_demo.yaml"

CAPTION = (
    "A red ball lies on green grass near a wooden fence. A brown dog runs to the left, chasing it. "
    "The sky above is pale blue, with thin clouds."
)
SENTENCE = "A brown dog runs to the left, chasing it."
BOX = [40.0, 70.0, 150.0, 180.0]  # input pixels: columns 1 to 4 and rows 2 to 5 of the 7 x 7 patch grid
GOAL_WEIGHTS = {"global_weight": 1.0, "local_weight": 0.5, "tsl_image_weight": 1.0, "tsl_text_weight": 1.0}
CONTRASTIVE_WEIGHTS = {"global_weight": 1.0, "local_weight": 0.0, "tsl_image_weight": 0.0, "tsl_text_weight": 0.0}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return load_model("goal_blip2", "tiny")


def _batch(model, batch=2, slots=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokenizer = model.span_tokenizer
    encoded = tokenizer.encode_caption(CAPTION)
    start = CAPTION.index(SENTENCE)
    span_start, span_end, status = tokenizer.sentence_span(encoded, CAPTION, start, start + len(SENTENCE))
    assert status == "ok", f"setup: span status {status}"
    size = model.image_size[0]
    return {
        "image": torch.randn(batch, 3, size, size, generator=g),
        "text_input": encoded.tokens[None].repeat(batch, 1),
        "local_image": torch.randn(batch, slots, 3, size, size, generator=g),
        "local_text": tokenizer.encode_caption(SENTENCE).tokens[None, None].repeat(batch, slots, 1),
        "local_valid": torch.ones(batch, slots, dtype=torch.bool),
        "region_box": torch.tensor(BOX).repeat(batch, slots, 1),
        "region_valid": torch.ones(batch, slots, dtype=torch.bool),
        "span": torch.tensor([span_start, span_end]).repeat(batch, slots, 1),
        "span_valid": torch.ones(batch, slots, dtype=torch.bool),
    }


def _tiny(**overrides):
    """Build the tiny model from its default config with ``overrides`` on the model section."""
    cfg = OmegaConf.load(GoalBlip2.default_config_path("tiny")).model
    return GoalBlip2.from_config(OmegaConf.merge(cfg, overrides))


def test_tiny_builds_offline(monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError(f"building the tiny model tried to download ({args[:2]})")

    monkeypatch.setattr(socket.socket, "connect", no_download)
    monkeypatch.setattr("transformers.BertTokenizer.from_pretrained", no_download)
    monkeypatch.setattr("lavis.models.blip2_models.Qformer.BertLMHeadModel.from_pretrained", no_download)
    monkeypatch.setattr("lavis.models.eva_vit.download_cached_file", no_download)
    monkeypatch.setattr("lavis_goal.models.goal_blip2.download_cached_file", no_download)

    model = load_model("goal_blip2", "tiny")

    assert isinstance(model, Blip2Qformer)
    assert isinstance(model.visual_encoder, VisionTransformer)
    assert model.image_size == (224, 224)
    assert model.patch_size == (32, 32)
    assert tuple(model.query_tokens.shape) == (1, 8, 64)
    assert all(layer.has_cross_attention for layer in model.Qformer.bert.encoder.layer)
    assert model.Qformer.config.max_position_embeddings == 512
    assert model.span_tokenizer.context_length == 512


def test_tiny_tokenizer_has_special_tokens(model):
    tokenizer = model.tokenizer
    vocabulary = tokenizer.get_vocab()
    for token in ("[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]", "[DEC]"):
        assert token in vocabulary, token
    assert tokenizer.pad_token_id == 0
    assert tokenizer.bos_token == "[DEC]"
    assert model.Qformer.bert.embeddings.word_embeddings.num_embeddings == len(tokenizer)


def test_registry_lists_blip2_types():
    zoo = dict(iter(lavis_goal.model_zoo))
    assert zoo["goal_blip2"] == ["pretrain", "pretrain_vitL", "tiny"]
    _, processors, _ = load_model_and_preprocess("goal_blip2", "tiny", is_eval=True)
    assert type(processors["eval"]).__name__ == "GoalImageEvalProcessor"


@pytest.mark.parametrize("model_type,vit", [("pretrain", "eva_clip_g"), ("pretrain_vitL", "clip_L")])
def test_pretrain_configs_follow_lavis(model_type, vit):
    cfg = OmegaConf.load(GoalBlip2.default_config_path(model_type)).model
    assert cfg.vit_model == vit
    assert cfg.qformer_bert == "bert-base-uncased"
    assert cfg.num_query_token == 32
    assert cfg.cross_attention_freq == 2
    assert cfg.freeze_vit is True
    assert cfg.max_txt_len == 512
    suffix = "blip2_pretrained.pth" if model_type == "pretrain" else "blip2_pretrained_vitL.pth"
    assert cfg.pretrained.endswith(f"/LAVIS/models/BLIP2/{suffix}")


@pytest.mark.parametrize("model_type,vit", [("pretrain", "eva_clip_g"), ("pretrain_vitL", "clip_L")])
def test_pretrain_types_use_lavis_builders(monkeypatch, model_type, vit):
    # LAVIS's builders download their weights; stand-ins record the calls and return tiny parts.
    from lavis.models.blip2_models.blip2 import Blip2Base

    from lavis_goal.models.blip2 import backbones

    calls = {}
    tiny_tokenizer = build_bert_tokenizer("goal-tiny-bert")

    def vision_encoder(model_name, img_size, drop_path_rate, use_grad_checkpoint, precision):
        calls["vision"] = (model_name, img_size, drop_path_rate, use_grad_checkpoint, precision)
        return backbones.build_vision_encoder("goal-tiny-vit", img_size, drop_path_rate, use_grad_checkpoint, "fp32")

    def qformer(num_query_token, vision_width, cross_attention_freq=2):
        calls["qformer"] = (num_query_token, vision_width, cross_attention_freq)
        return backbones.build_qformer("goal-tiny-bert", num_query_token, vision_width, cross_attention_freq)

    def tokenizer(name):
        calls["tokenizer"] = name
        return BertTokenizer(vocab_file=str(backbones.ASSETS / "goal-tiny-bert" / "vocab.txt"))

    monkeypatch.setattr(Blip2Base, "init_vision_encoder", vision_encoder)
    monkeypatch.setattr(Blip2Base, "init_Qformer", qformer)
    monkeypatch.setattr("lavis_goal.models.blip2.backbones.BertTokenizer.from_pretrained", tokenizer)
    cfg = OmegaConf.load(GoalBlip2.default_config_path(model_type)).model
    cfg.pretrained = None
    model = GoalBlip2.from_config(cfg)

    assert calls["vision"] == (vit, 224, 0.0, False, "fp16")
    assert calls["qformer"] == (32, 64, 2)
    assert calls["tokenizer"] == "bert-base-uncased"
    assert len(model.tokenizer) == len(tiny_tokenizer)
    assert tuple(model.query_tokens.shape[:2]) == (1, 32)


def test_invalid_options_raise():
    with pytest.raises(ValueError, match="valid types: pretrain, pretrain_vitL, tiny"):
        GoalBlip2.default_config_path("coco")
    with pytest.raises(ValueError, match="vit_precision: fp32"):
        _tiny(vit_precision="fp16", freeze_vit=False)
    with pytest.raises(ValueError, match="max_txt_len"):
        _tiny(max_txt_len=600)
    with pytest.raises(ValueError, match="did you mean 'max_txt_len'"):
        _tiny(max_text_len=100)
    with pytest.raises(ValueError, match="qformer_bert"):
        _tiny(qformer_bert="no-such-bert")


def test_fp16_vision_encoder_needs_cuda():
    model = _tiny(vit_precision="fp16", freeze_vit=True)
    assert model.visual_encoder.patch_embed.proj.weight.dtype == torch.float16
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        model.encode_image_tokens(torch.zeros(1, 3, 224, 224))


def test_checkpoint_round_trip(tmp_path, model):
    path = tmp_path / "checkpoint.pth"
    torch.save({"model": model.state_dict()}, path)
    loaded = _tiny(finetuned=str(path))
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name


def test_stage1_checkpoint_without_vision_encoder(tmp_path, model):
    # LAVIS's BLIP-2 first-stage checkpoints leave out the frozen vision encoder.
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("visual_encoder.")}
    path = tmp_path / "stage1.pth"
    torch.save({"model": state}, path)
    loaded = _tiny(pretrained=str(path))
    assert torch.equal(loaded.query_tokens, model.query_tokens)

    state["itm_head.extra"] = torch.zeros(1)
    torch.save({"model": state}, path)
    with pytest.raises(ValueError, match="unexpected keys \\['itm_head.extra'\\]"):
        _tiny(pretrained=str(path))


def _outside_box(mask):
    """Return a ``(B, 1 + N)`` bool mask of the class token and the patches outside the box."""
    return torch.cat([torch.ones(mask.shape[0], 1, dtype=torch.bool), ~mask], dim=1)


@contextlib.contextmanager
def _loss_weights(model, **weights):
    """Train ``model`` with other loss weights inside the block."""
    saved = model.loss_cfg, model.loss_fn
    model.loss_cfg = GoalLossConfig(**weights)
    model.loss_fn = GoalLoss(model.loss_cfg)
    try:
        yield
    finally:
        model.loss_cfg, model.loss_fn = saved


@contextlib.contextmanager
def _record_loss_inputs(model):
    """Collect the keyword inputs of the model's loss call into the yielded dict."""
    recorded = {}
    original = model.loss_fn.forward

    def record(logit_scale, **inputs):
        recorded.update(inputs)
        return original(logit_scale, **inputs)

    model.loss_fn.forward = record
    try:
        yield recorded
    finally:
        del model.loss_fn.forward


def test_restricted_queries_ignore_outside_patches(model):
    model.eval()
    g = torch.Generator().manual_seed(1)
    tokens = torch.randn(2, 50, 64, generator=g)
    mask = boxes_to_patch_mask(torch.tensor([[BOX], [[0.0, 0.0, 60.0, 224.0]]]), model.image_size, model.patch_size)
    assert 0 < int(mask.sum()) < mask.numel()
    outside = _outside_box(mask[:, 0])

    changed = tokens.clone()
    changed[outside] = torch.randn(int(outside.sum()), 64, generator=g) * 5
    with torch.no_grad():
        restricted = model.region_query_outputs(tokens, mask)
        restricted_changed = model.region_query_outputs(changed, mask)
        full = model.query_outputs(tokens)
        full_changed = model.query_outputs(changed)

    torch.testing.assert_close(restricted_changed, restricted, rtol=0, atol=1e-6)
    # The same change moves the unrestricted queries, so the test would see a leak.
    assert (full_changed - full).abs().max() > 1e-2


def test_restricted_queries_see_inside_patches(model):
    model.eval()
    g = torch.Generator().manual_seed(2)
    tokens = torch.randn(1, 50, 64, generator=g)
    mask = boxes_to_patch_mask(torch.tensor([[BOX]]), model.image_size, model.patch_size)
    inside = torch.cat([torch.zeros(1, 1, dtype=torch.bool), mask[:, 0]], dim=1)

    changed = tokens.clone()
    changed[inside] += torch.randn(int(inside.sum()), 64, generator=g)
    with torch.no_grad():
        before = model.region_query_outputs(tokens, mask)
        after = model.region_query_outputs(changed, mask)
    assert (after - before).abs().max() > 1e-2


def test_image_tsl_gradient_stays_inside_box(model):
    # With only the image TSL term, the whole image's encoder tokens get
    # gradient through the restricted queries alone.
    model.train()
    captured = []
    original = model.encode_image_tokens

    def capture(images):
        tokens = original(images)
        tokens.retain_grad()
        captured.append(tokens)
        return tokens

    batch = _batch(model)
    model.encode_image_tokens = capture
    try:
        with _loss_weights(model, global_weight=0.0, local_weight=0.0, tsl_image_weight=1.0, tsl_text_weight=0.0):
            model.zero_grad(set_to_none=True)
            model(batch)["loss"].backward()
    finally:
        del model.encode_image_tokens

    grad = captured[0].grad[:2]  # the two whole images; crops follow
    mask = boxes_to_patch_mask(batch["region_box"][:, 0], model.image_size, model.patch_size)
    outside = _outside_box(mask)
    assert grad[outside].abs().max() == 0
    assert grad[~outside].abs().sum() > 0


def test_empty_box_marks_region_invalid(model):
    model.eval()
    batch = _batch(model, batch=1, slots=1)
    batch["region_box"] = torch.tensor([[[60.0, 60.0, 60.0, 120.0]]])  # zero width
    with _record_loss_inputs(model) as recorded, torch.no_grad():
        output = model(batch)
    assert torch.isfinite(recorded["region_pooled"]).all()
    assert recorded["region_valid"].tolist() == [False]
    assert torch.isfinite(output["loss"])


TRICKY_CAPTIONS = [
    "A sign reads 3.5 m. The café's door is red-brown!  Two \"quoted\" words follow.",
    "UPPER case Words. Mixed-case e-mail x/y (left) stays.\nA new line starts here? Yes.",
    "Zebra-striped xylophones hum quietly. Ünïcödé àccents are stripped. 42 is a number.",
]


@pytest.mark.parametrize("caption", TRICKY_CAPTIONS)
def test_bert_spans_hold_sentence_tokens(model, caption):
    tokenizer = model.span_tokenizer
    encoded = tokenizer.encode_caption(caption)
    offsets = split_sentence_offsets(caption)
    assert len(offsets) >= 3
    for start, end in offsets:
        span_start, span_end, status = tokenizer.sentence_span(encoded, caption, start, end)
        assert status == "ok", caption[start:end]
        own = tokenizer.encode_caption(caption[start:end]).tokens
        length = span_end - span_start
        assert encoded.tokens[span_start:span_end].tolist() == own[1 : 1 + length].tolist(), caption[start:end]
        assert own[1 + length] == model.tokenizer.sep_token_id


def test_bert_spans_match_hf_tokenizer(model):
    # The padded ids equal the tokenizer's own padding="max_length" and truncation.
    long_caption = " ".join([CAPTION] * 30)
    for text in (CAPTION, long_caption):
        reference = model.tokenizer(text, padding="max_length", truncation=True, max_length=512, return_tensors="pt")
        assert model.span_tokenizer.encode_caption(text).tokens.tolist() == reference.input_ids[0].tolist()


def test_bert_span_past_context_is_truncated():
    tokenizer = SpanTokenizer.from_bert(build_bert_tokenizer("goal-tiny-bert"), 16)
    caption = "A dog runs. A cat sleeps on a warm red chair near the window. The end."
    encoded = tokenizer.encode_caption(caption)
    start = caption.index("The end.")
    assert tokenizer.sentence_span(encoded, caption, start, start + len("The end."))[2] == "truncated"
    assert encoded.tokens[-1] == tokenizer.eot_id


def test_demo_spans_are_exact(model):
    task, cfg = _demo_task()
    datasets = task.build_datasets(cfg)["goal_demo"]
    train_set = datasets["train"]
    assert cfg.datasets_cfg.goal_demo.tokenizer.kind == "bert"
    assert train_set.context_length == 512

    checked = 0
    expected = sum(min(len(record.pairs), train_set.top_k) for record in train_set.records)
    for row, record in enumerate(train_set.records):
        caption = train_set.caption_tokens[row].long()
        assert caption[0] == model.tokenizer.cls_token_id
        for slot in range(len(record.pairs[: train_set.top_k])):
            assert bool(train_set.span_valid[row, slot])
            start, end = train_set.spans[row, slot].tolist()
            sentence = train_set.local_tokens[row, slot].long()
            assert caption[start:end].tolist() == sentence[1 : 1 + end - start].tolist()
            assert sentence[1 + end - start] == model.tokenizer.sep_token_id
            checked += 1
    assert checked == expected > 0


def test_span_pooling_is_mean_of_span_tokens(model):
    model.eval()
    batch = _batch(model)
    with _record_loss_inputs(model) as recorded, torch.no_grad():
        model(batch)
        tokens = model.encode_text_tokens(batch["text_input"])
    start, end = batch["span"][0, 0].tolist()
    expected = model.text_proj(tokens[0, start:end].mean(0))
    torch.testing.assert_close(recorded["span_pooled"][0], expected, rtol=1e-5, atol=1e-6)
    assert recorded["span_valid"].all()


def test_text_padding_is_masked(model):
    # Trimming and masking padding leaves the caption embedding unchanged.
    model.eval()
    ids = model.tokenize([CAPTION])
    with torch.no_grad():
        padded = model.encode_text_tokens(ids)
        reference = model.Qformer.bert(ids, attention_mask=(ids != 0).long(), return_dict=True).last_hidden_state
    length = int((ids != 0).sum())
    assert padded.shape[1] == length
    torch.testing.assert_close(padded, reference[:, :length], rtol=1e-5, atol=1e-5)


def _gradients(model, batch):
    model.train()
    model.zero_grad(set_to_none=True)
    output = model(batch)
    output["loss"].backward()
    return output, {name: param.grad for name, param in model.named_parameters()}


def test_gradients_reach_qformer_and_vision_encoder(model):
    output, grads = _gradients(model, _batch(model))
    for term in ("loss_global", "loss_local", "loss_tsl_image", "loss_tsl_text"):
        assert output[term] > 0, term

    for name in (
        "visual_encoder.patch_embed.proj.weight",
        "visual_encoder.blocks.0.attn.qkv.weight",
        "ln_vision.weight",
        "query_tokens",
        "Qformer.bert.encoder.layer.0.crossattention.self.key.weight",
        "Qformer.bert.encoder.layer.1.intermediate_query.dense.weight",
        "Qformer.bert.encoder.layer.1.intermediate.dense.weight",
        "Qformer.bert.embeddings.word_embeddings.weight",
        "vision_proj.weight",
        "text_proj.weight",
        "temp",
    ):
        assert grads[name] is not None and grads[name].abs().sum() > 0, name

    # DistributedDataParallel needs a gradient for every trainable parameter.
    missing = [name for name, param in model.named_parameters() if param.requires_grad and grads[name] is None]
    assert not missing
    assert grads["itm_head.weight"] is None
    assert not model.itm_head.weight.requires_grad


def test_frozen_vision_encoder_gets_no_gradient():
    torch.manual_seed(0)
    model = _tiny(freeze_vit=True)
    model.train()
    assert not model.visual_encoder.training
    _, grads = _gradients(model, _batch(model))
    vision = [name for name in grads if name.startswith("visual_encoder.")]
    assert vision
    assert all(grads[name] is None for name in vision)
    assert not any(param.requires_grad for param in model.visual_encoder.parameters())
    assert grads["Qformer.bert.encoder.layer.0.crossattention.self.key.weight"].abs().sum() > 0


def test_contrastive_only_skips_local_inputs():
    torch.manual_seed(0)
    model = _tiny(loss=CONTRASTIVE_WEIGHTS)
    batch = {key: value for key, value in _batch(model).items() if key in ("image", "text_input")}
    output, grads = _gradients(model, batch)
    assert output["loss_global"] > 0
    assert output["loss_local"] == 0
    assert grads["Qformer.bert.encoder.layer.0.crossattention.self.key.weight"].abs().sum() > 0


def test_query_set_contrastive_is_max_over_queries():
    g = torch.Generator().manual_seed(3)
    image = F.normalize(torch.randn(3, 4, 5, generator=g, dtype=torch.float64), dim=-1)
    text = F.normalize(torch.randn(3, 5, generator=g, dtype=torch.float64), dim=-1)
    scale = torch.tensor(7.0, dtype=torch.float64)

    sim = torch.stack([torch.stack([(image[b] @ text[c]).max() for c in range(3)]) for b in range(3)])
    labels = torch.arange(3)
    expected = 0.5 * (F.cross_entropy(scale * sim, labels) + F.cross_entropy(scale * sim.T, labels))
    assert contrastive_loss(image, text, scale).item() == pytest.approx(expected.item(), rel=1e-9)
    # One query per image is the plain (B, D) loss.
    assert contrastive_loss(image[:, :1], text, scale).item() == pytest.approx(
        contrastive_loss(image[:, 0], text, scale).item(), rel=1e-9
    )


def test_query_set_tsl_compares_query_by_query():
    g = torch.Generator().manual_seed(4)
    pooled = torch.randn(3, 4, 5, generator=g, dtype=torch.float64)
    target = torch.randn(3, 4, 5, generator=g, dtype=torch.float64)
    valid = torch.tensor([True, True, False])
    cosine = torch.einsum("bqd,cqd->bcq", F.normalize(pooled, dim=-1), F.normalize(target, dim=-1)).mean(-1)

    diagonal = ((1 - cosine.diagonal()[:2]) ** 2).mean()
    assert tsl_loss(pooled, target, valid).item() == pytest.approx(diagonal.item(), rel=1e-9)
    squared = (cosine - torch.eye(3, dtype=torch.float64)) ** 2
    matrix = (squared[:2, :2].sum(-1) / 2).mean()
    assert tsl_loss(pooled, target, valid, mode="matrix").item() == pytest.approx(matrix.item(), rel=1e-9)
    with pytest.raises(ValueError, match="same shape"):
        tsl_loss(pooled, target[:, :2], valid)


class _ImagesAndTexts(Dataset):
    """A retrieval set in LAVIS's layout: ``image`` paths (unused), ``text`` ids and ``{"image", "index"}`` items."""

    def __init__(self, model, captions, seed=5):
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randn(len(captions), 3, 224, 224, generator=g)
        self.image = [f"image{i}" for i in range(len(captions))]
        self.text = [model.span_tokenizer.encode_caption(c).tokens for c in captions]

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return {"image": self.images[index], "index": index}


RETRIEVAL_CAPTIONS = [
    CAPTION,
    "Two children build a sandcastle on the beach. Waves roll in behind them under a grey sky.",
    "A wooden table holds a bowl of green apples. Sunlight falls through a window on the left.",
    "An old man reads a newspaper on a park bench. Pigeons gather around his feet.",
]


def _scores(model, dataset, k):
    model.eval()
    model.itm_rerank_k = k
    try:
        return model.compute_sim_matrix(DataLoader(dataset, batch_size=3), OmegaConf.create({"batch_size_eval": 5}))
    finally:
        model.itm_rerank_k = 0


def test_extract_features_modes(model):
    model.eval()
    image = torch.randn(2, 3, 224, 224)
    texts = [CAPTION, SENTENCE]
    image_features = model.extract_features({"image": image}, mode="image")
    text_features = model.extract_features({"text_input": texts}, mode="text")
    joint = model.extract_features({"image": image, "text_input": texts}, mode="multimodal")

    assert tuple(image_features.image_embeds.shape) == (2, 8, 64)
    assert tuple(image_features.image_embeds_proj.shape) == (2, 8, 32)
    torch.testing.assert_close(image_features.image_embeds_proj.norm(dim=-1), torch.ones(2, 8))
    length = len(model.span_tokenizer.encode(CAPTION)) + 2
    assert tuple(text_features.text_embeds.shape) == (2, length, 64)
    assert tuple(text_features.text_embeds_proj.shape) == (2, length, 32)
    assert tuple(joint.multimodal_embeds.shape) == (2, 8, 64)
    with pytest.raises(ValueError, match="mode must be"):
        model.extract_features({"image": image}, mode="both")


def test_sim_matrix_reads_past_35_tokens(model):
    prefix = " ".join(["a red ball lies on green grass near a wooden fence."] * 5)
    captions = [prefix + " The dog is brown.", prefix + " The cat is grey and sleeps on the warm stone wall."]
    dataset = _ImagesAndTexts(model, captions)
    assert len(model.span_tokenizer.encode(prefix)) > 35
    score_i2t, score_t2i = _scores(model, dataset, 0)
    assert score_i2t.shape == (2, 2)
    assert score_i2t.dtype == np.float32
    assert abs(score_i2t[0, 0] - score_i2t[0, 1]) > 1e-6
    np.testing.assert_array_equal(score_t2i, score_i2t.T)


def test_itm_reranking_scores_top_k(model):
    dataset = _ImagesAndTexts(model, RETRIEVAL_CAPTIONS)
    sim, _ = _scores(model, dataset, 0)
    with torch.no_grad():
        tokens = model.encode_image_tokens(dataset.images)
        ids = torch.stack(dataset.text)
        itm = torch.stack([model.itm_scores(tokens, ids[t].repeat(4, 1)) for t in range(4)], dim=1).numpy()

    full_i2t, full_t2i = _scores(model, dataset, 4)
    np.testing.assert_allclose(full_i2t, itm + sim, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(full_t2i, (itm + sim).T, rtol=1e-5, atol=1e-5)

    top_i2t, _ = _scores(model, dataset, 2)
    for row in range(4):
        top = np.argsort(-sim[row])[:2]
        rest = np.argsort(-sim[row])[2:]
        np.testing.assert_allclose(top_i2t[row, top], (itm + sim)[row, top], rtol=1e-5, atol=1e-5)
        assert top_i2t[row, rest].max() < top_i2t[row, top].min()
        # Entries outside the top k keep their contrastive order.
        assert list(np.argsort(-top_i2t[row, rest])) == list(np.argsort(-sim[row, rest]))


def _rerank_rank(rank, folder, world_size):
    """Re-rank on one of two ranks, each holding part of the images, and save the scores."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=120))
    try:
        inputs = torch.load(f"{folder}/inputs.pt")
        # Rank 1 also has image 0, as DistributedSampler's padding repeats it.
        local_index = torch.tensor([0, 2, 4] if rank == 0 else [1, 3, 0])
        scores = rerank_with_itm(inputs["sim"], inputs["tokens"][local_index], local_index, inputs["ids"],
                                 _fake_itm, k=2, batch_size=3)
        torch.save(scores, f"{folder}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _fake_itm(tokens, ids):
    return tokens.sum(dim=(1, 2)) + 0.01 * ids.float().sum(dim=1)


def test_itm_reranking_matches_across_ranks(tmp_path):
    import torch.multiprocessing as mp

    g = torch.Generator().manual_seed(6)
    inputs = {"sim": torch.randn(5, 6, generator=g), "tokens": torch.randn(5, 3, 2, generator=g),
              "ids": torch.randint(1, 50, (6, 7), generator=g)}
    torch.save(inputs, tmp_path / "inputs.pt")
    single = rerank_with_itm(inputs["sim"], inputs["tokens"], torch.arange(5), inputs["ids"], _fake_itm, k=2, batch_size=3)

    mp.spawn(_rerank_rank, args=(str(tmp_path), 2), nprocs=2, join=True)
    for rank in range(2):
        score_i2t, score_t2i = torch.load(tmp_path / f"rank{rank}.pt")
        torch.testing.assert_close(score_i2t, single[0], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(score_t2i, single[1], rtol=1e-6, atol=1e-6)


def _demo_task(*options):
    import lavis.tasks as tasks

    cfg = Config(argparse.Namespace(cfg_path=str(DEMO_CONFIG), options=list(options) or None))
    return tasks.setup_task(cfg), cfg


def _flatten(node, prefix=""):
    if isinstance(node, dict):
        flat = {}
        for key, value in node.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: node}


def test_blip2_paper_configs_exist():
    found = sorted(path.stem for path in CONFIG_DIR.glob("*_blip2_*.yaml"))
    assert found == ["dci_blip2_contrastive", "dci_blip2_goal", "docci_blip2_contrastive", "docci_blip2_goal"]


@pytest.mark.parametrize("dataset", ["docci", "dci"])
def test_blip2_configs_differ_only_in_loss(dataset):
    configs = {}
    for variant in ("goal", "contrastive"):
        cfg = Config(argparse.Namespace(cfg_path=str(CONFIG_DIR / f"{dataset}_blip2_{variant}.yaml"), options=None))
        configs[variant] = _flatten(OmegaConf.to_container(cfg.config, resolve=True))

    goal, contrastive = configs["goal"], configs["contrastive"]
    assert set(goal) == set(contrastive)
    differing = {key for key in goal if goal[key] != contrastive[key]}
    assert differing - {"run.output_dir"} == {"model.loss.local_weight", "model.loss.tsl_image_weight", "model.loss.tsl_text_weight"}
    assert goal["run.output_dir"] == f"output/goal/{dataset}_blip2_goal"
    assert contrastive["run.output_dir"] == f"output/goal/{dataset}_blip2_contrastive"
    for variant, weights in (("goal", GOAL_WEIGHTS), ("contrastive", CONTRASTIVE_WEIGHTS)):
        for key, value in weights.items():
            assert configs[variant][f"model.loss.{key}"] == value, f"{variant}: {key}"

    assert goal["model.arch"] == "goal_blip2"
    assert goal["model.model_type"] == "pretrain"
    assert goal["model.freeze_vit"] is False
    assert goal["model.vit_precision"] == "fp32"
    assert goal["model.max_txt_len"] == 512
    assert goal["run.task"] == "goal_retrieval"
    assert goal["run.amp"] is True
    assert goal["datasets.goal_json.build_info.images.storage"].startswith(f"/path/to/{dataset}/")


def test_paper_config_datasets_use_bert_tokenizer():
    from lavis_goal.tasks.goal_retrieval import _span_tokenizer_config

    cfg = Config(argparse.Namespace(cfg_path=str(CONFIG_DIR / "docci_blip2_goal.yaml"), options=None))
    assert _span_tokenizer_config(cfg.model_cfg) == {"kind": "bert", "bert": "bert-base-uncased", "context_length": 512}


def test_blip2_demo_trains_and_evaluates(tmp_path):
    logs = train.main([
        "--cfg-path", str(DEMO_CONFIG),
        "--options", f"run.output_dir={tmp_path / 'out'}", "run.max_epoch=1",
    ])
    (run_dir,) = sorted((tmp_path / "out").iterdir())
    assert (run_dir / "checkpoint_best.pth").is_file()
    assert (run_dir / "summary.md").is_file()
    result = json.loads((run_dir / "result" / "test_best.json").read_text())
    assert result["n_images"] == 6
    for direction in ("t2i", "i2t"):
        for k in (1, 5, 10, 25, 50):
            assert 0.0 <= result[f"{direction}_r{k}"] <= 100.0
    assert logs["test"]["agg_metrics"] == pytest.approx(result["mean_r1"])

    lines = [json.loads(line) for line in (run_dir / "log.txt").read_text().splitlines() if line.startswith('{"train')]
    for term in ("loss_global", "loss_local", "loss_tsl_image", "loss_tsl_text"):
        assert lines[0][f"train_{term}"] > 0, term
    checkpoint = torch.load(run_dir / "checkpoint_best.pth", weights_only=True)
    assert "Qformer.bert.encoder.layer.0.crossattention.self.query.weight" in checkpoint["model"]

    evaluated = evaluate.main([
        "--cfg-path", str(DEMO_CONFIG),
        "--options", f"run.output_dir={tmp_path / 'eval'}", f"model.finetuned={run_dir / 'checkpoint_best.pth'}",
    ])
    assert evaluated["test"]["t2i_r1"] == pytest.approx(result["t2i_r1"])
    assert evaluated["test"]["i2t_r5"] == pytest.approx(result["i2t_r5"])
