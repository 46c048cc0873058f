"""Execute every example notebook (small settings via NEUROSIM_NOTEBOOK_FAST=1); fail on any cell error.

A cell injected before the notebook forces the Agg backend, and one after it checks that every figure the
notebook made has a title and axis labels on each axes that shows data.
"""
import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "examples" / "notebooks").glob("*.ipynb"))

SETUP = "import matplotlib\nmatplotlib.use('Agg')\n"
CHECK = '''
import matplotlib.pyplot as _plt
_missing = []
for _num in _plt.get_fignums():
    _fig = _plt.figure(_num)
    _sup = _fig._suptitle.get_text() if _fig._suptitle is not None else ""
    for _i, _ax in enumerate(_fig.axes):
        if _ax.get_label() == "<colorbar>" or not (_ax.has_data() or _ax.images):
            continue
        if not (_ax.get_title() or _sup):
            _missing.append(f"figure {_num} axes {_i}: no title")
        if not _ax.get_xlabel() or not _ax.get_ylabel():
            _missing.append(f"figure {_num} axes {_i}: missing axis label")
assert not _missing, _missing
print("figures checked:", len(_plt.get_fignums()))
'''


def test_there_are_notebooks():
    names = {p.name[:2] for p in NOTEBOOKS}
    assert "01" in names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{path.name} has stored outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell(SETUP))
    nb.cells.append(nbformat.v4.new_code_cell(CHECK))
    env_before = os.environ.get("NEUROSIM_NOTEBOOK_FAST")
    os.environ["NEUROSIM_NOTEBOOK_FAST"] = "1"
    try:
        NotebookClient(nb, timeout=600, kernel_name="python3",
                       resources={"metadata": {"path": str(tmp_path)}}).execute()
    finally:
        if env_before is None:
            os.environ.pop("NEUROSIM_NOTEBOOK_FAST", None)
        else:
            os.environ["NEUROSIM_NOTEBOOK_FAST"] = env_before
