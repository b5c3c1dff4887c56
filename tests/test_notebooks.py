"""Every tutorial notebook runs top to bottom in smoke mode, and the committed
copies carry the outputs of a full run.

The smoke run re-executes the notebook into a scratch file; figures and cached
networks go to the scratch folders set up in conftest.py, so the committed
notebooks, Figs/ and checkpoints/ are never touched.
"""
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_smoke_mode(path, tmp_path, monkeypatch):
    papermill = pytest.importorskip("papermill")
    monkeypatch.setenv("SMOKE", "1")
    # The parameters cell reads SMOKE from the environment (as `make tutorial` sets SMOKE=0),
    # so no parameter is injected: the sizes it derives always agree with SMOKE.
    papermill.execute_notebook(
        str(path), str(tmp_path / path.name), cwd=str(path.parent), kernel_name="python3",
        progress_bar=False)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_notebook_carries_full_run_outputs(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code, f"{path.name} has no code cells"
    assert all(c.get("execution_count") for c in code), (
        f"{path.name}: some cells were not executed; run `make notebooks`")
    tagged = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{path.name} needs exactly one cell tagged 'parameters'"
    injected = [c for c in code if "injected-parameters" in c.get("metadata", {}).get("tags", [])]
    printed = "".join(o.get("text", "") if isinstance(o.get("text", ""), str) else "".join(o["text"])
                      for c in code for o in c.get("outputs", []))
    smoke = any("SMOKE = True" in "".join(c["source"]) for c in injected) or "SMOKE=True" in printed
    assert not smoke, f"{path.name} was committed from a smoke run; run `make notebooks`"
    errors = [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"{path.name} carries an error output"


def test_no_notebook_is_missing_from_readme():
    readme = (ROOT / "README.md").read_text()
    missing = [p.name for p in NOTEBOOKS if p.name not in readme]
    assert not missing, f"README's series table lacks {missing}"
