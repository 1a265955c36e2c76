"""Recorded mutants: single changes to the library that a test must catch (slow; ``-m slow``).

Each entry changes one place of ``src/problayers`` (``before`` -> ``after``, an exact text that
occurs once) in a copy of the package, then runs the test that was written to catch it, which
must fail. They come from mutation audits of the test suite (2026-12-06): every mutant that no
test caught got a test, and this list keeps those tests honest as the code and the tests change.
A spec whose ``before`` no longer occurs once fails too: update it with the code it names.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: (file under src/problayers, before, after, the test node that must fail on the mutant)
MUTANTS = [
    (
        "kl.py",
        "dist.reinterpreted_batch_ndims == 1",
        "dist.reinterpreted_batch_ndims >= 1",
        "tests/test_kl.py::test_mvn_vs_independent_over_two_dims_is_refused",
    ),
    (
        "losses.py",
        "_SKIP[0] = previous",
        "_SKIP[0] = False",
        "tests/test_losses.py::test_nested_added_losses_skipped_restores_the_outer_block",
    ),
    (
        "losses.py",
        "(*model.parameters(), *model.buffers())",
        "(*model.parameters(),)",
        "tests/test_losses.py::test_collect_losses_zero_takes_a_buffer_only_models_dtype",
    ),
    (
        "regularizers.py",
        "distribution_to(self._given_prior, like.device",
        "distribution_to(self.prior, like.device",
        "tests/test_regularizers.py::test_prior_is_placed_from_the_prior_as_given_not_rounded",
    ),
    (
        "regularizers.py",
        "dtype=dtype if t.is_floating_point() else t.dtype",
        "dtype=dtype",
        "tests/test_regularizers.py::test_distribution_to_keeps_integer_tensors_integer",
    ),
    (
        "regularizers.py",
        "prior = self.resolve_prior(params, q)",
        "prior = self.resolve_prior(None, q)",
        "tests/test_regularizers.py::test_exact_kl_of_an_fp64_posterior_is_fp64",
    ),
    (
        "regularizers.py",
        "<= a < kl.dim()",
        "<= a <= kl.dim()",
        "tests/test_regularizers.py::test_test_points_reduce_axis_equal_to_the_rank_is_refused",
    ),
    (
        "regularizers.py",
        "self._given_prior = self.prior  # replaced",
        "pass  # replaced",
        "tests/test_regularizers.py::test_prior_replaced_by_the_user_is_the_one_moved",
    ),
    (
        "coercible.py",
        "return value.detach() if value.requires_grad and not torch.is_grad_enabled() else value",
        "return value",
        "tests/test_coercible.py::test_value_read_under_no_grad_is_detached",
    ),
    (
        "coercible.py",
        "memo[id(tensor)] = tensor.detach().clone()",
        "memo[id(tensor)] = tensor.clone()",
        "tests/test_coercible.py::test_deepcopy_detaches_the_parameters",
    ),
    (
        "coercible.py",
        "return in_fp32(super().log_prob, convert_to_tensor(value))",
        "return super().log_prob(convert_to_tensor(value))",
        "tests/test_coercible.py::test_log_prob_under_cpu_bf16_autocast_is_the_fp32_density",
    ),
    (
        "convert.py",
        "and t.dtype == torch.get_default_dtype()",
        "and True",
        "tests/test_coercible.py::test_scalars_like_keeps_an_explicit_fp64_scalar",
    ),
    (
        "precision.py",
        "return value.float() if value.dtype in _HALF else value",
        "return value.float()",
        "tests/test_coercible.py::test_in_fp32_leaves_fp64_as_it_is",
    ),
    (
        "layers/independent.py",
        "new.log_rate = self.log_rate.expand(batch_shape)",
        "new.log_rate = self.log_rate",
        "tests/test_layers_catalog.py::test_log_rate_poisson_expand_expands_the_log_rate",
    ),
    (
        "layers/multivariate.py",
        "self.validate_args, self.tril_order)",
        "self.validate_args)",
        "tests/test_layers.py::test_multivariate_normal_tril_layer_uses_its_tril_order",
    ),
    (
        "layers/mixture.py",
        "size = max((width - k) // k, 1)",
        "size = max(width // k, 1)",
        "tests/test_layers_catalog.py::test_mixture_of_a_plain_callable_infers_its_component_size",
    ),
    (
        "layers/mixture.py",
        "components = components.distribution",
        "components = components",
        "tests/test_layers_catalog.py::test_mixture_of_a_layer_returning_coercibles_holds_plain_distributions",
    ),
    (
        "layers/flows.py",
        "max(d, low + 1), (units,)",
        "max(d - 1, low + 1), (units,)",
        "tests/test_flows.py::test_random_hidden_degrees_cover_1_to_d_minus_1",
    ),
    (
        "layers/variational.py",
        "return torch.finfo(self.loc.dtype).eps + F.softplus(self.untransformed_scale)",
        "return F.softplus(self.untransformed_scale)",
        "tests/test_variational.py::test_mean_field_scale_has_an_eps_floor",
    ),
    (
        "layers/variational.py",
        "D.Normal(loc, torch.ones_like(loc), validate_args=False)",
        "D.Normal(loc, 2 * torch.ones_like(loc), validate_args=False)",
        "tests/test_variational.py::test_prior_trainable_has_unit_scale",
    ),
    (
        "layers/reparameterization.py",
        "return value.sum() if isinstance(value, torch.Tensor)",
        "return value.mean() if isinstance(value, torch.Tensor)",
        "tests/test_variational.py::test_divergence_fn_returning_per_weight_terms_is_summed",
    ),
    (
        "layers/convolutional.py",
        "pads = [(t // 2, t - t // 2) for t in totals]",
        "pads = [(t - t // 2, t // 2) for t in totals]",
        "tests/test_convolutional.py::test_padding_modes_match_torch_conv",
    ),
    (
        "layers/convolutional.py",
        "for pair in reversed(pads) for p in pair",
        "for pair in pads for p in pair",
        "tests/test_convolutional.py::test_padding_modes_match_torch_conv",
    ),
    (
        "layers/weight_norm.py",
        "clamp_min(1e-6)).reshape(shape)",
        "clamp_min(1e-3)).reshape(shape)",
        "tests/test_weight_norm.py::test_small_direction_norm_is_not_clamped_away",
    ),
    (
        "layers/defaults.py",
        "scale = None if u is None else torch.finfo(u.dtype).eps + F.softplus(u)",
        "scale = None if u is None else F.softplus(u)",
        "tests/test_defaults.py::test_mean_field_normal_fn_scale_has_an_eps_floor",
    ),
    (
        "bayesian.py",
        "b is not None,\n            module.dilation,",
        "b is not None,\n            1,",
        "tests/test_bayesian.py::test_dilated_transposed_convolution_keeps_its_dilation",
    ),
    (
        "vae/objectives.py",
        "if self.training and torch.is_grad_enabled():",
        "if self.training:",
        "tests/test_objectives.py::test_warmup_counts_only_steps_with_gradients",
    ),
    (
        "vae/objectives.py",
        "floor = float(vae.regularizer.weight) * self.free_bits",
        "floor = self.free_bits",
        "tests/test_objectives.py::test_seed_free_bits_floor_is_scaled_by_the_regularizers_weight",
    ),
    (
        "vae/objectives.py",
        "return q.log_prob(z) - prior.log_prob(z)  # (B,)",
        "return q.log_prob(z.detach()) - prior.log_prob(z)  # (B,)",
        "tests/test_objectives.py::test_monte_carlo_kl_gradient_is_the_reparameterized_one",
    ),
    (
        "vae/objectives.py",
        "kl_weight = self.beta * self.warmup()",
        "kl_weight = self.beta; self.warmup()",
        "tests/test_objectives.py::test_iwae_kl_warmup_weights_the_prior_and_q_terms",
    ),
    (
        "vae/objectives.py",
        "term = self.warmup() * term",
        "term = torch.clamp(self.warmup() * kl, min=floor) if self.free_bits > 0 else self.warmup() * kl",
        "tests/test_objectives.py::test_free_bits_floor_is_warmed_up_with_the_kl",
    ),
    (
        "vae/objectives.py",
        "if self.kl_warmup_steps <= 0:\n            return 1.0",
        "if self.kl_warmup_steps <= 1:\n            return 1.0",
        "tests/test_objectives.py::test_one_warmup_step_starts_at_zero",
    ),
    (
        "vae/models/priors.py",
        "self.pseudo_inputs = nn.Parameter(0.05 +",
        "self.pseudo_inputs = nn.Parameter(0.5 +",
        "tests/test_zoo.py::test_vampprior_pseudo_inputs_start_around_0_05",
    ),
    (
        "vae/models/priors.py",
        "self.logits = nn.Parameter(torch.zeros(components))",
        'self.register_buffer("logits", torch.zeros(components))',
        "tests/test_zoo_maths.py::test_mixture_of_gaussians_weights_and_vampprior_pseudo_inputs_get_gradients",
    ),
    (
        "vae/models/mlp.py",
        'order = "left-to-right" if step % 2 == 0 else "right-to-left"',
        'order = "left-to-right"',
        "tests/test_zoo.py::test_iaf_posterior_has_flow_steps_inverse_flows_of_alternating_orders",
    ),
    (
        "vae/models/mlp.py",
        "if activate_last or i < len(sizes) - 2:",
        "if activate_last or i < len(sizes) - 1:",
        "tests/test_zoo.py::test_mlp_decoders_end_in_logits_without_an_activation",
    ),
    (
        "vae/models/hierarchical.py",
        "return self.first.log_prob(a) + self.conditional(a).log_prob(b)",
        "return self.first.log_prob(a) + self.conditional(a.detach()).log_prob(b)",
        "tests/test_zoo_maths.py::test_chain_log_prob_is_differentiable_through_the_first_part",
    ),
    (
        "vae/models/mlp.py",
        "for step in range(cfg.flow_steps):",
        "for step in range(cfg.flow_steps - 1):",
        "tests/test_zoo.py::test_iaf_posterior_has_flow_steps_inverse_flows_of_alternating_orders",
    ),
    (
        "vae/models/seed.py",
        "Shift(-0.5),",
        "Shift(0.5),",
        "tests/test_models.py::test_seed_is_the_tfp_examples_architecture",
    ),
    (
        "vae/models/seed.py",
        "use_exact_kl=cfg.exact_kl",
        "use_exact_kl=True",
        "tests/test_models.py::test_seed_is_the_tfp_examples_architecture",
    ),
    (
        "vae/models/seed.py",
        "LEAKY_SLOPE = 0.2",
        "LEAKY_SLOPE = 0.01",
        "tests/test_models.py::test_seed_is_the_tfp_examples_architecture",
    ),
    (
        "vae/models/resnet.py",
        "return x + self.body(x)",
        "return self.body(x)",
        "tests/test_zoo.py::test_resnet_block_is_residual",
    ),
    (
        "vae/models/registry.py",
        "        beta=cfg.beta,\n",
        "        beta=1.0,\n",
        "tests/test_models.py::test_zoo_models_weight_the_kl_by_beta",
    ),
    (
        "vae/models/registry.py",
        'slopes[layer] = getattr(nxt, "negative_slope", 0.0)',
        "slopes[layer] = 0.0",
        "tests/test_models.py::test_he_init_takes_the_gain_of_the_leaky_slope_that_follows",
    ),
    (
        "vae/evaluation.py",
        "kl = kl.expand(batch)",
        "kl = kl.expand(batch).clamp(min=0)",
        "tests/test_evaluation.py::test_monte_carlo_kl_is_unbiased_per_example",
    ),
    (
        "train/trainer.py",
        "images += _batch_size(batch)",
        "images += 1",
        "tests/test_training.py::test_images_per_s_counts_examples",
    ),
    (
        "train/trainer.py",
        "return int(first.shape[0]) if isinstance(first, torch.Tensor) else 1",
        "return 1",
        "tests/test_training.py::test_images_per_s_counts_examples",
    ),
    (
        "train/trainer.py",
        "        self.train_model.train()\n",
        "",
        "tests/test_training.py::test_every_epoch_trains_in_training_mode_after_an_evaluation",
    ),
    (
        "train/checkpoint.py",
        "if isinstance(value, torch.Tensor) and value.is_floating_point() and",
        "if isinstance(value, torch.Tensor) and value.dtype == torch.float32 and",
        "tests/test_checkpoint.py",
    ),
    (
        "train/divergence.py",
        "torch.isfinite(p.detach()).all() for",
        "torch.isfinite(p.detach()).any() for",
        "tests/test_training.py::test_weights_made_non_finite_by_an_epochs_last_update_are_not_saved",
    ),
    (
        "vae/runconfig.py",
        "if not cfg.auto_step or cfg.step_choice is not None or",
        "if not cfg.auto_step or",
        "tests/test_cli.py::test_train_prints_and_records_its_step_choice",
    ),
    (
        "vae/evaluation.py",
        "log_q = q.log_prob(z)  # (k, B)",
        "log_q = q.log_prob(z.detach())  # (k, B)",
        "tests/test_evaluation.py::test_iwae_gradient_is_the_reparameterized_bounds",
    ),
    (
        "vae/evaluation.py",
        "return q.rsample(shape) if q.has_rsample else q.sample(shape)",
        "return q.sample(shape)",
        "tests/test_evaluation.py::test_iwae_gradient_is_the_reparameterized_bounds",
    ),
    (
        "train/schedules.py",
        "progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))",
        "progress = (step - warmup) / max(1, total_steps - warmup)",
        "tests/test_schedules.py::test_decaying_schedules_stay_at_zero_past_the_end",
    ),
    (
        "train/schedules.py",
        "return max(0.0, (total_steps - step) / max(1, total_steps - decay_start))",
        "return (total_steps - step) / max(1, total_steps - decay_start)",
        "tests/test_schedules.py::test_decaying_schedules_stay_at_zero_past_the_end",
    ),
    (
        "vae/models/mlp.py",
        "AutoregressiveTransform(made, inverse=True)",
        "AutoregressiveTransform(made, inverse=False)",
        "tests/test_zoo.py::test_iaf_posterior_has_flow_steps_inverse_flows_of_alternating_orders",
    ),
    (
        "vae/models/hierarchical.py",
        "return torch.cat([a, self.conditional(a).sample()], -1)",
        "return torch.cat([a, self.conditional(a).mean], -1)",
        "tests/test_zoo_maths.py::test_chain_samples_the_second_part_from_its_conditional",
    ),
    (
        "vae/models/hierarchical.py",
        "return self._posterior.top_posterior(u)",
        "return self._posterior.top_posterior(u.detach())",
        "tests/test_zoo_maths.py::test_mixture_of_gaussians_weights_and_vampprior_pseudo_inputs_get_gradients",
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("path", "before", "after", "test"), MUTANTS, ids=[f"{p}:{t.split('::')[-1]}" for p, _, _, t in MUTANTS]
)
def test_recorded_mutant_is_caught(tmp_path, path, before, after, test):
    src = tmp_path / "src"
    shutil.copytree(
        REPO / "src" / "problayers", src / "problayers", ignore=shutil.ignore_patterns("__pycache__")
    )
    target = src / "problayers" / path
    text = target.read_text()
    assert text.count(before) == 1, f"{path}: the mutant's text occurs {text.count(before)} times; update it"
    target.write_text(text.replace(before, after))
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", test],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 1, (
        f"{test} did not fail on the mutant (exit {result.returncode}):\n{result.stdout[-2000:]}"
    )
