"""LISM runs end to end on small files: bad images, resume, settings checks, input formats, the output format."""

import json
import logging

import pytest
from PIL import Image

from lavis_goal.datasets.annotations import LoadOptions, load_records
from lavis_goal.lism.__main__ import main as lism_main
from lavis_goal.lism.inputs import read_input
from lavis_goal.lism.matching import load_matching_model
from lavis_goal.lism.runner import LismConfig, run_lism

GOOD_CAPTION = "A red square fills the frame. A small blue circle sits in the top right corner. The light is soft."
LONG_SENTENCE = " ".join(["word"] * 300) + "."


@pytest.fixture(scope="module")
def tiny_model():
    model, _ = load_matching_model("tiny", pretrained="none", seed=0)
    return model


def config(tmp_path, input_path, **overrides):
    options = dict(
        input=str(input_path), output=str(tmp_path / "pairs.json"), image_root=str(tmp_path / "images"),
        num_workers=0, chunk_size=2, progress=False, device="cpu",
    )
    options.update(overrides)
    return LismConfig(**options)


@pytest.fixture
def good_list(write_image, write_json):
    """Five valid RGB images with one caption each."""
    records = []
    for index in range(5):
        write_image(f"good{index}.png", size=(64 + 8 * index, 48), color=(40 * index, 100, 200 - 30 * index))
        records.append({"filename": f"good{index}.png", "caption": GOOD_CAPTION})
    return write_json("list.json", records)


def test_bad_images_are_counted_skips(tmp_path, write_image, write_json, tiny_model):
    for name, mode in [("gray.png", "L"), ("rgba.png", "RGBA"), ("palette.png", "P"), ("deep.png", "I;16"), ("rgb.jpg", "RGB")]:
        write_image(name, mode=mode)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.new("RGB", (64, 48), (10, 200, 30)).save(tmp_path / "images" / "rotated.jpg", exif=exif)
    (tmp_path / "images" / "broken.jpg").write_bytes(b"this is not a JPEG")
    write_image("huge.png", size=(200, 200))
    write_image("large.png", size=(120, 120))

    names = ["gray.png", "rgba.png", "palette.png", "deep.png", "rotated.jpg", "broken.jpg", "missing.jpg",
             "huge.png", "large.png", "rgb.jpg", "rgb.jpg"]
    records = [{"filename": name, "caption": GOOD_CAPTION} for name in names]
    records[-2]["caption"] = "... ?!"
    records[-1]["caption"] = f"A short first sentence. {LONG_SENTENCE} A short last sentence."
    path = write_json("bad.json", records)

    # 10,000 pixels: huge.png is over twice the limit (Pillow's error), large.png over it (Pillow's warning).
    summary = run_lism(config(tmp_path, path, max_image_pixels=10_000), model=tiny_model)

    assert summary["images"] == 11
    assert summary["images_mined"] == 6
    assert summary["images_skipped"] == {
        "image cannot be decoded": 1, "image not found": 1, "image too large": 2, "no sentence": 1,
    }
    assert summary["exif_rotated"] == 1
    assert summary["sentences_skipped"] == {"longer than the 246-token text context": 1}
    assert summary["sentences_past_caption_context"] == 2
    by_reason = {entry["filename"]: entry["message"] for entry in summary["skipped"]}
    assert "--max-image-pixels" in by_reason["huge.png"]
    assert "--image-root" in by_reason["missing.jpg"]
    assert "broken.jpg" in by_reason["broken.jpg"]

    output = json.loads((tmp_path / "pairs.json").read_text())
    assert [r["original_filename"] for r in output] == ["gray.png", "rgba.png", "palette.png", "deep.png", "rotated.jpg", "rgb.jpg"]
    rotated = output[4]
    # Boxes follow the stored pixels (64 x 48), as the training dataset reads them.
    assert rotated["image_size"] == [64, 48]
    assert rotated["regions"][0] == [0, 0, 64, 48]
    long_caption = output[-1]
    skipped = [s for s in long_caption["sentences"] if "skipped" in s]
    assert len(skipped) == 1
    assert skipped[0]["caption"] == LONG_SENTENCE
    assert all(pair["caption"] != LONG_SENTENCE for pair in long_caption["segment"])

    # The chunk files keep the skips, so the summary of a finished run is the same.
    again = run_lism(config(tmp_path, path, max_image_pixels=10_000), model=tiny_model)
    assert again["images_skipped"] == summary["images_skipped"]
    assert again["images_this_run"] == 0


