"""The Gradio judging app: annotators log in, judge one item at a time (two anonymous answers,
sides fixed per item and annotator), and admins see the results and download the votes.

Answers are shown in read-only text boxes, never rendered as HTML. Every admin action checks
the caller's role on the server, whatever the page shows; exports are built per download and
served only to the admin's own login (downloads.py), never from a folder on a static path."""

from __future__ import annotations

import tempfile
from pathlib import Path

import gradio as gr
from fastapi import HTTPException, Request, Response
from PIL import Image

from deft_app.downloads import DownloadGrants
from deft_app.export import EXPORTS
from deft_app.results import all_results, plot_results
from deft_app.store import FULL, HOLD_SECONDS, Store, left_is_a
from deft_app.text import markdown_text, visible_controls

SIDES = ("left", "right", "tie", "both_bad")
SHORTCUTS = """
<script>
document.addEventListener("keydown", (event) => {
  const tag = (event.target.tagName || "").toLowerCase();
  if (tag === "textarea" || tag === "input" || event.ctrlKey || event.metaKey || event.altKey) return;
  const ids = {"1": "vote-left", "2": "vote-right", "3": "vote-tie", "4": "vote-both-bad"};
  const button = ids[event.key] && document.getElementById(ids[event.key]);
  if (button) { event.preventDefault(); button.click(); }
});
</script>
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


def results_markdown(results: dict) -> str:
    """The admin's results as Markdown; every name from the data is escaped (markdown_text)."""
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
    lines += ["", f"Position bias: the left answer won {pb['left_win_rate']:.3f} of {pb['decided']} decided votes."]
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


DOWNLOAD_ROUTE = "deft-export"
FULL_NOTE = ("<p>Your last item was completed by other annotators while it waited, so that vote was not "
             "needed; here is a new one.</p>")


class JudgingApp:
    def __init__(self, store: Store, overlap: int, hold: float = HOLD_SECONDS):
        self.store, self.overlap, self.hold = store, overlap, hold
        self.secret = store.secret()
        self.grants = DownloadGrants()

    def _require_admin(self, request: gr.Request) -> str:
        user = getattr(request, "username", None)
        if not user or self.store.role(user) != "admin":
            raise gr.Error("Only an admin can see results and export votes.")
        return user

    def _show(self, user: str, note: str = ""):
        """(state, progress, dialogue, left, right, comment) for the annotator's next item,
        which stays reserved for them until they vote or the hold expires."""
        item = self.store.next_item(user, self.overlap, self.hold)
        done, total = self.store.progress(user, self.overlap)
        # numbers and fixed text only in this HTML: nothing from the data reaches it
        progress = (f"<div><b>{done} / {total} judged</b> <progress value='{int(done)}' max='{int(max(total, 1))}' "
                    f"style='width: 60%'></progress></div>{note}")
        if item is None:
            return None, progress + "<p>All done, thank you.</p>", "", "", "", ""
        a_left = left_is_a(item["id"], user, self.secret)
        state = {"id": item["id"], "model_a": item["model_a"], "model_b": item["model_b"],
                 "left": item["model_a"] if a_left else item["model_b"],
                 "right": item["model_b"] if a_left else item["model_a"]}
        left, right = (item["answer_a"], item["answer_b"]) if a_left else (item["answer_b"], item["answer_a"])
        return state, progress, dialogue_text(item["dialogue"]), visible_controls(left), visible_controls(right), ""

    def on_load(self, request: gr.Request):
        user = request.username
        return (*self._show(user), gr.update(visible=self.store.role(user) == "admin"),
                f"Logged in as **{markdown_text(user)}**")

    def vote(self, side: str, comment: str, state: dict | None, request: gr.Request):
        user = request.username
        outcome = None
        if state is not None:
            outcome = self.store.record_vote(state["id"], user, verdict_for(side, state), state["left"],
                                             comment or "", overlap=self.overlap)
        return self._show(user, FULL_NOTE if outcome == FULL else "")

    def results(self, request: gr.Request):
        self._require_admin(request)
        results = all_results(self.store.votes())
        plot = None
        if results["pairs"]:  # drawn in memory: no file of results is left on a served path
            with tempfile.TemporaryDirectory() as tmp:
                with Image.open(plot_results(results, Path(tmp) / "results.png")) as image:
                    plot = image.copy()
        return results_markdown(results), plot

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
        with gr.Blocks(title="DEFT side-by-side judging") as demo:
            state = gr.State(None)
            with gr.Tab("Judge"):
                with gr.Row():
                    who = gr.Markdown(elem_id="who")
                    gr.Button("Log out", link="/logout", size="sm", scale=0, elem_id="logout")
                progress = gr.HTML(elem_id="progress")
                dialogue = gr.Textbox(label="Dialogue", interactive=False, lines=6, elem_id="dialogue")
                with gr.Row():
                    left = gr.Textbox(label="Answer A", interactive=False, lines=12, elem_id="answer-left")
                    right = gr.Textbox(label="Answer B", interactive=False, lines=12, elem_id="answer-right")
                comment = gr.Textbox(label="Comment (optional)", elem_id="comment")
                with gr.Row():
                    buttons = [gr.Button("A is better (1)", elem_id="vote-left"),
                               gr.Button("B is better (2)", elem_id="vote-right"),
                               gr.Button("Tie (3)", elem_id="vote-tie"),
                               gr.Button("Both bad (4)", elem_id="vote-both-bad")]
            with gr.Tab("Results", visible=False) as results_tab:
                refresh = gr.Button("Show results", elem_id="show-results")
                table = gr.Markdown(elem_id="results")
                plot = gr.Image(label="Win rates", type="pil", interactive=False, elem_id="results-plot")
                export = gr.Button("Export votes (JSONL, CSV)", elem_id="export")
                files = gr.Markdown(elem_id="exports")
            shown = [state, progress, dialogue, left, right, comment]
            demo.load(self.on_load, outputs=[*shown, results_tab, who])
            for side, button in zip(SIDES, buttons):
                button.click(_voter(self, side), [comment, state], shown, concurrency_limit=1)
            refresh.click(self.results, None, [table, plot])
            export.click(self.export, None, files)
        return demo


def _voter(app: JudgingApp, side: str):
    def vote(comment: str, state: dict | None, request: gr.Request):
        return app.vote(side, comment, state, request)
    return vote


def launch(app: JudgingApp, host: str = "127.0.0.1", port: int | None = None, block: bool = True):
    demo = app.build()
    demo.launch(server_name=host, server_port=port, auth=lambda user, password: app.store.authenticate(user, password)
                is not None, auth_message="DEFT judging: log in with the name and password your organiser gave you.",
                head=SHORTCUTS, prevent_thread_lock=True, quiet=True, show_error=True,
                footer_links=["gradio", "settings"])  # no API page link
    demo.app.add_api_route(f"/{DOWNLOAD_ROUTE}/{{token}}/{{name}}", app.download, methods=["GET"])
    print(f"deft-app: serving at {demo.local_url}", flush=True)
    if block:
        demo.block_thread()
    return demo
