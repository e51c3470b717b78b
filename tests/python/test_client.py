"""Client round trips against a real kvtcd: arrays of several dtypes and many
sizes, batches split by max_batch, lookups of key chains, errors."""

import socket
import threading
import unittest

import numpy as np

import kvtc
import kvtcd
from kvtc import errors

MAX_BATCH = 8          # small, so batches of 20 are split into requests
MAX_CHUNK = 4 << 20


def free_port():
    """A port nothing listens on (bound then released)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class DaemonCase(unittest.TestCase):
    """One daemon and one connection per class; tests use distinct keys."""

    @classmethod
    def setUpClass(cls):
        try:
            cls.daemon = kvtcd.Daemon(extra=["--max-batch", str(MAX_BATCH),
                                             "--max-chunk", "4M"])
        except FileNotFoundError as e:
            raise unittest.SkipTest("kvtcd not built: %s" % e)
        cls.client = kvtc.Client(cls.daemon.addr)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        problem = cls.daemon.stop()
        if problem:
            raise AssertionError(problem)

    def keys(self, n, tag):
        """n chained keys unique to this test."""
        return kvtc.chain_keys(range(n), 1, "%s.%s" % (self.id(), tag))


class TestRoundTrip(DaemonCase):
    def test_bf16_and_fp16_many_sizes(self):
        rng = np.random.default_rng(7)
        sizes = [0, 1, 3, 255, 4096, 65537, 262144, 1 << 20, (MAX_CHUNK // 2) - 1]
        for dtype in (np.uint16, np.float16):  # uint16 holds bf16 bit patterns
            ks = self.keys(len(sizes), dtype.__name__)
            arrays = [rng.integers(0, 2**16, size=n, dtype=np.uint16).view(dtype) for n in sizes]
            for k, a in zip(ks, arrays):
                self.client.put(k, a)
            for k, a in zip(ks, arrays):
                got = self.client.get(k)  # no layout: flat bytes
                self.assertEqual(got.dtype, np.uint8)
                self.assertEqual(got.tobytes(), a.tobytes(), a.size)
                out = np.empty_like(a)
                self.assertIs(self.client.get(k, out=out), out)
                self.assertEqual(out.tobytes(), a.tobytes())

    def test_out_is_written_in_place(self):
        k, = self.keys(1, "x")
        a = np.arange(1000, dtype=np.float16)
        self.client.put(k, a)
        big = np.zeros(3000, dtype=np.float16)
        view = big[1000:2000]  # contiguous window of a larger array
        self.client.get(k, out=view)
        np.testing.assert_array_equal(big[1000:2000], a)
        self.assertFalse(big[:1000].any() or big[2000:].any())
        ba = bytearray(2000)
        self.client.get(k, out=ba)
        self.assertEqual(bytes(ba), a.tobytes())

    def test_bytes_and_non_contiguous_sources(self):
        k1, k2 = self.keys(2, "src")
        self.client.put(k1, b"hello kvtc")
        self.assertEqual(self.client.get(k1).tobytes(), b"hello kvtc")
        m = np.arange(64, dtype=np.float16).reshape(8, 8)
        self.client.put(k2, m.T)  # copied to C order first
        self.assertEqual(self.client.get(k2).tobytes(), np.ascontiguousarray(m.T).tobytes())

    def test_layout_gives_shape_dtype_and_positions(self):
        lay = kvtc.make_layout(layers=3, kv_heads=2, head_dim=16, dtype=kvtc.DTYPE_BF16,
                               chunk_tokens=8, rope_style=kvtc.ROPE_HALF_SPLIT,
                               rope_theta=500000.0)
        rng = np.random.default_rng(3)
        chunks = [rng.integers(0, 2**16, size=(3, 2, 8, 2, 16), dtype=np.uint16)
                  for _ in range(3)]
        chunks.append(chunks[0][:, :, :5].copy())  # a shorter tail chunk
        ks = self.keys(4, "lay")
        self.client.put_many(ks, chunks, layout=lay, first_pos=100, parents=[None] + ks[:-1])
        for i, (k, c) in enumerate(zip(ks, chunks)):
            got, meta = self.client.get(k, meta=True)
            self.assertEqual(got.shape, c.shape)
            self.assertEqual(got.dtype, np.uint16)
            np.testing.assert_array_equal(got, c)
            self.assertEqual(meta["first_pos"], 100 + 8 * i)
            self.assertEqual(meta["n_tokens"], c.shape[2])
            self.assertEqual(meta["layout"].head_dim, 16)
            self.assertEqual(meta["tier"], "host")
        lay16 = kvtc.make_layout(lay, dtype=kvtc.DTYPE_FP16)
        k, = self.keys(1, "fp16")
        c = rng.standard_normal((3, 2, 8, 2, 16)).astype(np.float16)
        self.client.put(k, c, layout=lay16)
        got = self.client.get(k)
        self.assertEqual(got.dtype, np.float16)
        np.testing.assert_array_equal(got, c)

    def test_batches_larger_than_max_batch(self):
        n = 3 * MAX_BATCH - 3
        ks = self.keys(n, "batch")
        arrays = [np.full(100 + 37 * i, i, dtype=np.uint16) for i in range(n)]
        self.client.put_many(ks, arrays)
        got = self.client.get_many(ks)
        for a, g in zip(arrays, got):
            self.assertEqual(g.tobytes(), a.tobytes())
        outs = [np.empty_like(a) for a in arrays]
        self.client.get_many(ks, outs)
        for a, o in zip(arrays, outs):
            np.testing.assert_array_equal(a, o)

    def test_get_many_misses_are_none(self):
        ks = self.keys(5, "miss")
        self.client.put_many(ks[::2], [np.full(10, i, np.uint16) for i in range(3)])
        got = self.client.get_many(ks)
        self.assertEqual([g is None for g in got], [False, True, False, True, False])
        self.assertEqual(got[2].view(np.uint16)[0], 1)

    def test_chunk_larger_than_the_first_guess(self):
        k, = self.keys(1, "big")
        a = np.arange(MAX_CHUNK // 2, dtype=np.uint16)  # 4 MiB: above the 1 MiB hint
        fresh = kvtc.Client(self.daemon.addr)
        with fresh:
            fresh.put(k, a)
        with kvtc.Client(self.daemon.addr) as c:  # its size hint is the default
            self.assertEqual(c.get(k).view(np.uint16).tobytes(), a.tobytes())


class TestSharedBuffers(DaemonCase):
    def test_alloc_put_get_free(self):
        """Arrays from alloc() are shared with kvtcd where the local path is
        bound, and work as sources and destinations either way."""
        src, dst = self.client.alloc((1 << 20) + 5), self.client.alloc((1 << 20) + 5)
        self.assertTrue(self.client.server_info["local_path"] == 0 or
                        (self.client.is_shared(src) and self.client.is_shared(dst[100:])))
        self.assertFalse(self.client.is_shared(np.zeros(10, dtype=np.uint8)))
        src[:] = np.random.default_rng(3).integers(0, 256, size=src.size, dtype=np.uint8)
        k, = self.keys(1, "shm")
        self.client.put(k, src)
        self.assertIs(self.client.get(k, out=dst), dst)
        self.assertEqual(dst.tobytes(), src.tobytes())
        self.client.free(src)
        self.client.free(dst)
        with self.assertRaises(ValueError):
            self.client.free(dst)


class TestLookupDeletePin(DaemonCase):
    def test_lookup_counts_leading_hits_of_a_chain(self):
        tokens = list(range(1000, 1064))
        ks = kvtc.chain_keys(tokens, 8, self.id())
        self.assertEqual(self.client.lookup(ks), 0)
        self.client.put_many(ks[:5], [np.full(16, i, np.uint16) for i in range(5)],
                             parents=[None] + ks[:4])
        self.assertEqual(self.client.lookup(ks), 5)
        self.assertEqual(self.client.lookup(ks, tiers=True), (5, ["host"] * 5))
        self.assertEqual(self.client.lookup(ks[0]), 1)  # one key alone
        self.assertEqual(self.client.delete(ks[2]), 1)
        self.assertEqual(self.client.lookup(ks), 2)
        # A chain longer than max_batch is asked in pieces.
        long = kvtc.chain_keys(range(20), 1, self.id() + "long")
        self.client.put_many(long[:13], [b"x"] * 13)
        self.assertEqual(self.client.lookup(long), 13)
        self.assertEqual(self.client.lookup(long[:2 * MAX_BATCH]), 13)
        self.client.put_many(long[13:], [b"y"] * 7)
        self.assertEqual(self.client.lookup(long, tiers=True), (20, ["host"] * 20))
        # The same tokens under another fingerprint are other keys.
        self.assertEqual(self.client.lookup(kvtc.chain_keys(tokens, 8, "other")), 0)

    def test_delete_and_pin(self):
        ks = self.keys(3, "pin")
        self.client.put_many(ks, [b"a", b"b", b"c"])
        self.client.pin(ks[0])
        with self.assertRaises(kvtc.KvtcError) as cm:
            self.client.delete(ks[0])
        self.assertEqual(cm.exception.code, errors.KVTC_EPERM)
        self.assertEqual(cm.exception.name, "KVTC_EPERM")
        self.client.unpin(ks[0])
        self.assertEqual(self.client.delete(ks), 3)
        self.assertEqual(self.client.delete(ks), 0)  # missing_ok
        with self.assertRaises(KeyError):
            self.client.delete(ks, missing_ok=False)
        with self.assertRaises(kvtc.NotFound):
            self.client.pin(ks[1])

    def test_stats(self):
        before = self.client.stats()
        k, = self.keys(1, "s")
        self.client.put(k, b"12345")
        self.client.get(k)
        after = self.client.stats()
        self.assertEqual(after["puts"], before["puts"] + 1)
        self.assertEqual(after["gets"], before["gets"] + 1)
        self.assertGreaterEqual(after["chunks"], 1)
        self.assertIn("uptime_ms", after)
        # The lower tiers (protocol 1.2): this daemon has neither, and caches.
        self.assertEqual(after["gpu_bytes_capacity"], 0)
        self.assertEqual(after["disk_bytes_capacity"], 0)
        for name in ("gpu_bytes_used", "disk_bytes_used", "disk_live_bytes",
                     "disk_dirty_chunks", "promotions", "demotions"):
            self.assertIn(name, after)
        self.assertIs(after["durable"], False)


class TestErrors(DaemonCase):
    def test_miss_raises_keyerror_with_the_code(self):
        k, = self.keys(1, "none")
        with self.assertRaises(KeyError) as cm:
            self.client.get(k)
        e = cm.exception
        self.assertIsInstance(e, kvtc.KvtcError)
        self.assertEqual(e.code, errors.KVTC_ENOENT)
        self.assertIn("KVTC_ENOENT", str(e))
        self.assertIn(k.hex(), str(e))

    def test_too_large_and_too_small(self):
        k, = self.keys(1, "size")
        with self.assertRaises(kvtc.KvtcError) as cm:
            self.client.put(k, np.zeros(MAX_CHUNK + 1, np.uint8))
        self.assertEqual(cm.exception.code, errors.KVTC_ENOSPC)
        self.assertIn("limit", cm.exception.message)
        self.client.put(k, np.zeros(100, np.uint8))
        with self.assertRaises(kvtc.KvtcError) as cm:
            self.client.get(k, out=np.zeros(99, np.uint8))
        self.assertEqual(cm.exception.code, errors.KVTC_ENOSPC)
        self.assertIn("100-byte", str(cm.exception))

    def test_bad_layout_and_sizes(self):
        with self.assertRaises(kvtc.KvtcError) as cm:
            kvtc.make_layout(layers=0, kv_heads=1, head_dim=8, dtype=kvtc.DTYPE_BF16)
        self.assertEqual(cm.exception.code, errors.KVTC_EINVAL)
        lay = kvtc.make_layout(layers=1, kv_heads=1, head_dim=8, dtype=kvtc.DTYPE_BF16,
                               chunk_tokens=4)
        k, = self.keys(1, "lay")
        with self.assertRaises(ValueError):  # 3 bytes are no whole token
            self.client.put(k, b"abc", layout=lay)
        with self.assertRaises(kvtc.KvtcError) as cm:  # the daemon checks sizes too
            self.client.put(k, np.zeros(32, np.uint16), layout=lay, n_tokens=3)
        self.assertEqual(cm.exception.code, errors.KVTC_EINVAL)
        self.assertTrue(cm.exception.message)

    def test_modes_checked_and_raw_chunks_stay_raw(self):
        k, = self.keys(1, "mode")
        with self.assertRaisesRegex(ValueError, "mode="):
            self.client.put(k, b"x", mode="kvtc")
        with self.assertRaisesRegex(ValueError, "want="):
            self.client.get(k, want="compressed")
        with self.assertRaisesRegex(ValueError, "layout"):  # ratio needs a layout
            self.client.put(k, b"x", ratio=8)
        with self.assertRaises(kvtc.KvtcError):  # not a container
            self.client.put(k, b"x" * 64, container=True)
        self.client.put(k, b"x", mode="raw")
        self.assertEqual(self.client.get(k, want="raw").tobytes(), b"x")
        # A chunk stored raw comes back raw whatever want asks for.
        for want in ("kvtc", "container"):
            a, m = self.client.get(k, want=want, meta=True)
            self.assertEqual(a.tobytes(), b"x")
            self.assertEqual(m["encoding"], "raw")

    def test_unusable_outputs(self):
        k, = self.keys(1, "out")
        self.client.put(k, np.zeros(8, np.uint16))
        with self.assertRaises(ValueError):
            self.client.get(k, out=np.zeros((4, 4), np.uint16).T)
        ro = np.zeros(8, np.uint16)
        ro.flags.writeable = False
        with self.assertRaises(ValueError):
            self.client.get(k, out=ro)
        with self.assertRaises(ValueError):
            self.client.get(k, out=b"immutable bytes!")

    def test_connect_failures(self):
        with self.assertRaises(kvtc.KvtcError) as cm:
            kvtc.Client("127.0.0.1:%d" % free_port(), connect_timeout_ms=2000)
        self.assertIn(cm.exception.code, (errors.KVTC_ECONN, errors.KVTC_ETIMEDOUT))
        with self.assertRaises(kvtc.KvtcError) as cm:
            kvtc.Client("127.0.0.1:99999")
        self.assertEqual(cm.exception.code, errors.KVTC_EINVAL)

    def test_closed_client(self):
        c = kvtc.Client(self.daemon.addr)
        with c:
            self.assertEqual(c.server_info["max_batch"], MAX_BATCH)
        c.close()  # idempotent
        with self.assertRaises(ValueError):
            c.lookup(self.keys(1, "closed"))


class TestThreads(DaemonCase):
    def test_shared_client_serializes(self):
        ks = self.keys(40, "t")
        fails = []

        def work(part):
            try:
                for i in range(part, 40, 4):
                    a = np.full(1000 + i, i, np.uint16)
                    self.client.put(ks[i], a)
                    self.assertEqual(self.client.get(ks[i]).tobytes(), a.tobytes())
            except Exception as e:  # reported by the main thread
                fails.append(e)

        threads = [threading.Thread(target=work, args=(p,)) for p in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(fails, [])
        self.assertEqual(self.client.lookup(ks), 40)


if __name__ == "__main__":
    unittest.main()
