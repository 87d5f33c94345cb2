import time

import streamlit as st
import torch

from mnist_core import jobs, lab
from mnist_core.config import DEVICES, PRECISIONS, PRESETS, SCHEDULERS, ConfigError, TrainConfig
from mnist_core.runs import Run, RunError, list_runs
from mnist_core.train import fast_bf16
from views.common import (
    batch_loss_figure,
    chosen_model,
    curves_figure,
    metrics,
    runs_dir,
    save_settings,
    saved_settings,
    show_card,
)

# subset sizes offered; every preset's own sizes are offered too, so a preset comes through exactly
TRAIN_SIZES = sorted({10000, 5000, 2000, 1000} | {p.train.limit_train for p in PRESETS.values() if p.train.limit_train},
                     reverse=True)
TEST_SIZES = sorted({5000, 2000, 1000} | {p.train.limit_test for p in PRESETS.values() if p.train.limit_test},
                    reverse=True)


ALL = 0  # the choice "all images" (a select box shows None as no choice at all)


def size_options(sizes: list[int], current: int) -> list[int]:
    """ALL first, then the sizes, the current value among them whatever it is."""
    return [ALL] + sorted(set(sizes) | ({current} if current else set()), reverse=True)


def size_label(total: int):
    return lambda n: f"all {total:,}" if n == ALL else f"{n:,}"
FIELDS = ("epochs", "batch_size", "lr", "scheduler", "weight_decay", "augment", "seed", "device", "precision",
          "ema")


def set_hyper(cfg: TrainConfig) -> None:
    for f in FIELDS:
        st.session_state[f"tr_{f}"] = getattr(cfg, f)
    st.session_state.tr_size = cfg.limit_train or ALL
    st.session_state.tr_test_size = cfg.limit_test or ALL


def on_preset():
    set_hyper(PRESETS[st.session_state.tr_preset].train)


st.title("Train")
model_cfg = chosen_model()
st.caption(f"Model from the Architecture page: **{model_cfg.describe()}**. Training runs in the background; "
           "you can leave this page or close the tab, and come back to it.")

if "tr_epochs" not in st.session_state:  # first visit, or back from another page (widget state is dropped)
    set_hyper(saved_settings())

with st.expander("Settings", expanded=True):
    st.selectbox("Load settings of a preset", list(PRESETS), index=None, key="tr_preset", on_change=on_preset,
                 placeholder=", ".join(PRESETS) + "...")
    c1, c2, c3, c4 = st.columns(4)
    c1.number_input("Epochs", 1, 100, key="tr_epochs")
    c2.selectbox("Batch size", [16, 32, 64, 128, 256, 512], key="tr_batch_size")
    c3.number_input("Learning rate", min_value=0.0, max_value=10.0, step=0.005, format="%g", key="tr_lr",
                    help="peak rate for OneCycle; must be above 0")
    c4.selectbox("LR schedule", SCHEDULERS, key="tr_scheduler")
    c1, c2, c3, c4 = st.columns(4)
    c1.number_input("Weight decay", min_value=0.0, max_value=1.0, step=1e-4, format="%g", key="tr_weight_decay")
    c2.slider("Augmentation (rotation degrees)", 0.0, 20.0, step=0.5, key="tr_augment",
              help="random rotation up to this angle, with a matching small shift and scale; 0 = off")
    c3.number_input("Seed", 0, 2**31 - 1, key="tr_seed")
    c4.selectbox("Training images", size_options(TRAIN_SIZES, st.session_state.tr_size), key="tr_size",
                 format_func=size_label(60000), help="a subset trains faster, for a quick try")
    c1, c2, c3, c4 = st.columns(4)
    c1.selectbox("Device", DEVICES, key="tr_device")
    c2.selectbox("Precision", PRECISIONS, key="tr_precision",
                 help="bf16 autocast: faster on CPUs with AVX-512 BF16 / AMX and on recent GPUs, about 3x slower "
                      "elsewhere; auto: bf16 where it is fast, else fp32" + (
                          " (this machine: bf16)" if fast_bf16(torch.device("cpu")) else " (this machine's CPU: fp32)"))
    c3.number_input("Weight average (EMA decay)", min_value=0.0, max_value=0.9999, step=0.001, format="%g",
                    key="tr_ema", help="a moving average of the weights (and BatchNorm statistics), updated every "
                    "step, is what is tested and saved: smoother and usually better than the last weights; "
                    "0.998 averages over about the last 500 steps; 0 = off")
    c4.selectbox("Test images", size_options(TEST_SIZES, st.session_state.tr_test_size), key="tr_test_size",
                 format_func=size_label(10000), help="tested after every epoch: a subset tests faster, but its "
                 "accuracy is rougher (each of 2,000 images is 0.05 points)")
    c1, c2 = st.columns([1, 2])
    run_name = c1.text_input("Run name (optional)", placeholder="auto: run-<date>-<time>", key="tr_name")
    target = c2.text_input("Target (the card's first TARGET line, optional)", placeholder="e.g. Try BatchNorm off")


