"""``goal_blip2``: LAVIS's first-stage BLIP-2 (ViT + Q-Former) fine-tuned with the GOAL objective.

The model subclasses ``lavis.models.blip2_models.blip2_qformer.Blip2Qformer``,
so its weights, state-dict names and checkpoints are LAVIS's own. Three
things change. The parts can also be built offline in small shapes for tests
and the demo. The training step computes the GOAL loss instead of ITC + ITM +
LM. Retrieval reads captions up to the Q-Former's 512 positions instead of 35 tokens.

The GOAL terms on BLIP-2:

- image features are the 32 query outputs of the Q-Former, projected; a
  caption is scored against an image by the maximum over queries;
- image TSL: the Q-Former runs on the whole image's encoder tokens with its
  cross-attention restricted to the patches inside the transformed box, and
  its projected queries are pulled query by query towards the crop's own;
- text TSL: the Q-Former's caption tokens over the sentence span are
  averaged and projected, and pulled towards the sentence's own embedding.
"""

import logging
from typing import Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from lavis.common.dist_utils import download_cached_file
from lavis.common.registry import registry
from lavis.common.utils import is_url
from lavis.models.blip2_models.blip2_qformer import Blip2Qformer
from lavis.models.blip_models.blip_outputs import BlipOutputFeatures
from tqdm import tqdm

from lavis_goal.common import dist as goal_dist
from lavis_goal.common.config_check import check_keys
from lavis_goal.geometry import boxes_to_patch_mask
from lavis_goal.losses import GoalLoss, GoalLossConfig
from lavis_goal.models.blip2.backbones import (
    HUB_BERT,
    build_bert_tokenizer,
    build_qformer,
    build_vision_encoder,
    vision_grid,
)
from lavis_goal.models.blip2.retrieval import rerank_with_itm, similarity_matrix
from lavis_goal.models.checkpoints import extract_state_dict, load_checkpoint_file
from lavis_goal.models.features import encode_rank_share, eval_autocast, gather_rows, masked_mean
from lavis_goal.paths import plugin_config
from lavis_goal.text_spans import SpanTokenizer, spans_to_token_mask

logger = logging.getLogger(__name__)

MODEL_CONFIG_KEYS = {
    "arch", "model_type", "vit_model", "image_size", "drop_path_rate", "use_grad_checkpoint", "vit_precision",
    "freeze_vit", "num_query_token", "cross_attention_freq", "embed_dim", "max_txt_len", "qformer_bert",
    "pretrained", "finetuned", "load_pretrained", "load_finetuned", "loss", "itm_rerank_k", "allow_pickle",
    "preprocess",
}
# The largest logit scale, as CLIP's clamp at 100: the temperature stays at or above 0.01.
MIN_TEMPERATURE = 0.01


