import json

import numpy as np
import pytest
from compressmamba.eval.plots import main, replot
from PIL import Image

GRAY = (127, 127, 127)  # matplotlib's tab:gray, the cut states
BLUE = (31, 119, 180)  # tab:blue, the kept states


def _count(png, rgb):
    a = np.asarray(Image.open(png).convert("RGB")).reshape(-1, 3)
    return int((np.abs(a.astype(int) - rgb).sum(1) <= 3).sum())


@pytest.fixture
def run_dir(tmp_path):
    rng = np.random.default_rng(0)
    rows = [{"step": 0, "kind": "train", "wall_time": 0.0, "loss": 5.5, "state_sizes": [9, 7, 8, 9, 6]}]
    old = [9, 7, 8, 9, 6]
    for step, new in ((10, [5, 7, 4, 3, 6]), (20, [5, 7, 4, 3, 6])):
        energies = [sorted(rng.exponential(size=n).tolist(), reverse=True) for n in old]
        rows.append({"step": step, "kind": "cut", "wall_time": 1.0, "old_sizes": old, "new_sizes": new,
                     "energy_kept": [0.9] * 5, "energies": energies, "seconds": 0.1})  # fmt: skip
        rows.append({"step": step, "kind": "eval", "wall_time": 2.0, "split": "val", "loss": 4.0, "state_sizes": new})
        old = new
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path


def test_replot_marks_kept_and_cut_states(run_dir, tmp_path, capsys):
    paths = replot(run_dir, tmp_path / "png")
    assert [p.name for p in paths] == ["energy_step10.png", "energy_step20.png", "state_sizes.png"]
    first, second = paths[0], paths[1]
    assert _count(first, GRAY) > 10_000 and _count(first, BLUE) > 10_000  # step 10 cut states in 4 layers
    assert _count(second, GRAY) < 1000 < _count(second, BLUE)  # step 20 kept everything (gray: antialiasing)
    assert Image.open(paths[2]).size[0] > 100
    assert main([str(run_dir)]) == 0
    assert (run_dir / "plots" / "energy_step10.png").is_file() and "state_sizes.png" in capsys.readouterr().out


def test_replot_bad_run_folder(tmp_path):
    with pytest.raises(ValueError, match="run_dir: .* has no metrics.jsonl"):
        replot(tmp_path)
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 3, "kind": "cut", "old_sizes": [4]}) + "\n")
    with pytest.raises(ValueError, match="cut row at step 3 has no 'energies'"):
        replot(tmp_path)
