"""The options model: every setting, typed, from one source (flags, a TOML config file,
``--print-config``, the docs).

:class:`Options` (:mod:`.model`) declares each setting once: type, default, help and checks.
:func:`parse_args` (:mod:`.argv`) builds the argument parser from it and merges defaults < the
``--config`` file (:mod:`.configfile`) < command-line flags into one frozen ``Options``; every
mistake is a :class:`UsageError` with one line saying what is wrong and what is allowed.
"""

from __future__ import annotations

from .argv import EPILOG, build_parser, parse_args
from .configfile import load_config, render_config
from .files import MAX_FILE_SIZE, read_text_file
from .model import (
    DEFAULT_MTU,
    DEFAULT_TUN_ADDRESS,
    DEFAULT_TUN_ADDRESS6,
    DEFAULT_V6_POOL,
    Option,
    Options,
    Spec,
    UsageError,
    options,
)
from .values import BadValue, mask_url

__all__ = [
    "DEFAULT_MTU",
    "DEFAULT_TUN_ADDRESS",
    "DEFAULT_TUN_ADDRESS6",
    "DEFAULT_V6_POOL",
    "EPILOG",
    "MAX_FILE_SIZE",
    "BadValue",
    "Option",
    "Options",
    "Spec",
    "UsageError",
    "build_parser",
    "load_config",
    "mask_url",
    "options",
    "parse_args",
    "read_text_file",
    "render_config",
]
