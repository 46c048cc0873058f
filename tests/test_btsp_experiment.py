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
