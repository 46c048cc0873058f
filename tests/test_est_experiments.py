"""The EST experiment script: its SynOps counter against hand counts, and a smoke run of every task."""
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from neurosim.layers import CausalConv1d, MatMul, RandomSpikeMask

ROOT = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("est_experiments", ROOT / "examples" / "est_experiments.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


E = load_script()


class _Net(nn.Module):
    def __init__(self, ratio=0.0):
        super().__init__()
        self.rsm = RandomSpikeMask(ratio, mode="always", seed=0)
        self.fc = nn.Linear(6, 5)
        self.conv = nn.Conv1d(6, 6, 3, groups=3)
        self.mm = MatMul()

    def forward(self, x):  # x [T, B, 6] spikes
        s = self.rsm(x)
        self.fc(s)
        self.conv(s.permute(1, 2, 0))
        return self.mm(s.unsqueeze(-2), s.unsqueeze(-1))  # per (t, b): s . s


def test_count_ops_matches_hand_count():
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(4, 2, 6, generator=g) < 0.5).float()
    ops = E.count_ops(_Net(), x, batch=2)
    nnz = float(x.sum())
    # Linear: each spike reaches 5 outputs; grouped conv: 6/3 = 2 output channels x 3 taps;
    # MatMul s.s: one product per spike with both operands non-zero
    assert math.isclose(ops["synops"] * 2, nnz * 5 + nnz * 2 * 3 + nnz)
    assert ops["macs"] == 0
    real = torch.randn(4, 2, 6)
    assert E.count_ops(nn.Sequential(nn.Linear(6, 5)), real, batch=1)["macs"] == 4 * 2 * 6 * 5
    # MatMul with no binary operand (the astro attention's phi(Q) in {1, 2} x real): every product is a MAC
    a, b = 1 + (torch.rand(3, 4, 5, generator=g) < 0.5).float(), torch.rand(3, 5, 2, generator=g)
    ops = E.count_ops(_MM(), (a, b), batch=1)
    assert (ops["synops"], ops["macs"]) == (0, 3 * 4 * 5 * 2)
    ops = E.count_ops(_MM(), (a - 1, b), batch=1)                   # spikes x real: the nonzero products
    assert (ops["synops"], ops["macs"]) == (float((a - 1).sum()) * 2, 0)


class _MM(nn.Module):
    def __init__(self):
        super().__init__()
        self.mm = MatMul()

    def forward(self, ab):
        return self.mm(*ab)


def test_masked_spikes_cost_no_synops():
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(50, 8, 6, generator=g) < 0.5).float()
    net = nn.Sequential(RandomSpikeMask(0.75, mode="always", seed=3), nn.Linear(6, 5))
    full = E.count_ops(nn.Sequential(nn.Linear(6, 5)), x, batch=1)["synops"] / 5
    masked = E.count_ops(net, x, batch=1)["synops"] / 5
    net[0].reseed()
    assert masked == float(net[0](x).sum())  # exactly the surviving spikes
    n = float(x.sum())
    assert abs((full - masked) - 0.75 * n) <= 5 * math.sqrt(n * 0.75 * 0.25)


def test_smoke_suite_runs_every_task(tmp_path):
    E.main(["--suite", "smoke", "--seeds", "0", "--steps", "3", "--out", str(tmp_path)])
    rows = [json.loads(line) for line in open(tmp_path / "results.jsonl")]
    assert {r["task"] for r in rows} == {"population", "digits", "forecast_damped"}
    for r in rows:
        assert r["synops"] > 0 and math.isfinite(r.get("r2", r.get("accuracy", float("nan"))))
    assert "Smoke" in E.summarize(tmp_path / "results.jsonl")


def _row(group="smoke", task="forecast_damped", seed=0, variant="EST (full)", score=0.3, **kw):
    """A results.jsonl row as run_one writes it (made up: no training)."""
    r = dict(group=group, task=task, variant=variant, overrides={}, seed=seed, device="cpu", steps=3, small=True,
             backend="snntorch", final_train_loss=1.0, seconds=1.0, rsm_mode="always", rsm_ratio=0.5,
             residual="membrane", pos_encoding="cpg", synops=100.0, macs=10.0, energy_nj=1.0)
    r.update(accuracy=score) if task == "digits" else r.update(mse=0.1, r2=score)
    r.update(kw)
    return r


