"""The answer engine's HTTP routes, one router per area; ``router`` collects them."""

from fastapi import APIRouter

from search_app.routes import documents, info, lepton, login, search, searxng, ui

__all__ = ["router"]

router = APIRouter()
router.include_router(search.router)
router.include_router(documents.router)
router.include_router(lepton.router)
router.include_router(searxng.router)
router.include_router(info.router)
router.include_router(login.router)
router.include_router(ui.router)
