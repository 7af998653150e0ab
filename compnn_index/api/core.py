"""``CompNN``: load a store and its model, extract, explain."""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Iterable, Sequence, Union

import numpy as np
import torch

from ..checks import check_choice, check_threads, is_int, is_int_text, thread_limit
from ..compose import paste
from ..data.pix2pix import InputLabels, input_label_palette
from ..data.query_image import ImageLike, dataset_geometry, dataset_image, load_image
from ..distributed import SearchBackend, backend_for, open_backend
from ..errors import IndexStoreError, QueryError
from ..features import FeatureExtractor, LayerSpec
from ..index import IndexStore, LayerVectors
from ..index.integrity import check_finite
from ..options import DEFAULT_TOP_K, INITS, SEARCHES, SOURCES, QueryOptions
from ..results import ActivationPrediction, Correspondence, GlobalNN, QueryFeatures, QueryResult, ResultContext
from ..search import NNField, native_available, native_error

from .activations import ActivationsMixin
from .baselines import BaselinesMixin

__all__ = ["ActivationPrediction", "CompNN", "Correspondence", "DEFAULT_TOP_K", "GlobalNN", "INITS",
           "QueryFeatures", "QueryOptions", "QueryResult", "ResultContext", "SEARCHES", "SOURCES",
           "native_available", "native_error"]

ImageArg = Union[ImageLike, int, np.integer, QueryFeatures]


