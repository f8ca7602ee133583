"""``/v1/models``: the models this server can run without the network."""

from __future__ import annotations

from fastapi import APIRouter
from llem_client import ModelInfo, ModelList

from llem_service.api.problems import problem_responses
from llem_service.deps import CatalogDep

router = APIRouter(prefix="/models", tags=["models"])


@router.get("", response_model=ModelList, responses=problem_responses(401))
def list_models(catalog: CatalogDep) -> ModelList:
    """Model directories under LLEM_MODEL_ROOTS, then the models in the server's hub cache.

    A hub id that is not listed may still run: the hub is asked at submit."""
    return ModelList(
        items=[
            ModelInfo(name=m.name, source=m.source, context_tokens=m.context_tokens)
            for m in catalog.models()
        ]
    )
