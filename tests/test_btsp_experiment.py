"""attention_change / PlasticityHistory: the plasticity measured over training equals the total-variation
distance computed by hand from the attention weights before and after the BTSP step."""
import pytest
import torch

from neurosim.models import btsp_experiment as X
from neurosim.models.btspformer import SoftmaxAttention


def _tv_by_hand(model, x):
    attn = [m for m in model.modules() if isinstance(m, SoftmaxAttention)]
    model.eval()
    for m in attn:
        m.record = True
    with torch.no_grad():
        model(x)
    tvs = [float(0.5 * (m.last_attention - m.last_attention_pre).abs().sum(-1).mean()) for m in attn]
    for m in attn:
        m.record = False
    return tvs


def _cfg(tmp_path, model="btspformer"):
    cfg = X.seed_config(model, seq_len=12, num_samples=96, batch_size=16, epochs=2, model_dim=8, heads=2, layers=2,
                        out_dir=str(tmp_path), progress=False)
    cfg.tensorboard = False
    return cfg


def test_plasticity_history_records_steps_and_epochs(tmp_path):
    tracker = X.PlasticityHistory(every_steps=2, max_samples=10)
    modes = []
    trainer = X.make_trainer(_cfg(tmp_path), callbacks=[tracker, lambda ev, tr: modes.append(tr.model.training)])
    trainer.fit()
    steps = [r for r in tracker.rows if "val_mse" not in r]
    epochs = [r for r in tracker.rows if "val_mse" in r]
    assert [r["step"] for r in steps] == list(range(2, 2 * len(steps) + 1, 2)) and len(steps) == 5   # 5 steps/epoch
    assert [r["epoch"] for r in epochs] == [1.0, 2.0]
    assert all(modes[i] for i, r in enumerate(modes) if i % 6 != 5)   # training mode kept after step measurements
    # the last row was measured on the final weights: recompute it by hand
    x = X.validation_inputs(trainer, 10)
    tvs = _tv_by_hand(trainer.model, x)
    last = epochs[-1]
    assert [s["mean_row_tv"] for s in last["per_layer"]] == pytest.approx(tvs, rel=1e-5)
    assert last["mean_row_tv"] == pytest.approx(sum(tvs) / 2, rel=1e-5) and last["mean_row_tv"] > 0
    assert last["val_mse"] == trainer.history[-1]["val_mse"]
    trainer.model.set_plasticity(False)
    off = trainer.evaluate()["mse"]
    assert last["val_mse_without_plasticity"] == pytest.approx(off, rel=1e-6)
    assert off != pytest.approx(last["val_mse"], rel=1e-6)


def test_attention_change_without_plasticity_and_bad_arguments(tmp_path):
    trainer = X.make_trainer(_cfg(tmp_path, "vanilla_transformer"))
    trainer.cfg.epochs = 1
    tracker = X.PlasticityHistory()
    trainer.callbacks.append(tracker)
    trainer.fit()
    assert X.attention_change(trainer.model, X.validation_inputs(trainer, 4)) is None and tracker.rows == []
    with pytest.raises(ValueError, match="every_steps"):
        X.PlasticityHistory(every_steps=-1)
    with pytest.raises(ValueError, match="max_samples"):
        X.PlasticityHistory(max_samples=0)


def test_attention_change_describes_this_call_even_with_the_rule_off():
    from neurosim.models import BTSPFormer

    torch.manual_seed(0)
    model = BTSPFormer(20, model_dim=16, heads=2, layers=2)
    x = torch.randn(8, 20)
    on = X.attention_change(model, x)
    assert [s["mean_row_tv"] for s in on] == pytest.approx(_tv_by_hand(model, x), rel=1e-5)
    assert all(s["mean_row_tv"] > 1e-3 for s in on)
    model.set_plasticity(False)
    off = X.attention_change(model, 5 * x)       # another input, the rule off: no change at all, not the last numbers
    assert _tv_by_hand(model, 5 * x) == [0.0, 0.0]
    assert off == [dict(mean_abs_change=0.0, mean_row_tv=0.0, potentiated=0.0, depressed=0.0)] * 2
    fresh = BTSPFormer(20, model_dim=16, heads=2, layers=1)
    fresh.set_plasticity(False)                  # never recorded before: used to fail on last_stats=None
    assert X.attention_change(fresh, x) == [dict(mean_abs_change=0.0, mean_row_tv=0.0, potentiated=0.0,
                                                 depressed=0.0)]
    # a call that does not record leaves no numbers behind for a later reader
    model.set_plasticity(True)
    model(x)
    assert all(p.last_stats is None for p in model.plasticity_modules())


@pytest.mark.parametrize("setting", [(True, True), (False, False), (True, False)])
def test_plasticity_effect_restores_the_setting_it_found(setting):
    from types import SimpleNamespace

    from neurosim.models import BTSPFormer

    torch.manual_seed(0)
    model = BTSPFormer(20, model_dim=16, heads=2, layers=2).train()
    mods = model.plasticity_modules()
    for m, on in zip(mods, setting):
        m.enabled = on
    xs = torch.randn(8, 20)
    seen = []

    def evaluate():
        seen.append([m.enabled for m in mods])
        return {"mse": 1.5, "mae": 0.5}

    trainer = SimpleNamespace(model=model, val_idx=list(range(8)), device="cpu", evaluate=evaluate,
                              info=SimpleNamespace(dataset=[(xs[i], torch.zeros(())) for i in range(8)]))
    expected_tv = _tv_by_hand(model, xs)          # by hand, on the model as found (0 for a layer switched off)
    model.train()
    effect = X.plasticity_effect(trainer)
    assert seen == [[False, False]]               # the "without plasticity" number was measured with the rule off
    assert [m.enabled for m in mods] == list(setting) and model.training
    assert effect["plasticity_enabled"] == list(setting)
    assert [s["mean_row_tv"] for s in effect["per_layer"]] == pytest.approx(expected_tv, rel=1e-5, abs=0)
    for tv, on in zip(expected_tv, setting):
        assert (tv > 0) == on
    assert effect["val_without_plasticity"] == {"mse": 1.5, "mae": 0.5}
