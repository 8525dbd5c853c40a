"""The Space in a real browser: Playwright clicks through the short flow in headless chromium.

Uses Debian's chromium (``apt-get install chromium``; scripts/test.sh installs it when missing),
never ``playwright install``, which downloads browsers from the internet.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from playwright import sync_api

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module", autouse=True)
def chromium_installed() -> None:
    """A missing browser fails the test (with how to install it) rather than skipping it."""
    if not Path(CHROMIUM).is_file():
        pytest.fail(
            "chromium is not installed: install it with `apt-get install -y chromium` "
            "(scripts/test.sh does this when apt-get is available)",
            pytrace=False,
        )


TIMEOUT_MS = 180_000  # a search on two cores shared with other work


def _set_number(page, elem_id: str, value: int) -> None:
    box = page.locator(f"#{elem_id} input[type=number]").first
    box.fill(str(value))
    box.press("Tab")  # Gradio takes the value on change/blur


def test_click_through_discover_kinship_search_push(space_app, tmp_path):
    from huggingface_hub import HfApi

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 2400})
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(space_app.url)

            page.locator("#token input").fill(space_app.token)
            # only fine-tunes, then keep two of them
            page.locator("#relations").get_by_label("adapter").uncheck()
            page.locator("#relations").get_by_label("merge").uncheck()
            page.locator("#discover").click()
            chosen = page.locator("#chosen")
            sort_id = space_app.repo_ids["expert/sort"]
            reverse_id = space_app.repo_ids["expert/reverse"]
            chosen.get_by_label(sort_id, exact=True).wait_for()
            for task in ("add", "uppercase"):
                chosen.get_by_label(space_app.repo_ids[f"expert/{task}"], exact=True).uncheck()

            page.locator("#kinship").click()
            page.locator("#heatmap img").wait_for()

            builtin = page.locator("#builtin")
            builtin.get_by_label("reverse", exact=True).check()
            builtin.get_by_label("sort", exact=True).check()
            _set_number(page, "k", 2)
            _set_number(page, "generations", 1)
            _set_number(page, "limit", 4)
            page.locator("#run").click()
            # exact: "Running: generation 1 done." must not pass for the final "**Done** (...)"
            page.locator("#status").get_by_text("Done", exact=True).wait_for()

            page.locator("#repo input, #repo textarea").first.fill("browser-merge")
            page.locator("#push").click()
            page.locator("#pushed").get_by_text("Pushed").wait_for()
            shot = tmp_path / "space.png"
            page.screenshot(path=str(shot), full_page=True)
            pushed_text = page.locator("#pushed").inner_text()
        finally:
            browser.close()

    assert shot.stat().st_size > 10_000
    repo = f"{space_app.user}/browser-merge"
    assert repo in pushed_text
    api = HfApi(endpoint=space_app.endpoint, token=space_app.token)
    readme = Path(api.hf_hub_download(repo, "README.md", local_dir=tmp_path / "dl"))
    text = readme.read_text(encoding="utf-8")
    assert sort_id in text and reverse_id in text


def test_compare_tab_pushes_a_row_with_its_own_button(space_app, tmp_path):
    """The Compare tab in a browser: a compare of greedy and DAM, then the row's own Push button
    (rendered once the leaderboard is in) publishes it with the leaderboard on its card."""
    from huggingface_hub import HfApi

    pasted = "\n".join(space_app.repo_ids[f"expert/{t}"] for t in ("reverse", "sort"))
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 2400})
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(space_app.url)
            page.locator("#token input").fill(space_app.token)
            page.get_by_label("…or paste model ids, one per line").fill(pasted)
            page.get_by_role("tab", name="Compare").click()
            builtin = page.locator("#cmp-builtin")
            builtin.get_by_label("reverse", exact=True).check()
            builtin.get_by_label("sort", exact=True).check()
            _set_number(page, "cmp-limit", 4)
            settings = '{"greedy": {"generations": 1}, "dam": {"steps": 2, "max_rows": 4}}'
            page.locator("#cmp-settings .cm-content").fill(settings)
            page.locator("#compare").click()
            page.locator("#cmp-status").get_by_text("Done", exact=False).wait_for()
            page.locator("#cmp-repo input, #cmp-repo textarea").first.fill("browser-dam")
            page.get_by_role("button", name="Push dam", exact=False).click()
            page.locator("#cmp-pushed").get_by_text("Pushed").wait_for()
            pushed_text = page.locator("#cmp-pushed").inner_text()
        finally:
            browser.close()

    repo = f"{space_app.user}/browser-dam"
    assert repo in pushed_text and "dam" in pushed_text
    api = HfApi(endpoint=space_app.endpoint, token=space_app.token)
    readme = Path(api.hf_hub_download(repo, "README.md", local_dir=tmp_path / "dl"))
    assert "This model is the row **dam**" in readme.read_text(encoding="utf-8")
