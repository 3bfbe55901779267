#!/usr/bin/env python3
"""chdb-http: a small ClickHouse-HTTP-interface server over an in-process chDB.

It is the "local ClickHouse engine" of the Value Engine local stack.  It speaks
enough of the ClickHouse HTTP protocol for the Rust `clickhouse` crate
(clickhouse-rs 0.15) to work against it unchanged, plus curl-style usage:

    python3 chdb_http.py --host 127.0.0.1 --port 8123 --data-dir ./.chdb

Only the Python standard library and the `chdb` package (PyPI `chdb-core`) are
used.  See deploy/local/README.md for what is and is not supported.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gzip
import json
import lzma
import os
import re
import signal
import struct
import sys
import threading
import time
import uuid
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

try:
    import chdb  # noqa: F401  (import sets up the native library)
    from chdb import _chdb
except ImportError as exc:  # pragma: no cover - environment problem
    sys.stderr.write(
        "chdb-http: cannot import chdb (%s); install it with `pip install chdb-core`\n" % exc
    )
    raise SystemExit(2)

SERVER_NAME = "chdb-http"

# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------

# Exception code -> HTTP status, as in ClickHouse's
# src/Server/HTTP/exceptionCodeToHTTPStatus.cpp (by error *name*; resolved to
# numbers with errorCodeToName() at start-up). Everything else is 500.
_STATUS_BY_ERROR_NAME = {
    401: ["REQUIRED_PASSWORD"],
    403: ["UNKNOWN_USER", "WRONG_PASSWORD", "AUTHENTICATION_FAILED", "SET_NON_GRANTED_ROLE",
          "ACCESS_DENIED"],
    400: ["BAD_ARGUMENTS", "CANNOT_COMPILE_REGEXP", "CANNOT_PARSE_TEXT",
          "CANNOT_PARSE_ESCAPE_SEQUENCE", "CANNOT_PARSE_QUOTED_STRING", "CANNOT_PARSE_DATE",
          "CANNOT_PARSE_DATETIME", "CANNOT_PARSE_NUMBER", "CANNOT_PARSE_DOMAIN_VALUE_FROM_STRING",
          "CANNOT_PARSE_IPV4", "CANNOT_PARSE_IPV6", "CANNOT_PARSE_INPUT_ASSERTION_FAILED",
          "CANNOT_PARSE_UUID", "DUPLICATE_COLUMN", "ILLEGAL_COLUMN", "UNKNOWN_ELEMENT_IN_AST",
          "UNKNOWN_TYPE_OF_AST_NODE", "THERE_IS_NO_COLUMN", "TOO_DEEP_AST", "TOO_BIG_AST",
          "UNEXPECTED_AST_STRUCTURE", "SYNTAX_ERROR", "INCORRECT_DATA", "TYPE_MISMATCH",
          "VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE"],
    404: ["UNKNOWN_TABLE", "UNKNOWN_FUNCTION", "UNKNOWN_IDENTIFIER", "UNKNOWN_TYPE",
          "UNKNOWN_STORAGE", "UNKNOWN_DATABASE", "UNKNOWN_SETTING",
          "UNKNOWN_DIRECTION_OF_SORTING", "UNKNOWN_AGGREGATE_FUNCTION", "UNKNOWN_FORMAT",
          "UNKNOWN_DATABASE_ENGINE", "UNKNOWN_TYPE_OF_QUERY", "UNKNOWN_ROLE"],
    413: ["QUERY_IS_TOO_LARGE"],
    501: ["NOT_IMPLEMENTED"],
    503: ["SOCKET_TIMEOUT", "CANNOT_OPEN_FILE", "CANNOT_SCHEDULE_TASK"],
    411: ["HTTP_LENGTH_REQUIRED"],
    408: ["TIMEOUT_EXCEEDED"],
    415: ["UNSUPPORTED_MEDIA_TYPE"],
}

# Codes used for errors this server raises itself (stable ClickHouse numbers).
SYNTAX_ERROR = 62
BAD_ARGUMENTS = 36
NOT_IMPLEMENTED = 48
UNKNOWN_SETTING = 115
READONLY = 164
SESSION_NOT_FOUND = 372
CANNOT_DECOMPRESS = 271
CHECKSUM_DOESNT_MATCH = 40
UNKNOWN_COMPRESSION_METHOD = 432
HTTP_LENGTH_REQUIRED = 381
STD_EXCEPTION = 1001

_LOCAL_ERROR_NAMES = {
    SYNTAX_ERROR: "SYNTAX_ERROR",
    BAD_ARGUMENTS: "BAD_ARGUMENTS",
    NOT_IMPLEMENTED: "NOT_IMPLEMENTED",
    UNKNOWN_SETTING: "UNKNOWN_SETTING",
    READONLY: "READONLY",
    SESSION_NOT_FOUND: "SESSION_NOT_FOUND",
    CANNOT_DECOMPRESS: "CANNOT_DECOMPRESS",
    CHECKSUM_DOESNT_MATCH: "CHECKSUM_DOESNT_MATCH",
    UNKNOWN_COMPRESSION_METHOD: "UNKNOWN_COMPRESSION_METHOD",
    HTTP_LENGTH_REQUIRED: "HTTP_LENGTH_REQUIRED",
    STD_EXCEPTION: "STD_EXCEPTION",
}


class CHError(Exception):
    """An error reported to the client in ClickHouse's format."""

    def __init__(self, code: int, message: str, name: str | None = None):
        super().__init__(message)
        self.code = int(code)
        self.message = message
        self.name = name or _LOCAL_ERROR_NAMES.get(self.code, "")

    def text(self, version: str) -> str:
        msg = self.message.rstrip()
        if self.name:
            msg = "%s. (%s)" % (msg.rstrip("."), self.name) if msg else "(%s)" % self.name
        return "Code: %d. DB::Exception: %s (version %s (official build))\n" % (
            self.code, msg, version)


