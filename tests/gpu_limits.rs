//! Buffer limits on burn's wgpu backend (lavapipe without a GPU): under a tiny [`device::with_binding_limit`] the
//! tiny models store their weights in parts and run their MLPs in token chunks, and still equal their goldens;
//! F16/BF16 safetensors weights stay packed in 16 bits and equal the dense CPU model.
#![cfg(not(target_arch = "wasm32"))]

use burn::tensor::{Device, Tensor, TensorData, Tolerance};
use half::{bf16, f16};
use kontext_web::device;
use kontext_web::formats::safetensors::SafetensorsFile;
use kontext_web::formats::weights::Weights;
use kontext_web::harness::testing::{FixtureFile, fixture_path, gpu, max_abs_difference_of, tensor};
use kontext_web::model::FluxConfig;
use kontext_web::model::flux::Flux;
use kontext_web::model::t5::{T5Config, T5Encoder};

/// Small enough that the tiny DiT splits its fused and MLP weights and chunks its MLP activations.
const LIMIT: u64 = 32 << 10;

fn fixture(relative: &str) -> FixtureFile {
    FixtureFile::open(relative)
}

/// Transformer call 0 of the golden run on `device`.
fn forward(model: &Flux, device: &Device) -> Tensor<3> {
    let run = fixture("golden/golden_run.safetensors");
    let input = |key: &str| format!("transformer_in_0_{key}");
    model
        .forward(
            tensor(&run, &input("hidden_states"), device),
            tensor(&run, &input("img_ids"), device),
            tensor(&run, &input("encoder_hidden_states"), device),
            tensor(&run, &input("txt_ids"), device),
            tensor(&run, &input("timestep"), device),
            tensor(&run, &input("pooled_projections"), device),
            Some(tensor(&run, &input("guidance"), device)),
        )
        .unwrap()
}

#[test]
fn split_and_chunked_dit_on_wgpu_matches_the_golden_and_the_whole_run() {
    let gpu = gpu();
    let weights = fixture("bfl_gguf/transformer_bfl.safetensors");
    let golden = tensor::<3>(&fixture("golden/golden_run.safetensors"), "transformer_out_0", &gpu);
    let whole = Flux::load(&FluxConfig::tiny(), &weights, &gpu).unwrap();
    let (split, chunked) = device::with_binding_limit(LIMIT, || {
        let model = Flux::load(&FluxConfig::tiny(), &weights, &gpu).unwrap();
        let out = forward(&model, &gpu);
        (model, out)
    });
    assert_eq!(split.single_blocks[0].linear1.parts.len(), 5, "q, k, v and the MLP input in two");
    assert_eq!(split.double_blocks[1].txt_mlp.layer_2.parts.len(), 2);
    let golden_diff = max_abs_difference_of(chunked.clone(), golden);
    assert!(golden_diff <= 1e-4, "chunked vs golden: {golden_diff:e}");
    let whole_diff = max_abs_difference_of(chunked, forward(&whole, &gpu));
    assert!(whole_diff <= 1e-5, "chunked vs whole: {whole_diff:e}");
}

/// The BFL fixture with every 2-D `.weight` stored as `dtype` (F16 or BF16), the rest F32.
fn sixteen_bit(dtype: &str) -> SafetensorsFile {
    let source = fixture("bfl_gguf/transformer_bfl.safetensors");
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for name in source.names() {
        let host = source.read(&name).unwrap();
        let half = name.ends_with(".weight") && host.shape.len() == 2;
        let bytes: Vec<u8> = match (half, dtype) {
            (false, _) => host.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            (true, "F16") => host.data.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()).collect(),
            (true, _) => host.data.iter().flat_map(|&v| bf16::from_f32(v).to_le_bytes()).collect(),
        };
        let entry = serde_json::json!({
            "dtype": if half { dtype } else { "F32" },
            "shape": host.shape,
            "data_offsets": [data.len(), data.len() + bytes.len()],
        });
        header.insert(name, entry);
        data.extend(bytes);
    }
    let header = serde_json::to_vec(&serde_json::Value::Object(header)).unwrap();
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend(header);
    file.extend(data);
    SafetensorsFile::open(file).unwrap()
}

#[test]
fn sixteen_bit_safetensors_stay_packed_on_wgpu_and_equal_the_dense_cpu_model() {
    let (gpu, cpu) = (gpu(), device::cpu());
    for dtype in ["F16", "BF16"] {
        let weights = sixteen_bit(dtype);
        let dense = Flux::load(&FluxConfig::tiny(), &weights, &cpu).unwrap();
        assert_eq!(dense.packed_linears(), 0);
        let expected = forward(&dense, &cpu).into_data();
        let (packed, out) = device::with_binding_limit(LIMIT, || {
            let model = Flux::load(&FluxConfig::tiny(), &weights, &gpu).unwrap();
            let out = forward(&model, &gpu);
            (model, out)
        });
        let linear1 = &packed.single_blocks[0].linear1;
        assert!(linear1.is_packed() && linear1.parts.len() == 4, "{dtype}: 2-byte rows keep the MLP input whole");
        assert_eq!(packed.packed_linears(), packed.projections().len(), "{dtype}");
        assert_eq!(linear1.device_bytes(), (448 * 64 * 2 + 448 * 4), "{dtype}: 16-bit weights and f32 biases");
        out.into_data().assert_approx_eq::<f32>(&expected, Tolerance::absolute(1e-4));
    }
}

#[test]
fn t5_with_split_weights_and_a_host_embedding_on_wgpu_matches_the_golden() {
    let gpu = gpu();
    let config = fixture_path("FLUX.1-Kontext-dev-tiny/text_encoder_2/config.json");
    let json = std::fs::read_to_string(config).unwrap();
    let weights = fixture("FLUX.1-Kontext-dev-tiny/text_encoder_2/model.safetensors");
    let model = device::with_binding_limit(4096, || {
        T5Encoder::load(&T5Config::from_hf_json(&json).unwrap(), &weights, &gpu).unwrap()
    });
    assert_eq!(model.block[0].dense_relu_dense.wi_0.parts.len(), 2);
    let run = fixture("golden/golden_run.safetensors");
    let ids: Vec<u32> = run.ids("t5_input_ids").iter::<i64>().map(|id| id as u32).collect();
    let out = model.forward(&ids, &gpu).unwrap();
    out.into_data().assert_approx_eq::<f32>(
        &TensorData::new(run.read("t5_prompt_embeds").unwrap().data, [1, ids.len(), 32]),
        Tolerance::absolute(1e-4),
    );
}
