"""Built-in encoder-decoder networks with named layer taps, their training and checkpoints.

``build_model`` makes a pix2pix U-Net (``"unet"``) or a SegNet-style network (``"segnet"``);
``train_model`` fits one to a paired dataset; ``save_checkpoint`` / ``load_checkpoint`` /
``model_hash`` persist and identify it. ``import_pix2pix`` loads a generator trained with the
pix2pix reference code into the U-Net; ``factory_model`` wraps any network built by the user's
own function (``package.module:function``).
"""
from compnn_index.models.base import TapModel
from compnn_index.models.checkpoint import load_checkpoint, model_hash, read_state_dict, save_checkpoint
from compnn_index.models.factory import FactoryModel, factory_model
from compnn_index.models.inversion import InversionNet, load_inversion, save_inversion
from compnn_index.models.patchgan import PatchDiscriminator
from compnn_index.models.pix2pix_import import import_pix2pix
from compnn_index.models.registry import ARCHITECTURES, build_model
from compnn_index.models.segnet import SegNet
from compnn_index.models.train import train_model
from compnn_index.models.unet import UNet, default_depth

__all__ = [
    "ARCHITECTURES",
    "FactoryModel",
    "InversionNet",
    "load_inversion",
    "save_inversion",
    "PatchDiscriminator",
    "SegNet",
    "TapModel",
    "UNet",
    "build_model",
    "default_depth",
    "factory_model",
    "import_pix2pix",
    "load_checkpoint",
    "model_hash",
    "read_state_dict",
    "save_checkpoint",
    "train_model",
]
