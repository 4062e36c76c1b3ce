"""recsys as a library: `Recommender` answers what the CLI prints and the service returns, `train.run` trains
with the CLI's checks, and the package's layout keeps its layers (no cycles, nothing imports a CLI)."""

from __future__ import annotations

import ast
import inspect
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, infer_json, run_cli
from fastapi.testclient import TestClient

from recsys import Recommender, RecsysError, UnknownId, movielens, train
from recsys.modeldir import ModelDir
from recsys.service.api import create_app
from recsys.training.splits import holdout_mask

QUIET = {"log": lambda _msg: None}


@pytest.fixture(scope="module")
def two_stage(small_dir, tmp_path_factory) -> tuple[Path, Path]:
    """A retrieval model and a ranking network on its candidates, trained from Python."""
    out = tmp_path_factory.mktemp("library")
    train.run(data_dir=small_dir, objective="retrieval", model_dir=out / "retrieval", epochs=2, **QUIET)
    lines: list[str] = []
    train.run(data_dir=small_dir, objective="ranking", model_dir=out / "ranking", epochs=1,
              candidates_from=out / "retrieval", log=lines.append)  # fmt: skip
    (out / "ranking.log").write_text("\n".join(lines))
    return out / "retrieval", out / "ranking"


def test_training_says_what_its_test_loss_is(two_stage):
    """The ranking network's Test Loss can rise while its lists improve: its log says so before the first line."""
    lines = (two_stage[1].parent / "ranking.log").read_text().splitlines()
    assert lines[0].startswith("Test Loss: the weighted logistic loss") and "the loss can rise" in lines[0]
    assert lines[1].startswith("EpochID 1, BatchID ") and "NDCG@10" in lines[1]


def _pairs(trained, two_stage):
    retrieval, ranking = two_stage
    return {
        "rating": (trained, None),
        "retrieval": (retrieval, None),
        "two stages": (retrieval, ranking),
        "retrieval + rating": (retrieval, trained),
    }


@pytest.mark.parametrize("kind", ["rating", "retrieval", "two stages", "retrieval + rating"])
def test_recommender_lists_are_the_cli_and_the_service_lists(trained, two_stage, kind):
    model, rerank = _pairs(trained, two_stage)[kind]
    rec = Recommender.load(model, rerank)
    flags = ["--model-dir", str(model)] + ([] if rerank is None else ["--rerank", str(rerank)])
    reads_history = rec.model.history
    rated = [(5, 5.0), (17, 3.0)] if reads_history and (rerank is None or rec.rerank.history) else []
    with TestClient(create_app(model, rerank, reload_interval=0)) as c:
        doc = rec.recommend(1, k=10)
        assert doc["stages"] == [s for s in kind.replace("two stages", "retrieval ranking").replace("+", "").split()]
        assert doc == infer_json(*flags, "--user", "1", "--top-k", "10")
        assert doc == c.get("/api/users/1/recommendations?k=10").json()
        assert rec.recommend_many([1, 2, 1], k=10)[0] == [r["movie_id"] for r in doc["recommendations"]]
        assert rec.recommend_many([2], k=10)[0] == [r["movie_id"] for r in rec.recommend(2, 10)["recommendations"]]

        new = rec.recommend_new(k=7, gender="F", age=30, job=4, rated=rated)
        text = ",".join(f"{m}:{s:g}" for m, s in rated)
        assert new == infer_json(*flags, "--gender", "F", "--age", "30", "--job", "4", "--top-k", "7",
                           *(["--rated", text] if rated else []))  # fmt: skip
        body = {"gender": "F", "age": 30, "job": 4, "k": 7} | ({"rated": [list(p) for p in rated]} if rated else {})
        assert new == c.post("/api/recommend", json=body).json()
        assert not {m for m, _ in rated} & {r["movie_id"] for r in new["recommendations"]}

        if rerank is None:
            similar = rec.similar(17, k=5)
            assert similar == infer_json(*flags, "--similar-to", "17", "--top-k", "5")
            assert similar == c.get("/api/movies/17/similar?k=5").json()
        if rec.rating_model is not None:
            one = rec.predict(1, 17)
            assert one == c.get("/api/predict?user=1&movie=17").json()
            if rerank is None:
                assert one == infer_json(*flags, "--user", "1", "--movie", "17")


