import pandas as pd
import streamlit as st

from mnist_core import lab
from mnist_core.files import UnreadableFile
from mnist_core.runs import RunError
from mnist_core.config import ConfigError
from views.common import curves_figure, group_figure, lr_figure, metrics, show_card, whole_range_toggle

st.title("Runs")
runs = lab.all_runs()
if not runs:
    st.info("No run yet. Train one on the **Train** page; it will be listed here with its card and curves.")
    st.stop()
goal = lab.goal()
st.caption(f"Every run is judged against the goal: **{goal.text()}** (set it on Home). A run *meets* it or "
           "*misses* it, and says why.")
summaries = {r.name: lab.summary(r, goal) for r in runs}
by_name = {r.name: r for r in runs}
if (linked := st.query_params.get("run")) is not None:  # a link to one run (the Sweeps page's table)
    del st.query_params["run"]
    st.session_state.runs_next = linked
if st.session_state.get("runs_next") in by_name:
    st.info(f"Run **{st.session_state.runs_next}** is shown under *One run* below.", icon="👇")

# -- groups of seeds --------------------------------------------------------------------------
groups = lab.groups()
if groups:
    st.subheader("Groups of seeds")
    verdicts = {name: lab.group_verdict(members, goal) for name, members in groups.items()}
    st.dataframe(pd.DataFrame([{
        "group": name, "verdict": verdicts[name].text(goal), "seeds": len(members),
        "mean last min": verdicts[name].mean, "lowest last min": verdicts[name].low,
        "params": summaries[members[0].name]["params"], "architecture": summaries[members[0].name]["architecture"],
        "status": ", ".join(sorted({summaries[r.name]["status"] for r in members})),
    } for name, members in groups.items()]), hide_index=True, width="stretch", placeholder="–", column_config={
        "mean last min": st.column_config.NumberColumn(format="%.2f", help=f"the mean over the seeds of each one's "
                                                       f"lowest test accuracy in its last {goal.last} epochs"),
        "lowest last min": st.column_config.NumberColumn(format="%.2f"),
        "params": st.column_config.NumberColumn(format="localized")})
    group = st.selectbox("Group", list(groups), key="runs_group")
    members = groups[group]
    series = {f"seed {m.config.get('train', {}).get('seed', '?')}": [e for e in metrics(m) if e["kind"] == "epoch"]
              for m in members}
    whole = whole_range_toggle(key="runs_group_whole")
    if any(series.values()):
        st.plotly_chart(group_figure(series, goal, whole), key="group_chart")
    with st.container(border=True):
        st.markdown(lab.group_card(group, members, goal))

# -- every run ----------------------------------------------------------------------------------
st.subheader("Every run")
COLUMNS = {"name": "name", "verdict": "goal", "last min": f"last {goal.last} min", "final test acc": "final test %",
           "params": "params", "epochs in all": "epochs", "why": "why", "group": "group", "sweep": "sweep",
           "parent": "parent",
           "tags": "tags", "best test acc": "best test %", "status": "status", "architecture": "architecture",
           "created": "created"}
df = pd.DataFrame(summaries.values())[list(COLUMNS)].rename(columns=COLUMNS)
df["created"] = df["created"].str.replace("T", " ").str.slice(0, 16)
for col in (f"last {goal.last} min", "final test %", "best test %", "params"):  # numbers, missing ones NaN
    df[col] = pd.to_numeric(df[col], errors="coerce")
all_tags = sorted({t.strip() for tags in df["tags"] for t in tags.split(",") if t.strip()})
f1, f2, f3, f4 = st.columns([1, 1, 1.4, 1.6], vertical_alignment="bottom")
only_meets = f1.checkbox("Meets the goal", key="runs_meets")
only_budget = f2.checkbox(f"Under {goal.max_params:,} parameters", key="runs_budget")
tags = f3.multiselect("Tags", all_tags, key="runs_tags", placeholder="any tag")
text = f4.text_input("Find", key="runs_find", placeholder="name, group, sweep or architecture")
shown = df
if only_meets:
    shown = shown[shown["goal"] == "meets"]
