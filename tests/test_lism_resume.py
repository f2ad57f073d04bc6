"""A LISM run killed with SIGKILL in the middle of a chunk, then rerun, writes what one uninterrupted run writes."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CAPTION = "A red square fills the frame. A small blue circle sits in the top right corner. The light is soft."

# Runs the command line with one change: the process kills itself (SIGKILL,
# so nothing is cleaned up) when it starts on the work item given as the first
# argument. The remaining arguments are the command line's.
KILL_SCRIPT = """
import os, signal, sys
from lavis_goal.lism import runner
from lavis_goal.lism.__main__ import main

kill_at = int(sys.argv[1])
add = runner._ChunkWork.add

def add_or_die(self, loaded, item):
    if item.index == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    add(self, loaded, item)

runner._ChunkWork.add = add_or_die
sys.exit(main(sys.argv[2:]))
"""


def lism(args, *prefix):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, *prefix, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_kill_then_rerun_equals_uninterrupted_run(tmp_path, write_image, write_json):
    records = []
    for index in range(7):
        write_image(f"image{index}.png", size=(64 + 8 * index, 48), color=(30 * index, 120, 220 - 30 * index))
        records.append({"filename": f"image{index}.png", "caption": CAPTION})
    input_path = write_json("list.json", records)

    def args(output):
        return [
            "--input", str(input_path), "--image-root", str(tmp_path / "images"), "--output", str(output),
            "--proposer", "felzenszwalb", "--chunk-size", "2", "--num-workers", "1", "--device", "cpu",
            "--model-type", "tiny", "--pretrained", "none", "--no-progress",
        ]

    reference = tmp_path / "reference" / "pairs.json"
    done = lism(args(reference), "-m", "lavis_goal.lism")
    assert done.returncode == 0, done.stderr

    # Item 5 is the second image of the third chunk (4, 6): chunks (0, 2) and (2, 4) are written.
    resumed = tmp_path / "resumed" / "pairs.json"
    killed = lism(["5", *args(resumed)], "-c", KILL_SCRIPT)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    parts = resumed.parent / "pairs.json.parts"
    assert sorted(p.name for p in parts.glob("chunk_*.json")) == [
        "chunk_000000000_000000002.json", "chunk_000000002_000000004.json",
    ]
    assert not resumed.exists()

    rerun = lism(args(resumed), "-m", "lavis_goal.lism")
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads((parts / "summary.json").read_text())
    assert summary["chunks_resumed"] == 2
    assert summary["images_this_run"] == 3
    assert "seconds per image" in rerun.stdout

    assert resumed.read_bytes() == reference.read_bytes()
    assert len(json.loads(resumed.read_text())) == 7
