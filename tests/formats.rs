//! The weight-file readers on the reference fixtures (`tests/fixtures/tiny`, made by tests/fixtures/generator/).
#![cfg(not(target_arch = "wasm32"))]

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use half::f16;
use kontext_web::formats::weights::Weights;
use kontext_web::formats::{ByteSource, FileSource, GgmlType, GgufFile, SafetensorsFile, ShardedSafetensors};
use kontext_web::model::FluxConfig;
use kontext_web::model::flux::infer::{infer_flux_config, tensor_shapes};
use kontext_web::model::inspect::{inspect_gguf, inspect_path, inspect_safetensors};

use kontext_web::harness::testing::{fixture_path as fixture, gguf, run_kontext, safetensors};

fn tiny_transformer_json() -> String {
    std::fs::read_to_string(fixture("FLUX.1-Kontext-dev-tiny/transformer/config.json")).unwrap()
}

#[test]
fn quant_vectors_dequantize_bit_exactly_like_gguf_py() {
    let file = gguf("bfl_gguf/quant_vectors.gguf");
    let expected = safetensors("bfl_gguf/quant_vectors_expected.safetensors");
    let mut types = Vec::new();
    for name in file.names() {
        let got = file.read(&name).unwrap();
        let want = expected.read(&format!("{name}.deq")).unwrap();
        assert_eq!(got.shape, want.shape, "{name}");
        let mismatches = got.data.iter().zip(&want.data).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
        assert_eq!(mismatches, 0, "{name}: {mismatches} values differ from gguf-py");
        types.push(file.tensor(&name).unwrap().ggml_type);
    }
    types.sort();
    use GgmlType::*;
    assert_eq!(types, [F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, BF16]);
}

#[test]
fn every_tiny_transformer_file_infers_the_tiny_config() {
    let declared = FluxConfig::from_diffusers_json(&tiny_transformer_json()).unwrap();
    assert_eq!(declared, FluxConfig::tiny());
    let mut files: Vec<(&str, Box<dyn Weights>)> = vec![
        ("bfl safetensors", Box::new(safetensors("bfl_gguf/transformer_bfl.safetensors"))),
        (
            "diffusers safetensors",
            Box::new(safetensors("FLUX.1-Kontext-dev-tiny/transformer/diffusion_pytorch_model.safetensors")),
        ),
    ];
    for kind in ["F16", "Q4_0", "Q4_K_S", "Q8_0"] {
        let file = gguf(&format!("bfl_gguf/transformer_bfl-{kind}.gguf"));
        assert_eq!(file.architecture(), Some("flux"), "{kind}");
        files.push((kind, Box::new(file)));
    }
    for (kind, weights) in &files {
        let inferred = infer_flux_config(&tensor_shapes(weights.as_ref())).unwrap();
        // Shapes cannot tell the RoPE split: the documented default for head width 16, then config.json's.
        assert_eq!(inferred.axes_dim, FluxConfig::default_axes_dim(16), "{kind}");
        assert_eq!(FluxConfig { axes_dim: vec![4, 4, 8], ..inferred.clone() }, FluxConfig::tiny(), "{kind}");
        assert_eq!(inferred.reconcile(declared.clone()).unwrap(), FluxConfig::tiny(), "{kind}");
    }
    let report = inspect_path(&fixture("FLUX.1-Kontext-dev-tiny")).unwrap();
    assert_eq!((report.format.as_str(), report.architecture.as_deref()), ("safetensors", Some("flux")));
    assert_eq!(report.config, Some(FluxConfig::tiny()));
}

