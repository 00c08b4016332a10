"""Images, video frames and depth maps in tf.data.

Layouts: an image is `(height, width, 3)` float32; K frames of a clip are
`(K, height, width, 3)` (or `(height, width, 3)` when K is 1 and
`squeeze=True`); a depth map is `(height, width, 1)` float32 metres (or
normalized, see `load_sunrgbd_depth`). All channels-last.
"""

import os

import numpy as np
import tensorflow as tf

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

NORMALIZATIONS = ("imagenet", "unit", None)

_IMAGENET_SCALE = 1.0 / (255.0 * np.array(IMAGENET_STD, np.float32))
_IMAGENET_OFFSET = -np.array(IMAGENET_MEAN, np.float32) / np.array(
    IMAGENET_STD, np.float32
)

# SUN RGB-D toolbox: depth beyond 8 m is clamped.
SUNRGBD_MAX_DEPTH = 8.0


def image_size_pair(size, where="image_size"):
    """`(height, width)` from an int (a square) or a pair of ints.

    Args:
        size: int or a pair of ints, each >= 1.
        where: str. The argument's name, for the error message.

    Returns:
        A tuple `(height, width)` of ints.
    """
    if isinstance(size, (int, np.integer)):
        pair = (size, size)
    else:
        try:
            pair = tuple(size)
        except TypeError:
            pair = ()
    if len(pair) != 2 or not all(
        isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 1
        for s in pair
    ):
        raise ValueError(
            f"{where} must be an int or a (height, width) pair of ints "
            f">= 1; got {size!r}."
        )
    return tuple(int(s) for s in pair)


def _check_normalize(normalize):
    if normalize not in NORMALIZATIONS:
        raise ValueError(
            f"`normalize` must be one of {NORMALIZATIONS}; "
            f"received normalize={normalize!r}."
        )


def decode_image(contents, size=(224, 224), normalize="imagenet"):
    """Decodes JPEG/PNG bytes, resizes and normalizes them.

    Args:
        contents: scalar string tensor. The encoded image.
        size: tuple `(height, width)` or None. Bilinear resize target;
            `None` keeps the size. Defaults to `(224, 224)`.
        normalize: str or None. `"imagenet"`: `(x / 255 - mean) / std`
            with the ImageNet mean and std; `"unit"`: `x / 255` in [0, 1];
            `None`: raw 0-255 floats. Defaults to `"imagenet"`.

    Returns:
        float32 tensor `(height, width, 3)`.
    """
    _check_normalize(normalize)
    image = tf.io.decode_image(contents, channels=3, expand_animations=False)
    if size is not None:
        # Resizes the uint8 pixels and returns float32: no float copy of
        # the full-size image first.
        image = tf.image.resize(image, size, method="bilinear")
        image = tf.ensure_shape(image, [size[0], size[1], 3])
    else:
        image = tf.cast(image, tf.float32)
    if normalize == "imagenet":
        # (x / 255 - mean) / std as one multiply and one add.
        image = image * _IMAGENET_SCALE + _IMAGENET_OFFSET
    elif normalize == "unit":
        image = image / 255.0
    return image


def load_image(path, size=(224, 224), normalize="imagenet"):
    """Reads and decodes one JPEG/PNG file (see `decode_image`).

    Args:
        path: scalar string tensor. The image file.
        size: tuple `(height, width)` or None. Defaults to `(224, 224)`.
        normalize: str or None. Defaults to `"imagenet"`.

    Returns:
        float32 tensor `(height, width, 3)`.

    Example:

    ```python
    ds = tf.data.Dataset.from_tensor_slices(["a.jpg", "b.png"])
    ds = ds.map(load_image, num_parallel_calls=tf.data.AUTOTUNE)
    ```
    """
    return decode_image(tf.io.read_file(path), size, normalize)


