"""RGB-D rooms: a ray-traced stand-in for SUN RGB-D scene classification.

A small numpy ray-caster renders simple rooms (axis-aligned boxes, spheres,
vertical cylinders, textured walls and floors) as RGB + depth for the 19
SUN RGB-D scene classes, and writes them in the SUN RGB-D on-disk layout so
that a SUN RGB-D reader reads them exactly as it reads the real data.

Each class is a pair (layout, palette), and the classes come in pairs
that share both: classes `2k` and `2k + 1` have layout `Lk` (room shape
and furniture) and base palette `Pk` (colours and textures of walls,
floor and furniture); class 18 is alone. The second class of a pair
renders the variant of the palette (colours moved towards their channel
rotation, all the way by default, `palette_shift`, and other textures)
and adds `pillars` free-standing floor-to-ceiling pillars at random
places to the layout:

    class:   0    1     2    3     ...   16   17    18
    layout:  L0   L0+p  L1   L1+p  ...   L8   L8+p  L9
    palette: P0   P0'   P1   P1'   ...   P8   P8'   P9

So RGB tells the class from the palette, depth the layout from the room's
shape and the class within the layout from the pillars: small, anywhere,
and learned by a CNN only slowly (random convolutional features do not
show them to a linear probe). A quarter of the samples
(`dark_fraction`) are captured in the dark: the camera's night mode
gives a grey, dim and noisy image that tells almost nothing, while depth,
an active sensor, is unaffected. RGB is the dominant modality (as in SUN
RGB-D): a small CNN learns the palettes faster and scores higher alone;
depth alone is weaker and slower, and it is the only cue on dark
samples. Under joint training RGB fits the training set first and the
depth encoder stops short of the pillars (a linear probe on it scores
well below depth alone), while the average of the unimodal models, where
depth alone answers for the dark samples, beats the jointly trained one.
Per-sample variation (room size, camera pose and field of view, object
placement and size, light position, intensity and tint, colour jitter,
sensor noise, depth holes) keeps either modality alone from being
perfect.

Layout written by `generate` (all paths relative to the returned root):

```
<root>/<sensor>/<sample>/image/<sample>.jpg      RGB, 8-bit JPEG
<root>/<sensor>/<sample>/depth/<sample>.png      uint16 PNG, raw (holes = 0)
<root>/<sensor>/<sample>/depth_bfx/<sample>.png  uint16 PNG, hole-free
<root>/<sensor>/<sample>/scene.txt               class name, e.g. "office"
<root>/<sensor>/<sample>/intrinsics.txt          3x3 camera matrix, 3 lines
<root>/train.txt                                 one sample path a line
<root>/test.txt                                  one sample path a line
```

`<sensor>` is one of `kv1`, `kv2`, `realsense`, `xtion` (assigned at
random, as a stand-in for the real capture devices) and `<sample>` is
`room_<index:06d>`. The split files list sample folders relative to the
root with forward slashes (e.g. `kv2/room_000017`), one per line, sorted;
every sample is in exactly one of them, stratified by class.

Depth PNGs hold millimetres stored with the SUN RGB-D toolbox's bit
rotation, `raw = (d << 3) | (d >> 13)` in 16-bit arithmetic
(`keras_olm.data.image.encode_depth_bits`): a reader recovers millimetres
with `d = (raw >> 3) | (raw << 13)` (`decode_depth_bits`), exactly as for
the real data. `depth/` mimics the raw sensor (noise, 0 where the sensor
gives no return: grazing angles, dropouts, beyond `max_depth`);
`depth_bfx/` is the hole-free (in SUN RGB-D: inpainted) map.

Example:

```python
from keras_olm.embedded import rgbd_rooms

root = rgbd_rooms.generate()  # ~/.cache/keras_olm/rgbd_rooms-3-<hash>
train = (root / "train.txt").read_text().split()
```
"""

import io
import pathlib

import numpy as np

from keras_olm.data.image import encode_depth_bits
from keras_olm.data.sunrgbd import SENSORS
from keras_olm.data.sunrgbd import SUNRGBD_CLASSES
from keras_olm.embedded import _cache

VERSION = "3"
NAME = "rgbd_rooms"

# The 19 scene classes and sensor folders of the real set, shared with
# the reader so both always agree.
CLASSES = SUNRGBD_CLASSES
NUM_LAYOUTS = 10
NUM_PALETTES = 10


def class_layout(class_index):
    """Index of the layout (depth cue) of a class: shared in pairs."""
    return class_index // 2


def class_palette(class_index):
    """Index of the base palette of a class: shared in pairs, as layouts.

    The second class of a pair (`class_index` odd) renders a variant of
    it (`palette_variant`).
    """
    return class_index // 2


def is_palette_variant(class_index):
    """Whether a class renders the variant of its base palette."""
    return class_index % 2 == 1


def has_pillars(class_index):
    """Whether a class adds free-standing pillars to its layout (the
    depth cue that tells the two classes of a layout apart)."""
    return class_index % 2 == 1


