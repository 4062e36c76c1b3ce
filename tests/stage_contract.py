"""What every stage (`recsys.topn.stage`), alone or as two, must do through `recsys.Recommender`: a mixin whose
subclasses give the fixture `rec` (a Recommender of the stages under test) and `copy` (the same model dirs
loaded from a copy of their files)."""

from __future__ import annotations

import numpy as np
import pytest

from recsys import RecsysError, UnknownId


def training_ratings(rec, user: int) -> set[int]:
    """The movie ids `user` rated in the training split."""
    md = rec.model
    movies, _, is_test = md.ratings_of(md.user_row(user))
    return {md.own_movie(int(m)) for m in movies[~is_test]}


def ids(answer: dict) -> list[int]:
    return [r["movie_id"] for r in answer["recommendations"]]


class StageContract:
    """The contract; `ties` False: the list's order is a second stage's, whose ties keep the first's order."""

    ties = True

    def test_never_a_rated_movie_and_never_a_short_list(self, rec):
        catalogue = len(rec.model.movie_ids)
        for user in rec.users:
            rated = training_ratings(rec, user)
            got = ids(rec.recommend(user, k=catalogue, exclude_rated="train"))
            assert not set(got) & rated, user
            assert len(got) == len(set(got)) == catalogue - len(rated), user  # every unrated movie, once

    def test_ties_go_to_the_smaller_id(self, rec):
        if not self.ties:
            pytest.skip("a second stage's ties keep the first stage's order")
        catalogue, tied = len(rec.model.movie_ids), 0
        for user in rec.users[::7]:
            rows = rec.recommend(user, k=catalogue, exclude_rated="train")["recommendations"]
            values = [r["score"] if "score" in r else r["cosine"] for r in rows]
            assert not self.ordered or all(a >= b for a, b in zip(values, values[1:])), user
            for (a, b), (x, y) in zip(zip(values, values[1:]), zip(rows, rows[1:])):
                if a == b:
                    tied += 1
                    assert x["movie_id"] < y["movie_id"], user
        assert tied or self.rare_ties

    rare_ties = True  # a stage whose scores seldom tie may show none
    ordered = True  # a list's values never grow down the list (one scale for all its movies)

    def test_the_batch_form_is_the_one_user_form(self, rec):
        users = rec.users
        for exclude in ("train", "all"):
            many = rec.recommend_many(users, k=7, chunk=50, exclude_rated=exclude)
            assert many == [ids(rec.recommend(u, k=7, exclude_rated=exclude)) for u in users]

    def test_save_then_load_gives_the_same_lists(self, rec, copy):
        users = rec.users
        assert copy.recommend_many(users, k=10) == rec.recommend_many(users, k=10)
        assert copy.stages == rec.stages

    def test_an_unknown_id_raises_unknown_id(self, rec):
        with pytest.raises(UnknownId):
            rec.recommend(max(rec.users) + 1000, k=5)
        with pytest.raises(UnknownId):
            rec.recommend(rec.users[0], k=5, exclude=[10**7])
        if rec.reads_history:
            with pytest.raises(UnknownId):
                rec.recommend_new(k=5, gender="F", age=25, job=1, rated=[(10**7, 4)])

    def test_a_new_users_list_depends_only_on_what_they_gave(self, rec):
        movies = sorted(rec.model.own_movie(int(r)) for r in rec.model.movie_ids)
        rated = [(movies[3], 5), (movies[40], 4), (movies[11], 2)] if rec.reads_history else []
        given = {"gender": "F", "age": 25, "job": 3}
        first = rec.recommend_new(k=10, **given, rated=rated)
        rec.recommend(rec.users[0], k=10)
        rec.recommend_new(k=10, gender="M", age=56, job=1)
        assert rec.recommend_new(k=10, **given, rated=rated[::-1])["recommendations"] == first["recommendations"]
        assert not set(ids(first)) & {m for m, _ in rated}
        if not rec.reads_history:  # rated movies cannot change its list: refused unless only left out
            with pytest.raises(RecsysError, match="no history input"):
                rec.recommend_new(k=10, **given, rated=[(movies[3], 5)])

    def test_evaluate_ranks_the_served_lists(self, rec, data):
        """`evaluate`'s lists are the served ones with only the training ratings left out."""
        users = rec.users
        served = rec.recommend_many(users, k=10, exclude_rated="train")
        md, rank = rec.model, rec.ranker()
        rows = np.array([md.user_row(u) for u in users])
        seen = np.stack([np.isin(md.movie_ids, [md.movie_row(m) for m in training_ratings(rec, u)]) for u in users])
        cols = rank(rows, seen, 10)
        assert [[md.own_movie(int(md.movie_ids[c])) for c in row if c >= 0] for row in cols] == served
        assert 0 <= rec.evaluate(data)["ndcg"] <= 1
