"""The example notebook (docs/examples/stylize.ipynb) runs, cell by cell, in a real Jupyter kernel at a
tiny size, and its cells produce what the manual shows: the live loss plot, the grid of style weights,
the sweep's table."""

import json
import sys
from pathlib import Path

import pandas as pd
import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK = Path(__file__).resolve().parent.parent / "docs" / "examples" / "stylize.ipynb"
SIZE, STEPS = 48, 12

# Run after the notebook's own cells, in its kernel: what they left behind, as one line of JSON.
PROBE = """
import json
print(json.dumps({"curve": [total for _, total, _, _ in curve], "losses": result.losses["total"].tolist(),
                  "size": list(result.size), "row": [p.settings.style_weight for p in row],
                  "table": table[["style_weight", "status"]].to_dict("records"), "out": str(out)}))
"""


def _kernel(tmp_path: Path) -> str:
    """A kernel spec that runs this very interpreter (so the kernel imports this checkout's nst)."""
    spec = tmp_path / "jupyter" / "kernels" / "nst-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "nst test", "language": "python"}))
    return "nst-test"


def test_the_example_notebook_runs_and_shows_what_it_teaches(tmp_path, monkeypatch):
    for key, value in {"NST_NOTEBOOK_SIZE": str(SIZE), "NST_NOTEBOOK_STEPS": str(STEPS),
                       "NST_NOTEBOOK_OUT": str(tmp_path / "out"), "NST_PROGRESS": "1",  # the bars, as a user sees them
                       "JUPYTER_PATH": str(tmp_path / "jupyter"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
                       "IPYTHONDIR": str(tmp_path / "ipython"), "MPLCONFIGDIR": str(tmp_path / "mpl")}.items():
        monkeypatch.setenv(key, value)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(PROBE))
    client = nbclient.NotebookClient(nb, kernel_name=_kernel(tmp_path), timeout=300,
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()

    cells = [c for c in nb.cells if c.cell_type == "code"]
    assert "NST_NOTEBOOK_SIZE" in cells[0].source  # the parameters come first
    probe = json.loads("".join(o.get("text", "") for o in cells[-1].outputs if o.output_type == "stream"))
    assert max(probe["size"]) == SIZE
    # the live plot: the callback saw every evaluation, the loss fell, and the plot was drawn in place
    assert probe["curve"] == probe["losses"] and len(probe["curve"]) == STEPS and probe["curve"][-1] < probe["curve"][0]
    plot = _cell(cells, "plot_loss")
    displays = [o for o in plot.outputs if o.output_type == "display_data" and "image/png" in o.get("data", {})]
    assert displays
    assert "image/png" in plot.outputs[-1]["data"]  # the result itself, shown as a picture
    # the progress bar is tqdm.auto's widget in a notebook
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in plot.outputs)
    # the grid of style weights, one picture per weight
    grid = _cell(cells, "stylize_batch(")
    assert any("image/png" in o.get("data", {}) for o in grid.outputs)
    assert probe["row"] == [1e3, 1e4, 1e5, 1e6]
    # the sweep's table, read with pandas: one completed row per weight, the same file on disk
    assert probe["table"] == [{"style_weight": w, "status": "completed"} for w in (1e3, 1e4, 1e5, 1e6)]
    assert Path(probe["out"]).parent == tmp_path / "out"
    assert len(pd.read_csv(Path(probe["out"]) / "results.csv")) == 4
    assert any("text/html" in o.get("data", {}) for o in _cell(cells, "read_csv").outputs)
    assert any("image/png" in o.get("data", {}) for o in _cell(cells, "scatter").outputs)
    # no cell wrote an error or a warning
    for cell in cells:
        for o in cell.outputs:
            assert o.output_type != "error"
            assert not (o.output_type == "stream" and o.name == "stderr" and "Warning" in o.text), o.text
    # nothing written into the working folder but the sweep folder it was given (and Jupyter's own)
    assert {p.name for p in tmp_path.iterdir()} <= {"out", "jupyter", "runtime", "ipython", "mpl"}


def _cell(cells, text: str):
    (cell,) = [c for c in cells if text in c.source]
    return cell
