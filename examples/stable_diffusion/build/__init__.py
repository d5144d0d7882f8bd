"""Build tools for the Stable Diffusion example."""
