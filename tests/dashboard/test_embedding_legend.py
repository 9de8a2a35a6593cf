"""The embedding map's legend shows each class alone: its colour and the plain circle, never the
error cross of a class whose first plotted point is an error."""

from __future__ import annotations

import pandas as pd

from xaidash.dashboard import figures


def test_legend_symbol_is_the_class_alone() -> None:
    pts = pd.DataFrame(
        {
            "image_id": [f"{i:016x}" for i in range(6)],
            "split": ["val"] * 5 + ["train"],
            "x": [0.0, 1, 2, 3, 4, 5],
            "y": [0.0, 1, 2, 3, 4, 5],
            "label": [0, 0, 1, 1, 1, 0],
            "label_name": ["a", "a", "b", "b", "b", "a"],
            "pred": [1, 0, 1, 0, 1, 0],
            "pred_name": ["b", "a", "b", "a", "b", "a"],
            "correct": [False, True, True, False, True, None],  # class a's first point is an error
        }
    )
    fig = figures.plot_embedding(pts, ["a", "b"], "true")
    assert fig.data[0].name == "twins" and fig.data[1].name == "selected"
    legend = [t for t in fig.data if t.showlegend is not False]
    assert sorted(t.name for t in legend) == ["a", "b"]
    for t in legend:
        assert t.marker.symbol == "circle" and t.legendgroup == t.name and list(t.x) == [None]
    points = [t for t in fig.data if t.showlegend is False and t.name in ("a", "b")]
    assert {t.legendgroup for t in points} == {"a", "b"}
    assert "x" in list(next(t for t in points if t.name == "a").marker.symbol)  # errors still crosses
