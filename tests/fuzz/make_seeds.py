"""Seeds for the fuzz targets: small valid inputs of every kind each target reads, written to
tests/fuzz/corpus/<target>/. Run once before fuzzing (the fuzzed, minimized corpus is what is committed):

    ~/.cache/kontext-web/venv/bin/python tests/fuzz/make_seeds.py

Needs numpy, gguf, Pillow and sentencepiece (the fixture generator's venv has them)."""

import io
import json
import struct
from pathlib import Path

import gguf
import numpy as np
from PIL import Image
from sentencepiece import sentencepiece_model_pb2

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests/fixtures/tiny"
MODEL = TINY / "FLUX.1-Kontext-dev-tiny"
CORPUS = ROOT / "tests/fuzz/corpus"


def put(target, name, data):
    folder = CORPUS / target
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data if isinstance(data, bytes) else data.encode())


def safetensors_header(path):
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n])


def safetensors_bytes(tensors, metadata=None):
    header, data = {}, b""
    for name, (dtype, shape, payload) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(payload)]}
        data += payload
    if metadata:
        header["__metadata__"] = metadata
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def gguf_bytes(arch, fill):
    path = CORPUS / "tmp.gguf"
    writer = gguf.GGUFWriter(str(path), arch)
    fill(writer)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    data = path.read_bytes()
    path.unlink()
    return data


