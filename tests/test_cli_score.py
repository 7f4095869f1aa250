"""`leep-jax score`: results, streaming == in-memory, bad input, bounded memory.

Most tests call ``main(["score", ...])`` in-process (fast); a few run the real command
in a subprocess to check the exit status and that stderr is one line, no traceback.
"""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import reference as ref

import leep_jax
from leep_jax.cli.main import main
from leep_jax.streaming import engine, sources

REPO = Path(__file__).resolve().parents[1]
N, Y, Z, D = 100, 4, 6, 5
BATCH = 32  # batches [0, 32), [32, 64), [64, 96), [96, 100): the last one is ragged
BAD_ROW = 98  # inside the last batch: the problem is met mid-stream


def make_task(n=N, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, Y, size=n)
    labels[:Y] = np.arange(Y)  # every class present
    features = rng.normal(size=(n, D)) + np.eye(Y, D)[labels] + 3.0
    logits = 2.0 * features @ rng.normal(size=(D, Z)) + rng.normal(size=(n, Z))
    return {
        "logits": logits.astype(np.float32),
        "predictions": ref.softmax(logits).astype(np.float32),
        "labels": labels,  # int64, as np.save writes Python ints
        "features": features.astype(np.float32),
    }


def save(directory: Path, arrays: dict) -> dict[str, str]:
    paths = {}
    for name, array in arrays.items():
        paths[name] = str(directory / f"{name}.npy")
        np.save(paths[name], array)
    return paths


def score_argv(paths, *, logits=False, features=True, batch_size=None, extra=()):
    argv = ["score", "--labels", paths["labels"], "--num-target-classes", str(Y)]
    argv += ["--predictions", paths["logits" if logits else "predictions"]]
    argv += ["--from-logits"] if logits else []
    argv += ["--features", paths["features"]] if features else []
    argv += [] if batch_size is None else ["--batch-size", str(batch_size)]
    return argv + list(extra)


