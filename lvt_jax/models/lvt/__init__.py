"""LVT (Rakhimov et al. 2020): the frame VQ-VAE and the latent Video Transformer."""
