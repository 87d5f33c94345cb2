import streamlit as st

from mnist_core.card import plural
from mnist_core.config import PRESETS
from mnist_core.runs import list_runs
from views.common import runs_dir

st.title("mnist-lab")
st.markdown(
    """
Design, train and try **tiny convolutional networks on MNIST**, the loop of a notebook experiment
(change the architecture, train, read the curves, write the card) as one app.
The starting point is a 9,596-parameter CNN: Conv-BN-ReLU blocks, a 1x1 transition, max-pool,
global average pooling and a 1x1 head, which reaches 99.3% test accuracy in 15 epochs.
"""
)

cols = st.columns(4)
steps = [
    ("🧱 Architecture", "views/architecture.py", "Toggle BatchNorm, slide channel widths; the parameter count, layer table and receptive field follow live."),
    ("🏋️ Train", "views/train.py", "Train the chosen model in the background; watch loss and accuracy curves; stop at any time."),
    ("✏️ Draw", "views/draw.py", "Draw a digit and see what a model reads, with the 28x28 image it sees. Works now, with the bundled model."),
    ("📊 Runs", "views/runs.py", "Every run with its card; overlay curves to compare, e.g. with and without BatchNorm."),
]
for col, (title, page, text) in zip(cols, steps):
    with col:
        st.page_link(page, label=title)
        st.caption(text)

st.subheader("Presets")
for p in PRESETS.values():
    st.markdown(f"- **{p.name}**: {p.about}")

n = len(list_runs(runs_dir()))
st.caption(f"{plural(n, 'run')} in `{runs_dir()}`." if n else f"No run yet; runs are stored in `{runs_dir()}`.")
