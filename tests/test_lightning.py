"""The layers under PyTorch Lightning, as a user writes it: a ``LightningModule`` whose
``training_step`` adds ``pl.collect_losses`` (the encoder's KL, a weight layer's KL) to the
likelihood, trained by ``lightning.Trainer`` in fp32 and in ``bf16-mixed`` (Lightning's autocast),
checkpointed by Lightning and loaded back, predicted, validated (under ``inference_mode``, with
the added losses left uncollected), compiled, and data-parallel with ``ddp_spawn``.

Not covered here, as Lightning or torch have it: ``precision="bf16-true"`` makes every parameter
bf16, and torch has no bf16 ``triangular_solve`` on the CPU, so ``MultivariateNormalTriL`` stops
there with torch's NotImplementedError (use ``bf16-mixed``); ``self.log`` inside a compiled
``training_step`` fails in dynamo whatever the model (Lightning's own ``self.log``).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributions as D
from torch import nn

import problayers as pl

L = pytest.importorskip("lightning", reason="lightning is not installed (the test extra has it)")

pytestmark = [
    # Lightning's own code, not the layers': its pytree helper on torch 2.13, and advice about
    # a toy run (dataloader workers, logging across processes).
    pytest.mark.filterwarnings("ignore:`isinstance\\(treespec, LeafSpec\\)` is deprecated"),
    pytest.mark.filterwarnings("ignore:.*does not have many workers"),
    pytest.mark.filterwarnings("ignore:It is recommended to use `self.log"),
    pytest.mark.filterwarnings("ignore:The number of training batches"),
]

LATENT = 4


class LitVAE(L.LightningModule):
    """An MLP VAE on 8x8 binary images: a full-covariance encoder with the KL regularizer, a
    Flipout layer (its weight KL) in the decoder, and a Bernoulli likelihood."""

    def __init__(self, lr: float = 3e-3, log: bool = True) -> None:
        super().__init__()
        self.save_hyperparameters()
        prior = D.Independent(D.Normal(torch.zeros(LATENT), 1.0), 1)
        self.encoder = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64, 32),
            nn.ReLU(),
            nn.Linear(32, pl.MultivariateNormalTriL.params_size(LATENT)),
            pl.MultivariateNormalTriL(LATENT, activity_regularizer=pl.KLDivergenceRegularizer(prior)),
        )
        self.decoder = nn.Sequential(
            pl.DenseFlipout(LATENT, 32, kl_weight=1e-3),
            nn.ReLU(),
            nn.Linear(32, 64),
            pl.IndependentBernoulli((1, 8, 8)),
        )
        self.nll_dtypes: set[torch.dtype] = set()

    def forward(self, x: torch.Tensor) -> D.Distribution:
        return self.decoder(self.encoder(x))

    def training_step(self, batch: list[torch.Tensor], i: int) -> torch.Tensor:
        (x,) = batch
        nll = -self(x).log_prob(x).mean()
        added = pl.collect_losses(self, clear=True)
        self.nll_dtypes.add(nll.dtype)
        self.last_added = added.detach()
        if self.hparams.log:
            self.log("added", added)
        return nll + added

    def validation_step(self, batch: list[torch.Tensor], i: int) -> None:
        (x,) = batch  # the added losses are left uncollected: the next forward replaces them
        self.log("val_nll", -self(x).log_prob(x).mean())

    def predict_step(self, batch: list[torch.Tensor], i: int) -> D.Distribution:
        return self(batch[0])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), self.hparams.lr)


def _data(n: int = 256) -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(4, 1, 8, 8, generator=g)  # four "digits", each with its own pixel probabilities
    x = torch.bernoulli(probs[torch.randint(4, (n,), generator=g)], generator=g)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=32)


def _trainer(tmp_path, **kwargs) -> L.Trainer:
    options = dict(accelerator="cpu", max_epochs=3, logger=False, enable_progress_bar=False)
    options.update(enable_model_summary=False, default_root_dir=str(tmp_path))
    return L.Trainer(**{**options, **kwargs})


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_fit_checkpoint_load_predict(tmp_path, precision):
    torch.manual_seed(0)
    data = _data()
    model = LitVAE()
    trainer = _trainer(tmp_path, precision=precision)
    before = trainer.validate(model, data, verbose=False)[0]["val_nll"]
    trainer.fit(model, data, data)
    after = trainer.callback_metrics["val_nll"].item()
    added = trainer.callback_metrics["added"].item()

    assert after < before - 1.0, (before, after)  # it learned (64 Bernoulli pixels: ~44 nats at chance)
    assert math.isfinite(added) and added > 0
    # Under bf16-mixed the linear layers ran in bf16 (MultivariateNormalTriL's triangular_solve
    # has no bf16 CPU kernel): the layers kept the likelihood in fp32 by themselves.
    assert model.nll_dtypes == {torch.float32}

    path = trainer.checkpoint_callback.best_model_path
    loaded = LitVAE.load_from_checkpoint(path)
    assert loaded.state_dict().keys() == model.state_dict().keys()
    for name, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], value, rtol=0, atol=0, msg=name)

    torch.manual_seed(1)
    outs = trainer.predict(loaded, data)
    assert isinstance(outs[0], D.Distribution)
    assert outs[0].batch_shape == (32,) and outs[0].event_shape == (1, 8, 8)
    torch.manual_seed(1)
    want = trainer.predict(model, data)
    x = next(iter(data))[0]
    torch.testing.assert_close(outs[0].log_prob(x), want[0].log_prob(x))  # same weights, same draws


def test_compiled_module(tmp_path):
    """``trainer.fit(torch.compile(model))``: Lightning compiles the forward; the KL the
    regularizer records in the compiled forward reaches ``collect_losses``."""
    torch.manual_seed(0)
    torch.compiler.reset()
    data = _data()
    model = LitVAE(log=False)
    trainer = _trainer(tmp_path, precision="bf16-mixed", max_epochs=2)
    before = trainer.validate(model, data, verbose=False)[0]["val_nll"]
    trainer.fit(torch.compile(model, backend="aot_eager"), data, data)
    assert trainer.callback_metrics["val_nll"].item() < before - 1.0, before
    assert math.isfinite(model.last_added.item()) and model.last_added.item() > 0
    torch.compiler.reset()


def test_ddp_spawn_two_processes(tmp_path):
    """Two CPU processes (gloo): Lightning pickles the module to each, DDP averages the
    gradients of likelihood + added losses, and rank 0's weights come back to this process."""
    torch.manual_seed(0)
    data = _data()
    model = LitVAE()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = _trainer(tmp_path, strategy="ddp_spawn", devices=2, max_epochs=1)
    trainer.fit(model, data)
    moved = [k for k, v in model.state_dict().items() if not torch.equal(v, start[k])]
    assert "encoder.1.weight" in moved and "decoder.0.kernel_posterior.loc" in moved, moved
    assert math.isfinite(trainer.callback_metrics["added"].item())