_CODE_PREFIX = re.compile(r"Code: (\d+)\. DB::[A-Za-z]*Exception: ")
_VERSION_SUFFIX = re.compile(r"\s*\(version [^()]*(?:\([^()]*\))?\)\.?")


def error_from_engine(exc: BaseException) -> CHError:
    """Turns a chDB exception text into a CHError (innermost `Code: N.` wins)."""
    text = str(exc)
    matches = list(_CODE_PREFIX.finditer(text))
    if not matches:
        return CHError(STD_EXCEPTION, text.strip() or exc.__class__.__name__)
    last = matches[-1]
    code = int(last.group(1))
    msg = _VERSION_SUFFIX.sub("", text[last.end():]).rstrip()
    # Nested re-throws repeat the error name: "... (X) (X) (X)" -> "... (X)".
    m = re.search(r"((?:\s*\(([A-Z0-9_]+)\)\.?)+)$", msg)
    name = ""
    if m:
        names = re.findall(r"\(([A-Z0-9_]+)\)", m.group(1))
        name = names[-1]
        msg = msg[: m.start()].rstrip()
    return CHError(code, msg, name)


# ---------------------------------------------------------------------------
# Minimal ClickHouse SQL lexer (only what is needed to split statements/data)
# ---------------------------------------------------------------------------

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
_NUM = re.compile(r"[0-9][0-9A-Za-z_.]*(?:[eEpP][+-]?[0-9]+)?")
_WS = " \t\n\r\f\v"


def _skip_quoted(text: str, i: int, quote: str) -> int:
    n = len(text)
    i += 1
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == quote:
            if i + 1 < n and text[i + 1] == quote:  # doubled quote
                i += 2
                continue
            return i + 1
        i += 1
    return n


def tokens(text: str, start: int = 0):
    """Yields (kind, begin, end); kinds: word, str, qident, num, punct.

    Whitespace and comments are skipped. `text` may be a latin-1 view of bytes,
    so offsets equal byte offsets.
    """
    i, n = start, len(text)
    while i < n:
        c = text[i]
        if c in _WS:
            i += 1
            continue
        if c == "-" and text.startswith("--", i) or c == "#":
            j = text.find("\n", i)
            i = n if j < 0 else j + 1
            continue
        if c == "/" and text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
            continue
        if c == "'":
            j = _skip_quoted(text, i, "'")
            yield ("str", i, j)
            i = j
            continue
        if c in "\"`":
            j = _skip_quoted(text, i, c)
            yield ("qident", i, j)
            i = j
            continue
        m = _WORD.match(text, i)
        if m:
            yield ("word", i, m.end())
            i = m.end()
            continue
        m = _NUM.match(text, i)
        if m:
            yield ("num", i, m.end())
            i = m.end()
            continue
        yield ("punct", i, i + 1)
        i += 1


class Statement:
    """What the server needs to know about one query text."""

    __slots__ = ("kind", "second", "insert_head_end", "insert_format", "data_start",
                 "output_format", "multi_at", "insert_select")

    def __init__(self):
        self.kind = ""           # first keyword, upper-case ("SELECT", "INSERT", ...)
        self.second = ""         # second keyword, upper-case
        self.insert_head_end = -1  # INSERT ... FORMAT x: offset of the FORMAT keyword
        self.insert_format = ""  # ... and the format name
        self.data_start = -1     # ... and where the data starts
        self.output_format = ""  # trailing `FORMAT x` of a non-INSERT statement
        self.multi_at = -1       # offset of a second statement, if any
        self.insert_select = False  # INSERT ... SELECT (e.g. FROM input())