class CompNN(ActivationsMixin, BaselinesMixin):
    """An index store and the model it was built from, ready to answer queries.

    Use :meth:`load`. All queries are read-only: the store is opened memory-mapped where FAISS
    allows and never modified.
    """

    def __init__(self, store: IndexStore, model: torch.nn.Module, *, threads: int | None = None,
                 backend: SearchBackend | None = None):
        self.threads = check_threads(threads, "CompNN threads")
        self.store = store
        # Where searches run and sidecar rows are read: in process, or the store's Ray actors
        # (replicas made from the same store share them).
        self.backend = backend if backend is not None else backend_for(store)
        self.model = model.eval()
        man = store.manifest
        self.task = man.get("task", "translate")
        self.num_classes = man.get("num_classes")
        self.ignore_index = man.get("ignore_index")
        self.global_tap = man["global"]["layer"]
        self._global_spec = LayerSpec.from_dict(man["global"]["spec"])
        self._arrays: dict[str, np.ndarray] = {}
        self._extractors: dict[tuple[str, ...], FeatureExtractor] = {}
        self._forward_lock = threading.Lock()
        self._context: ResultContext | None = None
        self._input_labels: InputLabels | None = None

    def __repr__(self) -> str:
        store, man = self.store, self.store.manifest
        h, w = (int(v) for v in store.image_size)
        layers = ", ".join(f"{n} (stride {store.spec(n).stride})" for n in self.layers)
        model = man.get("model", {}) or {}
        classes = f", {self.num_classes} classes" if self.num_classes else ""
        return (f"CompNN({str(store.path)!r}: {self.task}{classes}, {self.num_images} database images "
                f"{h}×{w}, layers {layers}; model {model.get('arch', '?')} "
                f"{str(model.get('hash', ''))[:12]}; threads {self.threads or 'all'})")

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, index_dir: Union[str, Path], model: torch.nn.Module | None = None, *,
             mmap: bool = True, threads: int | None = None, verify: bool = False,
             cluster: str | None = None, shard_cpus: float | None = None) -> "CompNN":
        """Open an index store and its model.

        Parameters
        ----------
        index_dir : folder written by ``compnn build``.
        model : the network the index was built from; by default the checkpoint the manifest
            names is loaded. Either way it is checked against the manifest's model hash.
        mmap : memory-map the layer indexes instead of reading them into RAM.
        threads : threads for torch, FAISS and the native kernel (default: all cores).
        verify : check every file of the store against its manifest checksums (reads it all);
            small files are always checked.
        cluster : None (search in this process; a sharded store shard after shard), or a Ray
            cluster for a sharded store, one actor per shard: ``"local"`` (start one in this
            process), ``"auto"`` (the running cluster), ``"ray://host:10001"`` or ``"host:6379"``.
            Needs the ``compnn-index[ray]`` extra. See ``docs/distributed.md``.
        shard_cpus : ``num_cpus`` each shard actor declares (default: the cluster's CPUs shared
            evenly, fractional when shards outnumber them).
        """
        store = IndexStore.open(index_dir, mmap=mmap, verify=verify)
        if model is None:
            from ..models import load_checkpoint

            ckpt = store.manifest["model"].get("checkpoint")
            candidates = [Path(p) for p in (ckpt, store.path / "model.pt") if p]
            found = next((p for p in candidates if p.is_file()), None)
            if found is None:
                raise IndexStoreError(
                    f"{store.path}: the model checkpoint the manifest names ({ckpt!r}) is not "
                    "found; pass model= to CompNN.load"
                )
            model = load_checkpoint(found)
        store.check_model(model)
        backend = open_backend(store, cluster, shard_cpus=shard_cpus) if cluster is not None else None
        return cls(store, model, threads=threads, backend=backend)

    def close(self) -> None:
        """Release the search backend (a cluster's shard actors); in-process stores need nothing."""
        self.backend.close()

    def __enter__(self) -> "CompNN":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @classmethod
    def build(cls, model: torch.nn.Module, dataset, *, layers, out: Union[str, Path],
              threads: int | None = None, **options) -> "CompNN":
        """Build an index store of ``model`` over ``dataset`` and open it for queries.

        ``dataset`` may be any map-style dataset of ``(input, target)`` pairs (e.g. a
        ``torch.utils.data.Dataset``); ``layers`` tap names or ``LayerSpec``s whose strides are
        inferred by probing. ``options`` go to :func:`compnn_index.index.build_index`
        (``global_layer``, ``specs``, ``batch_size``, ``overwrite``, ``progress``, ...).
        """
        from ..index import build_index

        path = build_index(model, dataset, layers=layers, out=out, threads=threads, **options)
        return cls.load(path, model, threads=threads)

    # ------------------------------------------------------------------ description
    @property
    def layers(self) -> list[str]:
        return list(self.store.layers)

    @property
    def num_images(self) -> int:
        return int(self.store.num_images)

    def layer(self, name: str | None = None) -> LayerVectors:
        """The store's :class:`LayerVectors` of ``name`` (default: the first layer)."""
        return self.store.layer(self.check_layer(name))

    def warm(self, layers: Sequence[str] | None = None) -> list[dict]:
        """Read the layers (default: all) into the page cache now, so first queries take no page
        faults (``compnn serve --warm``); see :func:`compnn_index.index.readahead.warm`."""
        from ..index.readahead import warm

        stores = [self.store.shard(i) for i in range(len(self.store.manifest["shards"]))] \
            if self.store.manifest.get("shards") else [self.store]
        return [warm(s.layer(self.check_layer(n))) for s in stores for n in (layers or self.layers)]

    def array(self, name: str) -> np.ndarray:
        """A sidecar array of the store (``inputs``, ``targets``, ``outputs``), memory-mapped."""
        if name not in self._arrays:
            self._arrays[name] = self.backend.array(name)
        return self._arrays[name]

    def context(self) -> ResultContext:
        """What results need of this store to draw themselves (palette, class names, pictures)."""
        if self._context is None:
            from ..data.palette import FACADES_CLASSES, FACADES_PALETTE
            from ..pictures import class_legend, to_rgb

            man = self.store.manifest
            palette = None if man.get("palette") is None else np.asarray(man["palette"], dtype=np.uint8)
            names = man.get("class_names")
            facades = palette is not None and palette.shape == FACADES_PALETTE.shape and \
                bool((palette == FACADES_PALETTE).all())
            if names is None and facades:
                names = FACADES_CLASSES
            labels_in = self.input_labels()
            kinds = {"input": "inputs", "target": "targets", "output": "outputs"}

            def db_picture(i: int, kind: str) -> np.ndarray:
                arr = np.asarray(self.array(kinds[kind])[int(i)])
                return to_rgb(arr.astype(np.float32) if arr.ndim == 3 else arr, palette)

            self._context = ResultContext(
                palette=palette, class_names=tuple(names) if names else None,
                image_names=list(self.store.image_names), db_picture=db_picture, task=self.task,
                input_legend=(class_legend(labels_in.palette, labels_in.names)
                              if labels_in.palette is not None else None))
        return self._context

    def input_labels(self) -> InputLabels:
        """Whether this store's network inputs are label maps (a labels → photo network): their
        palette and class names, or None and why not. Stores record it at build
        (``manifest["input_labels"]``); for older ones it is found on open
        (:func:`~compnn_index.data.pix2pix.input_label_palette` on the recorded dataset and the
        first stored input). A segmentation store's inputs are taken as photos."""
        if self._input_labels is None:
            rec = self.store.manifest.get("input_labels")
            if self.task != "translate":
                self._input_labels = InputLabels(None, None, "a segmentation network's inputs are photos")
            elif isinstance(rec, dict):  # recorded at build
                pal = rec.get("palette")
                self._input_labels = InputLabels(None if pal is None else np.asarray(pal, dtype=np.uint8),
                                                 None if rec.get("class_names") is None else tuple(rec["class_names"]),
                                                 str(rec.get("reason", "")))
            else:
                inputs = self.array("inputs")
                self._input_labels = input_label_palette(self.store.manifest.get("dataset"),
                                                         np.asarray(inputs[0], dtype=np.float32) if len(inputs) else None)
        return self._input_labels

    def thread_limits(self, threads: int | None = None):
        """The thread limit of one call: ``threads``, else the instance's ``threads``."""
        return thread_limit(check_threads(threads) if threads is not None else self.threads)

    def check_layer(self, layer: str | None) -> str:
        """``layer`` if the index has it (None: the first layer), else a QueryError listing them."""
        if layer is None:
            return self.layers[0]
        if layer not in self.layers:
            raise QueryError(f"Unknown layer {layer!r}: this index has layers {', '.join(self.layers)}")
        return layer

    def pyramid(self, layer: str) -> list[str]:
        """``layer`` and every indexed layer coarser than it (larger stride), coarsest last.

        These are the levels of a coarse-to-fine HyperPatch-Match (``init="coarse"``).
        """
        layer = self.check_layer(layer)
        stride = self.store.spec(layer).stride
        coarser = [n for n in self.layers if self.store.spec(n).stride > stride]
        return [layer] + sorted(coarser, key=lambda n: self.store.spec(n).stride)

    # ------------------------------------------------------------------ images and ids
    def resolve_image(self, image: Union[ImageLike, int, np.integer], *, name: str = "image") -> np.ndarray:
        """Return a query image as float32 (3, H, W); an int is a database image id."""
        if is_int(image):
            idx = self.check_ids([image], what=name)[0]
            return np.array(self.array("inputs")[idx], dtype=np.float32)
        arr = self.dataset_image(image) if isinstance(image, (str, Path)) else None
        if arr is None:
            arr = load_image(image, name=name, size=self.store.image_size,
                             native=dataset_geometry(self.store.manifest.get("dataset")))
        self.check_size(arr, name)
        return arr

    def dataset_image(self, path: Union[str, Path]) -> np.ndarray | None:
        """A file of the geometry of the store's dataset files (e.g. a 360×480 frame of a store
        built with ``--size 256``) preprocessed as the build did its training files; else None."""
        return dataset_image(path, self.store.manifest.get("dataset"), tuple(self.store.image_size))

    def check_size(self, image: np.ndarray, name: str = "image") -> None:
        """QueryError unless ``image`` is (3, H, W) at the store's image size."""
        # The global descriptor is the whole bottleneck map, so its length fixes the size.
        expected = tuple(int(v) for v in self.store.image_size)
        if image.ndim != 3 or image.shape[0] != 3:
            raise QueryError(f"{name}: expected an array of shape (3, H, W), got {tuple(image.shape)}")
        if tuple(image.shape[1:]) != expected:
            raise QueryError(
                f"{name}: expected a {expected[0]}×{expected[1]} image (the index's image size), "
                f"got {image.shape[1]}×{image.shape[2]} (H×W); resize or crop it "
                "(compnn query --resize or --crop)"
            )

    def check_ids(self, ids: Iterable, *, what: str = "restrict") -> np.ndarray:
        """Database image ids (ints, integer strings or image names) → int64 ids, or QueryError."""
        out = []
        names = {n: i for i, n in enumerate(self.store.image_names)}
        for v in ids:
            if isinstance(v, str) and not is_int_text(v):
                if v not in names:
                    raise QueryError(f"{what}: no database image named {v!r}")
                out.append(names[v])
                continue
            if isinstance(v, (float, np.floating)) and float(v).is_integer():
                v = int(v)
            if not (is_int(v) or is_int_text(v)):
                raise QueryError(f"{what}: expected an integer image id or a name, got {v!r}")
            i = int(v)
            if not 0 <= i < self.num_images:
                raise QueryError(f"{what}: image id {i} does not exist; expected 0 <= id < {self.num_images}")
            out.append(i)
        return np.asarray(out, dtype=np.int64)

    def candidates(self, restrict=None, exclude: Sequence = (), *, purpose: str = "search") -> np.ndarray:
        """Database ids allowed by ``restrict`` (ids, names, or ``{"meta key": value}``), minus ``exclude``."""
        if restrict is None:
            cands = np.arange(self.num_images, dtype=np.int64)
        elif isinstance(restrict, dict):
            cands = np.asarray([i for i, m in enumerate(self.store.image_meta)
                                if all(str(m.get(k)) == str(v) for k, v in restrict.items())], dtype=np.int64)
            if cands.size == 0:
                raise QueryError(f"restrict={restrict!r} matches no database image")
        else:
            if isinstance(restrict, (str, int, np.integer)):
                restrict = [restrict]
            cands = np.unique(self.check_ids(list(restrict)))
            if cands.size == 0:
                raise QueryError("restrict is empty: expected at least one database image id or name")
        excluded = self.check_ids(list(exclude), what="exclude")
        left = cands[~np.isin(cands, excluded)]
        if left.size == 0:
            raise QueryError(f"{purpose}: no database image is left (restrict={restrict!r}, "
                             f"exclude={excluded.tolist()!r})")
        return left

    # ------------------------------------------------------------------ features
    def extract(self, image: ImageArg, layers: Sequence[str] | None = None, *,
                name: str = "image") -> QueryFeatures:
        """One forward pass: the network's output, the layers' hyperpatches, the global descriptor.

        ``layers`` defaults to the first layer; ``()`` extracts none (output and global
        descriptor only). Uses :class:`FeatureExtractor`, the same extraction path as the build.
        """
        if isinstance(image, QueryFeatures):
            return image
        layers = tuple(self.check_layer(n) for n in ([None] if layers is None else layers))
        img = self.resolve_image(image, name=name)
        t = time.perf_counter()
        ext = self._extractors.get(layers)
        if ext is None:
            ext = FeatureExtractor(self.model, [self.store.spec(n) for n in layers],
                                   global_tap=self._global_spec)
            self._extractors[layers] = ext
        with self._forward_lock, torch.no_grad():  # layer taps are hooks on the shared model
            logits, patches, gdesc, norms = ext(img[None], return_norms=True)
        return QueryFeatures(image=img, logits=logits[0], output=self.output_array(logits[0]),
                             hyperpatches={n: p[0] for n, p in patches.items()},
                             global_descriptor=gdesc[0], seconds=time.perf_counter() - t,
                             hyperpatch_norms={n: v[0] for n, v in norms.items()})

    def output_array(self, logits: np.ndarray | torch.Tensor) -> np.ndarray:
        """Network logits (C, H, W) → what the network outputs: labels (H, W) or an image."""
        out = logits.numpy() if isinstance(logits, torch.Tensor) else np.asarray(logits)
        if self.task == "segment":
            return out.argmax(0).astype(np.int64)
        return out.astype(np.float32)

    def shortlist(self, gdesc: np.ndarray, candidates: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k candidate images by global-descriptor cosine similarity."""
        sims = self.store.global_vectors()[candidates] @ gdesc.astype(np.float32)
        order = np.argsort(-sims, kind="stable")[:top_k]
        return candidates[order], sims[order]

    # ------------------------------------------------------------------ explain
    def explain(self, image: ImageArg, *, layer: str | None = None, options: QueryOptions | None = None,
                search: str | None = None, top_k: int | None = None, restrict=None, exclude: Sequence = (),
                sources: Sequence[str] = ("target", "input"), iterations: int | None = None,
                samples: int | None = None, jumps: int | None = None, seed: int | None = None,
                init: Union[str, NNField, None] = None, threads: int | None = None) -> QueryResult:
        """Explain ``image`` by compositional nearest neighbours.

        Parameters
        ----------
        image : array, PIL image, path, database image id, or the :class:`QueryFeatures` of an
            earlier :meth:`extract` (to search one forward pass several ways).
        layer : which layer's hyperpatches to match (default: the index's first layer).
        options : a :class:`QueryOptions`; the keyword options below override its fields.
        search : ``"exact"`` (exhaustive cosine, FAISS-speed GEMM) or ``"patchmatch"``.
        top_k : shortlist size; the top-k database images by global-descriptor similarity.
            Default: 16, or every candidate image when fewer.
        restrict : limit the database *before* shortlisting (ids, names, or meta dict such as
            ``{"material": "brick"}``) — the papers' property / bias control.
        exclude : database ids (or names) never matched, e.g. the query itself (leave-one-out).
        sources : what to paste: ``target`` (label transfer / output reconstruction),
            ``input`` (input reconstruction), ``self`` (the network's own outputs).
        iterations, samples, jumps, seed, init : HyperPatch-Match parameters
            (``search="patchmatch"``), see :class:`QueryOptions`; ``init`` may also be an NNField.
        threads : thread limit of this call (default: the instance's).
        """
        t0 = time.perf_counter()
        bad = [s for s in sources if s not in SOURCES]
        if bad:
            raise QueryError(f"Unknown source {bad[0]!r}; expected any of {', '.join(SOURCES)}")
        if init is not None and not isinstance(init, (str, NNField)) or isinstance(init, str) and init not in INITS:
            raise QueryError(f"Unknown init {init!r}; expected one of {', '.join(INITS)} or an NNField")
        field_init = init if isinstance(init, NNField) else None
        opts = (options or QueryOptions()).with_(
            search=search, top_k=top_k, iterations=iterations, samples=samples, jumps=jumps,
            seed=seed, init=None if field_init is not None else init)
        layer = self.check_layer(layer)
        if is_int(image):  # a bad query id is named as such, before the exclude list it may be in
            self.check_ids([image], what="query image")
        cands = self.candidates(restrict, exclude)
        excluded = tuple(int(i) for i in np.unique(self.check_ids(list(exclude), what="exclude")))
        k = opts.resolve_top_k(len(cands))
        coarse = opts.search == "patchmatch" and field_init is None and opts.init == "coarse"
        need = self.pyramid(layer) if coarse else [layer]
        timings: dict[str, float] = {}
        with self.thread_limits(threads):
            feats = self.extract(image, need)
            missing = [n for n in need if n not in feats.hyperpatches]
            if missing:
                raise QueryError(f"the given QueryFeatures lack layers {missing}; extract them too")
            timings["features"] = feats.seconds
            t = time.perf_counter()
            ids, sims = self.shortlist(feats.global_descriptor, cands, k)
            timings["shortlist"] = time.perf_counter() - t
            t = time.perf_counter()
            info: dict = {}
            try:
                nnf = self.backend.search(feats.hyperpatches, ids, layer=layer, options=opts,
                                          init=field_init, pyramid=need, norms=feats.hyperpatch_norms,
                                          info=info)
            except QueryError:  # non-finite stored vectors make searches fail oddly: say so
                self._check_vectors_finite(need, ids)
                raise
            timings["search"] = time.perf_counter() - t
            self._check_finite(sims, nnf, layer)
            t = time.perf_counter()
            spec = self.store.spec(layer)
            recon = {s: self.compose(nnf, spec, s, feats.image.shape[1:]) for s in sources}
            timings["compose"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t0
        params: dict = {"top_k": k}
        if "exact_method" in info:  # which exact search ran (bounded, fused or faiss), and why not a faster one
            params.update({key: info[key] for key in ("exact_method", "exact_fallback", "exact_auto",
                                                      "bounded_pruned", "bounded_seed_seconds") if key in info})
        if "start" in info:  # how HyperPatch-Match started (screen: stride and candidates)
            params["start"] = info["start"]
        if opts.search == "patchmatch":
            params.update(opts.patchmatch_params(), init=opts.init if field_init is None else "field",
                          polish=info.get("polish", opts.polish))
        return QueryResult(layer=layer, spec=spec, field=nnf, shortlist=ids, shortlist_similarity=sims,
                           query_input=feats.image, output=feats.output, reconstructions=recon,
                           timings=timings, search=opts.search, params=params, exclude=excluded,
                           context=self.context())

    def _check_finite(self, sims: np.ndarray, nnf: NNField, layer: str) -> None:
        """A NaN or infinite similarity means corrupt vectors: refuse, naming the file."""
        man = self.store.manifest
        check_finite(sims, f"shortlist similarities (global descriptors, {man['global']['file']})")
        check_finite(nnf.similarity, f"layer {layer!r} similarities ({man['layers'][layer]['file']})")

    def _check_vectors_finite(self, layers: Sequence[str], images: np.ndarray) -> None:
        """IndexStoreError if the stored vectors of ``images`` at ``layers`` hold NaN or inf."""
        for name in layers:
            lv = self.store.layer(name)
            file = self.store.manifest["layers"][name]["file"]
            for i in np.asarray(images).tolist():
                for _, block in lv.blocks(*lv.image_range(int(i))):
                    check_finite(block, f"layer {name!r} vectors of image {i} in {file!r}")

    def query(self, image: ImageArg, **kwargs) -> QueryResult:
        """Same as :meth:`explain` (the name of the first releases)."""
        return self.explain(image, **kwargs)

    def compose(self, nnf: NNField, spec: LayerSpec, source: str, out_size) -> np.ndarray:
        """Paste ``source`` ("target", "input", "self") from the images the field names."""
        name = {"target": "targets", "input": "inputs", "self": "outputs"}[check_choice(source, "source", SOURCES)]
        arr = self.array(name)
        labels = arr.ndim == 3  # (N, H, W) integer class labels
        return paste(nnf, stride=spec.stride, region=spec.region, source=arr, out_size=tuple(out_size),
                     mode="vote" if labels else "mean", num_classes=self.num_classes if labels else None,
                     ignore_index=self.ignore_index if labels else None)

    def save(self, result: QueryResult, out_dir: Union[str, Path], *, name: str = "query") -> dict:
        """Write a result's PNGs and ``result.json`` (what ``compnn query`` writes); the same as
        ``result.save(out_dir)`` for a result of this store."""
        from dataclasses import replace

        if result.context is None:
            result = replace(result, context=self.context())
        return result.save(out_dir, name=name)
