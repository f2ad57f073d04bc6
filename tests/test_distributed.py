"""A two-rank DistributedDataParallel step against one process on the same global batch.

GoalLoss gathers features across ranks with gradient and divides every term
by the valid count of the global batch, times the world size. So the mean of
the two ranks' loss terms, and the gradients after DDP's all-reduce (which
averages), must equal what a single process computes on all four samples.

The test runs on CPU with the gloo backend and a ``file://`` store in the
test's temporary folder, so it opens no network port. Both ranks are spawned
once and run every loss setting, because each new process spends several
seconds importing LAVIS.
"""

import datetime

import pytest
import torch

WORLD_SIZE = 2
BATCH = 4
LOCAL_SLOTS = 2
IMAGE_SIZE = 224
SEED = 1234
PROCESS_GROUP_TIMEOUT = datetime.timedelta(seconds=120)

LOSS_SETTINGS = {
    "global_only": {"global_weight": 1.0, "local_weight": 0.0, "tsl_image_weight": 0.0, "tsl_text_weight": 0.0},
    "without_tsl": {"global_weight": 1.0, "local_weight": 0.5, "tsl_image_weight": 0.0, "tsl_text_weight": 0.0},
    "goal_diagonal": {
        "global_weight": 1.0,
        "local_weight": 0.5,
        "tsl_image_weight": 1.0,
        "tsl_text_weight": 1.0,
        "tsl_target": "diagonal",
    },
    "goal_matrix": {
        "global_weight": 1.0,
        "local_weight": 0.5,
        "tsl_image_weight": 1.0,
        "tsl_text_weight": 1.0,
        "tsl_target": "matrix",
    },
}

# Each loss term and the weight that switches it on.
TERM_WEIGHTS = {
    "loss_global": "global_weight",
    "loss_local": "local_weight",
    "loss_tsl_image": "tsl_image_weight",
    "loss_tsl_text": "tsl_text_weight",
}

# Sample b uses sentences 0 and 1 of CAPTIONS[b] as its two local texts.
CAPTIONS = [
    "A red bicycle leans against a brick wall. A small dog sleeps under the front wheel. The street is empty.",
    "Two children build a sandcastle on the beach. Waves roll in behind them under a grey sky.",
    "A wooden table holds a bowl of green apples. Sunlight falls through a window on the left! A cat watches.",
    "An old man reads a newspaper on a park bench. Pigeons gather around his feet, hoping for bread.",
]

# Boxes in input pixels, (x1, y1, x2, y2), one per local slot. The box of
# sample 3, slot 0 has zero width, so it covers no patch and the model itself
# marks that region invalid.
REGION_BOXES = [
    [[0.0, 0.0, 112.0, 112.0], [96.0, 64.0, 224.0, 200.0]],
    [[40.0, 120.0, 180.0, 224.0], [10.0, 10.0, 70.0, 90.0]],
    [[100.0, 0.0, 224.0, 100.0], [0.0, 150.0, 224.0, 224.0]],
    [[50.0, 50.0, 50.0, 120.0], [64.0, 64.0, 160.0, 160.0]],
]

# Entries set to False, all on rank 0 (samples 0 and 1), so the two ranks
# have different valid counts for the local and both TSL terms. The inputs
# behind them stay real, so a mask that only one of the two runs applies
# changes the loss. A mask ignored by both runs is not detected here.
INVALID_LOCAL_PAIR = (1, 0)
INVALID_REGION = (0, 1)
INVALID_SPAN = (0, 0)

# Parameters whose gradient must be non-zero, one each for the stretched text
# positions, the image tower (patch embedding) and the text tower (first attention).
ENCODER_PARAMETERS = (
    "clip.positional_embedding",
    "clip.visual.conv1.weight",
    "clip.transformer.resblocks.0.attn.in_proj_weight",
)


def _build_model():
    import lavis_goal  # noqa: F401  registers goal_clip with LAVIS
    from lavis.models import load_model

    return load_model("goal_clip", "tiny")


def _set_loss(model, setting: str) -> None:
    from lavis_goal.losses import GoalLoss, GoalLossConfig

    model.loss_cfg = GoalLossConfig(**LOSS_SETTINGS[setting])
    model.loss_fn = GoalLoss(model.loss_cfg)


