"""The ``compnn`` argument parser: sub-commands, their options, defaults and help.

Integers, thread counts and ``--restrict`` go through :mod:`compnn_index.checks` (the parsers
every surface shares); query defaults and choices come from
:class:`~compnn_index.options.QueryOptions`.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Callable

from .. import __version__, checks
from ..errors import QueryError
from .restrict import parse_restrict  # noqa: F401  (the CLI's --restrict parser, re-exported)
from ..options import DEFAULT_TOP_K, EXACT_METHODS, INITS, SEARCHES, SOURCES, QueryOptions

#: The query defaults, read (never repeated) by every sub-command's options.
DEFAULTS = QueryOptions()


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows every option's default: argparse's ``(default: X)``, lists as ``a,b``, and
    nothing added where the help text already says its default or there is none (None, flags)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("default" in text or not action.option_strings or default is None or default is False
                or default is argparse.SUPPRESS or isinstance(action, argparse._VersionAction)):
            return text
        shown = ",".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})"


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line: ``compnn CMD: error: ...``, exit status 2."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _Help)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # argparse's hook; its default prints the usage first
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _int(name: str, *, low: int | None = None, high: int | None = None) -> Callable[[str], int]:
    """An argparse ``type``: :func:`checks.parse_int` (ASCII digits, one optional sign)."""

    def parse(text: str) -> int:
        try:
            return checks.parse_int(text, name, low=low, high=high)
        except QueryError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def _query_int(flag: str) -> Callable[[str], int]:
    """A query option's flag, bounded like the API and the service (``checks.QUERY_INT_BOUNDS``)."""
    low, high = checks.QUERY_INT_BOUNDS[flag.lstrip("-")]
    return _int(flag, low=low, high=high)


def _polish(text: str) -> float | None:
    """``--polish``: ``off`` (or ``none``), or a number in [0, 1]."""
    if text.strip().lower() in ("off", "none"):
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1] or 'off', got {text!r}")
    return value


def _int_list(text: str) -> list[int]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not all(checks.is_int_text(t) for t in items):
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    return [int(t) for t in items]


def _size(text: str) -> int | tuple[int, int]:
    """``--size``: ``256`` (square) or ``HxW`` such as ``352x480`` (height first)."""
    parts = text.replace("×", "x").lower().split("x")
    try:
        if len(parts) == 1:
            return checks.parse_int(parts[0], "--size", low=1)
        if len(parts) == 2:
            return tuple(checks.parse_int(p, "--size", low=1) for p in parts)  # type: ignore[return-value]
    except QueryError:
        pass
    raise argparse.ArgumentTypeError(f"expected SIZE or HxW (height x width, e.g. 352x480), got {text!r}")


def _json_object(name: str) -> Callable[[str], dict]:
    """An argparse ``type``: a JSON object (factory / dataset keyword arguments)."""

    def parse(text: str) -> dict:
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise argparse.ArgumentTypeError(f"{name}: not valid JSON ({exc}): {text!r}") from None
        if not isinstance(value, dict):
            raise argparse.ArgumentTypeError(f"{name}: expected a JSON object {{...}}, got {text!r}")
        return value

    return parse


def _str_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _doubling(last: int) -> list[int]:
    """2, 4, 8, ... below ``last``, then ``last``: the iteration sweep of ``compare`` (ends at the default)."""
    out = [2]
    while out[-1] * 2 < last:
        out.append(out[-1] * 2)
    if out[-1] != last:
        out.append(last)
    return out


