"""UPS-RS (PS3.18 section 11): every job as a workitem; workitems that name a study on a source."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/dicom-web", tags=["UPS-RS"])
