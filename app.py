"""mnist-lab: design, train and try tiny CNNs on MNIST.  Run with `streamlit run app.py`."""

import streamlit as st

import views.preload  # noqa: F401  (heavy imports once, before several first sessions race for them)

st.set_page_config(page_title="mnist-lab", page_icon="🔢", layout="wide")

pages = [
    st.Page("views/home.py", title="Home", icon="🏠", default=True),
    st.Page("views/architecture.py", title="Architecture", icon="🧱"),
    st.Page("views/train.py", title="Train", icon="🏋️"),
    st.Page("views/draw.py", title="Draw", icon="✏️"),
    st.Page("views/runs.py", title="Runs", icon="📊"),
    st.Page("views/sweep.py", title="Sweeps", icon="🔎"),
]
page = st.navigation(pages)

from views.common import design_from_link, design_to_link  # noqa: E402  (after set_page_config)

design_from_link()  # a link's design, once per session
design_to_link()  # the design in the URL: a reload keeps it, a copied link opens it elsewhere
if problem := st.session_state.pop("link_problem", None):
    st.warning(problem, icon="🔗")

with st.sidebar:
    st.markdown("### mnist-lab")
    st.caption(
        "Design a tiny CNN, train it on MNIST, read its curves, draw digits for it. "
        "Start on **Architecture**, then **Train**; **Draw** works at once with the bundled model."
    )
    from views.common import active_run_name

    from mnist_core import lab

    st.caption(f"Goal: **{lab.goal().text()}** (set it on Home).")
    name = active_run_name()
    if name and (running := lab.active_sweep()) is not None:
        st.info(f"Sweep **{running.name}** is running in the background.", icon="🔎")
    elif name:
        st.info(f"Training **{name}** in the background.", icon="⏳")

page.run()
