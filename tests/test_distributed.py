"""Sharded index stores, in process and on Ray (issue 11).

The data is the session's tiny translation store (``translate_index`` in conftest: 12 synthetic
64×64 facades, U-Net ngf 8, layers decoder2/3/4). Its checkpoint is indexed again as 3 shards
(images 0..3, 4..7, 8..11), built in process; the Ray tests run on the session's local cluster
of 2 CPUs (``ray_local``), one two-node ``ray.cluster_utils.Cluster`` in a subprocess.
"""
from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from compnn_index import cli
from compnn_index.api import CompNN
from compnn_index.distributed import DistributedError, LocalShards, cpus_per_worker, merge_fields
from compnn_index.errors import IndexStoreError
from compnn_index.index import IndexStore
from compnn_index.index.sharded import ShardedStore, build_sharded, plan_shards
from compnn_index.jobs import workflows
from compnn_index.options import QueryOptions
from compnn_index.search import NNField, search_field

from conftest import REPO_ROOT, TINY_IMAGES, TINY_LAYERS

FIELDS = ("image", "y", "x", "similarity")
QUERIES = [(0, None), (5, 4), (11, 1), (7, 9)]  # (database image as query, top_k)


def same_field(a: NNField, b: NNField) -> bool:
    return all(np.array_equal(getattr(a, f), getattr(b, f)) for f in FIELDS)


def build_args(tiny) -> dict:
    return dict(model=tiny.model, layers=list(TINY_LAYERS), limit=TINY_IMAGES, threads=1,
                progress=False, **tiny.dataset_args())


@pytest.fixture(scope="module")
def flat(translate_index) -> CompNN:
    return CompNN.load(translate_index.index, threads=1)


