"""train.optimizer and train.scheduler: what the fit really steps with."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tests.conftest import make_config
from tuneflow.config import ConfigError
from tuneflow.tasktypes.resolve import load_config


def _fit_recording(tmp_path: Path, tiny_model: str, **train: object) -> tuple[list, list[float], object]:
    import lightning.pytorch as pl

    from tuneflow.fitting.model import load_tokenizer
    from tuneflow.fitting.training import fit

    seen: list = []
    lrs: list[float] = []

    class Record(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:  # noqa: ANN001
            seen.append(trainer.optimizers[0])
            lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    settings = {"max_epochs": 2, "warmup_ratio": 0.25, **train}
    cfg = load_config(make_config(tmp_path, tiny_model, train=settings))
    kind = cfg.kind
    data = kind.training.encode(
        kind.data.load_splits(cfg.data, cfg.train.seed), load_tokenizer(tiny_model), cfg
    )
    result = fit(cfg, data, tmp_path / "fit", callbacks=[Record()], progress_bar=False, resumable=False)
    return seen, lrs, result


@pytest.mark.integration
def test_a_second_optimizer_and_schedule_train_the_model(tmp_path: Path, tiny_model: str) -> None:
    seen, lrs, result = _fit_recording(tmp_path, tiny_model, optimizer="sgd", scheduler="cosine", lr=0.05)
    optimizer = seen[0]
    assert type(optimizer) is torch.optim.SGD and optimizer.defaults["momentum"] == 0.9
    # decay on weight matrices only, as with AdamW
    assert sorted(g["weight_decay"] for g in optimizer.param_groups) == [0.0, 0.01]
    steps = len(lrs)
    warmup = int(0.25 * steps)
    assert lrs[0] == 0.0 and max(lrs) == pytest.approx(0.05, rel=0.05)
    # half-way through the decay, cosine is at half the peak (linear would be there too: check a quarter)
    quarter = warmup + (steps - warmup) // 4
    progress = (quarter - warmup) / (steps - warmup)
    assert lrs[quarter] == pytest.approx(0.05 * 0.5 * (1 + math.cos(math.pi * progress)), rel=0.05)
    assert result.best_checkpoint and Path(result.best_checkpoint).is_file()


def test_adafactor_steps_and_bad_names_are_named(tmp_path: Path, tiny_model: str) -> None:
    from tuneflow.fitting.model import FineTuner

    module = FineTuner(tiny_model, ["a", "b"], optimizer="adafactor")
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = module._optimizer([{"params": params, "weight_decay": 0.0}])
    assert type(optimizer) is torch.optim.Adafactor
    before = [p.detach().clone() for p in params]
    batch = {"input_ids": torch.tensor([[2, 7, 9, 3]]), "labels": torch.tensor([1])}
    module(**batch).loss.backward()
    optimizer.step()
    assert any(not torch.equal(a, p) for a, p in zip(before, params, strict=True))

    cfg = load_config(make_config(tmp_path, tiny_model, train={"scheduler": "constant"}))
    assert (cfg.train.optimizer, cfg.train.scheduler) == ("adamw", "constant")
    with pytest.raises(ConfigError) as err:
        load_config(make_config(tmp_path, tiny_model, train={"optimizer": "lion", "scheduler": "step"}))
    assert "train.optimizer" in str(err.value) and "train.scheduler" in str(err.value)
