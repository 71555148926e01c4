"""lsgm_core: latent score-based generative models (LSGM) in PyTorch."""
