"""Results people can read: reprs, pictures with legends, leave-one-out on every surface, the
CLI's help, the comparison plot and the report template.

Uses the session's tiny index stores (conftest).
"""
from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from compnn_index import __version__
from compnn_index.cli import build_parser, default_query_out, main
from compnn_index.pictures import LegendEntry
from compnn_index.pictures.plots import pareto_front, quality_vs_throughput
from compnn_index.results import Correspondence, GlobalNN, QueryResult

from conftest import TINY_IMAGES, TINY_SIZE

QUERY_PICTURES = {"input", "output", "reconstruction_target", "reconstruction_input", "correspondence_map"}


@pytest.fixture(params=["translate", "segment"])
def cnn(request, translate_cnn, segment_cnn):
    return translate_cnn if request.param == "translate" else segment_cnn


# ---------------------------------------------------------------------------- notebook objects
def test_reprs_are_short_and_informative(cnn):
    res = cnn.explain(3, layer="decoder3", top_k=5, exclude=[3], sources=("target", "input", "self"))
    text = repr(res)
    assert len(text) < 1000
    for part in ("decoder3", "stride 4", "'exact'", "top_k=5", "exclude=[3]", "top sources #", "timings"):
        assert part in text, part
    top_id = res.top_sources(1)[0][0]
    assert f"#{top_id} " in text
    pm = cnn.explain(3, search="patchmatch", iterations=2, top_k=4)
    assert "'patchmatch'" in repr(pm) and "iterations" in repr(pm) and len(repr(pm)) < 1000
    corr = cnn.correspond(1, 2, layer="decoder2")
    assert len(repr(corr)) < 1000 and "decoder2" in repr(corr) and "31×31" in repr(corr)
    g = cnn.global_nn(3, exclude=[3])
    assert len(repr(g)) < 1000 and f"image #{g.image}" in repr(g)
    c = repr(cnn)
    assert len(c) < 1000 and cnn.task in c and f"{TINY_IMAGES} database images" in c and "decoder4" in c


def test_images_are_hwc_uint8_rgb(cnn):
    res = cnn.explain(4, layer="decoder3", top_k=4, sources=("target", "input", "self"))
    pics = res.images()
    assert set(pics) == QUERY_PICTURES | {"reconstruction_self"}
    for name, p in pics.items():
        assert p.dtype == np.uint8 and p.ndim == 3 and p.shape[2] == 3, name
        if name != "correspondence_map":
            assert p.shape == (TINY_SIZE, TINY_SIZE, 3), name
    if cnn.task == "segment":  # label maps are drawn in the store's palette
        palette = {tuple(c) for c in np.asarray(cnn.store.manifest["palette"])}
        assert {tuple(c) for c in pics["reconstruction_target"].reshape(-1, 3)} <= palette
    corr = cnn.correspond(1, 2).images()
    assert set(corr) == {"image_a", "image_b", "correspondence"}
    assert all(p.dtype == np.uint8 and p.shape[2] == 3 for p in corr.values())
    g = cnn.global_nn(1).images()
    assert set(g) == {"input", "target"} and g["input"].shape == (TINY_SIZE, TINY_SIZE, 3)


