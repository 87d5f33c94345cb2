"""Helpers shared by the AppTest page tests."""

from streamlit.testing.v1 import AppTest


def page(at: AppTest, path: str) -> AppTest:
    """Switch to a page script (e.g. "views/draw.py"), run it, and insist it raised nothing."""
    at.switch_page(path).run()
    assert not at.exception, at.exception
    return at


def texts(elements) -> list[str]:
    return [e.value for e in elements]


def chart_keys(node) -> set[str]:
    """Keys of the plotly charts under an AppTest or an element (the user key ends the element id)."""
    return {c.proto.id.rsplit("-", 1)[-1] for c in node.get("plotly_chart")}
