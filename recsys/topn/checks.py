"""What model dirs and data must agree on before a list is made: a first stage and its second stage, a
model and the data it is scored on, and a model that has a test split to measure."""

from __future__ import annotations

from recsys.data.loader import ALL
from recsys.errors import RecsysError
from recsys.modeldir import ModelDir
from recsys.topn.stage import FirstStage, SecondStage

__all__ = ["check_data", "check_pair", "check_tested", "is_refit"]


def check_pair(first: FirstStage, second: SecondStage) -> None:
    """One-line error unless `second` (a model dir as a second stage) may reorder the candidates of `first` (a
    first stage that leads two, `recsys.topn.registry.check_leads`): the same data, and the candidates it
    learnt from (`SecondStage.check_first`)."""
    retrieval, rerank = first.md, second.md
    a, b = retrieval.meta, rerank.meta
    for key, what in (
        ("dataset", "dataset"), ("split", "split"), ("sizes", "id ranges"), ("users", "users"), ("movies", "movies"),
        ("title_words", "title vocabulary"), ("categories", "genres"), ("jobs", "jobs"),
    ):  # fmt: skip
        if a.get(key) != b.get(key):
            raise RecsysError(
                f"{retrieval.path} and {rerank.path} disagree on their {what} "
                f"({a['dataset']} {a['split']} vs {b['dataset']} {b['split']}); train both on the same data"
            )
    second.check_first(first)


def is_refit(retrieval: ModelDir, rerank: ModelDir) -> bool:
    """`retrieval` is the refit of the first stage whose candidates the ranking network `rerank` learnt
    from: trained with the same settings on the same data, but with `--holdout 0` (every training rating,
    the held-out tenth the ranker's labels came from included)."""
    given = rerank.meta["settings"].get("candidates_settings")
    mine = retrieval.meta["settings"]
    if given is None or mine.get("holdout") or not given.get("holdout"):
        return False

    def rest(settings: dict) -> dict:
        return {k: v for k, v in settings.items() if k not in ("holdout", "holdout_by")}

    return rest(given) == rest(mine)


def check_data(md: ModelDir, data) -> None:
    """One-line error unless `data` (a `recsys.movielens.load` result) is the data `md` was trained on."""
    if md.meta["sizes"] != data.sizes() or md.meta["title_words"] != data.meta.title_words:
        raise RecsysError(f"{md.path} was trained on other data ({md.meta['dataset']} from {md.meta['source']})")


def check_tested(md: ModelDir, data=None) -> None:
    """One-line error when `md` was trained on every rating (`--split all`): it has no test split to measure;
    or when `data` (a `recsys.movielens.load` result) holds no test rating to measure it on."""
    if md.meta["split"] == ALL:
        raise RecsysError(
            f"{md.path} was trained with --split {ALL}, on every rating: there is no test split to evaluate it on "
            "(train on an evaluation split, e.g. --split random, to measure a model)"
        )
    if data is not None and not data.is_test.any():
        raise RecsysError(f"the {data.split} split has no test ratings to evaluate on; give an evaluation split")
