"""The Draw page's lower half: inside the model, preprocessing step by step, several models on
one drawing, and the user's own handwriting set (save, score, fine-tune)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from mnist_core import handwriting, insight, jobs, lab
from mnist_core.config import ConfigError
from mnist_core.draw import Preprocessed, probabilities, step_predictions
from mnist_core.card import plural
from mnist_core.files import describe_os_error
from mnist_core.data import normalize
from mnist_core.runs import RunError
from views.common import DIGIT_AXIS, load_model


def grey(img: np.ndarray, size: int = 112) -> np.ndarray:
    """0..1 float image -> uint8, enlarged with nearest-neighbour so pixels stay visible."""
    a = np.clip(img, 0, 1)
    k = max(1, size // max(a.shape))
    return (np.kron(a, np.ones((k, k))) * 255).astype(np.uint8)


def heatmap(z: np.ndarray, title: str, colorscale="Viridis", height=260, **scale) -> go.Figure:
    fig = go.Figure(go.Heatmap(z=z, colorscale=colorscale, showscale=bool(scale), **scale))
    fig.update_layout(title=title, height=height, margin=dict(l=5, r=5, t=35, b=5),
                      yaxis=dict(autorange="reversed", scaleanchor="x", visible=False), xaxis=dict(visible=False))
    return fig


def filters_figure(filters: np.ndarray) -> go.Figure:
    """(C, k, k) weights in a grid on one diverging scale centred on zero (red > 0, blue < 0), the
    gaps between filters left blank."""
    c, k, _ = filters.shape
    z = insight.tile(filters, pad=1, scale_each=False, fill=np.nan)
    m = float(np.nanmax(np.abs(z))) or 1.0
    return heatmap(z, f"First-layer filters ({c} of {k}x{k})", "RdBu_r", zmin=-m, zmax=m, zmid=0,
                   colorbar=dict(title="weight", thickness=10))


def inside_the_model(model, pre: Preprocessed) -> None:
    maps = insight.feature_maps(model, pre.tensor)
    sal, target = insight.saliency(model, pre.tensor)
    c1, c2 = st.columns(2)
    with c1:
        fig = heatmap(pre.final, "Input (28x28)", "gray")
        fig.add_trace(go.Heatmap(z=np.where(sal > 0.05, sal, np.nan), colorscale="Hot", opacity=0.6, showscale=False))
        fig.update_layout(title=f"Saliency for '{target}' over the input")
        st.plotly_chart(fig, key="saliency")
        st.caption("Brighter = the pixels whose change would move the score of the predicted digit most "
                   "(gradient of that logit with respect to the input).")
    with c2:
        filters = insight.first_filters(model)
        if filters is None:
            st.info("This model has no convolution: no filters to show.")
        else:
            st.plotly_chart(filters_figure(filters), key="filters")
            st.caption("Each square is one filter of the first convolution: red weights add, blue subtract, "
                       "white is zero; one colour scale for all of them.")
    st.markdown("**Feature maps**: what each channel of each group of layers responds to in your drawing (bright = active).")
    if not maps:
        st.info("This model keeps no map of 2x2 or more after its first layer group: no feature maps to show.")
    for label, a in maps:
        st.image(grey(insight.tile(a, cols=min(len(a), 16)), size=max(600, 40 * min(len(a), 16))), caption=label)


def preprocessing_steps(model, pre: Preprocessed) -> None:
    st.markdown("Each step of the MNIST-style preprocessing, and what the model would say if it were given "
                "that step's image squeezed to 28x28.")
    stages = step_predictions(model, pre)
    cols = st.columns(len(stages))
    for col, (caption, img, x, p) in zip(cols, stages):
        with col:
            st.image(grey(img, 140), caption=caption)
            st.image(grey(x, 84), caption="28x28 input")
            d = int(p.argmax())
            st.markdown(f"→ **{d}** ({100 * p[d]:.1f}%)")


def several_models(choices: dict, pre: Preprocessed) -> None:
    picked = st.multiselect("Models", list(choices), default=list(choices)[: min(3, len(choices))], key="draw_many")
    if not picked:
        return
    rows, fig = [], go.Figure()
    for label in picked:
        try:
            model, meta = load_model(choices[label])
        except Exception as e:  # a damaged checkpoint must not take the comparison down
            st.error(f"{label}: {e}")
            continue
        p = probabilities(model, pre.tensor)[0].numpy()
        d = int(p.argmax())
        rows.append({"model": label, "prediction": d, "confidence %": round(100 * float(p[d]), 2),
                     "second": int(np.argsort(-p)[1]), "params": sum(t.numel() for t in model.parameters())})
        fig.add_bar(x=[str(i) for i in range(10)], y=100 * p, name=label)
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
    fig.update_layout(barmode="group", title="Probabilities (%)", height=300 + 22 * len(rows),
                      margin=dict(l=10, r=10, t=40, b=10), legend=dict(orientation="h", y=-0.25, yanchor="top"),
                      xaxis=DIGIT_AXIS)  # whole model names in the legend, a row each when they are long
    st.plotly_chart(fig, key="many_probs")


def your_handwriting(model, pre: Preprocessed, digit: int) -> None:
    folder = handwriting.HANDWRITING_DIR
    c1, c2 = st.columns([1, 2])
    with c1:
        label = st.selectbox("This drawing is a", list(range(10)), index=digit, key="hw_label")
        if st.button("Save to my handwriting set", key="hw_save"):
            try:
                handwriting.save(pre.final, int(label), folder)
                st.toast(f"Saved as a {label}.")
            except OSError as e:  # a full or read-only disk: nothing half-written, one line
                st.error(f"Not saved: {describe_os_error(e)}", icon="🚫")
    x, y = handwriting.load(folder)
    with c2:
        if len(x) == 0:
            st.info("No saved drawings yet. Save a few of each digit, then see how the model does on them.")
            return
        p = probabilities(model, normalize(x)).numpy()
        pred = p.argmax(1)
        yy = y.numpy()
        per = [{"digit": d, "drawings": int((yy == d).sum()),  # "–": no drawings of that digit yet
                "accuracy %": f"{100 * float((pred[yy == d] == d).mean()):.1f}" if (yy == d).any() else "–"}
               for d in range(10)]
        st.markdown(f"**The chosen model on your {plural(len(x), 'drawing')}: {100 * float((pred == yy).mean()):.1f}%**")
        st.dataframe(pd.DataFrame(per), hide_index=True, width="stretch", height=250)
    parents = lab.runs_with_checkpoints()
    if not parents:
        st.caption("Fine-tuning starts from a run: train one first.")
        return
    with st.form("finetune"):
        st.markdown("**Fine-tune a run on MNIST plus your drawings** (a new run, linked to its parent)")
        parent = st.selectbox("Run", [r.name for r in parents])
        epochs = st.number_input("Epochs", 1, 10, 2)
        size = st.selectbox("MNIST images alongside", [10000, 60000, 2000], help="fewer is faster")
        go_ = st.form_submit_button("Start fine-tuning")
    if go_:
        run = next(r for r in parents if r.name == parent)
        try:
            new = lab.fine_tune(run, folder, int(epochs), int(size))
            st.success(f"Started {new.name}; follow it on the Train page.")
        except (ConfigError, RunError, jobs.Busy) as e:
            st.error(str(e))


def render(model, pre: Preprocessed, digit: int, choices: dict) -> None:
    tabs = st.tabs(["Inside the model", "Preprocessing step by step", "Compare models", "Your handwriting"])
    with tabs[0]:
        inside_the_model(model, pre)
    with tabs[1]:
        preprocessing_steps(model, pre)
    with tabs[2]:
        several_models(choices, pre)
    with tabs[3]:
        your_handwriting(model, pre, digit)
