"""recap_jax: RECAP-Psi (advantage-conditioned fine-tuning of the Psi0 VLA) in JAX/Flax.

Flow-time convention (Psi0's, used everywhere in this package): sigma = 1 is pure noise,
sigma = 0 is data, ``x_sigma = (1 - sigma) * x + sigma * eps`` and the velocity target is
``eps - x``; samplers integrate from sigma = 1 down to sigma = 0.
"""

from recap_jax import _platform  # noqa: F401  (sets XLA flags before JAX is imported)

__version__ = "0.1.0"