PALETTE_SHIFT = 1.0
DARK_FRACTION = 0.25
PILLARS = 4
PILLAR_RADIUS = 0.25
COLOR_JITTER = 0.06
# A dark sample's image: the scene's luminance times DARK_GAIN plus
# Gaussian noise of standard deviation DARK_NOISE (intensities in [0, 1]).
DARK_GAIN = 0.08
DARK_NOISE = 0.05


def palette_variant(palette, shift=PALETTE_SHIFT):
    """The variant of a palette: colours rotated, textures changed.

    Every wall, floor and object colour moves the fraction `shift` of the
    way to its channel rotation (`(r, g, b)` towards `(g, b, r)`; the
    ceiling keeps its colour); the floor and wall textures change to
    other kinds.
    """
    wall, floor, ceil, objs, floor_tex, wall_tex = palette

    def rotate(c):
        c = np.asarray(c, np.float64)
        return tuple((1 - shift) * c + shift * c[[1, 2, 0]])

    return (
        rotate(wall),
        rotate(floor),
        ceil,
        tuple(rotate(c) for c in objs),
        (floor_tex + 2) % 4,
        (wall_tex + 3) % 6,
    )


# ---------------------------------------------------------------------------
# Palettes: (wall, floor, ceiling, object colours, floor and wall textures).
# Texture kinds: 0 plain, 1 checker tiles, 2 planks, 3 blotchy carpet,
# 4 vertical stripes, 5 bricks.
# ---------------------------------------------------------------------------

_PALETTES = (
    # wall, floor, ceiling, (obj a, obj b, obj c), floor tex, wall tex
    (
        (0.85, 0.88, 0.90),
        (0.55, 0.70, 0.80),
        (0.95, 0.95, 0.95),
        ((0.95, 0.95, 0.97), (0.40, 0.60, 0.75), (0.80, 0.82, 0.85)),
        1,
        1,
    ),
    (
        (0.80, 0.70, 0.80),
        (0.55, 0.40, 0.30),
        (0.92, 0.90, 0.92),
        ((0.70, 0.35, 0.50), (0.95, 0.85, 0.90), (0.45, 0.30, 0.25)),
        2,
        4,
    ),
    (
        (0.90, 0.85, 0.55),
        (0.45, 0.45, 0.45),
        (0.95, 0.95, 0.90),
        ((0.30, 0.50, 0.30), (0.75, 0.60, 0.35), (0.20, 0.25, 0.20)),
        1,
        0,
    ),
    (
        (0.70, 0.75, 0.70),
        (0.25, 0.30, 0.40),
        (0.85, 0.88, 0.85),
        ((0.15, 0.15, 0.18), (0.60, 0.62, 0.65), (0.30, 0.40, 0.60)),
        3,
        0,
    ),
    (
        (0.60, 0.45, 0.35),
        (0.35, 0.20, 0.15),
        (0.85, 0.80, 0.75),
        ((0.45, 0.25, 0.15), (0.20, 0.15, 0.12), (0.80, 0.70, 0.55)),
        2,
        5,
    ),
    (
        (0.45, 0.55, 0.75),
        (0.60, 0.60, 0.65),
        (0.90, 0.92, 0.95),
        ((0.90, 0.55, 0.20), (0.25, 0.35, 0.60), (0.90, 0.90, 0.90)),
        1,
        4,
    ),
    (
        (0.95, 0.95, 0.92),
        (0.80, 0.30, 0.25),
        (0.98, 0.98, 0.98),
        ((0.75, 0.80, 0.80), (0.85, 0.25, 0.20), (0.95, 0.95, 0.95)),
        1,
        0,
    ),
    (
        (0.55, 0.70, 0.55),
        (0.50, 0.45, 0.35),
        (0.90, 0.92, 0.88),
        ((0.35, 0.30, 0.25), (0.55, 0.75, 0.50), (0.85, 0.80, 0.70)),
        3,
        4,
    ),
    (
        (0.75, 0.60, 0.45),
        (0.30, 0.25, 0.35),
        (0.88, 0.85, 0.80),
        ((0.55, 0.20, 0.20), (0.35, 0.25, 0.20), (0.85, 0.75, 0.55)),
        3,
        5,
    ),
    (
        (0.40, 0.40, 0.45),
        (0.70, 0.65, 0.55),
        (0.80, 0.80, 0.82),
        ((0.85, 0.75, 0.30), (0.30, 0.60, 0.65), (0.20, 0.20, 0.22)),
        2,
        0,
    ),
)

# ---------------------------------------------------------------------------
# Layouts: room size (width, height, depth) and an object list.
# Objects: ("box", lo, hi, mat), ("sphere", centre, radius, mat),
# ("cyl", x, z, radius, y0, y1, mat); mat 0..2 are the palette's objects.
# The room spans x in [-w/2, w/2], y in [0, h], z in [0, d]; the camera
# stands near z = 0 looking towards +z.
# ---------------------------------------------------------------------------


