"""Registers the layout fixtures of `data_layouts` for tests/data."""

from data_layouts import ave_root  # noqa: F401
from data_layouts import cremad_root  # noqa: F401
from data_layouts import ks_root  # noqa: F401
from data_layouts import sunrgbd_root  # noqa: F401
from data_layouts import vggsound_root  # noqa: F401
