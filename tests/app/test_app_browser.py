"""The judging app in a real browser (Playwright driving Debian's Chromium): log in, vote by
click and by key, reload and resume, a second annotator on an overlapping item, the admin's
results and export, and a hostile answer that must stay text, rendered and raw; with two
criteria: the guidelines and content warning, keys per criterion, an incomplete submit,
undo, skip and flag, and the admin's results per criterion, annotators' progress and flags.
Screenshots of the judging and results pages are saved under the test output (the README's
come from the two-criteria study)."""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path

import gradio
import pytest

from deft_app.settings import Criterion, JudgingSettings
from deft_app.store import Store
from deft_app.ui import JudgingApp, launch

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync"]
HOSTILE = '<script>window.__pwned = 1; document.title = "pwned"</script><img src=x onerror="window.__pwned = 2">'
MARKDOWN = ("Two steps:\n\n1. Boil the water.\n2. Pour it.\n\n```python\nprint('tea')\n```\n\n"
            "[a link](javascript:window.__pwned=3) and *emphasis*.")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is missing: `make install` puts Debian's chromium at /usr/bin/chromium")
    tmp = tmp_path_factory.mktemp("judging")
    store = Store(tmp / "votes.db")
    store.add_items([{"id": f"q{i}", "dialogue": [{"role": "user", "content": f"Question number {i}?"}],
                      "category": "writing", "model_a": "dpo", "answer_a": MARKDOWN if i == 0 else f"Plain answer {i}.",
                      "model_b": "deft", "answer_b": HOSTILE if i == 0 else f"Filtered answer {i}."} for i in range(3)])
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
    return tuple(page.locator(f"#answer-{side} .answer").inner_text().strip() for side in ("left", "right"))


def nothing_ran(page, dialogs) -> bool:
    live = page.locator("#answer-left script, #answer-right script, #answer-left img, #answer-right img").count()
    return live == 0 and page.evaluate("window.__pwned") is None and page.title() != "pwned" and dialogs == []


def test_judging_in_the_browser(served, browser, tmp_path):
    page, dialogs = login(browser, served["url"], "ann", "annotator-pw")
    assert "0 / 3" in page.locator("#progress").inner_text()
    assert page.locator("#dialogue textarea").input_value() == "User: Question number 0?"
    left, right = answers(page)
    # the hostile answer is shown as text and never runs; the Markdown one is rendered
    assert HOSTILE in (left, right) and nothing_ran(page, dialogs)
    markdown_side = "left" if HOSTILE == right else "right"
    rendered = page.locator(f"#answer-{markdown_side} .answer")
    assert rendered.locator("ol li").count() == 2
    assert rendered.locator("pre code").inner_text().strip() == "print('tea')"
    assert rendered.locator("em").inner_text() == "emphasis"
    assert rendered.locator("a").count() == 0  # the javascript: link stays text
    # the raw text on the toggle, the same hostile text still inert
    page.locator("#raw-toggle input").check()
    page.locator(f"#answer-{markdown_side} pre.raw-answer").wait_for()
    assert answers(page) == ((MARKDOWN, HOSTILE) if markdown_side == "left" else (HOSTILE, MARKDOWN))
    assert nothing_ran(page, dialogs)
    page.locator("#raw-toggle input").uncheck()
    page.locator(f"#answer-{markdown_side} ol").wait_for()
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
    fetched_urls = []
    page.on("request", lambda r: fetched_urls.append(r.url))
    served["results_shown_at"] = time.time()
    page.locator("#show-results").click()
    page.locator("#results").get_by_text("Position bias").wait_for(timeout=30_000)
    text = page.locator("#results").inner_text()
    assert f"{n} votes" in text and f"dpo\tdeft\t{n}\t" in text and "Position bias" in text
    page.locator("#results-plot img").wait_for(timeout=30_000)
    # the plot comes inline in the admin's own response, not from a URL someone else could hold
    assert page.locator("#results-plot img").get_attribute("src").startswith("data:image/png;base64,")
    assert page.locator("#results-plot img").evaluate("img => img.naturalWidth") > 300
    served["admin_file_urls"] = [u for u in fetched_urls if "/file=" in u]
    assert served["admin_file_urls"] == []
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
    # nothing of the results was put in Gradio's file cache, and no file URL the admin's page used serves
    cache = Path(gradio.utils.get_upload_folder())
    cached = [p for p in cache.rglob("*") if p.is_file() and p.stat().st_mtime >= served["results_shown_at"] - 1]
    assert [p for p in cached if p.read_bytes()[:4] == b"\x89PNG"] == []
    for admin_url in served["admin_file_urls"]:
        assert page.request.get(admin_url).status == 404


def test_wrong_password_stays_out(served, browser):
    page = browser.new_page()
    page.goto(served["url"])
    page.get_by_label("username").fill("ann")
    page.get_by_label("password").fill("not-the-password")
    page.get_by_role("button", name="Login").click()
    page.get_by_text("Incorrect").wait_for(timeout=10_000)
    assert page.locator("#progress").count() == 0


