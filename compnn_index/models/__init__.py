"""Built-in encoder-decoder networks with named layer taps, their training and checkpoints.

``build_model`` makes a pix2pix U-Net (``"unet"``) or a SegNet-style network (``"segnet"``);
``train_model`` fits one to a paired dataset; ``save_checkpoint`` / ``load_checkpoint`` /
``model_hash`` persist and identify it.
"""
from compnn_index.models.base import TapModel
from compnn_index.models.checkpoint import load_checkpoint, model_hash, save_checkpoint
from compnn_index.models.inversion import InversionNet, load_inversion, save_inversion
from compnn_index.models.patchgan import PatchDiscriminator
from compnn_index.models.registry import ARCHITECTURES, build_model
from compnn_index.models.segnet import SegNet
from compnn_index.models.train import train_model
from compnn_index.models.unet import UNet, default_depth

__all__ = [
    "ARCHITECTURES",
    "InversionNet",
    "load_inversion",
    "save_inversion",
    "PatchDiscriminator",
    "SegNet",
    "TapModel",
    "UNet",
    "build_model",
    "default_depth",
    "load_checkpoint",
    "model_hash",
    "save_checkpoint",
    "train_model",
]