if only_budget:
    shown = shown[shown["params"].notna() & (shown["params"] < goal.max_params)]
if tags:
    shown = shown[shown["tags"].apply(lambda t: bool(set(tags) & {x.strip() for x in t.split(",")}))]
if text.strip():
    needle = text.strip().lower()
    shown = shown[shown[["name", "group", "sweep", "architecture"]].apply(lambda r: needle in " ".join(r).lower(), axis=1)]
st.caption(f"{len(shown)} of {len(df)} runs. Click a column's header to sort by it.")
st.dataframe(
    shown, hide_index=True, width="stretch", placeholder="–",  # numbers, so a click on a header sorts by them
    column_config={
        "goal": st.column_config.TextColumn(help=f"meets or misses the goal: {goal.text()}; … while it trains"),
        f"last {goal.last} min": st.column_config.NumberColumn(
            format="%.2f", help=f"the lowest test accuracy of the last {goal.last} epochs: what the goal holds to"),
        "final test %": st.column_config.NumberColumn(format="%.2f", help="the last epoch's test accuracy"),
        "best test %": st.column_config.NumberColumn(format="%.2f", help="the best epoch's test accuracy: a peak, "
                                                     "not a result"),
        "params": st.column_config.NumberColumn(format="localized"),
        "epochs": st.column_config.NumberColumn(help="epochs the weights have seen, a parent's included"),
        "why": st.column_config.TextColumn(help="why it misses the goal, or what it holds", width="medium"),
        "parent": st.column_config.TextColumn(help="the run it continues or fine-tunes"),
    },
)

st.subheader("Compare")
picked = st.multiselect("Runs to overlay", list(by_name), default=list(by_name)[:2], key="runs_compare")
if picked:
    series = {n: [e for e in metrics(by_name[n]) if e["kind"] == "epoch"] for n in picked}
    whole = whole_range_toggle(key="runs_whole")
    c1, c2 = st.columns(2)
    c1.plotly_chart(curves_figure(series, "loss"), key="cmp_loss")
    c2.plotly_chart(curves_figure(series, "acc", whole), key="cmp_acc")
    st.plotly_chart(lr_figure(series), key="cmp_lr")

st.subheader("One run")
if (chosen := st.session_state.pop("runs_next", None)) in by_name:
    st.session_state.runs_one = chosen
name = st.selectbox("Run", list(by_name), key="runs_one")
run = by_name[name]
summary = summaries[run.name]
if renamed := st.session_state.pop("renamed", None):  # set just before the rerun that follows a rename
    st.success(renamed)
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

notes, naming = st.columns([3, 1])
with notes.expander("Notes and tags" + (f": {summary['tags']}" if summary["tags"] else "")):
    kept = run.notes
    note = st.text_area("Notes", kept["notes"], key=f"notes_{run.name}", height=90,
                        placeholder="what you tried, what you saw; shown in the card")
    tag_text = st.text_input("Tags (comma-separated)", ", ".join(kept["tags"]), key=f"tags_{run.name}",
                             placeholder="e.g. padded, try-2")
    if st.button("Save notes and tags", key=f"notes_save_{run.name}"):
        try:
            lab.set_notes(run, note, tag_text)
            st.rerun()
        except (ConfigError, RunError) as e:
            st.error(str(e), icon="🚫")
with naming.expander("Rename"):
    new_name = st.text_input("New name", run.name, key=f"rename_{run.name}")
    if st.button("Rename", key=f"rename_go_{run.name}", disabled=new_name.strip() == run.name):
        try:
            renamed = lab.rename(run, new_name.strip())
        except RunError as e:
            st.error(str(e), icon="🚫")
        else:
            st.session_state.runs_next = renamed.name  # chosen in the run box on the rerun, before it is drawn
            st.session_state.renamed = f"Renamed {run.name} to {renamed.name}."
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
