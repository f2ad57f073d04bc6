import os

import open_clip
import pytest
import torch
from lavis.common.registry import registry
from lavis.models import load_model, load_model_and_preprocess
from omegaconf import OmegaConf
from PIL import Image

import lavis_goal
from lavis_goal.models import GoalCLIP
from lavis_goal.paths import plugin_config


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return load_model("goal_clip", "tiny")


def _batch(model, batch=2, slots=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    caption = "A red ball lies on green grass. A brown dog runs to the left. The sky above is pale blue."
    encoded = model.tokenizer.encode_caption(caption)
    start = caption.index("A brown dog")
    span = model.tokenizer.sentence_span(encoded, caption, start, start + len("A brown dog runs to the left."))
    sentence = model.tokenizer.encode_caption("A brown dog runs to the left.").tokens
    return {
        "image": torch.randn(batch, 3, 224, 224, generator=g),
        "text_input": encoded.tokens[None].repeat(batch, 1),
        "local_image": torch.randn(batch, slots, 3, 224, 224, generator=g),
        "local_text": sentence[None, None].repeat(batch, slots, 1),
        "local_valid": torch.ones(batch, slots, dtype=torch.bool),
        "region_box": torch.tensor([20.0, 40.0, 120.0, 200.0]).repeat(batch, slots, 1),
        "region_valid": torch.ones(batch, slots, dtype=torch.bool),
        "span": torch.tensor(span[:2]).repeat(batch, slots, 1),
        "span_valid": torch.ones(batch, slots, dtype=torch.bool),
    }


def test_registry_lists_plugin_classes():
    assert registry.get_model_class("goal_clip") is GoalCLIP
    assert registry.get_task_class("goal_retrieval") is not None
    assert registry.get_builder_class("goal_json") is not None
    assert registry.get_builder_class("goal_demo") is not None
    for name in ("goal_image_train", "goal_image_eval", "goal_caption"):
        assert registry.get_processor_class(name) is not None, name
    assert registry.get_runner_class("runner_goal") is not None
    assert registry.get_lr_scheduler_class("goal_cosine_iter") is not None
    zoo = dict(iter(lavis_goal.model_zoo))
    assert {"tiny", "vitb16", "vitl14"} <= set(zoo["goal_clip"])
    assert "goal_clip" in str(lavis_goal.model_zoo)


def test_default_configs_are_absolute_paths():
    for path in GoalCLIP.PRETRAINED_MODEL_CONFIG_DICT.values():
        assert os.path.isabs(path)
        assert os.path.isfile(path)


def test_tiny_model_has_248_positions(model):
    assert model.clip.positional_embedding.shape[0] == 248
    assert model.clip.attn_mask.shape == (248, 248)
    assert model.context_length == 248
    assert model.tokenizer.context_length == 248


def test_encoders_match_open_clip(model):
    batch = _batch(model)
    with torch.no_grad():
        image_embeds, patch_tokens = model.encode_image_tokens(batch["image"])
        text_embeds, text_tokens = model.encode_text_tokens(batch["text_input"])
        assert torch.allclose(image_embeds, model.clip.encode_image(batch["image"]), atol=1e-6)
        assert torch.allclose(text_embeds, model.clip.encode_text(batch["text_input"]), atol=1e-6)
    assert patch_tokens.shape == (2, 49, 64)
    end = int(batch["text_input"][0].argmax())
    assert text_tokens.shape == (2, end + 1, 64)


def test_text_tokens_stop_at_end(model):
    # Two captions of different lengths and one that fills all 248 positions:
    # the trimmed forward pass gives the same tokens as all positions do.
    short = model.tokenizer.encode_caption("A cat.").tokens
    longer = model.tokenizer.encode_caption("A red ball lies on green grass. " * 4).tokens
    full = model.tokenizer.encode_caption("A red ball lies on green grass. " * 60).tokens
    clip = model.clip
    for texts in (torch.stack([short, longer]), torch.stack([short, full])):
        with torch.no_grad():
            embeds, tokens = model.encode_text_tokens(texts)
            x = clip.token_embedding(texts) + clip.positional_embedding
            untrimmed = clip.transformer(x, attn_mask=clip.attn_mask)
            assert torch.allclose(embeds, clip.encode_text(texts), atol=1e-5)
        length = int(texts.argmax(dim=-1).max()) + 1
        assert tokens.shape[1] == length
        assert torch.allclose(tokens, untrimmed[:, :length], atol=1e-5)
    assert length == 248


def test_gradients_reach_both_encoders_and_positions(model):
    model.zero_grad()
    output = model(_batch(model))
    for key in ("loss_global", "loss_local", "loss_tsl_image", "loss_tsl_text"):
        assert output[key].item() > 0, key
    output["loss"].backward()
    grads = dict(model.named_parameters())
    for name in ("clip.visual.conv1.weight", "clip.visual.transformer.resblocks.0.attn.in_proj_weight",
                 "clip.transformer.resblocks.0.attn.in_proj_weight", "clip.token_embedding.weight",
                 "clip.positional_embedding", "clip.visual.proj", "clip.text_projection", "clip.logit_scale"):
        assert grads[name].grad is not None, name
        assert grads[name].grad.abs().sum() > 0, name
    # The causal text encoder pools at the end token, so every position up to it gets gradient.
    end = int(_batch(model)["text_input"][0].argmax())
    assert bool((grads["clip.positional_embedding"].grad[:end].abs().sum(-1) > 0).all())


def test_tsl_gradient_depends_on_box(model):
    batch = _batch(model)
    model.zero_grad()
    model.loss_fn.cfg = model.loss_cfg = type(model.loss_cfg)(0.0, 0.0, 1.0, 0.0)
    try:
        first = model(batch)["loss_tsl_image"].item()
        batch["region_box"] = torch.tensor([150.0, 150.0, 224.0, 224.0]).repeat(2, 2, 1)
        second = model(batch)["loss_tsl_image"].item()
    finally:
        model.loss_fn.cfg = model.loss_cfg = type(model.loss_cfg)()
    assert first != pytest.approx(second)


def test_global_only_skips_local_inputs():
    m = GoalCLIP("goal-tiny-vit", loss={"local_weight": 0.0, "tsl_image_weight": 0.0, "tsl_text_weight": 0.0})
    batch = {k: v for k, v in _batch(m).items() if k in ("image", "text_input")}
    out = m(batch)
    assert out["loss_local"].item() == 0.0
    assert out["loss_global"].item() > 0


def test_local_terms_without_pairs_raise(model):
    batch = {k: v for k, v in _batch(model).items() if k in ("image", "text_input")}
    with pytest.raises(ValueError, match="no local pairs"):
        model(batch)


def test_freeze_kept_positions_keeps_first_rows():
    torch.manual_seed(0)
    m = GoalCLIP("goal-tiny-vit", freeze_kept_positions=True)
    before = m.clip.positional_embedding.detach().clone()
    optimizer = torch.optim.AdamW(m.optimizer_param_groups(0.05), lr=1e-2)
    m(_batch(m))["loss"].backward()
    optimizer.step()
    after = m.clip.positional_embedding.detach()
    assert torch.equal(after[:20], before[:20])
    assert not torch.equal(after[20:40], before[20:40])


def test_extract_features_and_preprocess():
    m, vis, txt = load_model_and_preprocess("goal_clip", "tiny", is_eval=True)
    image = vis["eval"](Image.new("L", (300, 200), 128))
    caption = txt["eval"]("  A gray   square.  " + "More words follow here. " * 20)
    assert len(caption.split()) > 50  # no 50-word cut
    features = m.extract_features({"image": image[None], "text_input": [caption]})
    assert features["image_embeds"].shape == (1, 64)
    assert features["text_embeds"].shape == (1, 64)
    assert torch.allclose(features["text_embeds"].norm(dim=-1), torch.ones(1))


def test_finetuned_checkpoint_round_trip(tmp_path, model):
    path = tmp_path / "checkpoint.pth"
    torch.save({"model": model.state_dict(), "epoch": 0}, path)
    cfg = OmegaConf.load(plugin_config("models/goal_clip_tiny.yaml")).model
    cfg.finetuned = str(path)
    loaded = GoalCLIP.from_config(cfg)
    batch = _batch(model)
    with torch.no_grad():
        assert torch.allclose(loaded.encode_text_tokens(batch["text_input"])[0], model.encode_text_tokens(batch["text_input"])[0])


def test_pretrained_open_clip_checkpoint_is_stretched(tmp_path):
    torch.manual_seed(1)
    clip = open_clip.create_model("goal-tiny-vit")
    path = tmp_path / "open_clip.pt"
    torch.save({"state_dict": clip.state_dict()}, path)
    m = GoalCLIP("goal-tiny-vit", pretrained=str(path))
    assert torch.equal(m.clip.positional_embedding[:20], clip.positional_embedding[:20])
    assert torch.equal(m.clip.visual.conv1.weight, clip.visual.conv1.weight)


def test_checkpoint_mismatch_names_keys(tmp_path, model):
    state = model.state_dict()
    state["clip.extra"] = torch.zeros(1)
    del state["clip.ln_final.weight"]
    path = tmp_path / "bad.pth"
    torch.save({"model": state}, path)
    with pytest.raises(ValueError, match="clip.ln_final.weight"):
        model.load_checkpoint(str(path))


def test_pickled_objects_rejected_by_default(tmp_path, model):
    path = tmp_path / "pickled.pth"
    torch.save({"model": model.state_dict(), "extra": object.__new__(_Opaque)}, path)
    with pytest.raises(ValueError, match="allow_pickle"):
        model.load_checkpoint(str(path))


class _Opaque:
    pass


def test_unknown_architecture():
    with pytest.raises(ValueError, match="open_clip.list_models"):
        GoalCLIP("no-such-arch")
