//! LoRA adapters for the Flux transformer, read from the layouts people have, applied at runtime.
//!
//! | layout | tensor names | scale |
//! |---|---|---|
//! | diffusers / PEFT | `transformer.<diffusers module>.lora_A.weight` / `.lora_B.weight` | `lora_alpha / r` from the `lora_adapter_metadata` JSON (`alpha_pattern` / `rank_pattern` per module), 1 without it |
//! | kohya sd-scripts | `lora_unet_<BFL module, '.' → '_'>.lora_down.weight` / `.lora_up.weight` / `.alpha` | `alpha / rank` |
//! | ComfyUI | `diffusion_model.<BFL module>.lora_A.weight` / `.lora_B.weight` (or `lora_down` / `lora_up`) / `.alpha` | `alpha / rank` |
//!
//! A layer's update is `W + w · scale · B · A`. diffusers modules that BFL fuses (q, k, v and the MLP input) keep
//! their own factors: they are stacked into one block-diagonal pair on the fused layer, so every file becomes a
//! `down` `[Σ rank, d_in]` and an `up` `[d_out, Σ rank]` per BFL layer. The base weights are never touched: see
//! [`crate::model::layers::Projection`].

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use crate::formats::safetensors::SafetensorsFile;
use crate::formats::source::ByteSource;
use crate::formats::weights::{HostTensor, Weights};
use crate::model::flux::Flux;
use crate::model::flux::remap::{bfl_module, diffusers_modules};
use crate::model::layers::{AdapterId, LayerUpdate, LoraAdapter, UpdateBlock};
use crate::{Error, Result};

/// Prefixes that put a module in the transformer, longest first.
const TRANSFORMER_PREFIXES: &[&str] = &[
    "model.diffusion_model.",
    "base_model.model.",
    "diffusion_model.",
    "lora_transformer_",
    "transformer.",
    "lora_unet_",
];

/// Prefixes of text-encoder modules (CLIP / T5), which this app does not adapt.
const TEXT_ENCODER_PREFIXES: &[&str] =
    &["lora_te1_", "lora_te2_", "lora_te_", "text_encoder.", "text_encoder_2.", "te."];

/// Which factor a tensor of a LoRA file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Factor {
    /// `A` `[rank, d_in]`.
    Down,
    /// `B` `[d_out, rank]`.
    Up,
    /// The scalar `alpha`.
    Alpha,
}

/// Tensor name suffixes of the factors, in every layout.
const FACTOR_SUFFIXES: &[(&str, Factor)] = &[
    (".lora_A.weight", Factor::Down),
    (".lora_B.weight", Factor::Up),
    (".lora_down.weight", Factor::Down),
    (".lora_up.weight", Factor::Up),
    (".lora.down.weight", Factor::Down),
    (".lora.up.weight", Factor::Up),
    (".alpha", Factor::Alpha),
];

/// The model's linear layers as a LoRA sees them: name → (d_in, rows of each fused part).
struct Targets {
    layers: HashMap<String, (usize, Vec<usize>)>,
    /// `name.replace('.', '_')` of every BFL layer and diffusers module → the dotted name.
    underscored: HashMap<String, String>,
}

impl Targets {
    fn of(model: &Flux) -> Self {
        let hidden = model.config.hidden_size;
        let mut layers = HashMap::new();
        let mut underscored = HashMap::new();
        for (name, projection) in model.projection_names().into_iter().zip(model.projections()) {
            let d_out = projection.d_out();
            let parts = diffusers_modules(&name);
            let rows = match parts.len() {
                3 => vec![d_out / 3; 3],
                4 => vec![hidden, hidden, hidden, d_out.saturating_sub(3 * hidden)],
                _ => vec![d_out],
            };
            for module in parts {
                underscored.insert(module.replace('.', "_"), module);
            }
            underscored.insert(name.replace('.', "_"), name.clone());
            layers.insert(name, (projection.d_in(), rows));
        }
        Self { layers, underscored }
    }

    /// The BFL layer a module name (any layout, prefix stripped) refers to, the fused part it covers (`None`: all
    /// of it) and whether its rows are half-swapped.
    fn resolve(&self, module: &str) -> Option<(String, Option<usize>, bool)> {
        let dotted = self.underscored.get(module).map(String::as_str).unwrap_or(module);
        if self.layers.contains_key(dotted) {
            return Some((dotted.to_string(), None, false));
        }
        let found = bfl_module(dotted)?;
        let part = (found.parts > 1).then_some(found.part);
        self.layers.contains_key(&found.name).then_some((found.name, part, found.swap_halves))
    }
}

/// The factors found for one module of the file.
#[derive(Default)]
struct Found {
    down: Option<HostTensor>,
    up: Option<HostTensor>,
    alpha: Option<f32>,
}

