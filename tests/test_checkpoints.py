"""Checkpoint formats: detection, loading into goal_clip, export, strict keys and pickle safety.

Reference models are tiny randomly initialised transformers ``CLIPModel``s
and open_clip ``CLIP``s; every checkpoint is written under tmp_path.
"""

import json
import logging

import open_clip
import pytest
import torch
from omegaconf import OmegaConf
from transformers import CLIPConfig, CLIPModel

import lavis_goal  # noqa: F401
from lavis_goal.convert import main as convert_main
from lavis_goal.models import GoalCLIP
from lavis_goal.models.checkpoints import load_checkpoint_file
from lavis_goal.models.convert import (
    GOAL_CLIP,
    HF,
    LONG_CLIP,
    OPEN_CLIP,
    default_quick_gelu,
    detect_format,
    hf_to_open_clip,
    open_clip_to_hf,
)
from lavis_goal.models.long_text import causal_mask
from lavis_goal.paths import plugin_config

ARCH = "hf-test-tiny"  # open_clip architecture with the shapes of tiny_hf_config()
LONG_CAPTION = " ".join(["A small red house stands beside a tall green tree under a pale sky."] * 12)


def tiny_hf_config(positions: int, hidden_act: str = "quick_gelu") -> CLIPConfig:
    return CLIPConfig(
        text_config={
            "vocab_size": 49408, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 2, "max_position_embeddings": positions, "hidden_act": hidden_act,
        },
        vision_config={
            "hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 2,
            "image_size": 224, "patch_size": 32, "hidden_act": hidden_act,
        },
        projection_dim=40,
    )


@pytest.fixture(scope="module", autouse=True)
def register_arch(tmp_path_factory):
    """Register ``hf-test-tiny``: 77 text positions and no ``quick_gelu`` entry, as open_clip's ``ViT-B-16``."""
    cfg = {
        "embed_dim": 40,
        "vision_cfg": {"image_size": 224, "layers": 2, "width": 48, "head_width": 24, "patch_size": 32, "mlp_ratio": 2.0},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2, "mlp_ratio": 2.0},
    }
    path = tmp_path_factory.mktemp("arch") / f"{ARCH}.json"
    path.write_text(json.dumps(cfg))
    open_clip.add_model_config(path)


def _randomize(module: torch.nn.Module, seed: int) -> None:
    # Default LayerNorm gains are 1 and biases 0; random values make a swapped mapping visible.
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.05)


def make_hf_model(positions: int, hidden_act: str = "quick_gelu", seed: int = 0) -> CLIPModel:
    torch.manual_seed(seed)
    model = CLIPModel(tiny_hf_config(positions, hidden_act)).eval()
    _randomize(model, seed)
    return model


def _inputs(positions: int):
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(5))
    texts = open_clip.tokenize(["a photo of a dog", LONG_CAPTION], context_length=positions)
    return images, texts


def _goal_embeds(model: GoalCLIP, images, texts):
    with torch.no_grad():
        return model.encode_image_tokens(images)[0], model.encode_text_tokens(texts)[0]


def _hf_embeds(model: CLIPModel, images, texts):
    with torch.no_grad():
        return model.get_image_features(pixel_values=images), model.get_text_features(input_ids=texts)


def _assert_same_embeds(actual, expected):
    for got, want in zip(actual, expected):
        assert got.shape == want.shape
        assert torch.allclose(got, want, atol=1e-5, rtol=0), (got - want).abs().max()


@pytest.mark.parametrize(
    "keys, expected",
    [
        (["clip.positional_embedding", "clip.visual.proj"], GOAL_CLIP),
        (["text_model.embeddings.token_embedding.weight", "logit_scale"], HF),
        (["positional_embedding", "positional_embedding_res", "visual.proj"], LONG_CLIP),
        (["positional_embedding", "visual.conv1.weight", "input_resolution"], OPEN_CLIP),
    ],
)
def test_detect_format(keys, expected):
    assert detect_format(keys) == expected


def test_unknown_layout_names_keys(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(2), "decoder.bias": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match="unknown layout") as error:
        GoalCLIP(ARCH, pretrained=str(path), context_length=77)
    assert "decoder.bias" in str(error.value)
    assert "encoder.weight" in str(error.value)


