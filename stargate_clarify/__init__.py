"""verifiers' way in to the STaR-GATE user: the taskset id `stargate-clarify` (vf-eval stargate-clarify ...) imports
this module, which exports the taskset and the environment of stargate_lite/environment/verifiers.py."""

from stargate_lite.environment.verifiers import ClarifyEnv, ClarifyTaskset

__all__ = ["ClarifyEnv", "ClarifyTaskset"]
