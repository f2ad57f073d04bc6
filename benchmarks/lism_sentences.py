"""Sentence splitting on the DOCCI test captions: counts per caption, and where LISM's splitter differs.

The script checks that each caption's sentence offsets rebuild it exactly,
with only whitespace between sentences, and prints the distribution of
sentences per caption. It also counts the captions that
``lavis_goal.lism.sentences`` splits differently from the plain rule of
``lavis_goal.text_spans`` (a cut after ``.``, ``!`` or ``?`` followed by
whitespace), with a few examples.

    python benchmarks/lism_sentences.py [--captions ../shared/reference-data/docci_test_captions.json]
"""

import argparse
import json
import statistics
import time
from collections import Counter
from pathlib import Path

from lavis_goal.lism.sentences import sentence_offsets
from lavis_goal.text_spans import split_sentence_offsets

DEFAULT_CAPTIONS = Path(__file__).resolve().parents[2] / "shared" / "reference-data" / "docci_test_captions.json"


def rebuilds(caption: str, offsets) -> bool:
    position = 0
    for start, end in offsets:
        if start < position or caption[position:start].strip():
            return False
        position = end
    return not caption[position:].strip()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", default=str(DEFAULT_CAPTIONS), help="JSON list of {filename, caption}")
    parser.add_argument("--examples", type=int, default=5, help="differing captions to print (default 5)")
    args = parser.parse_args(argv)

    records = json.loads(Path(args.captions).read_text(encoding="utf-8"))
    captions = [record["caption"] for record in records]

    started = time.perf_counter()
    splits = [sentence_offsets(caption) for caption in captions]
    seconds = time.perf_counter() - started

    broken = sum(1 for caption, offsets in zip(captions, splits) if not rebuilds(caption, offsets))
    counts = [len(offsets) for offsets in splits]
    plain = [split_sentence_offsets(caption) for caption in captions]
    differing = [i for i, (mine, simple) in enumerate(zip(splits, plain)) if mine != simple]

    print(f"captions: {len(captions)}; offsets rebuild the caption: {len(captions) - broken} (failures: {broken})")
    print(f"split time: {seconds * 1000 / len(captions):.3f} ms per caption")
    print(f"sentences: {sum(counts)} in total; per caption min {min(counts)}, median {statistics.median(counts)}, "
          f"mean {statistics.mean(counts):.2f}, max {max(counts)}")
    histogram = Counter(counts)
    print("| sentences per caption | captions |")
    print("|---|---|")
    for count in sorted(histogram):
        print(f"| {count} | {histogram[count]} |")
    print(f"plain rule: {sum(len(p) for p in plain)} sentences; captions split differently: {len(differing)}")
    for index in differing[: args.examples]:
        caption = captions[index]
        only_mine = sorted(set(splits[index]) - set(plain[index]))
        print(f"- {records[index]['filename'].rsplit('/', 1)[-1]}: " + " | ".join(caption[a:b][:90] for a, b in only_mine))


if __name__ == "__main__":
    main()