def run_json(argv, capsys) -> dict:
    assert main([*argv, "--json"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert len(out.strip().splitlines()) == 1
    return json.loads(out)


@pytest.fixture
def task(tmp_path):
    arrays = make_task()
    return arrays, save(tmp_path, arrays)


@pytest.mark.parametrize("logits", [False, True])
def test_json_matches_library(task, capsys, logits):
    arrays, paths = task
    result = run_json(score_argv(paths, logits=logits), capsys)
    assert list(result) == ["leep", "nce", "h_score", "n"]
    assert result["n"] == N
    predictions = arrays["logits" if logits else "predictions"]
    kwargs = dict(from_logits=logits)
    expected = {
        "leep": leep_jax.leep(predictions, arrays["labels"], Y, **kwargs),
        "nce": leep_jax.nce(predictions, arrays["labels"], Y, **kwargs),
        "h_score": leep_jax.h_score(arrays["features"], arrays["labels"], Y),
    }
    for name, value in expected.items():
        np.testing.assert_allclose(result[name], float(value), rtol=1e-6, err_msg=name)


@pytest.mark.parametrize("logits", [False, True])
@pytest.mark.parametrize("batch_size", [1, 7, BATCH, N, 1000])
def test_streaming_equals_in_memory(task, capsys, logits, batch_size):
    arrays, paths = task
    in_memory = run_json(score_argv(paths, logits=logits), capsys)
    streamed = run_json(score_argv(paths, logits=logits, batch_size=batch_size), capsys)
    assert list(streamed) == list(in_memory)
    assert streamed["n"] == in_memory["n"] == N
    np.testing.assert_allclose(streamed["leep"], in_memory["leep"], rtol=1e-6)
    np.testing.assert_allclose(streamed["nce"], in_memory["nce"], rtol=1e-6)
    np.testing.assert_allclose(streamed["h_score"], in_memory["h_score"], rtol=1e-5)
    # And both against the float64 references written from the papers.
    theta = arrays["predictions"].astype(np.float64)
    leep_ref = (
        ref.leep_from_logits(arrays["logits"], arrays["labels"], Y)
        if logits
        else ref.leep(theta, arrays["labels"], Y)
    )
    np.testing.assert_allclose(streamed["leep"], leep_ref, rtol=1e-5)
    np.testing.assert_allclose(streamed["nce"], ref.nce(theta, arrays["labels"], Y), rtol=1e-5)
    h_ref = ref.h_score(arrays["features"], arrays["labels"], Y)
    np.testing.assert_allclose(streamed["h_score"], h_ref, rtol=1e-4)


def test_streaming_equals_in_memory_many_batches(tmp_path, capsys):
    """Hundreds of merged batch sums still agree with the in-memory scores."""
    arrays = make_task(n=20_000, seed=3)
    paths = save(tmp_path, arrays)
    in_memory = run_json(score_argv(paths), capsys)
    streamed = run_json(score_argv(paths, batch_size=47), capsys)
    for name, rtol in [("leep", 1e-6), ("nce", 1e-6), ("h_score", 1e-5)]:
        np.testing.assert_allclose(streamed[name], in_memory[name], rtol=rtol, err_msg=name)


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_other_float_dtypes(tmp_path, capsys, dtype):
    arrays = make_task()
    for name in ("logits", "features"):
        arrays[name] = arrays[name].astype(dtype)
    paths = save(tmp_path, arrays)
    in_memory = run_json(score_argv(paths, logits=True), capsys)
    streamed = run_json(score_argv(paths, logits=True, batch_size=BATCH), capsys)
    expected = leep_jax.leep(arrays["logits"], arrays["labels"], Y, from_logits=True)
    np.testing.assert_allclose(in_memory["leep"], float(expected), rtol=1e-6)
    for name, rtol in [("leep", 1e-6), ("nce", 1e-6), ("h_score", 1e-5)]:
        np.testing.assert_allclose(streamed[name], in_memory[name], rtol=rtol, err_msg=name)


@pytest.mark.parametrize("batch_size", [None, BATCH])
@pytest.mark.parametrize(
    "features, metrics, expected",
    [
        (False, None, ["leep", "nce"]),
        (True, None, ["leep", "nce", "h_score"]),
        (True, "nce", ["nce"]),
        (True, "h_score,leep", ["h_score", "leep"]),
        (False, " leep , leep ", ["leep"]),
    ],
)
def test_metrics_selection(task, capsys, batch_size, features, metrics, expected):
    _, paths = task
    extra = [] if metrics is None else ["--metrics", metrics]
    result = run_json(
        score_argv(paths, features=features, batch_size=batch_size, extra=extra), capsys
    )
    assert list(result) == [*expected, "n"]


def test_h_score_alone_does_not_read_predictions(task, tmp_path, capsys):
    """Values of an input no requested metric uses are not checked (nor read)."""
    arrays, paths = task
    bad = arrays["predictions"].copy()
    bad[BAD_ROW, 0] = np.nan
    np.save(paths["predictions"], bad)
    for batch_size in (None, BATCH):
        result = run_json(
            score_argv(paths, batch_size=batch_size, extra=["--metrics", "h_score"]), capsys
        )
        assert list(result) == ["h_score", "n"]


@pytest.mark.parametrize("batch_size", [None, BATCH])
def test_table_output(task, capsys, batch_size):
    _, paths = task
    assert main(score_argv(paths, batch_size=batch_size)) == 0
    out, err = capsys.readouterr()
    assert err == ""
    lines = out.strip().splitlines()
    assert lines[0] == f"{N} examples, {Z} source classes, {Y} target classes"
    assert lines[1].split() == ["metric", "value"]
    rows = [line.split() for line in lines[2:]]
    assert [row[0] for row in rows] == ["leep", "nce", "h_score"]
    for row in rows:
        assert len(row) == 2 and len(row[1].split(".")[1]) == 6  # six decimals
    result = run_json(score_argv(paths, batch_size=batch_size), capsys)
    for name, value in rows:
        assert float(value) == pytest.approx(result[name], abs=1e-6)


# --- bad input: exit 2, one line on stderr, nothing on stdout, in both paths ---------


def _put(name, row, value, col=0):
    def mutate(arrays):
        arrays[name] = arrays[name].copy()
        arrays[name][row if col is None else (row, col)] = value

    return mutate


def _replace(name, make):
    def mutate(arrays):
        arrays[name] = make(arrays[name])

    return mutate


def _unbalance_row(arrays):  # a row summing to 1.01
    arrays["predictions"] = arrays["predictions"].copy()
    arrays["predictions"][BAD_ROW] *= 1.01


def _negative_probability(arrays):  # still sums to 1
    p = arrays["predictions"] = arrays["predictions"].copy()
    p[BAD_ROW, 1] += p[BAD_ROW, 0] + 0.1
    p[BAD_ROW, 0] = -0.1


def _empty(arrays):
    arrays["predictions"] = arrays["predictions"][:0]
    arrays["labels"] = arrays["labels"][:0]
    arrays["features"] = arrays["features"][:0]


NAN_ROW = f"NaN or Inf (first in row {BAD_ROW})"
# (id, change to the arrays, expected in the message)
BAD_VALUES = [
    ("label_too_big", _put("labels", BAD_ROW, Y, None), f"found {Y} (row {BAD_ROW})"),
    ("label_negative", _put("labels", BAD_ROW, -1, None), f"found -1 (row {BAD_ROW})"),
    ("label_wraps_int32", _put("labels", BAD_ROW, 2**32, None), f"found {2**32} (row {BAD_ROW})"),
    ("nan_prediction", _put("predictions", BAD_ROW, np.nan), "predictions contain " + NAN_ROW),
    ("inf_feature", _put("features", BAD_ROW, np.inf, 2), "features contain " + NAN_ROW),
    ("row_sum", _unbalance_row, f"rows must sum to 1 (tolerance 0.001); row {BAD_ROW}"),
    ("negative_probability", _negative_probability, "negative probabilities (min -0.1)"),
    ("predictions_1d", _replace("predictions", lambda p: p[:, 0]), "predictions must be 2-D"),
    ("predictions_3d", _replace("predictions", lambda p: p[..., None]), "predictions must be 2-D"),
    ("labels_2d", _replace("labels", lambda y: y[:, None]), "labels must be 1-D"),
    (
        "labels_short",
        _replace("labels", lambda y: y[:-1]),
        "length mismatch: predictions has 100 rows but labels has 99",
    ),
    (
        "features_short",
        _replace("features", lambda f: f[:-1]),
        "length mismatch: features has 99 rows",
    ),
    (
        "labels_float",
        _replace("labels", lambda y: y.astype(np.float32)),
        "labels must be integers, got dtype float32",
    ),
    (
        "labels_bool",
        _replace("labels", lambda y: y > 0),
        "labels must be integers, got dtype bool",
    ),
    (
        "predictions_int",
        _replace("predictions", lambda p: (p > 0.5).astype(np.int32)),
        "predictions must be float16, float32 or float64, got dtype int32",
    ),
    (
        "features_complex",
        _replace("features", lambda f: f.astype(np.complex64)),
        "features must be float16, float32 or float64, got dtype complex64",
    ),
    ("empty", _empty, "predictions is empty (n = 0)"),
]
# Logits may be any finite number, so only NaN/Inf is bad.
BAD_LOGITS = [
    ("nan_logit", _put("logits", BAD_ROW, np.nan), "predictions contain " + NAN_ROW),
    ("inf_logit", _put("logits", BAD_ROW, -np.inf, 3), "predictions contain " + NAN_ROW),
]


def assert_usage_error(rc, capsys, expected):
    out, err = capsys.readouterr()
    assert rc == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("leep-jax: error: "), err
    assert expected in err, err


@pytest.mark.parametrize("batch_size", [None, BATCH], ids=["in_memory", "streaming"])
@pytest.mark.parametrize("case", BAD_VALUES + BAD_LOGITS, ids=lambda case: case[0])
def test_bad_values(tmp_path, capsys, batch_size, case):
    name, mutate, expected = case
    arrays = make_task()
    mutate(arrays)
    paths = save(tmp_path, arrays)
    argv = score_argv(paths, logits=name.endswith("_logit"), batch_size=batch_size)
    assert_usage_error(main(argv), capsys, expected)


def _write_text(path: Path) -> str:
    path.write_text("0.1,0.9\n0.5,0.5\n")
    return str(path)


def _write_npz(path: Path) -> str:
    np.savez(path, x=np.ones((N, Z), np.float32))
    return str(path) + ".npz"


def _write_truncated(path: Path) -> str:
    np.save(path, np.full((N, Z), 1 / Z, np.float32))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return str(path)


def _write_pickled(path: Path) -> str:
    np.save(path, np.array([{"a": 1}] * N, dtype=object), allow_pickle=True)
    return str(path)


BAD_FILES = [
    ("missing", lambda d: str(d / "nope.npy"), "predictions file not found"),
    ("directory", lambda d: str(d), "cannot read predictions file"),
    ("text", lambda d: _write_text(d / "p.csv"), "cannot read predictions file"),
    ("npz", lambda d: _write_npz(d / "p"), "is not a .npy file"),
    ("truncated", lambda d: _write_truncated(d / "p.npy"), "cannot read predictions file"),
    ("pickled", lambda d: _write_pickled(d / "p.npy"), "cannot read predictions file"),
]


@pytest.mark.parametrize("batch_size", [None, BATCH], ids=["in_memory", "streaming"])
@pytest.mark.parametrize("case", BAD_FILES, ids=lambda case: case[0])
def test_bad_files(task, tmp_path, capsys, batch_size, case):
    _, paths = task
    name, write, expected = case
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    paths = {**paths, "predictions": write(bad_dir)}
    assert_usage_error(main(score_argv(paths, batch_size=batch_size)), capsys, expected)


@pytest.mark.parametrize("batch_size", [None, BATCH], ids=["in_memory", "streaming"])
@pytest.mark.parametrize(
    "change, expected",
    [
        (["--num-target-classes", "0"], "--num-target-classes must be >= 1, got 0"),
        (["--num-target-classes", "two"], "invalid int value: 'two'"),
        (["--metrics", "leep,foo"], "unknown metric 'foo'"),
        (["--metrics", ","], "--metrics is empty"),
        (["--metrics", "h_score", "--no-features"], "h_score needs --features"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_arguments(task, capsys, batch_size, change, expected):
    _, paths = task
    features = "--no-features" not in change
    argv = score_argv(paths, features=features, batch_size=batch_size)
    argv += [arg for arg in change if arg != "--no-features"]
    assert_usage_error(main(argv), capsys, expected)


@pytest.mark.parametrize("batch_size", ["0", "-3"])
def test_bad_batch_size(task, capsys, batch_size):
    _, paths = task
    argv = score_argv(paths, extra=["--batch-size", batch_size])
    assert_usage_error(main(argv), capsys, f"--batch-size must be >= 1, got {batch_size}")


def test_missing_required_argument(capsys):
    assert_usage_error(main(["score", "--labels", "l.npy"]), capsys, "required")


# --- streaming mechanics -------------------------------------------------------------


def test_streaming_compiles_once_per_shape(tmp_path, capsys):
    """Ragged last batches are padded: more batches or another n add no compilation."""
    batch_size = 24  # used by no other test, so the jit caches start without it
    before = (engine.pass1_step._cache_size(), engine.pass2_step._cache_size())
    sizes = []
    for n, seed in [(100, 0), (96, 1), (250, 2)]:  # 5 ragged, 4 full, 11 ragged batches
        paths = save(tmp_path, make_task(n=n, seed=seed))
        run_json(score_argv(paths, batch_size=batch_size), capsys)
        sizes.append((engine.pass1_step._cache_size(), engine.pass2_step._cache_size()))
    assert sizes[0] == (before[0] + 1, before[1] + 1)
    assert sizes[1] == sizes[2] == sizes[0]


def test_streaming_reads_one_memory_mapped_batch_at_a_time(task, capsys, monkeypatch):
    _, paths = task
    loads, reads = [], []
    real_load, real_read = np.load, sources.NpyRows.read

    def load(*args, **kwargs):
        loads.append(kwargs.get("mmap_mode"))
        return real_load(*args, **kwargs)

    def read(self, start, stop):
        rows = real_read(self, start, stop)
        assert rows.shape[0] == stop - start and not isinstance(rows, np.memmap)
        reads.append(stop - start)
        return rows

    monkeypatch.setattr(np, "load", load)
    monkeypatch.setattr(sources.NpyRows, "read", read)
    run_json(score_argv(paths, batch_size=BATCH), capsys)
    assert loads and set(loads) == {"r"}  # headers only: never a full, non-mapped load
    assert max(reads) == BATCH
    # pass 1 reads three files, pass 2 two, in ceil(N / BATCH) = 4 batches each
    assert len(reads) == 4 * (3 + 2)
    assert sum(reads) == N * (3 + 2)


def test_npy_rows_maps_only_the_rows_of_c_order_files_and_reads_fortran_order_ones(
    tmp_path, monkeypatch
):
    # C order: each read maps just its rows (np.memmap at the rows' offset). Fortran order
    # (rows strided): a map of the file, sliced and copied. Never a full, non-mapped load.
    values = np.arange(60, dtype=np.float32).reshape(12, 5)
    loads, maps = [], []
    real_load, real_memmap = np.load, np.memmap

    def load(*args, **kwargs):
        loads.append(kwargs.get("mmap_mode"))
        return real_load(*args, **kwargs)

    def memmap(*args, **kwargs):
        maps.append(kwargs["shape"])
        assert kwargs["mode"] == "r"
        return real_memmap(*args, **kwargs)

    for order in ("C", "F"):
        path = tmp_path / f"{order}.npy"
        np.save(path, np.asarray(values, order=order))
        monkeypatch.setattr(np, "load", load)
        monkeypatch.setattr(np, "memmap", memmap)
        rows = sources.NpyRows(str(path))[3:8]
        monkeypatch.undo()
        assert type(rows) is np.ndarray
        np.testing.assert_array_equal(rows, values[3:8])
        assert set(loads) == {"r"}
        # The header's np.load maps the whole file (reading nothing); then the read's map.
        assert maps == [(12, 5), (5, 5) if order == "C" else (12, 5)]
        loads.clear()
        maps.clear()
        # A file changed under us (rows missing) is a ValueError naming it, not short rows.
        rows = sources.NpyRows(str(path))
        np.save(path, np.asarray(values[:4], order=order))
        reason = re.escape("its shape is now (4, 5), not (12, 5)") + "$" if order == "F" else ""
        message = f"^cannot read rows 3:8 of {re.escape(str(path))}: {reason}"
        with pytest.raises(ValueError, match=message):
            rows[3:8]


def _subprocess(args, **kwargs):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, cwd=REPO, env=env,
        timeout=300, **kwargs,
    )  # fmt: skip


def test_subprocess_json(task):
    _, paths = task
    result = _subprocess(["-m", "leep_jax.cli", *score_argv(paths, batch_size=BATCH), "--json"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") == 1
    parsed = json.loads(result.stdout)
    assert set(parsed) == {"leep", "nce", "h_score", "n"}
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("batch_size", [None, BATCH], ids=["in_memory", "streaming"])
def test_subprocess_error_mid_stream(tmp_path, batch_size):
    arrays = make_task()
    arrays["predictions"][BAD_ROW, 2] = np.nan
    paths = save(tmp_path, arrays)
    result = _subprocess(["-m", "leep_jax.cli", *score_argv(paths, batch_size=batch_size)])
    assert result.returncode == 2
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        f"leep-jax: error: predictions contain NaN or Inf (first in row {BAD_ROW})"
    ]


@pytest.mark.slow
def test_streaming_memory_stays_bounded_by_the_batch(tmp_path):
    """A 200 MB predictions file streams with peak RSS growth far below its size."""
    n, num_source = 50_000, 1_000
    big = np.lib.format.open_memmap(
        tmp_path / "logits.npy", mode="w+", dtype=np.float32, shape=(n, num_source)
    )
    rng = np.random.default_rng(0)
    for start in range(0, n, 5_000):
        big[start : start + 5_000] = rng.standard_normal((5_000, num_source), np.float32)
    big.flush()
    file_mb = big.nbytes / 2**20
    del big
    np.save(tmp_path / "labels.npy", rng.integers(0, 10, size=n))
    batch = 512  # 2 MB of logits
    # Warm-up file of a few batches, so compilation and the allocator's arenas for
    # batch-sized temporaries are in place before the measurement.
    small = save(
        tmp_path,
        {
            "small_logits": rng.standard_normal((4 * batch, num_source), np.float32),
            "small_labels": np.arange(4 * batch) % 10,
        },
    )
    script = textwrap.dedent(
        f"""
        import contextlib, io, json, resource
        from leep_jax.cli.main import main

        def argv(predictions, labels, *extra):
            return ["score", "--predictions", predictions, "--labels", labels,
                    "--num-target-classes", "10", "--from-logits", "--json", *extra]

        def peak_mb():
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

        with contextlib.redirect_stdout(io.StringIO()):
            assert main(argv({small["small_logits"]!r}, {small["small_labels"]!r},
                             "--batch-size", "{batch}")) == 0
        base = peak_mb()
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert main(argv({str(tmp_path / "logits.npy")!r},
                             {str(tmp_path / "labels.npy")!r}, "--batch-size", "{batch}")) == 0
        print(json.dumps({{"growth_mb": peak_mb() - base, "result": json.loads(out.getvalue())}}))
        """
    )
    result = _subprocess(["-c", script])
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["result"]["n"] == n
    # Measured here: 8-12 MB for streaming; the in-memory path grows by ~750 MB.
    assert report["growth_mb"] < file_mb / 5, report


def test_example_script_outputs_score(tmp_path, capsys):
    out_dir = tmp_path / "example"
    result = _subprocess(
        [str(REPO / "examples" / "make_example_outputs.py"), str(out_dir), "--n", "2000"]
    )
    assert result.returncode == 0, result.stderr
    paths = {name: str(out_dir / f"{name}.npy") for name in ("predictions", "labels", "features")}
    argv = ["score", "--predictions", paths["predictions"], "--labels", paths["labels"],
            "--num-target-classes", "10", "--features", paths["features"]]  # fmt: skip
    result = run_json(argv, capsys)
    labels = np.load(paths["labels"])
    assert result["n"] == 2000
    # Informative but imperfect predictions: between a constant predictor and a perfect one.
    assert -ref.label_entropy(labels) + 0.1 < result["leep"] < -0.1
    assert result["leep"] >= result["nce"]  # the paper's usual ordering
    assert result["h_score"] > 0


@pytest.mark.parametrize("batch_size", [None, BATCH], ids=["in_memory", "streaming"])
def test_every_score_matches_the_library(task, capsys, batch_size):
    """--metrics takes every score; both paths give the library's in-memory values."""
    import jax

    from leep_jax.scores.names import SCORE_NAMES

    arrays, paths = task
    argv = score_argv(paths, logits=True, batch_size=batch_size)
    result = run_json([*argv, "--metrics", ",".join(SCORE_NAMES)], capsys)
    assert list(result) == [*SCORE_NAMES, "n"]
    logits, labels, features = arrays["logits"], arrays["labels"], arrays["features"]
    for name in SCORE_NAMES:
        score = getattr(leep_jax, name)
        if name in ("leep", "nce"):
            want = score(logits, labels, Y, from_logits=True)
        elif name == "nleep":
            want = score(features, labels, Y, key=jax.random.key(0))
        else:
            want = score(features, labels, Y)
        np.testing.assert_allclose(result[name], float(want), rtol=1e-4, atol=1e-5, err_msg=name)