def analyze(text: str) -> Statement:
    st = Statement()
    toks = tokens(text)
    pending = []  # one-token lookahead buffer

    def nxt():
        if pending:
            return pending.pop()
        return next(toks, None)

    depth = 0
    prev_word = ""
    idx = 0
    in_values = False
    while True:
        t = nxt()
        if t is None:
            break
        kind, b, e = t
        tok = text[b:e]
        up = tok.upper() if kind == "word" else ""
        if idx == 0 and kind == "punct" and tok == "(":
            depth += 1
            continue
        if idx == 0:
            st.kind = up
        elif idx == 1:
            st.second = up
        idx += 1
        if kind == "punct":
            if tok in "([":
                depth += 1
            elif tok in ")]":
                depth = max(0, depth - 1)
            elif tok == ";" and depth == 0:
                if nxt() is not None:  # anything after the ';' is a second statement
                    st.multi_at = b
                break
            prev_word = ""
            continue
        if st.kind == "INSERT" and depth == 0 and up == "VALUES":
            # INSERT ... VALUES: the whole text goes to the engine as is; keep lexing
            # only to reject a second statement after the data.
            in_values = True
        if st.kind == "INSERT" and up in ("SELECT", "WITH"):
            st.insert_select = True
        if in_values:
            continue
        if depth == 0 and up == "FORMAT" and prev_word != "AS":
            t2 = nxt()
            if t2 is None:
                break
            nkind, nb, ne = t2
            if nkind not in ("word", "qident"):
                pending.append(t2)
                prev_word = ""
                continue
            name = text[nb:ne].strip("`\"")
            if st.kind == "INSERT":
                st.insert_head_end = b
                st.insert_format = name
                # Data starts after the first newline following the format name when
                # only blanks precede it, otherwise right after the blanks.
                j, n = ne, len(text)
                while j < n and text[j] in " \t\f":
                    j += 1
                if j < n and text[j] == "\r":
                    j += 1
                if j < n and text[j] == "\n":
                    j += 1
                st.data_start = j
                return st
            # A trailing `FORMAT name` clause can only be followed by SETTINGS or ';'.
            t3 = nxt()
            if t3 is None or text[t3[1]:t3[2]].upper() == "SETTINGS" or text[t3[1]:t3[2]] == ";":
                st.output_format = name
            if t3 is not None:
                pending.append(t3)
            prev_word = up
            continue
        prev_word = up
    return st


# ---------------------------------------------------------------------------
# Compression helpers (request bodies only)
# ---------------------------------------------------------------------------

def _load_lib(names):
    for name in names:
        path = ctypes.util.find_library(name)
        for candidate in filter(None, [path, "lib%s.so.1" % name]):
            try:
                return ctypes.CDLL(candidate)
            except OSError:
                continue
    return None


_LZ4 = _load_lib(["lz4"])
if _LZ4 is not None:
    _LZ4.LZ4_decompress_safe.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int,
                                         ctypes.c_int]
    _LZ4.LZ4_decompress_safe.restype = ctypes.c_int
_ZSTD = _load_lib(["zstd"])
if _ZSTD is not None:
    _ZSTD.ZSTD_decompress.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p,
                                      ctypes.c_size_t]
    _ZSTD.ZSTD_decompress.restype = ctypes.c_size_t
    _ZSTD.ZSTD_isError.argtypes = [ctypes.c_size_t]
    _ZSTD.ZSTD_isError.restype = ctypes.c_uint