def _rsm(task, seed, ratio, mode="always", **kw):
    return _row("rsm", task, seed, rsm_ratio=ratio, rsm_mode=mode,
                overrides={"rsm_ratio": ratio, "rsm_mode": mode}, **kw)


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_plot_of_a_file_without_rsm_runs_says_there_is_nothing_to_plot(tmp_path, capsys):
    # (a smoke file crashed inside matplotlib: "Number of columns must be a positive integer, not 0")
    f = _write(tmp_path / "results.jsonl", [_row(), _row(task="digits", variant="Spikformer baseline")])
    png = tmp_path / "rsm.png"
    assert E.main(["--summarize", str(f), "--plot", str(png)]) == 1
    out = capsys.readouterr()
    assert "### Smoke" in out.out                                       # the tables are still printed
    assert f"--plot: {f} holds no RSM sweep runs" in out.err and "nothing to plot" in out.err
    assert not png.exists()


def test_plot_draws_whatever_rsm_runs_there_are(tmp_path, recwarn):
    # one task with one ratio of one mode (a sweep cut short), beside runs of other groups: a point, no empty panel
    # (the old code skipped lines of fewer than two ratios, and matplotlib warned of a legend with nothing in it)
    f = _write(tmp_path / "results.jsonl", [_row(), _rsm("digits", 0, 0.25, "train"), _rsm("digits", 1, 0.25, "train")])
    png = tmp_path / "rsm.png"
    assert E.main(["--summarize", str(f), "--plot", str(png)]) == 0
    assert png.is_file() and png.stat().st_size > 0
    assert not [w for w in recwarn if "legend" in str(w.message)]


def test_summary_counts_a_repeated_run_once_and_says_so(tmp_path):
    # (a second run into the same --out appended the same seeds again: "± 0.0000 (n=2)" from one seed)
    f = _write(tmp_path / "results.jsonl", [_row(seed=0, score=0.1), _row(seed=1, score=0.3), _row(seed=0, score=0.5)])
    text = E.summarize(f)
    assert "| forecast_damped | EST (full) | r2 | 0.4000 ± 0.1414 (n=2) |" in text      # seeds 0 (last line) and 1
    assert "2 runs," in text
    assert (f"Note: 1 runs appear on more than one line of {f} (the same configuration and seed, run again into the "
            f"same file); each is counted once, its last line: smoke forecast_damped 'EST (full)' {{}} seed 0 "
            f"(2 lines).") in text
    assert "Note:" not in E.summarize(_write(tmp_path / "once.jsonl", [_row(seed=0), _row(seed=1)]))
    # another device is the same seed again; other steps are another configuration
    rows, repeated = E.load_rows(_write(tmp_path / "dev.jsonl", [_row(), _row(device="cuda"), _row(steps=4)]))
    assert len(rows) == 2 and list(repeated.values()) == [2]


def test_summary_keeps_runs_of_other_training_settings_apart(tmp_path):
    # (a rerun with other --steps into the same --out was averaged with the first as one more seed)
    f = _write(tmp_path / "results.jsonl", [_row(seed=0, score=0.1), _row(seed=1, score=0.3),
                                             _row(seed=0, score=0.5, steps=20)])
    text = E.summarize(f)
    assert "| forecast_damped | EST (full) [steps 3] | r2 | 0.2000 ± 0.1414 (n=2) |" in text
    assert "| forecast_damped | EST (full) [steps 20] | r2 | 0.5000 ± nan (n=1) |" in text
    assert "| forecast_damped | EST (full) | r2 | 0.2000 ± 0.1414 (n=2) |" in E.summarize(   # one setting: no label
        _write(tmp_path / "one.jsonl", [_row(seed=0, score=0.1), _row(seed=1, score=0.3)]))


