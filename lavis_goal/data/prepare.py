"""Convert a benchmark release into GOAL's evaluation lists, with counts.

    python -m lavis_goal.data.prepare NAME --root DIR --out DIR [--parts PART ...]

writes ``DIR/<NAME>_<PART>.json`` for each part: a JSON list of
``{"filename": absolute image path, "caption": text or [texts]}``, the
format ``goal_json`` and LISM read. NAME is one of docci, dci, urban1k,
sharegpt4v_1k, coco_5k and flickr30k_1k. The builders read the releases
directly, so conversion is optional. It helps where reading is slow (DCI's
per-image annotation files, the 1.5 GB ShareCaptioner file), and it makes
LISM input for the joint test.
"""

import argparse
import json
import os
import sys
from pathlib import Path
from typing import List, Optional

from lavis_goal.common.io import atomic_write_text
from lavis_goal.data.releases import RELEASES, missing_images, read_release


def default_parts(name: str, test_list: Optional[str]) -> List[str]:
    """Return every part of the release, with DCI's test and train parts only when a test list is given."""
    if name == "dci":
        return ["test", "train", "all"] if test_list else ["all"]
    return list(RELEASES[name].parts)


def release_options(name: str, args: argparse.Namespace) -> dict:
    options = {}
    if name == "dci":
        if args.test_list:
            options["test_list"] = args.test_list
        if args.caption_fields:
            options["caption_fields"] = args.caption_fields
    elif name == "sharegpt4v_1k":
        if args.annotation:
            options["annotation"] = args.annotation
        options["num_records"] = args.num_records
    elif name == "urban1k":
        options["strict"] = not args.skip_unpaired
    return options


def prepare(name: str, root: str, out: str, parts: List[str], options: dict) -> List[dict]:
    """Write one list per part and return a summary row per part (part, images, captions, missing, path)."""
    summary = []
    for part in parts:
        records = read_release(name, root, part, **options)
        n_captions = sum(len(r["caption"]) if isinstance(r["caption"], list) else 1 for r in records)
        missing = len(missing_images(records))
        path = os.path.join(out, f"{name}_{part}.json")
        atomic_write_text(path, json.dumps(records, ensure_ascii=False, indent=1) + "\n")
        summary.append({"part": part, "images": len(records), "captions": n_captions, "missing": missing, "path": path})
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lavis_goal.data.prepare", description="Convert a benchmark release into GOAL's evaluation lists (JSON).")
    parser.add_argument("name", choices=sorted(RELEASES), help="the benchmark")
    parser.add_argument("--root", required=True, help="the folder of the release, as downloaded")
    parser.add_argument("--out", required=True, help="the folder to write <name>_<part>.json to (created if missing)")
    parser.add_argument("--parts", nargs="+", help="parts to convert (default: all of the release's parts)")
    parser.add_argument("--test-list", help="dci: the 2,000-image test list (GOAL's DCI_test.json, or one image name per line)")
    parser.add_argument("--caption-fields", nargs="+", help="dci: annotation fields joined into the caption (default: extra_caption)")
    parser.add_argument("--annotation", help="sharegpt4v_1k: the records file, if not the ShareCaptioner file under --root")
    parser.add_argument("--num-records", type=int, default=1000, help="sharegpt4v_1k: how many leading records to keep (default: 1000)")
    parser.add_argument("--skip-unpaired", action="store_true", help="urban1k: leave out images without a caption file instead of failing")
    args = parser.parse_args(argv)

    parts = args.parts or default_parts(args.name, args.test_list)
    unknown = [p for p in parts if p not in RELEASES[args.name].parts]
    if unknown:
        parser.error(f"{args.name} has no part {', '.join(unknown)}; valid parts: {', '.join(RELEASES[args.name].parts)}")
    Path(args.out).mkdir(parents=True, exist_ok=True)

    try:
        summary = prepare(args.name, args.root, args.out, parts, release_options(args.name, args))
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for row in summary:
        note = f", {row['missing']} image files missing" if row["missing"] else ""
        print(f"{args.name} {row['part']}: {row['images']} images, {row['captions']} captions{note} -> {row['path']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