def _lz4_block_py(src: bytes, usize: int) -> bytes:
    """Pure-Python LZ4 block decoder (fallback when liblz4 is not available)."""
    dst = bytearray()
    i, n = 0, len(src)
    while i < n:
        token = src[i]
        i += 1
        lit = token >> 4
        if lit == 15:
            while True:
                b = src[i]
                i += 1
                lit += b
                if b != 255:
                    break
        dst += src[i:i + lit]
        i += lit
        if i >= n:
            break
        off = src[i] | (src[i + 1] << 8)
        i += 2
        ml = token & 15
        if ml == 15:
            while True:
                b = src[i]
                i += 1
                ml += b
                if b != 255:
                    break
        ml += 4
        if off == 0 or off > len(dst):
            raise CHError(CANNOT_DECOMPRESS, "Cannot decompress LZ4-encoded data: bad offset")
        s = len(dst) - off
        if off >= ml:
            dst += dst[s:s + ml]
        else:
            pat = bytes(dst[s:])
            dst += (pat * (ml // off + 1))[:ml]
    if len(dst) != usize:
        raise CHError(CANNOT_DECOMPRESS, "Cannot decompress LZ4-encoded data: size mismatch")
    return bytes(dst)


def _lz4_block(src: bytes, usize: int) -> bytes:
    if _LZ4 is None:
        return _lz4_block_py(src, usize)
    out = ctypes.create_string_buffer(max(usize, 1))
    got = _LZ4.LZ4_decompress_safe(src, out, len(src), usize)
    if got != usize:
        raise CHError(CANNOT_DECOMPRESS, "Cannot decompress LZ4-encoded data")
    return out.raw[:usize]


def decompress_native(body: bytes) -> bytes:
    """Decodes ClickHouse's native compressed framing (`decompress=1`).

    Frame: 16-byte CityHash128 checksum, method byte, u32 compressed size
    (incl. the 9-byte header), u32 uncompressed size, payload. Checksums are
    NOT verified (like `http_native_compression_disable_checksumming_on_decompress=1`).
    """
    out = []
    i, n = 0, len(body)
    mv = memoryview(body)
    while i < n:
        if n - i < 25:
            raise CHError(CANNOT_DECOMPRESS, "Cannot decompress: truncated compressed block header")
        method = body[i + 16]
        csize, usize = struct.unpack_from("<II", body, i + 17)
        if csize < 9 or i + 16 + csize > n:
            raise CHError(CANNOT_DECOMPRESS, "Cannot decompress: truncated compressed block")
        payload = bytes(mv[i + 25:i + 16 + csize])
        if method == 0x82:
            out.append(_lz4_block(payload, usize))
        elif method == 0x90:
            if _ZSTD is None:
                raise CHError(UNKNOWN_COMPRESSION_METHOD,
                              "ZSTD-compressed request bodies need libzstd, which was not found; "
                              "set the client's compression to None (clickhouse-rs: "
                              "`.with_compression(Compression::None)`)")
            buf = ctypes.create_string_buffer(max(usize, 1))
            got = _ZSTD.ZSTD_decompress(buf, usize, payload, len(payload))
            if _ZSTD.ZSTD_isError(got) or got != usize:
                raise CHError(CANNOT_DECOMPRESS, "Cannot decompress ZSTD-encoded data")
            out.append(buf.raw[:usize])
        elif method == 0x02:
            out.append(payload)
        else:
            raise CHError(UNKNOWN_COMPRESSION_METHOD,
                          "Unknown compression method 0x%02x in request body; chdb-http supports "
                          "only LZ4, ZSTD and NONE blocks (or set the client's compression to None, "
                          "clickhouse-rs: `.with_compression(Compression::None)`)" % method)
        i += 16 + csize
    return b"".join(out)


def decode_content_encoding(body: bytes, encoding: str) -> bytes:
    enc = encoding.strip().lower()
    if enc in ("", "identity"):
        return body
    try:
        if enc in ("gzip", "x-gzip"):
            return gzip.decompress(body)
        if enc == "deflate":
            try:
                return zlib.decompress(body)
            except zlib.error:
                return zlib.decompress(body, -zlib.MAX_WBITS)
        if enc in ("xz", "lzma"):
            return lzma.decompress(body)
    except (OSError, zlib.error, lzma.LZMAError, EOFError) as exc:
        raise CHError(CANNOT_DECOMPRESS, "Cannot decompress %s request body: %s" % (enc, exc))
    raise CHError(BAD_ARGUMENTS,
                  "Unsupported Content-Encoding of the request: %s (chdb-http supports gzip, "
                  "deflate, xz; for the clickhouse crate use Compression::None or Compression::Lz4)"
                  % encoding)


# ---------------------------------------------------------------------------
# HTTP parameters
# ---------------------------------------------------------------------------

# URL parameters that are not settings (ClickHouse's HTTPHandler reserved names
# plus a few HTTP-only knobs that make no sense for an in-process engine).
RESERVED_PARAMS = {
    "query", "database", "default_format", "user", "password", "quota_key", "query_id",
    "stacktrace", "role", "buffer_size", "wait_end_of_query", "session_id", "session_timeout",
    "session_check", "close_session", "client_protocol_version", "compress", "decompress",
    "readonly", "enable_http_compression", "http_zlib_compression_level",
    "http_native_compression_disable_checksumming_on_decompress",
    "send_progress_in_http_headers", "http_headers_progress_interval_ms",
    "add_http_cors_header", "http_response_buffer_size", "http_wait_end_of_query",
    "cancel_http_readonly_queries_on_client_close", "http_write_exception_in_output_format",
    "http_response_headers",
}

_SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def sql_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def sql_ident(value: str) -> str:
    return "`" + value.replace("\\", "\\\\").replace("`", "\\`") + "`"


def parse_multipart(body: bytes, content_type: str):
    m = re.search(r'boundary="?([^";]+)"?', content_type)
    if not m:
        raise CHError(BAD_ARGUMENTS, "multipart/form-data request without a boundary")
    delim = b"--" + m.group(1).encode("latin-1")
    fields = []
    for part in body.split(delim)[1:]:
        if part.startswith(b"--"):
            break
        if part.startswith(b"\r\n"):
            part = part[2:]
        head, sep, content = part.partition(b"\r\n\r\n")
        if not sep:
            continue
        if content.endswith(b"\r\n"):
            content = content[:-2]
        disp = ""
        for line in head.decode("latin-1").split("\r\n"):
            if line.lower().startswith("content-disposition:"):
                disp = line
        nm = re.search(r'\bname="([^"]*)"', disp)
        if not nm:
            continue
        if re.search(r"\bfilename=", disp):
            raise CHError(NOT_IMPLEMENTED,
                          "External data (multipart file parts) is not supported by chdb-http")
        fields.append((nm.group(1), content.decode("utf-8", "replace")))
    return fields


_CONTENT_TYPES = {
    "tabseparated": "text/tab-separated-values; charset=UTF-8",
    "tsv": "text/tab-separated-values; charset=UTF-8",
    "tabseparatedwithnames": "text/tab-separated-values; charset=UTF-8",
    "tsvwithnames": "text/tab-separated-values; charset=UTF-8",
    "tabseparatedwithnamesandtypes": "text/tab-separated-values; charset=UTF-8",
    "tsvwithnamesandtypes": "text/tab-separated-values; charset=UTF-8",
    "tabseparatedraw": "text/tab-separated-values; charset=UTF-8",
    "tsvraw": "text/tab-separated-values; charset=UTF-8",
    "csv": "text/csv; charset=UTF-8; header=absent",
    "csvwithnames": "text/csv; charset=UTF-8; header=present",
    "csvwithnamesandtypes": "text/csv; charset=UTF-8; header=present",
    "rowbinary": "application/octet-stream",
    "rowbinarywithnames": "application/octet-stream",
    "rowbinarywithnamesandtypes": "application/octet-stream",
    "native": "application/octet-stream",
    "parquet": "application/octet-stream",
    "arrow": "application/octet-stream",
    "arrowstream": "application/octet-stream",
    "orc": "application/octet-stream",
    "avro": "application/octet-stream",
    "msgpack": "application/octet-stream",
}


def content_type_for(fmt: str) -> str:
    f = fmt.lower()
    if f in _CONTENT_TYPES:
        return _CONTENT_TYPES[f]
    if f.startswith("json"):
        return "application/json; charset=UTF-8"
    return "text/plain; charset=UTF-8"


# ---------------------------------------------------------------------------
# Engine: chDB connections, sessions, execution
# ---------------------------------------------------------------------------

class Result:
    __slots__ = ("body", "fmt", "summary", "waited_ns")

    def __init__(self, body: bytes, fmt: str, summary: dict):
        self.body = body
        self.fmt = fmt
        self.summary = summary
        self.waited_ns = 0  # time spent waiting for the engine lock (logged, not sent)


class _Session:
    __slots__ = ("conn", "timeout", "last_used")

    def __init__(self, conn, timeout):
        self.conn = conn
        self.timeout = timeout
        self.last_used = time.monotonic()


class Engine:
    """Owns the chDB connections. All engine calls are serialized by one lock."""

    MAX_SESSIONS = 128

    def __init__(self, data_dir: str):
        self.data_dir = os.path.abspath(data_dir)
        os.makedirs(self.data_dir, exist_ok=True)
        self.lock = threading.Lock()
        self.conn = _chdb.connect(self.data_dir)
        self.sessions: dict[str, _Session] = {}
        self.closed = False
        self.version = self._scalar("SELECT version()")
        self.timezone = self._scalar("SELECT timezone()")
        self.status_by_code = self._status_map()

    def _scalar(self, sql: str) -> str:
        return self.conn.query(sql, "TabSeparatedRaw").bytes().decode().strip()

    def _status_map(self) -> dict:
        names = {n: status for status, lst in _STATUS_BY_ERROR_NAME.items() for n in lst}
        quoted = ",".join(sql_string(n) for n in names)
        rows = self.conn.query(
            "SELECT number, errorCodeToName(number) FROM numbers(2000) "
            "WHERE errorCodeToName(number) IN (%s)" % quoted, "TabSeparatedRaw").bytes()
        out = {}
        for line in rows.decode().splitlines():
            code, name = line.split("\t")
            out[int(code)] = names[name]
        return out

    def http_status(self, code: int) -> int:
        return self.status_by_code.get(code, 500)

    # -- connections -------------------------------------------------------

    def _new_conn(self):
        return _chdb.connect(self.data_dir)

    def _session(self, sid: str, timeout: float, check: bool):
        now = time.monotonic()
        for key in [k for k, s in self.sessions.items() if now - s.last_used > s.timeout]:
            self._close_quietly(self.sessions.pop(key).conn)
        sess = self.sessions.get(sid)
        if sess is None:
            if check:
                raise CHError(SESSION_NOT_FOUND, "Session %s not found" % sid)
            if len(self.sessions) >= self.MAX_SESSIONS:
                oldest = min(self.sessions, key=lambda k: self.sessions[k].last_used)
                self._close_quietly(self.sessions.pop(oldest).conn)
            sess = self.sessions[sid] = _Session(self._new_conn(), timeout)
        sess.timeout = timeout
        sess.last_used = now
        return sess

    @staticmethod
    def _close_quietly(conn):
        try:
            conn.close()
        except Exception:  # noqa: BLE001
            pass

    def close(self):
        with self.lock:
            if self.closed:
                return
            self.closed = True
            for sess in self.sessions.values():
                self._close_quietly(sess.conn)
            self.sessions.clear()
            self._close_quietly(self.conn)

    # -- execution ---------------------------------------------------------

    def execute(self, req: "Request") -> Result:
        asked = time.monotonic_ns()
        with self.lock:
            if self.closed:
                raise CHError(STD_EXCEPTION, "Server is shutting down")
            started = time.monotonic_ns()
            ephemeral = None
            sess = None
            try:
                if req.session_id:
                    sess = self._session(req.session_id, req.session_timeout, req.session_check)
                    conn = sess.conn
                elif req.needs_own_connection():
                    conn = ephemeral = self._new_conn()
                else:
                    conn = self.conn
                self._prepare(conn, req)
                result = self._run(conn, req)
            finally:
                if ephemeral is not None:
                    self._close_quietly(ephemeral)
                if sess is not None:
                    sess.last_used = time.monotonic()
                    if req.close_session and req.session_id in self.sessions:
                        self._close_quietly(self.sessions.pop(req.session_id).conn)
            result.summary["elapsed_ns"] = time.monotonic_ns() - started
            result.waited_ns = started - asked
            return result

    def _query(self, conn, sql: str, fmt: str = "TabSeparated", params=None):
        try:
            return conn.query(sql, fmt, params=params or {})
        except Exception as exc:  # noqa: BLE001
            raise error_from_engine(exc) from None

    def _prepare(self, conn, req: "Request"):
        if req.database:
            self._query(conn, "USE " + sql_ident(req.database))
        if req.settings:
            parts = []
            for name, value in req.settings:
                if not _SETTING_NAME.match(name):
                    raise CHError(UNKNOWN_SETTING, "Unknown setting '%s'" % name)
                parts.append("%s = %s" % (name, sql_string(value)))
            self._query(conn, "SET " + ", ".join(parts))
        readonly = req.readonly
        if req.session_id and req.readonly_from_get:
            readonly = 0  # do not make a whole session read-only because of one GET
        if readonly:
            self._query(conn, "SET readonly = %d" % readonly)

    def _run(self, conn, req: "Request") -> Result:
        st, text, raw = req.statement, req.text, req.raw
        if st.kind == "INSERT" and st.insert_head_end >= 0:
            head = raw[:st.insert_head_end].decode("utf-8", "replace").rstrip()
            data = raw[st.data_start:]
            try:
                inserter = conn.send_insert(head, st.insert_format)
            except Exception as exc:  # noqa: BLE001
                raise error_from_engine(exc) from None
            try:
                if data:
                    conn.insert_append(inserter, data)
                res = conn.insert_done(inserter)
            except Exception as exc:  # noqa: BLE001
                try:
                    conn.insert_cancel(inserter)
                except Exception:  # noqa: BLE001
                    pass
                raise error_from_engine(exc) from None
            return Result(b"", "", _summary(written_rows=res.rows_written(),
                                            written_bytes=res.bytes_written()))
        fmt = st.output_format or req.default_format
        res = self._query(conn, text, req.default_format, req.params)
        body = res.bytes() or b""
        return Result(body, fmt if st.kind not in _NO_OUTPUT else "", _summary(
            read_rows=res.storage_rows_read(), read_bytes=res.storage_bytes_read(),
            written_rows=res.rows_written(), written_bytes=res.bytes_written(),
            result_rows=res.rows_read(), result_bytes=res.bytes_read()))


_NO_OUTPUT = {"INSERT", "CREATE", "DROP", "ALTER", "TRUNCATE", "RENAME", "OPTIMIZE", "SET",
              "USE", "ATTACH", "DETACH", "GRANT", "REVOKE", "KILL", "SYSTEM", "DELETE",
              "UPDATE", "UNDROP", "EXCHANGE"}


def _summary(read_rows=0, read_bytes=0, written_rows=0, written_bytes=0, result_rows=0,
             result_bytes=0):
    return {
        "read_rows": read_rows, "read_bytes": read_bytes, "written_rows": written_rows,
        "written_bytes": written_bytes, "total_rows_to_read": read_rows,
        "result_rows": result_rows, "result_bytes": result_bytes, "elapsed_ns": 0,
        "memory_usage": 0,
    }


# ---------------------------------------------------------------------------
# Request model
# ---------------------------------------------------------------------------

class Request:
    """A parsed ClickHouse HTTP request."""

    def __init__(self):
        self.raw = b""            # full query text (+ inline data) as bytes
        self.text = ""            # same, decoded (only for non-INSERT-FORMAT statements)
        self.statement = Statement()
        self.database = ""
        self.default_format = "TabSeparated"
        self.settings: list[tuple[str, str]] = []
        self.params: dict[str, str] = {}
        self.readonly = 0
        self.readonly_from_get = False
        self.query_id = ""
        self.session_id = ""
        self.session_timeout = 60.0
        self.session_check = False
        self.close_session = False
        self.method = "POST"

    def needs_own_connection(self) -> bool:
        return bool(self.settings or self.readonly or
                    (self.database and self.database != "default") or
                    self.statement.kind in ("SET", "USE") or
                    (self.statement.kind == "CREATE" and self.statement.second == "TEMPORARY"))


def _truthy(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


def build_request(method: str, url_params: list, headers, body: bytes) -> Request:
    req = Request()
    req.method = method
    params = list(url_params)
    ctype = headers.get("Content-Type", "") or ""
    if method == "POST" and ctype.lower().startswith("multipart/form-data"):
        params += parse_multipart(body, ctype)
        body = b""

    url_query = ""
    for name, value in params:
        if name == "query":
            url_query = value
        elif name == "database":
            req.database = value
        elif name == "default_format":
            req.default_format = value or req.default_format
        elif name == "query_id":
            req.query_id = value
        elif name == "session_id":
            req.session_id = value
        elif name == "session_timeout":
            try:
                req.session_timeout = float(value)
            except ValueError:
                raise CHError(BAD_ARGUMENTS, "Invalid session timeout: '%s'" % value) from None
        elif name == "session_check":
            req.session_check = _truthy(value)
        elif name == "close_session":
            req.close_session = _truthy(value)
        elif name == "readonly":
            try:
                req.readonly = int(value or "0")
            except ValueError:
                raise CHError(27, "Cannot parse input: expected 'eof' before: '%s'" % value,
                              "CANNOT_PARSE_INPUT_ASSERTION_FAILED") from None
        elif name == "compress":
            if _truthy(value):
                raise CHError(NOT_IMPLEMENTED,
                              "Response compression with compress=1 (ClickHouse native framing) is "
                              "not supported by chdb-http; disable it on the client "
                              "(clickhouse-rs: `.with_compression(Compression::None)`)")
        elif name.startswith("param_"):
            req.params[name[len("param_"):]] = value
        elif name in RESERVED_PARAMS:
            continue
        else:
            req.settings.append((name, value))

    if not req.database:
        req.database = headers.get("X-ClickHouse-Database", "") or ""
    hdr_fmt = headers.get("X-ClickHouse-Format")
    if hdr_fmt and not any(n == "default_format" for n, _ in params):
        req.default_format = hdr_fmt
    if method == "GET" and req.readonly == 0:
        # ClickHouse: "method GET implies readonly" (readonly=2: settings may still change).
        req.readonly = 2
        req.readonly_from_get = True

    if url_query and body:
        raw = url_query.encode("utf-8") + b"\n" + body
    elif url_query:
        raw = url_query.encode("utf-8")
    else:
        raw = body
    if not raw.strip():
        raise CHError(SYNTAX_ERROR, "Empty query")
    req.raw = raw
    # latin-1 maps bytes 1:1 to code points, so lexer offsets are byte offsets.
    st = analyze(raw.decode("latin-1"))
    req.statement = st
    if st.multi_at >= 0:
        raise CHError(SYNTAX_ERROR,
                      "Syntax error (Multi-statements are not allowed): failed at position %d "
                      "(end of query)" % (st.multi_at + 1))
    if st.kind == "INSERT" and st.insert_head_end >= 0 and st.insert_select:
        # chDB's streaming insert API cannot run INSERT ... SELECT ... FORMAT (input()),
        # and its query API ignores data inlined after such a statement.
        raise CHError(NOT_IMPLEMENTED,
                      "INSERT ... SELECT ... FROM input() with data in the request is not "
                      "supported by chdb-http; use a plain INSERT INTO t [(columns)] FORMAT ...")
    elif not (st.kind == "INSERT" and st.insert_head_end >= 0):
        req.text = raw.decode("utf-8", "replace")
    return req


# ---------------------------------------------------------------------------
# HTTP server
# ---------------------------------------------------------------------------

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    # set by main()
    engine: Engine = None  # type: ignore[assignment]
    log_requests = False
    idle_timeout = 30.0
    body_timeout = 300.0
    max_body = 1 << 30

    def setup(self):
        self.timeout = self.idle_timeout
        super().setup()

    # ---- plumbing --------------------------------------------------------

    def version_string(self):
        return SERVER_NAME

    def log_request(self, code="-", size="-"):  # requests are logged by _handle
        pass

    def log_message(self, fmt, *args):
        sys.stderr.write("chdb-http: %s - %s\n" % (self.address_string(), fmt % args))

    def _log(self, line: str):
        if self.log_requests:
            sys.stderr.write("chdb-http: %s\n" % line)
            sys.stderr.flush()

    def _read_body(self) -> bytes:
        self.connection.settimeout(self.body_timeout)
        try:
            te = (self.headers.get("Transfer-Encoding") or "").lower()
            if "chunked" in te:
                chunks, total = [], 0
                while True:
                    line = self.rfile.readline(65537)
                    if not line:
                        raise ConnectionError("connection closed inside a chunked body")
                    size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                    if size == 0:
                        while True:  # trailers
                            t = self.rfile.readline(65537)
                            if t in (b"\r\n", b"\n", b""):
                                break
                        break
                    total += size
                    if total > self.max_body:
                        raise CHError(BAD_ARGUMENTS, "Request body is too large")
                    chunk = self.rfile.read(size)
                    if len(chunk) != size:
                        raise ConnectionError("connection closed inside a chunk")
                    chunks.append(chunk)
                    self.rfile.readline(3)  # CRLF after the chunk
                return b"".join(chunks)
            length = self.headers.get("Content-Length")
            if length is None:
                return b""
            n = int(length)
            if n > self.max_body:
                raise CHError(BAD_ARGUMENTS, "Request body is too large")
            data = self.rfile.read(n)
            if len(data) != n:
                raise ConnectionError("connection closed inside the body")
            return data
        finally:
            self.connection.settimeout(self.idle_timeout)

    def _send(self, status: int, body: bytes, headers: dict):
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Keep-Alive", "timeout=%d" % max(1, int(self.idle_timeout) - 1))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _send_error(self, err: CHError, query_id: str = ""):
        body = err.text(self.engine.version).encode("utf-8", "replace")
        headers = {
            "Content-Type": "text/plain; charset=UTF-8",
            "X-ClickHouse-Exception-Code": str(err.code),
            "X-ClickHouse-Server-Display-Name": SERVER_NAME,
        }
        if query_id:
            headers["X-ClickHouse-Query-Id"] = query_id
        self._log("  -> %d %s" % (err.code, body[:300].decode("utf-8", "replace").strip()))
        self._send(self.engine.http_status(err.code), body, headers)

    # ---- verbs -----------------------------------------------------------

    def do_GET(self):
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")

    def do_HEAD(self):
        path = urlsplit(self.path).path
        if path in ("/", "/ping", "/replicas_status"):
            self._send(200, b"Ok.\n", {"Content-Type": "text/html; charset=UTF-8"})
        else:
            self._send(404, b"", {})

    def do_OPTIONS(self):
        self._send(204, b"", {
            "Access-Control-Allow-Origin": "*",
            "Access-Control-Allow-Headers": "origin, x-requested-with, x-clickhouse-format, "
                                            "x-clickhouse-user, x-clickhouse-key, Authorization",
            "Access-Control-Allow-Methods": "POST, GET, OPTIONS",
        })

    def _handle(self, method: str):
        split = urlsplit(self.path)
        path = split.path
        url_params = parse_qsl(split.query, keep_blank_values=True)
        has_query = any(k == "query" for k, _ in url_params)
        if path in ("/ping", "/replicas_status") or (method == "GET" and path == "/"
                                                     and not has_query):
            if method == "POST":
                self._read_body()
            self._send(200, b"Ok.\n", {"Content-Type": "text/html; charset=UTF-8"})
            return
        if path != "/":
            if method == "POST":
                self._read_body()
            self._send(404, b"There is no handle %s\n" % path.encode("utf-8", "replace"), {
                "Content-Type": "text/plain; charset=UTF-8"})
            return

        query_id = next((v for k, v in url_params if k == "query_id" and v), "") \
            or str(uuid.uuid4())
        try:
            body = self._read_body() if method == "POST" else b""
        except CHError as err:
            self.close_connection = True
            self._send_error(err, query_id)
            return
        except (OSError, ValueError) as exc:
            self.close_connection = True
            self._log("bad request body: %s" % exc)
            return
        if self.log_requests:
            interesting = {k: v for k, v in self.headers.items()
                           if k.lower() in ("content-type", "content-encoding", "accept-encoding",
                                            "transfer-encoding", "content-length", "user-agent",
                                            "x-clickhouse-user", "x-clickhouse-format",
                                            "x-clickhouse-database", "connection")}
            if "X-ClickHouse-Key" in self.headers:
                interesting["X-ClickHouse-Key"] = "***"
            if "Authorization" in self.headers:
                interesting["Authorization"] = "***"
            shown = [(k, v if k != "password" else "***") for k, v in url_params]
            self._log("%s %s params=%s headers=%s body=%dB" % (
                method, path, shown, interesting, len(body)))
        try:
            enc = self.headers.get("Content-Encoding")
            if enc:
                body = decode_content_encoding(body, enc)
            if any(k == "decompress" and _truthy(v) for k, v in url_params) and body:
                body = decompress_native(body)
            req = build_request(method, url_params, self.headers, body)
            req.query_id = query_id
            result = self.engine.execute(req)
        except CHError as err:
            if err.code == READONLY and method == "GET":
                err.message = err.message.rstrip().rstrip(".") + \
                    ". For queries over HTTP, method GET implies readonly. You should use " \
                    "method POST for modifying queries"
            self._send_error(err, query_id)
            return
        except Exception as exc:  # noqa: BLE001 - report, keep serving
            self._send_error(error_from_engine(exc), query_id)
            return
        headers = {
            "X-ClickHouse-Server-Display-Name": SERVER_NAME,
            "X-ClickHouse-Query-Id": query_id,
            "X-ClickHouse-Timezone": self.engine.timezone,
            "X-ClickHouse-Summary": json.dumps(
                {k: str(v) for k, v in result.summary.items()}, separators=(",", ":")),
        }
        if result.fmt:
            headers["Content-Type"] = content_type_for(result.fmt)
            headers["X-ClickHouse-Format"] = result.fmt
        else:
            headers["Content-Type"] = "text/plain; charset=UTF-8"
        self._log("  -> 200 %dB, %.1f ms waiting for the engine, %.1f ms running" % (
            len(result.body), result.waited_ns / 1e6, result.summary["elapsed_ns"] / 1e6))
        self._send(200, result.body, headers)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="ClickHouse HTTP interface over in-process chDB")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8123)
    ap.add_argument("--data-dir", required=True, help="persistent chDB data directory")
    ap.add_argument("--log-requests", action="store_true",
                    help="log every request (method, URL params, key headers) to stderr")
    ap.add_argument("--keep-alive-timeout", type=float, default=30.0,
                    help="seconds an idle keep-alive connection is kept open (default 30)")
    args = ap.parse_args(argv)

    engine = Engine(args.data_dir)
    Handler.engine = engine
    Handler.log_requests = args.log_requests
    Handler.idle_timeout = args.keep_alive_timeout

    try:
        server = Server((args.host, args.port), Handler)
    except OSError as exc:
        sys.stderr.write("chdb-http: cannot listen on %s:%d: %s\n" % (args.host, args.port, exc))
        engine.close()
        return 1

    def stop(signum, _frame):
        sys.stderr.write("chdb-http: got signal %d, shutting down\n" % signum)
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    host, port = server.server_address[:2]
    sys.stdout.write("chdb-http listening on http://%s:%d\n" % (host, port))
    sys.stdout.flush()
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        engine.close()  # waits for the in-flight query (engine lock)
    sys.stderr.write("chdb-http: stopped\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