def _make_batch(model) -> dict:
    """Build the global batch of BATCH samples with LOCAL_SLOTS local pairs each."""
    from lavis_goal.text_spans import split_sentence_offsets

    tokenizer = model.tokenizer
    generator = torch.Generator().manual_seed(SEED)

    text_input, local_text, spans = [], [], []
    for caption in CAPTIONS:
        encoded = tokenizer.encode_caption(caption)
        text_input.append(encoded.tokens)
        sample_texts, sample_spans = [], []
        for start, end in split_sentence_offsets(caption)[:LOCAL_SLOTS]:
            span_start, span_end, status = tokenizer.sentence_span(encoded, caption, start, end)
            assert status == "ok", f"setup: sentence {caption[start:end]!r} has span status {status}"
            sample_spans.append([span_start, span_end])
            sample_texts.append(tokenizer.encode_caption(caption[start:end]).tokens)
        local_text.append(torch.stack(sample_texts))
        spans.append(sample_spans)

    local_valid = torch.ones(BATCH, LOCAL_SLOTS, dtype=torch.bool)
    region_valid = torch.ones(BATCH, LOCAL_SLOTS, dtype=torch.bool)
    span_valid = torch.ones(BATCH, LOCAL_SLOTS, dtype=torch.bool)
    local_valid[INVALID_LOCAL_PAIR] = False
    region_valid[INVALID_REGION] = False
    span_valid[INVALID_SPAN] = False

    return {
        "image": torch.randn(BATCH, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator),
        "text_input": torch.stack(text_input),
        "local_image": torch.randn(BATCH, LOCAL_SLOTS, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator),
        "local_text": torch.stack(local_text),
        "local_valid": local_valid,
        "region_box": torch.tensor(REGION_BOXES),
        "region_valid": region_valid,
        "span": torch.tensor(spans, dtype=torch.long),
        "span_valid": span_valid,
    }


def _shard(batch: dict, rank: int) -> dict:
    per_rank = BATCH // WORLD_SIZE
    return {key: value[rank * per_rank : (rank + 1) * per_rank] for key, value in batch.items()}


def _train_step(model, module, samples: dict) -> dict:
    """Run one forward and backward pass and return the loss terms and every parameter's gradient.

    ``model`` is what gets called (the module itself or its DDP wrapper) and
    ``module`` is the GoalCLIP whose parameters hold the gradients.
    """
    module.zero_grad(set_to_none=True)
    output = model(samples)
    output["loss"].backward()
    terms = {name: output[name].item() for name in ("loss", *TERM_WEIGHTS)}
    grads = {}
    for name, param in module.named_parameters():
        grads[name] = None if param.grad is None else param.grad.detach().clone()
    return {"terms": terms, "grads": grads}