def _data_args(p: argparse.ArgumentParser, *, split: str = "train", direction: str | None = None,
               sized: str = "the model's training size") -> None:
    p.add_argument("--data", required=True,
                   help="a pix2pix AB folder (DIR/{train,val,test}/*.jpg, e.g. the pix2pix 'facades' "
                        "archive), an image+annotation folder, 'synthetic' (built-in facades, no download), "
                        "or package.module:function returning a map-style dataset of (input, target) pairs")
    p.add_argument("--data-args", type=_json_object("--data-args"), default=None,
                   help="JSON keyword arguments of a --data package.module:function (default: none)")
    p.add_argument("--split", default=split, help="dataset split (a sub-folder name for folder datasets)")
    # None: the direction the model / index store was trained on (recorded in it).
    p.add_argument("--direction", choices=["AtoB", "BtoA"], default=direction,
                   help="pix2pix direction: AtoB photo → labels, BtoA labels → photo"
                        + ("" if direction else " (default: the one the model was trained with)"))
    p.add_argument("--size", type=_size, default=None,
                   help=f"resize folder images to SIZE×SIZE or HxW (e.g. 352x480), multiples of 32 (default: {sized})")
    p.add_argument("--limit", type=_int("--limit"), default=None, help="use N images (default: all; see --sample)")
    p.add_argument("--sample", choices=["first", "every", "random"], default="first",
                   help="which --limit images: the first N, N evenly spaced, or N at random (--seed)")
    p.add_argument("--seed", type=_int("--seed"), default=0, help="seed of data order, synthetic images and training")
    p.add_argument("--ignore-index", type=_int("--ignore-index"), default=None, metavar="LABEL",
                   help="label value that losses and metrics skip (segmentation; e.g. 255 for VOC-style masks; "
                        "default: " + ("11 for an image+annotation folder (CamVid void), none otherwise" if split == "train"
                                      and direction == "AtoB" else "the one the model or store was trained with, else the folder layout's") + ")")


def _threads(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=_int("--threads", low=1, high=checks.MAX_THREADS), default=None,
                   help=f"threads, 1 to {checks.MAX_THREADS} (default: all cores)")


def default_query_out() -> Path:
    """Where ``compnn query`` writes without ``--out``: ``runs/query-YYYYmmdd-HHMMSS``."""
    return Path("runs") / time.strftime("query-%Y%m%d-%H%M%S")


def _screen(p: argparse.ArgumentParser) -> None:
    from ..index.screen import WIDTH

    p.add_argument("--screen", type=_int("--screen", low=0, high=256), default=WIDTH, metavar="W",
                   help=f"half floats per vector of each layer's screening sidecar (W x 2 bytes that let "
                        f"HyperPatch-Match skip reads without changing its result; 0: none) (default: {WIDTH})")


def _ray(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--ray", default=None, metavar="ADDRESS",
                   help=f"{what} on a Ray cluster: 'local' (start one here), 'auto' (the running "
                        "cluster), ray://HOST:10001 or HOST:6379; needs pip install 'compnn-index[ray]' "
                        "(default: none, in this process)")


