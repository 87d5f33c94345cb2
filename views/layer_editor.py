"""The layer list as rows of an editable table (st.data_editor) and back.

The editor reports its changes as {"edited_rows": {i: {column: value}}, "added_rows": [...],
"deleted_rows": [...]} against the rows it was given; `apply` replays them on the model's rows
and reads the result as a layer list. The '#' column orders the rows, so changing it moves a row
(2.5 goes between 2 and 3); a new row without one goes last. A cell that the row's type does
not take is left out, a blank cell takes the default, and a bad row is named with its reason.
"""

from __future__ import annotations

import math

import pandas as pd

from mnist_core import spec
from mnist_core.config import ModelConfig

OPTIONS = ["out", "kernel", "stride", "padding", "dilation", "depthwise", "bias", "p", "skip"]


def frame(cfg: ModelConfig) -> pd.DataFrame:
    """'#', type, and each option the row's type takes (the others blank)."""
    rows = []
    for i, lay in enumerate(cfg.layers, 1):
        row = {"#": float(i), "type": lay.type}
        row.update({key: getattr(lay, key) for key in spec.DEFAULTS[lay.type]})
        rows.append(row)
    df = pd.DataFrame(rows, columns=["#", "type", *OPTIONS])
    for key in ("out", "kernel", "stride", "padding", "dilation", "skip"):
        df[key] = df[key].astype("Int64")
    for key in ("depthwise", "bias"):
        df[key] = df[key].astype("boolean")
    df["p"] = df["p"].astype("Float64")
    return df


def apply(cfg: ModelConfig, edits: dict) -> ModelConfig:
    """cfg with the editor's changes; ConfigError or SpecError names the row that cannot be."""
    rows = [{k: (None if _blank(v) else v) for k, v in row.items()} for row in frame(cfg).astype(object).to_dict("records")]
    for i, change in (edits.get("edited_rows") or {}).items():
        rows[int(i)].update(change)
    for i in sorted((int(i) for i in edits.get("deleted_rows") or []), reverse=True):
        del rows[i]
    rows += edits.get("added_rows") or []
    return ModelConfig(tuple(layers(rows)))


def layers(rows: list[dict]) -> list[spec.Layer]:
    """Rows (in any order of '#') -> layers."""
    order = sorted(range(len(rows)), key=lambda i: (_position(rows[i].get("#")), i))
    out = []
    for n, i in enumerate(order, 1):
        row = rows[i]
        kind = row.get("type")
        if _blank(kind):
            raise spec.SpecError(f"layer {n}: choose its type ({', '.join(spec.LAYER_TYPES)})")
        d = {"type": kind}
        for key in spec.DEFAULTS.get(kind, {}):
            v = row.get(key)
            if _blank(v):
                continue
            if isinstance(v, float) and key != "p" and v.is_integer():
                v = int(v)  # the editor sends numbers as JSON: 16.0 is 16
            d[key] = v
        out.append(spec.layer_from_dict(d, f"layer {n}"))
    return out


def _position(v) -> float:
    if _blank(v):
        return math.inf
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.inf


def _blank(v) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))
