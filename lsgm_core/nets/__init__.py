"""Networks: the VAE's encoder and decoder, and the time-conditioned score U-Net."""
from .unet import UNet
from .vae import Decoder, Encoder

__all__ = ["UNet", "Encoder", "Decoder"]