def test_repr_png_show_and_save(cnn, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    res = cnn.explain(2, layer="decoder4", top_k=3)
    png = res._repr_png_()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and Image.open(io.BytesIO(png)).size[0] > 4 * TINY_SIZE
    fig = res.show()
    assert len(fig.axes) == len(res.images())
    assert cnn.correspond(1, 2)._repr_png_()[:4] == b"\x89PNG"
    doc = res.save(tmp_path / "q")
    assert {p.name for p in (tmp_path / "q").iterdir()} == {f"{n}.png" for n in QUERY_PICTURES} | {"result.json"}
    assert json.loads((tmp_path / "q" / "result.json").read_text()) == doc
    saved = np.asarray(Image.open(tmp_path / "q" / "correspondence_map.png").convert("RGB"))
    np.testing.assert_array_equal(saved, res.images()["correspondence_map"])
    cnn.correspond(1, 2).save(tmp_path / "c")
    assert {p.name for p in (tmp_path / "c").iterdir()} == {"image_a.png", "image_b.png", "correspondence.png",
                                                             "result.json"}


def test_correspondence_map_legend_names_sources_and_classes(cnn):
    res = cnn.explain(5, layer="decoder3", top_k=4, exclude=[5])
    pic = res.correspondence_map()
    sources = [e for e in pic.legend if e.kind == "source"]
    assert [(e.key, round(e.share, 6)) for e in sources] == [(i, round(s, 6)) for i, s in res.top_sources(8)] or \
        {e.key for e in sources} <= set(res.shortlist.tolist())
    assert all(e.label.startswith(f"#{e.key} ") for e in sources)
    assert 5 not in {e.key for e in sources}
    classes = [e for e in pic.legend if e.kind == "class"]
    if cnn.task == "segment":
        from compnn_index.data.palette import FACADES_CLASSES

        present = set(np.unique(res.output).tolist())
        assert {e.key for e in classes} == present
        assert all(e.label == FACADES_CLASSES[e.key] for e in classes)
    else:
        assert classes == []
    assert all(isinstance(e, LegendEntry) for e in pic.legend)


def test_results_without_context_still_draw(cnn):
    from dataclasses import replace

    res = replace(cnn.explain(1, top_k=2), context=None)
    assert "correspondence_map" not in res.images()  # no store: no database pictures
    with pytest.raises(TypeError, match="no index context"):
        res.correspondence_map()
    assert isinstance(res, QueryResult) and Correspondence and GlobalNN


# ---------------------------------------------------------------------------- leave-one-out
def test_exclude_in_the_api(translate_cnn):
    kept = translate_cnn.explain(3, layer="decoder3", top_k=4)
    assert kept.shortlist[0] == 3 and kept.exclude == ()  # default: nothing excluded
    left = translate_cnn.explain(3, layer="decoder3", top_k=4, exclude=[3, 7])
    assert not {3, 7} & (set(left.shortlist.tolist()) | set(np.unique(left.field.image).tolist()))
    assert left.exclude == (3, 7) and left.to_json()["exclude"] == [3, 7]
    name = translate_cnn.store.image_names[3]
    assert 3 not in translate_cnn.explain(3, top_k=4, exclude=[name]).shortlist


def test_exclude_on_the_cli(capsys, translate_index, tmp_path, monkeypatch):
    def run(*args):
        code = main([str(a) for a in ("query", translate_index.index, "3", "--layer", "decoder3",
                                      "--top-k", "4", "--threads", "1", *args)])
        out, err = capsys.readouterr()
        assert code == 0, err
        return out

    stdout = run("--out", tmp_path / "a")
    doc = json.loads((tmp_path / "a" / "result.json").read_text())
    assert 3 not in doc["shortlist"] and 3 not in np.unique(doc["nn_field"]["image"])
    assert "(left out: 3)" in stdout
    run("--keep-self", "--out", tmp_path / "b")
    assert json.loads((tmp_path / "b" / "result.json").read_text())["shortlist"][0] == 3
    run("--exclude", "4,5", "--out", tmp_path / "c")
    doc = json.loads((tmp_path / "c" / "result.json").read_text())
    assert not {3, 4, 5} & set(doc["shortlist"]) and doc["exclude"] == [3, 4, 5]
    code = main(["query", str(translate_index.index), "3", "--exclude", "material=brick", "--out", str(tmp_path / "d")])
    assert code == 2 and "Expected --exclude as image ids or names" in capsys.readouterr().err
    # without --out: a timestamped folder under runs/
    monkeypatch.chdir(tmp_path)
    run()
    (made,) = (tmp_path / "runs").iterdir()
    assert made.name.startswith("query-") and (made / "result.json").is_file()
    assert default_query_out().parent == Path("runs")


@pytest.fixture(scope="module")
def server(translate_index):
    from compnn_index.service.background import BackgroundServer
    from compnn_index.service.server import create_app

    with BackgroundServer(create_app(translate_index.index, workers=1, threads=1)) as srv:
        yield srv


def test_exclude_over_http(server):
    post = lambda body: httpx.post(server.url + "/v1/query", timeout=60, **body)  # noqa: E731
    base = {"image_id": 3, "layer": "decoder3", "top_k": 4}
    kept = post({"json": base}).json()
    assert kept["shortlist"][0] == 3  # like the Python API: nothing excluded unless asked
    left = post({"json": {**base, "keep_self": False}}).json()
    assert 3 not in left["shortlist"] and 3 not in np.unique(left["nn_field"]["image"])
    assert left["exclude"] == [3]
    more = post({"json": {**base, "exclude": [4, 5], "keep_self": False}}).json()
    assert not {3, 4, 5} & set(more["shortlist"])
    form = post({"data": {"image_id": "3", "top_k": "4", "exclude": "4,5", "keep_self": "false"},
                 "files": {"unused": ("", b"")}})
    assert form.status_code == 422  # an unexpected upload field
    form = post({"files": {"image": ("q.png", _png(server, 3), "image/png")},
                 "data": {"top_k": "4", "exclude": "3"}})
    assert form.status_code == 200 and 3 not in form.json()["shortlist"]
    for bad, match in (({"keep_self": "maybe"}, "keep_self to be true or false"),
                       ({"exclude": "material=brick"}, "Expected exclude as image ids or names")):
        r = post({"json": {**base, **bad}})
        assert r.status_code == 422 and match in r.json()["error"]
    r = post({"json": {**base, "exclude": [99]}})
    assert r.status_code == 400 and "image id 99 does not exist" in r.json()["error"]


def _png(server, i: int) -> bytes:
    return httpx.get(f"{server.url}/v1/images/{i}?kind=input", timeout=30).content


# ---------------------------------------------------------------------------- the CLI explains itself
def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_every_option_has_help_and_shows_its_default():
    for name, p in _subcommands().items():
        text = " ".join(p.format_help().split())
        for action in p._actions:
            if not action.option_strings or isinstance(action, argparse._HelpAction):
                continue
            opt = action.option_strings[-1]
            assert action.help, f"compnn {name} {opt} has no help text"
            if action.default not in (None, False, argparse.SUPPRESS):
                shown = (",".join(map(str, action.default)) if isinstance(action.default, list)
                         else str(action.default))
                assert f"default: {shown}" in text, f"compnn {name} {opt}: default {shown} not shown"
            elif action.default is None and action.required is False and not isinstance(
                    action, argparse._StoreTrueAction):
                # an option that defaults to None says what None means
                formatted = p._get_formatter()._expand_help(action)
                assert "default" in formatted, f"compnn {name} {opt}: what is the default?"


def test_version_and_choices(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"compnn-index {__version__}"
    import tomllib

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "compnn_index.__version__"}
    sub = _subcommands()
    for cmd, opt in (("query", "--search"), ("query", "--init"), ("evaluate", "--init"), ("train", "--task")):
        action = next(a for a in sub[cmd]._actions if opt in a.option_strings)
        assert action.choices, (cmd, opt)


# ---------------------------------------------------------------------------- plot
def test_pareto_front():
    pts = [(0.9, 100.0), (0.95, 50.0), (0.93, 40.0), (1.0, 5.0), (0.8, 90.0)]
    assert pareto_front(pts) == [(1.0, 5.0), (0.95, 50.0), (0.9, 100.0)]


def test_quality_vs_throughput_plot(tmp_path):
    doc = {"layer": "decoder2", "task": "segment", "queries": 2,
           "exact": {"by_top_k": {"8": {"seconds_per_query": 0.5, "fidelity": 0.7, "gflops": 1.0}}},
           "settings": [
               {"method": "patchmatch", "params": {"iterations": it, "init": "staged"}, "top_k": 8,
                "seconds_per_query": 0.01 * it, "similarity_ratio": 0.9 + 0.01 * it, "fidelity": 0.69}
               for it in (1, 2, 4)] + [
               {"method": "hnsw", "params": {"efSearch": 16}, "top_k": 8, "seconds_per_query": 0.05,
                "similarity_ratio": 0.99, "fidelity": 0.7}]}
    fig = quality_vs_throughput(doc, tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").size[0] > 800
    texts = {t.get_text() for ax in fig.axes for t in ax.texts}
    assert {"it=1", "it=2", "it=4", "ef=16", "exact"} <= texts
    assert all(ax.get_yscale() == "log" for ax in fig.axes)
    labels = fig.legends[0].get_texts()
    assert "Pareto front" in {t.get_text() for t in labels}


# ---------------------------------------------------------------------------- the report
def test_report_template_renders_human_tables(segment_cnn, segment_index, tmp_path):
    from compnn_index.jobs import demo
    from compnn_index.jobs.evaluate import evaluate

    ev = evaluate(segment_index.index, data="synthetic", split="test", size=TINY_SIZE, limit=1,
                  top_k=[2], out=tmp_path / "eval", cnn=segment_cnn, progress=False)
    assert all(len(r["class_iou"]) == segment_cnn.num_classes for r in ev["rows"])
    assert {"method", "top_k", "source", "vs", "pixel_accuracy", "mean_iou"} <= set(ev["rows"][0])
    pics = demo._Pictures(tmp_path / "img")
    table = demo._evaluation(ev, "Photo → labels", pics, "p2l", tmp_path / "eval" / "examples.png", segment_cnn)
    html = demo._env().get_template("report.html.j2").render(
        train_images=12, size=TINY_SIZE, layers=["decoder2"], elapsed=1.0, stages=[("train", 1.0)],
        stores=[{"name": "index", "mb": 1.0, "layers": ["decoder2"]}], sections=[], tables=[table],
        comparison=None, top_k=2, epochs=1)
    for text in ("<th>pixel accuracy</th>", "<th>mean IoU</th>", "<th>compared with</th>", "CompNN",
                 "global NN (last layer = network output)", "network&#39;s own outputs", "CNN output"):
        assert text in html, text
    assert "self_supervised" not in html and "global_last" not in html
    from compnn_index.data.palette import FACADES_CLASSES

    assert any(f"<th>{c}</th>" in html for c in FACADES_CLASSES)  # the per-class IoU table
    assert "max-height" not in html
    assert (tmp_path / "img" / "p2l_examples.png").is_file() and (tmp_path / "img" / "p2l_classes.png").is_file()