def _jit(rng, scale):
    return rng.uniform(-scale, scale)


def _layout_objects(layout, rng, w, h, d):
    objs = []

    def box(x0, y0, z0, x1, y1, z1, mat):
        objs.append(("box", (x0, y0, z0), (x1, y1, z1), mat))

    if layout == 0:  # small room, one big low block against the back wall
        bw, bd = 1.6 + _jit(rng, 0.2), 1.9 + _jit(rng, 0.2)
        x = _jit(rng, 0.3)
        box(x - bw / 2, 0, d - bd, x + bw / 2, 0.55, d, 0)
        box(x - bw / 2, 0, d - 0.15, x + bw / 2, 1.1, d, 1)
        side = rng.choice([-1, 1])
        sx = side * (w / 2 - 0.3)
        box(sx - 0.25, 0, d - 0.6, sx + 0.25, 0.6, d - 0.1, 2)
        objs.append(("sphere", (sx, 0.75, d - 0.35), 0.15, 1))
    elif layout == 1:  # rows of desks
        for row in range(3):
            for col in (-1, 0, 1):
                cx = col * 1.4 + _jit(rng, 0.1)
                cz = 2.0 + row * 1.4 + _jit(rng, 0.1)
                box(cx - 0.5, 0.7, cz - 0.3, cx + 0.5, 0.76, cz + 0.3, 0)
                box(cx - 0.45, 0, cz - 0.25, cx - 0.4, 0.7, cz + 0.25, 2)
                box(cx + 0.4, 0, cz - 0.25, cx + 0.45, 0.7, cz + 0.25, 2)
                box(cx - 0.2, 0.76, cz, cx + 0.2, 1.05, cz + 0.05, 1)
    elif layout == 2:  # one long central table with chairs along it
        tl = 3.0 + _jit(rng, 0.4)
        z0 = 1.8 + _jit(rng, 0.2)
        x = _jit(rng, 0.2)
        box(x - 0.6, 0.72, z0, x + 0.6, 0.78, z0 + tl, 0)
        box(x - 0.1, 0, z0 + 0.2, x + 0.1, 0.72, z0 + tl - 0.2, 2)
        n = int(tl / 0.7)
        for i in range(n):
            cz = z0 + 0.35 + i * 0.7
            for s in (-1, 1):
                cx = x + s * 0.85
                box(cx - 0.2, 0, cz - 0.2, cx + 0.2, 0.45, cz + 0.2, 1)
                bx = cx + s * 0.18
                box(bx - 0.03, 0.45, cz - 0.2, bx + 0.03, 0.95, cz + 0.2, 1)
    elif layout == 3:  # corridor: doors and ceiling lamps
        for i in range(4):
            z = 1.5 + i * 1.6 + _jit(rng, 0.2)
            s = -1 if i % 2 else 1
            x = s * w / 2
            box(x - 0.06, 0, z, x + 0.06, 2.0, z + 0.9, 1)
            box(-0.3, h - 0.05, z, 0.3, h, z + 0.25, 2)
    elif layout == 4:  # round tables with spherical stools
        for i in range(3):
            cx = (-1.2, 1.2, 0.0)[i] + _jit(rng, 0.2)
            cz = (2.2, 2.4, 4.0)[i] + _jit(rng, 0.2)
            objs.append(("cyl", cx, cz, 0.6, 0.7, 0.76, 0))
            objs.append(("cyl", cx, cz, 0.06, 0.0, 0.7, 2))
            for a in rng.uniform(0, 2 * np.pi) + np.arange(3) * 2.1:
                sx, sz = cx + 0.9 * np.cos(a), cz + 0.9 * np.sin(a)
                objs.append(("sphere", (sx, 0.25, sz), 0.25, 1))
    elif layout == 5:  # counters along both side walls, cabinets above
        for s in (-1, 1):
            x0, x1 = (-w / 2, -w / 2 + 0.6) if s < 0 else (w / 2 - 0.6, w / 2)
            box(x0, 0, 0.8, x1, 0.9, d, 0)
            box(x0, 0.9, 0.8, x1, 0.94, d, 2)
        x0, x1 = -w / 2, -w / 2 + 0.35
        box(x0, 1.5, 1.5, x1, 2.2, d, 1)
        box(-0.5, 0, d - 0.6, 0.5, 1.8, d, 1)
    elif layout == 6:  # tiered floor rising towards the back, desks on it
        steps = 5
        for i in range(steps):
            z0 = 1.5 + i * 0.9
            box(-w / 2, 0, z0, w / 2, 0.25 * (i + 1), d, 2)
            box(
                -w / 2 + 0.3,
                0.25 * (i + 1),
                z0 + 0.1,
                w / 2 - 0.3,
                0.25 * (i + 1) + 0.75,
                z0 + 0.3,
                0,
            )
    elif layout == 7:  # tall shelves in rows across the view
        for i in range(3):
            z = 2.0 + i * 1.5 + _jit(rng, 0.15)
            gap = 0.5 + _jit(rng, 0.15)
            box(-w / 2, 0, z, -gap, 2.1, z + 0.4, 0)
            box(gap, 0, z, w / 2, 2.1, z + 0.4, 1)
    elif layout == 8:  # cubicle partitions
        for row in range(2):
            z = 2.0 + row * 2.0 + _jit(rng, 0.15)
            for cx in (-1.5, 0.0, 1.5):
                cx += _jit(rng, 0.1)
                box(cx - 0.7, 0, z, cx + 0.7, 1.4, z + 0.05, 1)
                box(cx - 0.03, 0, z, cx + 0.03, 1.4, z + 1.2, 1)
                box(cx + 0.05, 0.72, z + 0.05, cx + 0.65, 0.76, z + 0.7, 0)
    elif layout == 9:  # sofas around a low table, two pillars
        x = _jit(rng, 0.3)
        box(x - 1.3, 0, 3.8, x + 1.3, 0.45, 4.6, 0)
        box(x - 1.3, 0.45, 4.4, x + 1.3, 0.9, 4.6, 0)
        box(x - 1.3, 0, 2.4, x - 0.6, 0.45, 3.8, 0)
        box(x - 0.4, 0, 2.8, x + 0.5, 0.35, 3.4, 2)
        for px in (-w / 2 + 0.5, w / 2 - 0.5):
            objs.append(("cyl", px, 2.0 + _jit(rng, 0.3), 0.25, 0, h, 1))
        objs.append(("sphere", (x + 1.0, 0.3, 2.9), 0.3, 1))
    else:
        raise ValueError(f"Unknown layout {layout}.")

    # Object jitter: drop some furniture, move and rescale the rest.
    kept = []
    for obj in objs:
        if len(objs) > 4 and rng.uniform() < 0.12:
            continue
        if obj[0] == "box":
            lo, hi = np.array(obj[1], float), np.array(obj[2], float)
            shift = np.array([_jit(rng, 0.12), 0.0, _jit(rng, 0.12)])
            scale = 1.0 + _jit(rng, 0.1)
            c = (lo + hi) / 2 + shift
            half = (hi - lo) / 2 * np.array([scale, 1.0, scale])
            lo, hi = c - half, c + half
            hi[1] = lo[1] + (obj[2][1] - obj[1][1]) * (1 + _jit(rng, 0.08))
            kept.append(("box", lo, hi, obj[3]))
        elif obj[0] == "sphere":
            c = np.array(obj[1], float)
            c[[0, 2]] += rng.uniform(-0.12, 0.12, 2)
            kept.append(("sphere", c, obj[2] * (1 + _jit(rng, 0.1)), obj[3]))
        else:
            _, cx, cz, r, y0, y1, mat = obj
            kept.append(
                (
                    "cyl",
                    cx + _jit(rng, 0.1),
                    cz + _jit(rng, 0.1),
                    r * (1 + _jit(rng, 0.1)),
                    y0,
                    y1,
                    mat,
                )
            )
    return kept


