"""Compressed puts and gets through the Python binding against a real
kvtcd: a profile calibrated in the test (kvtc-dump-kv on stories260K, then
`kvtc calibrate`, as deploy/quickstart.sh does) uploaded, listed and
deleted; put(ratio=) compressed by the daemon; get(want="raw"|"kvtc"|
"container") all giving the same chunk; client containers put as is.
Skips when ../shared (the model) is absent."""

import os
import subprocess
import tempfile
import unittest

import numpy as np

import kvtc
import kvtcd
from kvtc import errors

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SHARED = os.environ.get("KVTC_SHARED") or os.path.join(REPO, "..", "shared")
MODEL = os.path.join(SHARED, "models", "stories260K.bin")
TOKENS = 64


def _run(argv):
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError("%s: exit %d\n%s%s" % (argv[0], r.returncode, r.stdout, r.stderr))
    return r.stdout


class TestCompressed(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not os.path.isfile(MODEL):
            raise unittest.SkipTest("%s is absent: no real KV to calibrate a profile on"
                                    % MODEL)
        dump = os.path.join(kvtcd.BUILD, "bin", "kvtc-dump-kv")
        cli = os.path.join(kvtcd.BUILD, "bin", "kvtc")
        if not (os.access(dump, os.X_OK) and os.access(cli, os.X_OK)):
            raise unittest.SkipTest("kvtc-dump-kv / kvtc not built in %s" % kvtcd.BUILD)
        cls.tmp = tempfile.mkdtemp(prefix="kvtc-pycodec-")
        dumps = []
        for seed in range(1, 5):  # seeds 1-3 to calibrate, 4 to test
            out = os.path.join(cls.tmp, "kv%d.kv" % seed)
            spec = _run([dump, "--model", MODEL, "--seed", str(seed), "--tokens", str(TOKENS),
                         "--dtype", "fp32", "--out", out]).strip()
            dumps.append(out)
        cls.profile_path = os.path.join(cls.tmp, "p.kvtcp")
        _run([cli, "calibrate", "--layout", spec, "--targets", "4,8"] + dumps[:3]
             + [cls.profile_path])
        cls.chunk = np.fromfile(dumps[3], dtype=np.float32)
        cls.daemon = kvtcd.Daemon(extra=["--codec-device", "cpu"])
        cls.client = kvtc.Client(cls.daemon.addr)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        problem = cls.daemon.stop()
        subprocess.run(["rm", "-rf", cls.tmp])
        if problem:
            raise AssertionError(problem)

    def key(self, tag):
        return kvtc.chain_keys([0], 1, "%s.%s" % (self.id(), tag))[0]

    def test_profile_compressed_put_and_every_want(self):
        c = self.client
        with open(self.profile_path, "rb") as fh:
            pbytes = fh.read()
        info = c.upload_profile(self.profile_path)
        self.assertEqual(info["ratios"], [4.0, 8.0])
        self.assertEqual(info["size"], len(pbytes))
        self.assertEqual(c.upload_profile(pbytes)["id"], info["id"])  # bytes; again is fine
        self.assertIn(info["id"], [p["id"] for p in c.profiles()])
        lay = info["layout"]  # the profile's layout: the chunk's must equal it
        self.assertEqual(lay.chunk_tokens, TOKENS)

        k = self.key("c")
        before = c.stats()["bytes_used"]
        c.put(k, self.chunk, layout=lay, ratio=8)
        stored = c.stats()["bytes_used"] - before
        self.assertLess(stored, self.chunk.nbytes // 3, "not stored compressed")

        raw, m = c.get(k, meta=True)
        self.assertEqual(m["encoding"], "raw")
        self.assertEqual(raw.shape, (5, 2, TOKENS, 4, 8))
        flat = raw.reshape(-1)
        err = float(np.sum((flat - self.chunk) ** 2) / np.sum(self.chunk ** 2))
        self.assertLess(err, 0.25, "8x relative error %g" % err)

        # want="kvtc": the container travels, libkvtc decodes the same bytes.
        dec, m = c.get(k, want="kvtc", meta=True)
        self.assertEqual(m["encoding"], "raw")
        self.assertLess(m["wire_size"], self.chunk.nbytes // 3)
        self.assertTrue(np.array_equal(dec, raw), "CPU decode differs from the daemon's")
        out = np.empty_like(self.chunk)
        self.assertIs(c.get(k, out=out, want="kvtc"), out)
        self.assertTrue(np.array_equal(out, flat))

        # want="container": the container itself, flat bytes.
        ctr, m = c.get(k, want="container", meta=True)
        self.assertEqual(m["encoding"], "kvtc")
        self.assertEqual(ctr.dtype, np.uint8)
        self.assertEqual(ctr.ndim, 1)
        self.assertEqual(ctr.nbytes, m["size"])

        # That container put back as a client container (layout from its
        # header) is served raw exactly as before.
        k2 = self.key("ctr")
        c.put(k2, ctr, container=True)
        again, m = c.get(k2, meta=True)
        self.assertEqual(m["n_tokens"], TOKENS)
        self.assertTrue(np.array_equal(again, raw))

        # Deleting the profile: its chunks are not served raw any more,
        # the container still is; the profile is gone from the list.
        c.delete_profile("%016x" % info["id"])
        self.assertNotIn(info["id"], [p["id"] for p in c.profiles()])
        with self.assertRaises(kvtc.KvtcError) as cm:
            c.get(k)
        self.assertEqual(cm.exception.code, errors.KVTC_EPROFILE)
        self.assertEqual(c.get(k, want="container").nbytes, ctr.nbytes)
        with self.assertRaises(kvtc.NotFound):
            c.delete_profile(info["id"])
        with self.assertRaises(kvtc.KvtcError) as cm:  # its profile is gone
            c.put(self.key("late"), ctr, container=True)
        self.assertEqual(cm.exception.code, errors.KVTC_EPROFILE)
        c.upload_profile(pbytes)
        self.assertTrue(np.array_equal(c.get(k), raw))

    def test_no_profile_for_the_layout_stores_raw(self):
        c = self.client
        lay = kvtc.make_layout(layers=1, kv_heads=1, head_dim=8, dtype=kvtc.DTYPE_BF16,
                               chunk_tokens=4)
        k = self.key("raw")
        a = np.arange(64, dtype=np.uint16)
        c.put(k, a, layout=lay, ratio=8)
        got, m = c.get(k, want="kvtc", meta=True)
        self.assertEqual(m["encoding"], "raw")
        self.assertTrue(np.array_equal(got.reshape(-1), a))

    def test_bad_profile_refused(self):
        with self.assertRaises(kvtc.KvtcError) as cm:
            self.client.upload_profile(b"not a profile at all")
        self.assertIn(cm.exception.code, (errors.KVTC_ECORRUPT, errors.KVTC_EVERSION,
                                          errors.KVTC_EINVAL))


if __name__ == "__main__":
    unittest.main()
