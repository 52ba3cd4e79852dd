"""The Gradio judging app: annotators log in, read the organiser's guidelines, judge one item at
a time on each criterion (two anonymous answers, sides fixed per item and annotator), skip or
flag an item, take back their last vote; admins see the results per criterion, each
annotator's progress, the flags, and download the votes.

Answers are shown as Markdown rendered through a sanitiser (render.py: no raw HTML, no script,
no links but http(s) and mailto), or as raw text on a toggle. Every admin action checks the
caller's role on the server, whatever the page shows; exports are built per download and
served only to the admin's own login (downloads.py), never from a folder on a static path."""

from __future__ import annotations

import base64
import html
import tempfile
from pathlib import Path

import gradio as gr
from fastapi import HTTPException, Request, Response

from deft_app.downloads import DownloadGrants
from deft_app.export import EXPORTS
from deft_app.render import answer_html, raw_html
from deft_app.results import plot_results, results_by_criterion, with_aliases
from deft_app.settings import JudgingSettings
from deft_app.store import FULL, HOLD_SECONDS, STORED, Store, left_is_a
from deft_app.text import markdown_text, visible_controls

SIDES = ("left", "right", "tie", "both_bad")
SIDE_LABELS = {"left": "A is better", "right": "B is better", "tie": "Tie", "both_bad": "Both bad"}
KEY_ROWS = ("1234", "qwer", "asdf", "zxcv")  # the verdict keys of criterion 1, 2, 3, 4
FLAG_LABELS = {"broken": "Broken item", "offensive": "Offensive content", "identical": "Identical answers",
               "other": "Other problem"}
FLAG_REASON_OF = {label: reason for reason, label in FLAG_LABELS.items()}
SHORTCUTS = """
<script>
document.addEventListener("keydown", (event) => {
  const target = event.target;
  const tag = (target.tagName || "").toLowerCase();
  const typing = tag === "textarea" || (tag === "input" && target.type !== "radio" && target.type !== "checkbox");
  if (typing || event.ctrlKey || event.metaKey || event.altKey) return;
  const single = {"1": "vote-left", "2": "vote-right", "3": "vote-tie", "4": "vote-both-bad"};
  if (document.getElementById("vote-left")) {
    const button = single[event.key] && document.getElementById(single[event.key]);
    if (button) { event.preventDefault(); button.click(); }
    return;
  }
  const rows = ["1234", "qwer", "asdf", "zxcv"];
  for (let i = 0; i < rows.length; i++) {
    const k = rows[i].indexOf((event.key || "").toLowerCase());
    const group = document.getElementById("criterion-" + i);
    if (k >= 0 && group) {
      const options = group.querySelectorAll("input[type=radio]");
      if (options[k]) { event.preventDefault(); options[k].click(); }
      return;
    }
  }
  if (event.key === "Enter") {
    const submit = document.getElementById("submit");
    if (submit) { event.preventDefault(); submit.click(); }
  }
});
</script>
"""
ANSWER_CSS = """
.answer pre { white-space: pre-wrap; overflow-x: auto; padding: 6px 8px; background: var(--background-fill-secondary); }
.answer { border: 1px solid var(--border-color-primary); border-radius: 6px; padding: 0 12px; min-height: 8em; }
"""


def dialogue_text(turns: list[dict]) -> str:
    names = {"user": "User", "assistant": "Assistant", "system": "System"}
    return visible_controls("\n\n".join(f"{names.get(t['role'], t['role'])}: {t['content']}" for t in turns))


def verdict_for(side: str, item: dict) -> str:
    """The stored verdict (in model terms) for a click on a side."""
    if side in ("tie", "both_bad"):
        return side
    chosen = item["left"] if side == "left" else item["right"]
    return "a" if chosen == item["model_a"] else "b"


def results_markdown(by_criterion: dict[str, dict]) -> str:
    """The admin's results, one section per criterion when there are several."""
    if len(by_criterion) == 1:
        return criterion_markdown(next(iter(by_criterion.values())))
    return "\n\n".join(f"### {markdown_text(c)}\n\n{criterion_markdown(r)}" for c, r in by_criterion.items())