/// PEFT's scaling from the diffusers metadata: `lora_alpha / r`, overridden per module by `alpha_pattern` /
/// `rank_pattern`.
struct PeftScaling {
    rank: f64,
    alpha: f64,
    rank_pattern: BTreeMap<String, f64>,
    alpha_pattern: BTreeMap<String, f64>,
}

impl PeftScaling {
    fn from_metadata(metadata: &BTreeMap<String, String>) -> Result<Option<Self>> {
        let Some(text) = metadata.get("lora_adapter_metadata") else {
            return Ok(None);
        };
        let json: Value = serde_json::from_str(text)
            .map_err(|e| Error::Invalid(format!("its lora_adapter_metadata is not JSON: {e}")))?;
        let field = |name: &str| json.get(format!("transformer.{name}")).or_else(|| json.get(name));
        let number = |name: &str| field(name).and_then(Value::as_f64);
        let pattern = |name: &str| -> BTreeMap<String, f64> {
            field(name)
                .and_then(Value::as_object)
                .map(|map| map.iter().filter_map(|(k, v)| Some((k.clone(), v.as_f64()?))).collect())
                .unwrap_or_default()
        };
        let (Some(rank), Some(alpha)) = (number("r"), number("lora_alpha")) else {
            return Ok(None);
        };
        if rank <= 0.0 || !alpha.is_finite() {
            return Err(Error::Invalid(format!("its metadata has r = {rank}, lora_alpha = {alpha}")));
        }
        Ok(Some(Self { rank, alpha, rank_pattern: pattern("rank_pattern"), alpha_pattern: pattern("alpha_pattern") }))
    }

    fn scale(&self, module: &str) -> f32 {
        let lookup = |patterns: &BTreeMap<String, f64>| {
            patterns
                .iter()
                .find(|(key, _)| module == key.as_str() || module.ends_with(&format!(".{key}")))
                .map(|(_, v)| *v)
        };
        let rank = lookup(&self.rank_pattern).filter(|&r| r > 0.0).unwrap_or(self.rank);
        (lookup(&self.alpha_pattern).unwrap_or(self.alpha) / rank) as f32
    }
}

impl LoraAdapter {
    /// Reads a LoRA safetensors file and resolves it against `model`'s layers.
    pub fn read(source: impl ByteSource + 'static, model: &Flux) -> Result<Self> {
        let file = SafetensorsFile::open(source)?;
        let label = file.label();
        Self::from_weights(&file, file.metadata(), &label, model).map_err(|e| match e {
            Error::Invalid(message) => Error::Invalid(format!("LoRA {label}: {message}")),
            other => other,
        })
    }

    /// [`LoraAdapter::read`] on already-opened tensors and their safetensors metadata.
    pub fn from_weights(
        weights: &dyn Weights,
        metadata: &BTreeMap<String, String>,
        label: &str,
        model: &Flux,
    ) -> Result<Self> {
        let targets = Targets::of(model);
        let peft = PeftScaling::from_metadata(metadata)?;
        let names = weights.names();
        let mut modules: BTreeMap<String, Found> = BTreeMap::new();
        let mut ignored_text_encoder_tensors = 0;
        let mut unknown = Vec::new();
        for name in &names {
            if TEXT_ENCODER_PREFIXES.iter().any(|prefix| name.starts_with(prefix)) {
                ignored_text_encoder_tensors += 1;
                continue;
            }
            let Some((module, factor)) =
                FACTOR_SUFFIXES.iter().find_map(|&(suffix, factor)| Some((name.strip_suffix(suffix)?, factor)))
            else {
                unknown.push(name.clone());
                continue;
            };
            let found = modules.entry(module.to_string()).or_default();
            match factor {
                Factor::Alpha => {
                    let alpha = weights.read(name)?;
                    let [value] = alpha.data[..] else {
                        return Err(Error::Invalid(format!("`{name}` should hold one value, found {:?}", alpha.shape)));
                    };
                    found.alpha = Some(value);
                }
                Factor::Down => found.down = Some(two_dimensional(weights, name)?),
                Factor::Up => found.up = Some(two_dimensional(weights, name)?),
            }
        }
        if modules.is_empty() {
            return Err(nothing_matches(&names));
        }
        if let Some(first) = unknown.first() {
            return Err(Error::Invalid(format!(
                "`{first}` (and {} more tensors) is not a LoRA factor (lora_A/lora_B, lora_down/lora_up or alpha); \
                 DoRA, LoKr and full-weight diffs are not supported",
                unknown.len() - 1
            )));
        }

        let mut parts: BTreeMap<String, Vec<Part>> = BTreeMap::new();
        let mut unmatched = Vec::new();
        for (module, found) in modules {
            let stripped =
                TRANSFORMER_PREFIXES.iter().find_map(|prefix| module.strip_prefix(prefix)).unwrap_or(&module);
            let Some((layer, part, swap_halves)) = targets.resolve(stripped) else {
                unmatched.push(module);
                continue;
            };
            let (Some(down), Some(mut up)) = (found.down, found.up) else {
                return Err(Error::Invalid(format!("`{module}` needs both a down (A) and an up (B) factor")));
            };
            let rank = down.shape[0];
            if rank == 0 || up.shape[1] != rank {
                return Err(Error::Invalid(format!(
                    "`{module}`: down {:?} and up {:?} do not share a rank",
                    down.shape, up.shape
                )));
            }
            let scale = match (found.alpha, &peft) {
                (Some(alpha), _) => alpha / rank as f32,
                (None, Some(peft)) => peft.scale(stripped),
                (None, None) => 1.0,
            };
            up.data.iter_mut().for_each(|v| *v *= scale);
            parts.entry(layer).or_default().push((part, swap_halves, down, up));
        }
        if parts.is_empty() {
            return Err(nothing_matches(&unmatched));
        }
        if let Some(first) = unmatched.first() {
            return Err(Error::Invalid(format!(
                "`{first}` (and {} more modules) matches no layer of this model: is the LoRA for another model?",
                unmatched.len() - 1
            )));
        }

        let mut layers = BTreeMap::new();
        for (layer, parts) in parts {
            let (d_in, rows) = &targets.layers[&layer];
            layers.insert(layer.clone(), fuse(&layer, *d_in, rows, parts)?);
        }
        Ok(Self { id: AdapterId::fresh(), label: label.to_string(), layers, ignored_text_encoder_tensors })
    }