_ROOM_SIZE = (  # width, height, depth in metres, per layout
    (3.0, 2.5, 3.6),
    (5.0, 2.8, 6.2),
    (4.0, 2.7, 6.0),
    (1.8, 2.6, 7.4),
    (4.4, 2.8, 5.4),
    (3.0, 2.6, 5.0),
    (6.0, 3.4, 6.6),
    (4.0, 2.6, 6.8),
    (5.2, 2.7, 6.0),
    (5.6, 3.0, 5.4),
)

# ---------------------------------------------------------------------------
# Ray casting. Rays are not normalised: in the camera frame their z
# component is 1, so the hit parameter t is the z-depth directly.
# ---------------------------------------------------------------------------


def _rot(yaw, pitch):
    cy, sy, cp, sp = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch)
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    return ry @ rx


def _safe_div(a, b):
    with np.errstate(divide="ignore", invalid="ignore"):
        out = a / b
    return np.where(np.abs(b) < 1e-12, np.inf, out)


def _hit_box(o, inv_t, lo, hi):
    """Slab test against an axis-aligned box.

    Args:
        o: the ray origin, `(3,)`.
        inv_t: `(3, N)` reciprocal ray directions, component-major (zero
            components replaced by tiny ones so no NaN arises).
        lo, hi: the box corners, `(3,)` each.

    Returns:
        `(t, axis)`: the entry distance (`inf` on a miss) and the axis of
        the face hit, per ray.
    """
    tn = np.full(inv_t.shape[1], -np.inf)
    tf = np.full(inv_t.shape[1], np.inf)
    axis = np.zeros(inv_t.shape[1], np.int64)
    for k in range(3):
        t1 = (lo[k] - o[k]) * inv_t[k]
        t2 = (hi[k] - o[k]) * inv_t[k]
        tmin = np.minimum(t1, t2)
        later = tmin > tn
        tn = np.where(later, tmin, tn)
        axis[later] = k
        np.minimum(tf, np.maximum(t1, t2), out=tf)
    hit = (tn <= tf) & (tn > 1e-4)
    return np.where(hit, tn, np.inf), axis