def sample_frame_indices(num_frames, k, training=False, seed=None):
    """Chooses `k` frame indices of a clip, in temporal order.

    In evaluation the choice is fixed: evenly spaced centres,
    `floor((i + 0.5) * num_frames / k)`. In training it is random (`k`
    distinct frames, sorted), deterministic given `seed`. Clips with fewer
    than `k` frames repeat frames.

    Args:
        num_frames: int32 scalar tensor. Frames in the clip (> 0).
        k: int. Frames to pick.
        training: bool. Random (True) or fixed (False). Defaults to
            `False`.
        seed: int32 tensor of shape `(2,)` or None. Stateless seed for the
            random choice; needed when `training=True`. Defaults to `None`.

    Returns:
        int32 tensor `(k,)`.
    """
    num_frames = tf.cast(num_frames, tf.int32)
    if not training:
        centres = (tf.range(k, dtype=tf.float32) + 0.5) / k
        idx = tf.cast(centres * tf.cast(num_frames, tf.float32), tf.int32)
        return tf.minimum(idx, num_frames - 1)
    if seed is None:
        raise ValueError("`seed` is required when `training=True`.")
    noise = tf.random.stateless_uniform([num_frames], seed=seed)
    order = tf.argsort(noise)
    # Repeat the permutation when the clip is shorter than k frames.
    reps = (k + num_frames - 1) // num_frames
    order = tf.tile(order, [reps])[:k]
    return tf.sort(order)


def load_frames(
    frame_paths,
    k=1,
    training=False,
    seed=None,
    size=(224, 224),
    normalize="imagenet",
    squeeze=True,
):
    """Samples and decodes `k` frames of a clip.

    Args:
        frame_paths: 1-D string tensor. The clip's frame files, in order.
        k: int. Frames to sample. Defaults to `1`.
        training: bool. Random frames (True) or evenly spaced (False).
            Defaults to `False`.
        seed: int32 tensor `(2,)` or None. Stateless seed (training).
            Defaults to `None`.
        size: tuple `(height, width)`. Defaults to `(224, 224)`.
        normalize: str or None. See `decode_image`. Defaults to
            `"imagenet"`.
        squeeze: bool. Return `(height, width, 3)` when `k == 1`. Defaults
            to `True`.

    Returns:
        float32 tensor `(k, height, width, 3)`, or `(height, width, 3)`.
    """
    idx = sample_frame_indices(tf.size(frame_paths), k, training, seed)
    chosen = tf.gather(frame_paths, idx)
    if k == 1:
        # One frame (CREMA-D's case): no loop around the decode.
        frame = load_image(chosen[0], size, normalize)
        return frame if squeeze else frame[None]
    frames = tf.map_fn(
        lambda p: load_image(p, size, normalize),
        chosen,
        fn_output_signature=tf.TensorSpec([size[0], size[1], 3], tf.float32),
    )
    return frames


# --------------------------------------------------------------------------
# SUN RGB-D depth.


def rotate_depth_bits(raw):
    """Undoes SUN RGB-D's storage: `(raw >> 3) | (raw << 13)` in uint16.

    The tf.data twin of `decode_depth_bits`.

    Args:
        raw: uint16 tensor, as decoded from the PNG.

    Returns:
        uint16 tensor of depth in millimetres.
    """
    raw = tf.convert_to_tensor(raw, tf.uint16)
    three = tf.constant(3, tf.uint16)
    thirteen = tf.constant(13, tf.uint16)
    return tf.bitwise.bitwise_or(
        tf.bitwise.right_shift(raw, three), tf.bitwise.left_shift(raw, thirteen)
    )


def decode_depth_bits(raw):
    """Undoes SUN RGB-D's storage, in numpy: `(raw >> 3) | (raw << 13)`.

    The numpy twin of `rotate_depth_bits` and the inverse of
    `encode_depth_bits`, in 16-bit arithmetic as the toolbox computes it.

    Args:
        raw: uint16 array-like, as decoded from the PNG.

    Returns:
        numpy uint16 array of depth in millimetres.
    """
    raw = np.asarray(raw, dtype=np.uint16)
    return ((raw >> np.uint16(3)) | (raw << np.uint16(13))).astype(np.uint16)


def encode_depth_bits(depth_mm):
    """SUN RGB-D's storage of millimetres: `(mm << 3) | (mm >> 13)`.

    The inverse of `decode_depth_bits` (and of `rotate_depth_bits`), in
    16-bit arithmetic.

    Args:
        depth_mm: uint16 array-like. Depth in millimetres.

    Returns:
        numpy uint16 array, as stored in SUN RGB-D depth PNGs.
    """
    mm = np.asarray(depth_mm, dtype=np.uint16)
    return ((mm << np.uint16(3)) | (mm >> np.uint16(13))).astype(np.uint16)


