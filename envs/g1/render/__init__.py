"""Pure-JAX ray casting over MuJoCo primitive geoms (the kernels behind ``envs.g1.camera``)."""