@pytest.mark.parametrize("positions", [77, 248])
def test_hf_checkpoint_matches_transformers(tmp_path, positions):
    reference = make_hf_model(positions)
    path = tmp_path / "hf.pth"
    torch.save(reference.state_dict(), path)

    model = GoalCLIP(ARCH, pretrained=str(path), context_length=positions).eval()
    assert model.quick_gelu  # transformers' default activation, as no config.json is next to the file
    assert model.clip.positional_embedding.shape[0] == positions

    images, texts = _inputs(positions)
    if positions == 248:
        assert int(texts[1].argmax()) > 77  # the long caption reaches the stretched positions
    _assert_same_embeds(_goal_embeds(model, images, texts), _hf_embeds(reference, images, texts))


@pytest.mark.parametrize("positions", [77, 248])
def test_hf_round_trip_is_exact(tmp_path, positions):
    reference = make_hf_model(positions, seed=1)
    source = tmp_path / "hf.pth"
    torch.save(reference.state_dict(), source)
    model = GoalCLIP(ARCH, pretrained=str(source), context_length=positions)

    # A checkpoint as runner_goal writes it, with the run config that built the model.
    checkpoint = tmp_path / "checkpoint_best.pth"
    run_config = {"model": {"model_name": ARCH, "pretrained": str(source), "context_length": positions}}
    torch.save({"model": model.state_dict(), "config": run_config, "epoch": 0}, checkpoint)
    out = tmp_path / "exported"
    assert convert_main(["--to", "hf", str(checkpoint), f"{out}/"]) == 0

    exported = torch.load(out / "pytorch_model.bin", weights_only=True)
    original = reference.state_dict()
    assert sorted(exported) == sorted(original)
    for key, value in original.items():
        assert exported[key].dtype == value.dtype, key
        assert torch.equal(exported[key], value), key

    # config.json carries the head counts, the activation and the text length.
    reloaded = CLIPModel.from_pretrained(out).eval()
    assert reloaded.config.text_config.max_position_embeddings == positions
    assert reloaded.config.text_config.hidden_act == "quick_gelu"
    images, texts = _inputs(positions)
    _assert_same_embeds(_hf_embeds(reloaded, images, texts), _hf_embeds(reference, images, texts))


def test_hf_folder_with_gelu_config(tmp_path):
    reference = make_hf_model(77, hidden_act="gelu", seed=2)
    reference.save_pretrained(tmp_path / "hf_gelu")

    model = GoalCLIP(ARCH, pretrained=str(tmp_path / "hf_gelu"), context_length=77).eval()
    assert not model.quick_gelu
    images, texts = _inputs(77)
    _assert_same_embeds(_goal_embeds(model, images, texts), _hf_embeds(reference, images, texts))


def test_hf_finetuned_is_stretched(tmp_path):
    reference = make_hf_model(77, seed=3)
    path = tmp_path / "hf77.pth"
    torch.save(reference.state_dict(), path)

    cfg = OmegaConf.create({"model_name": ARCH, "pretrained": None, "finetuned": str(path), "context_length": 248})
    finetuned = GoalCLIP.from_config(cfg).eval()
    pretrained = GoalCLIP(ARCH, pretrained=str(path), context_length=248).eval()
    assert finetuned.quick_gelu
    assert torch.equal(finetuned.clip.positional_embedding, pretrained.clip.positional_embedding)
    images, texts = _inputs(248)
    _assert_same_embeds(_goal_embeds(finetuned, images, texts), _goal_embeds(pretrained, images, texts))


def test_hf_position_ids_out_of_order(tmp_path):
    state = make_hf_model(77).state_dict()
    state["text_model.embeddings.position_ids"] = torch.arange(77).flip(0)[None]
    with pytest.raises(ValueError, match="position_ids"):
        hf_to_open_clip(state, "flipped.pth")


