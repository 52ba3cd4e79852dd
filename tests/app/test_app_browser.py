"""The judging app in a real browser (Playwright driving Debian's Chromium): log in, vote by
click and by key, reload and resume, a second annotator on an overlapping item, the admin's
results and export, and a hostile answer that must stay text. Screenshots of the judging
and results pages are saved under the test output."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest

from deft_app.store import Store
from deft_app.ui import JudgingApp, launch

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync"]
HOSTILE = '<script>window.__pwned = 1; document.title = "pwned"</script><img src=x onerror="window.__pwned = 2">'


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is missing: `make install` puts Debian's chromium at /usr/bin/chromium")
    tmp = tmp_path_factory.mktemp("judging")
    store = Store(tmp / "votes.db")
    store.add_items([{"id": f"q{i}", "dialogue": [{"role": "user", "content": f"Question number {i}?"}],
                      "category": "writing", "model_a": "dpo", "answer_a": f"Plain answer {i}.", "model_b": "deft",
                      "answer_b": HOSTILE if i == 0 else f"Filtered answer {i}."} for i in range(3)])
    for name in ("ann", "ann2"):
        store.add_annotator(name, "annotator-pw")
    store.add_annotator("boss", "admin-pw-123", "admin")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = JudgingApp(store, overlap=2)
    demo = launch(app, port=port, block=False)
    yield {"url": f"http://127.0.0.1:{port}/", "store": store, "tmp": tmp}
    demo.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


def login(browser, url, user, password):
    page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(url)
    page.get_by_label("username").fill(user)
    page.get_by_label("password").fill(password)
    page.get_by_role("button", name="Login").click()
    page.locator("#who").get_by_text(user).wait_for(timeout=30_000)
    return page, dialogs


def answers(page) -> tuple[str, str]:
    return (page.locator("#answer-left textarea").input_value(), page.locator("#answer-right textarea").input_value())


def test_judging_in_the_browser(served, browser, tmp_path):
    page, dialogs = login(browser, served["url"], "ann", "annotator-pw")
    assert "0 / 3" in page.locator("#progress").inner_text()
    assert page.locator("#dialogue textarea").input_value() == "User: Question number 0?"
    left, right = answers(page)
    # the hostile answer is shown as text and never runs
    assert HOSTILE in (left, right)
    assert page.evaluate("window.__pwned") is None and page.title() != "pwned" and dialogs == []
    assert page.get_by_role("tab", name="Results").count() == 0  # annotators get no results tab
    page.screenshot(path=str(tmp_path / "judging.png"), full_page=True)
    shutil.copy(tmp_path / "judging.png", served["tmp"] / "judging.png")

    # vote by click, then by key
    page.locator("#comment textarea").fill("the left one is clearer")
    page.locator("#vote-left").click()
    page.locator("#progress").get_by_text("1 / 3").wait_for()
    assert page.locator("#dialogue textarea").input_value() == "User: Question number 1?"
    page.locator("body").click(position={"x": 5, "y": 5})
    page.keyboard.press("2")
    page.locator("#progress").get_by_text("2 / 3").wait_for()
    votes = {v["item_id"]: v for v in served["store"].votes() if v["annotator"] == "ann"}
    assert set(votes) == {"q0", "q1"} and votes["q0"]["comment"] == "the left one is clearer"
    left_model_q0 = votes["q0"]["left_model"]
    assert votes["q0"]["verdict"] == ("a" if left_model_q0 == "dpo" else "b")

    # reload: logged in still, resumes at the third item
    page.reload()
    page.locator("#progress").get_by_text("2 / 3").wait_for(timeout=30_000)
    assert page.locator("#dialogue textarea").input_value() == "User: Question number 2?"

    # a second annotator gets the overlapping item first; its sides are its own
    page2, _ = login(browser, served["url"], "ann2", "annotator-pw")
    assert page2.locator("#dialogue textarea").input_value() == "User: Question number 0?"
    page2.keyboard.press("3")
    page2.locator("#progress").get_by_text("1 / 3").wait_for()
    assert [v["verdict"] for v in served["store"].votes() if v["annotator"] == "ann2"] == ["tie"]


def test_admin_results_and_export_in_the_browser(served, browser, tmp_path):
    store = served["store"]
    store.add_annotator("seed", "seed-password")
    store.record_vote("q1", "seed", "a", "dpo")
    store.record_vote("q2", "seed", "b", "dpo")
    n = len(store.votes())
    page, _ = login(browser, served["url"], "boss", "admin-pw-123")
    page.get_by_role("tab", name="Results").click()
    page.locator("#show-results").click()
    page.locator("#results").get_by_text("Position bias").wait_for(timeout=30_000)
    text = page.locator("#results").inner_text()
    assert f"{n} votes" in text and f"dpo\tdeft\t{n}\t" in text and "Position bias" in text
    page.locator("#results-plot img").wait_for(timeout=30_000)
    page.screenshot(path=str(tmp_path / "results.png"), full_page=True)
    shutil.copy(tmp_path / "results.png", served["tmp"] / "results.png")
    page.locator("#export").click()
    link = page.locator("#exports a", has_text="votes.jsonl")
    link.wait_for(timeout=30_000)
    url = link.evaluate("a => a.href")
    assert url.startswith(served["url"] + "deft-export/")
    fetched = page.request.get(url)
    assert fetched.status == 200 and fetched.headers["content-disposition"] == 'attachment; filename="votes.jsonl"'
    assert len(fetched.text().splitlines()) == n
    served["export_url"] = url


def test_an_annotator_cannot_fetch_an_export(served, browser):
    """The admin's live export link, its neighbours and the files beside the database: all
    refused to a logged-in annotator."""
    url = served.get("export_url")
    assert url, "runs after the admin's export test"
    page, _ = login(browser, served["url"], "ann2", "annotator-pw")
    assert page.request.get(url).status == 404
    assert page.request.get(url.replace("votes.jsonl", "votes.csv")).status == 404
    assert page.request.get(served["url"] + "deft-export/guess/votes.jsonl").status == 404
    (served["tmp"] / "exports").mkdir(exist_ok=True)
    (served["tmp"] / "exports" / "votes.jsonl").write_text('{"verdict": "a"}\n')  # an export on the server's disk
    for path in ("exports/votes.jsonl", "votes.db"):
        response = page.request.get(f"{served['url']}gradio_api/file={served['tmp'] / path}")
        assert response.status in (403, 404) and "verdict" not in response.text()


def test_wrong_password_stays_out(served, browser):
    page = browser.new_page()
    page.goto(served["url"])
    page.get_by_label("username").fill("ann")
    page.get_by_label("password").fill("not-the-password")
    page.get_by_role("button", name="Login").click()
    page.get_by_text("Incorrect").wait_for(timeout=10_000)
    assert page.locator("#progress").count() == 0
