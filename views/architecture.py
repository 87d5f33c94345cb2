import json

import pandas as pd
import streamlit as st

from mnist_core import insight, jobs, lab, spec
from mnist_core.config import MAX_WIDTH, WIDTH_NAMES, ConfigError, ModelConfig, replace
from mnist_core.model import build_model, summary_text
from mnist_core.runs import RunError
from views import layer_editor
from views.common import choose_model, chosen_model, design_to_link, saved_settings

WIDGETS = [f"arch_w{i}" for i in range(6)]
LABELS = {
    "block1": "Block 1 (3x3 conv)", "block2": "Block 2 (3x3 conv)", "transition": "Transition (1x1 conv)",
    "block3": "Block 3 (3x3 conv, after pool)", "block4": "Block 4 (3x3 conv)", "block5": "Block 5 (3x3 conv)",
}
ABOUT = {
    "conv": "convolution", "bn": "BatchNorm", "relu": "ReLU", "dropout": "dropout", "maxpool": "max-pool",
    "avgpool": "average pool", "gap": "global average pool", "linear": "fully connected",
    "add": "residual: adds an earlier layer's output",
}

EDITOR_COLUMNS = {  # the layer editor's columns; widths in pixels: all eleven fit the page's right column
    "#": st.column_config.NumberColumn("#", help="position: change it to move the row", width=44),
    "type": st.column_config.SelectboxColumn("type", options=list(spec.LAYER_TYPES), required=True, width=78,
                                             help="; ".join(f"{k}: {v}" for k, v in ABOUT.items())),
    "out": st.column_config.NumberColumn(width=56, help="conv, linear: output channels", min_value=1,
                                         max_value=spec.MAX_CHANNELS, step=1),
    "kernel": st.column_config.NumberColumn("k", width=44, help="kernel: conv (3), maxpool/avgpool (2)",
                                            min_value=1, step=1),
    "stride": st.column_config.NumberColumn("s", width=44, help="stride: conv (1), maxpool/avgpool (2)",
                                            min_value=1, max_value=spec.MAX_STRIDE, step=1),
    "padding": st.column_config.NumberColumn("pad", width=54, help="padding (conv): zeros on each side (0)",
                                             min_value=0, step=1),
    "dilation": st.column_config.NumberColumn("dil", width=50, min_value=1, max_value=spec.MAX_DILATION, step=1,
                                              help="dilation (conv): spacing of the kernel's taps (1)"),
    "depthwise": st.column_config.CheckboxColumn("dw", width=48,
                                                 help="depthwise (conv): one filter group per input channel"),
    "bias": st.column_config.CheckboxColumn(width=56, help="conv (off), linear (on)"),
    "p": st.column_config.NumberColumn(width=52, help="dropout probability (0.1)", min_value=0.0,
                                       max_value=spec.MAX_DROPOUT, step=0.01),
    "skip": st.column_config.NumberColumn(width=56, min_value=0, step=1,
                                          help="add: the layer whose output is added here (0: the input image)"),
}


# -- one model, four editors: the preset box, the template, the text form and the layer table ---
# Each editor's callback makes a ModelConfig; a valid one becomes the chosen model and every other
# editor is set from it; an invalid one leaves the model as it was and says why.


def show(cfg: ModelConfig) -> None:
    """Set every editor from cfg and choose it."""
    choose_model(cfg)
    st.session_state.arch_spec = cfg.text
    settings = cfg.template_settings()
    if settings is not None:
        widths, batchnorm, dropout = settings
        for key, w in zip(WIDGETS, widths):
            st.session_state[key] = w
        st.session_state.arch_bn = batchnorm
        st.session_state.arch_dropout = float(dropout)
        st.session_state.arch_widths = ",".join(map(str, widths))
    st.session_state.arch_layers_n = st.session_state.get("arch_layers_n", 0) + 1  # the table starts afresh
    st.session_state.arch_error = None


def show_template_defaults() -> None:
    """The template widgets, for a first visit with a model of another shape."""
    widths, batchnorm, dropout = ModelConfig().template_settings()
    for key, w in zip(WIDGETS, widths):
        st.session_state.setdefault(key, w)
    st.session_state.setdefault("arch_bn", batchnorm)
    st.session_state.setdefault("arch_dropout", dropout)
    st.session_state.setdefault("arch_widths", ",".join(map(str, widths)))


def attempt(make) -> None:
    """show(make()), or the reason it cannot be built."""
    try:
        show(make())
    except (ConfigError, spec.SpecError) as e:
        st.session_state.arch_error = str(e)


def on_preset():
    name = st.session_state.arch_preset
    if name:
        chosen = lab.presets()[name]
        show(chosen.model)
        st.session_state.train_cfg = chosen.train  # a preset is the whole recipe: Train starts from it
        st.session_state.arch_recipe_from = name


