"""The ``compnn`` command line, in-process through ``cli.main`` (and one real console-script run).

Uses the session's tiny index stores; commands that write a store or a checkpoint write their own
into ``tmp_path``.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from compnn_index.api import CompNN
from compnn_index.checks import MAX_THREADS
from compnn_index.cli import build_parser, main, parse_restrict
from compnn_index.data import FACADES_PALETTE, labels_from_colors, open_dataset
from compnn_index.errors import CompNNError
from compnn_index.models import load_checkpoint
from compnn_index.pictures import to_rgb

from conftest import TINY_IMAGES, TINY_LAYERS, TINY_SIZE

N = TINY_IMAGES
QUERY_FILES = {"input.png", "output.png", "reconstruction_target.png", "reconstruction_input.png",
               "correspondence_map.png", "result.json"}


def run_main(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(code: int, err: str, command: str, match: str) -> None:
    """Exit status 2 and one line on stderr naming the command and the problem, no traceback."""
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"compnn {command}: error: ")
    assert match in lines[0], lines[0]
    assert "Traceback" not in err


def digest(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------- query
def test_query_by_id_writes_pictures_and_json(capsys, translate_index, translate_cnn, tmp_path):
    out = tmp_path / "q"
    code, stdout, err = run_main(capsys, "query", translate_index.index, "3", "--layer", "decoder3",
                                 "--top-k", "4", "--threads", "1", "--out", out)
    assert code == 0, err
    assert {p.name for p in out.iterdir()} == QUERY_FILES  # one image: straight into --out
    doc = json.loads((out / "result.json").read_text())
    grid = translate_cnn.store.grid("decoder3")
    assert set(doc["nn_field"]) == {"image", "y", "x", "similarity"}
    for key, arr in doc["nn_field"].items():
        assert np.asarray(arr).shape == grid, key
    ref = translate_cnn.query(3, layer="decoder3", top_k=4, exclude=[3])  # leave-one-out by default
    assert doc["shortlist"] == ref.shortlist.tolist() and 3 not in doc["shortlist"]
    assert doc["exclude"] == [3]
    np.testing.assert_array_equal(np.asarray(doc["nn_field"]["image"]), ref.field.image)
    np.testing.assert_allclose(np.asarray(doc["nn_field"]["similarity"]), ref.field.similarity, atol=1e-5)
    assert {"features", "shortlist", "search", "compose", "total"} <= set(doc["timings"])
    assert doc["layer"] == "decoder3" and doc["search"] == "exact" and doc["params"]["top_k"] == 4
    # the pictures are the result's arrays
    png = lambda name: np.asarray(Image.open(out / name).convert("RGB"))  # noqa: E731
    np.testing.assert_array_equal(png("input.png"), to_rgb(ref.query_input, None))
    np.testing.assert_array_equal(png("reconstruction_target.png"),
                                  to_rgb(ref.reconstructions["target"], None))
    assert png("output.png").shape == (TINY_SIZE, TINY_SIZE, 3)
    assert png("correspondence_map.png").shape[1] > TINY_SIZE
    assert doc["name"] == "id3" and stdout.startswith("3: decoder3 exact top-4 in ")


def test_query_segment_files_and_patchmatch(capsys, segment_index, segment_cnn, tmp_path):
    """Several queries (an id and an image file) each get a folder; labels are drawn in colour."""
    img = tmp_path / "my photo.png"
    Image.fromarray(to_rgb(np.asarray(segment_cnn.array("inputs")[5]), None)).save(img)
    out = tmp_path / "q"
    code, _, err = run_main(capsys, "query", segment_index.index, "2", img, "--search", "patchmatch",
                            "--init", "coarse", "--iterations", "2", "--top-k", "5",
                            "--sources", "target,self", "--threads", "1", "--out", out)
    assert code == 0, err
    assert {p.name for p in out.iterdir()} == {"id2", "my_photo"}
    for sub in ("id2", "my_photo"):
        names = {p.name for p in (out / sub).iterdir()}
        assert names == QUERY_FILES - {"reconstruction_input.png"} | {"reconstruction_self.png"}
    doc = json.loads((out / "my_photo" / "result.json").read_text())
    assert doc["search"] == "patchmatch" and doc["params"]["init"] == "coarse"
    assert doc["shortlist"][0] == 5 and len(doc["shortlist"]) == 5
    assert set(np.unique(doc["nn_field"]["image"])) <= set(doc["shortlist"])
    # a label map is written with the store's palette, not as grey class indices
    seg = np.asarray(Image.open(out / "id2" / "reconstruction_target.png").convert("RGB"))
    palette = np.asarray(segment_cnn.store.manifest["palette"], dtype=np.uint8)
    colours = {tuple(c) for c in seg.reshape(-1, 3)}
    assert len(colours) > 1 and colours <= {tuple(c) for c in palette}


@pytest.mark.parametrize("args,match", [
    (["--layer", "nope"], f"Unknown layer 'nope': this index has layers {', '.join(TINY_LAYERS)}"),
    (["--top-k", "0"], "but top_k = 0"),
    # the query image (id 1) is left out of its own explanation: N - 1 images remain
    (["--top-k", str(N + 1)], f"Expected 1 <= top_k <= number of database images ({N - 1}), but top_k = {N + 1}"),
    (["--restrict", "material=gold"], "matches no database image"),
    (["--restrict", "@missing.txt"], "--restrict: no such file 'missing.txt'"),
    (["--sources", "labels"], "Unknown source 'labels'"),
    (["--restrict=--1"], "no database image named '--1'"),
    (["--restrict", "-1"], "image id -1 does not exist"),
    (["--restrict", "material="], "Expected --restrict as KEY=VALUE"),
])
def test_query_user_errors_exit_2_with_one_line(capsys, translate_index, tmp_path, monkeypatch, args, match):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(capsys, "query", translate_index.index, "1", *args, "--out", tmp_path / "q")
    assert_user_error(code, err, "query", match)
    assert not (tmp_path / "q" / "result.json").exists()


def test_query_refuses_missing_image_and_index(capsys, translate_index, tmp_path):
    code, _, err = run_main(capsys, "query", translate_index.index, tmp_path / "nope.png", "--out", tmp_path / "q")
    assert_user_error(code, err, "query", f"no such image file: '{tmp_path / 'nope.png'}'")
    code, _, err = run_main(capsys, "query", translate_index.index, "99", "--out", tmp_path / "q")
    assert_user_error(code, err, "query", f"image id 99 does not exist; expected 0 <= id < {N}")
    code, _, err = run_main(capsys, "query", tmp_path / "no_store", "1", "--out", tmp_path / "q")
    assert_user_error(code, err, "query", str(tmp_path / "no_store"))


def test_argument_errors_exit_2(capsys, translate_index, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["query", str(translate_index.index), "1", "--search", "fast", "--out", str(tmp_path)])
    assert exc.value.code == 2
    assert "invalid choice: 'fast'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", str(translate_index.index), "--data", "synthetic", "--top-k", "1,x",
              "--out", str(tmp_path)])
    assert exc.value.code == 2
    assert "expected comma-separated integers, got '1,x'" in capsys.readouterr().err


def assert_argument_error(capsys, argv, command: str, match: str) -> None:
    """argparse refusals: exit status 2 and one line naming the option, no usage dump or traceback."""
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"compnn {command}: error: ") and match in lines[0], lines[0]
    assert "Traceback" not in err


def test_init_is_a_choice(capsys, translate_index, tmp_path):
    assert_argument_error(capsys, ["query", translate_index.index, "1", "--search", "patchmatch",
                                   "--init", "zeros", "--out", tmp_path],
                          "query", "argument --init: invalid choice: 'zeros' (choose from")
    assert_argument_error(capsys, ["evaluate", translate_index.index, "--data", "synthetic",
                                   "--init", "zeros", "--out", tmp_path], "evaluate", "invalid choice: 'zeros'")
    help_text = build_parser()._subparsers._group_actions[0].choices["query"].format_help()
    assert "{random,staged,coarse,screen}" in help_text


@pytest.mark.parametrize("args,match", [
    (["--top-k", "²"], "argument --top-k: Expected --top-k to be an integer, but --top-k = '²'"),
    (["--top-k", "+-3"], "Expected --top-k to be an integer, but --top-k = '+-3'"),
    (["--top-k=--3"], "Expected --top-k to be an integer, but --top-k = '--3'"),
    (["--iterations", "٣"], "Expected --iterations to be an integer"),
    (["--seed", "1.5"], "Expected --seed to be an integer, but --seed = '1.5'"),
    (["--threads", "100000"], f"Expected 1 <= --threads <= {MAX_THREADS}, but --threads = 100000"),
    (["--threads", "0"], f"Expected 1 <= --threads <= {MAX_THREADS}, but --threads = 0"),
    # the bounds of the API and the service (checks.QUERY_INT_BOUNDS), refused at parse time
    (["--iterations", "1000000000"], "Expected 0 <= --iterations <= 256, but --iterations = 1000000000"),
    (["--samples", "257"], "Expected 0 <= --samples <= 256, but --samples = 257"),
    (["--jumps", "-1"], "Expected 0 <= --jumps <= 256, but --jumps = -1"),
])
def test_integer_junk_exits_2_with_one_line(capsys, translate_index, tmp_path, args, match):
    assert_argument_error(capsys, ["query", translate_index.index, "1", *args, "--out", tmp_path / "q"],
                          "query", match)
    assert not (tmp_path / "q").exists()


def test_threads_bound_on_every_command(capsys, tmp_path):
    for argv in (["train", "--data", "synthetic", "--task", "translate", "--out", tmp_path / "m.pt"],
                 ["serve", tmp_path], ["demo", "--out", tmp_path / "d"]):
        assert_argument_error(capsys, [*argv, "--threads", "100000"], argv[0],
                              f"Expected 1 <= --threads <= {MAX_THREADS}, but --threads = 100000")
    assert_argument_error(capsys, ["serve", tmp_path, "--port", "70000"], "serve",
                          "Expected 0 <= --port <= 65535, but --port = 70000")


def test_query_defaults_come_from_query_options():
    """The CLI repeats no query default: each comes from QueryOptions()."""
    from compnn_index.options import QueryOptions

    defaults = QueryOptions()
    a = build_parser().parse_args(["query", "idx", "1", "--out", "o"])
    for name in ("search", "top_k", "iterations", "samples", "jumps", "seed", "init"):
        assert getattr(a, name) == getattr(defaults, name), name
    a = build_parser().parse_args(["compare", "idx", "--data", "synthetic", "--out", "o"])
    assert a.samples == defaults.samples and a.jumps == defaults.jumps and a.init == [defaults.init]
    assert a.iterations[-1] == defaults.iterations and a.iterations == sorted(a.iterations)
    a = build_parser().parse_args(["evaluate", "idx", "--data", "synthetic", "--out", "o"])
    assert a.iterations == defaults.iterations and a.init == defaults.init and a.search == defaults.search


# ---------------------------------------------------------------------------- --restrict
def test_parse_restrict_forms(tmp_path, monkeypatch):
    assert parse_restrict(None) is None
    assert parse_restrict("material=brick") == {"material": "brick"}
    assert parse_restrict(" material = white ") == {"material": "white"}
    # checks.parse_restrict, the one parser: ids come back as ints, names as strings
    assert parse_restrict("1,2,3") == [1, 2, 3]
    assert parse_restrict("7") == [7]
    assert parse_restrict("3, brick_12,-1") == [3, "brick_12", -1]
    assert parse_restrict("--1") == ["--1"]  # not an integer: a name (which no image has)
    ids = tmp_path / "ids.txt"
    ids.write_text("4 5\n6,\n")
    assert parse_restrict(f"@{ids}") == [4, 5, 6]
    assert parse_restrict(str(ids)) == [4, 5, 6]  # an existing .txt path, no '@'
    names = tmp_path / "names.json"
    names.write_text(json.dumps(["a", 3]))
    assert parse_restrict(f"@{names}") == ["a", 3]
    monkeypatch.chdir(tmp_path)
    assert parse_restrict("@ids.txt") == [4, 5, 6]
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    with pytest.raises(CompNNError, match="--restrict is empty"):
        parse_restrict(f"@{empty}")
    with pytest.raises(CompNNError, match="--restrict: no such file 'other.txt'"):
        parse_restrict("@other.txt")


def test_parse_restrict_files_of_every_json_shape_or_a_clear_error(tmp_path):
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"material": "brick"}))
    assert parse_restrict(f"@{meta}") == {"material": "brick"}
    one = tmp_path / "one.json"
    one.write_text("5")
    assert parse_restrict(f"@{one}") == [5]
    bad = tmp_path / "bad.json"
    bad.write_text("[1,2")
    with pytest.raises(CompNNError, match=f"--restrict: cannot read '{bad}'"):
        parse_restrict(f"@{bad}")
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(CompNNError, match=f"--restrict: cannot read '{binary}'"):
        parse_restrict(f"@{binary}")
    number = tmp_path / "float.json"
    number.write_text("1.5")
    with pytest.raises(CompNNError, match="must hold a list of ids or names.*got a JSON float"):
        parse_restrict(f"@{number}")


def test_query_files_with_one_stem_do_not_overwrite_each_other(capsys, translate_index, translate_cnn, tmp_path):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        img = to_rgb(np.asarray(translate_cnn.array("inputs")[0 if sub == "a" else 1]), None)
        Image.fromarray(img).save(tmp_path / sub / "x.png")
    out = tmp_path / "out"
    code, _, err = run_main(capsys, "query", str(translate_index.index), str(tmp_path / "a" / "x.png"),
                            str(tmp_path / "b" / "x.png"), "--top-k", "2", "--out", str(out))
    assert code == 0, err
    first = json.loads((out / "x" / "result.json").read_text())
    second = json.loads((out / "x_2" / "result.json").read_text())
    assert first["name"] == "x" and second["name"] == "x_2"
    assert first["nn_field"] != second["nn_field"]
    assert not list(out.glob("*/.compnn-query-*"))  # no temporary folders left behind


def test_query_restrict_forms_limit_the_database(capsys, translate_index, translate_cnn, tmp_path):
    meta = translate_cnn.store.image_meta
    brick = {i for i, m in enumerate(meta) if m["material"] == "brick"}
    assert brick, "the fixture's 12 facades include brick ones"
    ids_file = tmp_path / "ids.txt"
    names = translate_cnn.store.image_names
    ids_file.write_text(f"{names[4]}\n5 6\n")
    cases = [("material=brick", brick), ("1,2,3", {1, 2, 3}), (f"@{ids_file}", {4, 5, 6})]
    for text, allowed in cases:
        out = tmp_path / f"q{len(allowed)}_{sorted(allowed)[0]}"
        code, _, err = run_main(capsys, "query", translate_index.index, "0", "--restrict", text,
                                "--top-k", str(len(allowed)), "--layer", "decoder4", "--threads", "1",
                                "--keep-self", "--out", out)
        assert code == 0, err
        doc = json.loads((out / "result.json").read_text())
        assert set(doc["shortlist"]) == allowed, text
        assert set(np.unique(doc["nn_field"]["image"])) <= allowed, text


@pytest.mark.parametrize("bad", ["-1", str(N)])
def test_query_by_a_nonexistent_id_says_the_query_image_does_not_exist(capsys, translate_index, tmp_path, bad):
    # leave-one-out puts the id in the exclude list; the refusal must name the query, not --exclude
    code, _, err = run_main(capsys, "query", translate_index.index, bad, "--out", tmp_path / "q")
    assert_user_error(code, err, "query", f"query image: image id {bad} does not exist; expected 0 <= id < {N}")
    assert "exclude" not in err
    assert not (tmp_path / "q").exists()


def test_console_script_query_in_a_subprocess(translate_index, tmp_path):
    script = Path(sys.executable).parent / "compnn"
    script = script if script.is_file() else shutil.which("compnn")
    assert script, "the compnn console script is not installed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "q"
    done = subprocess.run([str(script), "query", str(translate_index.index), "1", "--top-k", "3",
                           "--layer", "decoder4", "--threads", "1", "--keep-self", "--out", str(out)],
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert {p.name for p in out.iterdir()} == QUERY_FILES
    doc = json.loads((out / "result.json").read_text())
    assert doc["shortlist"][0] == 1 and len(doc["shortlist"]) == 3
    assert np.asarray(doc["nn_field"]["similarity"]).shape == (TINY_SIZE // 8 - 1,) * 2


# ---------------------------------------------------------------------------- evaluate
def test_evaluate_exact_methods_give_the_same_table(capsys, segment_index, tmp_path):
    docs = {}
    for method in ("faiss", "bounded"):
        out = tmp_path / method
        code, _, err = run_main(capsys, "evaluate", segment_index.index, "--data", "synthetic", "--limit", "1",
                                "--top-k", "1,3", "--threads", "1", "--no-hpm", "--no-global-layers",
                                "--exact-method", method, "--out", out)
        assert code == 0, err
        docs[method] = json.loads((out / "results.json").read_text())
    assert docs["faiss"]["exact_method"] == "faiss" and docs["bounded"]["exact_method"] == "bounded"
    key = lambda r: (r["method"], r["top_k"], r["source"], r["vs"])  # noqa: E731
    faiss_rows = {key(r): r["pixel_accuracy"] for r in docs["faiss"]["rows"]}
    assert {key(r): r["pixel_accuracy"] for r in docs["bounded"]["rows"]} == pytest.approx(faiss_rows, abs=1e-9)


def test_exact_method_option_is_on_every_command_that_searches_exactly():
    from compnn_index.cli import build_parser

    parser = build_parser()
    for argv in (["query", "S", "1"], ["evaluate", "S", "--data", "d", "--out", "o"],
                 ["compare", "S", "--data", "d", "--out", "o"], ["predict", "S", "1", "--out", "o"]):
        assert parser.parse_args(argv).exact_method == "auto"
        assert parser.parse_args(argv + ["--exact-method", "bounded"]).exact_method == "bounded"
    with pytest.raises(SystemExit):
        parser.parse_args(["query", "S", "1", "--exact-method", "hnsw"])


def test_evaluate_segment(capsys, segment_index, segment_cnn, tmp_path):
    out = tmp_path / "eval"
    code, stdout, err = run_main(capsys, "evaluate", segment_index.index, "--data", "synthetic",
                                 "--limit", "2", "--top-k", "1,4", "--threads", "1", "--out", out)
    assert code == 0, err
    assert {"results.json", "results.md", "examples.png"} <= {p.name for p in out.iterdir()}
    doc = json.loads((out / "results.json").read_text())
    assert doc["task"] == "segment" and doc["images"] == 2 and doc["split"] == "test"
    rows = doc["rows"]
    # today's method ids, plus the papers' extra rows (issue 12)
    assert {r["method"] for r in rows} == {"cnn", "compnn", "global_bottleneck", "global_last",
                                           "compnn_hpm", "global_penultimate", "global_layer"}
    assert {r["vs"] for r in rows} == {"ground_truth", "cnn"}
    assert {r["top_k"] for r in rows if r["method"] == "compnn"} == {1, 4}
    for r in rows:
        assert 0.0 <= r["pixel_accuracy"] <= 1.0 and 0.0 <= r["mean_iou"] <= 1.0
    # the CNN row, recomputed here from the network's own outputs on the test images
    test = open_dataset("synthetic", split="test", size=TINY_SIZE, limit=2, task="segment")
    with torch.no_grad():
        logits = segment_cnn.model(torch.from_numpy(np.stack([s.input for s in test])))
    pred = logits.argmax(1).numpy()
    truth = np.stack([s.target for s in test])
    (cnn_row,) = [r for r in rows if r["method"] == "cnn"]
    assert cnn_row["vs"] == "ground_truth"
    assert cnn_row["pixel_accuracy"] == pytest.approx((pred == truth).mean(), abs=1e-6)
    md = (out / "results.md").read_text()
    assert md.startswith("# CompNN evaluation: segment, layer decoder2, exact search, 2 test images")
    # auto: the fastest exact method the store supports (it has a screen: bounded)
    assert doc["exact_method"] == "bounded" and "exact search method: bounded" in md
    main_table = md.split("\n## ")[0]  # then the per-class IoU table
    assert main_table.count("| compnn |") == 8  # 2 top-k × 2 sources × 2 references
    assert Image.open(out / "examples.png").size[0] > 5 * TINY_SIZE


def test_evaluate_translate(capsys, translate_index, translate_cnn, tmp_path):
    out = tmp_path / "eval"
    code, _, err = run_main(capsys, "evaluate", translate_index.index, "--data", "synthetic",
                            "--limit", "1", "--top-k", "2", "--layer", "decoder3", "--threads", "1",
                            "--out", out)
    assert code == 0, err
    doc = json.loads((out / "results.json").read_text())
    assert doc["task"] == "translate" and doc["layer"] == "decoder3"
    rows = doc["rows"]
    assert {r["method"] for r in rows} == {"cnn", "compnn", "global_bottleneck", "global_last",
                                           "compnn_hpm", "global_penultimate", "global_layer"}
    assert {r["vs"] for r in rows} == {"ground_truth", "cnn", "input_labels"}
    (inp,) = [r for r in rows if r["vs"] == "input_labels" and r["method"] == "compnn"]
    assert inp["method"] == "compnn" and inp["top_k"] == 2
    # recomputed on the store's own direction (label map -> photo), which the CLI must inherit
    (s,) = open_dataset("synthetic", split="test", size=TINY_SIZE, limit=1, direction="BtoA",
                        task="translate")
    rec = translate_cnn.query(s.input, layer="decoder3", top_k=2, sources=("input",))
    in_labels = labels_from_colors(to_rgb(s.input, None), FACADES_PALETTE)
    rec_labels = labels_from_colors(to_rgb(rec.reconstructions["input"], None), FACADES_PALETTE)
    assert inp["pixel_accuracy"] == pytest.approx((rec_labels == in_labels).mean(), abs=1e-6)
    for r in rows:
        if r["vs"] == "cnn":
            assert r["l1"] >= 0 and r["psnr"] > 0
    assert (out / "examples.png").is_file() and (out / "results.md").is_file()


def test_evaluate_refuses_top_k_over_the_store(capsys, segment_index, tmp_path):
    code, _, err = run_main(capsys, "evaluate", segment_index.index, "--data", "synthetic",
                            "--top-k", f"1,{N + 4}", "--out", tmp_path / "e")
    assert_user_error(code, err, "evaluate",
                      f"Expected --top-k <= number of database images ({N}), but got [{N + 4}]")


# ---------------------------------------------------------------------------- compare
def test_compare(capsys, segment_index, tmp_path):
    out = tmp_path / "cmp"
    code, _, err = run_main(capsys, "compare", segment_index.index, "--data", "synthetic", "--limit", "1",
                            "--iterations", "1,4", "--init", "random,coarse",  # default top-k: all 12
                            "--exact-method", "faiss", "--threads", "1", "--out", out)
    assert code == 0, err
    assert {"comparison.json", "comparison.md", "comparison.png"} <= {p.name for p in out.iterdir()}
    doc = json.loads((out / "comparison.json").read_text())
    assert doc["task"] == "segment" and doc["queries"] == 1 and doc["layer"] == "decoder2"
    ex = doc["exact"]
    assert ex["seconds_per_query"] > 0 and ex["gflops"] > 0 and 0 <= ex["fidelity"] <= 1
    settings = doc["settings"]
    assert {r["method"] for r in settings} == {"patchmatch", "hnsw", "ivf", "exact_fused", "exact_bounded"}
    for method in ("exact_fused", "exact_bounded"):  # the native exact methods: FAISS's answers
        row = next(r for r in settings if r["method"] == method)
        assert row["recall_at_1"] > 0.99 and abs(row["similarity_ratio"] - 1) < 1e-5
    pm = [r for r in settings if r["method"] == "patchmatch"]
    assert sorted((r["params"]["init"], r["params"]["iterations"]) for r in pm) == [
        ("coarse", 1), ("coarse", 4), ("random", 1), ("random", 4)]
    for r in settings:
        for key in ("speedup", "recall_at_1", "similarity_ratio", "agreement", "fidelity"):
            assert np.isfinite(r[key]), (r["method"], key)
        assert r["speedup"] > 0 and 0 <= r["recall_at_1"] <= 1 and 0 <= r["agreement"] <= 1
        assert r["similarity_ratio"] <= 1 + 1e-5
        assert r["fidelity_delta"] == pytest.approx(r["fidelity"] - ex["fidelity"])
    more = {r["params"]["iterations"]: r["similarity_ratio"] for r in pm if r["params"]["init"] == "random"}
    assert more[4] >= more[1] - 1e-6  # more iterations never lose similarity (same seed)
    md = (out / "comparison.md").read_text()
    assert f"| exact | {N} |" in md and md.count("| patchmatch |") == 4
    assert ex["exact_method"] == "faiss" and f"| exact | {N} | faiss," in md  # the reference is FAISS exact
    assert {r["top_k"] for r in settings} == {N}
    assert Image.open(out / "comparison.png").size[0] > 300


@pytest.mark.parametrize("args,match", [
    (["--top-k", str(N + 1)], f"Expected 1 <= --top-k <= {N}, but got {N + 1}"),
    (["--top-k", ","], "Expected at least one --top-k value, got none"),
    (["--init", "random,zeros"], "Unknown --init value 'zeros'; expected any of random, staged, coarse"),
    (["--baselines", "hnsw,annoy"], "Unknown --baselines value 'annoy'; expected any of hnsw, ivf"),
])
def test_compare_refuses_bad_options(capsys, translate_index, tmp_path, args, match):
    code, _, err = run_main(capsys, "compare", translate_index.index, "--data", "synthetic",
                            *args, "--out", tmp_path / "c")
    assert_user_error(code, err, "compare", match)
    assert not (tmp_path / "c").exists()


# ---------------------------------------------------------------------------- train / build
def test_train_and_build(capsys, tmp_path):
    ckpt = tmp_path / "seg.pt"
    code, _, err = run_main(capsys, "train", "--data", "synthetic", "--size", "64", "--limit", "4",
                            "--task", "segment", "--ngf", "8", "--epochs", "1", "--batch-size", "2",
                            "--threads", "1", "--out", ckpt)
    assert code == 0, err
    model = load_checkpoint(ckpt)
    assert model.arch == "unet" and model.config["task"] == "segment"

    store = tmp_path / "store"
    code, _, err = run_main(capsys, "build", "--model", ckpt, "--data", "synthetic", "--limit", "4",
                            "--layers", "decoder2,decoder3", "--threads", "1", "--out", store)
    assert code == 0, err
    cnn = CompNN.load(store)
    assert cnn.layers == ["decoder2", "decoder3"] and cnn.num_images == 4
    assert list(cnn.store.image_size) == [TINY_SIZE, TINY_SIZE]
    before = digest(store)

    # building again into the same folder without --overwrite: refused, old store untouched
    code, _, err = run_main(capsys, "build", "--model", ckpt, "--data", "synthetic", "--limit", "2",
                            "--out", store)
    assert_user_error(code, err, "build", f"index store '{store}' already exists")
    assert digest(store) == before
    assert CompNN.load(store).num_images == 4

    code, _, err = run_main(capsys, "build", "--model", ckpt, "--data", "synthetic", "--limit", "2",
                            "--layers", "decoder3", "--out", store, "--overwrite")
    assert code == 0, err
    again = CompNN.load(store)
    assert again.num_images == 2 and again.layers == ["decoder3"]
    assert not list(tmp_path.glob("*.tmp*")) and sorted(p.name for p in tmp_path.iterdir()) == [
        "seg.loss.csv", "seg.loss.png", "seg.pt", "seg.train.pt", "store"]


def test_build_inherits_the_models_direction(capsys, translate_index, translate_cnn, tmp_path):
    store = tmp_path / "s"
    code, _, err = run_main(capsys, "build", "--model", translate_index.model, "--data", "synthetic",
                            "--limit", "2", "--layers", "decoder4", "--threads", "1", "--out", store)
    assert code == 0, err
    cnn = CompNN.load(store)
    assert cnn.store.manifest["dataset"]["direction"] == "BtoA"
    assert list(cnn.store.image_size) == [TINY_SIZE, TINY_SIZE]
    np.testing.assert_array_equal(cnn.array("inputs"), translate_cnn.array("inputs")[:2])


def test_train_and_build_user_errors(capsys, tmp_path, segment_index):
    code, _, err = run_main(capsys, "train", "--data", "synthetic", "--task", "translate", "--arch", "segnet",
                            "--out", tmp_path / "m.pt")
    assert_user_error(code, err, "train", "--arch segnet is a segmentation network")
    code, _, err = run_main(capsys, "train", "--data", "synthetic", "--task", "segment", "--epochs", "0",
                            "--out", tmp_path / "m.pt")
    assert_user_error(code, err, "train", "Expected --epochs >= 1, but --epochs = 0")
    code, _, err = run_main(capsys, "build", "--model", segment_index.model, "--data", "synthetic",
                            "--limit", "2", "--layers", "decoder2,nope", "--out", tmp_path / "s")
    assert_user_error(code, err, "build", "nope")
    assert not (tmp_path / "s").exists() and not (tmp_path / "m.pt").exists()
