"""The Runs page's deeper views: confusion matrix and mistakes, A/B comparison, resume and export."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from mnist_core import insight, jobs, lab, spec
from mnist_core.config import ConfigError
from mnist_core.checkpoint import CheckpointError
from mnist_core.runs import Run, RunError
from views.common import DIGIT_AXIS, curves_figure, load_model, metrics, show_card, try_load


@st.cache_resource(show_spinner="Loading the MNIST test set...")
def test_set():
    from mnist_core.data import load_mnist

    data = load_mnist()
    return data.test_x, data.test_y


def evaluation(ckpt) -> insight.Evaluation:
    model, _ = load_model(ckpt)
    x, y = test_set()
    return insight.cached_evaluation(ckpt, model, x, y)


def confusion_section(run: Run) -> None:
    ckpt = run.path / "best.pt"
    if not ckpt.exists():
        st.info("This run has no checkpoint yet.")
        return
    try:
        ev = evaluation(ckpt)
    except (CheckpointError, OSError) as e:
        st.error(str(e))
        return
    m = ev.confusion()
    off = m.copy()
    np.fill_diagonal(off, 0)
    st.markdown(f"Test accuracy of `best.pt`: **{ev.accuracy:.2f}%**, {int(off.sum())} mistakes out of {len(ev.labels)}.")
    c1, c2 = st.columns([3, 2])
    with c1:
        text = [[str(v) if v else "" for v in row] for row in m]
        z = np.log1p(off).astype(float)  # colour the mistakes; the diagonal would drown them
        fig = go.Figure(go.Heatmap(
            z=z, x=[str(i) for i in range(10)], y=[str(i) for i in range(10)], text=text, texttemplate="%{text}",
            colorscale="Reds", showscale=False, hoverinfo="skip",
        ))
        # Plotly cannot select a heatmap's cells: an invisible square marker on each cell takes the click
        cells = [(i, j) for i in range(10) for j in range(10)]
        clear = dict(marker=dict(opacity=0))
        fig.add_scatter(
            x=[str(j) for _, j in cells], y=[str(i) for i, _ in cells], text=[str(m[i, j]) for i, j in cells],
            mode="markers", marker=dict(symbol="square", size=30, opacity=0), selected=clear, unselected=clear,
            showlegend=False, hovertemplate="true %{y}, predicted %{x}: %{text}<extra></extra>",
        )
        fig.update_layout(title="Confusion matrix (click a cell)", height=430, margin=dict(l=10, r=10, t=40, b=10),
                          xaxis=dict(title="predicted", range=[-0.5, 9.5], dtick=1),
                          yaxis=dict(title="true", range=[9.5, -0.5], dtick=1))  # the cells fill the plot; 0 on top
        event = st.plotly_chart(fig, key=f"cm_{run.name}", on_select="rerun", selection_mode="points")
    with c2:
        per = ev.per_class_accuracy()
        bar = go.Figure(go.Bar(x=[str(d) for d in range(10)], y=per, text=[f"{a:.1f}" for a in per],
                               textposition="outside"))
        bar.update_layout(title="Accuracy per digit (%)", yaxis_range=[max(0, per.min() - 2), 100.5], height=430,
                          margin=dict(l=10, r=10, t=40, b=10), xaxis=DIGIT_AXIS)
        st.plotly_chart(bar, key=f"per_{run.name}")

    worst = sorted(((int(off[i, j]), i, j) for i in range(10) for j in range(10) if off[i, j]), reverse=True)
    options = [f"true {i} → predicted {j} ({n})" for n, i, j in worst]
    points = (event or {}).get("selection", {}).get("points", []) if event else []
    clicked = (int(points[0]["y"]), int(points[0]["x"])) if points else None
    if clicked and clicked != st.session_state.get(f"cm_clicked_{run.name}"):  # a new click on the chart picks the cell
        i, j = clicked
        option = next((o for o in options if o.startswith(f"true {i} → predicted {j} ")), None)
        if option:  # a cell with mistakes; the selectbox keeps its choice until the next click
            st.session_state[f"cell_{run.name}"] = option
    st.session_state[f"cm_clicked_{run.name}"] = clicked
    if not options:
        st.success("No mistakes on the test set.")
        return
    choice = st.selectbox("Mistakes of one cell", options, key=f"cell_{run.name}")
    if choice is None:
        return
    i, j = (int(s.split()[-1]) for s in choice.split(" (")[0].split(" → "))
    idx = ev.cell(i, j)[:32]
    x, _ = test_set()
    st.caption(f"{len(ev.cell(i, j))} test images of {i} read as {j}, most confident first")
    cols = st.columns(8)
    for k, n in enumerate(idx):
        p = ev.probs[n]
        with cols[k % 8]:
            st.image(np.kron(x[n].numpy(), np.ones((3, 3), np.uint8)), caption=f"#{n}: {j} {100 * p[j]:.0f}%, {i} {100 * p[i]:.0f}%")


def model_rows(ra: Run, rb: Run) -> list[dict]:
    """The A/B table's model rows: one per stretch of layers that differs (or one saying they match)."""
    try:
        la, lb = ra.model_config().layers, rb.model_config().layers
    except (ConfigError, KeyError):
        return [{"setting": "model.layers", "A": "?", "B": "?", "differs": True}]
    changes = spec.diff(la, lb)
    if not changes:
        return [{"setting": "model.layers", "A": spec.to_text(la), "B": spec.to_text(lb), "differs": False}]
    return [{"setting": f"model.{where}", "A": ta, "B": tb, "differs": True} for where, ta, tb in changes]


