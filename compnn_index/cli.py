"""``compnn`` command line: train | build | query | evaluate | compare | serve | demo.

Argument parsing only; the work is done by the api / index / evaluate / compare / demo modules.
User errors (:class:`CompNNError`) are printed as one line, never as a traceback.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import CompNNError, QueryError


def _int_list(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _str_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _data_args(p: argparse.ArgumentParser, *, split: str = "train", direction: str | None = None) -> None:
    p.add_argument("--data", required=True, help="dataset folder, or 'synthetic' (built-in facades)")
    p.add_argument("--split", default=split)
    # None: the direction the model / index store was trained on (recorded in it).
    p.add_argument("--direction", choices=["AtoB", "BtoA"], default=direction,
                   help=f"pix2pix direction (default: {direction or 'the one the model was trained with'})")
    p.add_argument("--size", type=int, default=None, help="resize images to SIZE×SIZE")
    p.add_argument("--limit", type=int, default=None, help="use the first N images")
    p.add_argument("--seed", type=int, default=0)


def _threads(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=None, help="threads (default: all cores)")


def _ray(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--ray", default=None, metavar="ADDRESS",
                   help=f"{what} on a Ray cluster: 'local' (start one here), 'auto' (the running "
                        "cluster), ray://HOST:10001 or HOST:6379; needs pip install 'compnn-index[ray]'")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="compnn",
        description="Compositional Nearest Neighbors: explain pixel-level CNNs by patch correspondences.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a U-Net or SegNet on a dataset")
    _data_args(p, direction="AtoB")
    p.add_argument("--task", choices=["translate", "segment"], required=True)
    p.add_argument("--arch", choices=["unet", "segnet"], default="unet")
    p.add_argument("--ngf", type=int, default=64)
    p.add_argument("--depth", type=int, default=None)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--gan", action="store_true", help="add a PatchGAN loss (translate)")
    _threads(p)
    p.add_argument("--out", required=True, help="checkpoint path (.pt)")

    p = sub.add_parser("build", help="build an index store from a model and a dataset")
    p.add_argument("--model", required=True, help="checkpoint written by 'compnn train'")
    _data_args(p)
    p.add_argument("--layers", type=_str_list, default=None,
                   help="comma-separated layer taps (default: decoder2)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--shards", type=int, default=None,
                   help="split the store into N shard sub-stores by contiguous image ranges")
    _ray(p, "build the shards as parallel tasks")
    _threads(p)
    p.add_argument("--out", required=True, help="index store folder")

    p = sub.add_parser("query", help="explain images with an index store")
    p.add_argument("index")
    p.add_argument("images", nargs="+", help="image files or database image ids")
    _query_args(p)
    p.add_argument("--out", required=True)

    p = sub.add_parser("evaluate", help="papers' tables on a dataset split")
    p.add_argument("index")
    _data_args(p, split="test")
    p.add_argument("--layer", default=None)
    p.add_argument("--search", choices=["exact", "patchmatch"], default="exact")
    p.add_argument("--top-k", type=_int_list, default=[1, 16, 64])
    p.add_argument("--iterations", type=int, default=32)
    p.add_argument("--init", default="staged", help="patchmatch init: random | staged | coarse")
    _ray(p, "search a sharded store's shards")
    _threads(p)
    p.add_argument("--out", required=True)

    p = sub.add_parser("compare", help="exact search vs HyperPatch-Match (and FAISS ANN baselines)")
    p.add_argument("index")
    _data_args(p, split="test")
    p.add_argument("--layer", default=None)
    p.add_argument("--top-k", type=_int_list, default=None,
                   help="shortlist sizes (default: 16, or every database image when fewer)")
    p.add_argument("--iterations", type=_int_list, default=[2, 4, 8, 16, 32])
    p.add_argument("--init", type=_str_list, default=["staged"], help="random, staged, coarse")
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--jumps", type=int, default=4)
    p.add_argument("--baselines", type=_str_list, default=["hnsw", "ivf"])
    _ray(p, "search a sharded store's shards")
    _threads(p)
    p.add_argument("--out", required=True)

    p = sub.add_parser("serve", help="HTTP query API and correspondence viewer")
    p.add_argument("index")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=2, help="query worker threads")
    _ray(p, "serve a sharded store's shards from actors")
    _threads(p)

    p = sub.add_parser("demo", help="the built-in end-to-end demo on synthetic facades")
    p.add_argument("--out", default="indexes/demo")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--train-images", type=int, default=160)
    p.add_argument("--test-images", type=int, default=6)
    p.add_argument("--epochs", type=int, default=None)
    _threads(p)
    return parser


def _query_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--layer", default=None)
    p.add_argument("--search", choices=["exact", "patchmatch"], default="exact")
    p.add_argument("--top-k", type=int, default=None,
                   help="shortlist size (default: 16, or every candidate image when fewer)")
    p.add_argument("--restrict", default=None,
                   help="ids or names (comma-separated), KEY=VALUE on image meta, or a file of ids")
    p.add_argument("--sources", type=_str_list, default=["target", "input"])
    p.add_argument("--iterations", type=int, default=32)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--jumps", type=int, default=4)
    p.add_argument("--init", default="staged", help="random | staged | coarse")
    p.add_argument("--seed", type=int, default=0)
    _ray(p, "search a sharded store's shards")
    _threads(p)


def parse_restrict(text: str | None):
    """``--restrict``: '3,7,9' | 'material=brick' | '@FILE' (or a .txt/.json path).

    A text file lists ids or names separated by commas or whitespace; a JSON file holds a list
    of ids/names, a single one, or an object of image-meta values (``{"material": "brick"}``).
    """
    if text is None:
        return None
    path = Path(text.lstrip("@"))
    if text.startswith("@") or (path.suffix in (".txt", ".json") and path.exists()):
        if not path.is_file():
            raise QueryError(f"--restrict: no such file {str(path)!r}")
        try:
            raw = path.read_text(encoding="utf-8")
            items = json.loads(raw) if path.suffix == ".json" else raw.replace(",", " ").split()
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise QueryError(f"--restrict: cannot read {str(path)!r}: {exc}") from None
        if isinstance(items, dict):
            return items
        if isinstance(items, (int, str)) and not isinstance(items, bool):
            return [items]
        if not isinstance(items, list):
            raise QueryError(
                f"--restrict: {str(path)!r} must hold a list of ids or names, or an object of "
                f"meta values; got a JSON {type(items).__name__}"
            )
        return items
    if "=" in text:
        key, _, value = text.partition("=")
        return {key.strip(): value.strip()}
    return _str_list(text)


def _cmd_train(a: argparse.Namespace) -> None:
    from .jobs.workflows import train

    train(data=a.data, split=a.split, direction=a.direction, size=a.size, limit=a.limit,
          seed=a.seed, task=a.task, arch=a.arch, ngf=a.ngf, depth=a.depth, epochs=a.epochs,
          batch_size=a.batch_size, lr=a.lr, gan=a.gan, threads=a.threads, out=a.out)


def _cmd_build(a: argparse.Namespace) -> None:
    from .jobs.workflows import build

    build(model=a.model, data=a.data, split=a.split, direction=a.direction, size=a.size,
          limit=a.limit, seed=a.seed, layers=a.layers, batch_size=a.batch_size,
          threads=a.threads, out=a.out, overwrite=a.overwrite, shards=a.shards, cluster=a.ray)


def _cmd_query(a: argparse.Namespace) -> None:
    from .jobs.workflows import query

    from .options import QueryOptions

    options = QueryOptions(search=a.search, top_k=a.top_k, iterations=a.iterations,
                           samples=a.samples, jumps=a.jumps, init=a.init, seed=a.seed)
    query(index=a.index, images=a.images, layer=a.layer, options=options,
          restrict=parse_restrict(a.restrict), sources=a.sources, threads=a.threads, out=a.out,
          cluster=a.ray)


def _cmd_evaluate(a: argparse.Namespace) -> None:
    from .jobs.evaluate import evaluate

    evaluate(a.index, data=a.data, split=a.split, direction=a.direction, size=a.size,
             limit=a.limit, seed=a.seed, layer=a.layer, search=a.search, top_k=a.top_k,
             iterations=a.iterations, init=a.init, threads=a.threads, out=a.out, cluster=a.ray)


def _cmd_compare(a: argparse.Namespace) -> None:
    from .jobs.compare import compare

    compare(a.index, data=a.data, split=a.split, direction=a.direction, size=a.size,
            limit=a.limit, seed=a.seed, layer=a.layer, top_k=a.top_k, iterations=a.iterations,
            samples=a.samples, jumps=a.jumps,
            init=a.init, baselines=a.baselines, threads=a.threads, out=a.out, cluster=a.ray)


def _cmd_serve(a: argparse.Namespace) -> None:
    from .service.server import serve

    serve(a.index, host=a.host, port=a.port, workers=a.workers, threads=a.threads, cluster=a.ray)


def _cmd_demo(a: argparse.Namespace) -> None:
    from .jobs.demo import run_demo

    run_demo(out=a.out, size=a.size, train_images=a.train_images, test_images=a.test_images,
             epochs=a.epochs, threads=a.threads)


COMMANDS = {
    "train": _cmd_train, "build": _cmd_build, "query": _cmd_query, "evaluate": _cmd_evaluate,
    "compare": _cmd_compare, "serve": _cmd_serve, "demo": _cmd_demo,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except CompNNError as exc:
        print(f"compnn {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"compnn {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