def on_template():
    attempt(lambda: ModelConfig.template(tuple(st.session_state[k] for k in WIDGETS), st.session_state.arch_bn,
                                         st.session_state.arch_dropout))


def on_widths():
    text = st.session_state.arch_widths
    try:
        widths = tuple(int(p) for p in text.replace(" ", "").split(","))
    except ValueError:
        st.session_state.arch_error = f"widths must be 6 whole numbers separated by commas, got {text!r}"
        return
    attempt(lambda: ModelConfig.template(widths, st.session_state.arch_bn, st.session_state.arch_dropout))


def on_spec():
    attempt(lambda: ModelConfig.parse(st.session_state.arch_spec))


def table_key() -> str:
    return f"arch_layers_{st.session_state.get('arch_layers_n', 0)}"


def on_table():
    attempt(lambda: layer_editor.apply(chosen_model(), st.session_state[table_key()]))


# -- what the model is --------------------------------------------------------------------------


@st.cache_data(max_entries=256, show_spinner=False)
def plan_frame(cfg: ModelConfig) -> pd.DataFrame:
    """The layer table from the list alone: no torch, fast enough for every keystroke."""
    return pd.DataFrame([{
        "#": row.index, "layer": spec.to_text([row.layer]), "output": "x".join(map(str, row.shape)),
        "params": row.params, "RF": f"{row.receptive_field}x{row.receptive_field}", "mult-adds": row.macs,
    } for row in cfg.rows])


@st.cache_data(max_entries=256, ttl=120, show_spinner=False)
def latency_ms(cfg: ModelConfig) -> float:
    """Measured time of one single-image forward pass on this machine's CPU: the fastest of 20,
    or of as many as 30 ms of measuring allows (three at least), so that a big model stays live.
    Kept two minutes, not for good: a figure taken while the machine was busy (the server's first
    page, a training beside it) is measured again."""
    return insight.inference_ms(build_model(cfg), repeat=20, budget_ms=30)


@st.cache_data(max_entries=64, show_spinner=False)
def torchinfo_text(cfg: ModelConfig) -> str:
    return summary_text(cfg)


st.title("Architecture")
st.caption("A model is a list of layers. Edit it as a table, as one line of text, or with the template's "
           "sliders; the parameter count, the layer table and the receptive field follow every change. "
           "The Train page trains this model.")

current = chosen_model()
if "arch_spec" not in st.session_state:  # first visit, or back from another page (widget state is dropped)
    show_template_defaults()
    show(current)

left, right = st.columns([1, 2.6], gap="medium")
with left:
    all_presets = lab.presets()
    st.selectbox("Preset (model and recipe)", list(all_presets), key="arch_preset", index=None,
                 placeholder="Load a preset...", on_change=on_preset,
                 help="; ".join(f"{p.name}: {p.about}" for p in all_presets.values()))
    if (source := st.session_state.get("arch_recipe_from")) in all_presets:
        st.info(f"Train starts from **{source}**'s recipe: {saved_settings().recipe_text()}. "
                "Change it on the Train page.")
    # a widget's own state is dropped when the page is left: the budget lives in a key of its own
    st.number_input("Parameter budget", min_value=100, max_value=10_000_000, step=500, key="arch_budget_input",
                    value=st.session_state.setdefault("arch_budget", 10_000),
                    on_change=lambda: st.session_state.update(arch_budget=st.session_state.arch_budget_input))
    budget = st.session_state.arch_budget
    with st.container(border=True):
        st.markdown("**Template**: the reference skeleton")
        in_family = current.template_settings() is not None
        st.caption("conv3 ×2, a 1x1 transition, max-pool, conv3 ×3, GAP, a 1x1 head." + (
            "" if in_family else " The model is of another shape now: a change here replaces it with the template."))
        st.checkbox("BatchNorm", key="arch_bn", on_change=on_template, help="Conv-BN-ReLU blocks; off gives Conv-ReLU")
        for key, name in zip(WIDGETS, WIDTH_NAMES):
            st.slider(LABELS[name], 1, MAX_WIDTH, key=key, on_change=on_template)
        st.slider("Dropout", 0.0, 0.5, step=0.01, key="arch_dropout", on_change=on_template,
                  help="Dropout2d after every ReLU; 0 = off")
        st.text_input("Widths (type them exactly)", key="arch_widths", on_change=on_widths,
                      help="six numbers, e.g. 12,16,10,12,16,30")
st.session_state.arch_template_shown = current.template_settings()


