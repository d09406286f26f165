"""Result writers: the TID 1500 SR and the Grad-CAM secondary captures, with deterministic UIDs."""

from workers.results.sc import build_cine_sc, build_key_frame_sc
from workers.results.sr import build_sr
from workers.results.uids import result_uid

__all__ = ["build_cine_sc", "build_key_frame_sc", "build_sr", "result_uid"]