def ab_section(runs: list[Run]) -> None:
    names = [r.name for r in runs]
    if len(names) < 2:
        st.info("A/B needs two runs.")
        return
    c1, c2 = st.columns(2)
    a = c1.selectbox("A", names, index=1 if len(names) > 1 else 0, key="ab_a")
    b = c2.selectbox("B", names, index=0, key="ab_b")
    ra, rb = (next(r for r in runs if r.name == n) for n in (a, b))
    ca, cb = ra.config, rb.config
    rows = model_rows(ra, rb)
    for section in ("train",):
        keys = sorted(set(ca.get(section, {})) | set(cb.get(section, {})))
        for k in keys:
            va, vb = ca.get(section, {}).get(k), cb.get(section, {}).get(k)
            rows.append({"setting": f"{section}.{k}", "A": str(va), "B": str(vb), "differs": va != vb})
    sa, sb = lab.summary(ra), lab.summary(rb)
    for k in ("params", "final test acc", "last min", "verdict", "best test acc", "epochs", "status"):
        rows.append({"setting": k, "A": str(sa[k]), "B": str(sb[k]), "differs": sa[k] != sb[k]})
    df = pd.DataFrame(rows)
    differing = df[df.differs & df.setting.str.contains(r"\.")].setting.tolist()
    st.markdown("Differs: " + (", ".join(f"**{d}**" for d in differing) if differing else "nothing in the settings"))
    st.dataframe(
        df.style.apply(lambda r: ["background-color: #fff3c4" if r.differs else ""] * len(r), axis=1),
        hide_index=True, width="stretch", height=min(38 + 35 * len(df), 500),
    )
    series = {f"A {a}": [e for e in metrics(ra) if e["kind"] == "epoch"],
              f"B {b}": [e for e in metrics(rb) if e["kind"] == "epoch"]}
    c1, c2 = st.columns(2)
    c1.plotly_chart(curves_figure(series, "loss"), key="ab_loss")
    c2.plotly_chart(curves_figure(series, "acc"), key="ab_acc")
    c1, c2 = st.columns(2)
    for col, r in ((c1, ra), (c2, rb)):
        with col:
            show_card(r, missing="No card.")


