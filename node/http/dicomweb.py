"""DICOMweb services of the node (PS3.18): STOW-RS, QIDO-RS, WADO-RS."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/dicom-web", tags=["DICOMweb"])
