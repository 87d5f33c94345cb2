import streamlit as st

from mnist_core import lab
from mnist_core.card import plural
from mnist_core.config import PRESETS
from mnist_core.goal import Goal, GoalError
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

steps = [
    ("🧱 Architecture", "views/architecture.py", "Toggle BatchNorm, slide channel widths; the parameter count, layer table and receptive field follow live."),
    ("🏋️ Train", "views/train.py", "Train the chosen model in the background; watch loss and accuracy curves; stop at any time."),
    ("✏️ Draw", "views/draw.py", "Draw a digit and see what a model reads, with the 28x28 image it sees. Works now, with the bundled model."),
    ("📊 Runs", "views/runs.py", "Every run with its card; overlay curves to compare, e.g. with and without BatchNorm."),
    ("🔎 Sweeps", "views/sweep.py", "Let the machine search a space of layer lists and recipes for the smallest model "
                                   "that holds the goal."),
]
cols = st.columns(len(steps))
for col, (title, page, text) in zip(cols, steps):
    with col:
        st.page_link(page, label=title)
        st.caption(text)

st.subheader("The goal")
current = lab.goal()
st.markdown(f"Every run and every group of seeds is marked **meets** or **misses** against: **{current.text()}**. "
            "The accuracy charts draw it and zoom to its band.")
with st.form("goal", border=True):
    a, b, c, d = st.columns(4)
    accuracy = a.number_input("Test accuracy (%)", 50.0, 100.0, float(current.accuracy), step=0.05, format="%.2f",
                              help="to hold in each of the last epochs below")
    last = b.number_input("In each of the last … epochs", 1, 100, current.last)
    max_epochs = c.number_input("At most … epochs", 1, 10000, current.max_epochs,
                                help="epochs the weights saw in all, a continued run's parent included")
    max_params = d.number_input("Under … parameters", 1, 10**9, current.max_params, step=500)
    saved, reset = st.columns([1, 5])
    save = saved.form_submit_button("Save the goal", type="primary")
    default = reset.form_submit_button("Back to the assignment's (99.4%, last 3, 15 epochs, under 8,000)")
if save or default:
    try:
        lab.set_goal(Goal() if default else Goal(float(accuracy), int(last), int(max_epochs), int(max_params)))
        st.rerun()
    except GoalError as e:
        st.error(str(e), icon="🚫")

st.subheader("Presets")
for p in PRESETS.values():
    st.markdown(f"- **{p.name}**: {p.about}")

n = len(list_runs(runs_dir()))
st.caption(f"{plural(n, 'run')} in `{runs_dir()}`." if n else f"No run yet; runs are stored in `{runs_dir()}`.")
