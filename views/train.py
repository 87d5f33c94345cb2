import time
from dataclasses import replace

import numpy as np
import streamlit as st
import torch

from mnist_core import insight, jobs, lab, lrfind
from mnist_core.config import DEVICES, OPTIMIZERS, PRECISIONS, PRESETS, SCHEDULERS, ConfigError, TrainConfig
from mnist_core.data import augment, load_mnist
from mnist_core.runs import Run, RunError, list_runs
from mnist_core.train import fast_bf16
from views.common import (
    batch_loss_figure,
    choose_model,
    chosen_model,
    curves_figure,
    design_to_link,
    lr_figure,
    metrics,
    runs_dir,
    save_settings,
    saved_settings,
    show_card,
    whole_range_toggle,
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
# every recipe field that has a widget of its own, keyed tr_<field>
FIELDS = ("epochs", "batch_size", "seed", "device", "precision", "channels_last", "optimizer", "lr", "momentum", "nesterov",
          "weight_decay", "scheduler", "step_size", "gamma", "warmup_pct", "final_div", "warmup_epochs", "patience",
          "rotate", "translate", "scale", "shear", "erase", "label_smoothing", "clip_grad", "ema", "val_split")
VAL_SIZES = [0, 1000, 2000, 5000, 10000]
# where a refusal is shown: the section holding the field the message names
SECTIONS = {
    "data": ("epochs", "batch", "seed", "device", "precision", "channels-last", "limit", "val-split", "give "),
    "optimizer": ("optimizer", "lr", "momentum", "nesterov", "weight-decay"),
    "schedule": ("scheduler", "step-size", "gamma", "milestone", "warmup", "final-div", "patience"),
    "augmentation": ("rotate", "translate", "scale", "shear", "erase", "augment"),
    "regularisation": ("label-smoothing", "clip-grad", "ema"),
}


def set_hyper(cfg: TrainConfig) -> None:
    """Every widget from cfg; the old augmentation shorthand becomes the separate controls."""
    cfg = replace(cfg, **cfg.augmentation(), augment=0.0)
    for f in FIELDS:
        st.session_state[f"tr_{f}"] = getattr(cfg, f)
    st.session_state.tr_milestones = ",".join(map(str, cfg.milestones))
    st.session_state.tr_size = cfg.limit_train or ALL
    st.session_state.tr_test_size = cfg.limit_test or ALL


def on_preset():
    name = st.session_state.tr_preset
    if name:
        chosen = lab.presets()[name]
        choose_model(chosen.model)
        set_hyper(chosen.train)


def page_settings() -> dict:
    """The settings as the widgets hold them, as TrainConfig's keyword arguments."""
    values = {f: st.session_state[f"tr_{f}"] for f in FIELDS}
    text = st.session_state.tr_milestones.replace(" ", "")
    try:
        values["milestones"] = tuple(int(m) for m in text.split(",")) if text else ()
    except ValueError:
        values["milestones"] = text  # TrainConfig names it: "milestones must be a list of whole numbers"
    return {**values, "limit_train": st.session_state.tr_size or None, "limit_test": st.session_state.tr_test_size or None}


def seeds_wanted() -> list[int] | None:
    """The seeds typed in "Repeat with seeds" (None: one run); ConfigError when they cannot be read."""
    text = st.session_state.get("tr_seeds", "").strip()
    return lab.parse_seeds(text) if text else None


def refusal(values: dict) -> tuple[str, str] | None:
    """(section, message) when the settings cannot make a TrainConfig."""
    try:
        TrainConfig(**values)
        seeds_wanted()
    except ConfigError as e:
        message = str(e)
        section = next((name for name, words in SECTIONS.items() if message.startswith(words)), "data")
        return section, message
    return None


@st.cache_resource(show_spinner="Loading MNIST...")
def preview_data():
    """MNIST, loaded once per server: the augmentation preview and the LR range test use it."""
    return load_mnist()


def augmentation_preview(values: dict) -> np.ndarray:
    """Sixteen training digits as these settings would augment them: one grid, 0..1."""
    x = preview_data().train_x[:16].unsqueeze(1).float() / 255
    aug = {k: values[k] for k in ("rotate", "translate", "scale", "shear", "erase")}
    out = augment(x, **aug, generator=torch.Generator().manual_seed(0))
    return insight.tile(out[:, 0].numpy(), cols=8, scale_each=False, fill=0.35)


def lr_finder(model_cfg, values: dict, problem) -> None:
    """The LR range test on the chosen model and these settings, in this process (it writes no run)."""
    with st.expander("Find a learning rate (LR range test)"):
        st.caption("A fresh model trains for 200 batches while the rate rises from 1e-5 to 10 by the same factor "
                   "each batch; the loss against the rate shows where learning is fastest. It writes no run. "
                   f"Rule for the suggestion: {lrfind.RULE}.")
        if st.button("Run the range test", key="tr_lrfind_run", disabled=problem is not None or bool(lab.active()),
                     help="wait for the training to end: both would share this machine's cores" if lab.active() else None):
            with st.spinner("Training at rising rates..."):
                try:
                    result = lrfind.range_test(model_cfg, TrainConfig(**values), preview_data(), steps=200)
                except ConfigError as e:
                    st.error(str(e), icon="🚫")
                    return
            st.session_state.tr_lrfind = {"lrs": result.lrs, "losses": result.losses, "smoothed": result.smoothed,
                                          "suggestion": result.suggestion, "why": result.why}
        found = st.session_state.get("tr_lrfind")
        if not found:
            return
        st.plotly_chart(lr_range_figure(found), key="lrfind_chart")
        if found["suggestion"] is None:
            st.warning(f"No suggestion: {found['why']}.")
            return
        st.markdown(f"Suggested peak rate: **{found['suggestion']:.3g}** ({found['why']}).")
        st.button(f"Use {found['suggestion']:.3g} as the learning rate", key="tr_use_lr",
                  on_click=lambda: st.session_state.update(tr_lr=float(f"{found['suggestion']:.3g}")))


def lr_range_figure(found: dict):
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.add_scatter(x=found["lrs"], y=found["losses"], mode="lines", name="each batch",
                    line=dict(color="#9bb7e8", width=1))
    fig.add_scatter(x=found["lrs"], y=found["smoothed"], mode="lines", name="smoothed", line=dict(color="#2f6fdf"))
    if found["suggestion"]:
        fig.add_vline(x=found["suggestion"], line=dict(color="#e4572e", dash="dash"),
                      annotation_text=f"suggested {found['suggestion']:.3g}", annotation_position="top left")
    fig.update_layout(title="Loss against the learning rate", xaxis_title="learning rate (log scale)",
                      yaxis_title="training loss", height=300, margin=dict(l=10, r=10, t=40, b=10),
                      legend=dict(orientation="h", y=1.12, x=1, xanchor="right"))
    fig.update_xaxes(type="log", dtick=1, exponentformat="power")
    top = max(found["smoothed"][:5] or [3.0]) * 1.3  # blown-up losses would flatten the part that matters
    fig.update_yaxes(range=[0, top])
    return fig


def your_presets(model_cfg, values: dict, problem) -> None:
    """Save the chosen model and these settings under a name; delete one of yours."""
    saved = st.session_state.pop("tr_preset_saved", None)  # set just before the rerun below
    with st.expander("Your presets", expanded=saved is not None):
        if saved:
            st.success(saved)
        c1, c2, c3 = st.columns([1, 2, 1], vertical_alignment="bottom")
        name = c1.text_input("Name", key="tr_preset_name", placeholder="e.g. strided-adamw")
        about = c2.text_input("What it is (optional)", key="tr_preset_about")
        if c3.button("Save as preset", key="tr_preset_save", disabled=problem is not None or not name.strip()):
            try:
                path = lab.save_preset(name.strip(), model_cfg, TrainConfig(**values), about)
            except (ConfigError, RunError) as e:
                st.error(str(e), icon="🚫")
            else:
                st.session_state.tr_preset_saved = f"Saved {path.name}: it is listed with the presets, here and on Architecture."
                st.rerun()  # the preset boxes above list it at once
        mine = list(lab.user_presets())
        if mine:
            c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
            gone = c1.selectbox("Delete one of yours", mine, key="tr_preset_delete_choice", index=None)
            if c2.button("Delete", key="tr_preset_delete", disabled=gone is None):
                try:
                    lab.delete_preset(gone)
                    st.rerun()
                except (ConfigError, RunError) as e:
                    st.error(str(e), icon="🚫")
        st.caption(f"Stored as small JSON files in {lab.presets_dir()} (MNIST_LAB_PRESETS moves them).")


st.title("Train")
st.caption("Training runs in the background: you can leave this page or close the tab, and come back to it.")
model_cfg = chosen_model()

if "tr_epochs" not in st.session_state:  # first visit, or back from another page (widget state is dropped)
    set_hyper(saved_settings())

all_presets = lab.presets()
with st.expander("Settings", expanded=True):
    st.selectbox("Load a preset (model and recipe)", list(all_presets), index=None, key="tr_preset",
                 on_change=on_preset, placeholder=", ".join(all_presets) + "...",
                 help="; ".join(f"{p.name}: {p.about}" for p in all_presets.values()))
    values = page_settings()
    problem = refusal(values)

    def show_problem(section: str) -> None:
        if problem and problem[0] == section:
            st.error(problem[1], icon="🚫")

    st.markdown("**Data and run**")
    c1, c2, c3, c4 = st.columns(4)
    c1.number_input("Epochs", 1, 500, key="tr_epochs")
    c2.selectbox("Batch size", [16, 32, 64, 128, 256, 512], key="tr_batch_size")
    c3.selectbox("Training images", size_options(TRAIN_SIZES, st.session_state.tr_size), key="tr_size",
                 format_func=size_label(60000), help="a subset trains faster, for a quick try")
    c4.selectbox("Test images", size_options(TEST_SIZES, st.session_state.tr_test_size), key="tr_test_size",
                 format_func=size_label(10000), help="tested after every epoch: a subset tests faster, but its "
                 "accuracy is rougher (each of 2,000 images is 0.05 points)")
    c1, c2, c3, c4 = st.columns(4)
    c1.number_input("Seed", 0, 2**31 - 1, key="tr_seed", disabled=bool(st.session_state.get("tr_seeds", "").strip()),
                    help="same seed, same device: the same run. Ignored when seeds are repeated (at the right)")
    c2.text_input("Repeat with seeds", key="tr_seeds", placeholder="e.g. 1,2,3 (empty: one run)",
                  help="a group: one run per seed, all else equal, one after the other; the Runs page shows the "
                       "group's verdict (holds the goal on k of N seeds)")
    c3.selectbox("Validation images", size_options(VAL_SIZES, st.session_state.tr_val_split), key="tr_val_split",
                 format_func=lambda n: "none (best.pt on test)" if n == 0 else f"{n:,} held out",
                 help="training images held out (the same fixed choice for every run and seed); best.pt is then "
                      "chosen on them, not on the test set. The test accuracy is still reported every epoch")
    c4.selectbox("Device", DEVICES, key="tr_device")
    c1, c2, c3, c4 = st.columns(4)
    c1.selectbox("Precision", PRECISIONS, key="tr_precision",
                 help="bf16 autocast: faster on CPUs with AVX-512 BF16 / AMX and on recent GPUs, about 3x slower "
                      "elsewhere; auto: bf16 where it is fast, else fp32" + (
                          " (this machine: bf16)" if fast_bf16(torch.device("cpu")) else " (this machine's CPU: fp32)"))
    c2.checkbox("Channels-last memory", key="tr_channels_last",
                help="keep images and activations channels-last (NHWC): on a CPU it makes max-pooling several times "
                     "faster and suits models that pool early (the fast preset); others it can slow. The results "
                     "are the same")
    show_problem("data")

    st.markdown("**Optimizer**")
    sgd = st.session_state.tr_optimizer == "sgd"
    c1, c2, c3, c4 = st.columns(4)
    c1.selectbox("Optimizer", OPTIMIZERS, key="tr_optimizer", help="sgd: stochastic gradient descent with momentum; "
                 "adam; adamw: Adam with decoupled weight decay")
    c2.number_input("Learning rate", min_value=0.0, max_value=10.0, step=0.005, format="%g", key="tr_lr",
                    help="the peak rate for OneCycle and cosine; must be above 0. The LR finder below suggests one.")
    c3.number_input("Momentum (SGD)", min_value=0.0, max_value=0.999, step=0.05, format="%g", key="tr_momentum",
                    disabled=not sgd)
    c4.number_input("Weight decay", min_value=0.0, max_value=1.0, step=1e-4, format="%g", key="tr_weight_decay")
    st.checkbox("Nesterov momentum (SGD)", key="tr_nesterov", disabled=not sgd)
    show_problem("optimizer")

    st.markdown("**Learning-rate schedule**")
    kind = st.session_state.tr_scheduler
    c1, c2, c3, c4 = st.columns(4)
    c1.selectbox("Schedule", SCHEDULERS, key="tr_scheduler",
                 help="none: constant; step: x gamma every step size epochs; multistep: x gamma after each "
                      "milestone; onecycle: warm up to the rate, then anneal far below it (per batch); cosine: "
                      "cosine decay to 0 (per batch), after optional warm-up epochs; plateau: x gamma when the test "
                      "loss has not improved for `patience` epochs")
    c2.number_input("Gamma (step, multistep, plateau)", min_value=0.0, max_value=1.0, step=0.05, format="%g",
                    key="tr_gamma", disabled=kind not in ("step", "multistep", "plateau"))
    c3.number_input("Step size, epochs (step)", 1, 500, key="tr_step_size", disabled=kind != "step")
    c4.text_input("Milestones (multistep)", key="tr_milestones", disabled=kind != "multistep",
                  placeholder="e.g. 5,10", help="the epochs after which the rate is multiplied by gamma")
    c1, c2, c3, c4 = st.columns(4)
    c1.number_input("Warm-up share (onecycle)", min_value=0.0, max_value=1.0, step=0.05, format="%g",
                    key="tr_warmup_pct", disabled=kind != "onecycle",
                    help="the share of the steps spent rising from lr/10 to lr")
    c2.number_input("Final division (onecycle)", min_value=1.0, max_value=1e6, step=10.0, format="%g",
                    key="tr_final_div", disabled=kind != "onecycle",
                    help="the last rate is lr/10 divided by this")
    c3.number_input("Warm-up epochs (cosine)", 0, 499, key="tr_warmup_epochs", disabled=kind != "cosine")
    c4.number_input("Patience, epochs (plateau)", 0, 100, key="tr_patience", disabled=kind != "plateau")
    show_problem("schedule")

    st.markdown("**Augmentation** (random, per image, on the training device)")
    left, right = st.columns([1, 1.2])
    with left:
        st.slider("Rotation (degrees)", 0.0, 45.0, step=0.5, key="tr_rotate")
        st.slider("Shift (pixels)", 0.0, 6.0, step=0.25, key="tr_translate")
        st.slider("Scale (zoom within 1 ± this)", 0.0, 0.4, step=0.01, key="tr_scale")
        st.slider("Shear (degrees)", 0.0, 30.0, step=0.5, key="tr_shear")
        st.slider("Erasing (share of images with a patch erased)", 0.0, 1.0, step=0.05, key="tr_erase")
    with right:
        if problem is None or problem[0] != "augmentation":
            st.image(np.kron(augmentation_preview(values), np.ones((3, 3))).clip(0, 1),
                     caption="Sixteen training digits as these settings augment them (the same random draw each "
                             "time: move a slider to see what it does)", width="stretch")
    show_problem("augmentation")

    st.markdown("**Regularisation**")
    c1, c2, c3, _ = st.columns(4)
    c1.number_input("Label smoothing", min_value=0.0, max_value=0.99, step=0.05, format="%g", key="tr_label_smoothing")
    c2.number_input("Gradient clipping (max norm)", min_value=0.0, max_value=1e6, step=0.5, format="%g",
                    key="tr_clip_grad", help="the gradients' total norm is clipped to this; 0 = off")
    c3.number_input("Weight average (EMA decay)", min_value=0.0, max_value=0.9999, step=0.001, format="%g",
                    key="tr_ema", help="a moving average of the weights (and BatchNorm statistics), updated every "
                    "step, is what is tested and saved: smoother and usually better than the last weights; "
                    "0.998 averages over about the last 500 steps; 0 = off")
    show_problem("regularisation")

    c1, c2 = st.columns([1, 2])
    run_name = c1.text_input("Run name (optional)", placeholder="auto: run-<date>-<time>", key="tr_name",
                             help="with seeds, the group's name: its runs are <name>-seed<S>")
    target = c2.text_input("Target (the card's first TARGET line, optional)", placeholder="e.g. Try BatchNorm off")

if problem is None:
    save_settings(values)
    design_to_link()  # the settings just changed: the URL follows in this run, not the next
    seeds = seeds_wanted()
    what = f"a group of {len(seeds)} runs (seeds {','.join(map(str, seeds))}) of " if seeds else ""
    st.caption(f"Start trains {what}**{model_cfg.describe()}** ({model_cfg.params:,} parameters) with: "
               f"{TrainConfig(**values).recipe_text()}.")

lr_finder(model_cfg, values, problem)
your_presets(model_cfg, values, problem)

if started := st.session_state.pop("tr_started", None):  # set just before the rerun below
    st.toast(f"Started {started}")
active = lab.active()
sweeping = lab.active_sweep()
if sweeping is not None:
    st.info(f"Sweep **{sweeping.name}** holds this machine: its trials are runs. Stop it on the Sweeps page to "
            "train here.", icon="🔎")
with st.container(horizontal=True):  # buttons as wide as their labels, at any window width
    start = st.button("Start training", type="primary", disabled=bool(active) or problem is not None,
                      help="the settings above are refused: see the message in red" if problem else None)
    stop = st.button("Stop", disabled=not active or sweeping is not None)

if start:
    try:
        cfg = TrainConfig(**values)
        if seeds := seeds_wanted():
            run = lab.start_seeds(model_cfg, cfg, seeds, group=run_name.strip() or None, target=target.strip())[0]
        else:
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
# this machine's cores), and every rerun of a fragment costs the browser a redraw, whatever changed.
# So the view is one fragment, polling only while a training runs, every 5 s: the status and progress
# bar. Its charts are rebuilt at most every 15 s (and at once when the first epoch ends), from a few
# hundred batch points, the records read incrementally; between rebuilds the same figures are sent
# again, which the browser does not redraw.
POLL_SECONDS = 5.0
CHART_SECONDS = 15.0
LIVE_POINTS = 300


def shown_run() -> Run | None:
    """The training in progress, else this session's last run, else the newest run."""
    name = lab.active() or st.session_state.get("tr_run")
    if name and (runs_dir() / name).is_dir():
        return Run(runs_dir() / name)
    runs = list_runs(runs_dir())
    return runs[0] if runs else None


training = lab.active() is not None


@st.fragment(run_every=POLL_SECONDS if training else None)
def live_view():
    run = shown_run()
    if run is None:
        st.info("No run yet: choose settings and press **Start training**.")
        return
    status = live_status(run)
    live_charts(run, status == "running")


def live_status(run: Run) -> str:
    current = lab.status(run)
    status = str(current.get("status", "unknown"))
    st.subheader(f"{run.name}: {status}")
    if isinstance(run.config.get("parent"), str):
        st.caption(f"continues from run {run.config['parent']}")
    if isinstance(group := run.config.get("group"), str) and group:
        members = lab.group_runs(group)
        states = [lab.status(r).get("status") for r in members]
        if "running" in states or "queued" in states:
            st.caption(f"group **{group}**: seed run {members.index(run) + 1 if run in members else '?'} of "
                       f"{len(members)}; the group's verdict comes when the last seed ends")
        else:
            verdict = lab.group_verdict(members)
            box = st.success if verdict.meets else st.warning
            box(f"Group **{group}** {verdict.text(lab.goal())}. See it on the Runs page.")
    if status == "running":
        records = metrics(run)
        last = next((r for r in reversed(records) if r["kind"] == "batch"), None)
        if last:
            fraction, text = progress(last, run)
            st.progress(fraction, text=text)
        else:
            st.progress(0.0, text="loading MNIST and building the model...")
    elif current.get("reason"):
        st.warning(str(current["reason"])[:500])
    if status != "running":
        # the process writes its final status, then exits and frees the lock: wait for both
        if st.session_state.get("tr_was_running") == run.name and not lab.active():
            st.session_state.tr_was_running = None
            st.rerun()  # the whole page: Start on, Stop off, the final charts and the card, no more polling
    else:
        st.session_state.tr_was_running = run.name
    return status


def live_charts(run: Run, running: bool) -> None:
    whole = bool(st.session_state.get("tr_whole_range", False))  # the toggle below, as last set
    kept = st.session_state.get("tr_live_figures")
    records = metrics(run)
    first_epoch = kept is not None and kept["epochs"] == 0 and any(r["kind"] == "epoch" for r in records)
    fresh = (running and kept is not None and kept["run"] == run.name and kept["whole"] == whole and not first_epoch
             and time.monotonic() - kept["at"] < CHART_SECONDS)
    if not fresh:
        kept = {"run": run.name, "whole": whole, "at": time.monotonic(), **chart_parts(run.name, records, whole)}
        st.session_state.tr_live_figures = kept
    if kept["loss"] is not None:
        whole_range_toggle(key="tr_whole_range")
        c1, c2 = st.columns(2)
        c1.plotly_chart(kept["loss"], key="loss_curve")
        c2.plotly_chart(kept["acc"], key="acc_curve")
        st.markdown(kept["line"])
    if kept["batch"] is not None:
        c1, c2 = st.columns([2, 1]) if kept["lr"] is not None else (st.container(), None)
        c1.plotly_chart(kept["batch"], key="batch_curve")
        if c2 is not None:
            c2.plotly_chart(kept["lr"], key="lr_curve")
    if not running:
        show_card(run, missing="No card yet.")


def chart_parts(name: str, records: list[dict], whole: bool) -> dict:
    """The live view's figures and the last epoch's line, from a run's records (None where none yet)."""
    batches = [r for r in records if r["kind"] == "batch"]
    epochs = [r for r in records if r["kind"] == "epoch"]
    last = epochs[-1] if epochs else None
    return {
        "epochs": len(epochs),
        "loss": curves_figure({name: epochs}, "loss") if epochs else None,
        "acc": curves_figure({name: epochs}, "acc", whole) if epochs else None,
        "lr": lr_figure({name: epochs}) if epochs else None,
        "line": last and (f"Epoch {last['epoch']}: train {last['train_acc']:.2f}%, test **{last['test_acc']:.2f}%**, "
                          f"loss {last['test_loss']:.4f}, {last['seconds']:.1f} s"),
        "batch": batch_loss_figure(batches, max_points=LIVE_POINTS) if batches else None,
    }


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


live_view()