def encode_sunrgbd_depth(depth_m):
    """Encodes metres as SUN RGB-D stores them (inverse bit rotation).

    Use it to write depth PNGs (e.g. with Pillow or
    `tf.io.encode_png`) that `load_sunrgbd_depth` reads back.

    Args:
        depth_m: array-like of float depth in metres (0 means missing).

    Returns:
        numpy uint16 array: `(mm << 3) | (mm >> 13)`.

    Example:

    ```python
    raw = encode_sunrgbd_depth(np.full((4, 4), 1.5))
    tf.io.write_file("d.png", tf.io.encode_png(raw[..., None]))
    ```
    """
    mm = np.round(np.asarray(depth_m, np.float64) * 1000.0)
    return encode_depth_bits(np.clip(mm, 0, 65535).astype(np.uint16))


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_COLOURS = {
    0: "greyscale",
    2: "RGB",
    3: "palette",
    4: "greyscale-alpha",
    6: "RGBA",
}
_DEPTH_FORMAT = (
    "SUN RGB-D depth maps are 16-bit single-channel (greyscale) PNGs"
)


def _check_depth_png(contents):
    """`contents`, after an assertion that they are a 16-bit greyscale
    PNG (its IHDR header: bit depth 16, colour type 0)."""
    head = tf.strings.substr(contents, 0, 26) + b"\0" * 26
    head = tf.io.decode_raw(tf.strings.substr(head, 0, 26), tf.uint8)
    expected = list(_PNG_SIGNATURE) + [0] * 4 + list(b"IHDR")
    ok = tf.reduce_all(tf.equal(head[:8], expected[:8]))
    ok = tf.logical_and(ok, tf.reduce_all(tf.equal(head[12:16], expected[12:])))
    ok = tf.logical_and(ok, tf.equal(head[24], 16))
    ok = tf.logical_and(ok, tf.equal(head[25], 0))
    check = tf.debugging.Assert(
        ok, [f"Not a depth map: {_DEPTH_FORMAT}. Header:", head]
    )
    with tf.control_dependencies([check]):
        return tf.identity(contents)


def diagnose_depth_png(path):
    """Explains, in Python, why a SUN RGB-D depth PNG fails to load.

    Args:
        path: str. The file.

    Returns:
        str or None. The reason, or `None` if it is a 16-bit greyscale PNG
        that Pillow reads.
    """
    if not os.path.exists(path):
        return "file not found"
    with open(path, "rb") as f:
        head = f.read(26)
    if not head:
        return "empty file (0 bytes)"
    if len(head) < 26 or not head.startswith(_PNG_SIGNATURE):
        return f"not a PNG file; {_DEPTH_FORMAT}"
    bits, colour = head[24], head[25]
    if bits != 16 or colour != 0:
        kind = _PNG_COLOURS.get(colour, f"colour type {colour}")
        article = "an" if bits == 8 else "a"
        return f"{article} {bits}-bit {kind} PNG; {_DEPTH_FORMAT}"
    return diagnose_image(path)


def decode_sunrgbd_depth(
    contents, size=None, max_depth=SUNRGBD_MAX_DEPTH, normalize=None
):
    """Decodes a SUN RGB-D depth PNG to metres.

    `d = (raw >> 3) | (raw << 13)` (16-bit), millimetres / 1000, then
    clamped to `max_depth` as the toolbox does. Anything but a 16-bit
    greyscale PNG fails with an `InvalidArgumentError` (an 8-bit or RGB
    image would decode to plausible-looking but wrong depths).

    Args:
        contents: scalar string tensor. The uint16 PNG.
        size: tuple `(height, width)` or None. Nearest-neighbour resize
            (no blending across depth edges). Defaults to `None`.
        max_depth: float or None. Clamp in metres. Defaults to `8.0`.
        normalize: str or None. `None`: metres; `"max"`: divide by
            `max_depth` into [0, 1]; `"standard"`: `(d - mean) / std` of
            the map's own valid (non-zero) pixels. Defaults to `None`.

    Returns:
        float32 tensor `(height, width, 1)`.
    """
    if normalize not in (None, "max", "standard"):
        raise ValueError(
            "`normalize` must be None, 'max' or 'standard'; "
            f"received normalize={normalize!r}."
        )
    contents = _check_depth_png(contents)
    raw = tf.io.decode_png(contents, channels=1, dtype=tf.uint16)
    depth = tf.cast(rotate_depth_bits(raw), tf.float32) / 1000.0
    if max_depth is not None:
        depth = tf.minimum(depth, max_depth)
    if size is not None:
        depth = tf.image.resize(depth, size, method="nearest")
        depth = tf.ensure_shape(depth, [size[0], size[1], 1])
    if normalize == "max":
        if max_depth is None:
            raise ValueError("normalize='max' needs `max_depth`.")
        depth = depth / max_depth
    elif normalize == "standard":
        valid = tf.cast(depth > 0, tf.float32)
        count = tf.maximum(tf.reduce_sum(valid), 1.0)
        mean = tf.reduce_sum(depth * valid) / count
        var = tf.reduce_sum(tf.square(depth - mean) * valid) / count
        depth = (depth - mean) * valid / (tf.sqrt(var) + 1e-6)
    return depth


