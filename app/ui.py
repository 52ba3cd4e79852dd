"""The Gradio judging app: annotators log in, judge one item at a time (two anonymous answers,
sides fixed per item and annotator), and admins see the results and export the votes.

Answers are shown in read-only text boxes, never rendered as HTML. Every admin action checks
the caller's role on the server, whatever the page shows."""

from __future__ import annotations

import time
from pathlib import Path

import gradio as gr

from deft_app.export import export_votes
from deft_app.results import all_results, plot_results
from deft_app.store import Store, left_is_a
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


class JudgingApp:
    def __init__(self, store: Store, overlap: int, export_dir: str | Path):
        self.store, self.overlap, self.export_dir = store, overlap, Path(export_dir)
        self.secret = store.secret()

    def _require_admin(self, request: gr.Request) -> str:
        user = getattr(request, "username", None)
        if not user or self.store.role(user) != "admin":
            raise gr.Error("Only an admin can see results and export votes.")
        return user

    def _show(self, user: str):
        """(state, progress, dialogue, left, right, comment) for the annotator's next item."""
        done, total = self.store.progress(user, self.overlap)
        item = self.store.next_item(user, self.overlap)
        # numbers only in this HTML: nothing from the data reaches it
        progress = (f"<div><b>{done} / {total} judged</b> <progress value='{int(done)}' max='{int(max(total, 1))}' "
                    f"style='width: 60%'></progress></div>")
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
        if state is not None:
            self.store.record_vote(state["id"], user, verdict_for(side, state), state["left"], comment or "")
        return self._show(user)

    def results(self, request: gr.Request):
        self._require_admin(request)
        results = all_results(self.store.votes())
        plot = None
        if results["pairs"]:
            plot = str(plot_results(results, self.export_dir / "plots" / f"results-{time.time_ns()}.png"))
        return results_markdown(results), plot

    def export(self, request: gr.Request):
        self._require_admin(request)
        jsonl, table = export_votes(self.store.votes(), self.export_dir / time.strftime("%Y%m%d-%H%M%S"))
        return [str(jsonl), str(table)]

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
                plot = gr.Image(label="Win rates", type="filepath", interactive=False, elem_id="results-plot")
                export = gr.Button("Export votes (JSONL, CSV)", elem_id="export")
                files = gr.File(label="Exports", file_count="multiple", elem_id="exports")
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
                head=SHORTCUTS, prevent_thread_lock=not block, quiet=True, show_error=True,
                allowed_paths=[str(app.export_dir)], footer_links=["gradio", "settings"])  # no API page link
    print(f"deft-app: serving at {demo.local_url}", flush=True)
    return demo