def _hit_sphere(o, dirs, c, r):
    oc = o - c
    a = np.einsum("ij,ij->i", dirs, dirs)
    b = 2 * dirs @ oc
    cc = oc @ oc - r * r
    disc = b * b - 4 * a * cc
    with np.errstate(invalid="ignore"):
        t = (-b - np.sqrt(disc)) / (2 * a)
    t = np.where((disc > 0) & (t > 1e-4), t, np.inf)
    p = o + dirs * np.where(np.isfinite(t), t, 0)[:, None]
    return t, (p - c) / r


def _hit_cylinder(o, dirs, cx, cz, r, y0, y1):
    ox, oz = o[0] - cx, o[2] - cz
    dx, dz = dirs[:, 0], dirs[:, 2]
    a = dx * dx + dz * dz
    b = 2 * (ox * dx + oz * dz)
    cc = ox * ox + oz * oz - r * r
    disc = b * b - 4 * a * cc
    with np.errstate(invalid="ignore", divide="ignore"):
        ts = (-b - np.sqrt(disc)) / (2 * a)
    ys = o[1] + ts * dirs[:, 1]
    ts = np.where(
        (disc > 0) & (ts > 1e-4) & (ys >= y0) & (ys <= y1), ts, np.inf
    )
    normal = np.zeros_like(dirs)
    with np.errstate(invalid="ignore"):
        normal[:, 0] = (ox + ts * dx) / r
        normal[:, 2] = (oz + ts * dz) / r
    best = ts
    for yc, ny in ((y1, 1.0), (y0, -1.0)):
        tc = _safe_div(np.full(len(dirs), yc - o[1]), dirs[:, 1])
        px, pz = ox + tc * dx, oz + tc * dz
        ok = (tc > 1e-4) & (px * px + pz * pz <= r * r) & (tc < best)
        best = np.where(ok, tc, best)
        normal[ok] = (0.0, ny, 0.0)
    return best, normal


def _texture(kind, u, v, scale, phase):
    """Brightness factor of a procedural texture at surface coords (u, v)."""
    if kind == 0:  # plain
        return np.ones_like(u)
    if kind == 1:  # checker tiles with grout lines
        s = 0.45 * scale
        fu, fv = (u + phase) / s, (v + phase) / s
        chk = (np.floor(fu) + np.floor(fv)) % 2
        grout = (np.abs(fu - np.round(fu)) < 0.05) | (
            np.abs(fv - np.round(fv)) < 0.05
        )
        return np.where(grout, 0.6, 0.85 + 0.3 * chk)
    if kind == 2:  # planks along v with grain
        s = 0.22 * scale
        plank = np.floor((u + phase) / s)
        shade = 0.85 + 0.25 * ((plank * 0.618) % 1.0)
        grain = 0.06 * np.sin(40 * v / scale + 7 * plank)
        return shade + grain
    if kind == 3:  # blotchy carpet
        return (
            1.0
            + 0.12 * np.sin(7.3 * u / scale + phase) * np.sin(6.1 * v / scale)
            + 0.08 * np.sin(23.0 * (u + v) / scale + 2 * phase)
        )
    if kind == 4:  # vertical stripes
        s = 0.3 * scale
        return 0.8 + 0.35 * (np.floor((u + phase) / s) % 2)
    if kind == 5:  # bricks
        bh, bw = 0.15 * scale, 0.4 * scale
        row = np.floor(v / bh)
        fu = (u + phase + 0.5 * bw * (row % 2)) / bw
        mortar = (np.abs(v / bh - np.round(v / bh)) < 0.08) | (
            np.abs(fu - np.round(fu)) < 0.04
        )
        return np.where(mortar, 1.25, 0.8 + 0.15 * ((row * 0.37) % 1.0))
    raise ValueError(kind)


