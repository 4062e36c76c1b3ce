"""The OpenAPI schema as the service's contract: FastAPI's schema of the routes, with what the served data
and models enforce written in, so that a request the schema calls valid is answered and one it calls
invalid is refused (a schema-based fuzzer checks both in the tests).

Written in from the served models: the rating scale and its steps (`POST /api/ratings`, rated movies), the
new-user form this data takes (the chapter's gender, age 1..120 and job, or the data's own features), that
`POST /api/recommend` takes a known user or a new one and never both, and whether rated movies are taken
(only by models that read history). Every error status is documented with the one-line `{"error": ...}`
body: 4xx for the client's request (every POST with its 413 and 415), 500 and 503 for the server's own
faults; every integer within 64 bits. (The write token's bearer scheme comes from the routes' dependency.)
"""

from __future__ import annotations

import copy
from typing import Annotated

from fastapi.openapi.utils import get_openapi
from pydantic import BeforeValidator, Strict, StrictFloat
from pydantic_core import PydanticCustomError

from recsys.recommender import Recommender
from recsys.service.guard import MAX_ID
from recsys.topn.filters import IDS_PATTERN, YEARS_PATTERN, names_pattern

NULL = {"type": "null"}
ERROR = {
    "type": "object",
    "properties": {"error": {"type": "string", "description": "what was wrong, on one line"}},
    "required": ["error"],
}
NOT_FOUND = "unknown user or movie"
OPTIONS = ("explain", "exclude_rated", "genres", "exclude_genres", "exclude", "years")  # a list's (`options`)
STATUS = {
    404: NOT_FOUND,
    413: "the request body is over the server's bound (serve --max-body-bytes)",
    415: "the body is not sent as application/json",
    422: "a value the served data does not take, or a malformed body",
    500: "the server failed on this request (its own fault, not the request's)",
    503: "the server cannot answer now (its ratings database or its memory); try again later",
}
MAX_RATED = 1000  # a new user's rated movies in one request


def _integral(value):
    value = int(value) if isinstance(value, float) and value.is_integer() else value
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_ID:  # never echoed back
        raise PydanticCustomError("too_large", f"a whole number within ±{MAX_ID}")
    return value


def _at_most_rated(value):
    if isinstance(value, list) and len(value) > MAX_RATED:  # refused before any pair is read
        raise PydanticCustomError("too_long", f"at most {MAX_RATED} [movie id, stars] pairs, got {len(value)}")
    return value


# A JSON body's whole number: 2 or 2.0 (one number to JSON and to its schema's "integer"), never true or "2"
Whole = Annotated[int, BeforeValidator(_integral), Strict()]
# A rated movie: [movie id, stars], a JSON array read as a pair
Pair = Annotated[tuple[Whole, StrictFloat], Strict(False)]
# A new user's rated movies
Pairs = Annotated[list[Pair], BeforeValidator(_at_most_rated)]


def schema(app) -> dict:
    """The app's OpenAPI document for the model it serves now (made again after a reload)."""
    rec: Recommender = app.state.holder.current
    cached = getattr(app.state, "contract", None)
    if cached is not None and cached[0] is rec:
        return cached[1]
    doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    doc = copy.deepcopy(doc)
    _errors(doc)
    _values(doc, rec)
    _filters(doc, rec)
    _int64(doc)
    app.state.contract = (rec, doc)
    return doc


def _operations(doc: dict):
    for path, item in doc["paths"].items():
        for method, op in item.items():
            yield path, method, op


def _errors(doc: dict) -> None:
    """Every error answer as the one-line body: 404 where an id is looked up, 413 and 415 on every POST, 500
    and 503 everywhere."""
    components = doc.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    components["Error"] = ERROR
    body = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    for path, _method, op in _operations(doc):
        responses = op["responses"]
        if "{" in path or path in ("/api/predict", "/api/recommend", "/api/recommendations", "/api/ratings"):
            responses.setdefault("404", {"description": NOT_FOUND})
        if "requestBody" in op:
            responses.setdefault("413", {"description": STATUS[413]})
            responses.setdefault("415", {"description": STATUS[415]})
        responses["422"] = {"description": STATUS[422]}
        for code in (500, 503):
            responses[str(code)] = {"description": STATUS[code]}
        for code, answer in responses.items():
            if code[0] in "45":
                answer["content"] = body
    doc["paths"]["/api/predict"]["get"]["responses"]["404"]["description"] = (
        f"{NOT_FOUND}, or no rating model is served"
    )


def _stars(rec: Recommender) -> dict:
    low, high = rec.model.rating_scale
    return {"type": "number", "minimum": low, "maximum": high, "multipleOf": low}