def load_sunrgbd_depth(
    path, size=None, max_depth=SUNRGBD_MAX_DEPTH, normalize=None
):
    """Reads a SUN RGB-D depth PNG (see `decode_sunrgbd_depth`).

    Args:
        path: scalar string tensor. The PNG file.
        size: tuple `(height, width)` or None. Defaults to `None`.
        max_depth: float or None. Defaults to `8.0`.
        normalize: str or None. Defaults to `None` (metres).

    Returns:
        float32 tensor `(height, width, 1)`.

    Example:

    ```python
    depth = load_sunrgbd_depth(tf.constant("depth/0001.png"))  # metres
    ```
    """
    return decode_sunrgbd_depth(
        tf.io.read_file(path), size, max_depth, normalize
    )


def diagnose_image(path):
    """Explains, in Python, why an image file fails to decode.

    Args:
        path: str. The file.

    Returns:
        str or None. The reason, or `None` if Pillow reads it fine.
    """
    from PIL import Image

    if not os.path.exists(path):
        return "file not found"
    if os.path.getsize(path) == 0:
        return "empty file (0 bytes)"
    try:
        with Image.open(path) as im:
            im.load()
    except Exception as e:
        return f"corrupt or unsupported image ({e})"
    return None


_JPEG_START = b"\xff\xd8\xff"


def _looks_whole(path):
    """Whether an image file starts and ends as a whole JPEG or PNG does."""
    with open(path, "rb") as f:
        head = f.read(8)
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - 32))
        tail = f.read()
    if head.startswith(_JPEG_START):
        return b"\xff\xd9" in tail  # EOI
    if head.startswith(_PNG_SIGNATURE):
        return b"IEND" in tail
    return False


def first_bad_image(paths):
    """The first of some image files that does not decode, and why.

    Each file is checked by its first and last bytes (the start and end
    markers of a JPEG or PNG: a truncated or garbage file fails), and
    only one that fails that is decoded with Pillow (`diagnose_image`), so
    that an image that decodes in spite of odd bytes passes. Corruption
    inside an otherwise whole file is left to the decoder that reads it.

    Args:
        paths: iterable of str. The files.

    Returns:
        A tuple `(file, reason)`, or `None` when every file passes.
    """
    for path in paths:
        try:
            whole = _looks_whole(path)
        except OSError:
            whole = False
        if not whole:
            reason = diagnose_image(path)
            if reason is not None:
                return path, reason
    return None


def diagnose_files(paths):
    """Finds the first bad file among newline-joined paths.

    Files ending in `.wav`, `.flac`, `.ogg` or `.mp3` are checked as audio,
    the rest as images.

    Args:
        paths: str. Paths joined by `"\n"`.

    Returns:
        A tuple `(file, reason)`.
    """
    from keras_olm.data.audio import diagnose_audio

    files = [p for p in paths.split("\n") if p]
    for p in files:
        audio = p.lower().endswith((".wav", ".flac", ".ogg", ".mp3"))
        reason = diagnose_audio(p) if audio else diagnose_image(p)
        if reason is not None:
            return p, reason
    return (
        ", ".join(files),
        "could not be decoded by TensorFlow (corrupt or unsupported data)",
    )