def page_settings() -> dict:
    """The settings as the widgets hold them, as TrainConfig's keyword arguments."""
    return {**{f: st.session_state[f"tr_{f}"] for f in FIELDS}, "limit_train": st.session_state.tr_size or None,
            "limit_test": st.session_state.tr_test_size or None}


save_settings(page_settings())

if started := st.session_state.pop("tr_started", None):  # set just before the rerun below
    st.toast(f"Started {started}")
active = lab.active()
with st.container(horizontal=True):  # buttons as wide as their labels, at any window width
    start = st.button("Start training", type="primary", disabled=bool(active))
    stop = st.button("Stop", disabled=not active)

if start:
    try:
        cfg = TrainConfig(**page_settings())
        run = lab.start(model_cfg, cfg, name=run_name.strip(), target=target.strip())
        st.session_state.tr_run = st.session_state.tr_started = run.name
    except (ConfigError, RunError, jobs.Busy) as e:
        st.error(str(e), icon="🚫")
    else:
        st.rerun()  # draw the buttons and the sidebar again: Start off, Stop on, the training named
if stop and active:
    lab.stop(Run(runs_dir() / active))
    st.toast(f"Asked {active} to stop; it saves its checkpoint after the current batch.")


# The live view's cost falls on the training it watches (the app, the browser and the training share
# this machine's cores): poll every 2 s, and draw the batch curve from a few hundred points.
POLL_SECONDS = 2.0
LIVE_POINTS = 400


def shown_run() -> Run | None:
    """The training in progress, else this session's last run, else the newest run."""
    name = lab.active() or st.session_state.get("tr_run")
    if name and (runs_dir() / name).is_dir():
        return Run(runs_dir() / name)
    runs = list_runs(runs_dir())
    return runs[0] if runs else None


@st.fragment(run_every=POLL_SECONDS)
def live():
    run = shown_run()
    if run is None:
        st.info("No run yet: choose settings and press **Start training**.")
        return
    current = lab.status(run)
    status = str(current.get("status", "unknown"))
    records = metrics(run)
    batches = [r for r in records if r["kind"] == "batch"]
    epochs = [r for r in records if r["kind"] == "epoch"]
    st.subheader(f"{run.name}: {status}")
    if isinstance(run.config.get("parent"), str):
        st.caption(f"continues from run {run.config['parent']}")
    if status == "running":
        if batches:
            fraction, text = progress(batches[-1], run)
            st.progress(fraction, text=text)
        else:
            st.progress(0.0, text="loading MNIST and building the model...")
    elif current.get("reason"):
        st.warning(str(current["reason"])[:500])
    if epochs:
        c1, c2 = st.columns(2)
        c1.plotly_chart(curves_figure({run.name: epochs}, "loss"), key="loss_curve")
        c2.plotly_chart(curves_figure({run.name: epochs}, "acc"), key="acc_curve")
        last = epochs[-1]
        st.markdown(f"Epoch {last['epoch']}: train {last['train_acc']:.2f}%, test **{last['test_acc']:.2f}%**, "
                    f"loss {last['test_loss']:.4f}, {last['seconds']:.1f} s")
    if batches:
        st.plotly_chart(batch_loss_figure(batches, max_points=LIVE_POINTS), key="batch_curve")
    if status != "running":
        show_card(run, missing="No card yet.")
        # the process writes its final status, then exits and frees the lock: wait for both
        if st.session_state.get("tr_was_running") == run.name and not lab.active():
            st.session_state.tr_was_running = None
            st.rerun()  # re-enable Start, disable Stop
    else:
        st.session_state.tr_was_running = run.name


def progress(b: dict, run: Run) -> tuple[float, str]:
    """(share done in 0..1, text) from the latest batch record and the run's plan. The files are
    input: a plan of 0 or "abc" epochs, 0 batches or a batch past the last are shown as they
    can be, never divided by."""
    train_cfg = run.config.get("train", {})
    planned, offset = train_cfg.get("epochs"), train_cfg.get("start_epoch", 0)  # a resumed run numbers on
    planned = planned if isinstance(planned, int) and not isinstance(planned, bool) and planned > 0 else None
    offset = offset if isinstance(offset, int) and not isinstance(offset, bool) and offset >= 0 else 0
    per_epoch = max(b["batches"], 1)
    done = max(b["epoch"] - offset - 1, 0) * per_epoch + min(b["batch"], per_epoch)
    total = (planned or max(b["epoch"] - offset, 1)) * per_epoch
    fraction = min(max(done / total, 0.0), 1.0)
    text = (f"epoch {b['epoch']}/{offset + planned if planned else '?'} · batch {min(b['batch'], per_epoch)}/"
            f"{b['batches']} · {b['images_per_s']:,.0f} images/s")
    elapsed = time.time() - _started(run)
    if planned and 0 < done < total and elapsed > 0:
        eta = elapsed / done * (total - done)
        text += f" · ETA {eta // 60:.0f} min {eta % 60:02.0f} s" if eta < 100 * 3600 else " · ETA over 100 hours"
    return fraction, text


def _started(run: Run) -> float:
    import datetime as dt

    try:
        return dt.datetime.fromisoformat(str(run.status["started"])).timestamp()
    except (KeyError, ValueError, OverflowError):
        return time.time()


live()
