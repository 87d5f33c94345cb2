"""What the pages share: the chosen architecture, cached models and run data, the charts."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from mnist_core import lab
from mnist_core.config import (LINK_LIMIT, ConfigError, ModelConfig, TrainConfig, get_preset, recipe_from_link,
                                recipe_link)
from mnist_core.checkpoint import BUNDLED_CHECKPOINT, CheckpointError, load_checkpoint
from mnist_core.files import UnreadableFile
from mnist_core.goal import Goal
from mnist_core.runs import Run, list_runs



def runs_dir() -> Path:
    return lab.runs_dir()


def active_run_name() -> str | None:
    return lab.active()


# -- the architecture chosen on the Architecture page, trained by the Train page -------------


def chosen_model() -> ModelConfig:
    if "model_cfg" not in st.session_state:
        st.session_state.model_cfg = get_preset("reference").model.to_dict()
    return ModelConfig.from_dict(st.session_state.model_cfg)


def choose_model(cfg: ModelConfig) -> None:
    st.session_state.model_cfg = cfg.to_dict()


def saved_settings() -> TrainConfig:
    """The Train page's settings as last set in this session (the reference preset's at first)."""
    return st.session_state.get("train_cfg") or get_preset("reference").train


def save_settings(values: dict) -> None:
    try:
        st.session_state.train_cfg = TrainConfig(**values)
    except ConfigError:
        pass  # the page shows the refusal when Start is pressed; keep the last good settings


# -- the design in the page's URL: a reload keeps it, a copied link opens it elsewhere ----------

LINK_KEYS = ("arch", "recipe")  # the layer list's text form; the recipe's settings that differ from the defaults


def design_from_link() -> None:
    """Once per session: the layer list and the recipe a link holds become the chosen ones. A part
    that cannot be used is named (design_link_problem) and the default stays in its place."""
    if st.session_state.get("link_read"):
        return
    st.session_state.link_read = True
    problems = []
    if (text := st.query_params.get("arch")) is not None:
        try:
            if len(text) > LINK_LIMIT:
                raise ConfigError(f"more than {LINK_LIMIT} characters")
            choose_model(ModelConfig.parse(text))
        except ConfigError as e:
            problems.append(f"its layer list cannot be used ({e})")
    if (text := st.query_params.get("recipe")) is not None:
        try:
            st.session_state.train_cfg = recipe_from_link(text)
        except ConfigError as e:
            problems.append(f"its recipe cannot be used ({e})")
    if problems:
        st.session_state.link_problem = ("This link's design was not opened: " + "; ".join(problems)
                                         + ". The default stands in its place.")
        design_to_link()  # the URL says what is shown


def design_to_link() -> None:
    """The chosen layer list and recipe into the URL (only what changed, so no needless history)."""
    want = {"arch": chosen_model().text, "recipe": recipe_link(saved_settings())}
    for key, value in want.items():
        if st.query_params.get(key) != value:
            if value:
                st.query_params[key] = value
            elif key in st.query_params:
                del st.query_params[key]


# -- cached loading ----------------------------------------------------------------------------


@st.cache_resource(max_entries=16, show_spinner=False)
def _load_model(path: str, mtime: float):
    return load_checkpoint(Path(path), follow_links=False)  # run folders are input: no links out of them


UPLOAD_CACHE_BYTES = 64 * 2**20  # uploaded checkpoints kept loaded, all sessions together
SESSION_UPLOAD_BYTES = 40 * 2**20  # uploaded files a session keeps to choose from


class ByteBoundedCache:
    """Least recently used entries, evicted while their sizes add up to more than `limit` bytes
    (the newest entry always stays). Thread-safe: sessions run in threads of one server."""

    def __init__(self, limit: int):
        self.limit, self.total = limit, 0
        self._items: OrderedDict = OrderedDict()  # key -> (size, value)
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            if key not in self._items:
                return None
            self._items.move_to_end(key)
            return self._items[key][1]

    def put(self, key, value, size: int) -> None:
        with self._lock:
            old = self._items.pop(key, None)
            self.total += size - (old[0] if old else 0)
            self._items[key] = (size, value)
            while self.total > self.limit and len(self._items) > 1:
                self.total -= self._items.popitem(last=False)[1][0]

    def __len__(self) -> int:
        return len(self._items)


@st.cache_resource(show_spinner=False)
def _upload_cache() -> ByteBoundedCache:
    return ByteBoundedCache(UPLOAD_CACHE_BYTES)


def _load_model_bytes(data: bytes):
    cache, key = _upload_cache(), hashlib.sha256(data).digest()
    loaded = cache.get(key)
    if loaded is None:
        loaded = load_checkpoint(data)
        cache.put(key, loaded, len(data) + sum(t.nbytes for t in loaded[0].state_dict().values()))
    return loaded


def load_model(path: Path | bytes):
    """(model, meta) from a checkpoint, loaded once per file version (or from an uploaded file's bytes)."""
    if isinstance(path, bytes):
        return _load_model_bytes(path)
    return _load_model(str(path), Path(path).stat().st_mtime)


def metrics(run: Run) -> list[dict]:
    """The run's records: every epoch, a bounded sample of batches and the latest one. Only what
    was appended since the last look is read (runs.MetricsLog), so a live page polls cheaply."""
    return run.metrics()


def model_choices() -> dict[str, Path]:
    """Label -> checkpoint: the bundled model and the best checkpoint of every run that has one."""
    choices = {}
    if BUNDLED_CHECKPOINT.exists():
        _, meta = load_model(BUNDLED_CHECKPOINT)
        choices[f"bundled model ({meta['model_config'].describe()}, {meta.get('test_acc', 0):.2f}%)"] = BUNDLED_CHECKPOINT
    for run in list_runs(runs_dir()):
        ckpt = run.path / "best.pt"
        if ckpt.exists():
            s = lab.summary(run)
            acc = f", {s['best test acc']:.2f}%" if s["best test acc"] is not None else ""
            choices[f"{run.name} ({s['architecture']}{acc}, {s['status']})"] = ckpt
    return choices


def show_card(run: Run, missing: str = "This run has no card (it may have ended before its first epoch).") -> None:
    """The run's card in a box; a card that cannot be read is named, not shown."""
    try:
        text = lab.card_text(run)
    except UnreadableFile as e:
        st.warning(f"The card cannot be shown: {e}")
        return
    if text is None:
        st.info(missing)
        return
    with st.container(border=True):
        st.markdown(text)


def try_load(path: Path):
    try:
        return load_model(path)
    except (CheckpointError, OSError) as e:
        st.error(str(e))
        return None, None


# -- charts ------------------------------------------------------------------------------------

COLORS = ["#2f6fdf", "#e4572e", "#29a35a", "#9b59b6", "#f2a93b", "#17becf", "#8c564b", "#e377c2"]


def whole_range_toggle(key: str) -> bool:
    """The accuracy charts zoom to the band around the goal; this toggle shows the whole range."""
    return st.toggle("Whole accuracy range", key=key,
                     help=f"Off: the accuracy charts show the band around the goal ({lab.goal().accuracy:g}%), "
                          "where runs differ; on: every value, from the first epoch's.")


def accuracy_axis(fig: go.Figure, goal: Goal, values: list[float], whole: bool) -> None:
    """The goal as a dotted line, and the y axis zoomed to the band that matters unless `whole`."""
    fig.add_hline(y=goal.accuracy, line=dict(color="#c0392b", dash="dot", width=1.5),
                  annotation_text=f"goal {goal.accuracy:g}%", annotation_position="bottom right",
                  annotation_font=dict(color="#c0392b", size=11))
    if not whole and any(v >= goal.accuracy - 1.0 for v in values):  # nothing in the band yet: the whole range
        top = min(100.0, max([goal.accuracy + 0.5, *[v + 0.15 for v in values]]))
        fig.update_yaxes(range=[goal.accuracy - 1.0, top])
        if any(v < goal.accuracy - 1.0 for v in values):
            fig.add_annotation(text="zoomed to the goal's band: earlier epochs lie below", showarrow=False,
                               xref="paper", yref="paper", x=0, y=0, xanchor="left", yanchor="bottom",
                               font=dict(size=10, color="#666"))


def curves_figure(series: dict[str, list[dict]], what: str, whole: bool = False) -> go.Figure:
    """Per-epoch curves of several runs: what = 'loss' or 'acc'; train dashed, test solid. The
    accuracy chart draws the goal and zooms to its band unless `whole`."""
    fig = go.Figure()
    for i, (name, epochs) in enumerate(series.items()):
        color = COLORS[i % len(COLORS)]
        x = [e["epoch"] for e in epochs]
        for split, dash in (("train", "dash"), ("test", "solid")):
            fig.add_scatter(
                x=x, y=[e[f"{split}_{what}"] for e in epochs], mode="lines+markers",
                name=f"{name} {split}" if len(series) > 1 else split, line=dict(color=color, dash=dash),
            )
    fig.update_layout(
        title="Loss per epoch" if what == "loss" else "Accuracy per epoch (%)",
        xaxis_title="epoch", yaxis_title="loss" if what == "loss" else "accuracy %",
        height=320, margin=dict(l=10, r=10, t=40, b=10), legend=dict(orientation="h", y=-0.25),
    )
    if what == "acc":
        accuracy_axis(fig, lab.goal(), [e[f"{s}_acc"] for es in series.values() for e in es for s in ("train", "test")],
                      whole)
    longest = max((len(e) for e in series.values()), default=0)
    if longest <= 20:
        fig.update_xaxes(dtick=1)  # whole epochs only
    return fig


def group_figure(series: dict[str, list[dict]], goal: Goal, whole: bool = False) -> go.Figure:
    """A group's seeds: each seed's test accuracy thin, their mean bold, the spread (lowest to
    highest seed) shaded, the goal dotted."""
    fig = go.Figure()
    by_epoch: dict[int, list[float]] = {}
    for i, (name, epochs) in enumerate(series.items()):
        for e in epochs:
            by_epoch.setdefault(e["epoch"], []).append(e["test_acc"])
        fig.add_scatter(x=[e["epoch"] for e in epochs], y=[e["test_acc"] for e in epochs], mode="lines", name=name,
                        line=dict(color=COLORS[i % len(COLORS)], width=1), opacity=0.7)
    x = sorted(by_epoch)
    lo, hi = [min(by_epoch[k]) for k in x], [max(by_epoch[k]) for k in x]
    fig.add_scatter(x=x + x[::-1], y=hi + lo[::-1], fill="toself", fillcolor="rgba(47,111,223,0.15)",
                    line=dict(width=0), name="spread (lowest to highest seed)", hoverinfo="skip")
    fig.add_scatter(x=x, y=[float(np.mean(by_epoch[k])) for k in x], mode="lines+markers", name="mean",
                    line=dict(color="#1b2a4a", width=3))
    fig.update_layout(title="Test accuracy per epoch, each seed and their mean (%)", xaxis_title="epoch",
                      yaxis_title="test accuracy %", height=340, margin=dict(l=10, r=10, t=40, b=10),
                      legend=dict(orientation="h", y=-0.25))
    accuracy_axis(fig, goal, [v for vs in by_epoch.values() for v in vs], whole)
    if len(x) <= 20:
        fig.update_xaxes(dtick=1)
    return fig


def lr_figure(series: dict[str, list[dict]]) -> go.Figure:
    """The learning rate each epoch ended with, per run, on a log axis (schedules span decades)."""
    fig = go.Figure()
    for i, (name, epochs) in enumerate(series.items()):
        fig.add_scatter(x=[e["epoch"] for e in epochs], y=[e["lr"] for e in epochs], mode="lines+markers", name=name,
                        line=dict(color=COLORS[i % len(COLORS)], shape="hv"))
    fig.update_layout(title="Learning rate per epoch (at its last step)", xaxis_title="epoch",
                      yaxis_title="learning rate (log)", height=260, margin=dict(l=10, r=10, t=40, b=10),
                      showlegend=len(series) > 1, legend=dict(orientation="h", y=-0.3))
    fig.update_yaxes(type="log", exponentformat="power")
    if max((len(e) for e in series.values()), default=0) <= 20:
        fig.update_xaxes(dtick=1)
    return fig


DIGIT_AXIS = dict(type="category", title="digit")  # "0".."9" as labels: plotly would make them numbers
                                                 # on a linear axis and label only 0, 2, 4, ...


def batch_loss_figure(batches: list[dict], max_points: int = 2000) -> go.Figure:
    """The loss of each batch (at most max_points of them, evenly spaced) and a smoothed line, on a
    log axis labelled at whole decades (1, 0.1, 0.01): no 9-8-7 minor labels that read as rising."""
    stride = max(1, -(-len(batches) // max_points))
    pts = [b for b in batches[::stride] if b["loss"] > 0 and np.isfinite(b["loss"])]
    x, y = [b["step"] for b in pts], np.array([b["loss"] for b in pts])
    smooth = np.exp(np.convolve(np.log(y), np.ones(k := max(1, min(25, len(y) // 10))) / k, mode="valid")) \
        if len(y) else y
    fig = go.Figure()
    fig.add_scatter(x=x, y=y, mode="lines", name="each batch", line=dict(color="#9bb7e8", width=1))
    fig.add_scatter(x=x[len(x) - len(smooth):], y=smooth, mode="lines", name="smoothed",
                    line=dict(color="#2f6fdf", width=2))
    fig.update_layout(
        title="Training loss per batch", xaxis_title="step", yaxis_title="loss (log scale)", height=280,
        margin=dict(l=10, r=10, t=40, b=10), legend=dict(orientation="h", y=1.12, x=1, xanchor="right"),
    )
    fig.update_yaxes(type="log", dtick=1, exponentformat="none", minor=dict(ticks="inside", showgrid=False))
    return fig
