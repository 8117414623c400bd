#!/usr/bin/env python3
"""Run on a lab host: python3 - MARKER DIR. Every occurrence of MARKER in every file under DIR, in the raw bytes and in
every zlib stream in them (pg_dump's custom format compresses table data with zlib, so a plain grep of a plaintext
dump would miss its rows). Prints one JSON object: files searched, matches per file. Standard library only; the
molecule backup scenario and the data-tier e2e test send it to the host as the program's text."""

import contextlib
import json
import os
import sys
import zlib


def count(data: bytes, marker: bytes) -> int:
    """MARKER's occurrences in DATA and in every zlib stream that starts anywhere in it."""
    view = memoryview(data)
    hits = data.count(marker)
    i = data.find(b"\x78")
    while 0 <= i < len(data) - 1:
        if (0x7800 + data[i + 1]) % 31 == 0:  # a zlib header
            with contextlib.suppress(zlib.error):
                hits += zlib.decompressobj().decompress(view[i:]).count(marker)
        i = data.find(b"\x78", i + 1)
    return hits


def main(marker: bytes, root: str) -> None:
    found: dict[str, int] = {}
    files = 0
    for d, _, names in os.walk(root):
        for n in names:
            path = os.path.join(d, n)
            if os.path.islink(path) or not os.path.isfile(path):
                continue
            files += 1
            with open(path, "rb") as fh:
                hits = count(fh.read(), marker)
            if hits:
                found[path] = hits
    print(json.dumps({"files": files, "matches": found}))


main(sys.argv[1].encode(), sys.argv[2])
