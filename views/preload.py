"""Imports the heavy modules the pages use, once, before any page runs.

app.py imports this first. Several sessions that start at once (a restored browser with tabs)
would otherwise import pandas, plotly and torch in parallel script threads, and Python's import
locks can hand one of them a partially initialised module. The first session imports them here,
under this module's import lock; the others wait for it, then find them loaded.
"""

import numpy  # noqa: F401
import pandas  # noqa: F401
import pandas.core.frame  # noqa: F401
import plotly.graph_objects  # noqa: F401
import pyarrow  # noqa: F401  (st.dataframe's serialisation)
import streamlit.dataframe_util  # noqa: F401
import torch  # noqa: F401
import torchinfo  # noqa: F401
from PIL import Image  # noqa: F401

import mnist_core.draw  # noqa: F401
import mnist_core.insight  # noqa: F401
import mnist_core.jobs  # noqa: F401
import views.common  # noqa: F401
