"""Face alignment for the Translator: find the largest face, crop it in the training
data's framing, steady the crop across video frames, paste the result back.

The finder itself (BlazeFace on onnxruntime, the CUFS template) is
facesketch.face; this module decides what to do with an image:

- ``auto``: a face found, and the image not already a CUFS-style crop -> the
  aligned crop is translated; already framed -> the image as it is; no face ->
  the whole image ("no face found"); the finder unavailable -> the whole image,
  and the reason.
- ``off``: the whole image, as before alignment existed.
"""

from __future__ import annotations

import logging

import numpy as np

from facesketch import face as F

log = logging.getLogger("facesketch.runtime")
ALIGN_MODES = ("auto", "off")
_warned: set[str] = set()


def finder() -> F.FaceFinder | None:
    """The process's face finder, or None (logged once) when it cannot load."""
    try:
        return F.default_finder()
    except F.FaceFinderUnavailable as exc:
        if str(exc) not in _warned:
            _warned.add(str(exc))
            log.warning("face alignment unavailable, translating whole images: %s", exc)
        return None


def frame_face(rgb: np.ndarray, previous_box: str | None = None
               ) -> tuple[np.ndarray, F.Alignment | None, str]:
    """(image to translate, alignment or None, what was done) for align="auto".

    ``previous_box`` (the X-Face-Box of the previous video frame) steadies the crop:
    the new transform moves only part of the way from it unless the face jumped."""
    f = finder()
    if f is None:
        return rgb, None, "face finder unavailable"
    faces = f.detect(rgb)
    if not faces:
        return rgb, None, "no face found"
    face = faces[0]
    if previous_box is None and f.is_framed(rgb, face):
        return rgb, None, "already framed"
    if previous_box is None:
        al = f.align(rgb, face)
        return al.crop, al, "aligned"
    # video: no refinement pass (the smoothing steadies the keypoints' jitter), one warp
    crop_w = f.crop_width(face)
    tw, th = f.template["size"]
    current = f.transform(face, crop_w)
    try:
        prev = F.box_matrix(F.parse_box(previous_box), crop_w, round(crop_w * th / tw))
    except ValueError:
        prev = None
    steady = F.smooth(prev, current, face.width)
    al = f.align(rgb, face, matrix=steady, crop_w=crop_w)
    return al.crop, al, "aligned" if steady is current else "aligned (smoothed)"


def paste_back(frame: np.ndarray, result: np.ndarray, alignment: F.Alignment | None) -> np.ndarray:
    """The translated crop warped back into the frame (the result itself when not aligned)."""
    if alignment is None:
        return result
    return F.paste(frame, result, alignment)
