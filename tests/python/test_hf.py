"""transformers' DynamicCache through kvtcd: a tiny random-weight Llama on the
CPU generates KV, kvtc.hf stores it in chunks, restores it into a fresh
cache, and the continuation's logits must be identical. Skipped when torch
or transformers is missing (run with the repository's .venv to include it)."""

import unittest

import kvtcd

try:
    import torch
    import transformers
    from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM
    from kvtc import hf
    MISSING = None
except ImportError as e:  # the binding's own tests run without torch
    MISSING = "torch/transformers not importable (%s): DynamicCache tests skipped; " \
              "run with KVTC_TEST_PYTHON=.venv/bin/python to include them" % e

import kvtc

CHUNK = 8


def run(model, ids, cache):
    """model(ids) continuing cache; returns (logits, cache). transformers 5.x
    renamed past_key_values to cache (the old name warns)."""
    import inspect
    if "cache" in inspect.signature(model.forward).parameters:
        out = model(ids, cache=cache, use_cache=True)
        return out.logits, out.cache
    out = model(ids, past_key_values=cache, use_cache=True)
    return out.logits, out.past_key_values


def tiny_llama(dtype):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128,
                      num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=512)
    return LlamaForCausalLM(cfg).to(dtype).eval()


@unittest.skipIf(MISSING, MISSING)
class TestDynamicCache(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        try:
            cls.daemon = kvtcd.Daemon()
        except FileNotFoundError as e:
            raise unittest.SkipTest("kvtcd not built: %s" % e)
        cls.client = kvtc.Client(cls.daemon.addr)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        problem = cls.daemon.stop()
        if problem:
            raise AssertionError(problem)

    def roundtrip(self, dtype, n_prefix, n_cont=5):
        model = tiny_llama(dtype)
        gen = torch.Generator().manual_seed(n_prefix)
        ids = torch.randint(0, 256, (1, n_prefix + n_cont), generator=gen)
        prefix, cont = ids[:, :n_prefix], ids[:, n_prefix:]
        stored = n_prefix // CHUNK * CHUNK
        layout = hf.layout_from_config(model.config, dtype, chunk_tokens=CHUNK)
        fp = "tiny-llama/%s/%s" % (dtype, self.id())
        with torch.no_grad():
            # The cache of the whole chunks only: what a restore can give.
            _, cache = run(model, prefix[:, :stored], DynamicCache())
            keys = hf.store(self.client, cache, prefix[0], layout, fp)
            self.assertEqual(len(keys), stored // CHUNK)
            self.assertEqual(self.client.lookup(keys), len(keys))
            rest = prefix[:, stored:]
            want, _ = run(model, torch.cat([rest, cont], 1), cache)

            fresh, n = hf.restore(self.client, prefix[0], layout, fp)
            self.assertEqual(n, stored)
            self.assertEqual(fresh.get_seq_length(), stored)
            got, _ = run(model, torch.cat([rest, cont], 1), fresh)
        self.assertTrue(torch.equal(want, got), "continuation logits differ")

    def test_bf16_roundtrip_gives_identical_logits(self):
        self.roundtrip(torch.bfloat16, 43)  # 5 chunks of 8 + 3 recomputed tokens

    def test_fp32_whole_chunks(self):
        self.roundtrip(torch.float32, 32)

    def test_partial_prefix_and_miss(self):
        model = tiny_llama(torch.bfloat16)
        layout = hf.layout_from_config(model.config, torch.bfloat16, chunk_tokens=CHUNK)
        ids = torch.arange(40).unsqueeze(0)
        fp = self.id()
        with torch.no_grad():
            _, cache = run(model, ids, DynamicCache())
        keys = hf.store(self.client, cache, ids[0], layout, fp)
        self.client.delete(keys[3])
        restored, n = hf.restore(self.client, ids[0], layout, fp)
        self.assertEqual(n, 3 * CHUNK)
        for layer in range(layout.layers):
            k0, v0 = hf._layer_kv(cache, layer)
            k1, v1 = hf._layer_kv(restored, layer)
            self.assertTrue(torch.equal(k0[:, :, :n], k1))
            self.assertTrue(torch.equal(v0[:, :, :n], v1))
        self.assertEqual(hf.restore(self.client, ids[0], layout, "other")[1], 0)


@unittest.skipIf(MISSING, MISSING)
class TestLayout(unittest.TestCase):
    def test_llama31_config(self):
        cfg = LlamaConfig(hidden_size=4096, num_attention_heads=32, num_key_value_heads=8,
                          num_hidden_layers=32, max_position_embeddings=131072,
                          rope_theta=500000.0,
                          rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                        "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                        "original_max_position_embeddings": 8192})
        lay = hf.layout_from_config(cfg, torch.bfloat16, chunk_tokens=256)
        self.assertEqual((lay.layers, lay.kv_heads, lay.head_dim), (32, 8, 128))
        self.assertEqual(lay.dtype, kvtc.DTYPE_BF16)
        self.assertEqual(lay.rope_style, kvtc.ROPE_HALF_SPLIT)
        self.assertEqual(lay.rope_scaling, kvtc.ROPE_SCALING_LLAMA3)
        self.assertEqual(lay.rope_theta, 500000.0)
        self.assertEqual((lay.rope_factor, lay.rope_orig_max_pos), (8.0, 8192))

    def test_chunks_are_canonical(self):
        model = tiny_llama(torch.float32)
        with torch.no_grad():
            _, cache = run(model, torch.arange(20).unsqueeze(0), DynamicCache())
        chunks = hf.cache_to_chunks(cache, CHUNK)
        self.assertEqual(len(chunks), 2)
        k, v = hf._layer_kv(cache, 1)
        c = chunks[1]  # tokens 8..15
        self.assertEqual(tuple(c.shape), (3, 2, CHUNK, 2, 16))
        self.assertTrue(c.is_contiguous())
        # [layer][k|v][token][kv_head][head_dim] against [batch][head][token][dim]
        self.assertTrue(torch.equal(c[1, 0, 2, 1], k[0, 1, 10]))
        self.assertTrue(torch.equal(c[1, 1, 7, 0], v[0, 0, 15]))


if __name__ == "__main__":
    unittest.main()
