"""Find faces and frame them like the training data (torch-free: numpy, PIL, onnxruntime).

The finder is MediaPipe's BlazeFace short-range network (Apache-2.0), converted
once to ONNX by ``export/face_detector.py`` and shipped in
``facesketch/models/face/``; nothing is downloaded. It finds faces that cover at
least about a sixth of the frame's short side in one pass on a 128x128
letterboxed copy; when that finds none, the frame is searched again in
overlapping half-size windows (one batched call) for smaller faces.

Each face comes with 6 keypoints (both eyes, nose tip, mouth centre, both ear
tragions). Alignment maps the eyes and the mouth onto the mean positions
measured on the CUFS train photos (the ``template`` stored in the ONNX file's
metadata) with a similarity transform (rotation, uniform scale, shift) and
samples a crop with CUFS's 4:5 framing; ``paste`` puts a translated crop back.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

MODEL_PATH = Path(__file__).resolve().parent / "models" / "face" / "blazeface_short_range.onnx"
KEYPOINTS = ("right_eye", "left_eye", "nose_tip", "mouth_centre", "right_ear", "left_ear")
ALIGN_POINTS = (0, 1, 3)          # eyes and mouth: the points the template fixes
REFINE_PASSES = 2                 # detect again on the crop and correct (still images)
INPUT = 128
MIN_SCORE = 0.5
MIN_SCORE_WINDOWS = 0.7           # the window search sees more background: a higher bar
SURE_SCORE = 0.75                 # faces above this come first, largest first
NMS_IOU = 0.3
MIN_FACE_PX = 32                  # smaller "faces" (in image pixels) are ignored: noise, not worth framing
MIN_WINDOW = 96                   # smallest search window (source pixels) for small faces
MAX_CROP_SIDE = 1024              # aligned crops are at most this wide


class FaceFinderUnavailable(RuntimeError):
    """The face finder cannot run here (the reason is the message)."""


@dataclass
class Face:
    box: np.ndarray               # x0, y0, x1, y1 in image pixels (float32)
    keypoints: np.ndarray         # 6 x 2 (x, y) in image pixels, order KEYPOINTS
    score: float

    @property
    def area(self) -> float:
        return float(max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1]))

    @property
    def width(self) -> float:
        return float(self.box[2] - self.box[0])

    def as_dict(self) -> dict:
        return {"box": [round(float(v), 1) for v in self.box], "score": round(self.score, 4),
                "keypoints": {n: [round(float(x), 1), round(float(y), 1)]
                              for n, (x, y) in zip(KEYPOINTS, self.keypoints)}}


@dataclass
class Alignment:
    """How a crop was taken: ``matrix`` maps crop pixels (x, y, 1) to image pixels."""

    crop: np.ndarray              # H x W x 3 uint8, CUFS framing
    matrix: np.ndarray            # 2 x 3, crop -> image
    face: Face
    corners: np.ndarray = field(default=None)  # 4 x 2, the crop's corners in the image

    @property
    def angle_deg(self) -> float:
        return math.degrees(math.atan2(self.matrix[1, 0], self.matrix[0, 0]))

    @property
    def scale(self) -> float:
        return float(math.hypot(self.matrix[0, 0], self.matrix[1, 0]))

    def header(self) -> str:
        """``x,y,w,h,angle``: the crop's centre-based box in image pixels (w, h before
        rotation) and its rotation in degrees; what X-Face-Box carries."""
        h, w = self.crop.shape[:2]
        cx, cy = self.matrix @ np.array([w / 2, h / 2, 1.0])
        bw, bh = w * self.scale, h * self.scale
        return f"{cx - bw / 2:.1f},{cy - bh / 2:.1f},{bw:.1f},{bh:.1f},{self.angle_deg:.2f}"


@functools.lru_cache(maxsize=1)
def _anchors() -> np.ndarray:
    """BlazeFace short-range anchor centres (896 x 2, fractions of the input): strides 8
    (2 anchors per cell) and 16 (6 per cell), fixed size 1."""
    out = []
    for stride, per_cell in ((8, 2), (16, 6)):
        n = INPUT // stride
        ys, xs = np.meshgrid((np.arange(n) + 0.5) / n, (np.arange(n) + 0.5) / n, indexing="ij")
        cells = np.stack([xs.ravel(), ys.ravel()], 1)
        out.append(np.repeat(cells, per_cell, axis=0))
    return np.concatenate(out).astype(np.float32)


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    x0 = np.maximum(box[0], boxes[:, 0])
    y0 = np.maximum(box[1], boxes[:, 1])
    x1 = np.minimum(box[2], boxes[:, 2])
    y1 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    return inter / np.maximum(area(box) + area(boxes) - inter, 1e-9)


def weighted_nms(boxes: np.ndarray, points: np.ndarray, scores: np.ndarray) -> list[Face]:
    """MediaPipe's weighted non-maximum suppression: overlapping detections are averaged,
    weighted by score, into one face."""
    order = np.argsort(-scores)
    boxes, points, scores = boxes[order], points[order], scores[order]
    faces, left = [], np.ones(len(scores), bool)
    for i in range(len(scores)):
        if not left[i]:
            continue
        group = left & (_iou(boxes[i], boxes) > NMS_IOU)
        group[i] = True
        wts = scores[group][:, None]
        box = (boxes[group] * wts).sum(0) / wts.sum()
        pts = (points[group] * wts[:, :, None]).sum(0) / wts.sum()
        faces.append(Face(box.astype(np.float32), pts.astype(np.float32), float(scores[i])))
        left &= ~group
    return faces


def _letterbox(rgb: np.ndarray) -> tuple[np.ndarray, float, float, float]:
    """``rgb`` scaled into INPUT x INPUT keeping its aspect (zero padding); returns the
    CHW float input in [-1, 1] and (scale, pad_x, pad_y) mapping input -> image pixels."""
    h, w = rgb.shape[:2]
    s = INPUT / max(h, w)
    nw, nh = max(1, round(w * s)), max(1, round(h * s))
    img = Image.fromarray(rgb)
    if max(h, w) >= 4 * INPUT:
        img = img.reduce(max(h, w) // (2 * INPUT))
    small = np.asarray(img.resize((nw, nh), Image.BILINEAR), np.float32)
    canvas = np.zeros((INPUT, INPUT, 3), np.float32)
    px, py = (INPUT - nw) // 2, (INPUT - nh) // 2
    canvas[py:py + nh, px:px + nw] = small / 127.5 - 1.0
    return canvas.transpose(2, 0, 1), 1.0 / s, px, py


class FaceFinder:
    """BlazeFace on onnxruntime: ``detect`` faces, ``align`` one to the CUFS framing."""

    def __init__(self, path: str | Path | None = None, template: dict | None = None, threads: int = 1):
        path = Path(path) if path else MODEL_PATH
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - onnxruntime is a core dependency
            raise FaceFinderUnavailable(f"onnxruntime is not installed ({exc})") from exc
        if not path.is_file():
            raise FaceFinderUnavailable(f"face model {path.name} is missing from {path.parent.name}/")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - a damaged file: say so, the caller goes on without
            raise FaceFinderUnavailable(f"face model {path.name} does not load: {exc}") from exc
        meta = self._session.get_modelmeta().custom_metadata_map
        if template is None:
            if "facesketch.face.template" not in meta:
                raise FaceFinderUnavailable(f"face model {path.name} has no alignment template")
            template = json.loads(meta["facesketch.face.template"])
        self.template = template
        self.source = meta.get("facesketch.face.source", "")

    # ------------------------------------------------------------ detection
    def _run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        reg, logits = self._session.run(None, {"image": batch})
        return reg, 1.0 / (1.0 + np.exp(-np.clip(logits[..., 0], -80, 80)))

    @staticmethod
    def _decode(reg: np.ndarray, scores: np.ndarray, scale: float, px: float, py: float,
                ox: float = 0.0, oy: float = 0.0, min_score: float = MIN_SCORE
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        keep = scores >= min_score
        reg, scores, anchors = reg[keep], scores[keep], _anchors()[keep] * INPUT
        cx, cy = reg[:, 0] + anchors[:, 0], reg[:, 1] + anchors[:, 1]
        w, h = reg[:, 2], reg[:, 3]
        boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
        pts = reg[:, 4:16].reshape(-1, 6, 2) + anchors[:, None, :]
        shift = np.array([px, py], np.float32)
        boxes = (boxes - np.tile(shift, 2)) * scale + np.array([ox, oy, ox, oy], np.float32)
        pts = (pts - shift) * scale + np.array([ox, oy], np.float32)
        return boxes, pts, scores

    def _windows(self, w: int, h: int) -> list[tuple[int, int, int]]:
        side = min(w, h) // 2
        if side < MIN_WINDOW:
            return []
        step = side // 2
        xs = sorted({*range(0, w - side + 1, step), w - side})
        ys = sorted({*range(0, h - side + 1, step), h - side})
        return [(x, y, side) for y in ys for x in xs]

    def detect(self, rgb: np.ndarray) -> list[Face]:
        """Faces in an RGB uint8 image: the confident ones (score >= SURE_SCORE) first,
        each group largest first; empty when there is none."""
        h, w = rgb.shape[:2]
        x, scale, px, py = _letterbox(rgb)
        reg, scores = self._run(x[None])
        boxes, pts, sc = self._decode(reg[0], scores[0], scale, px, py)
        if not len(sc):
            wins = self._windows(w, h)
            if wins:
                inputs = [_letterbox(rgb[y:y + s, x0:x0 + s]) for x0, y, s in wins]
                reg, scores = self._run(np.stack([i[0] for i in inputs]))
                parts = [self._decode(reg[k], scores[k], i[1], i[2], i[3], x0, y, MIN_SCORE_WINDOWS)
                         for k, (i, (x0, y, _)) in enumerate(zip(inputs, wins))]
                boxes = np.concatenate([p[0] for p in parts])
                pts = np.concatenate([p[1] for p in parts])
                sc = np.concatenate([p[2] for p in parts])
        faces = weighted_nms(boxes, pts, sc) if len(sc) else []
        faces = [f for f in faces if f.width >= MIN_FACE_PX]
        return sorted(faces, key=lambda f: (f.score < SURE_SCORE, -f.area))

    # ------------------------------------------------------------ alignment
    def template_points(self, crop_w: float | None = None) -> np.ndarray:
        """The template's eye and mouth positions in pixels of a crop ``crop_w`` wide."""
        tw, th = self.template["size"]
        crop_w = crop_w or tw
        pts = np.asarray(self.template["points"], np.float64)[list(ALIGN_POINTS)]
        return pts * np.array([crop_w, crop_w * th / tw])

    def is_framed(self, rgb: np.ndarray, face: Face, tolerance: float = 0.06) -> bool:
        """Whether the image is already a CUFS-style crop: the 4:5 frame, and eyes and mouth
        within ``tolerance`` of the frame's width of the template's positions."""
        h, w = rgb.shape[:2]
        tw, th = self.template["size"]
        if abs((w / h) / (tw / th) - 1.0) > 0.1:
            return False
        want = self.template_points(w)
        got = face.keypoints[list(ALIGN_POINTS)]
        return float(np.max(np.hypot(*(got - want).T))) <= tolerance * w

    def crop_width(self, face: Face) -> int:
        """Crop width keeping the face's own resolution (no upsampling of a large face
        below the template's width, no crop wider than MAX_CROP_SIDE)."""
        tmpl = self.template_points()
        src_eyes = float(np.hypot(*(face.keypoints[1] - face.keypoints[0])))
        tmpl_eyes = float(np.hypot(*(tmpl[1] - tmpl[0])))
        w = self.template["size"][0] * src_eyes / max(tmpl_eyes, 1e-6)
        return int(min(MAX_CROP_SIDE, max(self.template["size"][0], round(w))))

    def point_weights(self) -> np.ndarray | None:
        """Weights of the eyes and the mouth in the fit: the inverse variance of each
        point's position over the CUFS train photos (the template's ``std``). CUFS was
        framed by the eyes, so they vary least and count most (about 3:3:1); None
        (equal weights) for a template without spreads."""
        std = self.template.get("std")
        if std is None:
            return None
        var = (np.asarray(std, np.float64)[list(ALIGN_POINTS)] ** 2).mean(1)
        return 1.0 / np.maximum(var, 1e-8)

    def transform(self, face: Face, crop_w: int) -> np.ndarray:
        """The crop -> image transform putting ``face``'s eyes and mouth on the template
        in a crop ``crop_w`` wide (no pixels touched)."""
        return similarity(self.template_points(crop_w), face.keypoints[list(ALIGN_POINTS)],
                          self.point_weights())

    def align(self, rgb: np.ndarray, face: Face, matrix: np.ndarray | None = None,
              crop_w: int | None = None, refine: bool = True) -> Alignment:
        """The crop of ``face`` in CUFS framing (``matrix``: a given crop -> image transform,
        e.g. a smoothed one, instead of the face's own; ``refine``: detect again on the
        crop and correct the transform, REFINE_PASSES more detector calls)."""
        tw, th = self.template["size"]
        crop_w = crop_w or self.crop_width(face)
        crop_h = round(crop_w * th / tw)
        sample = lambda m: warp_crop(rgb, m, (crop_w, crop_h))  # noqa: E731
        target = self.template_points(crop_w)
        if matrix is None:
            matrix = self.transform(face, crop_w)
            # the keypoints of a small or turned face are coarse: find them again on the
            # crop (the face now upright at the template's scale) and correct, twice
            weights = self.point_weights()
            for _ in range(REFINE_PASSES if refine else 0):
                again = self.detect(sample(matrix))
                if not again:
                    break
                fix = similarity(target, again[0].keypoints[list(ALIGN_POINTS)], weights)
                matrix = compose(matrix, fix)
        crop = sample(matrix)
        corners = np.array([[0, 0, 1], [crop_w, 0, 1], [crop_w, crop_h, 1], [0, crop_h, 1]], float)
        return Alignment(crop, matrix, face, corners @ matrix.T)