def test_output_format(tmp_path, good_list, tiny_model):
    summary = run_lism(config(tmp_path, good_list), model=tiny_model)
    output = json.loads((tmp_path / "pairs.json").read_text())

    assert summary["regions_per_image"] == {"mean": 6.0, "min": 6, "max": 6}
    assert summary["sentences"] == 15
    assert summary["pairs"] + summary["whole_image_matches"] == 15
    assert summary["pairs"] == sum(len(r["segment"]) for r in output)
    assert summary["seconds_per_image"] > 0

    for record in output:
        caption = record["original_caption"]
        width, height = record["image_size"]
        assert record["regions"][0] == [0, 0, width, height]
        assert len(record["sentences"]) == 3
        for sentence in record["sentences"]:
            assert caption[sentence["char_start"] : sentence["char_end"]] == sentence["caption"]
            assert len(sentence["region_scores"]) == len(record["regions"])
            assert sentence["similarity_score"] == max(sentence["region_scores"])
            assert sentence["region_scores"][sentence["region"]] == sentence["similarity_score"]
        for pair in record["segment"]:
            box = pair["bbox_coordinates"]
            assert pair["region"] != 0
            assert [box["x1"], box["y1"], box["x2"], box["y2"]] == record["regions"][pair["region"]]
            assert box["width"] == box["x2"] - box["x1"]
            assert box["height"] == box["y2"] - box["y1"]

    # The foundation's parser reads it: every pair, boxes in original pixels.
    records, skips = load_records(str(tmp_path / "pairs.json"), LoadOptions(image_root=str(tmp_path / "images"), top_k=0))
    assert not skips.counts
    assert sum(len(r.pairs) for r in records) == summary["pairs"]


def test_keep_whole_image_writes_every_sentence(tmp_path, good_list, tiny_model):
    summary = run_lism(config(tmp_path, good_list, keep_whole_image=True), model=tiny_model)
    assert summary["pairs"] == summary["sentences"] == 15


def test_rerun_skips_finished_chunks(tmp_path, good_list, tiny_model):
    first = run_lism(config(tmp_path, good_list), model=tiny_model)
    first_output = (tmp_path / "pairs.json").read_bytes()
    second = run_lism(config(tmp_path, good_list), model=tiny_model)

    assert first["images_this_run"] == 5
    assert second["images_this_run"] == 0
    assert second["chunks_resumed"] == 3
    assert (tmp_path / "pairs.json").read_bytes() == first_output


def test_limit_then_full_run_equals_one_run(tmp_path, good_list, tiny_model):
    limited = run_lism(config(tmp_path, good_list, limit=3), model=tiny_model)
    assert limited["images"] == 3
    assert len(json.loads((tmp_path / "pairs.json").read_text())) == 3
    full = run_lism(config(tmp_path, good_list), model=tiny_model)
    # Chunk (0, 2) is reused; the short chunk (2, 3) is replaced by (2, 4).
    assert full["chunks_resumed"] == 1
    assert full["images_this_run"] == 3
    chunk_files = sorted(p.name for p in (tmp_path / "pairs.json.parts").glob("chunk_*.json"))
    assert len(chunk_files) == 3

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    run_lism(config(tmp_path, good_list, output=str(fresh / "pairs.json")), model=tiny_model)
    assert (tmp_path / "pairs.json").read_bytes() == (fresh / "pairs.json").read_bytes()


def test_workers_give_same_output(tmp_path, good_list, tiny_model):
    run_lism(config(tmp_path, good_list, proposer="felzenszwalb"), model=tiny_model)
    other = tmp_path / "workers"
    other.mkdir()
    run_lism(config(tmp_path, good_list, proposer="felzenszwalb", num_workers=2, output=str(other / "pairs.json")),
             model=tiny_model)
    assert (tmp_path / "pairs.json").read_bytes() == (other / "pairs.json").read_bytes()


def test_changed_settings_are_rejected(tmp_path, good_list, tiny_model):
    run_lism(config(tmp_path, good_list), model=tiny_model)
    with pytest.raises(ValueError, match="other settings") as excinfo:
        run_lism(config(tmp_path, good_list, proposer="felzenszwalb"), model=tiny_model)
    assert "proposer" in str(excinfo.value)
    assert "--overwrite" in str(excinfo.value)

    summary = run_lism(config(tmp_path, good_list, proposer="felzenszwalb", overwrite=True), model=tiny_model)
    assert summary["chunks_resumed"] == 0
    assert summary["images_this_run"] == 5


def test_changed_input_is_rejected(tmp_path, good_list, write_json, tiny_model):
    run_lism(config(tmp_path, good_list), model=tiny_model)
    records = json.loads(good_list.read_text())
    records[0]["caption"] = "A different caption."
    write_json("list.json", records)
    with pytest.raises(ValueError, match="input"):
        run_lism(config(tmp_path, good_list), model=tiny_model)


def test_json_list_formats(tmp_path, write_json, caplog):
    records = [
        {"filename": "a.jpg", "caption": ["First caption.", "Second caption."]},
        {"image": "b.jpg", "caption": "LAVIS style."},
        {"original_filename": "c.jpg", "original_caption": "Training style.", "segment": []},
        {"caption": "No image."},
        {"filename": "d.jpg"},
        "not a record",
    ]
    path = write_json("formats.json", records)
    with caplog.at_level(logging.WARNING):
        inputs = read_input(str(path))
    assert [(item.filename, item.caption) for item in inputs.items] == [
        ("a.jpg", "First caption."), ("a.jpg", "Second caption."), ("b.jpg", "LAVIS style."), ("c.jpg", "Training style."),
    ]
    assert inputs.skipped == {"no image file": 1, "no caption": 1, "not an object": 1}
    assert "record 3 of" in caplog.text


