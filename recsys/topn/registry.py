"""Which stage (`recsys.topn.stage`) a model dir is, by the objective it records: the one place past training
where a model dir's kind is looked up. A new algorithm adds its class here."""

from __future__ import annotations

from recsys.errors import RecsysError
from recsys.modeldir import ModelDir
from recsys.topn import closed_form, item_knn, towers
from recsys.topn.stage import FirstStage, SecondStage

# the objective a model dir records -> its class as a first stage (every model dir ranks alone) ...
FIRST: dict[str, type[FirstStage]] = {
    "rating": towers.RatingStage,
    "retrieval": towers.RetrievalStage,
    "ranking": towers.TowerStage,
    "ease": closed_form.EaseStage,
    "popularity": closed_form.PopularityStage,
    "item-knn": item_knn.ItemKnnStage,
}
# ... and as a second stage, for those that reorder a first stage's candidates
SECOND: dict[str, type[SecondStage]] = {
    "rating": towers.RatingReranker,
    "ranking": towers.RankingReranker,
}


def leaders() -> str:
    """The objectives whose model dirs lead two stages, in words: "retrieval, ease or popularity"."""
    names = [name for name, stage in FIRST.items() if stage.leads]
    return ", ".join(names[:-1]) + " or " + names[-1]


def check_leads(first: FirstStage, what: str = "two stages need") -> None:
    """One-line error unless a second stage may reorder `first`'s candidates."""
    if not first.leads:
        raise RecsysError(
            f"{what} a first stage that gives candidates: {first.md.path} is {first.kind()} "
            f"(train one with --objective {leaders()})"
        )


def first_stage(md: ModelDir) -> FirstStage:
    """The model dir as a first stage."""
    if md.objective not in FIRST:
        raise RecsysError(f"{md.path} holds {md.objective!r}, a model this recsys cannot serve; train again")
    return FIRST[md.objective](md)


def second_stage(md: ModelDir) -> SecondStage:
    """The model dir as a second stage; one error line when it cannot be one."""
    if md.objective not in SECOND:
        names = " or ".join(SECOND)
        raise RecsysError(f"--rerank needs a {names} model: {md.path} was trained with --objective {md.objective}")
    return SECOND[md.objective](md)
