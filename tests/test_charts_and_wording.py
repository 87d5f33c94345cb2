"""What a new user reads: every digit labelled, readable log ticks, filters in true colours, numbers
written as the rest of the app writes them, settings that stay when a page is left."""

from __future__ import annotations

import numpy as np

from apptest_kit import page


def test_batch_loss_axis_is_labelled_at_whole_decades():
    from views.common import batch_loss_figure

    batches = [{"step": s, "loss": 2.3 * 0.999**s} for s in range(1, 3001)]
    fig = batch_loss_figure(batches)
    y = fig.layout.yaxis
    assert y.type == "log" and y.dtick == 1 and y.exponentformat == "none"  # 1, 0.1, 0.01: no 9, 8, 7 ...
    raw, smooth = fig.data
    assert len(raw.x) <= 2000 and raw.name == "each batch" and smooth.name == "smoothed"
    assert np.all(np.diff(smooth.y) <= 1e-9)  # a falling loss reads as falling


def test_digit_bar_charts_label_every_digit(app, mnist):
    """Plotly turns '0'..'9' into numbers on a linear axis and labels only the even ones; the axis
    is a category axis on every digit chart."""
    from views.common import DIGIT_AXIS

    assert DIGIT_AXIS["type"] == "category"
    import sys
    from types import SimpleNamespace
    from unittest import mock

    from mnist_core.bench import synthetic_drawing

    page(app, "views/draw.py")
    with mock.patch.object(sys.modules["streamlit_drawable_canvas"], "st_canvas",
                           return_value=SimpleNamespace(image_data=synthetic_drawing())):
        app.run()
    import json

    charts = {c.proto.id.rsplit("-", 1)[-1]: json.loads(c.proto.spec) for c in app.get("plotly_chart")}
    for key in ("probs", "many_probs"):
        assert charts[key]["layout"]["xaxis"]["type"] == "category", key


def test_first_layer_filters_use_one_scale_centred_on_zero():
    from views.draw_insight import filters_figure

    filters = np.zeros((4, 3, 3), np.float32)
    filters[0, 0, 0], filters[1, 1, 1], filters[2, 2, 2] = 0.5, -0.25, 0.1
    fig = filters_figure(filters)
    hm = fig.data[0]
    assert hm.zmid == 0 and hm.zmin == -0.5 and hm.zmax == 0.5  # shared, symmetric: zero is white
    assert hm.colorscale[-1][1].lower() in ("rgb(103,0,31)", "#67001f")  # the top of the scale is red
    z = np.array(hm.z, dtype=float)
    assert z.shape == (3, 4 * 4 - 1) and np.isnan(z[:, 3]).all()  # the padding is blank, not a colour
    assert z[0, 0] == 0.5 and z[1, 5] == -0.25  # the weights themselves, not rescaled per filter


def test_architecture_keeps_the_budget_across_pages(app):
    page(app, "views/architecture.py")
    app.number_input(key="arch_budget_input").set_value(8000).run()
    assert any("8,000-parameter budget" in p.proto.text for p in app.get("progress"))
    page(app, "views/train.py")
    page(app, "views/architecture.py")
    assert app.number_input(key="arch_budget_input").value == 8000
    assert any("8,000-parameter budget" in p.proto.text for p in app.get("progress"))


def test_ab_form_writes_sizes_as_the_train_page_does(app):
    page(app, "views/architecture.py")
    box = app.selectbox(key="ab_size")
    assert box.options[0] == "all 60,000" and "10,000" in box.options and "60000" not in box.options