def render_sample(
    class_index,
    sample_index,
    seed=0,
    image_size=64,
    palette_shift=PALETTE_SHIFT,
    dark_fraction=DARK_FRACTION,
    pillars=PILLARS,
    pillar_radius=PILLAR_RADIUS,
    color_jitter=COLOR_JITTER,
):
    """Render one RGB-D sample of a class, deterministically.

    The rendering depends only on `(seed, class_index, sample_index,
    image_size, palette_shift)`, so sample `i` of a class is the same
    whatever the number of samples generated.

    Args:
        class_index: int. Index into `CLASSES`.
        sample_index: int. Index of the sample within its class.
        seed: int. Global random seed. Defaults to `0`.
        image_size: int. Height and width in pixels. Defaults to `64`.
        palette_shift: float. How far a variant palette's colours move
            from its base palette's (`palette_variant`); `0` leaves only
            the textures to tell them apart. Defaults to `1.0`.
        dark_fraction: float. Probability that the sample is captured in
            the dark (grey, dim, noisy image; depth unaffected). Defaults
            to `0.25`.
        pillars: int. Pillars added to the layout of the second class of
            a pair (`has_pillars`). Defaults to `4`.
        pillar_radius: float. Their radius in metres. Defaults to `0.25`.
        color_jitter: float. Per-sample colour jitter: palette colours
            scaled by 1 +- `color_jitter` per channel, plus noise and a
            light tint in proportion. Defaults to `0.06`.

    Returns:
        A dict with `"rgb"` (uint8, `(image_size, image_size, 3)`),
        `"depth"` (uint16 millimetres, raw sensor with holes set to 0),
        `"depth_bfx"` (uint16 millimetres, hole-free), `"depth_true"`
        (float64 millimetres, the exact rendered z-depth before noise) and
        `"intrinsics"` (float64 `(3, 3)` camera matrix).
    """
    rng = np.random.default_rng([seed, class_index, sample_index, 7919])
    layout = class_layout(class_index)
    palette = _PALETTES[class_palette(class_index)]
    if is_palette_variant(class_index):
        palette = palette_variant(palette, palette_shift)
    wall, floor, ceil, obj_cols, floor_tex, wall_tex = palette

    # Room and camera.
    w, h, d = np.array(_ROOM_SIZE[layout]) * rng.uniform(0.9, 1.1, 3)
    objects = _layout_objects(layout, rng, w, h, d)
    # Pillars and darkness draw from their own stream.
    vrng = np.random.default_rng([seed, class_index, sample_index, 7927])
    if has_pillars(class_index):
        for _ in range(pillars):
            px = vrng.uniform(-w / 2 + 0.3, w / 2 - 0.3)
            pz = vrng.uniform(1.2, d - 0.4)
            objects.append(("cyl", px, pz, pillar_radius, 0.0, h, 1))
    dark = vrng.uniform() < dark_fraction
    fov = np.deg2rad(rng.uniform(55, 68))
    f = image_size / (2 * np.tan(fov / 2))
    c0 = (image_size - 1) / 2
    intr = np.array([[f, 0, c0], [0, f, c0], [0, 0, 1.0]])
    cam = np.array(
        [
            rng.uniform(-0.2, 0.2) * w,
            rng.uniform(1.2, 1.7),
            rng.uniform(0.15, 0.45),
        ]
    )
    rot = _rot(np.deg2rad(rng.uniform(-15, 15)), np.deg2rad(rng.uniform(6, 22)))
    v, u = np.mgrid[0:image_size, 0:image_size].astype(np.float64)
    dirs_cam = np.stack(
        [(u - c0) / f, -(v - c0) / f, np.ones_like(u)], axis=-1
    ).reshape(-1, 3)
    dirs = dirs_cam @ rot.T
    n = len(dirs)

    # Room shell: the exit point of the room's box. Materials: 3 floor,
    # 4 ceiling, 5 side walls, 6 back/front wall.
    lo = np.array([-w / 2, 0.0, 0.0])
    hi = np.array([w / 2, h, d])
    texit = np.where(
        dirs > 0, _safe_div(hi - cam, dirs), _safe_div(lo - cam, dirs)
    )
    axis = texit.argmin(axis=1)
    t = texit[np.arange(n), axis]
    normal = np.zeros_like(dirs)
    normal[np.arange(n), axis] = -np.sign(dirs[np.arange(n), axis])
    mat = np.where(axis == 0, 5, np.where(axis == 2, 6, 0))
    mat = np.where((axis == 1) & (dirs[:, 1] < 0), 3, mat)
    mat = np.where((axis == 1) & (dirs[:, 1] > 0), 4, mat)

    safe = np.where(np.abs(dirs) < 1e-12, 1e-12, dirs)
    inv_t = np.ascontiguousarray((1.0 / safe).T)
    rows = np.arange(n)
    for obj in objects:
        if obj[0] == "box":
            to, ax = _hit_box(cam, inv_t, obj[1], obj[2])
            closer = to < t
            t = np.where(closer, to, t)
            r, a = rows[closer], ax[closer]
            normal[r] = 0.0
            normal[r, a] = -np.sign(dirs[r, a])
            mat = np.where(closer, obj[-1], mat)
            continue
        if obj[0] == "sphere":
            to, no = _hit_sphere(cam, dirs, obj[1], obj[2])
        else:
            to, no = _hit_cylinder(cam, dirs, *obj[1:6])
        closer = to < t
        t = np.where(closer, to, t)
        normal[closer] = no[closer]
        mat = np.where(closer, obj[-1], mat)

    p = cam + dirs * t[:, None]

    # Colours with per-sample palette jitter.
    cols = np.array([*obj_cols, floor, ceil, wall, wall], dtype=np.float64)
    cols = cols * rng.uniform(1 - color_jitter, 1 + color_jitter, (1, 3))
    cols = cols + rng.normal(0, 0.04 * color_jitter / 0.15, cols.shape)
    base = np.clip(cols, 0.02, 1.0)[mat]

    tex = np.ones(n)
    tscale, phase = rng.uniform(0.8, 1.25), rng.uniform(0, 1)
    m = mat == 3
    tex[m] = _texture(floor_tex, p[m, 0], p[m, 2], tscale, phase)
    m = mat == 5
    tex[m] = _texture(wall_tex, p[m, 2], p[m, 1], tscale, phase)
    m = mat == 6
    tex[m] = _texture(wall_tex, p[m, 0], p[m, 1], tscale, phase)
    m = mat < 3
    tex[m] = 1.0 + 0.04 * np.sin(31 * (p[m, 0] + p[m, 1] + p[m, 2]))

    # Lighting: a ceiling point light plus ambient, tinted per sample.
    light = np.array(
        [rng.uniform(-0.4, 0.4) * w, h - 0.1, rng.uniform(0.3, 0.8) * d]
    )
    to_l = light - p
    dist = np.linalg.norm(to_l, axis=1)
    lam = np.clip(np.einsum("ij,ij->i", normal, to_l) / dist, 0, None)
    power = rng.uniform(3.0, 7.0)
    diffuse = power * lam / (1.0 + dist**2)
    ambient = rng.uniform(0.25, 0.45)
    tint = np.array([1.0, 1.0, 1.0]) + rng.normal(0, 0.4 * color_jitter, 3)
    rgb = base * tex[:, None] * (ambient + diffuse)[:, None] * tint
    rgb = rgb ** (1 / 1.4)  # soft gamma
    rgb += rng.normal(0, 0.02, rgb.shape)
    if dark:  # night mode: grey, dim and noisy
        lum = rgb @ np.array([0.299, 0.587, 0.114])
        lum = lum * DARK_GAIN + vrng.normal(0, DARK_NOISE, n)
        rgb = np.repeat(lum[:, None], 3, axis=1)
    rgb = np.clip(rgb * 255 + 0.5, 0, 255).astype(np.uint8)

    # Depth: z-depth in mm; Kinect-like noise growing with depth squared.
    depth_true = t * 1000.0
    z_m = t
    noisy = depth_true + rng.normal(0, 1.0 + 2.85 * z_m**2, n)
    bfx = np.clip(np.round(noisy), 1, 65535).astype(np.uint16)
    # Raw: holes at grazing angles, random dropouts and beyond max range.
    cos_view = np.abs(np.einsum("ij,ij->i", normal, dirs)) / np.linalg.norm(
        dirs, axis=1
    )
    holes = (cos_view < 0.12) & (rng.uniform(size=n) < 0.7)
    holes |= rng.uniform(size=n) < 0.01
    holes |= depth_true > 8000
    raw = np.where(holes, 0, bfx).astype(np.uint16)

    s = (image_size, image_size)
    return {
        "rgb": rgb.reshape(*s, 3),
        "depth": raw.reshape(s),
        "depth_bfx": bfx.reshape(s),
        "depth_true": depth_true.reshape(s),
        "intrinsics": intr,
    }