def _history(md, rows) -> np.ndarray:
    """[len(rows), M] 0/1: the catalogue columns each user row rated in training, from the saved ratings."""
    h = np.zeros((len(rows), len(md.movie_ids)))
    for i, row in enumerate(rows):
        movies, _, is_test = md.ratings_of(int(row))
        h[i, np.isin(md.movie_ids, movies[~is_test])] = 1
    return h


def _ease_by_hand(x: np.ndarray, lam: float, k: int) -> np.ndarray:
    """EASE's weights of the 0/1 rows x, movies nobody rated left out, each column cut to its k largest |w|."""
    rated = x.sum(0) > 0
    p = np.linalg.inv(x[:, rated].T @ x[:, rated] + lam * np.eye(rated.sum()))
    b = -p / np.diag(p)
    np.fill_diagonal(b, 0)
    keep = np.argsort(-np.abs(b), axis=0, kind="stable")[:k]
    cut = np.zeros_like(b)
    np.put_along_axis(cut, keep, np.take_along_axis(b, keep, 0), 0)
    w = np.zeros((x.shape[1], x.shape[1]))
    w[np.ix_(rated, rated)] = cut
    return w


def test_one_stage_lists_are_the_best_first_stage_scores_outside_the_training_ratings(two_stage):
    """By hand: the retrieval model's list is its unit vectors' products plus beta times the user's history
    dotted with the saved item-item weights, best first, rated movies left out; beta is the documented spread
    ratio, measured on the seeded sample of users."""
    rec = Recommender.load(two_stage[0])
    md, row = rec.model, rec.user_row(3)
    w, beta = md.item_item.toarray(), md.first_stage_beta
    users, movies = md.arrays["user_vectors"], md.catalogue_vectors
    sample = np.sort(np.random.RandomState(0).choice(len(users), 256, replace=False))
    spread = np.std(users[sample] @ movies.T) / np.std(_history(md, sample) @ w)
    assert beta == pytest.approx(0.3 / 0.7 * spread, rel=1e-3)
    cosine = movies @ users[row]
    values = cosine + beta * (_history(md, [row])[0] @ w)
    values[_history(md, [row])[0] > 0] = -np.inf
    best = np.lexsort((md.movie_ids, -values))[:10]  # ties: the smaller movie id
    doc = rec.recommend(3, k=10, exclude_rated="train")  # the protocol's lists: training ratings left out
    assert [r["movie_id"] for r in doc["recommendations"]] == [md.own_movie(int(md.movie_ids[c])) for c in best]
    assert [r["score"] for r in doc["recommendations"]] == pytest.approx(values[best].tolist(), abs=1e-5)
    assert [r["cosine"] for r in doc["recommendations"]] == pytest.approx(cosine[best].tolist(), abs=1e-6)


def test_the_first_stage_weights_are_ease_of_the_ratings_the_network_trained_on(two_stage, small_dir):
    """The retrieval model's item-item weights are EASE (lambda 500, 300 per movie) of its training ratings
    without the held-out tenth, the ranker's labels: fitted apart here in numpy, they agree."""
    md = ModelDir.load(two_stage[0])
    data = movielens.load("ml-1m", small_dir)
    train_idx = np.flatnonzero(~data.is_test)
    held = holdout_mask(data, train_idx, 0.1, md.meta["settings"]["seed"])
    fit = train_idx[~held[train_idx]]
    x = np.zeros((data.sizes()["n_users"], len(md.movie_ids)))
    x[data.user[fit], np.searchsorted(md.movie_ids, data.movie[fit])] = 1
    np.testing.assert_allclose(md.item_item.toarray(), _ease_by_hand(x, 500.0, 300), atol=2e-5)
    assert 0 < held.sum() < len(train_idx) * 0.15