def build_parser() -> argparse.ArgumentParser:
    from ..jobs.demo import DEMO_DEFAULTS

    parser = _Parser(
        prog="compnn",
        description="Compositional Nearest Neighbors: explain pixel-level CNNs by patch correspondences. "
                    "'compnn demo' runs everything on built-in synthetic facades (no download).",
    )
    parser.add_argument("--version", action="version", version=f"compnn-index {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")

    p = sub.add_parser("train", help="train a U-Net or SegNet on a dataset",
                       description="Train a pix2pix U-Net or a SegNet and write its checkpoint.")
    _data_args(p, direction="AtoB", sized="the images' own size")
    p.add_argument("--task", choices=["translate", "segment"], required=True,
                   help="translate: image → image (tanh output); segment: image → class labels")
    p.add_argument("--arch", choices=["unet", "segnet"], default="unet", help="network architecture")
    p.add_argument("--ngf", type=_int("--ngf"), default=64, help="channels of the first layer")
    p.add_argument("--depth", type=_int("--depth"), default=None,
                   help="down-sampling levels (default: as many as the image size allows)")
    p.add_argument("--epochs", type=_int("--epochs"), default=10, help="passes over the training images")
    p.add_argument("--batch-size", type=_int("--batch-size"), default=4, help="images per step")
    p.add_argument("--lr", type=float, default=2e-4, help="Adam learning rate")
    p.add_argument("--gan", action="store_true", help="add a PatchGAN loss (translate)")
    _threads(p)
    p.add_argument("--out", required=True,
                   help="checkpoint path (.pt); rewritten every epoch, with OUT.train.pt (the training state) "
                        "and OUT.loss.csv / OUT.loss.png (the loss curve) beside it")
    p.add_argument("--resume", default=None, metavar="STATE",
                   help="continue the training saved in STATE (the OUT.train.pt an earlier run wrote), with "
                        "the options it was started with; --epochs is the total (default: start afresh)")
    p.add_argument("--minutes", type=float, default=None, metavar="N",
                   help="stop after the first whole epoch at which the training minutes (resumed runs "
                        "included) reach N (default: no time budget, train --epochs)")

    p = sub.add_parser("import-pix2pix", help="a pix2pix reference generator (latest_net_G.pth) as a checkpoint")
    p.add_argument("weights", help="state dict of a unet_256 / unet_128 generator (pytorch-CycleGAN-and-pix2pix)")
    p.add_argument("--size", type=_int("--size", low=1), default=256, help="image side")
    p.add_argument("--norm", choices=["batch", "instance"], default=None,
                   help="the reference's --norm (default: read from the weights)")
    p.add_argument("--task", choices=["translate", "segment"], default="translate",
                   help="what the generator outputs: an image, or class scores")
    p.add_argument("--out", required=True, help="checkpoint path (.pt)")

    p = sub.add_parser("build", help="build an index store from a model and a dataset",
                       description="Index the hyperpatches of a dataset split at the given layers.")
    p.add_argument("--model", default=None,
                   help="checkpoint written by 'compnn train' or 'compnn import-pix2pix' "
                        "(default: none; give it or --model-factory)")
    p.add_argument("--model-factory", default=None, metavar="PACKAGE.MODULE:FUNCTION",
                   help="your own network: a function returning the nn.Module (instead of --model; default: none)")
    p.add_argument("--factory-args", type=_json_object("--factory-args"), default=None,
                   help="JSON keyword arguments of --model-factory (default: none)")
    p.add_argument("--weights", default=None, help="state dict for --model-factory (torch.load weights_only; default: the factory's own weights)")
    p.add_argument("--task", choices=["translate", "segment"], default=None,
                   help="what the --model-factory network outputs: an image or class scores "
                        "(default: read from a --model checkpoint)")
    _data_args(p)
    p.add_argument("--layers", type=_str_list, default=None,
                   help="comma-separated layer taps (default: decoder2), or NAME=MODULE.PATH[:input|output] "
                        "(strides inferred by probing)")
    p.add_argument("--global-layer", default=None, metavar="TAP_OR_MODULE",
                   help="global descriptor: a tap or module path (default: the bottleneck, or the "
                        "indexed layer with the smallest map)")
    p.add_argument("--batch-size", type=_int("--batch-size"), default=8, help="images per forward pass")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store at --out")
    p.add_argument("--codec", choices=["fp32", "fp16", "sq8"], default="fp32",
                   help="how layer vectors are stored: float32, float16 (half the bytes) or 8-bit (a quarter)")
    p.add_argument("--predict", type=_str_list, default=None, metavar="SRC:TGT[:K],...",
                   help="also store activation-prediction pairs, e.g. decoder4:decoder3:4 (default: none)")
    _screen(p)
    p.add_argument("--shards", type=_int("--shards", low=1, high=4096), default=None,
                   help="split the store into N shard sub-stores by contiguous image ranges (default: one store)")
    _ray(p, "build the shards as parallel tasks")
    _threads(p)
    p.add_argument("--out", required=True, help="index store folder")

    p = sub.add_parser("compress", help="re-encode an index store's layers (fp16, sq8) into a new store")
    p.add_argument("index")
    p.add_argument("--codec", choices=["fp32", "fp16", "sq8"], required=True,
                   help="fp16 (half the bytes) or sq8 (8-bit codes, a quarter)")
    _screen(p)
    p.add_argument("--overwrite", action="store_true", help="replace an existing store at --out")
    p.add_argument("--out", required=True, help="new index store folder")
    p = sub.add_parser("upgrade", help="add what a store lacks and can gain in place (screens), and check "
                                       "what it cannot (norms: prints the command that rebuilds it)")
    p.add_argument("index")
    _screen(p)

    p = sub.add_parser("query", help="explain images with an index store",
                       description="Explain images (files, or database image ids) by compositional "
                                   "nearest neighbours; writes PNGs and result.json per image. A "
                                   "database image is left out of its own explanation unless --keep-self.")
    p.add_argument("index", help="index store folder ('compnn build' output)")
    p.add_argument("images", nargs="+", help="image files or database image ids")
    _query_args(p)
    p.add_argument("--exclude", default=None,
                   help="database ids or names never matched, comma-separated (default: none)")
    p.add_argument("--keep-self", action="store_true",
                   help="let a query by database id match its own image (left out by default)")
    fit = p.add_mutually_exclusive_group()
    fit.add_argument("--resize", dest="fit", action="store_const", const="resize",
                     help="resize image files of another size to the index's size (default: refuse them)")
    fit.add_argument("--crop", dest="fit", action="store_const", const="crop",
                     help="centre-crop image files of another size to the index's size (default: refuse them)")
    p.add_argument("--out", default=None,
                   help="output folder (default: runs/query-YYYYmmdd-HHMMSS, the time of the run)")

    p = sub.add_parser("evaluate", help="papers' tables on a dataset split",
                       description="Pixel accuracy / IoU (segment) or L1 / PSNR (translate) of CompNN, "
                                   "the CNN and global NN; writes results.json, results.md, examples.png.")
    p.add_argument("index", help="index store folder")
    _data_args(p, split="test", sized="the store's image size")
    p.add_argument("--layer", default=None, help="layer to match (default: the store's first layer)")
    p.add_argument("--search", choices=SEARCHES, default=DEFAULTS.search, help="search method")
    _exact_method(p)
    p.add_argument("--top-k", type=_int_list, default=None,
                   help="shortlist sizes, comma-separated (default: 1,16,64, each at most the database's images)")
    p.add_argument("--iterations", type=_query_int("--iterations"), default=DEFAULTS.iterations,
                   help="HyperPatch-Match iterations (--search patchmatch)")
    p.add_argument("--init", choices=INITS, default=DEFAULTS.init, help="HyperPatch-Match start")
    p.add_argument("--no-hpm", action="store_true", help="skip the HyperPatch-Match rows")
    p.add_argument("--no-global-layers", action="store_true",
                   help="skip global NN from the penultimate layer and the searched layer")
    p.add_argument("--inversion", type=_str_list, default=[],
                   help="inversion checkpoints (compnn invert train): CompNN IR vs learned inversion")
    p.add_argument("--inversion-top-k", type=_int("--inversion-top-k"), default=16,
                   help="shortlist of the CompNN input reconstruction beside each inversion")
    _ray(p, "search a sharded store's shards")
    _threads(p)
    p.add_argument("--out", required=True, help="output folder")
    _papers_parsers(sub)

    p = sub.add_parser("compare", help="exact search vs HyperPatch-Match (and FAISS ANN baselines)",
                       description="Quality against speed of HyperPatch-Match and FAISS ANN indexes, "
                                   "measured against exact search; writes comparison.json/.md/.png.")
    p.add_argument("index", help="index store folder")
    _data_args(p, split="test", sized="the store's image size")
    p.add_argument("--layer", default=None, help="layer to match (default: the store's first layer)")
    p.add_argument("--top-k", type=_int_list, default=None,
                   help=f"shortlist sizes (default: {DEFAULT_TOP_K}, or every database image when fewer)")
    _exact_method(p, what="how the exact reference is computed (every speed-up is against it; "
                          "faiss for speed-ups against FAISS)")
    p.add_argument("--iterations", type=_int_list, default=_doubling(DEFAULTS.iterations),
                   help="HyperPatch-Match iterations to try, comma-separated")
    p.add_argument("--init", type=_str_list, default=[DEFAULTS.init],
                   help=f"HyperPatch-Match starts to try, comma-separated, any of {', '.join(INITS)}")
    p.add_argument("--samples", type=_query_int("--samples"), default=DEFAULTS.samples,
                   help="random-search samples per position and iteration")
    p.add_argument("--jumps", type=_query_int("--jumps"), default=DEFAULTS.jumps,
                   help="jumps to other images per position and iteration")
    p.add_argument("--baselines", type=_str_list, default=["hnsw", "ivf"],
                   help="FAISS ANN baselines, comma-separated, any of hnsw, ivf")
    p.add_argument("--stores", type=_str_list, default=[],
                   help="more stores of the same model (other codecs), compared with INDEX's fp32 exact field")
    p.add_argument("--exact-cache", default=None, help="folder caching the fp32 exact field per query (default: no cache)")
    p.add_argument("--cold", action="store_true", help="also measure each store's cold first query")
    _ray(p, "search a sharded store's shards")
    _threads(p)
    p.add_argument("--out", required=True, help="output folder")

    p = sub.add_parser("serve", help="HTTP query API and correspondence viewer",
                       description="Serve an index store: JSON API under /v1 and the viewer at /.")
    p.add_argument("index", help="index store folder")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (the service has no authentication: keep it on loopback; "
                        "see docs/security.md before changing it)")
    p.add_argument("--port", type=_int("--port", low=0, high=65535), default=8000, help="TCP port")
    p.add_argument("--workers", type=_int("--workers", low=1, high=checks.MAX_THREADS), default=2,
                   help="query worker threads")
    _threads(p)
    _serve_guard_args(p)
    _verify_arg(p)
    _ray(p, "serve a sharded store's shards from actors")
    p.add_argument("--warm", action="store_true",
                   help="read every layer (codes and screen rows) into the page cache before serving, "
                        "so first queries take no page faults; skipped for a layer larger than 80%% of RAM")

    p = sub.add_parser("verify", help="check every file of an index store against its checksums")
    p.add_argument("index")

    d = DEMO_DEFAULTS
    p = sub.add_parser("demo", help="the built-in end-to-end demo on synthetic facades",
                       description="Train two tiny U-Nets on synthetic facades, build their stores, "
                                   "explain held-out images and write <out>/report.html.")
    p.add_argument("--out", default="indexes/demo", help="output folder (stores, report.html)")
    p.add_argument("--size", type=_int("--size"), default=d["size"], help="image size (multiple of 32)")
    p.add_argument("--train-images", type=_int("--train-images"), default=d["train_images"],
                   help="synthetic training images (the database)")
    p.add_argument("--test-images", type=_int("--test-images"), default=d["test_images"],
                   help="held-out images for the evaluation tables")
    p.add_argument("--epochs", type=_int("--epochs"), default=d["epochs"], help="training epochs per model")
    _threads(p)
    return parser


