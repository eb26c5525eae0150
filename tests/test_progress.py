"""lscape._progress: tqdm bars that do not flood a log file."""
import io

import pytest
from lscape._progress import ProgressBar, as_callback


def test_a_non_terminal_gets_a_few_lines_not_hundreds_of_frames():
    log = io.StringIO()  # not a terminal, like stderr redirected to a file
    bar = ProgressBar("job", stream=log)
    for i in range(1, 1001):
        bar(i, 1000)
    text = log.getvalue()
    assert text.count("\r") <= 3, text
    assert "1000/1000" in text


def test_as_callback():
    assert as_callback(False, "x") is None and as_callback(None, "x") is None
    f = lambda done, total: None  # noqa: E731
    assert as_callback(f, "x") is f
    assert isinstance(as_callback(True, "x"), ProgressBar)
    with pytest.raises(TypeError, match="progress"):
        as_callback("yes", "x")