def gguf_seeds():
    rng = np.random.default_rng(0)
    put("gguf", "quant_vectors.gguf", (TINY / "bfl_gguf/quant_vectors.gguf").read_bytes())

    def metadata_of_every_type(w):
        w.add_uint8("t.u8", 7)
        w.add_int8("t.i8", -7)
        w.add_uint16("t.u16", 700)
        w.add_int16("t.i16", -700)
        w.add_uint32("t.u32", 70000)
        w.add_int32("t.i32", -70000)
        w.add_float32("t.f32", 0.5)
        w.add_uint64("t.u64", 1 << 40)
        w.add_int64("t.i64", -(1 << 40))
        w.add_float64("t.f64", 0.25)
        w.add_bool("t.bool", True)
        w.add_string("t.str", "kontext")
        w.add_array("t.arr", [1, 2, 3])
        w.add_array("t.nested", [[1, 2], [3]])
        w.add_tensor("w", rng.standard_normal((4, 32)).astype(np.float32))
        w.add_tensor("h", rng.standard_normal((2, 32)).astype(np.float16))

    put("gguf", "every_type.gguf", gguf_bytes("flux", metadata_of_every_type))

    def t5_vocab(w):
        tokens = ["<pad>", "</s>", "<unk>", "\u2581a", "\u2581cat", "\u2581", "a", "c", "t", "<0x41>"]
        w.add_tokenizer_model("t5")
        w.add_token_list(tokens)
        w.add_token_scores([0.0, 0.0, 0.0, -1.0, -2.0, -3.0, -4.0, -5.0, -6.0, -7.0])
        w.add_token_types([3, 3, 2, 1, 1, 1, 1, 1, 1, 6])
        w.add_eos_token_id(1)
        w.add_unk_token_id(2)
        w.add_pad_token_id(0)
        w.add_add_space_prefix(True)
        w.add_remove_extra_whitespaces(True)
        w.add_uint32("t5encoder.context_length", 512)
        w.add_uint32("t5encoder.embedding_length", 8)
        w.add_uint32("t5encoder.feed_forward_length", 16)
        w.add_uint32("t5encoder.block_count", 1)
        w.add_uint32("t5encoder.attention.head_count", 2)
        w.add_uint32("t5encoder.attention.key_length", 4)
        w.add_uint32("t5encoder.attention.value_length", 4)
        w.add_float32("t5encoder.attention.layer_norm_epsilon", 1e-6)
        w.add_uint32("t5encoder.attention.relative_buckets_count", 32)
        w.add_tensor("token_embd.weight", rng.standard_normal((10, 8)).astype(np.float32))

    put("gguf", "t5_vocab.gguf", gguf_bytes("t5encoder", t5_vocab))

    # The tiny DiT's names and shapes at Q8_0/F32, so the config is inferred from a complete set.
    header = safetensors_header(TINY / "bfl_gguf/transformer_bfl.safetensors")

    def tiny_dit(w):
        for name, info in header.items():
            if name == "__metadata__":
                continue
            shape = info["shape"]
            values = np.zeros(shape, dtype=np.float32)
            if len(shape) == 2 and shape[1] % 32 == 0:
                w.add_tensor(name, gguf.quants.quantize(values, gguf.GGMLQuantizationType.Q8_0), raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            else:
                w.add_tensor(name, values)

    put("gguf", "tiny_dit_q8_0.gguf", gguf_bytes("flux", tiny_dit))


def safetensors_seeds():
    rng = np.random.default_rng(1)
    f32 = rng.standard_normal((3, 4)).astype(np.float32)
    put(
        "safetensors",
        "dtypes.safetensors",
        safetensors_bytes(
            {
                "f32": ("F32", [3, 4], f32.tobytes()),
                "f16": ("F16", [4], np.ones(4, np.float16).tobytes()),
                "bf16": ("BF16", [2, 2], b"\x80\x3f" * 4),
                "i64": ("I64", [1], struct.pack("<q", 5)),
                "empty": ("F32", [0, 3], b""),
            },
            {"format": "pt"},
        ),
    )
    header = safetensors_header(MODEL / "transformer/diffusion_pytorch_model.safetensors")
    zeros = {
        name: ("BF16", info["shape"], bytes(2 * int(np.prod(info["shape"]))))
        for name, info in header.items()
        if name != "__metadata__"
    }
    put("safetensors", "tiny_dit_diffusers_bf16.safetensors", safetensors_bytes(zeros))
    lora = TINY / "lora/lora_kohya.safetensors"
    lora_header = safetensors_header(lora)
    put(
        "safetensors",
        "lora_kohya_header_shapes.safetensors",
        safetensors_bytes(
            {
                name: ("F16", info["shape"], bytes(2 * int(np.prod(info["shape"]))))
                for name, info in list(lora_header.items())[:12]
                if name != "__metadata__"
            }
        ),
    )


def index_seeds():
    put(
        "safetensors_index",
        "two_shards.json",
        json.dumps(
            {
                "metadata": {"total_size": 16},
                "weight_map": {"t0": "model-00001-of-00002.safetensors", "t1": "model-00002-of-00002.safetensors"},
            }
        ),
    )
    put("safetensors_index", "one_shard.json", json.dumps({"weight_map": {"t0": "diffusion_pytorch_model.safetensors"}}))


def config_seeds():
    put("config", "transformer_config.json", (MODEL / "transformer/config.json").read_bytes())
    put("config", "vae_config.json", (MODEL / "vae/config.json").read_bytes())
    variant = ROOT / "tests/fixtures/variant_b/FLUX.1-Kontext-dev-tiny/transformer/config.json"
    if variant.exists():
        put("config", "variant_b_transformer_config.json", variant.read_bytes())
    for tag, path in [
        ("bfl", TINY / "bfl_gguf/transformer_bfl.safetensors"),
        ("diffusers", MODEL / "transformer/diffusion_pytorch_model.safetensors"),
    ]:
        header = safetensors_header(path)
        shapes = [[name, info["shape"]] for name, info in header.items() if name != "__metadata__"]
        put("config", f"shapes_{tag}.json", json.dumps(shapes))


def tokenizer_seeds():
    vocab = json.loads((MODEL / "tokenizer/vocab.json").read_text())
    small_vocab = {token: i for i, token in enumerate(list(vocab)[:300] + ["<|startoftext|>", "<|endoftext|>"])}
    merges = (MODEL / "tokenizer/merges.txt").read_text().splitlines()[:120]
    put("tokenizer", "clip_vocab_merges", b"\x00" + json.dumps(small_vocab).encode() + b"\x00" + "\n".join(merges).encode())

    t5 = json.loads((MODEL / "tokenizer_2/tokenizer.json").read_text())
    t5["model"]["vocab"] = t5["model"]["vocab"][:200]
    t5["added_tokens"] = [t for t in t5["added_tokens"] if t["id"] < 200]
    put("tokenizer", "t5_tokenizer_json", b"\x02" + json.dumps(t5).encode())

    model = sentencepiece_model_pb2.ModelProto()
    model.ParseFromString((MODEL / "tokenizer_2/spiece.model").read_bytes())
    del model.pieces[200:]
    put("tokenizer", "t5_spiece_model", b"\x03" + model.SerializeToString())


def manifest_seeds():
    chunk = 1 << 25
    files = [
        {
            "path": "flux1-kontext-dev-Q4_K_S.gguf",
            "role": "transformer",
            "url": "https://example.org/flux1-kontext-dev-Q4_K_S.gguf",
            "size": 2 * chunk + 5,
            "chunk_size": chunk,
            "chunks": [
                {"sha256": "ab" * 32, "state": "stored"},
                {"sha256": None, "state": "missing"},
                {"sha256": None, "state": "missing"},
            ],
        },
        {
            "path": "tokenizer/vocab.json",
            "role": "tokenizer",
            "url": None,
            "size": 3,
            "chunk_size": chunk,
            "chunks": [{"sha256": "cd" * 32, "state": "stored"}],
        },
    ]
    for kind, source in [
        ("catalog", {"kind": "catalog", "entries": ["dit-q4_k_s", "t5-q8_0"]}),
        ("urls", {"kind": "urls", "base": "https://example.org/model/"}),
        ("local", {"kind": "local"}),
        ("demo", {"kind": "demo"}),
    ]:
        manifest = {"version": 1, "id": f"model-{kind}", "label": f"A {kind} model", "source": source, "files": files}
        put("manifest", f"{kind}.json", json.dumps(manifest))
    empty = {"version": 1, "id": "empty", "label": "", "source": {"kind": "local"}, "files": []}
    put("manifest", "empty.json", json.dumps(empty))


def image_seeds():
    rng = np.random.default_rng(2)
    pixels = Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8))
    for fmt, options in [("PNG", {}), ("JPEG", {"quality": 80}), ("WEBP", {"quality": 80}), ("WEBP", {"lossless": True})]:
        out = io.BytesIO()
        pixels.save(out, fmt, **options)
        put("image", f"small_{fmt.lower()}{'_lossless' if options.get('lossless') else ''}", out.getvalue())
    for mode in ["L", "LA", "RGBA", "P", "I;16"]:
        out = io.BytesIO()
        pixels.convert(mode).save(out, "PNG")
        put("image", f"mode_{mode.replace(';', '_')}.png", out.getvalue())
    out = io.BytesIO()
    pixels.save(out, "JPEG", progressive=True)
    put("image", "progressive.jpg", out.getvalue())