def _verify_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--verify", action="store_true",
                   help="check every store file against its manifest checksum on open (reads it all)")


def _serve_guard_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="also accept requests whose Host header names NAME (repeatable; "
                        "loopback names are always accepted; '*' accepts any)")
    p.add_argument("--max-upload-bytes", type=_int("--max-upload-bytes", low=1024, high=1 << 30),
                   default=8 * 1024 * 1024, help="request bodies over this are refused with 413")
    p.add_argument("--max-queue", type=_int("--max-queue", low=0, high=10_000), default=None,
                   help="queries waiting for a worker before new ones are refused with 503 "
                        "(default: 16 per worker)")


def _papers_parsers(sub) -> None:
    """``compnn predict`` and ``compnn invert train | apply`` (issue 12)."""
    p = sub.add_parser("predict", help="predict a layer's activations by CompNN (activation pair)")
    p.add_argument("index")
    p.add_argument("images", nargs="+", help="image files or database image ids")
    p.add_argument("--source", default="decoder4", help="tap whose windows are matched")
    p.add_argument("--target", default="decoder3", help="tap whose activations are predicted")
    p.add_argument("--k", type=int, default=None, help="window of the stored pair (default: smallest)")
    p.add_argument("--exclude-self", action="store_true", help="never match a database id to itself")
    _query_args(p, layer=False)
    p.add_argument("--out", required=True, help="output folder (predicted activations, figure, JSON)")
    p = sub.add_parser("invert", help="learned-inversion baseline (Dosovitskiy & Brox)")
    inv = p.add_subparsers(dest="invert_command", required=True)
    t = inv.add_parser("train", help="train an inversion network on a store's training images")
    t.add_argument("--store", required=True, help="index store whose network and training images are used")
    t.add_argument("--layer", required=True, help="tap whose activations are inverted (e.g. decoder2)")
    t.add_argument("--epochs", type=int, default=1, help="passes over the training images")
    t.add_argument("--limit", type=int, default=None, help="train on the first N store images (default: all)")
    t.add_argument("--batch-size", type=int, default=4, help="images per step")
    t.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    t.add_argument("--width", type=int, default=None,
                   help="channels of the 3×3 convolutions at the layer's resolution (default: the layer's, at most 256)")
    t.add_argument("--minutes", type=float, default=None, help="stop (and save) after this long (default: no limit)")
    t.add_argument("--kind", choices=["photo", "labels"], default=None,
                   help="what the inputs are: labels (label maps, in classes.txt's or the Facades colours) or "
                        "photo (default: labels when the store's inputs are drawn in its label palette)")
    _threads(t)
    t.add_argument("--out", required=True, help="checkpoint path (.pt)")
    a = inv.add_parser("apply", help="reconstruct images from their activations")
    a.add_argument("checkpoint")
    a.add_argument("images", nargs="+", help="image files or database image ids")
    a.add_argument("--store", default=None, help="default: the store it was trained on")
    _threads(a)
    a.add_argument("--out", required=True, help="output folder of the reconstructions (PNG)")