def _values(doc: dict, rec: Recommender) -> None:
    """The served data's constraints: the rating scale, the new-user form, rated movies."""
    schemas = doc["components"]["schemas"]
    schemas["Rating"]["properties"]["rating"] |= _stars(rec)
    rated = {"type": "array", "items": {
        "type": "array", "prefixItems": [{"type": "integer"}, _stars(rec)], "minItems": 2, "maxItems": 2,
        "items": False, "description": "[movie id, stars]",
    }}  # fmt: skip
    rated["maxItems"] = MAX_RATED
    if not rec.reads_history:  # the served models cannot read them
        rated = {"type": "array", "maxItems": 0}
    new = _new_user(rec, schemas["NewUser"]["properties"])
    schemas["NewUser"] = {**schemas["NewUser"], **new}
    who = schemas["Who"]["properties"]
    named = {k: (v if k not in new["properties"] else new["properties"][k]) for k, v in who.items()}
    named["rated"] = {"anyOf": [rated, NULL], "description": who["rated"]["description"]}
    if rec.chapter_features:
        named["features"] = NULL  # the chapter's new user is gender, age and job alone
    known = {k: (NULL if k not in ("user_id", "k", *OPTIONS) else v) for k, v in who.items()}
    known["user_id"] = {"type": "integer"}
    schemas["Who"] = {
        "title": "Who",
        "description": schemas["Who"]["description"],
        "oneOf": [
            {
                "type": "object",
                "title": "KnownUser",
                "properties": known,
                "required": ["user_id"],
                "additionalProperties": False,
            },
            {
                "type": "object",
                "title": "NewUserQuery",
                "properties": named | {"user_id": NULL},
                "required": new.get("required", []),
                "additionalProperties": False,
            },
        ],  # fmt: skip
    }
    query = doc["paths"].get("/api/recommendations", {}).get("get")
    if query is not None and not rec.chapter_features:
        del doc["paths"]["/api/recommendations"]  # the chapter's gender, age and job: this data has none
    elif query is not None:
        for p in query["parameters"]:
            if p["name"] in ("age", "job"):
                p["schema"] |= new["properties"][p["name"]]


def _new_user(rec: Recommender, given: dict) -> dict:
    """The properties (and required ones) of a new user of this data."""
    if rec.chapter_features:
        n_jobs = len(rec.model.features["job"])
        return {
            "properties": {
                "gender": {"type": "string", "enum": ["M", "F"]},
                "age": {"type": "integer", "minimum": 1, "maximum": 120, "description": given["age"]["description"]},
                "job": {"type": "integer", "minimum": 0, "maximum": n_jobs - 1},
                "features": {"anyOf": [NULL, {"type": "object", "maxProperties": 0}]},
            },
            "required": ["gender", "age", "job"],
        }
    values = {name: {"type": "string", "enum": list(labels)} for name, labels in rec.model.features.items()}
    features = {"type": "object", "properties": values, "additionalProperties": False,
                "description": given["features"].get("description")}  # fmt: skip
    return {"properties": {"gender": NULL, "age": NULL, "job": NULL, "features": {"anyOf": [features, NULL]}}}


def _filters(doc: dict, rec: Recommender) -> None:
    """The list filters' values as the server reads them: genres among the served data's, movie ids and years
    as text (or lists, in a body); a known user's `exclude_rated`; 404 also for a filter no movie passes."""
    genres = names_pattern(rec.catalogue.genres)
    text = {"genres": genres, "exclude_genres": genres, "exclude": IDS_PATTERN, "years": YEARS_PATTERN}
    lists = {"genres": {"type": "string", "enum": rec.catalogue.genres}, "exclude": {"type": "integer"}}
    lists["exclude_genres"] = lists["genres"]
    for path, _method, op in _operations(doc):
        for p in op.get("parameters", []):
            if p["in"] == "query" and p["name"] in text:
                p["schema"] = {"type": "string", "pattern": text[p["name"]], "description": p.get("description")}
        if path.endswith("/recommendations") or path == "/api/recommend":
            op["responses"]["404"]["description"] = f"{NOT_FOUND}, or no movie passes the filters"
    known, new = doc["components"]["schemas"]["Who"]["oneOf"]
    for branch in (known, new):
        props = branch["properties"]
        for name, pattern in text.items():
            forms = [{"type": "string", "pattern": pattern}]
            forms += [{"type": "array", "items": lists[name]}] if name in lists else []
            props[name] = {"anyOf": [*forms, NULL], "description": props[name].get("description")}
    new["properties"]["exclude_rated"] = NULL  # a new user's rated movies are never listed


def _int64(node) -> None:
    """Every integer of the schema within 64 bits, as the server takes them (a larger id is no one's)."""
    if isinstance(node, dict):
        if node.get("type") == "integer":
            node.setdefault("minimum", -MAX_ID)
            node.setdefault("maximum", MAX_ID)
        for value in node.values():
            _int64(value)
    elif isinstance(node, list):
        for value in node:
            _int64(value)