#[test]
fn gguf_f16_and_bfl_safetensors_hold_the_same_weights() {
    let reference = safetensors("bfl_gguf/transformer_bfl.safetensors");
    let file = gguf("bfl_gguf/transformer_bfl-F16.gguf");
    assert_eq!(file.tensors().len(), reference.tensors().len());
    for name in reference.names() {
        let want = reference.read(&name).unwrap();
        let got = file.read(&name).unwrap();
        assert_eq!(got.shape, want.shape, "{name}");
        let exact_f16 = file.tensor(&name).unwrap().ggml_type == GgmlType::F16;
        for (g, w) in got.data.iter().zip(&want.data) {
            let w = if exact_f16 { f16::from_f32(*w).to_f32() } else { *w };
            assert_eq!(g.to_bits(), w.to_bits(), "{name}");
        }
    }
    let (ty, shape, bytes) = file.raw("img_in.weight").unwrap();
    assert_eq!((ty, shape, bytes.len()), (GgmlType::F16, vec![64, 64], 64 * 64 * 2));
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let digits: Vec<u8> = text.bytes().filter(|&c| c != b'=').map(value).collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, &d)| acc | (d as u32) << (18 - 6 * i));
        out.extend(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

#[test]
fn t5_gguf_metadata_reads_byte_for_byte() {
    let file = gguf("bfl_gguf/t5_encoder-F16.gguf");
    let meta = |key: &str| file.metadata(key).unwrap_or_else(|| panic!("no `{key}`"));
    let array = |key: &str| meta(key).as_array().unwrap();
    assert_eq!(file.architecture(), Some("t5encoder"));
    assert_eq!(meta("tokenizer.ggml.model").as_str(), Some("t5"));
    for (key, value) in [
        ("t5encoder.context_length", 512),
        ("t5encoder.embedding_length", 32),
        ("t5encoder.feed_forward_length", 64),
        ("t5encoder.block_count", 2),
        ("t5encoder.attention.head_count", 4),
        ("t5encoder.attention.key_length", 8),
        ("t5encoder.attention.relative_buckets_count", 32),
        ("tokenizer.ggml.eos_token_id", 1),
        ("general.file_type", 1),
    ] {
        assert_eq!(meta(key).as_u64(), Some(value), "{key}");
    }
    assert_eq!(meta("t5encoder.attention.layer_norm_epsilon").as_f32(), Some(1e-6));
    assert_eq!(meta("tokenizer.ggml.add_space_prefix").as_bool(), Some(true));

    let tokenizer: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("FLUX.1-Kontext-dev-tiny/tokenizer_2/tokenizer.json")).unwrap(),
    )
    .unwrap();
    let vocab = tokenizer["model"]["vocab"].as_array().unwrap();
    let tokens = array("tokenizer.ggml.tokens").as_strings().unwrap();
    let scores = array("tokenizer.ggml.scores").as_f32s().unwrap();
    let types = array("tokenizer.ggml.token_type").as_i32s().unwrap();
    assert_eq!((tokens.len(), scores.len(), types.len()), (248, 248, 248));
    assert_eq!(&types[..4], [3, 3, 2, 1]);
    let pieces = vocab.iter().take_while(|p| !p[0].as_str().unwrap().starts_with("<extra_id")).count();
    assert_eq!(pieces, 148);
    for (i, piece) in vocab[..pieces].iter().enumerate() {
        assert_eq!(tokens[i], piece[0].as_str().unwrap(), "token {i}");
        assert_eq!(scores[i], piece[1].as_f64().unwrap() as f32, "score {i}");
    }
    assert!(tokens[pieces..].iter().all(|t| t.starts_with("[PAD")));
    assert!(types[pieces..].iter().all(|&t| t == 5));
    let charsmap = array("tokenizer.ggml.precompiled_charsmap").as_bytes().unwrap();
    let expected = base64_decode(tokenizer["normalizer"]["precompiled_charsmap"].as_str().unwrap());
    assert_eq!(charsmap.len(), 240_007);
    assert!(charsmap == expected.as_slice());

    let hf = safetensors("FLUX.1-Kontext-dev-tiny/text_encoder_2/model.safetensors");
    for (gguf_name, hf_name) in [
        ("token_embd.weight", "shared.weight"),
        ("enc.blk.0.attn_rel_b.weight", "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"),
        ("enc.blk.1.ffn_gate.weight", "encoder.block.1.layer.1.DenseReluDense.wi_0.weight"),
        ("enc.output_norm.weight", "encoder.final_layer_norm.weight"),
    ] {
        let got = file.read(gguf_name).unwrap();
        let want = hf.read(hf_name).unwrap();
        assert_eq!(got.shape, want.shape, "{gguf_name}");
        let rounded: Vec<f32> = want.data.iter().map(|&v| f16::from_f32(v).to_f32()).collect();
        let want = if file.tensor(gguf_name).unwrap().ggml_type == GgmlType::F16 { rounded } else { want.data };
        assert!(got.data == want, "{gguf_name}");
    }
}