def _exact_method(p: argparse.ArgumentParser, what: str = "how exact search runs") -> None:
    p.add_argument("--exact-method", choices=EXACT_METHODS, default=DEFAULTS.exact_method,
                   help=f"{what}: bounded (pruned by the store's screen below a HyperPatch-Match seed), "
                        "fused (pixel-level kernel), faiss, or auto (the fastest the store supports); "
                        "every method gives the exact field")


def _query_args(p: argparse.ArgumentParser, *, layer: bool = True) -> None:
    """The query options; ``layer=False`` (predict, which names its own taps): no --layer, --sources."""
    if layer:
        p.add_argument("--layer", default=None, help="layer to match (default: the store's first layer)")
    p.add_argument("--search", choices=SEARCHES, default=DEFAULTS.search,
                   help="exact (exhaustive cosine) or patchmatch (HyperPatch-Match)")
    _exact_method(p)
    p.add_argument("--top-k", type=_int("--top-k"), default=DEFAULTS.top_k,
                   help=f"shortlist size (default: {DEFAULT_TOP_K}, or every candidate image when fewer)")
    p.add_argument("--restrict", default=None,
                   help="limit the database: ids or names (comma-separated), KEY=VALUE on image meta, "
                        "or @FILE of ids (default: every image)")
    if layer:
        p.add_argument("--sources", type=_str_list, default=["target", "input"],
                       help=f"what to paste, comma-separated, any of {', '.join(SOURCES)}")
    p.add_argument("--iterations", type=_query_int("--iterations"), default=DEFAULTS.iterations,
                   help="HyperPatch-Match iterations")
    p.add_argument("--samples", type=_query_int("--samples"), default=DEFAULTS.samples,
                   help="HyperPatch-Match random-search samples per position and iteration")
    p.add_argument("--jumps", type=_query_int("--jumps"), default=DEFAULTS.jumps,
                   help="HyperPatch-Match jumps to other images per position and iteration")
    p.add_argument("--init", choices=INITS, default=DEFAULTS.init, help="HyperPatch-Match start")
    p.add_argument("--seed", type=_query_int("--seed"), default=DEFAULTS.seed, help="HyperPatch-Match seed")
    p.add_argument("--polish", type=_polish, default=DEFAULTS.polish,
                   help="HyperPatch-Match's last step: a bounded search seeded by its field whose screen bound's "
                        "residual term is scaled by this (0 to 1: 1 is the exact field, 0.8 names the exact match "
                        "at ~90%% of positions on Facades decoder2, at ~70%% of exact search's time), or off (default: off)")
    _ray(p, "search a sharded store's shards")
    _threads(p)
    _verify_arg(p)
