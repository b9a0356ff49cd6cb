"""The Python API (nst.api): the same engine without the command line, at tiny sizes with the real weights."""

import pytest
from PIL import Image

from nst import stylize, stylize_batch
from nst.errors import InputError


def test_stylize_returns_the_transfer_as_a_pil_image_and_a_callback_sees_every_step(tmp_path):
    seen = []
    image = stylize("tubingen", "starry_night", size=32, steps=4, device="cpu", style_weight=1e4,
                    optimizer__history_size=5, callback=lambda step: seen.append((step.trial, step.evaluation, dict(step.values))))
    assert isinstance(image, Image.Image) and image.mode == "RGB" and max(image.size) == 32
    summary = image.info["summary"]
    assert summary["status"] == "completed" and summary["evaluations"] == 4
    assert summary["settings"]["style_weight"] == 1e4 and summary["settings"]["optimizer"]["history_size"] == 5
    assert [e for _, e, _ in seen] == [1, 2, 3, 4] and {t for t, _, _ in seen} == {0}
    assert {"total", "content", "style", "tv"} <= set(seen[0][2]) and seen[-1][2]["total"] < seen[0][2]["total"]
    assert list(tmp_path.iterdir()) == []  # nothing written without out_dir


def test_the_batch_form_runs_several_settings_together_and_writes_where_asked(tmp_path):
    out = tmp_path / "out"
    images = stylize_batch("tubingen", "starry_night", [{"style_weight": 1e2}, {"style_weight": 1e6}],
                           size=32, steps=3, device="cpu", out_dir=out)
    summaries = [im.info["summary"] for im in images]
    assert [s["settings"]["style_weight"] for s in summaries] == [1e2, 1e6]
    assert [s["batch"]["size"] for s in summaries] == [2, 2]  # one batch, as a sweep runs them
    assert summaries[0]["final"]["style"] > summaries[1]["final"]["style"]  # the style weight acts
    for i in (0, 1):
        assert (out / str(i) / "final.png").exists() and (out / str(i) / "summary.json").exists()


def test_bad_keywords_are_one_line_errors_before_anything_runs():
    with pytest.raises(InputError, match=r"^size"):
        stylize(size=-3, device="cpu")
    with pytest.raises(InputError, match=r"^content"):
        stylize("no_such_picture.jpg", device="cpu", size=32, steps=1)
