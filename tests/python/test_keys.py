"""Keys: the binding's chain equals libkvtc's and an independent SHA-256 of
the documented formula; the struct mirrors match the headers."""

import hashlib
import struct
import unittest

import numpy as np

import kvtc
from kvtc import _types, keys


def reference_chain(tokens, chunk_tokens, fp, parent=None):
    """DESIGN.md section 2 written with hashlib: key_i = SHA-256(key_{i-1}
    || fingerprint || tokens of chunk i as u32 LE); nothing before the
    first chunk's fingerprint without a parent."""
    out, prev = [], parent
    for i in range(len(tokens) // chunk_tokens):
        toks = tokens[i * chunk_tokens:(i + 1) * chunk_tokens]
        h = hashlib.sha256()
        if prev is not None:
            h.update(prev)
        h.update(fp)
        h.update(struct.pack("<%dI" % len(toks), *toks))
        prev = h.digest()
        out.append(prev)
    return out


class TestChainKeys(unittest.TestCase):
    def test_matches_reference_many_chunk_sizes(self):
        rng = np.random.default_rng(1)
        tokens = [int(t) for t in rng.integers(0, 2**32, size=300, dtype=np.uint64)]
        for ct in (1, 2, 7, 16, 64, 256, 299, 300):
            got = kvtc.chain_keys(tokens, ct, b"llama-3.1-8b/bf16/tp0")
            self.assertEqual(got, reference_chain(tokens, ct, b"llama-3.1-8b/bf16/tp0"), ct)
            self.assertEqual(len(got), 300 // ct)

    def test_partial_chunk_and_short_input_get_no_key(self):
        self.assertEqual(kvtc.chain_keys(range(5), 8, b"m"), [])
        self.assertEqual(len(kvtc.chain_keys(range(17), 8, b"m")), 2)

    def test_parent_and_steps_agree(self):
        parent = bytes(range(32))
        toks = list(range(100, 124))
        chain = kvtc.chain_keys(toks, 8, "fp", parent=parent)
        self.assertEqual(chain, reference_chain(toks, 8, b"fp", parent))
        step = parent
        for i in range(3):
            step = kvtc.key_next(step, "fp", toks[8 * i:8 * i + 8])
            self.assertEqual(step, chain[i])
        # A hex parent is the same parent.
        self.assertEqual(kvtc.chain_keys(toks, 8, "fp", parent=parent.hex()), chain)

    def test_token_containers_and_fingerprints(self):
        toks = [3, 1, 4, 1, 5, 9, 2, 6]
        want = kvtc.chain_keys(toks, 4, b"x")
        self.assertEqual(kvtc.chain_keys(np.array(toks, dtype=np.int64), 4, b"x"), want)
        self.assertEqual(kvtc.chain_keys(tuple(toks), 4, "x"), want)
        self.assertNotEqual(kvtc.chain_keys(toks, 4, b"y"), want)
        self.assertEqual(kvtc.chain_keys(toks, 4, None), reference_chain(toks, 4, b""))

    def test_bad_arguments(self):
        with self.assertRaises(ValueError):
            kvtc.chain_keys(range(8), 0, b"m")
        with self.assertRaises(ValueError):
            kvtc.chain_keys([2**32], 1, b"m")
        with self.assertRaises(ValueError):
            kvtc.chain_keys([-1], 1, b"m")
        with self.assertRaises(ValueError):
            keys.to_bytes(b"short")
        with self.assertRaises(ValueError):
            keys.to_bytes("ab")
        with self.assertRaises(TypeError):
            keys.to_bytes(12)


class TestMirrors(unittest.TestCase):
    def test_structs_match_headers(self):
        _types.check_header()  # raises with both field lists on a mismatch

    def test_header_parser_reads_comma_lists(self):
        text = "typedef struct s { uint32_t a, b; char n[4]; void (*cb)(int); } s;"
        self.assertEqual(_types.header_fields(text, "s"), ["a", "b", "n", "cb"])


if __name__ == "__main__":
    unittest.main()
