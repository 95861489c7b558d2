"""The web page in a real browser: headless Chromium (Debian's package, driven by Playwright) types sentences,
presses Translate or Ctrl+Enter, and reads what the page shows, which must be what the API answers. Skips,
saying why, where Chromium or Playwright is missing (.ci/run installs Chromium)."""

from __future__ import annotations

from pathlib import Path

import pytest

from serve_fixtures import browser_missing, call, drive_page, running_server
from translation_fixtures import make_checkpoint, synthetic_sentences

LINES = synthetic_sentences(3, seed=41)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    reason = browser_missing()
    if reason:
        pytest.skip(reason)
    folder = tmp_path_factory.mktemp("serve_page")
    with running_server(["-c", str(make_checkpoint(folder / "model.pt", seed=9))], folder / "serve.log") as server:
        yield server


def test_the_page_shows_the_api_s_translations_scores_and_attention(server, tmp_path: Path) -> None:
    api = call(server.url + "/v1/translate", {"text": LINES, "alignments": True}).json()["translations"]
    screenshot = tmp_path / "page.png"
    view = drive_page(server.url + "/", LINES, screenshot, tmp_path / "profile")
    assert view.translations == [t["text"] for t in api]
    assert view.scores == [f"score {t['score']:.3f}" for t in api]
    first = api[0]["alignment"]
    assert view.heatmap == (len(first["target"]), len(first["source"]))  # source across, target down
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 10_000


def test_ctrl_enter_translates_and_the_nbest_view_lists_the_api_s_hypotheses(server, tmp_path: Path) -> None:
    api = call(server.url + "/v1/translate", {"text": LINES, "nbest": 3}).json()["translations"]
    view = drive_page(server.url + "/", LINES, tmp_path / "page.png", tmp_path / "profile", nbest=3, keyboard=True)
    assert view.translations == [t["text"] for t in api]
    assert view.nbest == [[h["text"] for h in t["nbest"]] for t in api]
    assert all(len(texts) == 3 for texts in view.nbest)
