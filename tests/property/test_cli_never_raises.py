"""The command line and the config file never raise: for any argv made of real flag names and
hostile values (huge numbers, nan, inf, negatives, empty, text that is not UTF-8, /dev/zero,
directories, FIFOs, missing paths, config files full of such values), parsing and every
check before a tunnel starts end in exit 0 or in exit 2 with one line on stderr."""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tun2proxy import cli
from tun2proxy.options import build_parser, options

FLAGS = sorted(
    {s for a in build_parser()._actions for s in a.option_strings} - {"-h", "--help"}
)
HOSTILE = [
    "1e400", "-1e400", "nan", "inf", "-inf", "NaN", "-1", "0", "-0", "", " ", "9" * 400,
    "1" * 5000, "0x10", "1_000", "1e3", "4294967296", "2147483648", "-2147483649", "65536",
    "576", "575", "68", "1.5", "\udcff", "\udcfe\udcff", "a\x00b", "é", "\U0001f4a5",
    "\t\n", "/dev/zero", "/dev/null", "/dev/random", "/", "/proc/self/status",
    "/nonexistent/x", ".", "..", "~", "infM", "1e400M", "-64K", "64Q", "1e9ms", "delay=1e9ms",
    "loss=nan", "jitter=inf", "seed=" + "9" * 5000, "::/0", "0.0.0.0/0", "::ffff:0:0/96",
    "socks5://h:0", "socks5://u:pa%ZZss@h:1", "socks5://u:%ff@h:1", "w=socks5://h:0",
    "ss://", "ss://YWJj@h:1", "http://[::1", "direct://", "x=y=z", "-", "-x", "lo",
    "nosuchif", "a" * 20, "0", "1", "3", "255", "1024", "8.8.8.8:0", "[::1]:99999",
]


@pytest.fixture(scope="module")
def files() -> Iterator[list[str]]:
    """Paths the test made: a directory, a FIFO, binary junk, a big file, config files."""
    with tempfile.TemporaryDirectory(prefix="t2p-cli-prop-") as d:
        root = Path(d)
        fifo = root / "fifo"
        os.mkfifo(fifo)
        (root / "junk").write_bytes(bytes(range(256)) * 4)
        (root / "big").write_bytes(b"#" * ((1 << 20) + 1))
        (root / "rules").write_text("cidr:10.0.0.0/8 -> direct\nport:99999 -> x\n")
        keys = [o.key for o in options()]
        configs = []
        for i, (key, value) in enumerate(zip(keys * 3, [
            '"1e400"', "nan", "inf", "-1", "1e400", "[]", '["x"]', "true", '""', "{}",
            '"/dev/zero"', "4294967296", '"::/0"', '"\\u0000"', '"socks5://u:pa%ZZss@h:1"',
        ] * 7, strict=False)):
            p = root / f"conf{i}.toml"
            p.write_text(f"{key} = {value}\n")
            p.chmod(0o600)
            configs.append(str(p))
        yield [str(root), str(fifo), str(root / "junk"), str(root / "big"),
               str(root / "rules"), *configs]


def _values(paths: list[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(HOSTILE), st.sampled_from(paths), st.text(max_size=12),
        st.integers(-(1 << 70), 1 << 70).map(str),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
    )


def _argv(paths: list[str]) -> st.SearchStrategy[list[str]]:
    value = _values(paths)
    item = st.one_of(
        st.tuples(st.sampled_from(FLAGS), value).map(list),
        st.tuples(st.sampled_from(FLAGS), value).map(lambda t: [f"{t[0]}={t[1]}"]),
        st.sampled_from(FLAGS).map(lambda f: [f]),
        value.map(lambda v: [v]),
        st.just(["--", "true"]),
    )
    return st.lists(item, max_size=6).map(lambda parts: [a for p in parts for a in p])


def _outcome(call: object, argv: list[str]) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            result = call(argv)  # type: ignore[operator]
            code = result if isinstance(result, int) else 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else -1
    return code, err.getvalue()


@settings(max_examples=500, deadline=None)
@given(data=st.data())
def test_parsing_and_checking_never_raise(files: list[str], data: st.DataObject) -> None:
    argv = data.draw(_argv(files))
    printing = data.draw(st.booleans())
    if printing:  # the whole program, which prints the settings and stops there
        code, err = _outcome(cli.main, [*argv, "--print-config"])
    else:  # parse, build the parts, check this host: everything before a device is opened
        code, err = _outcome(cli.configure, argv)
    assert code in (0, 2), (argv, code, err)
    if code == 2:
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("tun2proxy: error: "), (argv, err)
    else:
        assert all(ln.startswith("tun2proxy: warning: ") for ln in err.splitlines()), err
