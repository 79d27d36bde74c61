"""The config file (``--config FILE``, TOML) and ``--print-config`` (the effective settings
as TOML, secrets masked).

One key per setting, named like its flag without the dashes (``--tcp-buffer 256K`` is
``tcp-buffer = "256K"``); switches are ``true``/``false``; repeatable flags are arrays of
strings. Unknown keys, values of the wrong type and bad values are one-line errors naming the
file and the key. See docs/config.md.
"""

from __future__ import annotations

from collections.abc import Iterable

from .files import loose_permissions, read_text_file
from .model import Option, Options, UsageError, options
from .values import mask_url

__all__ = ["load_config", "render_config", "toml_string"]

_TYPE_NAMES = {
    bool: "true or false",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "an array",
    dict: "a table",
}
#: Keys that are not settings: they are about one invocation, on the command line only.
_NOT_KEYS = {"config", "print-config", "cleanup", "help", "version", "command"}


def _type_name(value: object) -> str:
    for t, name in _TYPE_NAMES.items():
        if type(value) is t:
            return name
    return "a date or time" if hasattr(value, "isoformat") else type(value).__name__


def _expected(types: Iterable[type]) -> str:
    return " or ".join(_TYPE_NAMES[t] for t in types)


def _raw(opt: Option, value: object, where: str) -> object:
    """A TOML value as the command line would give it (text, a bool, a list of text)."""
    s = opt.spec
    if s.kind == "switch":
        if type(value) is not bool:
            raise UsageError(f"{where} must be true or false, not {_type_name(value)}")
        return value
    if s.kind == "list":
        if type(value) is not list or not all(type(x) is str for x in value):
            raise UsageError(f"{where} must be an array of strings, e.g. [\"...\"]")
        return list(value)
    if type(value) not in s.toml:
        raise UsageError(
            f"{where} must be {_expected(s.toml)}, not {_type_name(value)}"
        )
    if type(value) is float:
        return repr(value)  # nan and inf stay recognisable, for the value's own check
    return str(value)


def _unknown(key: str, path: str) -> UsageError:
    keys = [o.key for o in options()]
    if key in _NOT_KEYS:
        hint = " (it is given on the command line only)"
    elif key.replace("_", "-") in keys:
        hint = f" (keys are spelled with '-': {key.replace('_', '-')!r})"
    else:
        import difflib  # only for the message about an unknown key

        close = difflib.get_close_matches(key, keys, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else " (docs/config.md lists the keys)"
    return UsageError(f"config {path}: unknown key {key!r}{hint}")


def load_config(path: str) -> tuple[dict[str, object], tuple[str, ...]]:
    """The settings of the config file ``path`` as raw values by field name, and warnings.

    Raises:
        UsageError: the file cannot be read (see
            :func:`~tun2proxy.options.files.read_text_file`), is not TOML, has an unknown
            key or a value of the wrong type.
    """
    import tomllib  # only when there is a file to read

    text, mode = read_text_file(path, "--config")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        reason = " ".join(str(e).split())
        raise UsageError(f"config {path}: not valid TOML: {reason}") from None
    by_key = {o.key: o for o in options()}
    raw: dict[str, object] = {}
    for key, value in data.items():
        opt = by_key.get(key)
        if opt is None:
            raise _unknown(key, path)
        raw[opt.name] = _raw(opt, value, f"config {path}: {key}")
    note = loose_permissions(path, mode)
    return raw, (note,) if note else ()


def toml_string(text: str) -> str:
    """``text`` as a TOML basic string."""
    out = ['"']
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch < " " or ch == "\x7f":
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _value(opt: Option, value: object) -> str:
    s = opt.spec
    if s.show is not None:
        value = s.show(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(_value_text(opt, str(x)) for x in value) + "]"
    return _value_text(opt, str(value))


def _value_text(opt: Option, text: str) -> str:
    if opt.spec.secret:
        name, sep, url = text.partition("=")
        text = f"{name}={mask_url(url)}" if sep and "://" not in name else mask_url(text)
    return toml_string(text)


def render_config(opts: Options) -> str:
    """The effective settings as a TOML config file (secrets masked as ``***``); a setting
    that is not set is a comment."""
    lines = [
        "# tun2proxy: the effective settings (defaults < config file < command line)",
        "# passwords in proxy URLs are shown as *** (keep the real file mode 0600)",
    ]
    if opts.config:
        lines.append(f"# read from {opts.config}")
    section = ""
    for opt in options():
        if opt.spec.section != section:
            section = opt.spec.section
            lines += ["", f"# --- {section}"]
        value = getattr(opts, opt.name)
        if opt.name == "proxy" and opts.proxy_file is not None:
            lines.append(f"# {opt.key} =  (read from proxy-file)")
            continue
        if value is None:
            default = opt.spec.default_text or "not set"
            lines.append(f"# {opt.key} =  ({default})")
        else:
            lines.append(f"{opt.key} = {_value(opt, value)}")
    return "\n".join(lines) + "\n"