@st.fragment
def model_panel(budget: int) -> None:
    """The count, the tables, the text form and the editor. An edit in the text form or the table reruns
    only this part, not the whole page: that keeps a 40-layer list live. The template column outside
    follows with a whole-page rerun only when the edit changed what it shows."""
    cfg = chosen_model()
    design_to_link()  # a fragment rerun does not pass through app.py, which keeps the URL up to date
    if cfg.template_settings() != st.session_state.arch_template_shown:
        st.rerun()  # the template's sliders or caption would be stale: draw the whole page
    if error := st.session_state.get("arch_error"):
        st.error(f"{error}. Showing the last valid model.", icon="🚫")
    total = cfg.params
    st.subheader(f"Total params: {total:,}")
    ratio = total / budget
    st.progress(min(ratio, 1.0), text=f"{ratio:.0%} of the {budget:,}-parameter budget")
    if total <= budget:
        st.success(f"Within budget: {budget - total:,} parameters to spare.", icon="✅")
    else:
        st.warning(f"Over budget by {total - budget:,} parameters.", icon="⚠️")
    rf = cfg.rows[-1].receptive_field
    macs = sum(r.macs for r in cfg.rows)
    st.markdown(f"Model **{cfg.describe()}**")
    # one wrapping line, not three metric boxes: nothing is cut short in a narrow column
    cost = st.empty()  # filled last: the timing runs the model, the rest is arithmetic

    def show_cost(ms: float | None) -> None:
        timing = f"**{ms:.2f} ms**" if ms is not None else "timing..."
        cost.markdown(f"**{macs / 1e6:.2f} M** multiply-adds per image · {timing} to read one "
                      f"image on this CPU · receptive field **{rf}x{rf}**",
                      help="Multiply-adds as torchinfo counts them; the time is the fastest of up to 20 single-"
                           "image forward passes on this machine; the receptive field is the input patch one "
                           "output sees.")

    show_cost(None)
    st.text_input("Layers as text", key="arch_spec", on_change=on_spec,
                  help="One token per layer, for copy and paste: conv16 (3x3), conv16k1 (1x1), conv16s2p1 "
                       "(stride 2, padding 1), conv16dw (depthwise), conv16+b (with bias), bn, relu, drop0.1, "
                       "maxpool, avgpool, gap, linear10, add3 (adds layer 3's output: a residual connection). "
                       "The JSON form ({\"layers\": [...]}) is accepted too.")
    # only the open tab's grid is made and sent: two 40-row grids would slow every edit
    plan, edit = st.tabs(["Layer table", "Edit the layers"], key="arch_tab", on_change="rerun")
    if plan.open:
        with plan:
            df = plan_frame(cfg)
            st.dataframe(df, hide_index=True, width="stretch", height=min(40 + 35 * len(df), 760),
                         column_config={"mult-adds": st.column_config.NumberColumn(format="compact"),
                                        "RF": st.column_config.TextColumn(help="receptive field: the input patch one "
                                                                               "output value of the layer sees")})
    if edit.open:
        with edit:
            st.caption("Change a cell, add a row at the bottom, select rows to delete them; change **#** to move "
                       "a row (2.5 goes between 2 and 3). Blank cells take the defaults. k, s, pad, dil: kernel, "
                       "stride, padding, dilation; dw: depthwise; p: dropout; skip: the layer an add takes.")
            st.data_editor(
                layer_editor.frame(cfg), key=table_key(), on_change=on_table, num_rows="dynamic", hide_index=True,
                width="stretch", height=38 + 35 * (len(cfg.layers) + 1),  # every row in view, and room for a new one
                column_config=EDITOR_COLUMNS,
            )
    with st.expander("As JSON, the command line's --arch file"):
        st.code(json.dumps(cfg.to_dict()), language="json", wrap_lines=True)
    if st.toggle("torchinfo's summary", key="arch_torchinfo", help="the table torchinfo prints for this model "
                 "(it runs the model once, so it is made only when asked for)"):
        st.code(torchinfo_text(cfg), language=None)

    show_cost(latency_ms(cfg))  # last: the count, the table and the editor are on the page before the model runs


with right:
    model_panel(budget)


with left, st.expander("Train A/B: BatchNorm on vs off"):
    st.caption("Two runs of this architecture that differ only in BatchNorm: same seed, same data order, "
               "the Train page's settings. They train one after the other; compare them on the Runs page.")
    with st.form("ab", enter_to_submit=False):  # two trainings start only from the button, never from Enter
        base = saved_settings()
        epochs = st.number_input("Epochs", 1, 100, base.epochs, key="ab_epochs")
        sizes = [0] + sorted({base.limit_train or 10000, 10000, 5000, 2000}, reverse=True)  # 0: all of them
        size = st.selectbox("Training images", sizes, index=sizes.index(base.limit_train or 0), key="ab_size",
                            format_func=lambda n: f"{n:,}" if n else "all 60,000")
        launch = st.form_submit_button("Train A/B")
    if launch:
        try:
            runs = lab.start_ab_batchnorm(chosen_model(), replace(base, epochs=int(epochs), limit_train=size or None))
            st.success(f"Started {runs[0].name}, then {runs[1].name}. Follow them on the Train page.")
        except (ConfigError, RunError, jobs.Busy) as e:
            st.error(str(e))