def criterion_markdown(results: dict) -> str:
    """One criterion's results as Markdown; every name from the data is escaped (markdown_text)."""
    e = markdown_text
    lines = [f"**{results['votes']} votes**", "",
             "| model A | model B | n | win | tie | loss | win rate (ties half) | 95% CI |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results["pairs"]:
        lo, hi = r["win_rate_ci"]
        lines.append(f"| {e(r['model_a'])} | {e(r['model_b'])} | {r['n']} | {r['win']} | {r['tie']} | {r['loss']} | "
                     f"{r['win_rate']:.3f} | {lo:.3f} - {hi:.3f} |")
    if results["strengths"]:
        lines += ["", "| model | Bradley-Terry strength | 95% CI |", "|---|---|---|"]
        lines += [f"| {e(m)} | {s['strength']:.3f} | {s['ci'][0]:.3f} - {s['ci'][1]:.3f} |"
                  for m, s in results["strengths"].items()]
    pb = results["position_bias"]
    lines += ["", f"Position bias: the left answer won {pb['left_win_rate']:.3f} of {pb['decided']} decided votes."
              if pb["decided"] else "Position bias: no decided vote yet (every vote a tie or both bad)."]
    ag = results["agreement"]
    if not ag["cohen"] and not ag["fleiss"]:
        lines += ["", "Agreement: fewer than two items judged by the same annotators so far."]
    if ag["cohen"]:
        lines += ["", "| annotators | shared items | Cohen's kappa |", "|---|---|---|"]
        lines += [f"| {e(k)} | {v['items']} | {v['kappa']:.3f} |" for k, v in ag["cohen"].items()]
    if ag["fleiss"]:
        f = ag["fleiss"]
        lines += ["", f"Fleiss' kappa: {f['kappa']:.3f} over {f['items']} items "
                      f"with {f['annotators_per_item']} annotators each."]
    for category, rows in results["by_category"].items():
        lines += ["", f"**{e(category)}**: " + "; ".join(f"{e(r['model_a'])} vs {e(r['model_b'])}: "
                                                          f"{r['win_rate']:.3f} ({r['win']}/{r['tie']}/{r['loss']})"
                                                          for r in rows)]
    return "\n".join(lines)


def progress_markdown(rows: list[dict]) -> str:
    """Per annotator: items judged, skipped and flagged, median seconds per judged item."""
    def seconds(value):
        return "" if value is None else f"{value:.0f}"

    lines = ["| annotator | judged | skipped | flagged | median seconds per item |", "|---|---|---|---|---|"]
    lines += [f"| {markdown_text(r['annotator'])} | {r['done']} | {r['skipped']} | {r['flagged']} | "
              f"{seconds(r['median_seconds'])} |" for r in rows]
    return "\n".join(lines)


def flags_markdown(flags: list[dict]) -> str:
    if not flags:
        return "No flagged items."
    e = markdown_text
    lines = ["| item | annotator | reason | note |", "|---|---|---|---|"]
    lines += [f"| {e(f['item_id'])} | {e(f['annotator'])} | {FLAG_LABELS[f['reason']]} | {e(f['note'])} |"
              for f in flags]
    return "\n".join(lines)


DOWNLOAD_ROUTE = "deft-export"
FULL_NOTE = ("<p>Your last item was completed by other annotators while it waited, so that vote was not "
             "needed; here is a new one.</p>")
UNDONE_NOTE = "<p>Your last vote was taken back: judge this item again.</p>"
NOTHING_TO_UNDO = "<p>There is no vote to take back here.</p>"
SKIPPED_NOTE = "<p>Skipped: the item goes to someone else.</p>"
ANSWER_ALL = "<p>Answer every question before submitting.</p>"


def answer_view(text: str, raw: bool) -> str:
    return f"<div class='answer'>{raw_html(text) if raw else answer_html(text)}</div>"


class JudgingApp:
    def __init__(self, store: Store, overlap: int, hold: float = HOLD_SECONDS, settings: JudgingSettings | None = None):
        self.store, self.overlap, self.hold = store, overlap, hold
        self.settings = settings or JudgingSettings()
        self.criteria = self.settings.criterion_names
        # one choice per criterion among the outputs when there are several (one criterion: buttons)
        self.choice_outputs = len(self.criteria) if len(self.criteria) > 1 else 0
        self.secret = store.secret()
        self.grants = DownloadGrants()

    def _require_admin(self, request: gr.Request) -> str:
        user = getattr(request, "username", None)
        if not user or self.store.role(user) != "admin":
            raise gr.Error("Only an admin can see results and export votes.")
        return user

    def _show(self, user: str, note: str = "", can_undo: bool = False):
        """(state, progress, dialogue, left, right, comment, raw toggle, one cleared choice per
        criterion when there are several) for the annotator's next item, which stays reserved
        for them until they vote, skip or flag it, or the hold expires."""
        item = self.store.next_item(user, self.overlap, self.hold)
        progress = self._progress(user, note)
        choices = [None] * self.choice_outputs
        if item is None:
            return None, progress + "<p>All done, thank you.</p>", "", "", "", "", False, *choices
        a_left = left_is_a(item["id"], user, self.secret)
        left, right = (item["answer_a"], item["answer_b"]) if a_left else (item["answer_b"], item["answer_a"])
        state = {"id": item["id"], "model_a": item["model_a"], "model_b": item["model_b"],
                 "left": item["model_a"] if a_left else item["model_b"],
                 "right": item["model_b"] if a_left else item["model_a"], "texts": (left, right), "undo": can_undo}
        return (state, progress, dialogue_text(item["dialogue"]), answer_view(left, False), answer_view(right, False),
                "", False, *choices)

    def on_load(self, request: gr.Request):
        user = request.username
        return (*self._show(user), gr.update(visible=self.store.role(user) == "admin"),
                f"Logged in as **{markdown_text(user)}**")

    def vote(self, side: str, comment: str, state: dict | None, request: gr.Request):
        """One click on one criterion (the single-criterion layout)."""
        return self._record(request.username, {self.criteria[0]: side}, comment, state)

    def submit(self, comment: str, state: dict | None, request: gr.Request, *sides):
        """The choices for every criterion at once (the several-criteria layout)."""
        if state is not None and any(side is None for side in sides):
            return self._note_only(request.username, ANSWER_ALL)
        return self._record(request.username, dict(zip(self.criteria, sides)), comment, state)

    def _record(self, user: str, sides: dict[str, str], comment: str, state: dict | None):
        if state is None:
            return self._show(user)
        verdicts = {c: verdict_for(side, state) for c, side in sides.items()}
        outcome = self.store.record_verdicts(state["id"], user, verdicts, state["left"], comment or "",
                                             overlap=self.overlap)
        note = FULL_NOTE if outcome == FULL else ""
        if outcome == STORED and self.settings.reveal_models:
            name = lambda side: html.escape(self.settings.aliases.get(state[side], state[side]))  # noqa: E731
            note = f"<p>Your last item: A was <b>{name('left')}</b>, B was <b>{name('right')}</b>.</p>"
        return self._show(user, note, can_undo=outcome == STORED)

    def _progress(self, user: str, note: str) -> str:
        done, total = self.store.progress(user, self.overlap)
        # numbers and fixed text only in this HTML (notes with names from the data escape them)
        return (f"<div><b>{done} / {total} judged</b> <progress value='{int(done)}' max='{int(max(total, 1))}' "
                f"style='width: 60%'></progress></div>{note}")

    def _note_only(self, user: str, note: str):
        """The item stays as it is (and its choices); only the note under the progress changes."""
        progress = self._progress(user, note)
        return gr.skip(), progress, *[gr.skip()] * (5 + self.choice_outputs)

    def undo(self, state: dict | None, request: gr.Request):
        """Take back the last vote, from the item after it; once, and not after a skip or flag."""
        user = request.username
        if state is None or not state.get("undo") or self.store.undo_last(user, self.hold) is None:
            return self._show(user, NOTHING_TO_UNDO, can_undo=False)
        return self._show(user, UNDONE_NOTE)

    def skip(self, state: dict | None, request: gr.Request):
        if state is not None:
            self.store.skip(state["id"], request.username)
        return self._show(request.username, SKIPPED_NOTE if state is not None else "")

    def flag(self, reason_label: str | None, note: str, state: dict | None, request: gr.Request):
        reason = FLAG_REASON_OF.get(reason_label)
        if state is None or reason is None:
            return self._note_only(request.username, "<p>Choose a reason to flag the item.</p>")
        self.store.flag(state["id"], request.username, reason, note or "")
        return self._show(request.username, f"<p>Flagged ({html.escape(reason_label)}): thank you. The item goes "
                                            "to the organiser's list.</p>")

    def show_raw(self, raw: bool, state: dict | None):
        if state is None:
            return gr.skip(), gr.skip()
        return tuple(answer_view(text, raw) for text in state["texts"])

    def results(self, request: gr.Request):
        self._require_admin(request)
        votes = with_aliases(self.store.votes(), self.settings.aliases)
        by_criterion = results_by_criterion(votes, self.criteria)
        plot = ""
        if any(r["pairs"] for r in by_criterion.values()):
            plot = inline_plot(by_criterion)
        return (results_markdown(by_criterion), plot, progress_markdown(self.store.annotator_progress()),
                flags_markdown(self.store.flags()))

    def export(self, request: gr.Request):
        """Download links for this admin's login, valid for a few minutes; each download is
        built from the votes at the moment it is fetched."""
        user = self._require_admin(request)
        token = self.grants.grant(user, request.cookies)
        links = " · ".join(f"[{name}]({DOWNLOAD_ROUTE}/{token}/{name})" for name in EXPORTS)
        minutes = round(self.grants.seconds / 60)
        return f"{links}  \n(links for your login only, valid {minutes} minutes; every vote as of the download)"

    def download(self, token: str, name: str, request: Request) -> Response:
        """The download route: the same 404 for a wrong name, a stale or foreign link and a
        non-admin, so that nothing tells an annotator an export exists."""
        user = self.grants.holder(token, request.cookies)
        if name not in EXPORTS or user is None or self.store.role(user) != "admin":
            raise HTTPException(status_code=404)
        build, media_type = EXPORTS[name]
        return Response(build(self.store.votes()), media_type=media_type,
                        headers={"Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store"})

    def build(self) -> gr.Blocks:
        settings = self.settings
        with gr.Blocks(title="DEFT side-by-side judging") as demo:
            state = gr.State(None)
            with gr.Tab("Judge"):
                with gr.Row():
                    who = gr.Markdown(elem_id="who")
                    gr.Button("Log out", link="/logout", size="sm", scale=0, elem_id="logout")
                if settings.content_warning:
                    gr.HTML(f"<div role='alert'><b>Content warning:</b> {html.escape(settings.content_warning)}</div>",
                            elem_id="content-warning")
                if settings.guidelines:
                    with gr.Accordion("Guidelines", open=False, elem_id="guidelines"):
                        gr.HTML(answer_html(settings.guidelines))
                progress = gr.HTML(elem_id="progress")
                dialogue = gr.Textbox(label="Dialogue", interactive=False, lines=6, elem_id="dialogue")
                raw = gr.Checkbox(label="Show the answers as raw text", value=False, elem_id="raw-toggle")
                with gr.Row():
                    with gr.Column():
                        gr.Markdown("**Answer A**")
                        left = gr.HTML(elem_id="answer-left")
                    with gr.Column():
                        gr.Markdown("**Answer B**")
                        right = gr.HTML(elem_id="answer-right")
                comment = gr.Textbox(label="Comment (optional)", elem_id="comment")
                radios, buttons = [], []
                if len(settings.criteria) == 1:
                    gr.Markdown(markdown_text(settings.criteria[0].question), elem_id="question-0")
                    with gr.Row():
                        buttons = [gr.Button(f"{SIDE_LABELS[side]} ({key})", elem_id=f"vote-{side.replace('_', '-')}")
                                   for side, key in zip(SIDES, KEY_ROWS[0])]
                else:
                    for i, criterion in enumerate(settings.criteria):
                        keys = " ".join(KEY_ROWS[i])
                        radios.append(gr.Radio([(SIDE_LABELS[side], side) for side in SIDES],
                                               label=f"{criterion.question} (keys {keys})", elem_id=f"criterion-{i}"))
                    submit = gr.Button("Submit (Enter)", variant="primary", elem_id="submit")
                with gr.Row():
                    undo = gr.Button("Undo my last vote", size="sm", elem_id="undo")
                    skip = gr.Button("Skip this item", size="sm", elem_id="skip")
                    reason = gr.Dropdown(list(FLAG_LABELS.values()), label="Flag reason", value=None,
                                         elem_id="flag-reason")
                    flag = gr.Button("Flag this item", size="sm", elem_id="flag")
            with gr.Tab("Results", visible=False) as results_tab:
                refresh = gr.Button("Show results", elem_id="show-results")
                table = gr.Markdown(elem_id="results")
                plot = gr.HTML(elem_id="results-plot")
                gr.Markdown("**Annotators**")
                annotators = gr.Markdown(elem_id="annotator-progress")
                gr.Markdown("**Flagged items**")
                flags = gr.Markdown(elem_id="flags")
                export = gr.Button("Export votes (JSONL, CSV)", elem_id="export")
                files = gr.Markdown(elem_id="exports")
            shown = [state, progress, dialogue, left, right, comment, raw, *radios]
            demo.load(self.on_load, outputs=[*shown, results_tab, who])
            for side, button in zip(SIDES, buttons):
                button.click(_voter(self, side), [comment, state], shown, concurrency_limit=1)
            if radios:
                submit.click(self.submit, [comment, state, *radios], shown, concurrency_limit=1)
            undo.click(self.undo, [state], shown, concurrency_limit=1)
            skip.click(self.skip, [state], shown, concurrency_limit=1)
            flag.click(self.flag, [reason, comment, state], shown, concurrency_limit=1)
            raw.input(self.show_raw, [raw, state], [left, right])
            refresh.click(self.results, None, [table, plot, annotators, flags])
            export.click(self.export, None, files)
        return demo


def inline_plot(by_criterion: dict[str, dict]) -> str:
    """The win-rate plot as an <img> whose data travels inside the admin's own response. An image
    component would have Gradio keep the PNG in its cache under /gradio_api/file=..., where any
    logged-in user holding the URL could fetch it."""
    with tempfile.TemporaryDirectory() as tmp:
        data = plot_results(by_criterion, Path(tmp) / "results.png").read_bytes()
    return f'<img alt="Win rates" src="data:image/png;base64,{base64.b64encode(data).decode()}" style="max-width:100%">'


def _voter(app: JudgingApp, side: str):
    def vote(comment: str, state: dict | None, request: gr.Request):
        return app.vote(side, comment, state, request)
    return vote


def launch(app: JudgingApp, host: str = "127.0.0.1", port: int | None = None, block: bool = True):
    demo = app.build()
    demo.launch(server_name=host, server_port=port, auth=lambda user, password: app.store.authenticate(user, password)
                is not None, auth_message="DEFT judging: log in with the name and password your organiser gave you.",
                head=SHORTCUTS, css=ANSWER_CSS, prevent_thread_lock=True, quiet=True, show_error=True,
                footer_links=["gradio", "settings"])  # no API page link
    demo.app.add_api_route(f"/{DOWNLOAD_ROUTE}/{{token}}/{{name}}", app.download, methods=["GET"])
    print(f"deft-app: serving at {demo.local_url}", flush=True)
    if block:
        demo.block_thread()
    return demo