@registry.register_model("goal_blip2")
class GoalBlip2(Blip2Qformer):
    """BLIP-2's Q-Former model with long captions and the GOAL loss.

    Args:
        vit_model: ``eva_clip_g`` or ``clip_L`` (LAVIS downloads the weights),
            ``goal-tiny-vit`` or a JSON file describing a random EVA ViT.
        img_size: input resolution of the vision encoder.
        drop_path_rate, use_grad_checkpoint: passed to the vision encoder.
        vit_precision: ``fp16`` stores the vision encoder's linear and conv
            weights in half precision (for a frozen ViT on GPU, as LAVIS does); ``fp32``.
        freeze_vit: keep the vision encoder fixed, in eval mode, as LAVIS does.
        num_query_token: Q-Former queries (32 in BLIP-2).
        cross_attention_freq: a cross-attention layer every this many Q-Former layers.
        embed_dim: width of the contrastive embeddings.
        max_txt_len: text positions, at most the Q-Former's 512.
        qformer_bert: ``bert-base-uncased`` (downloaded, as in LAVIS),
            ``goal-tiny-bert`` or a folder with ``config.json`` and ``vocab.txt``.
        loss: weights of the GOAL terms, see ``GoalLossConfig``.
        itm_rerank_k: re-rank each retrieval query's top k with the ITM head,
            as LAVIS's BLIP-2 retrieval does with ``k_test``; 0 ranks by
            contrastive similarity alone.
        allow_pickle: load checkpoints with full pickle support (trusted files only).

    The GOAL loss gives no gradient to the ITM head and the Q-Former's
    language-model head, so both are frozen: DistributedDataParallel fails on
    trainable parameters that get no gradient. Re-ranking uses the ITM head as loaded.
    """

    PRETRAINED_MODEL_CONFIG_DICT = {
        "pretrain": plugin_config("models/goal_blip2_pretrain.yaml"),
        "pretrain_vitL": plugin_config("models/goal_blip2_pretrain_vitL.yaml"),
        "tiny": plugin_config("models/goal_blip2_tiny.yaml"),
    }

    def __init__(
        self,
        vit_model: str = "eva_clip_g",
        img_size: int = 224,
        drop_path_rate: float = 0,
        use_grad_checkpoint: bool = False,
        vit_precision: str = "fp16",
        freeze_vit: bool = True,
        num_query_token: int = 32,
        cross_attention_freq: int = 2,
        embed_dim: int = 256,
        max_txt_len: int = 512,
        qformer_bert: str = HUB_BERT,
        loss: Optional[dict] = None,
        itm_rerank_k: int = 0,
        allow_pickle: bool = False,
    ):
        if vit_precision == "fp16" and not freeze_vit:
            raise ValueError(
                "model.vit_precision fp16 stores the vision encoder's weights in half precision, which suits "
                "a frozen encoder only; set vit_precision: fp32 with freeze_vit: false"
            )
        if int(itm_rerank_k) < 0:
            raise ValueError(f"model.itm_rerank_k must be >= 0, got {itm_rerank_k}")
        # Blip2Qformer.__init__ calls init_tokenizer and init_Qformer below, which
        # read this attribute. nn.Module accepts plain attributes before its __init__.
        self.qformer_bert = qformer_bert
        super().__init__(
            vit_model=vit_model,
            img_size=img_size,
            drop_path_rate=drop_path_rate,
            use_grad_checkpoint=use_grad_checkpoint,
            vit_precision=vit_precision,
            freeze_vit=freeze_vit,
            num_query_token=num_query_token,
            cross_attention_freq=cross_attention_freq,
            embed_dim=embed_dim,
            max_txt_len=max_txt_len,
        )
        positions = self.Qformer.config.max_position_embeddings
        if not 2 <= int(max_txt_len) <= positions:
            raise ValueError(f"model.max_txt_len must be between 2 and the Q-Former's {positions} positions, got {max_txt_len}")

        self.vit_model = vit_model
        self.vit_precision = vit_precision
        self.freeze_vit = freeze_vit
        self.allow_pickle = allow_pickle
        self.itm_rerank_k = int(itm_rerank_k)
        self.loss_cfg = GoalLossConfig.from_dict(loss)
        self.loss_fn = GoalLoss(self.loss_cfg)
        self.span_tokenizer = SpanTokenizer.from_bert(self.tokenizer, int(max_txt_len))
        self.image_size, self.patch_size = vision_grid(self.visual_encoder)
        self._freeze_unused_heads()

    # Blip2Base declares the three init_* hooks as classmethods. These overrides are
    # instance methods because they read self.qformer_bert.
    def init_tokenizer(self):
        return build_bert_tokenizer(self.qformer_bert)

    def init_Qformer(self, num_query_token, vision_width, cross_attention_freq=2):
        return build_qformer(self.qformer_bert, num_query_token, vision_width, cross_attention_freq)

    def init_vision_encoder(self, model_name, img_size, drop_path_rate, use_grad_checkpoint, precision):
        return build_vision_encoder(model_name, img_size, drop_path_rate, use_grad_checkpoint, precision)

    def _freeze_unused_heads(self) -> None:
        # The language-model head's decoder weight is tied to the word
        # embeddings, which train; only the head's own parameters freeze.
        shared = {id(p) for p in self.Qformer.bert.parameters()}
        for param in self.Qformer.cls.parameters():
            if id(param) not in shared:
                param.requires_grad = False
        for param in self.itm_head.parameters():
            param.requires_grad = False

    @classmethod
    def default_config_path(cls, model_type):
        if model_type not in cls.PRETRAINED_MODEL_CONFIG_DICT:
            raise ValueError(
                f"Unknown goal_blip2 model type {model_type!r}; valid types: "
                f"{', '.join(sorted(cls.PRETRAINED_MODEL_CONFIG_DICT))}"
            )
        return cls.PRETRAINED_MODEL_CONFIG_DICT[model_type]

    @classmethod
    def span_tokenizer_config(cls, model_cfg) -> dict:
        """Return the datasets' ``tokenizer`` section: the Q-Former's WordPiece vocabulary at ``max_txt_len``."""
        return {
            "kind": "bert",
            "bert": str(model_cfg.get("qformer_bert", HUB_BERT)),
            "context_length": int(model_cfg.get("max_txt_len", 512)),
        }

    def optimizer_param_groups(self, weight_decay: float):
        """Split trainable parameters into decayed weights and undecayed biases, norms and the temperature."""
        decay, no_decay = [], []
        for param in self.parameters():
            if not param.requires_grad:
                continue
            (no_decay if param.ndim < 2 else decay).append(param)
        return [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]

    def logit_scale(self) -> torch.Tensor:
        return 1.0 / self.temp.clamp(min=MIN_TEMPERATURE)

    def encode_image_tokens(self, image: torch.Tensor) -> torch.Tensor:
        """Return the ``(B, 1 + N, W)`` fp32 vision-encoder tokens after ``ln_vision``, class token first."""
        # NOTE: the test suite runs on CPU, so the CUDA half of this branch
        # (LAVIS's way of running its frozen ViT) is not exercised by it.
        if self.vit_precision == "fp16":
            if image.device.type != "cuda":
                raise ValueError("model.vit_precision fp16 needs a CUDA device; set vit_precision: fp32 to run on CPU")
            # LAVIS converts only linear and conv weights to fp16, so the ViT runs under fp16 autocast.
            with torch.autocast("cuda", dtype=torch.float16):
                tokens = self.visual_encoder(image)
        else:
            tokens = self.visual_encoder(image)
        return self.ln_vision(tokens).float()

    def query_outputs(self, encoder_tokens: torch.Tensor, encoder_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Run the Q-Former's queries over ``(B, T, W)`` encoder tokens; ``(B, Q, H)`` outputs.

        ``encoder_mask`` is ``(B, T)``, 1 for the tokens the queries may attend to; None attends to all.
        """
        batch = encoder_tokens.shape[0]
        if encoder_mask is None:
            encoder_mask = torch.ones(encoder_tokens.shape[:-1], dtype=torch.long, device=encoder_tokens.device)
        output = self.Qformer.bert(
            query_embeds=self.query_tokens.expand(batch, -1, -1),
            encoder_hidden_states=encoder_tokens,
            encoder_attention_mask=encoder_mask,
            return_dict=True,
        )
        return output.last_hidden_state

    def region_query_outputs(self, encoder_tokens: torch.Tensor, patch_mask: torch.Tensor) -> torch.Tensor:
        """Run the queries of each image once per box, attending only to the box's patches.

        Args:
            encoder_tokens: ``(B, 1 + N, W)`` tokens from ``encode_image_tokens``.
            patch_mask: ``(B, K, N)`` patches inside each box (``boxes_to_patch_mask``).

        Returns ``(B, K, Q, H)``. The class token is masked too, because the
        encoder pools it from the whole image. A box with no patch attends to
        every token so the softmax stays defined; its TSL term is masked.
        """
        batch, slots, patches = patch_mask.shape
        if encoder_tokens.shape[1] != patches + 1:
            raise ValueError(
                f"The vision encoder outputs {encoder_tokens.shape[1]} tokens but the patch grid has {patches} "
                "patches plus a class token; the image processor's image_size must equal model.image_size"
            )
        class_token = torch.zeros(batch, slots, 1, dtype=torch.bool, device=patch_mask.device)
        mask = torch.cat([class_token, patch_mask], dim=-1)
        mask = mask | ~patch_mask.any(-1, keepdim=True)
        tokens = encoder_tokens[:, None].expand(-1, slots, -1, -1).flatten(0, 1)
        outputs = self.query_outputs(tokens, mask.flatten(0, 1).long())
        return outputs.view(batch, slots, *outputs.shape[1:])

    def encode_text_tokens(self, text_ids: torch.Tensor) -> torch.Tensor:
        """Run the Q-Former's text transformer on ``(B, L)`` ids; ``(B, L', H)`` outputs, ``[CLS]`` first.

        Trailing columns that are padding in every row are dropped first
        (``L' <= L``), which changes no output of the kept tokens.
        """
        text_ids = self._trim_padding(text_ids)
        output = self.Qformer.bert(text_ids, attention_mask=self._text_mask(text_ids), return_dict=True)
        return output.last_hidden_state

    def _text_mask(self, text_ids: torch.Tensor) -> torch.Tensor:
        return (text_ids != self.tokenizer.pad_token_id).long()

    def _trim_padding(self, text_ids: torch.Tensor) -> torch.Tensor:
        used = (text_ids != self.tokenizer.pad_token_id).any(dim=0).nonzero()
        length = int(used.max()) + 1 if used.numel() else 1
        return text_ids[:, :length]

    def _text_embeds(self, text_tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_proj(text_tokens[:, 0]), dim=-1)

    def _image_embeds(self, query_outputs: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.vision_proj(query_outputs), dim=-1)

    def forward(self, samples: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Compute the GOAL loss for a batch from ``GoalTrainDataset``.

        ``samples`` contains the keys ``goal_clip`` takes: ``image (B, 3, H, W)``,
        ``text_input (B, L)`` token ids and, for the local terms,
        ``local_image (B, K, 3, H, W)``, ``local_text (B, K, L)``,
        ``local_valid``, ``region_box (B, K, 4)`` in input pixels,
        ``region_valid``, ``span (B, K, 2)`` and ``span_valid``. Attention
        masks come from the ids (padding is ``[PAD]``).
        """
        image, text = samples["image"], samples["text_input"]
        batch = image.shape[0]
        use_local = self.loss_cfg.uses_local_inputs
        if use_local and "local_image" not in samples:
            raise ValueError(
                "The loss config has local or TSL terms but the batch has no local pairs; use a training "
                "list with 'segment' entries or set model.loss.local_weight and the tsl weights to 0"
            )

        images = torch.cat([image, samples["local_image"].flatten(0, 1)]) if use_local else image
        encoder_tokens = self.encode_image_tokens(images)
        image_embeds = self._image_embeds(self.query_outputs(encoder_tokens))
        caption_tokens = self.encode_text_tokens(text)

        inputs = {"image_global": image_embeds[:batch], "text_global": self._text_embeds(caption_tokens)}
        if use_local:
            inputs.update(self._local_inputs(samples, image_embeds[batch:], encoder_tokens[:batch], caption_tokens))

        output = self.loss_fn(self.logit_scale(), **inputs)
        output["logit_scale"] = self.logit_scale().detach()
        return output

    def _local_inputs(self, samples, crop_embeds, encoder_tokens, caption_tokens):
        sentence_tokens = self.encode_text_tokens(samples["local_text"].flatten(0, 1))
        inputs = {
            "image_local": crop_embeds,
            "text_local": self._text_embeds(sentence_tokens),
            "local_valid": samples["local_valid"].flatten(),
        }
        if self.loss_cfg.tsl_image_weight > 0:
            patch_mask = boxes_to_patch_mask(samples["region_box"], self.image_size, self.patch_size)
            region_outputs = self.region_query_outputs(encoder_tokens, patch_mask)
            inputs["region_pooled"] = self.vision_proj(region_outputs).flatten(0, 1)
            inputs["region_valid"] = (samples["region_valid"] & patch_mask.any(-1)).flatten()
        if self.loss_cfg.tsl_text_weight > 0:
            token_mask = spans_to_token_mask(samples["span"], samples["span_valid"], caption_tokens.shape[1])
            inputs["span_pooled"] = self.text_proj(masked_mean(caption_tokens, token_mask)).flatten(0, 1)
            inputs["span_valid"] = samples["span_valid"].flatten() & token_mask.flatten(0, 1).any(-1)
        return inputs

    def tokenize(self, text) -> torch.Tensor:
        """Return ``(B, max_txt_len)`` ids for a string, a list of strings, or ids already made."""
        if isinstance(text, torch.Tensor):
            return text.to(self.device)
        if isinstance(text, str):
            text = [text]
        return torch.stack([self.span_tokenizer.encode_caption(t).tokens for t in text]).to(self.device)

    def itm_scores(self, encoder_tokens: torch.Tensor, text_ids: torch.Tensor) -> torch.Tensor:
        """Return ITM match logits, ``(P,)``, of ``(P, T, W)`` encoder tokens and ``(P, L)`` ids, pair by pair."""
        text_ids = self._trim_padding(text_ids)
        return self.compute_itm(encoder_tokens, text_ids, self._text_mask(text_ids))

    @torch.no_grad()
    def extract_features(self, samples: Dict, mode: str = "multimodal") -> BlipOutputFeatures:
        """Extract features as LAVIS's ``blip2_feature_extractor`` does, with captions up to ``max_txt_len``.

        ``mode`` ``"image"`` fills ``image_embeds (B, Q, H)`` and the
        normalized ``image_embeds_proj (B, Q, D)``; ``"text"`` fills
        ``text_embeds (B, L, H)`` and ``text_embeds_proj (B, L, D)`` (the
        caption embedding is row 0); ``"multimodal"`` fills
        ``multimodal_embeds (B, Q, H)``. ``samples["text_input"]`` is a list of
        strings or a ``(B, L)`` tensor of ids.
        """
        if mode not in ("image", "text", "multimodal"):
            raise ValueError(f"mode must be 'image', 'text' or 'multimodal', got {mode!r}")
        features = {}
        if mode == "image":
            outputs = self.query_outputs(self.encode_image_tokens(samples["image"].to(self.device)))
            features["image_embeds"] = outputs
            features["image_embeds_proj"] = self._image_embeds(outputs)
        elif mode == "text":
            tokens = self.encode_text_tokens(self.tokenize(samples["text_input"]))
            features["text_embeds"] = tokens
            features["text_embeds_proj"] = F.normalize(self.text_proj(tokens), dim=-1)
        else:
            encoder_tokens = self.encode_image_tokens(samples["image"].to(self.device))
            text_ids = self._trim_padding(self.tokenize(samples["text_input"]))
            query_mask = torch.ones(text_ids.shape[0], self.query_tokens.shape[1], dtype=torch.long, device=self.device)
            output = self.Qformer.bert(
                text_ids,
                query_embeds=self.query_tokens.expand(text_ids.shape[0], -1, -1),
                attention_mask=torch.cat([query_mask, self._text_mask(text_ids)], dim=1),
                encoder_hidden_states=encoder_tokens,
                return_dict=True,
            )
            features["multimodal_embeds"] = output.last_hidden_state[:, : self.query_tokens.shape[1]]
        return BlipOutputFeatures(**features)

    @torch.no_grad()
    def compute_sim_matrix(self, data_loader, task_cfg=None) -> Tuple[np.ndarray, np.ndarray]:
        """Score every image of ``data_loader.dataset`` against every caption, in fp32.

        Contrastive similarities (the max over queries), re-ranked with ITM
        when ``itm_rerank_k`` is above 0. Images come from the loader, which
        may be sharded across ranks; captions come from ``dataset.text`` and
        are split across ranks. Returns ``(score_i2t, score_t2i)`` as numpy
        arrays of shape ``(n_images, n_texts)`` and ``(n_texts, n_images)``, on every rank.
        """
        dataset = data_loader.dataset
        batch_size = int(task_cfg.get("batch_size_eval", 64)) if task_cfg is not None else 64
        autocast = eval_autocast(task_cfg, self.device)
        rerank = self.itm_rerank_k > 0

        image_rows, image_index, encoder_rows = [], [], []
        for batch in tqdm(data_loader, desc="Encoding images", disable=not goal_dist.is_main_process(), leave=False):
            with autocast:
                encoder_tokens = self.encode_image_tokens(batch["image"].to(self.device))
                embeds = self._image_embeds(self.query_outputs(encoder_tokens)).float()
            image_rows.append(embeds.flatten(1))
            image_index.append(batch["index"].to(self.device))
            if rerank:
                # On the CPU, as LAVIS keeps them: EVA ViT-g's 257 x 1408 fp32 tokens take 1.4 MB per image.
                encoder_rows.append(encoder_tokens.cpu())
        queries = self.query_tokens.shape[1]
        local_index = torch.cat(image_index)
        image_embeds = gather_rows(torch.cat(image_rows), local_index, len(dataset.image))
        image_embeds = image_embeds.view(len(dataset.image), queries, -1)

        text_ids = self.tokenize(_stack_texts(dataset.text)).cpu()

        def encode_texts(ids: torch.Tensor) -> torch.Tensor:
            with autocast:
                return self._text_embeds(self.encode_text_tokens(text_ids[ids].to(self.device))).float()

        text_embeds = encode_rank_share(text_ids.shape[0], batch_size, encode_texts, like=image_embeds)

        sim = similarity_matrix(image_embeds, text_embeds)
        if not rerank:
            score_i2t = sim.cpu().numpy()
            return score_i2t, np.ascontiguousarray(score_i2t.T)

        def score_pairs(tokens, ids):
            with autocast:
                return self.itm_scores(tokens, ids)

        score_i2t, score_t2i = rerank_with_itm(
            sim, torch.cat(encoder_rows), local_index, text_ids, score_pairs, self.itm_rerank_k, batch_size
        )
        return score_i2t.cpu().numpy(), score_t2i.cpu().numpy()

    def load_from_pretrained(self, url_or_filename: str):
        """Load a BLIP-2 first-stage checkpoint (LAVIS's ``blip2_pretrained.pth``), a URL or a local file.

        Such checkpoints leave out the frozen vision encoder, whose weights
        come from ``vit_model``, so ``visual_encoder.*`` keys may be missing,
        and so may BERT's ``position_ids`` buffer (``0 .. 511``, rebuilt on construction).
        """
        path = url_or_filename
        if is_url(url_or_filename):
            path = download_cached_file(url_or_filename, check_hash=False, progress=True)
        state_dict = extract_state_dict(load_checkpoint_file(path, self.allow_pickle), path)
        result = self._load_state(state_dict, url_or_filename)
        missing = [
            k for k in result.missing_keys if not k.startswith("visual_encoder.") and not k.endswith(".position_ids")
        ]
        if missing or result.unexpected_keys:
            raise ValueError(
                f"Checkpoint {url_or_filename} does not match goal_blip2({self.vit_model}, {self.qformer_bert}): "
                f"missing keys {missing[:10]}, unexpected keys {result.unexpected_keys[:10]}"
            )
        logger.info("Loaded BLIP-2 weights from %s (%d vision-encoder keys kept from %s)",
                    url_or_filename, len(result.missing_keys), self.vit_model)
        return result

    def load_checkpoint(self, url_or_filename: str):
        """Load a checkpoint written by this project (LAVIS's ``{"model": ...}`` or a bare state dict), strictly."""
        state_dict = extract_state_dict(load_checkpoint_file(url_or_filename, self.allow_pickle), url_or_filename)
        result = self._load_state(state_dict, url_or_filename)
        if result.missing_keys or result.unexpected_keys:
            raise ValueError(
                f"Checkpoint {url_or_filename} does not match goal_blip2({self.vit_model}, {self.qformer_bert}): "
                f"missing keys {result.missing_keys[:10]}, unexpected keys {result.unexpected_keys[:10]}"
            )
        logger.info("Loaded fine-tuned weights from %s", url_or_filename)
        return result

    def _load_state(self, state_dict: Dict[str, torch.Tensor], path: str):
        expected = self.state_dict()
        mismatched = [
            f"{k}: checkpoint {tuple(v.shape)}, model {tuple(expected[k].shape)}"
            for k, v in state_dict.items()
            if k in expected and v.shape != expected[k].shape
        ]
        if mismatched:
            raise ValueError(
                f"Checkpoint {path} does not fit goal_blip2({self.vit_model}, {self.qformer_bert}): shapes differ "
                f"for {mismatched[:10]}. Set model.model_type (or vit_model, qformer_bert, num_query_token) to the "
                "checkpoint's"
            )
        return self.load_state_dict(state_dict, strict=False)

    @classmethod
    def from_config(cls, cfg):
        check_keys(cfg, MODEL_CONFIG_KEYS, "model")
        loss = cfg.get("loss", None)
        if loss is not None and not isinstance(loss, dict):
            from omegaconf import OmegaConf

            loss = OmegaConf.to_container(loss, resolve=True)
        model = cls(
            vit_model=str(cfg.get("vit_model", "eva_clip_g")),
            img_size=int(cfg.get("image_size", 224)),
            drop_path_rate=float(cfg.get("drop_path_rate", 0)),
            use_grad_checkpoint=bool(cfg.get("use_grad_checkpoint", False)),
            vit_precision=str(cfg.get("vit_precision", "fp16")),
            freeze_vit=bool(cfg.get("freeze_vit", True)),
            num_query_token=int(cfg.get("num_query_token", 32)),
            cross_attention_freq=int(cfg.get("cross_attention_freq", 2)),
            embed_dim=int(cfg.get("embed_dim", 256)),
            max_txt_len=int(cfg.get("max_txt_len", 512)),
            qformer_bert=str(cfg.get("qformer_bert", HUB_BERT)),
            loss=loss,
            itm_rerank_k=int(cfg.get("itm_rerank_k", 0)),
            allow_pickle=bool(cfg.get("allow_pickle", False)),
        )
        pretrained = cfg.get("pretrained", None)
        if pretrained and cfg.get("load_pretrained", True):
            model.load_from_pretrained(str(pretrained))
        finetuned = cfg.get("finetuned", None)
        if finetuned and cfg.get("load_finetuned", True):
            model.load_checkpoint(str(finetuned))
        return model


def _stack_texts(texts):
    """Return captions as a ``(n, L)`` id tensor when the dataset stores ids, else the list of strings."""
    if texts and isinstance(texts[0], torch.Tensor):
        return torch.stack(list(texts))
    return list(texts)
