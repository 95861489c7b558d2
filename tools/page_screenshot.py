#!/usr/bin/env python
"""The README's picture of the web page, made by the browser test's own code path
(`tests/serve_fixtures.py:drive_page`): `nmt serve` on loopback, headless Chromium types the sentences,
presses Translate and saves the page.

    .venv/bin/python tools/page_screenshot.py -c exp/demo/final.pt -o docs/serve_page.png
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from serve_fixtures import browser_missing, drive_page, running_server  # noqa: E402

SENTENCES = ["Ein Mann fährt Fahrrad.", "Zwei Hunde spielen im Schnee.",
             "Eine Frau mit einem roten Hut liest ein Buch."]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-c", "--checkpoint", required=True)
    parser.add_argument("-o", "--output", required=True, help="PNG path")
    parser.add_argument("--nbest", type=int, default=3)
    args = parser.parse_args()
    reason = browser_missing()
    if reason:
        print(reason, file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="nmt-page-") as tmp:
        with running_server(["-c", args.checkpoint], Path(tmp) / "serve.log") as server:
            view = drive_page(server.url + "/", SENTENCES, Path(args.output), Path(tmp) / "profile", args.nbest)
    for source, target in zip(SENTENCES, view.translations):
        print(f"{source} -> {target}")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
