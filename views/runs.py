import pandas as pd
import streamlit as st

from mnist_core import lab
from mnist_core.files import UnreadableFile
from mnist_core.runs import RunError
from views.common import curves_figure, lr_figure, metrics, show_card

st.title("Runs")
runs = lab.all_runs()
if not runs:
    st.info("No run yet. Train one on the **Train** page; it will be listed here with its card and curves.")
    st.stop()

# the accuracies come right after the name, so a narrow window shows them without scrolling
COLUMNS = {"name": "name", "best test acc": "test %", "best train acc": "train %", "params": "params",
           "epochs": "epochs", "status": "status", "architecture": "architecture", "created": "created"}
df = pd.DataFrame([lab.summary(r) for r in runs])[list(COLUMNS)].rename(columns=COLUMNS)
df["created"] = df["created"].str.replace("T", " ").str.slice(0, 16)
for col in ("test %", "train %"):  # a run with no epoch yet shows "–": the grid would write "None"
    df[col] = [f"{v:.2f}" if v is not None and v == v else "–" for v in df[col]]
st.dataframe(
    df.style.format({"params": "{:,.0f}"}, na_rep="–"),
    hide_index=True, width="stretch",
    column_config={"test %": st.column_config.Column(help="best test accuracy over the epochs"),
                   "train %": st.column_config.Column(help="best train accuracy over the epochs")},
)

by_name = {r.name: r for r in runs}
st.subheader("Compare")
picked = st.multiselect("Runs to overlay", list(by_name), default=list(by_name)[:2], key="runs_compare")
if picked:
    series = {n: [e for e in metrics(by_name[n]) if e["kind"] == "epoch"] for n in picked}
    c1, c2 = st.columns(2)
    c1.plotly_chart(curves_figure(series, "loss"), key="cmp_loss")
    c2.plotly_chart(curves_figure(series, "acc"), key="cmp_acc")
    st.plotly_chart(lr_figure(series), key="cmp_lr")

st.subheader("One run")
name = st.selectbox("Run", list(by_name), key="runs_one")
run = by_name[name]
summary = lab.summary(run)
if summary["reason"]:
    st.warning(summary["reason"])
if problems := run.problems():
    st.warning("Some of this run's files cannot be read, so what they hold is not shown: " + "; ".join(problems))
downloads, deleting = st.columns([4, 1])
with downloads, st.container(horizontal=True):
    for fname, what in (("best.pt", "the checkpoint of the best epoch"), ("last.pt", "the checkpoint of the last "
                        "epoch (or of the stop)"), ("card.md", "the card, as Markdown")):
        try:
            data = run.read_file(fname)
        except UnreadableFile as e:
            st.caption(f"{fname} is not offered: {e}")
            continue
        if data is not None:
            # on_click="ignore": a download need not rerun the page, and a rerun would drop another
            # download clicked just after it (the export's files are built on demand)
            st.download_button(f"⬇ {fname}", data, file_name=f"{run.name}-{fname}", key=f"dl_{fname}",
                               on_click="ignore", help=f"Download {what}")
with deleting:
    if st.button("Delete run", key="del_ask"):
        st.session_state.confirm_delete = run.name
    if st.session_state.get("confirm_delete") == run.name:
        st.warning(f"Delete **{run.name}** and all its files?")
        if st.button("Yes, delete", type="primary", key="del_yes"):
            try:
                lab.delete(run)
                st.session_state.confirm_delete = None
                st.rerun()
            except RunError as e:
                st.error(str(e))
        if st.button("Cancel", key="del_no"):
            st.session_state.confirm_delete = None
            st.rerun()

show_card(run)  # the whole width: its layer table needs no sideways scrolling

st.divider()
from views import runs_insight  # noqa: E402

tab_cm, tab_ab, tab_more = st.tabs(["Confusion matrix and mistakes", "A/B comparison", "Continue and export"])
with tab_cm:
    runs_insight.confusion_section(run)
with tab_ab:
    runs_insight.ab_section(runs)
with tab_more:
    runs_insight.resume_and_export(run)