@pytest.fixture(scope="module")
def two_criteria(tmp_path_factory):
    """The paper's human evaluation: harmless and helpful, with guidelines and a content warning."""
    tmp = tmp_path_factory.mktemp("criteria")
    store = Store(tmp / "votes.db")
    store.add_items([{"id": f"c{i}", "dialogue": [{"role": "user", "content": f"How do I make tea, step {i}?"}],
                      "category": "helpful-base", "model_a": "runs/dpo-full", "answer_a": MARKDOWN,
                      "model_b": "runs/deft-dpo-5pct", "answer_b": f"Boil water, add leaves, wait {i + 3} minutes."}
                     for i in range(5)])
    store.add_annotator("ann", "annotator-pw")
    store.add_annotator("boss", "admin-pw-123", "admin")
    settings = JudgingSettings(criteria=[Criterion("harmless", "Which answer is more harmless?"),
                                         Criterion("helpful", "Which answer is more helpful?")],
                               guidelines="Judge each answer on its own.\n\n- **Harmless**: could it hurt anyone?\n"
                                          "- **Helpful**: does it answer the question?",
                               content_warning="Some answers may be offensive.",
                               aliases={"runs/dpo-full": "DPO 100%", "runs/deft-dpo-5pct": "DEFT-DPO 5%"})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = launch(JudgingApp(store, overlap=1, settings=settings), port=port, block=False)
    yield {"url": f"http://127.0.0.1:{port}/", "store": store, "tmp": tmp}
    demo.close()


def choice(page, criterion: int) -> str | None:
    checked = page.locator(f"#criterion-{criterion} input[type=radio]:checked")
    return checked.get_attribute("value") if checked.count() else None


def test_two_criteria_undo_skip_and_flag_in_the_browser(two_criteria, browser, tmp_path):
    store = two_criteria["store"]
    page, dialogs = login(browser, two_criteria["url"], "ann", "annotator-pw")
    assert page.locator("#content-warning").inner_text().strip() == "Content warning: Some answers may be offensive."
    page.locator("#guidelines").get_by_text("Guidelines").click()
    page.locator("#guidelines").get_by_text("could it hurt anyone?").wait_for()
    assert page.locator("#guidelines strong").first.inner_text() == "Harmless"
    assert page.locator("#vote-left").count() == 0 and page.locator("#submit").count() == 1
    # keys: 1 2 3 4 for the first criterion, q w e r for the second, Enter submits
    page.locator("body").click(position={"x": 5, "y": 5})
    page.keyboard.press("1")
    page.keyboard.press("e")
    assert (choice(page, 0), choice(page, 1)) == ("left", "tie")
    page.screenshot(path=str(two_criteria["tmp"] / "judging.png"), full_page=True)
    first = page.locator("#dialogue textarea").input_value()
    page.keyboard.press("Enter")
    page.locator("#progress").get_by_text("1 / 5").wait_for()
    verdicts = {v["criterion"]: v["verdict"] for v in store.votes()}
    assert verdicts["helpful"] == "tie" and verdicts["harmless"] in ("a", "b") and len(verdicts) == 2
    assert (choice(page, 0), choice(page, 1)) == (None, None)  # cleared for the next item
    # an incomplete submit stores nothing and says why
    second = page.locator("#dialogue textarea").input_value()
    page.locator("#criterion-0").get_by_text("B is better").click()
    page.locator("#submit").click()
    page.locator("#progress").get_by_text("Answer every question").wait_for()
    assert len(store.votes()) == 2 and choice(page, 0) == "right"
    page.locator("#criterion-1").get_by_text("Both bad").click()
    page.locator("#submit").click()
    page.locator("#progress").get_by_text("2 / 5").wait_for()
    # undo from the next item: the second item comes back, its vote gone (the audit keeps it)
    page.locator("#undo").click()
    page.locator("#progress").get_by_text("taken back").wait_for()
    assert page.locator("#dialogue textarea").input_value() == second and len(store.votes()) == 2
    assert [a["new_verdict"] for a in store.audit()][-2:] == [None, None]
    page.locator("#undo").click()  # only once
    page.locator("#progress").get_by_text("no vote to take back").wait_for()
    page.locator("body").click(position={"x": 5, "y": 5})
    page.keyboard.press("2")
    page.keyboard.press("w")
    page.keyboard.press("Enter")
    page.locator("#progress").get_by_text("2 / 5").wait_for()
    assert first != second and len(store.votes()) == 4
    # skip, then flag with a reason
    skipped = page.locator("#dialogue textarea").input_value()
    page.locator("#skip").click()
    page.locator("#progress").get_by_text("Skipped").wait_for()
    assert page.locator("#progress").inner_text().startswith("2 / 4")
    assert page.locator("#dialogue textarea").input_value() != skipped
    page.locator("#flag-reason input").click()
    page.get_by_role("option", name="Identical answers").click()
    page.locator("#comment textarea").fill("both say the same")
    page.locator("#flag").click()
    page.locator("#progress").get_by_text("Flagged (Identical answers)").wait_for()
    assert [(f["reason"], f["note"]) for f in store.flags()] == [("identical", "both say the same")]
    assert nothing_ran(page, dialogs)

    admin, _ = login(browser, two_criteria["url"], "boss", "admin-pw-123")
    admin.get_by_role("tab", name="Results").click()
    admin.locator("#show-results").click()
    admin.locator("#annotator-progress").get_by_role("cell", name="ann", exact=True).wait_for(timeout=30_000)
    assert [h.inner_text() for h in admin.locator("#results h3").all()] == ["harmless", "helpful"]
    text = admin.locator("#results").inner_text()
    assert "DPO 100%\tDEFT-DPO 5%\t2\t" in text and "runs/" not in text
    assert "ann\t2\t1\t1\t" in admin.locator("#annotator-progress").inner_text()
    assert "Identical answers" in admin.locator("#flags").inner_text()
    admin.locator("#results-plot img").wait_for(timeout=30_000)
    admin.screenshot(path=str(two_criteria["tmp"] / "results.png"), full_page=True)
    for name in ("judging.png", "results.png"):
        shutil.copy(two_criteria["tmp"] / name, tmp_path / name)

