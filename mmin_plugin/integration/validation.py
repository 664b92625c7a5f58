"""The check of an MMIN run's configuration that needs the file system: ``pretrained``.

Every value, range and combined rule of the configuration is
:class:`~mmin_plugin.modeling.config.MMINConfig`'s; the feature-file checks are in
:mod:`mmin_plugin.features.validation`.
"""
from __future__ import annotations

import os
import re

from ..modeling.config import MMINConfig, _cfail

__all__ = ["validate_config", "looks_like_hub_id"]


_HUB_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,95})"
_HUB_RE = re.compile(rf"^{_HUB_PART}(?:/{_HUB_PART})?$")


def looks_like_hub_id(s):
    """``name`` or ``org/name`` (letters, digits, '.', '_', '-'; no '..', no leading '.', '/',
    '~', no backslash or drive letter), i.e. not something that looks like a local path."""
    if not isinstance(s, str) or not s or ".." in s or s.endswith((".", "/")):
        return False
    if s.startswith(("/", ".", "~")) or "\\" in s or re.match(r"^[A-Za-z]:", s):
        return False
    if os.sep != "/" and os.sep in s:
        return False
    return bool(_HUB_RE.match(s))


def _check_pretrained(p: str) -> None:
    """An existing local model directory holding config.json, or something shaped like a hub id."""
    expanded = os.path.expanduser(p)
    if os.path.isdir(expanded):
        if not os.path.isfile(os.path.join(expanded, "config.json")):
            _cfail("pretrained", "a model directory containing config.json (written by save_pretrained)", p)
    elif os.path.exists(expanded):
        _cfail("pretrained", "a model directory (not a file) or a hub id", p)
    elif not looks_like_hub_id(p):
        _cfail("pretrained", "an existing local model directory or a hub id ('name' or 'org/name'); this "
                             "looks like a local path that does not exist", p)


def validate_config(args) -> MMINConfig:
    """Check MMIN's configuration at start-up; raise :class:`MMINConfigError` on the first bad value.

    ``args``: MMSA's args (dict / EasyDict; absent keys take :class:`MMINConfig`'s defaults) or an
    :class:`MMINConfig`. Every value, range and combined rule is :class:`MMINConfig`'s (see its
    docstring); this adds only what needs the file system: with ``use_bert``, ``pretrained`` must
    be an existing local model directory holding config.json, or a hub id ``name``/``org/name``.
    Returns the validated :class:`MMINConfig`.
    """
    config = MMINConfig.from_args(args)
    if config.use_bert:
        _check_pretrained(config.pretrained)
    return config
