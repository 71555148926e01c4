"""lsgm_core: latent score-based generative models (LSGM) in PyTorch, with no UI dependencies.

The layout follows the paper: sde (VP SDEs, time samplers), nets (encoder, decoder, U-Net),
prior (mixed-score SGM prior), model (LSGM and the pixel baseline, NELBO losses), data,
latents (the latent cache of the prior stage), train, checkpoint; quality measures samples against
the VAE's own floor.
"""
from .checkpoint import CheckpointError, load_model, read_checkpoint, save_checkpoint
from .config import ConfigError, load_config
from .data import DataError, ImageDataset, load_dataset, resolve_data_dir
from .model import LSGM, PixelSGM, build_model
from .prior import ScorePrior
from .sde import VPSDE, GeometricVPSDE, make_sde

__all__ = [
    "CheckpointError", "ConfigError", "DataError", "GeometricVPSDE", "ImageDataset", "LSGM", "PixelSGM",
    "ScorePrior", "VPSDE", "build_model", "load_config", "load_dataset", "load_model", "make_sde",
    "read_checkpoint", "resolve_data_dir", "save_checkpoint",
]
