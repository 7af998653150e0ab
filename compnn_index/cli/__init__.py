"""``compnn`` command line: train | import-pix2pix | build | compress | upgrade | verify | query | evaluate |
compare | serve | demo.

Argument parsing only; the work is done by the api / index / evaluate / compare / demo modules.
Integers, thread counts and ``--restrict`` go through :mod:`compnn_index.checks` (the parsers
every surface shares) and the query defaults and choices come from
:class:`~compnn_index.options.QueryOptions`. User errors (:class:`CompNNError`, and bad
arguments) are printed as one line, never as a traceback, with exit status 2.
"""
from __future__ import annotations

import argparse
import sys

from ..errors import CompNNError
from ..options import QueryOptions
from .parser import (DEFAULTS, _int_list, _str_list, build_parser, default_query_out,  # noqa: F401
                     parse_restrict)
from .. import checks  # noqa: F401  (the jobs' refusals quote its bounds)


def _cmd_train(a: argparse.Namespace) -> None:
    from ..jobs.workflows import train

    train(data=a.data, split=a.split, direction=a.direction, size=a.size, limit=a.limit,
          seed=a.seed, sample=a.sample, data_args=a.data_args, ignore_index=a.ignore_index, task=a.task, arch=a.arch, ngf=a.ngf, depth=a.depth, epochs=a.epochs,
          batch_size=a.batch_size, lr=a.lr, gan=a.gan, threads=a.threads, out=a.out,
          resume=a.resume, minutes=a.minutes)


def _cmd_build(a: argparse.Namespace) -> None:
    from ..jobs.workflows import build

    build(model=a.model, data=a.data, split=a.split, direction=a.direction, size=a.size,
          limit=a.limit, seed=a.seed, sample=a.sample, data_args=a.data_args, ignore_index=a.ignore_index,
          layers=a.layers,
          global_layer=a.global_layer, batch_size=a.batch_size, threads=a.threads, out=a.out,
          overwrite=a.overwrite, model_factory=a.model_factory, factory_args=a.factory_args,
          weights=a.weights, task=a.task, codec=a.codec, pairs=a.predict,
          shards=a.shards, cluster=a.ray, screen=a.screen)


def _cmd_compress(a: argparse.Namespace) -> None:
    from ..jobs.workflows import compress

    compress(index=a.index, codec=a.codec, out=a.out, overwrite=a.overwrite, screen=a.screen)


def _cmd_upgrade(a: argparse.Namespace) -> None:
    from ..jobs.workflows import upgrade

    print(upgrade(index=a.index, screen=a.screen))


def _cmd_import_pix2pix(a: argparse.Namespace) -> None:
    from ..jobs.workflows import import_pix2pix

    import_pix2pix(weights=a.weights, size=a.size, norm=a.norm, task=a.task, out=a.out)


def _cmd_query(a: argparse.Namespace) -> None:
    from ..jobs.workflows import query

    options = QueryOptions(search=a.search, top_k=a.top_k, iterations=a.iterations,
                           samples=a.samples, jumps=a.jumps, init=a.init, seed=a.seed,
                           exact_method=a.exact_method, polish=a.polish)
    exclude = checks.parse_exclude(a.exclude, "--exclude")
    query(index=a.index, images=a.images, layer=a.layer, options=options,
          restrict=parse_restrict(a.restrict), sources=a.sources, threads=a.threads,
          out=a.out or default_query_out(), exclude=exclude, keep_self=a.keep_self,
          verify=a.verify, fit=a.fit, cluster=a.ray)


def _cmd_evaluate(a: argparse.Namespace) -> None:
    from ..jobs.evaluate import evaluate

    evaluate(a.index, data=a.data, split=a.split, direction=a.direction, size=a.size,
             limit=a.limit, seed=a.seed, sample=a.sample, data_args=a.data_args, ignore_index=a.ignore_index,
             layer=a.layer, search=a.search, top_k=a.top_k, iterations=a.iterations, init=a.init, threads=a.threads,
             out=a.out, hpm=not a.no_hpm, global_layers=not a.no_global_layers, inversion=a.inversion,
             inversion_top_k=a.inversion_top_k, cluster=a.ray, exact_method=a.exact_method)


def _cmd_predict(a: argparse.Namespace) -> None:
    from ..jobs.predict import predict
    from ..options import QueryOptions

    options = QueryOptions(search=a.search, top_k=a.top_k, iterations=a.iterations,
                           samples=a.samples, jumps=a.jumps, init=a.init, seed=a.seed,
                           exact_method=a.exact_method, polish=a.polish)
    predict(index=a.index, images=a.images, out=a.out, source=a.source, target=a.target, k=a.k,
            options=options, exclude_self=a.exclude_self, threads=a.threads,
            restrict=parse_restrict(a.restrict), verify=a.verify, cluster=a.ray)


def _cmd_invert(a: argparse.Namespace) -> None:
    from ..jobs.inversion import apply_inversion, train_inversion

    if a.invert_command == "train":
        train_inversion(a.store, a.layer, out=a.out, epochs=a.epochs, limit=a.limit,
                        batch_size=a.batch_size, lr=a.lr, width=a.width, minutes=a.minutes,
                        kind=a.kind, threads=a.threads)
    else:
        apply_inversion(a.checkpoint, a.images, out=a.out, store=a.store, threads=a.threads)


def _cmd_compare(a: argparse.Namespace) -> None:
    from ..jobs.compare import compare

    compare(a.index, data=a.data, split=a.split, direction=a.direction, size=a.size,
            limit=a.limit, seed=a.seed, sample=a.sample, data_args=a.data_args, ignore_index=a.ignore_index,
            layer=a.layer, top_k=a.top_k, iterations=a.iterations,
            samples=a.samples, jumps=a.jumps,
            init=a.init, baselines=a.baselines, threads=a.threads, out=a.out,
            stores=a.stores, exact_cache=a.exact_cache, cold=a.cold, cluster=a.ray,
            exact_method=a.exact_method)


def _cmd_serve(a: argparse.Namespace) -> None:
    from ..service.server import serve

    serve(a.index, host=a.host, port=a.port, workers=a.workers, threads=a.threads,
          allow_hosts=a.allow_host, max_queue=a.max_queue, verify=a.verify, cluster=a.ray, warm=a.warm,
          max_upload_bytes=a.max_upload_bytes)


def _cmd_verify(a: argparse.Namespace) -> None:
    from ..index.integrity import verify_store

    for line in verify_store(a.index):
        print(line)


def _cmd_demo(a: argparse.Namespace) -> None:
    from ..jobs.demo import run_demo

    run_demo(out=a.out, size=a.size, train_images=a.train_images, test_images=a.test_images,
             epochs=a.epochs, threads=a.threads)


COMMANDS = {
    "train": _cmd_train, "import-pix2pix": _cmd_import_pix2pix, "build": _cmd_build,
    "compress": _cmd_compress, "upgrade": _cmd_upgrade, "verify": _cmd_verify, "query": _cmd_query,
    "evaluate": _cmd_evaluate,
    "compare": _cmd_compare, "serve": _cmd_serve, "demo": _cmd_demo,
    "predict": _cmd_predict, "invert": _cmd_invert,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except CompNNError as exc:
        print(f"compnn {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file or folder the user named cannot be read or written
        print(f"compnn {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"compnn {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