#[test]
fn other_components_are_recognised() {
    let t5 = inspect_gguf(&gguf("bfl_gguf/t5_encoder-Q8_0.gguf")).unwrap();
    assert_eq!((t5.architecture.as_deref(), t5.config.as_ref()), (Some("t5encoder"), None));
    assert_eq!(t5.dtypes, BTreeMap::from([("F16".into(), 1), ("F32".into(), 5), ("Q8_0".into(), 15)]));
    let hf_t5 = inspect_safetensors(&safetensors("FLUX.1-Kontext-dev-tiny/text_encoder_2/model.safetensors"), None);
    assert_eq!(hf_t5.unwrap().architecture.as_deref(), Some("t5encoder"));
    let ae = inspect_safetensors(&safetensors("bfl_gguf/ae.safetensors"), None).unwrap();
    assert_eq!((ae.architecture.as_deref(), ae.tensors, ae.config), (Some("vae"), 244, None));
    let vae = inspect_path(&fixture("FLUX.1-Kontext-dev-tiny/vae")).unwrap();
    assert_eq!(vae.architecture.as_deref(), Some("vae"));
    let clip = inspect_path(&fixture("bfl_gguf/clip_l_with_text_projection.safetensors")).unwrap();
    assert_eq!((clip.architecture.as_deref(), clip.tensors), (Some("clip"), 37));
    let bfl = inspect_path(&fixture("bfl_gguf/transformer_bfl-Q4_0.gguf")).unwrap();
    assert_eq!(bfl.dtypes, BTreeMap::from([("F16".into(), 5), ("F32".into(), 53), ("Q4_0".into(), 26)]));
    assert_eq!(bfl.params, inspect_path(&fixture("bfl_gguf/transformer_bfl.safetensors")).unwrap().params);
}

/// Name, dtype, shape and bytes of one tensor written into a shard.
type ShardEntry = (String, String, Vec<usize>, Vec<u8>);

#[test]
fn sharded_index_reads_across_files() {
    let dir = std::env::temp_dir().join(format!("kontext-formats-shards-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let whole =
        std::fs::read(fixture("FLUX.1-Kontext-dev-tiny/transformer/diffusion_pytorch_model.safetensors")).unwrap();
    let source = SafetensorsFile::open(whole).unwrap();
    let mut map = serde_json::Map::new();
    let mut shards: [Vec<ShardEntry>; 2] = Default::default();
    for (i, t) in source.tensors().iter().enumerate() {
        let shard = format!("diffusion_pytorch_model-0000{}-of-00002.safetensors", i % 2 + 1);
        map.insert(t.name.clone(), shard.into());
        shards[i % 2].push((t.name.clone(), t.dtype.clone(), t.shape.clone(), source.raw(&t.name).unwrap()));
    }
    for (i, tensors) in shards.iter().enumerate() {
        let mut header = serde_json::Map::new();
        let mut offset = 0;
        for (name, dtype, shape, bytes) in tensors {
            header.insert(
                name.clone(),
                serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + bytes.len()]}),
            );
            offset += bytes.len();
        }
        let header = serde_json::to_vec(&header).unwrap();
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend(header);
        tensors.iter().for_each(|t| out.extend(&t.3));
        std::fs::write(dir.join(format!("diffusion_pytorch_model-0000{}-of-00002.safetensors", i + 1)), out).unwrap();
    }
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": map}).to_string();
    let index_path = dir.join("diffusion_pytorch_model.safetensors.index.json");
    std::fs::write(&index_path, &index).unwrap();
    std::fs::copy(fixture("FLUX.1-Kontext-dev-tiny/transformer/config.json"), dir.join("config.json")).unwrap();

    let report = inspect_path(&dir);
    let sources: HashMap<String, Box<dyn ByteSource>> = ShardedSafetensors::shard_names(&index)
        .unwrap()
        .into_iter()
        .map(|s| {
            let f: Box<dyn ByteSource> = Box::new(FileSource::open(dir.join(&s)).unwrap());
            (s, f)
        })
        .collect();
    let sharded = ShardedSafetensors::open(&index, sources).unwrap();
    let same = source.names().iter().all(|n| sharded.read(n).unwrap() == source.read(n).unwrap());
    std::fs::remove_dir_all(&dir).unwrap();
    let report = report.unwrap();
    assert_eq!(report.format, "safetensors (2 shards)");
    assert_eq!(report.config, Some(FluxConfig::tiny()));
    assert_eq!(sharded.names().len(), source.tensors().len());
    assert!(same);
}

/// Rebuilds a sparse file from `NAME.extents` ([u64 size][u64 n]([u64 off][u64 len][bytes])*): only the
/// extents are written; `set_len` leaves the rest a hole.
fn restore_sparse(extents: &Path, out: &Path) {
    let mut input = std::fs::File::open(extents).unwrap();
    let word = |input: &mut std::fs::File| {
        let mut b = [0u8; 8];
        input.read_exact(&mut b).unwrap();
        u64::from_le_bytes(b)
    };
    let (size, n) = (word(&mut input), word(&mut input));
    let mut ranges = Vec::new();
    for _ in 0..n {
        let (off, len) = (word(&mut input), word(&mut input));
        let mut bytes = vec![0u8; len as usize];
        input.read_exact(&mut bytes).unwrap();
        ranges.push((off, bytes));
    }
    let mut file = std::fs::File::create(out).unwrap();
    for (off, bytes) in ranges {
        file.seek(SeekFrom::Start(off)).unwrap();
        file.write_all(&bytes).unwrap();
    }
    file.set_len(size).unwrap();
}