def lora_seeds():
    """Each LoRA layout of the fixtures cut down to the tensors of two layers, with its metadata."""
    for layout in ["lora_diffusers", "lora_kohya", "lora_comfy", "lora_comfy_updown"]:
        raw = (TINY / f"lora/{layout}.safetensors").read_bytes()
        (n,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8 : 8 + n])
        data = raw[8 + n :]
        names = sorted(name for name in header if name != "__metadata__")
        modules = sorted({name.rsplit(".", 2)[0] for name in names})[:2]
        kept = {
            name: (info["dtype"], info["shape"], data[info["data_offsets"][0] : info["data_offsets"][1]])
            for name, info in header.items()
            if name != "__metadata__" and any(name.startswith(module + ".") for module in modules)
        }
        put("lora", f"{layout}_two_layers.safetensors", safetensors_bytes(kept, header.get("__metadata__")))


if __name__ == "__main__":
    gguf_seeds()
    safetensors_seeds()
    index_seeds()
    config_seeds()
    tokenizer_seeds()
    manifest_seeds()
    image_seeds()
    lora_seeds()
    for folder in sorted(CORPUS.iterdir()):
        files = list(folder.iterdir())
        print(f"{folder.name}: {len(files)} seeds, {sum(f.stat().st_size for f in files)} bytes")
