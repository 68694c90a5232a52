"""AR1's whole-strategy state (``AR1.state_dict`` / ``AR1.load_state_dict``): model, BRN settings, optimizer,
replay memory, CWR*, SI, clock and random generator (``docs/avalanche-differences.md``, "AR1")."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..nn.batch_renorm import _BatchRenorm
from ..plugins.latent_memory import LatentReplayMemory

__all__ = ["AR1_STATE_VERSION", "AR1StateMixin"]

#: Format version of :meth:`AR1.state_dict`.
AR1_STATE_VERSION = 1

#: The BRN settings that are plain attributes (not buffers), saved by :meth:`AR1.state_dict`.
_BRN_SETTINGS = ("momentum", "r_max_inc_step", "d_max_inc_step", "max_r_max", "max_d_max")


class AR1StateMixin:
    """The state methods of :class:`clfast.strategies.AR1` (which provides ``model``, ``optimizer``, ``memory``,
    ``cwr``, ``si``, ``clock``, ``_generator`` and the hyper-parameters)."""

    def _brn_settings(self) -> dict[str, dict[str, float]]:
        return {name: {k: float(getattr(m, k)) for k in _BRN_SETTINGS}
                for name, m in self.model.named_modules() if isinstance(m, _BatchRenorm)}

    def _hparams(self) -> dict[str, Any]:
        return {"rm_sz": self.rm_sz, "ewc_lambda": self.ewc_lambda, "freeze_below_layer": self.freeze_below_layer,
                "lr": self.lr, "inc_lr": self.inc_lr, "train_mb_size": self.train_mb_size,
                "latent_layer": self.latent_layer}

    def state_dict(self) -> dict[str, Any]:
        """The whole strategy: model (BRN running statistics and r_max/d_max are buffers), the BRN settings that are
        attributes (momentum, ramp steps, limits), optimizer, replay memory, CWR*, SI, clock counters and the random
        generator. A strategy built with the same arguments resumes from it with the same next iterations."""
        return {
            "strategy": "AR1",
            "version": AR1_STATE_VERSION,
            "hparams": self._hparams(),
            "model": self.model.state_dict(),
            "brn": self._brn_settings(),
            "optimizer": self.optimizer.state_dict(),
            "memory": self.memory.state_dict(),
            "cwr": self.cwr.state_dict(),
            "si": None if self.si is None else self.si.state_dict(),
            "clock": self.clock.as_dict(),
            "generator": self._generator.get_state(),
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output into a strategy built with the same hyper-parameters.

        Checked before anything changes: the format, the hyper-parameters that shape the state (``rm_sz``, SI on
        or off, ...), the BRN layers and the memory. Freezing and the incremental optimizer are re-applied at the
        next experience from the restored experience counter.
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"AR1.load_state_dict expects a dict, got {type(state_dict).__name__}")
        if state_dict.get("strategy") != "AR1" or state_dict.get("version") != AR1_STATE_VERSION:
            raise ValueError(f"not an AR1 state_dict of version {AR1_STATE_VERSION}")
        saved_h, mine = state_dict.get("hparams", {}), self._hparams()
        diff = {k: (saved_h.get(k), v) for k, v in mine.items() if saved_h.get(k) != v}
        if diff:
            raise ValueError(f"the state was saved by an AR1 with other hyper-parameters (saved, this): {diff}")
        brn = state_dict["brn"]
        if set(brn) != set(self._brn_settings()):
            raise ValueError("the saved BRN layers do not match this model's")
        LatentReplayMemory.check_state(state_dict["memory"], self.rm_sz)
        if (state_dict["si"] is None) != (self.si is None):
            raise ValueError("SI state present in one of the state and the strategy but not the other")
        clock = state_dict["clock"]
        if set(clock) != set(self.clock.as_dict()):
            raise ValueError("bad clock state")

        self.model.load_state_dict(state_dict["model"])
        modules = dict(self.model.named_modules())
        for name, settings in brn.items():
            layer = modules[name]
            layer.momentum = settings["momentum"]
            layer.r_max_inc_step = settings["r_max_inc_step"]
            layer.d_max_inc_step = settings["d_max_inc_step"]
            layer.max_r_max = settings["max_r_max"]
            layer.max_d_max = settings["max_d_max"]
        self.model.to(self.device)
        self.optimizer.load_state_dict(state_dict["optimizer"])
        self.memory.load_state_dict(state_dict["memory"], self.device)
        self.cwr.load_state_dict(state_dict["cwr"])
        if self.si is not None:
            self.si.load_state_dict(state_dict["si"], self.model)
        for k, v in clock.items():
            setattr(self.clock, k, int(v))
        self._generator.set_state(state_dict["generator"])
