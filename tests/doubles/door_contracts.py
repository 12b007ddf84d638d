"""The two seed API documents, parsed at test time, and validators for every response the door gives.

The seeds (the directory `$VOICE_WORKER_SEEDS_DIR` names, else `../shared/seeds` beside the checkout) are
Markdown pages with the OpenAPI excerpt inside a ```` fence; the YAML between the fences is the contract. When
the seed directory is there the tests read the documents themselves; elsewhere they read the verbatim copies in
tests/contracts/, which a test compares with the seeds whenever both are present (on CI always).
"""

from __future__ import annotations

import os
import re
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from jsonschema.validators import validator_for

# No default: a machine path in the repository is true on one machine only.
_SEEDS_ENV = os.environ.get("VOICE_WORKER_SEEDS_DIR")
# The project's shared material sits beside the checkout (`../shared/seeds`), on developers' machines and on CI.
_BESIDE_CHECKOUT = Path(__file__).resolve().parents[2].parent / "shared" / "seeds"
SEEDS_DIR: Path | None = Path(_SEEDS_ENV) if _SEEDS_ENV else (_BESIDE_CHECKOUT if _BESIDE_CHECKOUT.is_dir() else None)
COPIES_DIR = Path(__file__).resolve().parent.parent / "contracts"
FEATHER_SEED = "000_f2ddc616678da03a.txt"
REVDESK_SEED = "001_572ed52e6335432a.txt"
COPIES = {FEATHER_SEED: "feather-web-call.yaml", REVDESK_SEED: "revdesk-web-call.yaml"}
FEATHER_PATH = "/v1/voice/web-call"
REVDESK_PATH = "/v1/agents/{id}/web-call"

_FENCE = re.compile(r"^````yaml[^\n]*\n(.*?)^````", re.S | re.M)


def seeds_available() -> bool:
    return SEEDS_DIR is not None and (SEEDS_DIR / FEATHER_SEED).is_file() and (SEEDS_DIR / REVDESK_SEED).is_file()


def _openapi(document: Any, origin: str) -> dict[str, Any]:
    assert isinstance(document, dict) and "paths" in document, f"{origin}: no OpenAPI document"
    return document


@cache
def seed_from_seeds_dir(name: str) -> dict[str, Any]:
    if SEEDS_DIR is None:
        raise AssertionError("VOICE_WORKER_SEEDS_DIR is not set")
    text = (SEEDS_DIR / name).read_text(encoding="utf-8")
    match = _FENCE.search(text)
    if match is None:
        raise AssertionError(f"{name}: no ````yaml fence found")
    return _openapi(yaml.safe_load(match.group(1)), name)


@cache
def seed_from_copy(name: str) -> dict[str, Any]:
    path = COPIES_DIR / COPIES[name]
    return _openapi(yaml.safe_load(path.read_text(encoding="utf-8")), str(path))


def seed_document(name: str) -> dict[str, Any]:
    return seed_from_seeds_dir(name) if seeds_available() else seed_from_copy(name)


def feather() -> dict[str, Any]:
    return seed_document(FEATHER_SEED)


def revdesk() -> dict[str, Any]:
    return seed_document(REVDESK_SEED)


def _operation(document: dict[str, Any], path: str) -> dict[str, Any]:
    return document["paths"][path]["post"]


def response_schema(document: dict[str, Any], path: str, status: int) -> dict[str, Any] | None:
    """The seed's JSON schema for `status` on `path`, with the document's components for `$ref`s."""
    response = _operation(document, path)["responses"].get(str(status))
    if response is None:
        return None
    schema = dict(response["content"]["application/json"]["schema"])
    schema.pop("$schema", None)
    schema["components"] = document.get("components", {})
    return schema


def validate(instance: Any, schema: dict[str, Any]) -> None:
    """Raise `jsonschema.ValidationError` unless `instance` conforms (formats such as uuid/uri included)."""
    cls = validator_for(schema, default=jsonschema.Draft202012Validator)
    cls(schema, format_checker=jsonschema.FormatChecker()).validate(instance)


def seed_statuses(document: dict[str, Any], path: str) -> set[str]:
    return set(_operation(document, path)["responses"])


def resolve(schema: Any, root: dict[str, Any]) -> Any:
    """`schema` with every local `$ref` inlined (the door's and the seeds' schemas have no cycles)."""
    if isinstance(schema, dict):
        if "$ref" in schema:
            target: Any = root
            for part in schema["$ref"].removeprefix("#/").split("/"):
                target = target[part.replace("~1", "/").replace("~0", "~")]
            merged = {**resolve(target, root), **{k: v for k, v in schema.items() if k != "$ref"}}
            return resolve(merged, root)
        return {k: resolve(v, root) for k, v in schema.items()}
    if isinstance(schema, list):
        return [resolve(item, root) for item in schema]
    return schema


_PROSE = {"title", "description", "$schema"}


def shape(schema: Any) -> Any:
    """`schema` without prose (titles, descriptions): what a client can rely on."""
    if isinstance(schema, dict):
        return {k: shape(v) for k, v in schema.items() if k not in _PROSE}
    if isinstance(schema, list):
        return [shape(item) for item in schema]
    return schema
