#!/usr/bin/env python3
"""Tests for chdb_http.py over real HTTP (stdlib unittest + urllib/http.client).

Run with a Python that has `chdb` (PyPI `chdb-core`) installed:

    python3 deploy/local/test_chdb_http.py
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gzip
import http.client
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.error
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
SERVER = os.path.join(HERE, "chdb_http.py")
sys.path.insert(0, HERE)

ERROR_RE = re.compile(
    r"^Code: (\d+)\. DB::Exception: .* \(([A-Z_]+)\) \(version \d+\.\d+\.[0-9.]+ \(official build\)\)\n$",
    re.S)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(self, data_dir: str):
        self.data_dir = data_dir
        self.port = free_port()
        self.proc = None
        self.stderr_path = os.path.join(os.path.dirname(data_dir), "server-%d.err" % self.port)

    def start(self):
        self.stderr = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, SERVER, "--host", "127.0.0.1", "--port", str(self.port),
             "--data-dir", self.data_dir, "--log-requests"],
            stdout=subprocess.PIPE, stderr=self.stderr)
        line = self.proc.stdout.readline().decode()
        expected = "chdb-http listening on http://127.0.0.1:%d" % self.port
        if line.strip() != expected:
            self.proc.kill()
            raise RuntimeError("unexpected first line %r (stderr in %s)" % (line, self.stderr_path))
        return self

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=30)
        finally:
            self.stderr.close()
            self.proc.stdout.close()
        return rc

    @property
    def url(self) -> str:
        return "http://127.0.0.1:%d" % self.port


class Resp:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def text(self):
        return self.body.decode("utf-8")


def request(base, sql=None, body=None, params=None, method=None, headers=None) -> Resp:
    q = dict(params or {})
    if sql is not None:
        q["query"] = sql
    url = base + "/" + ("?" + urllib.parse.urlencode(q) if q else "")
    if body is not None and isinstance(body, str):
        body = body.encode()
    req = urllib.request.Request(url, data=body, method=method or ("POST" if body is not None else "GET"),
                                 headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return Resp(r.status, r.headers, r.read())
    except urllib.error.HTTPError as e:
        return Resp(e.code, e.headers, e.read())


def rb_u32(v):
    return struct.pack("<I", v)


def rb_str(s: str) -> bytes:
    b = s.encode()
    assert len(b) < 128
    return bytes([len(b)]) + b


def lz4_compress_block(data: bytes):
    """Compress with the system liblz4 (test helper); None if unavailable."""
    path = ctypes.util.find_library("lz4")
    if not path:
        return None
    lib = ctypes.CDLL(path)
    lib.LZ4_compressBound.argtypes = [ctypes.c_int]
    lib.LZ4_compress_default.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_int]
    cap = lib.LZ4_compressBound(len(data))
    out = ctypes.create_string_buffer(cap)
    n = lib.LZ4_compress_default(data, out, len(data), cap)
    return out.raw[:n]


def native_frame(method: int, payload: bytes, usize: int) -> bytes:
    # The checksum is not verified by chdb-http; zeros are fine.
    return b"\0" * 16 + bytes([method]) + struct.pack("<II", len(payload) + 9, usize) + payload


class ChdbHttpTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="chdb-http-test-")
        cls.data_dir = os.path.join(cls.tmp, "data")
        cls.server = ServerProcess(cls.data_dir).start()
        cls.base = cls.server.url

    @classmethod
    def tearDownClass(cls):
        if cls.server.proc.poll() is None:
            cls.server.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    # -- helpers -------------------------------------------------------------

    def q(self, sql, **kw) -> Resp:
        return request(self.base, body=sql, **kw)

    def ok(self, sql, **kw) -> str:
        r = self.q(sql, **kw)
        self.assertEqual(r.status, 200, r.body)
        return r.text

    def assertCHError(self, resp: Resp, code: int, name: str, status: int = 500):
        self.assertEqual(resp.status, status, resp.body)
        self.assertEqual(resp.headers.get("X-ClickHouse-Exception-Code"), str(code))
        m = ERROR_RE.match(resp.text)
        self.assertIsNotNone(m, "not a ClickHouse-style error: %r" % resp.text)
        self.assertEqual((int(m.group(1)), m.group(2)), (code, name), resp.text)

    # -- basics ----------------------------------------------------------------

    def test_ping(self):
        for path in ("/ping", "/"):
            with urllib.request.urlopen(self.base + path) as r:
                self.assertEqual(r.read(), b"Ok.\n")
        conn = http.client.HTTPConnection("127.0.0.1", self.server.port)
        conn.request("HEAD", "/ping")
        self.assertEqual(conn.getresponse().status, 200)
        conn.close()

    def test_select_default_tsv_and_headers(self):
        r = self.q("SELECT 1 AS a, 'x\ty' AS b")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.body, b"1\tx\\ty\n")
        self.assertEqual(r.headers["X-ClickHouse-Format"], "TabSeparated")
        self.assertTrue(r.headers["Content-Type"].startswith("text/tab-separated-values"))
        summary = json.loads(r.headers["X-ClickHouse-Summary"])
        self.assertEqual(summary["result_rows"], "1")
        self.assertTrue(r.headers.get("X-ClickHouse-Query-Id"))

    def test_query_in_url_plus_body(self):
        r = request(self.base, sql="SELECT", body=" 1 + 1 AS two")
        self.assertEqual(r.text, "2\n")
        r = request(self.base, sql="SELECT 40 + 2")  # GET
        self.assertEqual(r.text, "42\n")

    def test_output_formats(self):
        r = self.q("SELECT toUInt32(7) AS n, 'ab' AS s",
                   params={"default_format": "RowBinaryWithNamesAndTypes"})
        self.assertEqual(r.body, b"\x02\x01n\x01s\x06UInt32\x06String" + rb_u32(7) + rb_str("ab"))
        self.assertEqual(r.headers["X-ClickHouse-Format"], "RowBinaryWithNamesAndTypes")
        self.assertEqual(r.headers["Content-Type"], "application/octet-stream")
        r = self.q("SELECT toUInt32(7) AS n, 'ab' AS s", params={"default_format": "RowBinary"})
        self.assertEqual(r.body, rb_u32(7) + rb_str("ab"))
        r = self.q("SELECT number AS n FROM numbers(2)", params={"default_format": "JSONEachRow"})
        self.assertEqual([json.loads(x) for x in r.text.splitlines()], [{"n": 0}, {"n": 1}])
        # FORMAT clause in the query wins over default_format
        r = self.q("SELECT 1 AS x FORMAT JSONEachRow", params={"default_format": "RowBinary"})
        self.assertEqual(r.text, '{"x":1}\n')
        self.assertEqual(r.headers["X-ClickHouse-Format"], "JSONEachRow")
        r = self.q("SELECT 1 AS x", headers={"X-ClickHouse-Format": "CSVWithNames"})
        self.assertEqual(r.text, '"x"\n1\n')

    # -- DDL + inserts -------------------------------------------------------------

    def test_ddl_and_inserts(self):
        self.ok("CREATE DATABASE IF NOT EXISTS ddl_db")
        self.ok("""
            CREATE TABLE ddl_db.ev (
                id UInt64,
                tenant LowCardinality(String),
                name String CODEC(ZSTD(3)),
                ts DateTime64(3, 'UTC') CODEC(Delta, ZSTD),
                version UInt32
            ) ENGINE = ReplacingMergeTree(version)
            ORDER BY (tenant, id)
            TTL toDateTime(ts) + INTERVAL 30 DAY
        """)
        db = {"database": "ddl_db"}
        # JSONEachRow, query in URL, data in body
        rows = "\n".join(json.dumps({"id": i, "tenant": "t", "name": "n%d" % i,
                                     "ts": "2030-01-01 00:00:00.000", "version": 1})
                         for i in range(3))
        r = request(self.base, sql="INSERT INTO ev FORMAT JSONEachRow", body=rows, params=db)
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(json.loads(r.headers["X-ClickHouse-Summary"])["written_rows"], "3")
        # TSV with explicit columns
        r = request(self.base, sql="INSERT INTO ev (id, tenant, name, ts, version) FORMAT TSV",
                    body="3\tt\tn3\t2030-01-01 00:00:00.000\t1\n", params=db)
        self.assertEqual(r.status, 200, r.body)
        # VALUES entirely in the body
        self.ok("INSERT INTO ev VALUES (4, 't', 'n4', '2030-01-01 00:00:00', 1)", params=db)
        # RowBinary with the INSERT statement in the body, followed by binary data
        ts = struct.pack("<q", 1893456000000)  # 2030-01-01 in ms
        data = struct.pack("<Q", 5) + rb_str("t") + rb_str("n5") + ts + rb_u32(1)
        r = request(self.base, body=b"INSERT INTO ev FORMAT RowBinary\n" + data, params=db)
        self.assertEqual(r.status, 200, r.body)
        # RowBinaryWithNamesAndTypes as the clickhouse crate sends it (validation on)
        # (ts must be set: a row with the default 1970 ts would be dropped by the TTL)
        header = (b"\x03" + rb_str("id") + rb_str("name") + rb_str("ts") + rb_str("UInt64")
                  + rb_str("String") + rb_str("DateTime64(3, 'UTC')"))
        data = header + struct.pack("<Q", 6) + rb_str("\xff binary \x00 ok") + ts
        r = request(self.base, sql="INSERT INTO `ev`(`id`,`name`,`ts`) FORMAT RowBinaryWithNamesAndTypes",
                    body=data, params=db)
        self.assertEqual(r.status, 200, r.body)
        # wrong types in the RBWNAT header are rejected by the engine
        bad = b"\x01" + rb_str("id") + rb_str("String") + rb_str("x")
        r = request(self.base, sql="INSERT INTO ev (id) FORMAT RowBinaryWithNamesAndTypes",
                    body=bad, params=db)
        self.assertEqual(r.status, 400, r.body)
        self.assertIn("INCORRECT_DATA", r.text)
        self.assertEqual(self.ok("SELECT id FROM ev ORDER BY id", params=db), "0\n1\n2\n3\n4\n5\n6\n")
        self.assertEqual(self.ok("SELECT name FROM ev WHERE id = 6", params=db),
                         "\u00ff binary \\0 ok\n")
        # ReplacingMergeTree semantics
        self.ok("INSERT INTO ev VALUES (0, 't', 'newer', '2030-01-01 00:00:00', 2)", params=db)
        self.assertEqual(self.ok("SELECT name FROM ev FINAL WHERE id = 0", params=db), "newer\n")
        # ALTER / DROP
        self.ok("ALTER TABLE ev ADD COLUMN extra UInt8 DEFAULT 9", params=db)
        self.ok("ALTER TABLE ev MODIFY TTL toDateTime(ts) + INTERVAL 90 DAY", params=db)
        self.assertIn("extra", self.ok("DESCRIBE TABLE ev", params=db))
        self.ok("DROP TABLE ev", params=db)
        self.assertCHError(self.q("SELECT * FROM ddl_db.ev"), 60, "UNKNOWN_TABLE", 404)
        self.ok("DROP DATABASE ddl_db")

    def test_insert_select_from_input_is_rejected_clearly(self):
        self.ok("CREATE TABLE inp (a UInt32, b String) ENGINE = MergeTree ORDER BY a")
        sql = "INSERT INTO inp SELECT a * 10, upper(b) FROM input('a UInt32, b String') FORMAT %s"
        for fmt, body in (("TSV", b"4\tx\n"), ("RowBinary", rb_u32(4) + rb_str("x"))):
            r = request(self.base, sql=sql % fmt, body=body)
            self.assertCHError(r, 48, "NOT_IMPLEMENTED", 501)
        # plain INSERT ... SELECT works
        self.ok("INSERT INTO inp SELECT number, toString(number) FROM numbers(3)")
        self.assertEqual(self.ok("SELECT count() FROM inp"), "3\n")

    def test_describe_like_the_crate(self):
        self.ok("CREATE TABLE descr (a UInt32, b Nullable(String)) ENGINE = MergeTree ORDER BY a")
        r = self.q("DESCRIBE TABLE `descr`", params={"default_format": "RowBinaryWithNamesAndTypes",
                                                     "describe_include_subcolumns": "0"})
        self.assertEqual(r.status, 200, r.body)
        self.assertTrue(r.body.startswith(b"\x07\x04name\x04type\x0cdefault_type"), r.body[:40])
        self.assertIn(b"Nullable(String)", r.body)

    # -- settings / params -----------------------------------------------------------

    def test_settings_apply_and_do_not_leak(self):
        r = self.q("SELECT number FROM numbers(100)",
                   params={"max_result_rows": "10", "result_overflow_mode": "throw"})
        self.assertCHError(r, 396, "TOO_MANY_ROWS_OR_BYTES")
        self.assertEqual(self.ok("SELECT count() FROM (SELECT number FROM numbers(100))"), "100\n")
        r = self.q("SELECT getSetting('max_threads')", params={"max_threads": "3"})
        self.assertEqual(r.text, "3\n")
        self.assertNotEqual(self.ok("SELECT getSetting('max_threads')"), "3\n")
        self.assertCHError(self.q("SELECT 1", params={"no_such_setting_xyz": "1"}),
                           115, "UNKNOWN_SETTING", 404)
        # URL params that are not settings are accepted and ignored
        r = self.q("SELECT 1", params={"user": "someone", "password": "x", "query_id": "qid-1",
                                       "wait_end_of_query": "1", "buffer_size": "1000",
                                       "enable_http_compression": "1", "role": "r"},
                   headers={"X-ClickHouse-User": "u", "X-ClickHouse-Key": "k",
                            "Authorization": "Basic dTpw"})
        self.assertEqual(r.text, "1\n")
        self.assertEqual(r.headers["X-ClickHouse-Query-Id"], "qid-1")

    def test_database_param_does_not_leak(self):
        self.assertEqual(self.ok("SELECT currentDatabase()", params={"database": "system"}),
                         "system\n")
        self.assertEqual(self.ok("SELECT currentDatabase()"), "default\n")
        self.ok("USE system")
        self.assertEqual(self.ok("SELECT currentDatabase()"), "default\n")
        self.assertCHError(self.q("SELECT 1", params={"database": "nope_db"}),
                           81, "UNKNOWN_DATABASE", 404)

    def test_readonly(self):
        self.ok("CREATE TABLE ro_t (a UInt8) ENGINE = MergeTree ORDER BY a")
        self.assertEqual(self.ok("SELECT count() FROM ro_t", params={"readonly": "1"}), "0\n")
        for sql in ("INSERT INTO ro_t VALUES (1)", "DROP TABLE ro_t",
                    "CREATE TABLE ro_x (a UInt8) ENGINE = Memory", "ALTER TABLE ro_t DELETE WHERE 1"):
            self.assertCHError(self.q(sql, params={"readonly": "1"}), 164, "READONLY")
        r = request(self.base, sql="INSERT INTO ro_t FORMAT RowBinary", body=b"\x01",
                    params={"readonly": "1"})
        self.assertCHError(r, 164, "READONLY")
        # GET implies readonly (like ClickHouse)
        r = request(self.base, sql="INSERT INTO ro_t VALUES (1)")
        self.assertCHError(r, 164, "READONLY")
        self.assertIn("method GET implies readonly", r.text)
        # and nothing leaked: writes work again
        self.ok("INSERT INTO ro_t VALUES (1)")
        self.assertEqual(self.ok("SELECT count() FROM ro_t"), "1\n")

    def test_query_params_url_and_multipart(self):
        r = self.q("SELECT {s:String} AS s, {n:UInt8} + 1, {a:Array(String)}",
                   params={"param_s": "it's\\ta \"q\"", "param_n": "41", "param_a": "['x','y']"})
        self.assertEqual(r.text, "it\\'s\\ta \"q\"\t42\t['x','y']\n")
        # multipart/form-data, exactly as clickhouse-rs 0.15 sends `.param()`
        boundary = "clickhouse-rs-boundary-0123456789abcdef"
        fields = [("query", "SELECT {x:Nullable(UInt64)} IS NULL, {y:String}"),
                  ("param_x", "\\N"), ("param_y", "\u00e9\u00e8")]
        body = b"".join(("--%s\r\nContent-Disposition: form-data; name=\"%s\"\r\n\r\n%s\r\n"
                         % (boundary, k, v)).encode() for k, v in fields)
        body += ("--%s--\r\n" % boundary).encode()
        r = request(self.base, body=body, params={"default_format": "TSV"},
                    headers={"Content-Type": "multipart/form-data; boundary=" + boundary})
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(r.text, "1\t\u00e9\u00e8\n")
        self.assertCHError(self.q("SELECT {missing:String}"), 456, "UNKNOWN_QUERY_PARAMETER")

    def test_insert_deduplication_token(self):
        self.ok("CREATE TABLE dd (k UInt32, v String) ENGINE = MergeTree ORDER BY k "
                "SETTINGS non_replicated_deduplication_window = 100")
        data = b"".join(rb_u32(i) + rb_str("v%d" % i) for i in range(50))
        for token in ("tok-a", "tok-a", "tok-b"):
            r = request(self.base, sql="INSERT INTO dd (k, v) FORMAT RowBinary", body=data,
                        params={"insert_deduplication_token": token})
            self.assertEqual(r.status, 200, r.body)
        self.assertEqual(self.ok("SELECT count() FROM dd"), "100\n")
        # without a token, identical blocks are also deduplicated by content hash (MergeTree
        # default with a dedup window); a differing block is not
        request(self.base, sql="INSERT INTO dd FORMAT RowBinary", body=rb_u32(999) + rb_str("z"))
        request(self.base, sql="INSERT INTO dd FORMAT RowBinary", body=rb_u32(999) + rb_str("z"))
        self.assertEqual(self.ok("SELECT count() FROM dd WHERE k = 999"), "1\n")

    # -- errors ------------------------------------------------------------------------

    def test_errors(self):
        r = self.q("SELECT * FROM default.does_not_exist")
        self.assertCHError(r, 60, "UNKNOWN_TABLE", 404)
        self.assertCHError(self.q("SELEC 1"), 62, "SYNTAX_ERROR", 400)
        self.assertCHError(self.q("SELECT 1; SELECT 2"), 62, "SYNTAX_ERROR", 400)
        self.assertCHError(self.q(""), 62, "SYNTAX_ERROR", 400)
        self.assertCHError(self.q("SELECT throwIf(1, 'boom')"), 395, "FUNCTION_THROW_IF_VALUE_IS_NON_ZERO")
        self.assertCHError(self.q("SELECT 1 FORMAT NoSuchFormat"), 73, "UNKNOWN_FORMAT", 404)
        r = request(self.base, sql="INSERT INTO default.does_not_exist FORMAT RowBinary", body=b"x")
        self.assertCHError(r, 60, "UNKNOWN_TABLE", 404)
        r = request(self.base, body="SELECT 1")
        self.assertEqual(r.text, "1\n")  # still healthy
        with self.assertRaises(urllib.error.HTTPError) as cm:
            urllib.request.urlopen(self.base + "/nope")
        self.assertEqual(cm.exception.code, 404)

    # -- compression -----------------------------------------------------------------

    def test_decompress_native_lz4_and_none(self):
        self.ok("CREATE TABLE cz (k UInt32, v String) ENGINE = MergeTree ORDER BY k")
        data = b"".join(rb_u32(i) + rb_str("value-%d" % (i % 10)) for i in range(2000))
        half = len(data) // 2
        frames = native_frame(0x02, data[:half], half)  # method NONE
        comp = lz4_compress_block(data[half:])
        if comp is not None:
            frames += native_frame(0x82, comp, len(data) - half)
        else:
            frames += native_frame(0x02, data[half:], len(data) - half)
        r = request(self.base, sql="INSERT INTO cz FORMAT RowBinary", body=frames,
                    params={"decompress": "1"})
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(self.ok("SELECT count(), sum(k) FROM cz"), "2000\t1999000\n")
        # unknown method byte -> clear error
        r = request(self.base, sql="INSERT INTO cz FORMAT RowBinary",
                    body=native_frame(0x77, b"abc", 3), params={"decompress": "1"})
        self.assertEqual(r.status, 500)
        self.assertIn("Compression::None", r.text)

    def test_pure_python_lz4_fallback(self):
        import chdb_http
        # hand-made block: literals "abc", then a match of 9 bytes at offset 3 (overlapping),
        # then final literals "xyz"
        block = bytes([0x35]) + b"abc" + struct.pack("<H", 3) + bytes([0x30]) + b"xyz"
        self.assertEqual(chdb_http._lz4_block_py(block, 15), b"abcabcabcabcxyz")
        data = b"".join(rb_u32(i) + rb_str("value-%d" % (i % 10)) for i in range(3000))
        comp = lz4_compress_block(data)
        if comp is not None:
            self.assertEqual(chdb_http._lz4_block_py(comp, len(data)), data)

    def test_gzip_content_encoding_and_compress_param(self):
        r = request(self.base, body=gzip.compress(b"SELECT 'gz'"),
                    headers={"Content-Encoding": "gzip"})
        self.assertEqual(r.text, "gz\n")
        r = self.q("SELECT 1", params={"compress": "1"})
        self.assertEqual(r.status, 501)
        self.assertEqual(r.headers["X-ClickHouse-Exception-Code"], "48")
        self.assertIn("Compression::None", r.text)
        # Accept-Encoding: lz4 (what clickhouse-rs sends by default) -> plain response
        r = self.q("SELECT 5", headers={"Accept-Encoding": "lz4"})
        self.assertEqual(r.text, "5\n")
        self.assertIsNone(r.headers.get("Content-Encoding"))

    # -- HTTP/1.1 behaviour --------------------------------------------------------------

    def test_keep_alive_and_chunked_body(self):
        self.ok("CREATE TABLE ka (k UInt32) ENGINE = MergeTree ORDER BY k")
        conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=30)
        conn.request("POST", "/", body=b"SELECT 1")
        r = conn.getresponse()
        self.assertEqual(r.read(), b"1\n")
        sock = conn.sock
        # chunked request body, like hyper streams an INSERT
        chunks = [b"".join(rb_u32(i) for i in range(j * 100, j * 100 + 100)) for j in range(5)]
        conn.request("POST", "/?" + urllib.parse.urlencode({"query": "INSERT INTO ka FORMAT RowBinary"}),
                     body=iter(chunks), encode_chunked=True)
        r = conn.getresponse()
        self.assertEqual((r.status, r.read()), (200, b""))
        conn.request("POST", "/", body=b"SELECT count() FROM ka")
        r = conn.getresponse()
        self.assertEqual(r.read(), b"500\n")
        # errors keep the connection usable too
        conn.request("POST", "/", body=b"SELECT * FROM nope_nope")
        r = conn.getresponse()
        r.read()
        self.assertEqual(r.status, 404)
        conn.request("POST", "/", body=b"SELECT 2")
        self.assertEqual(conn.getresponse().read(), b"2\n")
        self.assertIs(conn.sock, sock, "connection was not kept alive")
        conn.close()

    def test_concurrency(self):
        errors = []

        def worker(t):
            try:
                for i in range(20):
                    r = self.q("SELECT %d + 1" % (t * 100 + i))
                    if r.text != "%d\n" % (t * 100 + i + 1):
                        errors.append(r.text)
            except Exception as exc:  # noqa: BLE001
                errors.append(repr(exc))

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        self.assertEqual(errors, [])

    def test_sessions(self):
        sid = {"session_id": "test-session-1"}
        self.ok("CREATE TEMPORARY TABLE tmp_s (a UInt8)", params=sid)
        self.ok("INSERT INTO tmp_s VALUES (1), (2)", params=sid)
        self.assertEqual(self.ok("SELECT sum(a) FROM tmp_s", params=sid), "3\n")
        self.ok("SET max_threads = 5", params=sid)
        self.assertEqual(self.ok("SELECT getSetting('max_threads')", params=sid), "5\n")
        self.assertNotEqual(self.ok("SELECT getSetting('max_threads')"), "5\n")
        self.assertCHError(self.q("SELECT * FROM tmp_s"), 60, "UNKNOWN_TABLE", 404)
        r = self.q("SELECT 1", params={"session_id": "never-seen", "session_check": "1"})
        self.assertCHError(r, 372, "SESSION_NOT_FOUND")


class RestartTest(unittest.TestCase):
    def test_sigterm_and_persistence(self):
        tmp = tempfile.mkdtemp(prefix="chdb-http-restart-")
        try:
            data_dir = os.path.join(tmp, "data")
            srv = ServerProcess(data_dir).start()
            r = request(srv.url, body="CREATE TABLE p (a UInt32) ENGINE = MergeTree ORDER BY a")
            self.assertEqual(r.status, 200, r.body)
            request(srv.url, sql="INSERT INTO p FORMAT RowBinary", body=rb_u32(1) + rb_u32(2))
            started = time.monotonic()
            self.assertEqual(srv.stop(), 0)
            self.assertLess(time.monotonic() - started, 15)
            srv2 = ServerProcess(data_dir).start()
            try:
                self.assertEqual(request(srv2.url, body="SELECT sum(a) FROM p").text, "3\n")
            finally:
                self.assertEqual(srv2.stop(), 0)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    unittest.main(verbosity=2)