def _run_rank(rank: int, folder: str) -> None:
    """Train one step per loss setting on this rank's half of the batch and save the results.

    This is the target of torch.multiprocessing.spawn, which passes ``rank`` first.
    """
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    dist.init_process_group(
        backend="gloo",
        init_method=f"file://{folder}/process_group_store",
        rank=rank,
        world_size=WORLD_SIZE,
        timeout=PROCESS_GROUP_TIMEOUT,
    )
    try:
        model = _build_model()
        model.load_state_dict(torch.load(f"{folder}/model.pt"))
        samples = _shard(torch.load(f"{folder}/batch.pt"), rank)
        wrapped = DistributedDataParallel(model, device_ids=None)

        results = {}
        for setting in LOSS_SETTINGS:
            _set_loss(model, setting)
            results[setting] = _train_step(wrapped, model, samples)
        torch.save(results, f"{folder}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def step_results(tmp_path_factory):
    """Run the single process and the two ranks, and return ``(single, ranks)``.

    ``single`` maps each loss setting to its terms and gradients, and ``ranks``
    contains one such dict per rank.
    """
    import torch.multiprocessing as mp

    folder = tmp_path_factory.mktemp("distributed")

    torch.manual_seed(SEED)
    model = _build_model()
    batch = _make_batch(model)
    torch.save(model.state_dict(), folder / "model.pt")
    torch.save(batch, folder / "batch.pt")

    # This process has no process group, so get_world_size() returns 1 in the loss.
    single = {}
    for setting in LOSS_SETTINGS:
        _set_loss(model, setting)
        single[setting] = _train_step(model, model, batch)

    mp.spawn(_run_rank, args=(str(folder),), nprocs=WORLD_SIZE, join=True)
    ranks = [torch.load(folder / f"rank{rank}.pt") for rank in range(WORLD_SIZE)]
    return single, ranks


def test_valid_counts_differ_between_ranks():
    # With equal counts per rank, a loss normalised per rank would also pass.
    local_valid = torch.ones(BATCH, LOCAL_SLOTS, dtype=torch.bool)
    local_valid[INVALID_LOCAL_PAIR] = False
    region_valid = local_valid.clone()
    region_valid[INVALID_REGION] = False
    span_valid = local_valid.clone()
    span_valid[INVALID_SPAN] = False

    for name, valid in (("local", local_valid), ("region", region_valid), ("span", span_valid)):
        counts = [int(_shard({"v": valid}, rank)["v"].sum()) for rank in range(WORLD_SIZE)]
        assert counts[0] != counts[1], f"{name} valid counts per rank are equal: {counts}"


@pytest.mark.parametrize("setting", list(LOSS_SETTINGS))
def test_rank_mean_loss_matches_single_process(step_results, setting):
    single, ranks = step_results
    expected = single[setting]["terms"]

    for term in ("loss", *TERM_WEIGHTS):
        rank_values = [result[setting]["terms"][term] for result in ranks]
        mean = sum(rank_values) / WORLD_SIZE
        assert mean == pytest.approx(expected[term], rel=1e-5, abs=1e-5), (
            f"{setting}: {term} per rank {rank_values}, mean {mean}, single process {expected[term]}"
        )


@pytest.mark.parametrize("setting", list(LOSS_SETTINGS))
def test_active_terms_are_nonzero(step_results, setting):
    # A term that is 0 in both runs would match without testing anything.
    single, _ = step_results
    weights = LOSS_SETTINGS[setting]

    for term, weight_name in TERM_WEIGHTS.items():
        value = single[setting]["terms"][term]
        if weights[weight_name] > 0:
            assert value > 0, f"{setting}: {term} is {value} although {weight_name} is {weights[weight_name]}"
        else:
            assert value == 0, f"{setting}: {term} is {value} although {weight_name} is 0"


@pytest.mark.parametrize("setting", list(LOSS_SETTINGS))
def test_ddp_gradients_match_single_process(step_results, setting):
    single, ranks = step_results
    expected = single[setting]["grads"]

    for name, reference in expected.items():
        assert reference is not None, f"{setting}: {name} has no gradient in the single process"
        for rank, result in enumerate(ranks):
            grad = result[setting]["grads"][name]
            assert grad is not None, f"{setting}: {name} has no gradient on rank {rank}"
            torch.testing.assert_close(
                grad,
                reference,
                rtol=1e-4,
                atol=1e-6,
                msg=lambda text, name=name, rank=rank: f"{setting}: gradient of {name} on rank {rank}: {text}",
            )


@pytest.mark.parametrize("setting", list(LOSS_SETTINGS))
def test_ddp_gradients_equal_across_ranks(step_results, setting):
    _, ranks = step_results

    for name, grad in ranks[0][setting]["grads"].items():
        other = ranks[1][setting]["grads"][name]
        torch.testing.assert_close(
            other,
            grad,
            rtol=1e-6,
            atol=1e-8,
            msg=lambda text, name=name: f"{setting}: gradient of {name} differs between ranks: {text}",
        )


@pytest.mark.parametrize("setting", list(LOSS_SETTINGS))
def test_encoder_gradients_are_nonzero(step_results, setting):
    single, ranks = step_results

    for name in ENCODER_PARAMETERS:
        assert single[setting]["grads"][name].abs().sum() > 0, f"{setting}: {name} gradient is zero in one process"
        for rank, result in enumerate(ranks):
            grad = result[setting]["grads"][name]
            assert grad.abs().sum() > 0, f"{setting}: {name} gradient is zero on rank {rank}"