def test_rerun_into_the_same_out_skips_the_runs_already_there(tmp_path, monkeypatch, capsys):
    jobs = E.jobs_for("smoke", [0], "cpu", 2, small=True)
    _write(tmp_path / "results.jsonl", [dict(_row(), **j) for j in jobs])         # seed 0 done
    ran = []
    monkeypatch.setattr(E, "run_one", lambda job: ran.append(job) or dict(_row(), **job))
    monkeypatch.setattr(E, "ema_baseline", lambda seed: dict(mse=1.0, r2=0.0))     # (the summary's, not needed)
    assert E.main(["--suite", "smoke", "--seeds", "0", "--steps", "2", "--out", str(tmp_path)]) == 0
    assert ran == [] and "3 of 3 runs are already in" in capsys.readouterr().out
    assert E.main(["--suite", "smoke", "--seeds", "0", "1", "--steps", "2", "--out", str(tmp_path)]) == 0
    assert [j["seed"] for j in ran] == [1, 1, 1]                                 # only the new seed
    assert E.main(["--suite", "smoke", "--seeds", "0", "--steps", "3", "--out", str(tmp_path)]) == 0
    assert len(ran) == 6                                                         # other steps: other runs
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert len(lines) == 9 and E.load_rows(tmp_path / "results.jsonl")[1] == {}


SMOKE_TASKS = "choose from 'population', 'digits', 'forecast_damped'"


