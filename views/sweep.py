"""Sweeps: define a space of layer lists and recipes, let Ray Tune search it, watch the trials."""

import json
import os
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from mnist_core import jobs, lab, sweep
from mnist_core.files import UnreadableFile, read_tail
from mnist_core.runs import RunError

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "sweeps"
KINDS = list(sweep.KINDS)
TRAIN_SIZES = [0, 10000, 5000, 2000, 1000]  # 0: all images
TEST_SIZES = [0, 5000, 2000, 1000]
POLL_SECONDS = 2.0
STATUS_ICONS = {"finished": "✅", "running": "⏳", "stopped": "⏹️", "failed": "❌", "rejected": "🚫", "invalid": "🚫",
                "interrupted": "⚠️", "queued": "…"}


# -- the space as widgets ---------------------------------------------------------------------------


def starting_points() -> dict[str, dict]:
    """The spaces a new sweep can start from: the shipped examples, then the sweeps already run."""
    out = {}
    for path in sorted(EXAMPLES.glob("*.json")):
        try:
            out[f"example: {path.stem}"] = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
    for folder in lab.sweeps():
        try:
            out[f"again: {folder.name}"] = sweep.read_spec(folder)
        except sweep.SweepError:
            continue
    return out


def load_space(space: dict) -> None:
    """Every widget of the form from a space."""
    recipe = dict(space.get("recipe", {}))
    st.session_state.sw_templates = "\n".join(space.get("templates", []))
    rows = []
    for name, d in space.get("params", {}).items():
        kind, value = next(iter(d.items()))
        if kind == "choice":
            rows.append({"setting": name, "kind": kind, "low": None, "high": None,
                         "choices": ", ".join(str(v) for v in value)})
        else:
            rows.append({"setting": name, "kind": kind, "low": value[0], "high": value[1], "choices": ""})
    st.session_state.sw_rows = rows
    st.session_state.sw_params_n = st.session_state.get("sw_params_n", 0) + 1  # a fresh editor for new rows
    st.session_state.sw_preset = recipe.pop("preset", "reference")
    presets = lab.presets()
    if st.session_state.sw_preset not in presets:
        st.session_state.sw_preset = "reference"
    st.session_state.sw_epochs = int(recipe.pop("epochs", presets[st.session_state.sw_preset].train.epochs))
    st.session_state.sw_train = int(recipe.pop("limit_train", 0) or 0)
    st.session_state.sw_test = int(recipe.pop("limit_test", 0) or 0)
    st.session_state.sw_recipe_rest = recipe  # other settings of the file's recipe, kept as they are
    st.session_state.sw_budget = int(space.get("budget", 8000))
    st.session_state.sw_objective = space.get("objective", "accuracy")
    st.session_state.sw_goal = float(space.get("goal", 99.4))
    st.session_state.sw_trials = int(space.get("trials", 12))
    st.session_state.sw_concurrent = int(space.get("concurrent", os.cpu_count() or 1))
    st.session_state.sw_grace = int(space.get("early_stop", {}).get("grace", max(1, st.session_state.sw_epochs // 3)))
    st.session_state.sw_about = space.get("about", "")


def on_start_from():
    chosen = starting_points().get(st.session_state.sw_from)
    if chosen:
        load_space(chosen)


def choice_value(text: str):
    """A choice typed in the table: a whole number, a number, or a token (empty: none)."""
    text = text.strip()
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def param_from_row(row: dict) -> tuple[str, dict] | None:
    name = str(row.get("setting") or "").strip()
    if not name:
        return None
    kind = row.get("kind") or "int"
    if kind == "choice":
        return name, {"choice": [choice_value(v) for v in str(row.get("choices") or "").split(",")]
                      if str(row.get("choices") or "").strip() else []}
    low, high = row.get("low"), row.get("high")
    if kind == "int":  # a whole number typed in a number column comes back as a float
        low, high = (int(v) if isinstance(v, float) and v.is_integer() else v for v in (low, high))
    return name, {kind: [low, high]}


def space_from_widgets(rows: list[dict]) -> dict:
    s = st.session_state
    params = dict(p for row in rows if (p := param_from_row(row)))
    recipe = {"preset": s.sw_preset, **s.get("sw_recipe_rest", {}), "epochs": int(s.sw_epochs)}
    recipe.update({k: v for k, v in (("limit_train", s.sw_train), ("limit_test", s.sw_test)) if v})
    out = {"templates": [t.strip() for t in s.sw_templates.splitlines() if t.strip()], "params": params,
           "recipe": recipe, "budget": int(s.sw_budget), "objective": s.sw_objective, "goal": float(s.sw_goal),
           "trials": int(s.sw_trials), "concurrent": int(s.sw_concurrent), "early_stop": {"grace": int(s.sw_grace)}}
    if s.get("sw_about"):
        out = {"about": s.sw_about, **out}
    return out


def size_label(total: int):
    return lambda n: f"all {total:,}" if n == 0 else f"{n:,}"


def new_sweep_form(busy: str | None) -> None:
    points = starting_points()
    if "sw_templates" not in st.session_state:  # first visit: the tiny example, the quickest to try
        load_space(points.get("example: tiny") or next(iter(points.values())))
    st.selectbox("Start from", list(points), index=None, key="sw_from", on_change=on_start_from,
                 placeholder="an example space, or the space of a sweep already run...",
                 help="fills every field below; " + "; ".join(f"{k}: {v.get('about', '')}" for k, v in points.items()
                                                              if v.get("about")))
    st.text_area("Layer-list templates, one per line", key="sw_templates", height=90,
                 help="the one-line text form of the Architecture page, with {placeholders} the table below "
                      "defines, e.g. conv{w1}p1 bn relu ... gap conv10k1. With several lines the search "
                      "picks a template too")
    st.markdown("**What to search**: each placeholder of the templates, and any recipe setting "
                "(lr, batch_size, weight_decay, rotate, ...)")
    editor = st.data_editor(
        st.session_state.get("sw_rows", []), key=f"sw_params_{st.session_state.get('sw_params_n', 0)}",
        num_rows="dynamic", width="stretch",
        column_config={
            "setting": st.column_config.TextColumn("setting", help="a placeholder of the templates (w1) or a recipe "
                                                   "setting (lr)", required=True),
            "kind": st.column_config.SelectboxColumn("kind", options=KINDS, required=True, help="int: whole numbers "
                                                     "low..high; float: uniform; log: log-uniform; choice: one of "
                                                     "the choices"),
            "low": st.column_config.NumberColumn("low", format="%g"),
            "high": st.column_config.NumberColumn("high", format="%g"),
            "choices": st.column_config.TextColumn("choices", help="for choice: comma-separated, e.g. 64, 128 or "
                                                   "bn, (an empty choice leaves the token out)"),
        },
    )
    rows = editor if isinstance(editor, list) else editor.to_dict("records")

    c1, c2, c3, c4 = st.columns(4)
    c1.selectbox("Recipe from preset", list(lab.presets()), key="sw_preset",
                 help="the recipe every trial starts from; the table's settings change it")
    c2.number_input("Epochs per trial", 1, 100, key="sw_epochs")
    c3.selectbox("Training images", TRAIN_SIZES, key="sw_train", format_func=size_label(60000))
    c4.selectbox("Test images", TEST_SIZES, key="sw_test", format_func=size_label(10000))
    if rest := st.session_state.get("sw_recipe_rest"):
        st.caption("Also from the space file's recipe: " + ", ".join(f"{k}={v}" for k, v in rest.items()))
    c1, c2, c3, c4 = st.columns(4)
    c1.number_input("Parameter budget", 100, 10**7, step=500, key="sw_budget",
                    help="a hard limit: a trial whose model has this many parameters or more is rejected before "
                         "any training")
    c2.radio("Objective", list(sweep.OBJECTIVES), key="sw_objective", horizontal=True,
             format_func={"accuracy": "best accuracy", "params": "fewest parameters"}.get,
             help="best accuracy: the highest last-epochs minimum under the budget; fewest parameters: the "
                  "smallest model that holds the goal")
    c3.number_input("Goal, test %", 50.0, 100.0, step=0.1, format="%.2f", key="sw_goal",
                    help="what the last epochs (up to 3) must each hold for a trial to meet the goal")
    c4.number_input("Early stop after, epochs", 0, 100, key="sw_grace",
                    help="ASHA ends the trials outside the best third after this many epochs (and 3x, 9x ... "
                         "as many); 0: every trial runs all its epochs")
    c1, c2, c3, c4 = st.columns(4)
    c1.number_input("Trials", 1, sweep.MAX_TRIALS, key="sw_trials")
    c2.number_input("Trials at once", 1, 256, key="sw_concurrent",
                    help=f"one thread each; this machine has {os.cpu_count()} cores")
    c3.text_input("Ray cluster address", key="sw_address", placeholder="empty: a local Ray on this machine",
                  help="an existing cluster's head, e.g. 10.0.0.5:6379 (ray start --head prints it). The runs "
                       "folder must be shared with its machines" + (
                           f". RAY_ADDRESS is set: {os.environ['RAY_ADDRESS']}" if os.environ.get("RAY_ADDRESS") else ""))
    c4.text_input("Sweep name (optional)", key="sw_name", placeholder="auto: sweep-<date>-<time>")

    space = space_from_widgets(rows)
    try:
        checked = sweep.check_space(space)
    except sweep.SweepError as e:
        st.error(str(e), icon="🚫")
        checked = None
    else:
        st.caption(f"{checked['trials']} trials, {checked['concurrent']} at once; the smallest model in the space "
                   f"has {sweep.smallest_model(checked):,} parameters, the budget is {checked['budget']:,}; "
                   f"{sweep.early_stop_text(checked)}. Every trained trial is a run, named <sweep>-<trial>.")
    with st.expander("The space as a file (for `python -m mnist_core sweep --space FILE`)"):
        text = json.dumps(space, indent=2)
        st.code(text, language="json")
        st.download_button("Download space.json", text, file_name="space.json", key="sw_download")

    start = st.button("Start sweep", type="primary", disabled=checked is None or busy is not None,
                      help=f"{busy} holds this machine: wait for it or stop it" if busy else None)
    if start and checked is not None:
        try:
            with st.spinner("Checking the cluster and starting the sweep..."):
                folder = lab.start_sweep(checked, st.session_state.sw_name.strip() or None,
                                         st.session_state.sw_address.strip() or None)
        except (sweep.SweepError, jobs.Busy, RunError) as e:
            st.error(str(e), icon="🚫")
        else:
            st.session_state.sw_shown = folder.name
            st.rerun()  # the sweep's view below, the sidebar and the buttons follow


# -- one sweep, live ----------------------------------------------------------------------------------


def best(trials: list[dict], space: dict) -> dict | None:
    """The best trial so far by the sweep's objective."""
    done = [t for t in trials if t.get("status") == "finished" and t.get("last_min") is not None]
    if space["objective"] == "params":
        held = [t for t in done if t["last_min"] >= space["goal"]]
        return min(held, key=lambda t: (t["params"], -t["last_min"])) if held else None
    return max(done, key=lambda t: (t["last_min"], -t["params"])) if done else None


def sweep_figure(trials: list[dict], space: dict, marked: str | None = None) -> go.Figure:
    """Parameters against the last-epochs minimum: every trained trial, the Pareto front drawn."""
    fig = go.Figure()
    trained = [t for t in trials if isinstance(t.get("params"), int) and t.get("last_min") is not None]
    for state, colour in (("finished", "#2f6fdf"), ("stopped", "#9aa5b1"), ("running", "#f2a541"),
                          ("interrupted", "#c9a227"), ("failed", "#e4572e")):
        points = [t for t in trained if t.get("status") == state]
        if not points:
            continue
        fig.add_scatter(
            x=[t["params"] for t in points], y=[t["last_min"] for t in points], mode="markers", name=state,
            marker=dict(color=colour, size=[14 if t.get("run") == marked else 9 for t in points],
                        line=dict(width=1, color="white")),
            customdata=[t.get("run") for t in points],
            text=[f"{t.get('run')}<br>{t.get('layers', '')}<br>epoch {t.get('epoch', '?')}" for t in points],
            hovertemplate="%{text}<br>%{x:,} params, %{y:.2f}%<extra></extra>")
    front = sweep.pareto(trials)
    if front:
        fig.add_scatter(x=[t["params"] for t in front], y=[t["last_min"] for t in front], mode="lines",
                        name="Pareto front", line=dict(color="#2f6fdf", dash="dot", shape="hv"), hoverinfo="skip")
    fig.add_hline(y=space["goal"], line=dict(color="#3a9d5d", dash="dash"),
                  annotation_text=f"goal {space['goal']:g}%", annotation_position="bottom left")
    fig.add_vline(x=space["budget"], line=dict(color="#e4572e", dash="dash"),
                  annotation_text=f"budget {space['budget']:,}", annotation_position="top left")
    # the axis spans the ended trials and the goal: a trial in its first epochs would squash them
    ended = [t for t in trained if t.get("status") in ("finished", "stopped")] or trained
    accs = [t["last_min"] for t in ended] + [space["goal"]]
    low = max(min(accs) - (0.3 if max(accs) - min(accs) < 20 else 3), 0)
    fig.update_layout(title="Parameters against accuracy (click a point to open its run; trials in their first "
                            "epochs may sit below the axis)" if len(ended) < len(trained) else
                      "Parameters against accuracy (click a point to open its run)",
                      xaxis_title="parameters", yaxis_title="test accuracy, min of the last epochs (%)",
                      height=380, margin=dict(l=10, r=10, t=50, b=10),
                      legend=dict(orientation="h", y=-0.2, x=0), clickmode="event+select")
    fig.update_yaxes(range=[low, min(100, max(accs) + 0.2)])
    return fig


def trials_frame(trials: list[dict], goal: float) -> list[dict]:
    rows = []
    for t in trials:
        acc = t.get("last_min")
        rows.append({
            "run": f"/runs?run={t['run']}" if t.get("run") else None,
            "status": f"{STATUS_ICONS.get(t.get('status'), '')} {t.get('status', '?')}",
            "params": t.get("params"),
            "epoch": t.get("epoch"),
            "last-3 min %": acc,
            "verdict": t.get("verdict") or t.get("reason") or (
                "" if acc is None else f"{'meets' if acc >= goal else 'below'} {goal:g}% so far"),
            "layers": t.get("layers", ""),
        })
    return rows


def when(stamp) -> str:
    return str(stamp or "–").replace("T", " ")


def show_sweep(folder: Path) -> None:
    """The sweep's state, buttons, best trial, chart and table; polled while it runs."""
    state = sweep.status(folder)
    status = state.get("status", "unknown")
    try:
        space = sweep.read_spec(folder)
    except sweep.SweepError as e:
        st.error(str(e), icon="🚫")
        return
    trials = sweep.trial_table(folder)
    ended = sum(t.get("status") in sweep.DONE for t in trials)
    training = sum(t.get("status") == "running" for t in trials)
    where = state.get("address") or "a local Ray"
    st.subheader(f"{folder.name}: {status}")
    st.caption(f"{space['trials']} trials on {where}, {space['concurrent']} at once · budget {space['budget']:,} · "
               f"objective {space['objective']} · goal {space['goal']:g}% · started {when(state.get('started'))}"
               + (f" · ended {when(state['ended'])}" if state.get("ended") else ""))
    if status in sweep.LIVE:
        st.progress(min(ended / space["trials"], 1.0),
                    text=f"{ended} of {space['trials']} trials ended · {training} training now")
    elif state.get("reason"):
        (st.error if status == "failed" else st.warning)(str(state["reason"])[:500])

    with st.container(horizontal=True):
        if st.button("Stop sweep", key="sw_stop", disabled=status not in ("starting", "running"),
                     help="running trials end after their batch, with checkpoint and card; it can be resumed"):
            try:
                lab.stop_sweep(folder)
            except sweep.SweepError as e:
                st.error(str(e), icon="🚫")
            else:
                st.toast(f"Asked {folder.name} to stop: its trials end after their current batch.")
        if status in ("interrupted", "stopped") and ended < space["trials"]:
            if st.button("Resume sweep", key="sw_resume", type="primary", disabled=bool(lab.active()),
                         help=f"the {space['trials'] - ended} trials still to run; the search starts from every "
                              "recorded result"):
                try:
                    lab.resume_sweep(folder)
                except (sweep.SweepError, jobs.Busy, RunError) as e:
                    st.error(str(e), icon="🚫")
                else:
                    st.rerun()

    top = best(trials, space)
    if top:
        what = "fewest parameters holding the goal" if space["objective"] == "params" else "best accuracy"
        st.success(f"Best so far ({what}): **{top['run']}**, {top['params']:,} parameters, last-epochs minimum "
                   f"**{top['last_min']:.2f}%**: {top.get('verdict', '')}  \n`{top.get('layers', '')}`")
    elif ended and space["objective"] == "params":
        st.info(f"No trial has held {space['goal']:g}% yet.")

    if any(t.get("last_min") is not None for t in trials):
        event = st.plotly_chart(sweep_figure(trials, space, top and top["run"]), key="sw_chart", on_select="rerun",
                                selection_mode="points")
        points = (event or {}).get("selection", {}).get("points", []) if event else []
        picked = next((p.get("customdata") for p in points if p.get("customdata")), None)
        if picked:
            st.session_state.runs_next = picked
            st.switch_page("views/runs.py")
    if trials:
        st.dataframe(pd.DataFrame(trials_frame(trials, space["goal"])), key="sw_table", width="stretch", hide_index=True,
                     placeholder="–",
                     column_config={
                         "run": st.column_config.LinkColumn("run", display_text=r"/runs\?run=(.*)",
                                                            help="opens the run on the Runs page"),
                         "params": st.column_config.NumberColumn(format="localized"),
                         "last-3 min %": st.column_config.NumberColumn(format="%.2f", help="the lowest test accuracy "
                                                                       "of the last 3 epochs trained"),
                         "epoch": st.column_config.NumberColumn(help="epochs trained"),
                         "layers": st.column_config.TextColumn(width="large"),
                     })
    elif status in sweep.LIVE:
        st.info("Starting Ray and the first trials (about 10 s)...")
    log = folder / "sweep.log"
    if log.is_file():
        with st.expander("The sweep's output"):
            try:
                text = read_tail(log, 16 * 1024).decode("utf-8", errors="replace")
            except (OSError, UnreadableFile):
                text = ""
            st.code(text[-6000:] or "(empty)", language=None)


# -- the page ---------------------------------------------------------------------------------------

st.title("Sweeps")
st.caption("Let the machine search for the smallest model that holds the goal: Optuna's TPE proposes layer lists "
           "and recipes, Ray Tune trains them (here, or on a Ray cluster) and ASHA ends the hopeless ones early. "
           "A sweep runs in the background like a training: leave the page, come back.")

running = lab.active_sweep()
holder = lab.active()
busy = (f"sweep {running.name}" if running else f"the training {holder}") if holder else None
folders = lab.sweeps()
with st.expander("New sweep", expanded=not folders):
    new_sweep_form(busy)

if folders:
    names = [f.name for f in folders]
    if running is not None and st.session_state.get("sw_seen_running") != running.name:
        st.session_state.sw_shown = st.session_state.sw_seen_running = running.name  # a new sweep: show it
    if st.session_state.get("sw_shown") not in names:
        st.session_state.sw_shown = names[0]
    st.selectbox("Sweep", names, key="sw_shown", help="the sweeps of this runs folder, newest first")
    shown = lab.sweep_folder(st.session_state.sw_shown)
    live = sweep.status(shown).get("status") in sweep.LIVE

    @st.fragment(run_every=POLL_SECONDS if live else None)
    def watch():
        show_sweep(shown)
        if live and sweep.status(shown).get("status") not in sweep.LIVE:
            st.rerun()  # it ended: the whole page again (Start on, the sidebar, no more polling)

    watch()
else:
    st.info("No sweep yet: the form above starts one (the tiny example takes about a minute here).")
