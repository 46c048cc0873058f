"""The README's tour runs as printed (in a temporary directory): EST trained through the trainer, energy report,
export refused for the EST with layers named, the spiking MLP exported to NetX and run on Lava's simulator, whose
readout membrane gives the float model's predictions."""
import os
import re
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def test_readme_starts_with_the_two_setup_commands():
    text = (ROOT / "README.md").read_text()
    first_block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.splitlines() if line.strip()]
    assert commands == ["bash scripts/demo.sh", "bash scripts/test.sh"]
    assert text.index("```bash") < text.index("## ")


def test_tour_runs(tmp_path, capsys):
    text = (ROOT / "README.md").read_text()
    tour = re.search(r"## A tour in 20 lines\n\n```python\n(.*?)```", text, re.S).group(1)
    assert len(tour.strip().splitlines()) <= 22
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        scope: dict = {}
        exec(compile(tour, "README tour", "exec"), scope)
    finally:
        os.chdir(cwd)
    out = capsys.readouterr().out
    assert "qk_matmul: multiplies/adds two activations" in out           # the EST export refusal names layers
    assert (tmp_path / "runs/tour/energy.png").stat().st_size > 0 and (tmp_path / "runs/tour/mlp.net").exists()
    assert not (tmp_path / "runs/tour/est.net").exists()
    assert scope["trainer"].history and scope["report"].layers
    lava_out, v, s = scope["out"], scope["v"], scope["s"]
    assert torch.is_tensor(lava_out) and lava_out.shape[:2] == (20, 64) and set(lava_out.unique().tolist()) <= {0., 1.}
    # The prediction read from Lava (the readout's membrane) is the float model's on (almost) every digit: the
    # quantization and the 4 extra steps of bias may flip a near tie, an all-zero membrane agrees on about 1 in 10.
    assert v.shape == (64, 10)
    with torch.no_grad():
        float_pred = scope["mlp"].model.eval().forward_spikes(s).argmax(-1)
    assert (v.argmax(-1) == float_pred).float().mean() >= 0.9
    assert re.search(r"Lava: \d+% right", out)