@pytest.mark.parametrize("args,message", [
    (["--summarize", "nope.jsonl"], "--summarize 'nope.jsonl' does not exist"),
    (["--summarize", "."], "--summarize '.' is a directory, not a file"),
    (["--backend", "foo"], "argument --backend: invalid choice: 'foo' (choose from 'snntorch', 'norse', 'fused', "
                           "'torch')"),
    (["--tasks", "nope"], f"--tasks: 'nope' is not among the tasks of --suite smoke; {SMOKE_TASKS}"),
    (["--tasks", "digits", "nope", "x"],
     f"--tasks: 'nope', 'x' are not among the tasks of --suite smoke; {SMOKE_TASKS}"),
    (["--suite", "pe", "--tasks", "digits"], "--tasks: 'digits' is not among the tasks of --suite pe; choose from "
                                             "'forecast_damped', 'forecast_multisine'"),
    (["--variants", "EST"], "--variants: 'EST' is not among the variants of --suite smoke; choose from 'EST (full)', "
                            "'Spikformer baseline'"),
    (["--suite", "pe", "--pe", "cpgg"], "--pe: 'cpgg' is not among the positional encodings of --suite pe; choose "
                                        "from 'cpg', 'cpg_lv2024', 'sin', 'learned', 'none'"),
    (["--suite", "ablation", "--pe", "cpg"],
     "--pe: --suite ablation has no PE runs (--suite pe, all, smoke have them)"),
    (["--rsm-mode", "train"], "--rsm-mode: --suite smoke has no RSM runs (--suite rsm, all have them)"),
    (["--suite", "all", "--tasks", "forecast_multisine", "--variants", "- TPU"],
     "--tasks 'forecast_multisine' --variants '- TPU': no run of --suite all (144 planned) matches these filters "
     "together"),
    (["--steps", "0"], "argument --steps: must be an integer >= 1, got 0"),
    (["--workers", "0"], "argument --workers: must be an integer >= 1, got 0"),
    (["--seeds", "-1"], "argument --seeds: must be an integer >= 0, got -1"),
    (["--seeds", "0", "1", "0"], "--seeds: 0 given more than once"),
    (["--device", "gpu"], "--device must be 'cpu', 'cuda' or 'cuda:N'; got 'gpu'"),
    (["--plot", "rsm.png"], "--plot draws the runs of a results file: give the file with --summarize"),
])
def test_bad_arguments_are_usage_errors_naming_the_allowed_values(tmp_path, monkeypatch, capsys, args, message):
    # (were: FileNotFoundError, a ValueError traceback from inside the first run, or 0 runs and "nan s per run")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(E, "run_one", lambda job: pytest.fail("a job ran"))
    with pytest.raises(SystemExit) as exc:
        E.main(args + ["--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith("usage: ") and f"error: {message}" in err, err
    assert not (tmp_path / "out").exists() and not (tmp_path / "rsm.png").exists()


def test_unreadable_results_files_are_usage_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(E, "run_one", lambda job: pytest.fail("a job ran"))
    good = json.dumps(_row())
    no_score = _row()
    no_score["R2"] = no_score.pop("r2")
    for text, message in ((good + "\n" + good[:40] + "\n", "line 2 is not JSON (Unterminated string starting at "
                                                          "column 28; a line cut short?)"),
                          ('{"a": 1}\n', "line 1 is not a run of this script: it lacks group, task, variant"),
                          ("[1]\n", "line 1 is not a run of this script: it lacks a JSON object"),
                          (json.dumps(no_score) + "\n", "line 1 is not a run of this script: it lacks r2 or accuracy")):
        f = tmp_path / "results.jsonl"
        f.write_text(text)
        for args, flag in ((["--summarize", str(f)], "--summarize"), (["--out", str(tmp_path)], "--out")):
            with pytest.raises(SystemExit) as exc:
                E.main(args)
            err = capsys.readouterr().err
            assert exc.value.code == 2 and f"error: {flag}: {f} {message}" in err, err
    f.write_text("")
    assert E.main(["--summarize", str(f)]) == 0 and capsys.readouterr().out == f"{f} holds no runs.\n"


def test_the_command_line_reports_a_bad_argument_without_a_traceback(tmp_path):
    res = subprocess.run([sys.executable, str(ROOT / "examples" / "est_experiments.py"), "--tasks", "nope", "--out",
                          str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert f"error: --tasks: 'nope' is not among the tasks of --suite smoke; {SMOKE_TASKS}" in res.stderr


def test_population_rates_are_known_and_counts_poisson():
    counts, rates = E.population(400, 30, seed=0)
    assert counts.shape == rates.shape == (400, 30, 16)
    # Poisson: mean and variance of counts both match the known rates (pooled over bins)
    resid = counts - rates
    assert abs(float(resid.mean())) < 0.05
    assert abs(float((resid ** 2).mean() / rates.mean()) - 1) < 0.05


def _reseed(model):
    for m in model.modules():
        if isinstance(m, RandomSpikeMask):
            m.reseed()


def test_script_synops_agree_with_energy_module_on_est():
    """The script's hook counter (used for the committed GPU results) against neurosim.energy.profile."""
    from neurosim.energy import profile
    from neurosim.models import ESTConfig, EnhancedSpikingTransformer

    torch.manual_seed(0)
    x = (torch.rand(4, 3, 8, 5) < 0.4).float()  # spike input [T, B, N, F]
    for attention, tpu in (("linear", False), ("conv", True)):
        cfg = ESTConfig(5, 2, dim=16, depth=2, heads=2, max_len=8, pe_dim=8, attention=attention, tpu=tpu,
                        rsm_ratio=0.5, rsm_mode="always")
        model = EnhancedSpikingTransformer(cfg).eval()
        edge = []  # spikes near the end of a causal conv's axis reach fewer than kernel_size outputs

        def conv_edge(mod, inp, out):
            a = inp[0].detach()
            a = a if mod.axis == "time" else a.transpose(0, 2)  # put the convolved axis first
            L, K = a.shape[0], mod.kernel_size
            missing = torch.tensor([K - min(K, L - p) for p in range(L)], dtype=torch.float64)
            per_pos = a.reshape(L, -1).sum(1).double()
            edge.append(float((per_pos * missing).sum()) * mod.conv.out_channels // mod.conv.groups)

        hooks = [m.register_forward_hook(conv_edge) for m in model.modules() if isinstance(m, CausalConv1d)]
        _reseed(model)
        mine = E.count_ops(model, x, batch=1)
        for h in hooks:
            h.remove()
        _reseed(model)
        rep = profile(model, x)
        assert rep.not_counted == []
        tot = rep.totals()
        # the script gives every spike the full kernel fan-out; the module trims it at the end of the axis
        assert (sum(edge) > 0) == (attention == "conv")
        assert math.isclose(mine["synops"] - sum(edge), tot["synops"], rel_tol=1e-9)
