"""Resumable LISM results: chunk files, a settings manifest and the merged output list.

The work items are cut into chunks of consecutive indices. Each finished chunk
is written atomically to ``<work dir>/chunk_<start>_<end>.json``, so a killed
run loses at most the chunk in progress, and a rerun skips every chunk whose
file exists. ``manifest.json`` stores the settings that change the results; a
rerun with other settings is rejected instead of mixing results. The output
list is written atomically from the chunks once all of them exist.
"""

import glob
import json
import logging
import os
import re
from typing import Dict, Iterable, List, Tuple

from lavis_goal.common.io import atomic_write_text

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
_CHUNK_NAME = re.compile(r"^chunk_(\d+)_(\d+)\.json$")

Range = Tuple[int, int]


def chunk_ranges(total: int, chunk_size: int) -> List[Range]:
    """Split ``range(total)`` into ``(start, end)`` ranges of ``chunk_size`` items (the last may be shorter)."""
    if chunk_size < 1:
        raise ValueError(f"--chunk-size must be at least 1, got {chunk_size}")
    return [(start, min(start + chunk_size, total)) for start in range(0, total, chunk_size)]


def dumps_list(records: Iterable[dict]) -> str:
    """Serialise records as a JSON list with one record per line."""
    lines = [json.dumps(record, ensure_ascii=False) for record in records]
    return "[\n" + ",\n".join(lines) + "\n]\n" if lines else "[]\n"


class ChunkStore:
    """Chunk files of one LISM run in ``folder``, tied to the settings in ``manifest``."""

    def __init__(self, folder: str, manifest: Dict):
        self.folder = os.path.abspath(folder)
        self.manifest = manifest

    def open(self, overwrite: bool = False) -> None:
        """Create the folder, or check that its results were made with the same settings.

        Raises ``ValueError`` naming the changed settings unless ``overwrite``,
        which deletes the old chunks.
        """
        os.makedirs(self.folder, exist_ok=True)
        for stale in glob.glob(os.path.join(self.folder, ".*.tmp")):
            # Left by a run killed while writing; the chunk it was writing is redone.
            os.remove(stale)

        path = os.path.join(self.folder, MANIFEST)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                previous = json.load(f)
            changed = sorted(k for k in set(previous) | set(self.manifest) if previous.get(k) != self.manifest.get(k))
            if changed and not overwrite:
                details = "; ".join(f"{k}: {previous.get(k)!r} -> {self.manifest.get(k)!r}" for k in changed)
                raise ValueError(
                    f"The results in {self.folder} were made with other settings ({details}). Pass --overwrite "
                    "to discard them, or choose another --output or --work-dir"
                )
            if overwrite:
                self.clear()
        elif overwrite:
            self.clear()
        elif any(_CHUNK_NAME.match(name) for name in os.listdir(self.folder)):
            raise ValueError(
                f"{self.folder} contains chunk files but no {MANIFEST}, so their settings are unknown. Pass "
                "--overwrite to discard them, or choose another --output or --work-dir"
            )
        atomic_write_text(path, json.dumps(self.manifest, indent=1, sort_keys=True) + "\n")

    def clear(self) -> None:
        removed = 0
        for name in os.listdir(self.folder):
            if _CHUNK_NAME.match(name):
                os.remove(os.path.join(self.folder, name))
                removed += 1
        if removed:
            logger.info("Removed %d chunk files of earlier runs from %s", removed, self.folder)

    def path(self, chunk: Range) -> str:
        return os.path.join(self.folder, f"chunk_{chunk[0]:09d}_{chunk[1]:09d}.json")

    def has(self, chunk: Range) -> bool:
        return os.path.isfile(self.path(chunk))

    def write(self, chunk: Range, payload: Dict) -> None:
        atomic_write_text(self.path(chunk), json.dumps(payload, ensure_ascii=False) + "\n")
        # A chunk cut short by --limit in an earlier run covers a shorter range
        # with the same start; the complete chunk replaces it.
        for name in os.listdir(self.folder):
            match = _CHUNK_NAME.match(name)
            if match and int(match.group(1)) == chunk[0] and int(match.group(2)) != chunk[1]:
                os.remove(os.path.join(self.folder, name))

    def load(self, chunk: Range) -> Dict:
        path = self.path(chunk)
        try:
            with open(path, encoding="utf-8") as f:
                return json.load(f)
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"Chunk file {path} cannot be read ({error}); delete it and rerun to mine its images again") from error

    def merge(self, chunks: List[Range], output: str) -> List[Dict]:
        """Write the records of ``chunks``, in order, to ``output`` as one JSON list; return the loaded chunks."""
        loaded = [self.load(chunk) for chunk in chunks]
        records = [record for payload in loaded for record in payload["records"]]
        atomic_write_text(output, dumps_list(records))
        return loaded