    /// The largest total rank of a layer.
    pub fn max_rank(&self) -> usize {
        self.layers.values().map(LayerUpdate::rank).max().unwrap_or(0)
    }

    /// The total number of factor values.
    pub fn num_params(&self) -> usize {
        let block = |b: &UpdateBlock| b.down.data.len() + b.up.data.len();
        self.layers.values().flat_map(|u| &u.blocks).map(block).sum()
    }

    /// Bytes its factors take on a device once applied ([`LayerUpdate::device_bytes`]).
    pub fn device_bytes(&self) -> usize {
        self.layers.values().map(LayerUpdate::device_bytes).sum()
    }
}

/// The adapters of `adapters` that change the model: those at a strength other than 0.
pub fn active<'a>(adapters: &'a [(&'a LoraAdapter, f32)]) -> impl Iterator<Item = (&'a LoraAdapter, f32)> {
    adapters.iter().filter(|(_, strength)| *strength != 0.0).map(|&(adapter, strength)| (adapter, strength))
}

/// Device bytes of the [`active`] `adapters` ([`Flux::set_adapters`]): what a memory plan counts for them before
/// they are uploaded.
pub fn active_device_bytes(adapters: &[(&LoraAdapter, f32)]) -> u64 {
    active(adapters).map(|(adapter, _)| adapter.device_bytes() as u64).sum()
}

fn two_dimensional(weights: &dyn Weights, name: &str) -> Result<HostTensor> {
    let tensor = weights.read(name)?;
    match tensor.shape[..] {
        [_, _] => Ok(tensor),
        // Some trainers store linear factors as 1×1 convolutions, `[out, in, 1, 1]`.
        [rows, cols, 1, 1] => HostTensor::new(vec![rows, cols], tensor.data),
        _ => Err(Error::Invalid(format!("`{name}` has shape {:?}; a LoRA factor is a matrix", tensor.shape))),
    }
}

fn nothing_matches(names: &[String]) -> Error {
    let found = names.first().map_or("the file has no tensors".to_string(), |first| format!("found e.g. `{first}`"));
    Error::Invalid(format!(
        "no tensor matches a layer of this Flux model; expected LoRA names like \
         `transformer.transformer_blocks.0.attn.to_q.lora_A.weight` (diffusers), \
         `lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight` (kohya) or \
         `diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight` (ComfyUI); {found}"
    ))
}

/// One set of factors of a BFL layer: the fused part it covers (`None`: the whole layer), whether its rows are
/// half-swapped, `down` and `up` (scale folded in).
type Part = (Option<usize>, bool, HostTensor, HostTensor);

/// The parts of one BFL layer as the blocks of its update, by their first row.
fn fuse(layer: &str, d_in: usize, rows: &[usize], parts: Vec<Part>) -> Result<LayerUpdate> {
    let d_out: usize = rows.iter().sum();
    let mut covered = vec![false; d_out];
    let mut blocks = Vec::with_capacity(parts.len());
    for (part, swap_halves, down, part_up) in parts {
        let rank = down.shape[0];
        let (row_offset, part_rows) = match part {
            None => (0, d_out),
            Some(part) => (rows[..part].iter().sum(), rows[part]),
        };
        if down.shape[1] != d_in || part_up.shape[0] != part_rows {
            return Err(Error::Invalid(format!(
                "`{layer}` takes down [rank, {d_in}] and up [{part_rows}, rank]; the file has down {:?} and up {:?}",
                down.shape, part_up.shape
            )));
        }
        if covered[row_offset..row_offset + part_rows].iter().any(|&c| c) {
            return Err(Error::Invalid(format!("`{layer}` is adapted twice in the same file")));
        }
        covered[row_offset..row_offset + part_rows].fill(true);
        let up = match swap_halves {
            true => (0..part_rows)
                .flat_map(|r| part_up.data[(r + part_rows / 2) % part_rows * rank..][..rank].iter().copied())
                .collect(),
            false => part_up.data,
        };
        blocks.push(UpdateBlock {
            rows: row_offset..row_offset + part_rows,
            down,
            up: HostTensor::new(vec![part_rows, rank], up)?,
        });
    }
    blocks.sort_by_key(|block| block.rows.start);
    Ok(LayerUpdate { d_in, d_out, blocks })
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;
    use crate::device::cpu;
    use crate::formats::FileSource;
    use crate::harness::testing::{FixtureFile, assert_data_far_apart, fixture, max_abs_difference};
    use crate::model::FluxConfig;
    use crate::pipeline::cache::StepCache;
    use crate::pipeline::kontext::{Conditioning, KontextDenoiser, References, TextConditioning, sampler};
    use crate::pipeline::loader::{self, Folder};
    use burn::tensor::{Device, Tensor, Tolerance};

    /// The reference LoRA (rank 4, alpha 8) in every layout of `tests/fixtures/tiny/lora`.
    const LAYOUTS: [&str; 4] = ["lora_diffusers", "lora_kohya", "lora_comfy", "lora_comfy_updown"];

    fn tiny_flux(device: &Device) -> Flux {
        Flux::load(&FluxConfig::tiny(), &FixtureFile::open("bfl_gguf/transformer_bfl.safetensors"), device).unwrap()
    }

    fn read(layout: &str, model: &Flux) -> Result<LoraAdapter> {
        LoraAdapter::read(FileSource::open(fixture(&format!("lora/{layout}.safetensors"))).unwrap(), model)
    }

    #[test]
    fn every_layout_gives_the_reference_deltas() {
        let device = cpu();
        let flux = tiny_flux(&device);
        let reference = FixtureFile::open("lora/lora_reference.safetensors");
        for layout in LAYOUTS {
            let adapter = read(layout, &flux).unwrap();
            assert_eq!(adapter.layers.len(), 23, "{layout}");
            for (layer, update) in &adapter.layers {
                // diffusers' q, k and v keep factors of their own: one block each, no zeros for the others.
                let parts = diffusers_modules(layer).len();
                let blocks = if layout == "lora_diffusers" { parts } else { 1 };
                assert_eq!(update.blocks.len(), blocks, "{layout} {layer}");
                let full = update.delta();
                let d_in = update.d_in;
                let mut row = 0;
                for module in diffusers_modules(layer) {
                    let expected = reference.read(&format!("delta.{module}")).unwrap();
                    let rows = expected.shape[0];
                    let worst = max_abs_difference(&full[row * d_in..(row + rows) * d_in], &expected.data);
                    assert!(worst <= 1e-6, "{layout} {module}: {worst:e}");
                    row += rows;
                }
                assert_eq!(row, update.d_out, "{layout} {layer}");
            }
        }
    }

    fn denoise_golden_run(flux: &Flux, device: &Device) -> Vec<Tensor<3>> {
        let run = FixtureFile::open("golden/golden_run.safetensors");
        let text =
            TextConditioning { t5: run.tensor("t5_prompt_embeds", device), pooled: run.tensor("clip_pooled", device) };
        let references = References::from_latents(vec![run.tensor("image_latents_unpacked_scaled", device)]);
        let mut sampler = sampler(run.tensor("latents_init_packed", device), 4);
        let conditioning =
            Conditioning::new(flux, text, references, 10, 8, 2.5, sampler.step_sigmas(), device).unwrap();
        let mut cache = StepCache::none();
        let mut denoiser = KontextDenoiser { flux, conditioning: &conditioning, streamed: None, cache: &mut cache };
        (0..4)
            .map(|_| {
                futures_lite::future::block_on(sampler.step(&mut denoiser)).unwrap();
                sampler.latents().clone()
            })
            .collect()
    }

    /// The control: each strength's final latents are far from the other strength's golden.
    #[test]
    fn every_layout_at_full_and_half_strength_matches_the_golden_run() {
        let device = cpu();
        let mut flux = tiny_flux(&device);
        let golden = FixtureFile::open("lora/golden_lora.safetensors");
        for layout in LAYOUTS {
            let adapter = read(layout, &flux).unwrap();
            for (tag, strength, other) in [("w100", 1.0, "w050"), ("w050", 0.5, "w100")] {
                flux.set_adapters(&[(&adapter, strength)], &device).unwrap();
                let mut last = None;
                for (step, latents) in denoise_golden_run(&flux, &device).into_iter().enumerate() {
                    let expected: Tensor<3> = golden.tensor(&format!("{tag}_latents_after_step_{step}"), &device);
                    let latents = latents.into_data();
                    latents.assert_approx_eq::<f32>(&expected.into_data(), Tolerance::absolute(1e-4));
                    last = Some(latents);
                }
                let control = golden.tensor::<3>(&format!("{other}_latents_after_step_3"), &device).into_data();
                assert_data_far_apart(&last.unwrap(), &control, 1e-4, &format!("{layout} {tag} against {other}"));
            }
        }
    }

    /// The catalog's turbo LoRAs in their real layout (diffusers names over every linear layer, no alphas, BF16
    /// for Turbo-Alpha and F32 for Hyper-FLUX; `tests/fixtures/generator/turbo_lora_golden.py`), at each card's
    /// strength, against diffusers' `load_lora_weights` + `set_adapters`. Controls: without the adapter, and
    /// Hyper-FLUX at full strength, the latents are far from the golden ones.
    #[test]
    fn turbo_lora_layouts_adapt_every_linear_layer_and_match_diffusers() {
        let device = cpu();
        let mut flux = tiny_flux(&device);
        let golden = FixtureFile::open("lora/golden_turbo_lora.safetensors");
        let layers = flux.projection_names().len();
        let last_gap = |flux: &Flux, tag: &str| {
            let latents = denoise_golden_run(flux, &device).pop().unwrap();
            let expected: Tensor<3> = golden.tensor(&format!("{tag}_latents_after_step_3"), &device);
            (latents - expected).abs().max().into_scalar::<f32>()
        };
        for lora in crate::store::catalog::TURBO_LORAS {
            let tag = lora.id.replace('-', "_");
            let adapter = read(&format!("{tag}_layout"), &flux).unwrap();
            assert_eq!(adapter.layers.len(), layers, "{tag}: every linear layer is adapted");
            flux.set_adapters(&[(&adapter, lora.strength)], &device).unwrap();
            for (step, latents) in denoise_golden_run(&flux, &device).into_iter().enumerate() {
                let expected: Tensor<3> = golden.tensor(&format!("{tag}_latents_after_step_{step}"), &device);
                latents.into_data().assert_approx_eq::<f32>(&expected.into_data(), Tolerance::absolute(1e-4));
            }
            if lora.strength < 1.0 {
                flux.set_adapters(&[(&adapter, 1.0)], &device).unwrap();
                assert!(last_gap(&flux, &tag) > 1e-2, "{tag} at full strength matches the card's strength");
            }
            flux.set_adapters(&[], &device).unwrap();
            assert!(last_gap(&flux, &tag) > 1e-2, "{tag}: the golden run does not tell the adapter's effect");
        }
    }

    fn step0(flux: &Flux, device: &Device) -> Tensor<3> {
        let run = FixtureFile::open("golden/golden_run.safetensors");
        let input = |key: &str| format!("transformer_in_0_{key}");
        flux.forward(
            run.tensor(&input("hidden_states"), device),
            run.tensor(&input("img_ids"), device),
            run.tensor(&input("encoder_hidden_states"), device),
            run.tensor(&input("txt_ids"), device),
            run.tensor(&input("timestep"), device),
            run.tensor(&input("pooled_projections"), device),
            Some(run.tensor(&input("guidance"), device)),
        )
        .unwrap()
    }

    fn values(tensor: Tensor<3>) -> Vec<f32> {
        tensor.into_data().try_into_vec_as::<f32>().unwrap()
    }

    #[test]
    fn adapters_combine_and_come_off_without_touching_the_base() {
        let device = cpu();
        let mut flux = tiny_flux(&device);
        let base = values(step0(&flux, &device));
        let kohya = read("lora_kohya", &flux).unwrap();
        let diffusers = read("lora_diffusers", &flux).unwrap();
        flux.set_adapters(&[(&kohya, 1.0)], &device).unwrap();
        let full = values(step0(&flux, &device));
        assert!(max_abs_difference(&full, &base) > 1e-2, "the adapter changes the output");
        flux.set_adapters(&[(&kohya, 0.5), (&diffusers, 0.5)], &device).unwrap();
        assert!(max_abs_difference(&values(step0(&flux, &device)), &full) <= 1e-5);
        flux.set_adapters(&[(&kohya, 0.0)], &device).unwrap();
        assert_eq!(values(step0(&flux, &device)), base);
        flux.set_adapters(&[(&kohya, 1.0)], &device).unwrap();
        flux.set_adapters(&[], &device).unwrap();
        assert_eq!(values(step0(&flux, &device)), base);
    }

    /// The same adapters at the same strengths keep their factors on the device: [`Flux::set_adapters`] says
    /// whether it changed anything, and the outputs say which factors are active.
    #[test]
    fn the_active_adapters_stay_until_others_or_other_strengths_are_asked_for() {
        let device = cpu();
        let mut flux = tiny_flux(&device);
        let base = values(step0(&flux, &device));
        let kohya = read("lora_kohya", &flux).unwrap();
        let diffusers = read("lora_diffusers", &flux).unwrap();
        assert!(flux.set_adapters(&[(&kohya, 1.0)], &device).unwrap());
        let full = values(step0(&flux, &device));
        let bytes = flux.adapter_bytes();
        assert_eq!(bytes, kohya.device_bytes());
        assert!(!flux.set_adapters(&[(&kohya, 1.0)], &device).unwrap(), "the same adapter again is kept");
        assert!(!flux.set_adapters(&[(&kohya, 1.0), (&diffusers, 0.0)], &device).unwrap(), "one at 0 changes nothing");
        assert!(!flux.set_adapters(&[(&kohya.clone(), 1.0)], &device).unwrap(), "a clone is the same adapter");
        assert_eq!((flux.adapter_bytes(), values(step0(&flux, &device))), (bytes, full.clone()));

        assert!(flux.set_adapters(&[(&kohya, 0.5)], &device).unwrap(), "another strength is uploaded");
        assert!(max_abs_difference(&values(step0(&flux, &device)), &full) > 1e-3);
        let again = read("lora_kohya", &flux).unwrap();
        assert!(flux.set_adapters(&[(&again, 1.0)], &device).unwrap(), "the file read again is another adapter");
        assert!(max_abs_difference(&values(step0(&flux, &device)), &full) <= 1e-6);
        assert!(flux.set_adapters(&[(&again, 1.0), (&diffusers, 1.0)], &device).unwrap());
        assert_eq!(flux.adapter_bytes(), again.device_bytes() + diffusers.device_bytes());
        assert!(flux.set_adapters(&[], &device).unwrap());
        assert!(!flux.set_adapters(&[(&kohya, 0.0)], &device).unwrap(), "none active, as before");
        assert_eq!((flux.adapter_bytes(), values(step0(&flux, &device))), (0, base));
    }

    /// Releasing one adapter frees its factors and keeps the others' on the device: asking for those again
    /// uploads nothing. An adapter that is not active is not released.
    #[test]
    fn a_released_adapter_frees_its_factors_and_the_others_stay() {
        let device = cpu();
        let mut flux = tiny_flux(&device);
        let kohya = read("lora_kohya", &flux).unwrap();
        let diffusers = read("lora_diffusers", &flux).unwrap();
        assert!(flux.set_adapters(&[(&diffusers, 1.0)], &device).unwrap());
        let diffusers_only = values(step0(&flux, &device));
        assert!(flux.set_adapters(&[(&kohya, 1.0), (&diffusers, 1.0)], &device).unwrap());
        assert_eq!(flux.adapter_bytes(), kohya.device_bytes() + diffusers.device_bytes());

        assert!(flux.release_adapter(kohya.id));
        assert_eq!(flux.adapter_bytes(), diffusers.device_bytes());
        assert!(max_abs_difference(&values(step0(&flux, &device)), &diffusers_only) <= 1e-6);
        assert!(!flux.set_adapters(&[(&diffusers, 1.0)], &device).unwrap(), "the other adapter stayed");
        assert!(!flux.release_adapter(kohya.id), "released already");
        assert!(flux.release_adapter(diffusers.id));
        assert_eq!(flux.adapter_bytes(), 0);
        assert!(flux.set_adapters(&[(&diffusers, 1.0)], &device).unwrap(), "uploaded again when asked for");
    }

    /// An adapter that fails to upload leaves none active (the previous ones were freed first), and the next
    /// request uploads again. Under a 50,000-byte buffer limit, diffusers' factors fit (q, k, v and the MLP input
    /// apart; the largest is a double block's modulation, 32 × 384 × 4 bytes) and kohya's fused `linear1`
    /// (32 × 448 × 4) does not.
    #[test]
    fn a_failed_upload_leaves_no_adapter_active() {
        let device = cpu();
        let mut flux = tiny_flux(&device);
        let base = values(step0(&flux, &device));
        let kohya = read("lora_kohya", &flux).unwrap();
        let diffusers = read("lora_diffusers", &flux).unwrap();
        let err = crate::device::with_binding_limit(50_000, || {
            assert!(flux.set_adapters(&[(&diffusers, 1.0)], &device).unwrap());
            flux.set_adapters(&[(&kohya, 1.0)], &device).unwrap_err().to_string()
        });
        assert!(err.contains("lora_kohya.safetensors: `single_blocks.0.linear1`: a LoRA factor of rank 4"), "{err}");
        assert_eq!((flux.adapter_bytes(), values(step0(&flux, &device))), (0, base));
        assert!(flux.set_adapters(&[(&diffusers, 1.0)], &device).unwrap(), "uploaded again after the failure");
    }

    #[test]
    fn q8_0_base_with_an_adapter_matches_the_gguf_golden() {
        let device = cpu();
        let folder = Folder(fixture("FLUX.1-Kontext-dev-tiny").into());
        let file = FileSource::open(fixture("bfl_gguf/transformer_bfl-Q8_0.gguf")).unwrap();
        let (mut flux, _) = loader::load_transformer(&folder, Some(Box::new(file)), &device).unwrap();
        let golden = FixtureFile::open("lora/golden_lora_gguf_step0.safetensors");
        let comfy = read("lora_comfy", &flux).unwrap();
        let keys = ["Q8_0_base", "Q8_0_w100", "Q8_0_w050"];
        for (i, (key, strength)) in keys.into_iter().zip([0.0, 1.0, 0.5]).enumerate() {
            flux.set_adapters(&[(&comfy, strength)], &device).unwrap();
            let expected: Tensor<3> = golden.tensor(key, &device);
            let got = step0(&flux, &device).into_data();
            got.assert_approx_eq::<f32>(&expected.into_data(), Tolerance::absolute(1e-4));
            // Negative control: the next strength's golden.
            let other = keys[(i + 1) % keys.len()];
            assert_data_far_apart(
                &got,
                &golden.tensor::<3>(other, &device).into_data(),
                1e-4,
                &format!("{key} against {other}"),
            );
        }
    }

    /// Tensors in memory, with safetensors-style metadata.
    struct Memory(Vec<(String, HostTensor)>);

    impl Weights for Memory {
        fn names(&self) -> Vec<String> {
            self.0.iter().map(|(n, _)| n.clone()).collect()
        }
        fn shape(&self, name: &str) -> Option<Vec<usize>> {
            self.0.iter().find(|(n, _)| n == name).map(|(_, t)| t.shape.clone())
        }
        fn read(&self, name: &str) -> Result<HostTensor> {
            self.0.iter().find(|(n, _)| n == name).map(|(_, t)| t.clone()).ok_or_else(|| Error::Invalid(name.into()))
        }
    }

    fn matrix(rows: usize, cols: usize, seed: f32) -> HostTensor {
        HostTensor::new(vec![rows, cols], (0..rows * cols).map(|i| ((i as f32 + seed) * 0.37).sin()).collect()).unwrap()
    }

    #[test]
    fn final_modulation_rows_swap_between_diffusers_and_bfl_layouts() {
        let device = cpu();
        let flux = tiny_flux(&device);
        let hidden = flux.config.hidden_size;
        let (down, up) = (matrix(2, hidden, 0.0), matrix(2 * hidden, 2, 1.0));
        let mut swapped = up.clone();
        let half = hidden * 2;
        swapped.data.rotate_left(half);
        let diffusers = Memory(vec![
            ("transformer.norm_out.linear.lora_A.weight".into(), down.clone()),
            ("transformer.norm_out.linear.lora_B.weight".into(), up),
        ]);
        let comfy = Memory(vec![
            ("diffusion_model.final_layer.adaLN_modulation.1.lora_down.weight".into(), down),
            ("diffusion_model.final_layer.adaLN_modulation.1.lora_up.weight".into(), swapped),
        ]);
        let metadata = BTreeMap::new();
        let a = LoraAdapter::from_weights(&diffusers, &metadata, "a", &flux).unwrap();
        let b = LoraAdapter::from_weights(&comfy, &metadata, "b", &flux).unwrap();
        assert_eq!(a.layers, b.layers);
        assert_eq!(a.layers.keys().collect::<Vec<_>>(), ["final_layer.adaLN_modulation.1"]);
    }

    #[test]
    fn peft_metadata_sets_the_scale_per_module() {
        let device = cpu();
        let flux = tiny_flux(&device);
        let hidden = flux.config.hidden_size;
        let tensors = Memory(vec![
            ("transformer.proj_out.lora_A.weight".into(), matrix(2, hidden, 0.0)),
            ("transformer.proj_out.lora_B.weight".into(), matrix(flux.config.in_channels, 2, 1.0)),
            ("transformer.x_embedder.lora_A.weight".into(), matrix(2, flux.config.in_channels, 2.0)),
            ("transformer.x_embedder.lora_B.weight".into(), matrix(hidden, 2, 3.0)),
        ]);
        let metadata = |json: &str| BTreeMap::from([("lora_adapter_metadata".to_string(), json.to_string())]);
        let plain = LoraAdapter::from_weights(&tensors, &BTreeMap::new(), "plain", &flux).unwrap();
        let scaled = LoraAdapter::from_weights(
            &tensors,
            &metadata(
                r#"{"transformer.r": 2, "transformer.lora_alpha": 8, "transformer.alpha_pattern": {"proj_out": 1}}"#,
            ),
            "scaled",
            &flux,
        )
        .unwrap();
        let up = |adapter: &LoraAdapter, layer: &str| adapter.layers[layer].blocks[0].up.data[1];
        let ratio = |layer: &str| up(&scaled, layer) / up(&plain, layer);
        assert!((ratio("img_in") - 4.0).abs() < 1e-6, "{}", ratio("img_in"));
        assert!((ratio("final_layer.linear") - 0.5).abs() < 1e-6, "{}", ratio("final_layer.linear"));
        let broken = LoraAdapter::from_weights(&tensors, &metadata("{"), "broken", &flux).unwrap_err();
        assert!(broken.to_string().contains("lora_adapter_metadata is not JSON"), "{broken}");
    }

    #[test]
    fn files_for_nothing_in_the_model_are_refused_with_what_was_expected() {
        let device = cpu();
        let flux = tiny_flux(&device);
        let model_file = FileSource::open(fixture("bfl_gguf/transformer_bfl.safetensors")).unwrap();
        let err = LoraAdapter::read(model_file, &flux).unwrap_err().to_string();
        assert!(err.contains("no tensor matches a layer of this Flux model"), "{err}");
        assert!(err.contains("lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight"), "{err}");

        let unet = Memory(vec![
            ("lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight".into(), matrix(2, 8, 0.0)),
            ("lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight".into(), matrix(8, 2, 0.0)),
        ]);
        let err = LoraAdapter::from_weights(&unet, &BTreeMap::new(), "sdxl", &flux).unwrap_err().to_string();
        assert!(err.contains("found e.g. `lora_unet_down_blocks_0_attentions_0_proj_in`"), "{err}");

        let dora = Memory(vec![
            ("transformer.proj_out.lora_A.weight".into(), matrix(2, 64, 0.0)),
            ("transformer.proj_out.lora_magnitude_vector".into(), matrix(1, 64, 0.0)),
        ]);
        let err = LoraAdapter::from_weights(&dora, &BTreeMap::new(), "dora", &flux).unwrap_err().to_string();
        assert!(
            err.contains("`transformer.proj_out.lora_magnitude_vector` (and 0 more tensors) is not a LoRA factor"),
            "{err}"
        );
    }

    #[test]
    fn a_lora_for_another_width_is_refused_naming_the_layer() {
        let device = cpu();
        let folder = Folder(fixture("../variant_b/FLUX.1-Kontext-dev-tiny").into());
        let (variant, config) = loader::load_transformer(&folder, None, &device).unwrap();
        assert_ne!(config.hidden_size, FluxConfig::tiny().hidden_size);
        let err = read("lora_kohya", &variant).unwrap_err().to_string();
        assert!(err.starts_with("LoRA "), "{err}");
        assert!(
            err.contains("`lora_unet_double_blocks_1_img_attn_proj` (and 7 more modules) matches no layer"),
            "{err}"
        );

        let flux = tiny_flux(&device);
        let wide = Memory(vec![
            ("lora_unet_final_layer_linear.lora_down.weight".into(), matrix(2, 96, 0.0)),
            ("lora_unet_final_layer_linear.lora_up.weight".into(), matrix(flux.config.in_channels, 2, 0.0)),
        ]);
        let err = LoraAdapter::from_weights(&wide, &BTreeMap::new(), "wide", &flux).unwrap_err().to_string();
        assert!(
            err.contains("`final_layer.linear` takes down [rank, 64] and up [64, rank]; the file has down [2, 96]"),
            "{err}"
        );
    }
}
