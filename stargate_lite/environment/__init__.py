"""The simulated user and the reward as an environment for trainers other than the project's own: `user` holds
the environment (UserEnvironment: reset, step, batches of episodes, scoring, records), and one module per trainer
adapts it to that trainer's interface (`trl`: GRPOTrainer's rollout function). An adapter imports its trainer's
package only when used, so the environment needs none of them."""

from ..runs import environment_namespace
from .user import Episode, Step, UserEnvironment

__all__ = ["Episode", "Step", "UserEnvironment", "environment_namespace"]
