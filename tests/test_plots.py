"""Plots of data in any script: labels that the default font lacks (Chinese) are drawn from an
installed CJK font, and where none is installed one warning says so, never one per glyph."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest
from matplotlib import font_manager

from rnnkit import plots


def test_without_a_cjk_font_one_warning_says_so(monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(plots, "CJK_FONTS", ())
    monkeypatch.setattr(plots, "_said", set())
    with caplog.at_level(logging.WARNING, logger="rnnkit"), warnings.catch_warnings():
        warnings.simplefilter("error")  # a UserWarning per glyph would raise here
        for _ in range(2):
            assert plots.confusion_matrix(np.array([[3, 1], [0, 4]]), ["好", "差"]).startswith(b"\x89PNG")
    assert [r.getMessage() for r in caplog.records] == [
        "warning: the plots show some characters as boxes: no installed font has them (for Chinese, install one such "
        "as fonts-noto-cjk or fonts-wqy-microhei)"]


@pytest.mark.skipif(not {f.name for f in font_manager.fontManager.ttflist} & set(plots.CJK_FONTS),
                    reason="no CJK font installed")
def test_with_a_cjk_font_chinese_labels_are_drawn(caplog: pytest.LogCaptureFixture) -> None:
    said_before = plots._said.copy()
    with caplog.at_level(logging.WARNING, logger="rnnkit"), warnings.catch_warnings():
        warnings.simplefilter("error")
        plots.confusion_matrix(np.array([[3, 1], [0, 4]]), ["好", "差"])
    assert not caplog.records and plots._said == said_before