def test_open_clip_to_hf_rejects_extra_keys():
    state, _ = hf_to_open_clip(make_hf_model(77).state_dict())
    state["visual.attn_pool.query"] = torch.zeros(1)
    with pytest.raises(ValueError, match="visual.attn_pool.query"):
        open_clip_to_hf(state)


def _long_clip_text(reference: open_clip.CLIP, positions: torch.Tensor, residual: torch.Tensor, text):
    """Long-CLIP's text encoder: rows 0-19 from ``positions``, the others from ``residual``."""
    mask1 = torch.zeros(248, 1)
    mask1[:20] = 1
    mask2 = 1 - mask1
    x = reference.token_embedding(text) + positions * mask1 + residual * mask2
    x = reference.transformer(x, attn_mask=causal_mask(248))
    x = reference.ln_final(x)
    return x[torch.arange(x.shape[0]), text.argmax(dim=-1)] @ reference.text_projection


def test_long_clip_checkpoint_matches_its_encoder(tmp_path):
    torch.manual_seed(4)
    reference = open_clip.create_model(ARCH, quick_gelu=True).eval()
    _randomize(reference, 4)
    positions = torch.randn(248, 32) * 0.05
    residual = torch.randn(248, 32) * 0.05

    state = {k: v for k, v in reference.state_dict().items() if k != "positional_embedding"}
    state["positional_embedding"] = positions
    state["positional_embedding_res"] = residual
    state["input_resolution"] = torch.tensor(224)  # OpenAI metadata entries, dropped on load
    state["context_length"] = torch.tensor(248)
    state["vocab_size"] = torch.tensor(49408)
    path = tmp_path / "longclip-tiny.pt"
    torch.save(state, path)

    model = GoalCLIP(ARCH, pretrained=str(path), context_length=248).eval()
    assert model.quick_gelu  # Long-CLIP fine-tunes OpenAI CLIP

    images, texts = _inputs(248)
    with torch.no_grad():
        expected = (reference.encode_image(images), _long_clip_text(reference, positions, residual, texts))
    _assert_same_embeds(_goal_embeds(model, images, texts), expected)


def test_torchscript_archive_needs_allow_pickle(tmp_path):
    torch.manual_seed(9)
    scripted = open_clip.create_model("goal-tiny-vit", jit=True)
    path = tmp_path / "ViT-tiny.pt"
    torch.jit.save(scripted, str(path))

    with pytest.raises(ValueError, match="allow_pickle"):
        GoalCLIP("goal-tiny-vit", pretrained=str(path))
    model = GoalCLIP("goal-tiny-vit", pretrained=str(path), allow_pickle=True)
    assert torch.equal(model.clip.visual.conv1.weight, scripted.state_dict()["visual.conv1.weight"])


def test_open_clip_export_folder(tmp_path):
    source = tmp_path / "hf.pth"
    torch.save(make_hf_model(248, seed=6).state_dict(), source)
    out = tmp_path / "oc"
    assert convert_main(["--to", "open_clip", str(source), f"{out}/", "--model-name", ARCH]) == 0

    config = json.loads((out / "open_clip_config.json").read_text())
    assert config["model_cfg"]["text_cfg"]["context_length"] == 248
    assert config["model_cfg"]["quick_gelu"] is True
    exported = open_clip.CLIP(**config["model_cfg"]).eval()
    exported.load_state_dict(torch.load(out / "open_clip_pytorch_model.bin", weights_only=True))

    model = GoalCLIP(ARCH, pretrained=str(source), context_length=248).eval()
    images, texts = _inputs(248)
    with torch.no_grad():
        expected = (exported.encode_image(images), exported.encode_text(texts))
    _assert_same_embeds(_goal_embeds(model, images, texts), expected)


def test_export_to_file_writes_state_dict_only(tmp_path):
    source = tmp_path / "hf.pth"
    original = make_hf_model(77, seed=7).state_dict()
    torch.save(original, source)
    out = tmp_path / "clip_hf.pth"
    assert convert_main(["--to", "hf", str(source), str(out)]) == 0
    exported = torch.load(out, weights_only=True)
    assert sorted(exported) == sorted(original)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip_hf.pth", "hf.pth"]  # no temporary files left