def test_docci_json_lines(tmp_path):
    (tmp_path / "images").mkdir()
    lines = [
        {"example_id": "train_00000", "split": "train", "image_file": "train_00000.jpg", "description": "A cat. A dog."},
        {"example_id": "test_00000", "split": "test", "image_file": "test_00000.jpg", "description": "A bird."},
        {"example_id": "train_00001", "split": "train", "image_file": "train_00001.jpg", "description": "A fish."},
    ]
    path = tmp_path / "docci_descriptions.jsonlines"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n{broken\n")

    inputs = read_input(str(path), splits=["train"])
    assert [item.filename for item in inputs.items] == ["train_00000.jpg", "train_00001.jpg"]
    assert inputs.image_root == str(tmp_path / "images")
    assert inputs.items[0].image_path == str(tmp_path / "images" / "train_00000.jpg")
    assert inputs.skipped == {"invalid JSON line": 1}
    assert len(read_input(str(path)).items) == 3
    with pytest.raises(ValueError, match="--split dev not found"):
        read_input(str(path), splits=["dev"])


def test_urban1k_folder(tmp_path):
    for number in (2, 10, 1):
        (tmp_path / "urban" / "image").mkdir(parents=True, exist_ok=True)
        (tmp_path / "urban" / "caption").mkdir(exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "urban" / "image" / f"{number}.jpg")
        if number != 10:
            (tmp_path / "urban" / "caption" / f"{number}.txt").write_text(f"Street number {number}.\n")
    inputs = read_input(str(tmp_path / "urban"))
    assert [item.filename for item in inputs.items] == ["image/1.jpg", "image/2.jpg"]
    assert inputs.items[1].caption == "Street number 2."
    assert inputs.image_root == str(tmp_path / "urban")
    assert inputs.skipped == {"no caption": 1}
    with pytest.raises(FileNotFoundError, match="image/ and caption/"):
        read_input(str(tmp_path / "urban" / "image"))


def test_input_errors(tmp_path, write_json):
    with pytest.raises(FileNotFoundError, match="not found"):
        read_input(str(tmp_path / "nothing.json"))
    path = write_json("empty.json", [{"caption": "No image."}])
    with pytest.raises(ValueError, match="No usable image"):
        read_input(str(path))
    path = write_json("dict.json", {"filename": "a.jpg"})
    with pytest.raises(ValueError, match="must contain a JSON list"):
        read_input(str(path))
    with pytest.raises(ValueError, match="--split applies to DOCCI"):
        read_input(str(path), splits=["train"])


def test_cli_reports_errors_with_exit_code(tmp_path, capsys):
    status = lism_main(["--input", str(tmp_path / "missing.json"), "--output", str(tmp_path / "pairs.json"), "--no-progress"])
    assert status == 2
    assert "missing.json" in capsys.readouterr().err


def test_cli_sam_without_checkpoint(tmp_path, good_list, capsys):
    pytest.importorskip("segment_anything", reason="segment-anything is not installed (pip install 'lavis-goal[sam]')")
    status = lism_main([
        "--input", str(good_list), "--image-root", str(tmp_path / "images"), "--output", str(tmp_path / "pairs.json"),
        "--proposer", "sam", "--no-progress",
    ])
    assert status == 2
    assert "--sam-checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "pairs.json").exists()


def test_trimmed_text_encoding_matches_model(tiny_model):
    import torch

    from lavis_goal.lism.matching import RegionMatcher

    matcher = RegionMatcher(tiny_model, torch.device("cpu"), batch_size=4)
    sentences = ["A dog.", "A small blue circle sits in the top right corner of the frame.", LONG_SENTENCE, "Red."]
    tokens = torch.stack([matcher.sentence_tokens(s)[0] for s in sentences])
    trimmed = matcher.encode_tokens(tokens)
    full = tiny_model.extract_features({"text_input": sentences}, mode="text")["text_embeds"]
    assert trimmed.shape == full.shape
    assert torch.allclose(trimmed, full, atol=1e-5)


def test_chunks_without_manifest_are_rejected(tmp_path, good_list, tiny_model):
    run_lism(config(tmp_path, good_list), model=tiny_model)
    (tmp_path / "pairs.json.parts" / "manifest.json").unlink()
    with pytest.raises(ValueError, match="no manifest.json"):
        run_lism(config(tmp_path, good_list), model=tiny_model)
    summary = run_lism(config(tmp_path, good_list, overwrite=True), model=tiny_model)
    assert summary["images_this_run"] == 5