def test_an_item_share_of_0_is_the_cosine_alone(small_dir, tmp_path):
    """--item-share 0: no item-item weights are saved and the list is the best cosines."""
    train.run(data_dir=small_dir, objective="retrieval", model_dir=tmp_path / "r", epochs=1, item_share=0.0, **QUIET)
    rec = Recommender.load(tmp_path / "r")
    md, row = rec.model, rec.user_row(3)
    assert md.first_stage_beta == 0 and "item_item_data" not in md.arrays
    values = md.catalogue_vectors @ md.arrays["user_vectors"][row]
    values[_history(md, [row])[0] > 0] = -np.inf
    best = np.lexsort((md.movie_ids, -values))[:10]
    doc = rec.recommend(3, k=10, exclude_rated="train")  # the protocol's lists: training ratings left out
    assert [r["movie_id"] for r in doc["recommendations"]] == [md.own_movie(int(md.movie_ids[c])) for c in best]
    assert set(doc["recommendations"][0]) == {"movie_id", "title", "genres", "cosine"}


def test_evaluate_from_python_is_the_cli_table(two_stage, small_dir):
    rec = Recommender.load(*two_stage)
    got = rec.evaluate(movielens.load(data_dir=small_dir), k=10)
    proc = run_cli("recsys.evaluate", "--model-dir", str(two_stage[0]), "--rerank", str(two_stage[1]),
                   "--no-baselines", "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    row = json.loads(proc.stdout)["top_n"]["rows"][-1]
    assert row["model"].startswith("two-stage") and got["ndcg"] == pytest.approx(row["ndcg"], abs=1e-12)
    assert got["recall"] == pytest.approx(row["recall"], abs=1e-12) and 0 < got["users"] <= 600


def _error_line(*args: str) -> str:
    proc = run_cli("recsys.infer", *args)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    return proc.stderr.strip().splitlines()[-1]


def test_bad_input_raises_one_error_with_the_text_the_cli_prints(trained, two_stage):
    retrieval, ranking = (str(p) for p in two_stage)
    rating = Recommender.load(trained)
    stages = Recommender.load(retrieval, ranking)
    cases = [
        (lambda: rating.recommend(99999, 3), UnknownId, [str(trained), "--user", "99999", "--top-k", "3"]),
        (lambda: rating.similar(99999, 3), UnknownId, [str(trained), "--similar-to", "99999"]),
        (lambda: rating.predict(1, 99999), UnknownId, [str(trained), "--user", "1", "--movie", "99999"]),
        (lambda: rating.recommend_new(3, gender="F", age=25, job=99), RecsysError,
         [str(trained), "--gender", "F", "--age", "25", "--job", "99", "--top-k", "3"]),
        (lambda: rating.recommend_new(3, gender="F", age=25, job=4, rated=[(5, 4)]), RecsysError,
         [str(trained), "--gender", "F", "--age", "25", "--job", "4", "--rated", "5:4", "--top-k", "3"]),
        (lambda: stages.recommend_new(3, gender="F", age=25, job=4, rated=[(5, 4.5)]), RecsysError,
         [retrieval, "--rerank", ranking, "--gender", "F", "--age", "25", "--job", "4", "--rated", "5:4.5",
          "--top-k", "3"]),
        (lambda: Recommender.load(retrieval).predict(1, 5), RecsysError, [retrieval, "--user", "1", "--movie", "5"]),
        (lambda: Recommender.load(retrieval, rerank=retrieval), RecsysError,
         [retrieval, "--rerank", retrieval, "--user", "1", "--top-k", "3"]),
        (lambda: Recommender.load(trained, rerank=ranking), RecsysError,
         [str(trained), "--rerank", ranking, "--user", "1", "--top-k", "3"]),
    ]  # fmt: skip
    for call, kind, args in cases:
        with pytest.raises(kind) as e:
            call()
        assert _error_line("--model-dir", *args) == f"error: {e.value}"
    for bad in (0, -1, 2.5, True, "3"):
        with pytest.raises(RecsysError, match="k must be a whole number"):
            stages.recommend(1, k=bad)
    with pytest.raises(RecsysError, match="candidates must be at least 1"):
        Recommender.load(retrieval, ranking, candidates=0)


def test_training_from_python_checks_what_the_cli_checks(small_dir, tmp_path):
    for flags, argv in (
        ({"lr": -1}, ["--lr", "-1"]),
        ({"objective": "ranking"}, ["--objective", "ranking"]),
        ({"val_ratio": 1.5}, ["--val-ratio", "1.5"]),
        ({"epochs": "x"}, ["--epochs", "x"]),
        ({"epochs": 2.5}, ["--epochs", "2.5"]),
        ({"objective": "popular"}, ["--objective", "popular"]),
        ({"objective": "retrieval", "history_cap": -1}, ["--objective", "retrieval", "--history-cap", "-1"]),
        ({"objective": "retrieval", "item_share": 1}, ["--objective", "retrieval", "--item-share", "1"]),
        ({"patience": 2}, ["--patience", "2"]),
    ):
        with pytest.raises(RecsysError) as e:
            train.run(data_dir=small_dir, model_dir=tmp_path / "m", **flags, **QUIET)
        proc = run_cli("recsys.train", "--data-dir", str(small_dir), "--model-dir", str(tmp_path / "m"), *argv)
        assert proc.returncode == 2
        assert proc.stderr.strip() == f"error: {e.value} (see python -m recsys.train --help)"
    assert not (tmp_path / "m").exists()


# the package's layers, lowest first: a module imports only its own layer's modules or lower ones
LAYERS = [
    ["recsys", "recsys.errors"],
    ["recsys.data"],
    ["recsys.movielens"],
    ["recsys.model", "recsys.synthetic"],
    ["recsys.fused"],
    ["recsys.modeldir"],
    ["recsys.rating", "recsys.topn"],
    ["recsys.training"],
    ["recsys.recommender", "recsys.modelflags"],
    ["recsys.service"],
    ["recsys.train", "recsys.infer", "recsys.evaluate", "recsys.serve"],
]
CLIS = set(LAYERS[-1])


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted((ROOT / "recsys").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(name: str, path: Path, modules) -> set[str]:
    """Every recsys module that `name` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names}
    return {m for m in found if m in modules and m != name}


def _layer(module: str) -> int:
    return max(i for i, group in enumerate(LAYERS) for g in group if module == g or module.startswith(g + "."))


def test_layers_no_cycles_and_no_module_imports_a_cli():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    for name, deps in graph.items():
        if name == "recsys":  # the package's lazy exports
            assert deps <= {"recsys.recommender", "recsys.errors"}, deps
            continue
        assert name in CLIS or not deps & CLIS, (name, deps & CLIS)
        upward = {d for d in deps if _layer(d) > _layer(name)}
        assert not upward, (name, upward)
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in graph[node]:
            assert state.get(dep) != 1, f"import cycle: {' -> '.join(path + [dep])}"
            if dep not in state:
                visit(dep, path + [dep])
        state[node] = 2

    for name in graph:
        if name not in state and name != "recsys":
            visit(name, [name])


def test_no_long_files_and_no_long_functions():
    """At most ~450 lines a module and ~80 a function, except a parser's flat list of arguments."""
    for path in _modules().values():
        text = path.read_text()
        assert len(text.splitlines()) <= 460, path
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                calls = [s for s in node.body if isinstance(s, ast.Expr) and "add_argument" in ast.unparse(s)]
                length = node.end_lineno - node.lineno + 1
                assert length <= 85 or len(calls) >= 10, (path, node.name, length)


OBJECTIVES = ("rating", "retrieval", "ranking", "ease", "popularity", "item-knn")
# what one training loop with one task per objective is held to (the rest of the package: the line limits above)
TRAINING = [path for name, path in _modules().items() if name.startswith("recsys.training") or name == "recsys.train"]


def _names_an_objective(node: ast.expr) -> bool:
    """An objective's name written out, a collection of them, or an `objective` variable or attribute."""
    if isinstance(node, ast.Constant):
        return node.value in OBJECTIVES
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return any(_names_an_objective(e) for e in node.elts)
    return (isinstance(node, ast.Name) and node.id == "objective") or (
        isinstance(node, ast.Attribute) and node.attr == "objective"
    )


def _objective_comparisons(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Compare) and any(map(_names_an_objective, [node.left, *node.comparators])):
            found.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_training_compares_no_objective_names_outside_the_registry():
    registry = ROOT / "recsys" / "training" / "registry.py"
    assert [c for path in TRAINING if path != registry for c in _objective_comparisons(path)] == []
    # the check sees what it looks for
    probe = ROOT / "recsys" / "training" / "loop.py"
    planted = ast.parse('if args.objective == "rating" or "ranking" in (kind,) or name != objective: pass')
    assert len([n for n in ast.walk(planted) if isinstance(n, ast.Compare)]) == 3
    assert all(
        any(map(_names_an_objective, [n.left, *n.comparators])) for n in ast.walk(planted) if isinstance(n, ast.Compare)
    )
    assert probe in TRAINING and registry in TRAINING


# past training, what a model dir is and does is looked up in one place
REGISTRIES = [ROOT / "recsys" / "training" / "registry.py", ROOT / "recsys" / "training" / "config.py",
              ROOT / "recsys" / "topn" / "registry.py"]  # fmt: skip


def test_no_objective_is_compared_outside_the_registries():
    """The package past training composes stages (`recsys.topn.stage`) and never asks which objective a model
    dir records, but in `recsys.topn.registry`."""
    assert all(path.is_file() for path in REGISTRIES)
    found = [c for path in _modules().values() if path not in REGISTRIES for c in _objective_comparisons(path)]
    assert found == []
    assert _objective_comparisons(REGISTRIES[2])  # the check sees the registry's own lookups


# what the training loop, the stages and the recommender are held to
HELD = ("recsys.topn", "recsys.modeldir", "recsys.service", "recsys.recommender", "recsys.evaluate", "recsys.infer")
SHORT = TRAINING + [path for name, path in _modules().items() if name.startswith(HELD)]


def test_classes_and_functions_are_short():
    """No class over 300 lines and no function over 80 (a parser's flat list of arguments aside)."""
    assert ROOT / "recsys" / "recommender.py" in SHORT and ROOT / "recsys" / "topn" / "stage.py" in SHORT
    for path in SHORT:
        for node in ast.walk(ast.parse(path.read_text())):
            length = node.end_lineno - node.lineno + 1 if hasattr(node, "end_lineno") else 0
            if isinstance(node, ast.ClassDef):
                assert length <= 300, (path, node.name, length)
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                calls = [s for s in node.body if isinstance(s, ast.Expr) and "add_argument" in ast.unparse(s)]
                assert length <= 80 or len(calls) >= 10, (path, node.name, length)


def test_every_objective_is_one_task_with_its_defaults_and_the_clis_choice():
    from recsys.training.closed_form import ClosedForm
    from recsys.training.config import DEFAULTS, TrainConfig
    from recsys.training.retrieval import RetrievalTask
    from recsys.training.tasks import TASKS, Task

    assert sorted(TASKS) == sorted(OBJECTIVES) and tuple(DEFAULTS) == OBJECTIVES
    assert all(issubclass(cls, Task | ClosedForm) and cls.name == name for name, cls in TASKS.items())
    objective = next(a for a in train.parser()._actions if a.dest == "objective")
    assert tuple(objective.choices) == OBJECTIVES
    # a task's constructor defaults are the flags' (an objective's own: its row of DEFAULTS, given as None)
    defaults, rows = TrainConfig(), {"optimizer", "lr", "with_history"}
    for cls in TASKS.values():
        params = {k: p.default for c in cls.__mro__[:-1] for k, p in inspect.signature(c).parameters.items()}
        for name, default in params.items():
            if name in rows:
                assert default is None, (cls, name)
            elif getattr(defaults, name, None) is not None:  # (None: decided when the run starts, as --sparse)
                assert default == getattr(defaults, name), (cls, name, default)
    assert inspect.signature(RetrievalTask).parameters["temperature"].default == 0.25


@pytest.mark.parametrize(
    "argv, kwargs",
    [
        ([], {}),
        (["--objective", "retrieval", "--temperature", "0.1", "--no-history"],
         {"objective": "retrieval", "temperature": 0.1, "history": False}),
        (["--objective", "ranking", "--candidates-from", "r", "--optimizer", "sgd", "--epochs", "2"],
         {"objective": "ranking", "candidates_from": Path("r"), "optimizer": "sgd", "epochs": 2}),
    ],
)  # fmt: skip
def test_keywords_give_the_settings_the_flags_give(argv, kwargs):
    """`TrainConfig.of(**keywords)` (what `train.run` builds) equals the parsed flags, defaults filled alike."""
    from recsys.training.config import TrainConfig

    parsed = train.parse_args(argv)
    built = TrainConfig.of(**kwargs).resolve(set(kwargs))
    assert built == parsed
    want = {"rating": (0.2, "constant"), "retrieval": (0.001, "cosine"), "ranking": (0.2, "cosine")}  # sgd: 0.2
    assert (built.lr, built.lr_schedule) == want[built.objective]


def test_training_from_python_builds_no_command_line(small_dir, tmp_path, monkeypatch):
    """`train.run` fills and checks its settings without parsing flags: it trains, and a bad value is refused
    with the CLI's text, with every parser disabled."""
    import argparse

    def refuse(*_args, **_kwargs):
        raise AssertionError("a command line was parsed")

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", refuse)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", refuse)
    with pytest.raises(RecsysError) as e:
        train.run(data_dir=small_dir, model_dir=tmp_path / "m", objective="retrieval", temperature=0, **QUIET)
    assert str(e.value) == "--temperature must be positive, got 0.0"  # as `--temperature 0` says
    metrics = train.run(data_dir=small_dir, model_dir=tmp_path / "m", epochs=1, max_batches=3, **QUIET)
    assert [(m["epoch"], m["batch"]) for m in metrics] == [(1, 3)]
    settings = json.loads((tmp_path / "m" / "meta.json").read_text())["settings"]
    assert (settings["epochs"], settings["lr"], settings["temperature"]) == (1, 0.2, None)


def test_the_python_block_as_written(tmp_path):
    """The block marked `runnable: python` (docs/usage.md), run as written in an empty folder."""
    from docblocks import block

    proc = subprocess.run(
        [sys.executable, "-c", block("python").text], cwd=tmp_path, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "'stages': ['retrieval', 'ranking']" in proc.stdout and "'ndcg': " in proc.stdout
    assert "'actual_rating'" in proc.stdout and (tmp_path / "ranking.model" / "manifest.json").exists()


def test_the_readme_says_what_the_suite_needs():
    readme, conftest = (ROOT / "README.md").read_text(), (ROOT / "tests" / "conftest.py").read_text()
    assert "RECSYS_SHARED_DATA" in readme and "(set RECSYS_SHARED_DATA)" in conftest
    assert "`make demo DATASET=ml-100k DATA_DIR=DIR`" in readme and "minutes on a 2-core box" in readme
