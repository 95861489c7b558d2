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

from nmt.errors import NMTError  # noqa: E402
from nmt.outputs import atomic_output, check_outputs  # noqa: E402

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
    try:
        check_outputs([args.output], [args.checkpoint])
    except NMTError as err:
        print(f"tools/page_screenshot.py: {err}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="nmt-page-") as tmp:
        shot = Path(tmp) / "page.png"  # the browser writes here; the output is replaced only by a whole picture
        with running_server(["-c", str(Path(args.checkpoint).resolve())], Path(tmp) / "serve.log") as server:
            view = drive_page(server.url + "/", SENTENCES, shot, Path(tmp) / "profile", args.nbest)
        with atomic_output(args.output, binary=True) as f:
            f.write(shot.read_bytes())
    for source, target in zip(SENTENCES, view.translations):
        print(f"{source} -> {target}")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
