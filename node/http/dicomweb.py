"""DICOMweb services of the node (PS3.18): STOW-RS (``dicomweb_stow``), QIDO-RS (``dicomweb_query``), WADO-RS (``dicomweb_wado``)."""

from __future__ import annotations

from fastapi import APIRouter

from node.http import dicomweb_query, dicomweb_stow, dicomweb_wado

router = APIRouter(prefix="/dicom-web", tags=["DICOMweb"])
router.include_router(dicomweb_stow.router)
router.include_router(dicomweb_query.router)
router.include_router(dicomweb_wado.router)
