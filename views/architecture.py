import pandas as pd
import streamlit as st

from mnist_core.config import MAX_WIDTH, PRESETS, WIDTH_NAMES, ConfigError, ModelConfig
from mnist_core import insight
from mnist_core.model import build_model, summary_rows
from mnist_core import jobs, lab
from mnist_core.config import replace
from mnist_core.runs import RunError
from views.common import choose_model, chosen_model, saved_settings

WIDGETS = [f"arch_w{i}" for i in range(6)]
LABELS = {
    "block1": "Block 1 (3x3 conv)", "block2": "Block 2 (3x3 conv)", "transition": "Transition (1x1 conv)",
    "block3": "Block 3 (3x3 conv, after pool)", "block4": "Block 4 (3x3 conv)", "block5": "Block 5 (3x3 conv)",
}


def set_widgets(cfg: ModelConfig) -> None:
    widths, batchnorm, dropout = cfg.template_settings() or ModelConfig().template_settings()
    for key, w in zip(WIDGETS, widths):
        st.session_state[key] = w
    st.session_state.arch_bn = batchnorm
    st.session_state.arch_dropout = float(dropout)
    st.session_state.arch_text = ",".join(map(str, widths))
    st.session_state.arch_error = None


def on_preset():
    set_widgets(PRESETS[st.session_state.arch_preset].model)


def on_slider():
    st.session_state.arch_text = ",".join(str(st.session_state[k]) for k in WIDGETS)
    st.session_state.arch_error = None


def on_text():
    text = st.session_state.arch_text
    try:
        widths = tuple(int(p) for p in text.replace(" ", "").split(","))
    except ValueError:
        st.session_state.arch_error = f"widths must be 6 whole numbers separated by commas, got {text!r}"
        return
    try:
        cfg = ModelConfig.template(widths, st.session_state.arch_bn, st.session_state.arch_dropout)
    except ConfigError as e:
        st.session_state.arch_error = str(e)
        return
    set_widgets(cfg)


@st.cache_data(max_entries=256, show_spinner=False)
def table(cfg: ModelConfig) -> tuple[pd.DataFrame, int]:
    rows = summary_rows(cfg)
    for row, layer in zip(rows, cfg.rows):
        row["output"] = "x".join(map(str, layer.shape))  # 12x26x26: narrower than torchinfo's [-1, 12, 26, 26]
        row["RF"] = f"{layer.receptive_field}x{layer.receptive_field}"
    df = pd.DataFrame(rows)[["layer", "output", "params", "RF", "mult-adds"]]
    return df, int(df["mult-adds"].sum())


@st.cache_data(max_entries=256, show_spinner=False)
def latency_ms(cfg: ModelConfig) -> float:
    """Measured time of one single-image forward pass on this machine's CPU (median of 20)."""
    return insight.inference_ms(build_model(cfg), repeat=20)


st.title("Architecture")
st.caption("Every change updates the parameter count, the layer table and the receptive field. The Train page trains this model.")

current = chosen_model()
if "arch_w0" not in st.session_state:  # first visit, or back from another page
    set_widgets(current)

left, right = st.columns([1, 2.6], gap="medium")  # the layer table needs the room
with left:
    st.selectbox("Preset", list(PRESETS), key="arch_preset", index=None, placeholder="Load a preset...", on_change=on_preset)
    st.checkbox("BatchNorm", key="arch_bn", help="Conv-BN-ReLU blocks; off gives Conv-ReLU")
    for key, name in zip(WIDGETS, WIDTH_NAMES):
        st.slider(LABELS[name], 1, MAX_WIDTH, key=key, on_change=on_slider)
    st.slider("Dropout", 0.0, 0.5, step=0.01, key="arch_dropout", help="Dropout2d after every ReLU; 0 = off")
    st.text_input("Widths (type them exactly)", key="arch_text", on_change=on_text, help="six numbers, e.g. 12,16,10,12,16,30")
    # a widget's own state is dropped when the page is left: the budget lives in a key of its own
    st.number_input("Parameter budget", min_value=100, max_value=10_000_000, step=500, key="arch_budget_input",
                    value=st.session_state.setdefault("arch_budget", 10_000),
                    on_change=lambda: st.session_state.update(arch_budget=st.session_state.arch_budget_input))
    budget = st.session_state.arch_budget

error = st.session_state.get("arch_error")
try:
    cfg = ModelConfig.template(tuple(st.session_state[k] for k in WIDGETS), st.session_state.arch_bn,
                               st.session_state.arch_dropout)
    choose_model(cfg)
except ConfigError as e:
    error, cfg = str(e), current

with right:
    if error:
        st.error(f"{error}. Showing the last valid model.", icon="🚫")
    df, macs = table(cfg)
    total = int(df["params"].sum())
    st.subheader(f"Total params: {total:,}")
    ratio = total / budget
    st.progress(min(ratio, 1.0), text=f"{ratio:.0%} of the {budget:,}-parameter budget")
    if total <= budget:
        st.success(f"Within budget: {budget - total:,} parameters to spare.", icon="✅")
    else:
        st.warning(f"Over budget by {total - budget:,} parameters.", icon="⚠️")
    rf = cfg.rows[-1].receptive_field
    st.markdown(f"Model **{cfg.describe()}**")
    # one wrapping line, not three metric boxes: nothing is cut short in a narrow column
    st.markdown(f"**{macs / 1e6:.2f} M** multiply-adds per image · **{latency_ms(cfg):.2f} ms** to read one "
                f"image on this CPU · receptive field **{rf}x{rf}**",
                help="Multiply-adds as torchinfo counts them; the time is the median of 20 single-image "
                     "forward passes on this machine; the receptive field is the input patch one output sees.")
    st.dataframe(df, hide_index=True, width="stretch", height=min(40 + 35 * len(df), 760),
                 column_config={"mult-adds": st.column_config.NumberColumn(format="compact")})


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
            runs = lab.start_ab_batchnorm(cfg, replace(base, epochs=int(epochs), limit_train=size or None))
            st.success(f"Started {runs[0].name}, then {runs[1].name}. Follow them on the Train page.")
        except (ConfigError, RunError, jobs.Busy) as e:
            st.error(str(e))