@pytest.fixture(scope="module")
def sharded_dir(translate_index, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sharded") / "index3"
    workflows.build(out=out, shards=3, **build_args(translate_index))
    return out


@pytest.fixture(scope="module")
def sharded(sharded_dir) -> CompNN:
    return CompNN.load(sharded_dir, threads=1)


# ---------------------------------------------------------------------------- the store
def test_plan_shards_is_contiguous_and_balanced():
    assert plan_shards(12, 3) == [(0, 4), (4, 8), (8, 12)]
    assert plan_shards(10, 4) == [(0, 2), (2, 5), (5, 8), (8, 10)]
    with pytest.raises(IndexStoreError, match="at most one shard per image"):
        plan_shards(3, 4)
    assert cpus_per_worker(2, 4) == 0.5 and cpus_per_worker(2, 3) == 0.66 and cpus_per_worker(8, 3) == 2


def test_sharded_store_layout(sharded_dir, translate_index):
    top = json.loads((sharded_dir / "manifest.json").read_text())
    flat = json.loads((translate_index.index / "manifest.json").read_text())
    assert top["format_version"] == 2 and flat["shards"] is None
    assert [s["images"] for s in top["shards"]] == [[0, 4], [4, 8], [8, 12]]
    assert top["images"] == flat["images"] and top["global"]["ntotal"] == TINY_IMAGES
    for name in TINY_LAYERS:
        assert {k: top["layers"][name][k] for k in ("spec", "grid", "dim", "ntotal")} == \
               {k: flat["layers"][name][k] for k in ("spec", "grid", "dim", "ntotal")}
    store = IndexStore.open(sharded_dir)
    assert isinstance(store, ShardedStore) and store.num_shards == 3
    np.testing.assert_array_equal(store.global_vectors(), IndexStore.open(translate_index.index).global_vectors())
    for s in top["shards"]:  # every shard is an ordinary store
        shard = IndexStore.open(sharded_dir / s["path"])
        assert type(shard) is IndexStore and shard.num_images == s["images"][1] - s["images"][0]
        assert shard.manifest["shards"] is None
    assert not list(sharded_dir.parent.glob(".*building*"))


def test_in_process_shards_give_the_unsharded_answers(flat, sharded):
    assert isinstance(sharded.backend, LocalShards)
    assert sharded.layers == flat.layers and sharded.num_images == flat.num_images
    for image, k in QUERIES:
        for layer in ("decoder2", "decoder4"):
            a = flat.explain(image, layer=layer, top_k=k, sources=("target", "input", "self"))
            b = sharded.explain(image, layer=layer, top_k=k, sources=("target", "input", "self"))
            assert same_field(a.field, b.field), (image, k, layer)
            np.testing.assert_array_equal(a.shortlist, b.shortlist)
            for src in a.reconstructions:
                np.testing.assert_array_equal(a.reconstructions[src], b.reconstructions[src])
    a = flat.explain(3, restrict=[1, 5, 9, 10], exclude=[3])
    b = sharded.explain(3, restrict=[1, 5, 9, 10], exclude=[3])
    assert same_field(a.field, b.field)
    for name in ("inputs", "targets", "outputs"):
        np.testing.assert_array_equal(np.asarray(flat.array(name))[[9, 0, 5, 5]], sharded.array(name)[[9, 0, 5, 5]])
    assert flat.global_nn(2, by="decoder3").ranking.tolist() == sharded.global_nn(2, by="decoder3").ranking.tolist()


def test_a_mismatched_shard_is_refused(sharded_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(sharded_dir, copy)
    man_file = copy / "shards" / "001" / "manifest.json"
    man = json.loads(man_file.read_text())
    man["images"] = man["images"][:3]
    man_file.write_text(json.dumps(man, indent=1))
    with pytest.raises(IndexStoreError) as err:
        CompNN.load(copy)
    msg = str(err.value)
    assert "shard 1 (images 4..7" in msg and "holds 3 images, the top manifest says 4" in msg
    assert "manifest sha256" in msg
    man_file.write_text(man_file.read_text().replace('"created"', '"created" ', 1))  # same content, other bytes
    man = json.loads((sharded_dir / "shards" / "001" / "manifest.json").read_text())
    man_file.write_text(json.dumps(man, indent=2))
    with pytest.raises(IndexStoreError, match=r"shard 1 \(images 4\.\.7.*manifest sha256 [0-9a-f]{16}… vs "
                                              r"the top manifest's [0-9a-f]{16}…"):
        IndexStore.open(copy)


def test_an_interrupted_sharded_build_leaves_nothing_that_loads(translate_index, tmp_path):
    from compnn_index.data import open_dataset
    from compnn_index.index.sharded import build_shard
    from compnn_index.models import load_checkpoint

    net = load_checkpoint(translate_index.model)
    ds = open_dataset("synthetic", size=64, limit=TINY_IMAGES, direction="BtoA", task="translate")
    out = tmp_path / "index"
    built = []

    def interrupted(tasks, model, dataset):
        build_shard(tasks[0], model, dataset)
        built.append(tasks[0].index)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_sharded(net, ds, shards=3, layers=["decoder3"], out=out, runner=interrupted, progress=False)
    assert not out.exists()
    work = tmp_path / ".index.sharded-building"
    assert work.is_dir() and not (work / "manifest.json").exists()
    for path in (out, work):
        with pytest.raises(IndexStoreError, match="is missing|is not a directory"):
            IndexStore.open(path)
    kept = (work / "shards" / "000" / "manifest.json").stat().st_mtime_ns
    seen = []

    def resumed(tasks, model, dataset):
        seen.extend(t.index for t in tasks)
        for t in tasks:
            build_shard(t, model, dataset)

    saved = (work / "fit.npz").read_bytes()  # the driver's fit, saved before the first shard
    build_sharded(net, ds, shards=3, layers=["decoder3"], out=out, runner=resumed, progress=False)
    assert built == [0] and seen == [1, 2]  # the finished shard was kept
    bases = shard_bases(out, "decoder3")  # and the resumed ones used the saved fit
    assert all(np.array_equal(b, bases[0]) for b in bases) and saved
    assert (out / "shards" / "000" / "manifest.json").stat().st_mtime_ns == kept
    assert IndexStore.open(out).num_shards == 3 and not work.exists()


def shard_bases(root: Path, layer: str) -> list[np.ndarray]:
    """Every shard's screen basis of ``layer``, as stored."""
    top = IndexStore.open(root).manifest
    out = []
    for entry in top["shards"]:
        man = json.loads((root / entry["path"] / "manifest.json").read_text())
        out.append(np.load(root / entry["path"] / man["layers"][layer]["screen"]["basis"]))
    return out


def tiny_dataset(limit: int = TINY_IMAGES):
    from compnn_index.data import open_dataset

    return open_dataset("synthetic", size=64, limit=limit, direction="BtoA", task="translate")


def test_every_shard_uses_the_drivers_fit(translate_index, sharded_dir):
    """The screen basis is fitted once over the whole dataset, by the driver, and every shard
    stores that basis: identical in all shards, and the one an unsharded build fits (a shard
    fitting its own, on its 4 images, gives another basis)."""
    from compnn_index.index.build import fit_build
    from compnn_index.index.screen import fit_screen
    from compnn_index.models import load_checkpoint

    net = load_checkpoint(translate_index.model)
    fit = fit_build(net, tiny_dataset(), layers=list(TINY_LAYERS), threads=1)
    flat = IndexStore.open(translate_index.index).manifest
    for layer in TINY_LAYERS:
        bases = shard_bases(sharded_dir, layer)
        assert len(bases) == 3
        for b in bases:
            np.testing.assert_array_equal(b, fit.layers[layer].basis)
        np.testing.assert_array_equal(
            bases[0], np.load(translate_index.index / flat["layers"][layer]["screen"]["basis"]))
        # what each shard would have fitted on its own images is another basis
        own = IndexStore.open(sharded_dir / "shards" / "001").layer(layer)
        alone, _ = fit_screen(np.asarray(own.blocks(0, own.ntotal).__next__()[1]))
        assert not np.allclose(np.abs(alone), np.abs(bases[1]), atol=1e-3)
        energies = {json.loads((sharded_dir / "shards" / f"{i:03d}" / "manifest.json").read_text())
                    ["layers"][layer]["screen"]["energy"] for i in range(3)}
        assert energies == {flat["layers"][layer]["screen"]["energy"]}


def test_sq8_shards_share_the_drivers_ranges_and_verify(translate_index, tmp_path, capsys):
    """sq8: every shard's layer file carries the driver's ranges (byte for byte in its header);
    `compnn verify` passes on the store and `compnn upgrade` finds nothing to add."""
    from compnn_index.index.build import fit_build
    from compnn_index.index.codecs import sq_header
    from compnn_index.models import load_checkpoint

    out = tmp_path / "sq8"
    workflows.build(out=out, shards=2, codec="sq8", **{**build_args(translate_index), "layers": ["decoder3"]})
    fit = fit_build(load_checkpoint(translate_index.model), tiny_dataset(), layers=["decoder3"], threads=1,
                    codec="sq8")
    assert fit.layers["decoder3"].trained.size == 2 * IndexStore.open(out).dim("decoder3")
    for i in range(2):
        folder = out / "shards" / f"{i:03d}"
        entry = json.loads((folder / "manifest.json").read_text())["layers"]["decoder3"]
        head = sq_header("sq8", entry["dim"], entry["ntotal"], fit.layers["decoder3"].trained)
        assert (folder / entry["file"]).read_bytes()[:len(head)] == head
    for b in shard_bases(out, "decoder3"):
        np.testing.assert_array_equal(b, fit.layers["decoder3"].basis)
    assert not (out / "fit.npz").exists()  # the driver's copy goes once every shard holds its own
    capsys.readouterr()
    assert cli.main(["verify", str(out)]) == 0  # every shard's files against its own checksums
    printed = capsys.readouterr().out
    assert all(f"shards/00{i}/layers/decoder3.screen-basis.npy: sha256 ok" in printed for i in range(2)), printed
    assert f"{out}: ok (2 shards)" in printed
    assert cli.main(["upgrade", str(out)]) == 0  # nothing to add: every shard has norms and screens
    assert "is up to date" in capsys.readouterr().out
    sharded = CompNN.load(out, threads=1)
    assert sharded.explain(3, layer="decoder3", top_k=4).field.image.shape[0] > 0


def test_a_fit_made_for_another_build_is_refused(translate_index, tmp_path):
    from compnn_index.index import build_index
    from compnn_index.index.build import fit_build
    from compnn_index.models import load_checkpoint

    net = load_checkpoint(translate_index.model)
    fit = fit_build(net, tiny_dataset(4), layers=["decoder3"], threads=1)
    with pytest.raises(IndexStoreError, match=r"fitted: made for codec fp32 with screen 16, but this build "
                                              r"writes codec sq8"):
        build_index(net, tiny_dataset(4), layers=["decoder3"], out=tmp_path / "x", codec="sq8", fitted=fit,
                    progress=False)
    with pytest.raises(IndexStoreError, match=r"fitted: made for layers \['decoder3'\], but this build indexes "
                                              r"\['decoder2'\]"):
        build_index(net, tiny_dataset(4), layers=["decoder2"], out=tmp_path / "x", fitted=fit, progress=False)
    assert not (tmp_path / "x").exists()


def test_ray_is_imported_lazily_and_its_absence_is_explained(sharded_dir):
    package = REPO_ROOT / "compnn_index"
    for path in package.rglob("*.py"):  # never at module level
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n == "ray" or n.startswith("ray.") for n in names), path
    script = textwrap.dedent(f"""
        import sys
        sys.modules["ray"] = None  # as if Ray were not installed
        import numpy as np
        from compnn_index.api import CompNN
        from compnn_index.errors import CompNNError
        cnn = CompNN.load({str(sharded_dir)!r}, threads=1)
        assert cnn.explain(2, top_k=3).field.shape
        try:
            CompNN.load({str(sharded_dir)!r}, cluster="local")
        except CompNNError as exc:
            print(exc)
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "Ray is not installed" in run.stdout and "pip install 'compnn-index[ray]'" in run.stdout


def test_merge_prefers_the_lowest_id_on_ties():
    one = lambda img, sim: NNField(np.full((1, 2), img), np.zeros((1, 2)), np.zeros((1, 2)), np.asarray([sim]))
    merged = merge_fields([one(1, [0.5, 0.2]), one(7, [0.5, 0.3])])
    assert merged.image.tolist() == [[1, 7]] and merged.similarity.tolist() == [[0.5, np.float32(0.3)]]


# ---------------------------------------------------------------------------- on Ray
@pytest.fixture(scope="class")
def store_dir(sharded_dir, tmp_path_factory):
    copy = tmp_path_factory.mktemp("ray") / "index3"  # the last test of TestRayShards breaks a shard
    shutil.copytree(sharded_dir, copy)
    return copy


@pytest.fixture(scope="class")
def ray_cnn(ray_local, store_dir):
    cnn = CompNN.load(store_dir, threads=1, cluster="local")
    yield cnn
    cnn.close()


@pytest.mark.distributed
class TestRayShards:
    """One set of shard actors for the class (actor starts cost seconds on 2 cores)."""

    def test_actors_declare_cpus_and_set_threads(self, ray_local, ray_cnn):
        backend = ray_cnn.backend
        assert backend.kind == "ray" and backend.shard_cpus == 0.66 and backend.threads == 1
        info = ray_local.get([a.describe.remote() for a in backend.actors])
        assert [i["images"] for i in info] == [[0, 4], [4, 8], [8, 12]]
        assert all(i["torch_threads"] == 1 and i["omp_num_threads"] == "1" for i in info)

    def test_exact_search_equals_the_unsharded_store(self, flat, ray_cnn):
        for image, k in QUERIES:
            a = flat.explain(image, layer="decoder2", top_k=k, sources=("target", "input"))
            b = ray_cnn.explain(image, layer="decoder2", top_k=k, sources=("target", "input"))
            assert same_field(a.field, b.field), (image, k)
            for src in a.reconstructions:
                np.testing.assert_array_equal(a.reconstructions[src], b.reconstructions[src])
        # only the shards holding shortlisted images are asked
        ray_cnn.explain(5, top_k=1)
        assert len(ray_cnn.backend.last["shard_seconds"]) == 1

    def test_patchmatch_is_never_below_any_shards_own_field(self, ray_cnn, sharded):
        store = sharded.store
        for init in ("staged", "coarse"):
            opts = QueryOptions(search="patchmatch", iterations=4, init=init, top_k=12)
            query = np.asarray(store.array("inputs")[6])[:, ::-1].copy()  # a mirrored facade
            res = ray_cnn.explain(query, layer="decoder2", options=opts)
            feats = sharded.extract(query, sharded.pyramid("decoder2"))
            for s, local in store.locate(res.shortlist):
                own = search_field(feats.hyperpatches, store.shard(s).layer, local, layer="decoder2",
                                   options=opts, pyramid=sharded.pyramid("decoder2"))
                assert np.all(res.field.similarity >= own.similarity), (init, s)
            assert set(np.unique(res.field.image)) <= set(res.shortlist.tolist())

    def test_a_shard_actor_killed_mid_query_is_survived(self, ray_local, flat, ray_cnn):
        actor = ray_cnn.backend.actors[1]
        before = ray_local.get(actor.describe.remote())["pid"]
        ray_local.get(actor.crash_during_next_call.remote())
        res = ray_cnn.explain(6, top_k=None)  # shard 1's process exits inside this search
        assert same_field(res.field, flat.explain(6, top_k=None).field)
        assert ray_local.get(actor.describe.remote())["pid"] != before

    def test_a_failed_restart_fails_the_query_naming_the_shard(self, ray_local, ray_cnn, store_dir):
        man = store_dir / "shards" / "002" / "manifest.json"
        man.rename(man.with_suffix(".moved"))  # the restarted actor cannot open its shard
        try:
            ray_local.get(ray_cnn.backend.actors[2].crash_during_next_call.remote())
            with pytest.raises(DistributedError, match=r"shard 2 \(images 8\.\.11, .*could not be restarted"):
                ray_cnn.explain(9, top_k=None)
        finally:
            man.with_suffix(".moved").rename(man)


@pytest.mark.distributed
def test_cli_builds_four_shards_on_ray_and_serves_them(ray_local, translate_index, flat, tmp_path, capsys):
    """`compnn build --shards 4 --ray local` on 2 cores (0.5 CPU per task), then the service
    (what `compnn serve --ray local` runs) answers queries from its 4 shard actors."""
    pytest.importorskip("httpx")
    import httpx

    from compnn_index.service.background import BackgroundServer
    from compnn_index.service.server import create_app

    tiny = translate_index
    out = tmp_path / "index4"
    assert cli.main(["build", "--model", str(tiny.model), "--data", "synthetic", "--size", "64",
                     "--limit", str(TINY_IMAGES), "--direction", tiny.direction, "--layers", "decoder2,decoder3",
                     "--threads", "1", "--shards", "4", "--ray", "local", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    # whole CPUs: two waves of two tasks on 2 cores, in reused workers, each with the 1 thread asked
    assert "building 4 shards on Ray (1 CPUs and 1 threads each)" in printed
    assert printed.count("(1 torch / 1 FAISS threads)") == 4
    assert IndexStore.open(out).num_shards == 4
    for layer in ("decoder2", "decoder3"):  # the driver's basis in every shard the Ray tasks wrote
        bases = shard_bases(out, layer)
        assert all(np.array_equal(b, bases[0]) for b in bases)
    # --ray reaches CompNN.load: an unsharded store is refused before any actor starts
    assert cli.main(["query", str(tiny.index), "3", "--ray", "local", "--out", str(tmp_path / "q")]) == 2
    assert "is not sharded" in capsys.readouterr().err

    app = create_app(out, workers=2, threads=1, cluster="local")
    try:
        assert app.state.cnn.backend.kind == "ray" and len(app.state.cnn.backend.actors) == 4
        with BackgroundServer(app) as srv, httpx.Client(base_url=srv.url, timeout=120) as client:
            assert client.get("/v1/index").json()["num_images"] == TINY_IMAGES
            r = client.post("/v1/query", json={"image_id": 3, "layer": "decoder3", "top_k": 5,
                                               "sources": ["target", "input", "self"]})
            assert r.status_code == 200, r.text
            ref = flat.explain(3, layer="decoder3", top_k=5)
            np.testing.assert_array_equal(np.asarray(r.json()["nn_field"]["image"]), ref.field.image)
            np.testing.assert_array_equal(np.asarray(r.json()["nn_field"]["x"]), ref.field.x)
            for url in r.json()["links"].values():
                assert client.get(url).status_code == 200
            r = client.post("/v1/query", json={"image_id": 2, "search": "patchmatch", "iterations": 3})
            assert r.status_code == 200, r.text
    finally:
        app.state.cnn.close()  # the shard actors go; the store stays usable in process


@pytest.mark.distributed
def test_two_node_cluster_spreads_the_shards(sharded_dir, flat):
    pytest.importorskip("ray")
    script = textwrap.dedent(f"""
        import json, ray
        from ray.cluster_utils import Cluster
        from compnn_index.api import CompNN
        cluster = Cluster(initialize_head=True, head_node_args={{"num_cpus": 1}})
        cluster.add_node(num_cpus=1)
        try:
            ray.init(address=cluster.address, log_to_driver=False)
            cnn = CompNN.load({str(sharded_dir)!r}, threads=1, cluster=cluster.address)
            nodes = [i["node"] for i in ray.get([a.describe.remote() for a in cnn.backend.actors])]
            res = cnn.explain(5, top_k=None)
            print(json.dumps({{"nodes": nodes, "cpus": cnn.backend.shard_cpus,
                              "image": res.field.image.tolist(),
                              "similarity": res.field.similarity.tolist()}}))
            cnn.close()
        finally:
            ray.shutdown()
            cluster.shutdown()
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    doc = json.loads(run.stdout.strip().splitlines()[-1])
    assert len(set(doc["nodes"])) == 2 and doc["cpus"] == 0.5  # SPREAD over both 1-CPU nodes
    ref = flat.explain(5, top_k=None).field
    np.testing.assert_array_equal(np.asarray(doc["image"]), ref.image)
    np.testing.assert_array_equal(np.asarray(doc["similarity"], dtype=np.float32), ref.similarity)