def resume_and_export(run: Run) -> None:
    status = lab.status(run).get("status")
    last = run.path / "last.pt"
    c1, c2 = st.columns(2)
    with c1:
        st.markdown("**Continue training** from the last checkpoint, as a new run linked to this one.")
        more = st.number_input("More epochs", 1, 100, 5, key=f"more_{run.name}")
        seen = lab.epochs_seen(run)
        schedule = st.radio("Learning rate of the new epochs", list(lab.CONTINUE_SCHEDULES), key=f"sched_{run.name}",
                            format_func=lambda k: lab.CONTINUE_SCHEDULES[k], horizontal=False,
                            help="a finished OneCycle or cosine run ends at a tiny rate: holding it (or a cosine "
                                 "tail) fine-tunes; restarting the schedule climbs back to its peak. The new run's "
                                 "card states which")
        limit = lab.goal().max_epochs
        if seen + int(more) > limit:
            st.caption(f"Its weights will have seen {seen + int(more)} epochs ({seen} before + {int(more)}): over "
                       f"the goal's limit of {limit}, so the new run will miss the goal.")
        if started := st.session_state.pop(f"resumed_{run.name}", None):  # set just before the rerun below
            st.success(started)
        if st.button("Continue", key=f"resume_{run.name}", disabled=status == "running" or not last.exists()):
            try:
                new = lab.continue_run(run, int(more), schedule)
            except (ConfigError, RunError, jobs.Busy) as e:
                st.error(str(e))
            else:
                st.session_state[f"resumed_{run.name}"] = (
                    f"Started {new.name}; its epochs continue from {seen}. See the Train page.")
                st.rerun()  # the page again, from the top: the new run in the table and the lists
    with c2:
        st.markdown("**Export** for use outside the app")
        checkpoints = [p for p in (run.path / "best.pt", last) if p.exists()]
        if not checkpoints:
            st.caption("Nothing to export before the first checkpoint.")
            return
        # the export needs weights that load: the first of best.pt, last.pt that does (try_load shows
        # why the others do not), checked here because a download's content is built after the click,
        # where an error reaches nobody
        ckpt = next((path for path in checkpoints if try_load(path)[0] is not None), None)
        if ckpt is None:
            st.caption("Nothing to export: no checkpoint of this run loads.")
            return
        if ckpt != checkpoints[0]:
            st.caption(f"Exporting {ckpt.name} instead.")
        # callables: the archive and the trace are built only when the button is pressed
        st.download_button(f"Download run archive (.zip, {ckpt.name})", lambda: lab.archive(run, ckpt),
                           file_name=f"{run.name}.zip", key=f"zip_{run.name}", on_click="ignore")
        st.download_button(f"Download TorchScript model ({ckpt.name})", lambda: lab.torchscript(load_model(ckpt)[0]),
                           file_name=f"{run.name}.torchscript.pt", key=f"ts_{run.name}", on_click="ignore")
        st.download_button(f"Download ONNX model ({ckpt.name})", lambda: lab.export_as(run, "onnx", ckpt),
                           file_name=f"{run.name}.onnx", key=f"onnx_{run.name}", on_click="ignore",
                           help="input 'image' (B, 1, 28, 28), normalised with mean 0.1307 and std 0.3081; "
                                "output 'logits' (B, 10). Made by torch's ONNX exporter (a few seconds)")
        st.markdown("**The run as code**: plain PyTorch, no mnist-lab needed; `--data DIR` (or the notebook's "
                    "first cell) points it at MNIST")
        st.download_button("Download as a Python script (.py)", lambda: lab.export_as(run, "script"),
                           file_name=f"{run.name}.py", key=f"py_{run.name}", on_click="ignore",
                           help="the model as nn.Module code, the data, the run's optimizer, schedule and "
                                "augmentation, the training loop; --checkpoint best.pt tests the run's weights")
        st.download_button("Download as a notebook (.ipynb)", lambda: lab.export_as(run, "notebook"),
                           file_name=f"{run.name}.ipynb", key=f"nb_{run.name}", on_click="ignore",
                           help="the same code in cells, with this run's log and curves as their outputs")