#[test]
fn real_scale_headers_are_recognised_without_reading_data() {
    let dir = std::env::temp_dir().join(format!("kontext-formats-real-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let names = ["flux1-kontext-dev-header.safetensors", "flux1-kontext-dev-Q4_0-header.gguf"];
    for name in names {
        restore_sparse(&fixture(&format!("real_scale/{name}.extents")), &dir.join(name));
    }
    let start = Instant::now();
    let reports: Vec<_> = names.iter().map(|n| inspect_path(&dir.join(n))).collect();
    let elapsed = start.elapsed();
    let q4_weight = GgufFile::open(FileSource::open(dir.join(names[1])).unwrap())
        .and_then(|f| f.read("double_blocks.0.img_attn.proj.weight"));
    std::fs::remove_dir_all(&dir).unwrap();

    assert!(elapsed < Duration::from_secs(1), "took {elapsed:?}");
    let safetensors = reports[0].as_ref().unwrap();
    let gguf = reports[1].as_ref().unwrap();
    for report in [safetensors, gguf] {
        assert_eq!(report.architecture.as_deref(), Some("flux"));
        assert_eq!(report.config, Some(FluxConfig::kontext_dev()));
        assert_eq!((report.tensors, report.params), (780, 11_901_408_320));
    }
    assert_eq!(safetensors.dtypes, BTreeMap::from([("BF16".into(), 780)]));
    assert_eq!(safetensors.bytes, 23_802_816_640);
    assert_eq!(gguf.format, "gguf v3");
    assert_eq!(gguf.dtypes, BTreeMap::from([("F16".into(), 5), ("F32".into(), 471), ("Q4_0".into(), 304)]));
    assert_eq!(gguf.bytes, 6_805_934_336);
    let q4_weight = q4_weight.unwrap();
    assert_eq!((q4_weight.shape.as_slice(), q4_weight.data.iter().all(|&v| v == 0.0)), (&[3072, 3072][..], true));
}

#[test]
fn damaged_real_files_are_errors_not_panics() {
    let t5 = std::fs::read(fixture("bfl_gguf/t5_encoder-F16.gguf")).unwrap();
    let parsed = gguf("bfl_gguf/t5_encoder-F16.gguf");
    let header_end = parsed.data_offset() as usize;
    let data_end = parsed.tensors().iter().map(|t| t.offset + t.len).max().unwrap() as usize;
    for cut in [0, 3, 24, 1000, header_end / 2, header_end - 1, header_end + 10, data_end - 1] {
        let err = GgufFile::open(t5[..cut].to_vec()).unwrap_err().to_string();
        assert!(err.contains("not a valid GGUF"), "cut {cut}: {err}");
    }
    let st = std::fs::read(fixture("bfl_gguf/clip_l.safetensors")).unwrap();
    for cut in [0, 7, 8, 100, st.len() - 1] {
        let err = SafetensorsFile::open(st[..cut].to_vec()).unwrap_err().to_string();
        assert!(err.contains("not a valid safetensors"), "cut {cut}: {err}");
    }
}

#[test]
fn cli_inspect_reports_and_fails_in_one_line() {
    let run = |args: &[&str]| run_kontext(env!("CARGO_BIN_EXE_kontext"), args);
    let path = fixture("bfl_gguf/t5_encoder-F16.gguf");
    let out = run(&["inspect", path.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((json["architecture"].as_str(), json["config"].is_null()), (Some("t5encoder"), true));
    assert_eq!(json["tensors"], 21);

    let out = run(&["inspect", fixture("FLUX.1-Kontext-dev-tiny").to_str().unwrap()]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success());
    assert!(text.contains("architecture  flux") && text.contains("depth_single_blocks"), "{text}");

    let bad = std::env::temp_dir().join(format!("kontext-formats-bad-{}.gguf", std::process::id()));
    std::fs::write(&bad, b"GGUF\x03\0\0\0\xff\xff\xff\xff\xff\xff\xff\x7f").unwrap();
    let out = run(&["inspect", bad.to_str().unwrap()]);
    std::fs::remove_file(&bad).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("kontext: ") && stderr.contains("not a valid GGUF"), "{stderr}");
}