def border_pixels(rgb: np.ndarray) -> np.ndarray:
    return np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])


def warp_crop(rgb: np.ndarray, matrix: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The ``size`` (w, h) crop whose pixel (x, y) is the image at ``matrix @ (x, y, 1)``
    (bilinear); outside the image, the median colour of its border."""
    fill = tuple(int(v) for v in np.median(border_pixels(rgb), axis=0))
    return np.asarray(Image.fromarray(rgb).transform(size, Image.AFFINE, data=tuple(matrix.ravel()),
                                                     resample=Image.BILINEAR, fillcolor=fill))


def similarity(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """The 2x3 similarity transform (rotation, uniform scale, shift; no reflection) that
    maps ``src`` points onto ``dst`` points with least (``weights``-weighted) squared
    error (Umeyama, 1991)."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    w = np.full(len(src), 1.0 / len(src)) if weights is None else \
        np.asarray(weights, np.float64) / np.sum(weights)
    ms, md = w @ src, w @ dst
    a, b = src - ms, dst - md
    cov = (b * w[:, None]).T @ a
    u, d, vt = np.linalg.svd(cov)
    sign = np.diag([1.0, np.sign(np.linalg.det(u @ vt)) or 1.0])
    rot = u @ sign @ vt
    scale = float(np.trace(np.diag(d) @ sign) / max(float(w @ (a ** 2).sum(1)), 1e-12))
    m = np.zeros((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = md - m[:, :2] @ ms
    return m


def compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """The 2x3 transform applying ``inner`` first, then ``outer``."""
    return (np.vstack([outer, [0, 0, 1]]) @ np.vstack([inner, [0, 0, 1]]))[:2]


def invert(matrix: np.ndarray) -> np.ndarray:
    full = np.vstack([matrix, [0, 0, 1]])
    return np.linalg.inv(full)[:2]


def smooth(previous: np.ndarray | None, current: np.ndarray, face_width: float,
           alpha: float = 0.35, jump: float = 0.25) -> np.ndarray:
    """A steadier crop transform for video: move ``alpha`` of the way from the previous
    frame's transform to this one's, or jump when the face moved more than ``jump``
    face widths (a new face, a cut) or the transforms are not comparable."""
    if previous is None or previous.shape != current.shape:
        return current
    moved = float(np.hypot(*(current[:, 2] - previous[:, 2])))
    if moved > jump * face_width:
        return current
    return previous + alpha * (current - previous)


def parse_box(text: str) -> tuple[float, float, float, float, float]:
    """``x,y,w,h,angle`` (an X-Face-Box value) -> floats; ValueError when malformed."""
    parts = [float(v) for v in text.split(",")]
    if len(parts) != 5 or not all(math.isfinite(v) for v in parts) or parts[2] <= 0 or parts[3] <= 0:
        raise ValueError("a face box is x,y,w,h,angle with positive w and h")
    return tuple(parts)  # type: ignore[return-value]


def box_matrix(box: tuple[float, float, float, float, float], crop_w: int, crop_h: int) -> np.ndarray:
    """The crop -> image transform of an ``x,y,w,h,angle`` box for a crop_w x crop_h crop."""
    x, y, w, h, angle = box
    s = w / crop_w
    c, si = math.cos(math.radians(angle)) * s, math.sin(math.radians(angle)) * s
    cx, cy = x + w / 2, y + h / 2
    m = np.array([[c, -si, 0.0], [si, c, 0.0]])
    m[:, 2] = np.array([cx, cy]) - m[:, :2] @ np.array([crop_w / 2, crop_h / 2])
    return m


def paste(frame: np.ndarray, result: np.ndarray, alignment: Alignment, feather: float = 0.06) -> np.ndarray:
    """``result`` (the translated crop, any size) warped back into ``frame`` where the crop
    came from, blended over a feathered border ``feather`` of the crop's width."""
    ch, cw = alignment.crop.shape[:2]
    res = np.asarray(Image.fromarray(result).resize((cw, ch), Image.BILINEAR), np.float32)
    inv = invert(alignment.matrix)                  # image -> crop
    h, w = frame.shape[:2]
    warp = lambda a, mode: np.asarray(Image.fromarray(a, mode).transform(  # noqa: E731
        (w, h), Image.AFFINE, data=tuple(inv.ravel()), resample=Image.BILINEAR))
    edge = max(1, round(feather * cw))
    ramp_x = np.clip(np.minimum(np.arange(cw), cw - 1 - np.arange(cw)) / edge, 0, 1)
    ramp_y = np.clip(np.minimum(np.arange(ch), ch - 1 - np.arange(ch)) / edge, 0, 1)
    mask = (np.outer(ramp_y, ramp_x) * 255).astype(np.uint8)
    m = warp(mask, "L").astype(np.float32)[..., None] / 255.0
    back = warp(res.astype(np.uint8), "RGB").astype(np.float32)
    return (frame.astype(np.float32) * (1 - m) + back * m).round().astype(np.uint8)


@functools.lru_cache(maxsize=1)
def default_finder() -> FaceFinder:
    """The bundled finder, loaded once per process (FaceFinderUnavailable if it cannot)."""
    return FaceFinder()