def test_export_without_activation_asks_for_it(tmp_path, caplog):
    clip = open_clip.create_model(ARCH)
    source = tmp_path / "open_clip.pt"
    torch.save(clip.state_dict(), source)
    with caplog.at_level(logging.ERROR):
        assert convert_main(["--to", "hf", str(source), f"{tmp_path / 'out'}/"]) == 1
    assert "--quick-gelu" in caplog.text
    assert not (tmp_path / "out" / "pytorch_model.bin").exists()


def _tiny_cfg(**overrides):
    cfg = OmegaConf.load(plugin_config("models/goal_clip_tiny.yaml")).model
    return OmegaConf.merge(cfg, overrides)


def test_missing_keys_rejected_unless_allowed(tmp_path):
    torch.manual_seed(8)
    clip = open_clip.create_model("goal-tiny-vit")
    _randomize(clip, 8)
    state = clip.state_dict()
    del state["logit_scale"]
    path = tmp_path / "no_scale.pt"
    torch.save(state, path)

    with pytest.raises(ValueError, match=r"missing keys \['clip.logit_scale'\]"):
        GoalCLIP.from_config(_tiny_cfg(pretrained=str(path)))

    model = GoalCLIP.from_config(_tiny_cfg(pretrained=str(path), allowed_missing_keys=["clip.logit_*"]))
    assert torch.equal(model.clip.visual.conv1.weight, clip.visual.conv1.weight)


def test_unexpected_keys_rejected_unless_allowed(tmp_path):
    state = make_hf_model(77).state_dict()
    state["text_model.embeddings.extra_scale"] = torch.ones(1)
    path = tmp_path / "hf_extra.pth"
    torch.save(state, path)

    with pytest.raises(ValueError, match=r"unexpected keys \['text_model.embeddings.extra_scale'\]"):
        GoalCLIP(ARCH, pretrained=str(path), context_length=77)
    model = GoalCLIP(ARCH, pretrained=str(path), context_length=77, allowed_unexpected_keys=["*.extra_scale"])
    assert model.clip.positional_embedding.shape[0] == 77


def test_shape_mismatch_names_key(tmp_path):
    path = tmp_path / "hf.pth"
    torch.save(make_hf_model(77).state_dict(), path)
    with pytest.raises(ValueError, match="shapes differ") as error:
        GoalCLIP("goal-tiny-vit", pretrained=str(path))
    assert r"clip.token_embedding.weight: checkpoint (49408, 32), model (49408, 64)" in str(error.value)


def test_allowed_keys_must_be_list():
    with pytest.raises(ValueError, match="allowed_missing_keys"):
        GoalCLIP.from_config(_tiny_cfg(allowed_missing_keys="clip.*"))


def test_openai_tag_uses_quick_gelu():
    # open_clip's ViT-B-16 config builds nn.GELU; its openai weights were trained with QuickGELU.
    assert default_quick_gelu("ViT-B-16", "openai", None) is True
    assert default_quick_gelu("ViT-B-16", "laion2b_s34b_b88k", None) is None


class _CreatesFile:
    """Unpickling this object opens ``path`` for writing, which creates the file."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def test_malicious_pickle_rejected(tmp_path, caplog):
    target = tmp_path / "created_by_pickle.txt"
    path = tmp_path / "malicious.pth"
    state = open_clip.create_model("goal-tiny-vit").state_dict()
    torch.save({"state_dict": state, "payload": _CreatesFile(target)}, path)

    with pytest.raises(ValueError, match="allow_pickle"):
        GoalCLIP("goal-tiny-vit", pretrained=str(path))
    assert not target.exists()
    with pytest.raises(ValueError, match="allow_pickle"):
        GoalCLIP.from_config(_tiny_cfg(finetuned=str(path)))
    assert not target.exists()
    assert convert_main(["--to", "hf", str(path), str(tmp_path / "out.pth")]) == 1
    assert not target.exists()

    # The payload is live: full unpickling, which allow_pickle enables, does create the file.
    with caplog.at_level(logging.WARNING):
        load_checkpoint_file(str(path), allow_pickle=True)
    assert target.exists()
    assert "full pickle support" in caplog.text
