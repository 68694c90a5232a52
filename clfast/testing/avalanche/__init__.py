"""Reference transcriptions of Avalanche's MAS, RWalk, Synaptic Intelligence and EWC plugins (the test oracle).

Plain PyTorch, written the way Avalanche writes them: Python loops over ``model.named_parameters()``, one
state tensor per parameter name, a handful of eager ops per parameter. They are our own code, written from
the semantics in ``docs/avalanche-semantics.md``:

- §1 (hook API, hook order, clock: ``train_exp_counter == 0`` in ``after_training_exp`` means "first
  experience"; ``(train_iterations + 1) % k == 0`` in ``after_training_iteration``);
- §2 (MAS: §2.1 importance pass, §2.2 penalty, §2.3 shape changes / missing gradients / multi-head);
- §3 (RWalk: §3.1 hooks, §3.2 math, §3.3 quirks);
- §4.9 (Synaptic Intelligence) and §4.10 (``ParamData.expand``, ``get_layers_and_params``);
- §9 (EWC); ``AvalancheEWC`` follows Avalanche's ``training/plugins/ewc.py`` at HEAD
  ``eb075be3`` (its behaviour is summarised in the class docstring).

They use only the strategy attributes of ``docs/plugin-api.md`` §4, so they run in ``clfast.strategies.Naive``
(and would run in an Avalanche strategy). Every hook is ``hook(self, strategy, **kwargs)``.

State is kept as ``dict[name -> torch.Tensor]`` (Avalanche wraps each tensor in a ``ParamData``; here the
tensor itself is stored). ``ParamData.expand`` (zero-pad one grown dimension, in place in the dict) is
``_expand_entry``. State tensors take the parameter's dtype (Avalanche's zero-initialised ``ParamData`` is
always float32; identical for float32 models, and it lets the tests run in float64).

Quirks reproduced, and the switches that turn them off (defaults = Avalanche's behaviour, except SI's aliasing):

=========================  =====================================================  ==========================
plugin                     Avalanche quirk                                        switch (default)
=========================  =====================================================  ==========================
MAS                        importance pass in *train* mode (BN statistics move),   always reproduced
                           abs of the *batch-mean* gradient of the squared output
                           norm, ÷ number of batches; α-decay of unused heads;
                           ``not strategy.loss`` raises on a zero loss
RWalk                      extra eval-mode forward/backward per iteration         ``grad_source="extra_pass"``
                           (the task gradient)                                    (or ``"training_backward"``)
RWalk                      the extra pass leaves the model in eval mode           ``eval_mode_leak=True``
RWalk                      0/0 = NaN penalties when a global max is 0             ``guard_zero_max=False``
SI                         on CPU ``.cpu().flatten()`` aliases the parameter, so  ``si_alias_defect=False``
                           θ_old = θ_new = θ* = θ and Ω stays 0                    (True reproduces it)
EWC                        the importance pass sets eval mode and never restores  ``eval_mode_leak=True``
=========================  =====================================================  ==========================

Every plugin also records ``last_penalty`` (a detached 0-d tensor: the value it last added to
``strategy.loss``, ``None`` before any) so tests can compare penalties.

Where Avalanche would crash on an edge case, these go on instead: RWalk builds penalties for names in both
``exp_scores`` and ``exp_importance`` (the spec's ∩; Avalanche raises ``KeyError`` for a scored name without a
Fisher) and gives a parameter created after ``before_training`` a zero ``checkpoint_loss``; online EWC drops
names present only in the previous importances (Avalanche's ``zip_longest`` asserts).
"""


from __future__ import annotations

from ._common import avalanche_forward, layers_and_params, pad_to
from .brn import AvalancheBatchRenorm2D
from .ewc import AvalancheEWC
from .mas import AvalancheMAS
from .rwalk import AvalancheRWalk
from .si import AvalancheSI

__all__ = ["AvalancheBatchRenorm2D", "AvalancheEWC", "AvalancheMAS", "AvalancheRWalk", "AvalancheSI",
           "avalanche_forward", "layers_and_params", "pad_to"]