def _save_png16(path, array):
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(array, dtype=np.uint16)).save(path)


def _save_jpeg(path, rgb, quality):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    pathlib.Path(path).write_bytes(buf.getvalue())


def _plan(samples_per_class, seed, test_fraction):
    """(class, index, sensor, name, split) for every sample, deterministic."""
    rng = np.random.default_rng([seed, 104729])
    n_test = int(round(samples_per_class * test_fraction))
    if samples_per_class >= 2:
        n_test = min(max(n_test, 1), samples_per_class - 1)
    rows = []
    for c in range(len(CLASSES)):
        is_test = np.zeros(samples_per_class, bool)
        is_test[rng.permutation(samples_per_class)[:n_test]] = True
        for i in range(samples_per_class):
            k = c * samples_per_class + i
            sensor = SENSORS[rng.integers(len(SENSORS))]
            split = "test" if is_test[i] else "train"
            rows.append((c, i, sensor, f"room_{k:06d}", split))
    return rows


def generate(
    root=None,
    samples_per_class=80,
    seed=0,
    image_size=64,
    test_fraction=0.5,
    jpeg_quality=95,
    palette_shift=PALETTE_SHIFT,
    dark_fraction=DARK_FRACTION,
    pillars=PILLARS,
    pillar_radius=PILLAR_RADIUS,
    color_jitter=COLOR_JITTER,
    overwrite=False,
    verbose=True,
):
    """Generate (once) the RGB-D rooms dataset in the SUN RGB-D layout.

    The dataset is written into a temporary directory and renamed into place
    when complete; a later call with the same arguments returns the cached
    directory without regenerating. See the module docstring for the exact
    layout and split-file format.

    With the defaults RGB dominates (as in SUN RGB-D), depth is weaker
    and slower to learn, and neither is perfect (see the module
    docstring); `python -m keras_olm.embedded._measure rgbd_rooms`
    checks each modality alone with logistic regression on pixels.
    Generating the defaults (1,520 samples) takes about 15 s on two CPU
    cores.

    Args:
        root: str or path. Directory to write the dataset into (must be
            absent, empty, or a dataset generated with the same
            parameters). Defaults to
            `$KERAS_OLM_CACHE/rgbd_rooms-<version>-<hash of the parameters>`
            where `$KERAS_OLM_CACHE` defaults to `~/.cache/keras_olm`.
        samples_per_class: int. Samples rendered for each of the 19
            classes. Defaults to `80`.
        seed: int. Random seed; the same seed gives the same files.
            Defaults to `0`.
        image_size: int. Height and width of RGB and depth images.
            Defaults to `64`.
        test_fraction: float. Fraction of each class listed in `test.txt`
            (SUN RGB-D's official split is about half and half). Defaults
            to `0.5`.
        jpeg_quality: int. JPEG quality of the RGB images. Defaults to `95`.
        palette_shift: float. How far the colours of a variant palette
            move from its base palette's (see the module docstring); lower
            makes RGB alone confuse the two classes more. Defaults to
            `1.0`.
        dark_fraction: float. Fraction of samples captured in the dark:
            their image is a grey, dim, noisy picture that tells almost
            nothing; their depth is unaffected. Defaults to `0.25`.
        pillars: int. Free-standing floor-to-ceiling pillars, at random
            places, that the second class of each layout adds (the depth
            cue within a pair). Defaults to `4`.
        pillar_radius: float. Radius of the pillars in metres. Defaults
            to `0.25`.
        color_jitter: float. Per-sample jitter of the palette's colours
            (scaled by 1 +- `color_jitter` per channel, plus proportional
            noise and light tint); higher makes palettes harder to tell
            apart. Defaults to `0.06`.
        overwrite: bool. Regenerate even if a complete copy exists.
            Defaults to `False`.
        verbose: bool. Show a progress bar while generating. Defaults to
            `True`.

    Returns:
        The dataset root as a `pathlib.Path`.

    Example:

    ```python
    root = keras_olm.embedded.rgbd_rooms.generate(samples_per_class=20)
    sample = (root / "train.txt").read_text().split()[0]
    print((root / sample / "scene.txt").read_text())
    ```
    """
    if samples_per_class < 1:
        raise ValueError("`samples_per_class` must be at least 1.")
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError("`test_fraction` must be in [0, 1].")
    if image_size < 8:
        raise ValueError("`image_size` must be at least 8.")
    if not 1 <= jpeg_quality <= 100:
        raise ValueError("`jpeg_quality` must be in [1, 100].")
    if not 0.0 <= dark_fraction <= 1.0:
        raise ValueError("`dark_fraction` must be in [0, 1].")
    if pillars < 0 or pillar_radius <= 0 or not 0 <= color_jitter < 1:
        raise ValueError(
            "`pillars` must be >= 0, `pillar_radius` > 0 and "
            "`color_jitter` in [0, 1)."
        )
    params = {
        "samples_per_class": int(samples_per_class),
        "seed": int(seed),
        "image_size": int(image_size),
        "test_fraction": float(test_fraction),
        "jpeg_quality": int(jpeg_quality),
        "palette_shift": float(palette_shift),
        "dark_fraction": float(dark_fraction),
        "pillars": int(pillars),
        "pillar_radius": float(pillar_radius),
        "color_jitter": float(color_jitter),
    }
    render_args = {
        "palette_shift": float(palette_shift),
        "dark_fraction": float(dark_fraction),
        "pillars": int(pillars),
        "pillar_radius": float(pillar_radius),
        "color_jitter": float(color_jitter),
    }
    plan = _plan(samples_per_class, seed, test_fraction)

    def writer(tmp, final):
        progress = _cache.Progress(
            len(plan), verbose, f"Generating {NAME} into {final}"
        )
        splits = {"train": [], "test": []}
        for c, i, sensor, name, split in plan:
            s = render_sample(
                c,
                i,
                seed=seed,
                image_size=image_size,
                **render_args,
            )
            folder = tmp / sensor / name
            for sub in ("image", "depth", "depth_bfx"):
                (folder / sub).mkdir(parents=True)
            _save_jpeg(folder / "image" / f"{name}.jpg", s["rgb"], jpeg_quality)
            _save_png16(
                folder / "depth" / f"{name}.png", encode_depth_bits(s["depth"])
            )
            _save_png16(
                folder / "depth_bfx" / f"{name}.png",
                encode_depth_bits(s["depth_bfx"]),
            )
            (folder / "scene.txt").write_text(CLASSES[c])
            k = s["intrinsics"]
            (folder / "intrinsics.txt").write_text(
                "".join(" ".join(f"{x:.6g}" for x in row) + "\n" for row in k)
            )
            splits[split].append(f"{sensor}/{name}")
            progress.update()
        for split, rows in splits.items():
            (tmp / f"{split}.txt").write_text(
                "".join(r + "\n" for r in sorted(rows))
            )

    return _cache.generate_atomically(
        writer, NAME, VERSION, params, root=root, overwrite=overwrite
    )
