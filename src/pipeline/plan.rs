//! The memory plan of one edit, phase by phase: which parts of the model each phase needs on the device, which
//! stay there from one phase (and edit) to the next under a budget, whether the DiT must stream its blocks, the
//! working memory of every phase, and whether it all fits the adapter's limits. Arithmetic from the configs and
//! sizes only; nothing is allocated. [`crate::pipeline::loader::KontextModel`] follows the chosen
//! [`Residency`], and `kontext edit --stats` measures the result against it.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::Result;
use crate::formats::GgmlType;
use crate::model::FluxConfig;
use crate::model::flux::embeddings::TIMESTEP_FEATURES;
use crate::model::t5::T5Config;
use crate::model::vae::config::VaeConfig;
use crate::model::vae::tiling::{DecodeTiling, decoder_peak_bytes};

/// Bytes per activation value (f32).
const VALUE_BYTES: u64 = 4;
/// Side of the image patch one DiT token covers, in pixels (8× VAE, 2×2 packing).
const PIXELS_PER_TOKEN_SIDE: usize = 16;
/// VAE tensors alive at once around its largest one: a resnet block's input, its convolution's output and a
/// group norm's result.
const VAE_LIVE_TENSORS: u64 = 3;
/// Pages the device allocator holds for small allocations (norm scales, biases, parameters of launches) beside
/// the tensors themselves.
const SMALL_ALLOCATION_PAGES: u64 = 16 << 20;
/// The share of a phase's activations the allocator may hold beyond them: pages are sized after the largest
/// allocation served, so a page whose tensors are freed in another order than they came stays partly empty.
const FRAGMENTATION_DIVISOR: u64 = 4;
/// Prompts whose T5 tokens and pooled vector the model keeps ([`crate::pipeline::loader::KontextModel`]).
pub const CACHED_PROMPTS: usize = 4;
/// Encoded references (their VAE latents) the model keeps, by content ([`crate::pipeline::loader::KontextModel`]).
pub const CACHED_REFERENCES: usize = 4;

/// How big the transformer's weights are on the device.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DitWeights {
    /// Every parameter stored packed in this GGUF type (an estimate: real files keep a few small tensors F32/F16).
    Quantized(GgmlType),
    /// Measured on the loaded model or summed from the file's tensors as they are stored on the device.
    DeviceBytes(u64),
}

/// The adapter's limits.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct DeviceLimits {
    /// Largest single buffer (`maxBufferSize`).
    pub max_buffer_size: u64,
    /// Largest storage binding one kernel may see (`maxStorageBufferBindingSize`).
    pub max_storage_buffer_binding_size: u64,
    /// Device memory the whole edit may hold at once, when known.
    pub budget: Option<u64>,
}

impl DeviceLimits {
    /// The limits of `device` ([`crate::device::max_binding_bytes`] for both buffer limits) with `budget`.
    pub fn of(device: &burn::tensor::Device, budget: Option<u64>) -> Self {
        let binding = crate::device::max_binding_bytes(device);
        Self { max_buffer_size: binding, max_storage_buffer_binding_size: binding, budget }
    }
}

/// What the plan is made from.
#[derive(Debug, Clone)]
pub struct PlanInputs {
    /// The transformer's architecture.
    pub flux: FluxConfig,
    /// The transformer's weight size.
    pub dit: DitWeights,
    /// The T5 encoder's architecture (its activations).
    pub t5: T5Config,
    /// Bytes of the T5 encoder's weights.
    pub t5_bytes: u64,
    /// Bytes of the CLIP encoder's weights.
    pub clip_bytes: u64,
    /// The VAE's architecture.
    pub vae: VaeConfig,
    /// Bytes of the VAE's weights.
    pub vae_bytes: u64,
    /// The adapter's limits.
    pub limits: DeviceLimits,
    /// Output width and height in pixels (multiples of 16).
    pub output: (usize, usize),
    /// Width and height in pixels of each reference (multiples of 16).
    pub references: Vec<(usize, usize)>,
    /// T5 tokens (512 in Kontext).
    pub text_tokens: usize,
    /// Whether the pipeline computes every step's modulation vectors up front and may free those weights.
    pub modulation_precomputed: bool,
    /// A residency to plan instead of the one chosen for the budget (`kontext edit --memory`).
    pub residency: Option<Residency>,
    /// Image-stream tensors a step cache keeps between steps ([`crate::pipeline::cache::CacheConfig::residuals`]).
    pub cached_residuals: usize,
    /// Whether the edit is masked ([`crate::pipeline::mask`]): the edited image is encoded too, and its latents,
    /// the noise and the mask stay beside the latents while denoising.
    pub masked: bool,
    /// Device bytes of the LoRA adapters' factors ([`crate::model::flux::Flux::adapter_bytes`]): on the device in
    /// every phase, as they stay while the DiT's own weights come and go.
    pub adapter_bytes: u64,
}

/// Weights of one part of the model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Part {
    /// What they are.
    pub name: String,
    /// Device bytes.
    pub bytes: u64,
}

/// The stages of an edit as memory sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanPhase {
    /// T5 and CLIP encode the prompt.
    TextEncoding,
    /// The VAE encodes the references.
    ReferenceEncoding,
    /// The DiT's modulation layers compute every step's modulations.
    Modulations,
    /// The DiT denoises.
    Denoising,
    /// The VAE decodes the latents.
    Decoding,
}

impl PlanPhase {
    /// Every phase, in order.
    pub const ALL: [Self; 5] =
        [Self::TextEncoding, Self::ReferenceEncoding, Self::Modulations, Self::Denoising, Self::Decoding];

    /// The phase's name in reports.
    pub fn label(self) -> &'static str {
        match self {
            Self::TextEncoding => "text encoding",
            Self::ReferenceEncoding => "reference encoding",
            Self::Modulations => "modulations",
            Self::Denoising => "denoising",
            Self::Decoding => "decoding",
        }
    }
}

/// Which parts stay on the device from one phase (and edit) to the next. A part that is not kept is uploaded
/// when a phase needs it and released, its pages returned to the driver, when the phase is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Residency {
    /// The DiT stays between edits (else it is uploaded for each edit's denoising and released after).
    pub keep_dit: bool,
    /// The VAE stays (else it is uploaded to encode references and to decode).
    pub keep_vae: bool,
    /// T5 and CLIP stay after encoding (their output is cached per prompt either way).
    pub keep_text_encoders: bool,
    /// The DiT's modulation layers (27 % of Kontext dev) are released once every step's modulations exist.
    pub release_modulation_weights: bool,
    /// The DiT's blocks are uploaded one at a time from the host as each step needs them, for a DiT larger than
    /// the budget.
    pub stream_dit: bool,
}

impl Residency {
    /// Everything stays on the device.
    pub const KEEP_ALL: Self = Self {
        keep_dit: true,
        keep_vae: true,
        keep_text_encoders: true,
        release_modulation_weights: false,
        stream_dit: false,
    };
    /// The DiT and the VAE stay; the text encoders and the modulation layers are released after use.
    pub const LEAN: Self = Self { keep_text_encoders: false, release_modulation_weights: true, ..Self::KEEP_ALL };
    /// Each part is on the device only in the phases that use it.
    pub const PHASED: Self = Self { keep_dit: false, keep_vae: false, ..Self::LEAN };
    /// [`Residency::PHASED`] with the DiT's blocks streamed.
    pub const STREAMED: Self = Self { stream_dit: true, ..Self::PHASED };

    /// From the most resident to the least: the first that fits a budget is chosen.
    pub const CHOICES: [Self; 6] = [
        Self::KEEP_ALL,
        Self { keep_text_encoders: true, ..Self::LEAN },
        Self::LEAN,
        Self { keep_dit: true, ..Self::PHASED },
        Self::PHASED,
        Self::STREAMED,
    ];

    /// Without a budget: [`Residency::LEAN`] for DiTs of a gigabyte or more on a GPU (reloading costs an
    /// upload per edit, worth it only where memory is short), else everything stays.
    pub fn unbudgeted(gpu: bool, dit_bytes: u64) -> Self {
        if gpu && dit_bytes >= 1 << 30 { Self::LEAN } else { Self::KEEP_ALL }
    }

    /// The name of one of [`Residency::CHOICES`] (`--memory` takes the plain ones), else `custom`.
    pub fn name(&self) -> &'static str {
        const NAMES: [&str; 6] = ["keep", "keep, mod. released", "lean", "DiT kept", "phased", "streamed"];
        Self::CHOICES.iter().position(|r| r == self).map_or("custom", |i| NAMES[i])
    }

    /// A short description for reports.
    pub fn describe(&self) -> String {
        let mut kept = Vec::new();
        if self.keep_dit && !self.stream_dit {
            kept.push("DiT");
        }
        if self.keep_vae {
            kept.push("VAE");
        }
        if self.keep_text_encoders {
            kept.push("T5 + CLIP");
        }
        let kept = if kept.is_empty() { "nothing kept between phases".to_string() } else { kept.join(", ") + " kept" };
        let dit = if self.stream_dit { "; DiT blocks streamed per step" } else { "" };
        let modulation = if self.release_modulation_weights { "; modulation layers released after use" } else { "" };
        format!("{kept}{dit}{modulation}")
    }
}

/// The device memory of one phase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PhasePlan {
    /// Which phase.
    pub phase: PlanPhase,
    /// The weights on the device during it: the ones it uses and the ones kept from before.
    pub weights: Vec<Part>,
    /// Activations and caches alive at its busiest moment, with the allocator's slack (its small-allocation
    /// pages and a quarter of the activations for partly empty pages).
    pub working_bytes: u64,
    /// Weights plus working memory.
    pub peak_bytes: u64,
}

/// The parameters of a Flux DiT by how they are used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FluxParams {
    /// Every parameter.
    pub total: u64,
    /// The adaLN modulation layers and the timestep, guidance and pooled-text embedders.
    pub modulation: u64,
    /// One double block without its modulation layers.
    pub double_block: u64,
    /// One single block without its modulation layer.
    pub single_block: u64,
}

impl FluxParams {
    /// What stays on the device while the blocks stream: the input and final projections and the norms.
    pub fn unstreamed(&self, cfg: &FluxConfig) -> u64 {
        self.total
            - self.modulation
            - cfg.depth as u64 * self.double_block
            - cfg.depth_single_blocks as u64 * self.single_block
    }
}

/// The memory plan of one edit.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemoryPlan {
    /// The adapter's limits the plan was made for.
    pub limits: DeviceLimits,
    /// Output width and height in pixels.
    pub output: (usize, usize),
    /// Joint sequence length: text + noise + reference tokens.
    pub tokens: usize,
    /// Which parts stay on the device between phases.
    pub residency: Residency,
    /// Every phase with its weights and working memory.
    pub phases: Vec<PhasePlan>,
    /// Weights held from loading to the decoded image, and between edits.
    pub resident: Vec<Part>,
    /// Weights uploaded for the phases that use them and released after.
    pub released: Vec<Part>,
    /// Sum of `resident`.
    pub resident_bytes: u64,
    /// Bytes uploaded again for every edit after the first (parts not kept, streamed blocks excluded).
    pub reupload_bytes_per_edit: u64,
    /// Bytes uploaded per denoising step when the DiT streams (0 otherwise).
    pub streamed_bytes_per_step: u64,
    /// The largest single DiT activation: a single block's fused `linear1` output `[L, 3·hidden + mlp]`.
    pub largest_activation_bytes: u64,
    /// Whether that activation fits one storage binding.
    pub largest_activation_fits: bool,
    /// Attention's own buffers, O(L·d): q, k, v and the output `[L, hidden]` each.
    pub attention_bytes: u64,
    /// What materialised `[heads, L, L]` scores of every head would take, which attention never allocates.
    pub attention_scores_avoided_bytes: u64,
    /// The score block attention does allocate where it takes the materialised path for whole heads (see
    /// [`crate::kernels::attention::auto_score_bytes`]); 0 on the flash kernel.
    pub attention_score_block_bytes: u64,
    /// How the VAE decodes under the binding limit.
    pub vae_decode: DecodeTiling,
    /// The VAE decoder's largest buffer as planned (per tile when tiled).
    pub vae_decode_peak_bytes: u64,
    /// The largest phase peak: the most device bytes held at once.
    pub peak_bytes: u64,
    /// Whether `peak_bytes` fits the budget, when there is one.
    pub fits_budget: Option<bool>,
}

/// Parameters of a Flux DiT with `cfg`, by use.
pub fn flux_params(cfg: &FluxConfig) -> FluxParams {
    let (h, m, d) = (cfg.hidden_size as u64, cfg.mlp_hidden() as u64, cfg.head_dim() as u64);
    let linear = |i: u64, o: u64| i * o + o;
    let qkv_bias = if cfg.qkv_bias { 3 * h } else { 0 };
    let modulation_double = 2 * linear(h, 6 * h);
    let double_block = 2 * (h * 3 * h + qkv_bias) + 2 * 2 * d + 2 * linear(h, h) + 2 * (linear(h, m) + linear(m, h));
    let modulation_single = linear(h, 3 * h);
    let single_block = linear(h, 3 * h + m) + linear(h + m, h) + 2 * d;
    let modulation_final = linear(h, 2 * h);
    let embed = |i: u64| linear(i, h) + linear(h, h);
    let (t, guidance) = (TIMESTEP_FEATURES as u64, cfg.guidance_embed as u64);
    let embedders = (1 + guidance) * embed(t) + embed(cfg.vec_in_dim as u64);
    let inputs = linear(cfg.in_channels as u64, h) + linear(cfg.context_in_dim as u64, h);
    let (nd, ns) = (cfg.depth as u64, cfg.depth_single_blocks as u64);
    let modulation = nd * modulation_double + ns * modulation_single + modulation_final + embedders;
    let total = nd * double_block + ns * single_block + modulation + inputs + linear(h, cfg.in_channels as u64);
    FluxParams { total, modulation, double_block, single_block }
}

/// Device memory a DiT block holds in activations over `tokens` tokens: a single block's live tensors at its
/// busiest, after attention — its input `[L, h]`, the fused `linear1` output `[L, 3h + m]`, the attention output
/// `[L, h]`, the MLP activation `[L, m]`, their concatenation `[L, h + m]` and the `linear2` output `[L, h]`.
pub fn dit_working_bytes(cfg: &FluxConfig, tokens: usize) -> u64 {
    let (h, m) = (cfg.hidden_size as u64, cfg.mlp_hidden() as u64);
    tokens as u64 * (6 * h + 3 * m) * VALUE_BYTES
}

/// Device memory the T5 encoder holds in activations over `tokens` tokens: the residual stream and a normed
/// copy, q/k/v and the attention output, the two feed-forward projections and their product, and the position
/// bias `[h, L, L]` (the flash kernel keeps no scores, [`crate::kernels::attention::biased_attention`]).
pub fn t5_working_bytes(cfg: &T5Config, tokens: usize) -> u64 {
    let (l, inner) = (tokens as u64, (cfg.num_heads * cfg.d_kv) as u64);
    let streams = l * (2 * cfg.d_model as u64 + 4 * inner + 3 * cfg.d_ff as u64);
    let position_bias = cfg.num_heads as u64 * l * l;
    (streams + position_bias) * VALUE_BYTES
}

/// Device bytes of each part and the working memory of each phase, from which phases are planned under any
/// residency.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    /// The DiT without its modulation layers.
    dit_core: u64,
    /// The DiT's modulation layers.
    modulation: u64,
    /// What stays while the blocks stream: the DiT's input and final projections and norms.
    unstreamed: u64,
    /// The largest block without its modulation layers.
    block: u64,
    t5: u64,
    clip: u64,
    vae: u64,
    /// Cached text conditioning and reference latents, alive in every phase.
    caches: u64,
    /// Working memory of text encoding, reference encoding, modulations, denoising and decoding.
    working: [u64; 5],
    /// Whether there are references to encode.
    references: bool,
    /// The LoRA adapters' factors.
    adapters: u64,
}

impl Sizes {
    fn phases(&self, r: Residency) -> Vec<PhasePlan> {
        let streamed = r.stream_dit;
        let transformer = match streamed {
            true => part("transformer outside its blocks", self.unstreamed),
            false => part("transformer", self.dit_core),
        };
        let modulation = part("modulation layers", self.modulation);
        let mut kept = Vec::new();
        if self.adapters > 0 {
            kept.push(part("LoRA adapters", self.adapters));
        }
        if r.keep_dit && !streamed {
            kept.push(transformer.clone());
            if !r.release_modulation_weights {
                kept.push(modulation.clone());
            }
        }
        if r.keep_vae {
            kept.push(part("vae", self.vae));
        }
        let encoders = [part("t5", self.t5), part("clip", self.clip)];
        if r.keep_text_encoders {
            kept.extend(encoders.iter().cloned());
        }
        let mut dit = vec![transformer];
        if streamed {
            dit.push(part("one transformer block (streamed)", self.block));
        }
        if !r.release_modulation_weights {
            dit.push(modulation.clone());
        }
        PlanPhase::ALL
            .into_iter()
            .zip(self.working)
            .filter(|(phase, _)| self.references || *phase != PlanPhase::ReferenceEncoding)
            .map(|(phase, working)| {
                let needed = match phase {
                    PlanPhase::TextEncoding => encoders.to_vec(),
                    PlanPhase::ReferenceEncoding | PlanPhase::Decoding => vec![part("vae", self.vae)],
                    PlanPhase::Modulations => {
                        let mut parts = dit.clone();
                        parts.retain(|p| !p.name.starts_with("one transformer block"));
                        parts.push(modulation.clone());
                        parts
                    }
                    PlanPhase::Denoising => dit.clone(),
                };
                let mut weights = kept.clone();
                for p in needed {
                    if !weights.iter().any(|w| w.name == p.name) {
                        weights.push(p);
                    }
                }
                let working_bytes = working + self.caches;
                let working_bytes = working_bytes + SMALL_ALLOCATION_PAGES + working_bytes / FRAGMENTATION_DIVISOR;
                let peak_bytes = weights.iter().map(|p| p.bytes).sum::<u64>() + working_bytes;
                PhasePlan { phase, weights, working_bytes, peak_bytes }
            })
            .collect()
    }
}

impl MemoryPlan {
    /// Plans an edit: under [`PlanInputs::residency`] when given, else the most resident [`Residency::CHOICES`]
    /// that fits the budget (the last, streaming, when none does), else [`Residency::unbudgeted`]. Errors when
    /// not even the smallest VAE tile fits the binding limit.
    pub fn new(inputs: &PlanInputs) -> Result<Self> {
        let cfg = &inputs.flux;
        let params = flux_params(cfg);
        let bytes_of = |n: u64| match inputs.dit {
            DitWeights::Quantized(ty) => n * ty.type_size() as u64 / ty.block_size() as u64,
            DitWeights::DeviceBytes(bytes) => (bytes as u128 * n as u128 / params.total as u128) as u64,
        };
        let dit_bytes = match inputs.dit {
            DitWeights::DeviceBytes(bytes) => bytes,
            DitWeights::Quantized(_) => bytes_of(params.total),
        };
        let modulation_bytes = bytes_of(params.modulation);
        let tokens_of = |(w, h): (usize, usize)| (w / PIXELS_PER_TOKEN_SIDE) * (h / PIXELS_PER_TOKEN_SIDE);
        let image_tokens = tokens_of(inputs.output) + inputs.references.iter().copied().map(tokens_of).sum::<usize>();
        let tokens = inputs.text_tokens + image_tokens;
        let l = tokens as u64;
        let hidden = cfg.hidden_size as u64;

        let limits = inputs.limits;
        let binding = limits.max_storage_buffer_binding_size.min(limits.max_buffer_size);
        let largest_activation_bytes = l * (3 * hidden + cfg.mlp_hidden() as u64) * VALUE_BYTES;
        let attention_score_block_bytes =
            crate::kernels::attention::auto_score_bytes(cfg.num_heads, tokens, tokens, binding);
        let (latent_w, latent_h) = (inputs.output.0 / 8, inputs.output.1 / 8);
        let vae_decode = DecodeTiling::choose(&inputs.vae, latent_h, latent_w, binding)?;
        let vae_decode_peak_bytes = match vae_decode {
            DecodeTiling::Whole => decoder_peak_bytes(&inputs.vae, latent_h, latent_w),
            DecodeTiling::Tiled { tile, .. } => decoder_peak_bytes(&inputs.vae, tile.min(latent_h), tile.min(latent_w)),
        };
        let pixels = |(w, h): (usize, usize)| (w * h) as u64 * 3 * VALUE_BYTES;
        let embeddings = (inputs.text_tokens * cfg.context_in_dim + cfg.vec_in_dim) as u64 * VALUE_BYTES;
        // A reference's latent `[16, h/8, w/8]`; the cache is planned as if each held the largest of this edit.
        let largest_reference_latent =
            inputs.references.iter().map(|&(w, h)| (16 * (w / 8) * (h / 8)) as u64 * VALUE_BYTES).max().unwrap_or(0);
        // The latents, the sampler's velocity and next latents, and the reference tokens: `[tokens, 64]` each.
        let blended = if inputs.masked { 3 * tokens_of(inputs.output) } else { 0 };
        let latents =
            (3 * tokens_of(inputs.output) + blended + image_tokens) as u64 * cfg.in_channels as u64 * VALUE_BYTES;
        let cached_residuals = (inputs.cached_residuals * image_tokens) as u64 * hidden * VALUE_BYTES;
        let encode_working = inputs
            .references
            .iter()
            .chain(inputs.masked.then_some(&inputs.output))
            .map(|&(w, h)| VAE_LIVE_TENSORS * decoder_peak_bytes(&inputs.vae, h / 8, w / 8) + pixels((w, h)))
            .max()
            .unwrap_or(0);
        let working = [
            t5_working_bytes(&inputs.t5, inputs.text_tokens),
            encode_working,
            embeddings,
            dit_working_bytes(cfg, tokens) + attention_score_block_bytes + latents + cached_residuals,
            VAE_LIVE_TENSORS * vae_decode_peak_bytes + pixels(inputs.output) + latents,
        ];
        let sizes = Sizes {
            dit_core: dit_bytes - modulation_bytes,
            modulation: modulation_bytes,
            unstreamed: bytes_of(params.unstreamed(cfg)),
            block: bytes_of(params.double_block.max(params.single_block)),
            t5: inputs.t5_bytes,
            clip: inputs.clip_bytes,
            vae: inputs.vae_bytes,
            caches: CACHED_PROMPTS as u64 * embeddings + CACHED_REFERENCES as u64 * largest_reference_latent,
            working,
            references: !inputs.references.is_empty(),
            adapters: inputs.adapter_bytes,
        };
        let allowed = |r: Residency| inputs.modulation_precomputed || !r.release_modulation_weights;
        let peak = |r: Residency| sizes.phases(r).iter().map(|p| p.peak_bytes).max().unwrap_or(0);
        let residency = match (inputs.residency, limits.budget) {
            (Some(r), _) => r,
            (None, Some(budget)) => Residency::CHOICES
                .into_iter()
                .filter(|&r| allowed(r))
                .find(|&r| peak(r) <= budget)
                .unwrap_or(Residency::STREAMED),
            (None, None) => Residency::unbudgeted(binding != u64::MAX, dit_bytes),
        };
        let residency = Residency {
            release_modulation_weights: residency.release_modulation_weights && inputs.modulation_precomputed,
            ..residency
        };
        let phases = sizes.phases(residency);
        let peak_bytes = phases.iter().map(|p| p.peak_bytes).max().unwrap_or(0);
        let (mut resident, mut released): (Vec<Part>, Vec<Part>) = (Vec::new(), Vec::new());
        for p in phases.iter().flat_map(|phase| &phase.weights) {
            if resident.contains(p) || released.contains(p) {
                continue;
            }
            match phases.iter().all(|phase| phase.weights.contains(p)) {
                true => resident.push(p.clone()),
                false => released.push(p.clone()),
            }
        }
        let streamed_bytes_per_step = match residency.stream_dit {
            true => sizes.dit_core - sizes.unstreamed,
            false => 0,
        };
        let reupload_bytes_per_edit =
            released.iter().filter(|p| !p.name.starts_with("one transformer block")).map(|p| p.bytes).sum();
        Ok(Self {
            limits,
            output: inputs.output,
            tokens,
            residency,
            resident_bytes: resident.iter().map(|p| p.bytes).sum(),
            resident,
            released,
            reupload_bytes_per_edit,
            streamed_bytes_per_step,
            phases,
            largest_activation_bytes,
            largest_activation_fits: largest_activation_bytes <= binding,
            attention_bytes: 4 * l * hidden * VALUE_BYTES,
            attention_scores_avoided_bytes: cfg.num_heads as u64 * l * l * VALUE_BYTES,
            attention_score_block_bytes,
            vae_decode,
            vae_decode_peak_bytes,
            peak_bytes,
            fits_budget: limits.budget.map(|budget| peak_bytes <= budget),
        })
    }

    /// The phase with the largest peak.
    pub fn busiest_phase(&self) -> Option<&PhasePlan> {
        self.phases.iter().max_by_key(|p| p.peak_bytes)
    }

    /// When the plan does not fit its budget: each change that alone would make it fit, with its peak — a
    /// smaller DiT quantization, a smaller output (the references scaled alike) — best first. Empty when it fits
    /// or nothing tried fits.
    pub fn what_would_fit(inputs: &PlanInputs) -> Result<Vec<String>> {
        if inputs.limits.budget.is_none()
            || Self::new(&PlanInputs { residency: None, ..inputs.clone() })?.fits_budget == Some(true)
        {
            return Ok(Vec::new());
        }
        let mut fits = Vec::new();
        let dit_bytes = match inputs.dit {
            DitWeights::DeviceBytes(bytes) => bytes,
            DitWeights::Quantized(ty) => {
                flux_params(&inputs.flux).total * ty.type_size() as u64 / ty.block_size() as u64
            }
        };
        for ty in [GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q4_0, GgmlType::Q2_K] {
            let smaller = PlanInputs { dit: DitWeights::Quantized(ty), residency: None, ..inputs.clone() };
            let bytes = flux_params(&inputs.flux).total * ty.type_size() as u64 / ty.block_size() as u64;
            if bytes >= dit_bytes - dit_bytes / 10 {
                continue; // not a smaller quantization than the DiT's own, at least not by a tenth
            }
            let plan = Self::new(&smaller)?;
            if plan.fits_budget == Some(true) {
                fits.push(format!("a {ty:?} DiT ({}; peak {})", size(bytes), size(plan.peak_bytes)));
                break;
            }
        }
        let (w, h) = inputs.output;
        for side in [1024usize, 768, 512, 384, 256] {
            let scale = (side * side) as f64 / (w * h) as f64;
            if scale >= 1.0 {
                continue;
            }
            let shrink = |(w, h): (usize, usize)| {
                let f = scale.sqrt();
                let snap = |v: usize| ((v as f64 * f) as usize / PIXELS_PER_TOKEN_SIDE * PIXELS_PER_TOKEN_SIDE).max(16);
                (snap(w), snap(h))
            };
            let smaller = PlanInputs {
                output: shrink(inputs.output),
                references: inputs.references.iter().copied().map(shrink).collect(),
                residency: None,
                ..inputs.clone()
            };
            let plan = Self::new(&smaller)?;
            if plan.fits_budget == Some(true) {
                let (sw, sh) = smaller.output;
                fits.push(format!(
                    "a {sw}×{sh} output ({}; peak {})",
                    plan.residency.describe(),
                    size(plan.peak_bytes)
                ));
                break;
            }
        }
        Ok(fits)
    }
}

fn part(name: &str, bytes: u64) -> Part {
    Part { name: name.to_string(), bytes }
}

pub use crate::error::binary_size as size;

impl fmt::Display for MemoryPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let yes_no = |fits: bool| if fits { "fits" } else { "EXCEEDS" };
        writeln!(f, "memory plan for {}×{} px ({} tokens)", self.output.0, self.output.1, self.tokens)?;
        writeln!(f, "  residency: {}", self.residency.describe())?;
        writeln!(f, "  {:<52} {:>12}", "resident", size(self.resident_bytes))?;
        for p in &self.resident {
            writeln!(f, "    {:<50} {:>12}", p.name, size(p.bytes))?;
        }
        writeln!(f, "  uploaded for the phases that use them")?;
        for p in &self.released {
            writeln!(f, "    {:<50} {:>12}", p.name, size(p.bytes))?;
        }
        for phase in &self.phases {
            let label = format!("{} (working {})", phase.phase.label(), size(phase.working_bytes));
            writeln!(f, "  phase {label:<46} {:>12}", size(phase.peak_bytes))?;
        }
        if self.streamed_bytes_per_step > 0 {
            writeln!(f, "  {:<52} {:>12}", "streamed per step", size(self.streamed_bytes_per_step))?;
        }
        let binding = size(self.limits.max_storage_buffer_binding_size.min(self.limits.max_buffer_size));
        let act = format!("largest activation (binding {binding}: {})", yes_no(self.largest_activation_fits));
        writeln!(f, "  {act:<52} {:>12}", size(self.largest_activation_bytes))?;
        let vae = match self.vae_decode {
            DecodeTiling::Whole => "vae decode whole".to_string(),
            DecodeTiling::Tiled { tile, overlap } => format!("vae decode tiled ({tile} latent px, overlap {overlap})"),
        };
        writeln!(f, "  {vae:<52} {:>12}", size(self.vae_decode_peak_bytes))?;
        let peak = match (self.limits.budget, self.fits_budget) {
            (Some(budget), Some(fits)) => format!("peak (budget {}: {})", size(budget), yes_no(fits)),
            _ => "peak".to_string(),
        };
        write!(f, "  {peak:<52} {:>12}", size(self.peak_bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GB: u64 = 1_000_000_000;

    fn limits(budget: Option<u64>) -> DeviceLimits {
        DeviceLimits { max_buffer_size: 2 << 30, max_storage_buffer_binding_size: 1 << 30, budget }
    }

    fn kontext_1024(limits: DeviceLimits) -> PlanInputs {
        PlanInputs {
            flux: FluxConfig::kontext_dev(),
            dit: DitWeights::Quantized(GgmlType::Q4_0),
            t5: T5Config::v1_1_xxl(),
            t5_bytes: 2_700_000_000,
            clip_bytes: 246_000_000,
            vae: VaeConfig::flux(),
            vae_bytes: 168_000_000,
            limits,
            output: (1024, 1024),
            references: vec![(1024, 1024)],
            text_tokens: 512,
            modulation_precomputed: true,
            residency: None,
            cached_residuals: 0,
            masked: false,
            adapter_bytes: 0,
        }
    }

    #[test]
    fn kontext_dev_params_by_use() {
        // Double block without modulation: 2·(3072·9216 + 9216) qkv + 4·128 norms + 2·(3072² + 3072) proj
        // + 2·(3072·12288 + 12288 + 12288·3072 + 3072) mlp = 226,548,224; single: 3072·21504 + 21504
        // + 15360·3072 + 3072 + 2·128 = 113,271,040. Modulation: 19·2·(3072·18432 + 18432) + 38·(3072·9216 + 9216)
        // + (3072·6144 + 6144) + the time, guidance and vector embedders 32,262,144 = 3,279,710,208.
        let params = flux_params(&FluxConfig::kontext_dev());
        assert_eq!(
            params,
            FluxParams {
                total: 11_901_408_320,
                modulation: 3_279_710_208,
                double_block: 226_548_224,
                single_block: 113_271_040
            }
        );
        // img_in 64·3072 + 3072, txt_in 4096·3072 + 3072, final linear 3072·64 + 64.
        assert_eq!(params.unstreamed(&FluxConfig::kontext_dev()), 12_982_336);
    }

    #[test]
    fn kontext_dev_at_1024_q4_0_without_a_budget_keeps_the_dit_and_the_vae() {
        let default_webgpu =
            DeviceLimits { max_buffer_size: 256 << 20, max_storage_buffer_binding_size: 128 << 20, budget: None };
        let plan = MemoryPlan::new(&kontext_1024(default_webgpu)).unwrap();
        assert_eq!(plan.residency, Residency::LEAN);
        // Q4_0 is 18 bytes per 32 values: 11,901,408,320 · 18 / 32 = 6,694,542,180, of which the modulation
        // layers are 3,279,710,208 · 18 / 32 = 1,844,836,992.
        assert_eq!(plan.resident, vec![part("transformer", 4_849_705_188), part("vae", 168_000_000)]);
        assert_eq!(
            plan.released,
            vec![part("t5", 2_700_000_000), part("clip", 246_000_000), part("modulation layers", 1_844_836_992)]
        );
        // L = 512 + 64² + 64² = 8704; linear1 output 8704 · (3 · 3072 + 12288) · 4 = 748,683,264 > 128 MiB.
        assert_eq!(plan.tokens, 8704);
        assert_eq!(plan.largest_activation_bytes, 748_683_264);
        assert!(!plan.largest_activation_fits);
        assert_eq!(plan.attention_scores_avoided_bytes, 7_272_923_136);
        // VAE at 128×128 latent: 1 GiB whole; 65,536·t² ≤ 128 MiB → tile 40, overlap 10, 104,857,600 per tile.
        assert_eq!(plan.vae_decode, DecodeTiling::Tiled { tile: 40, overlap: 10 });
        let phases: Vec<PlanPhase> = plan.phases.iter().map(|p| p.phase).collect();
        assert_eq!(phases, PlanPhase::ALL);
        // Denoising holds the DiT without its modulation layers, the VAE, the text and reference caches (4 prompts,
        // 4 latents of the 1024² reference) and a single block's activations: 8704 · (6 · 3072 + 3 · 12288) · 4 =
        // 1,925,185,536, plus the latents.
        let denoising = &plan.phases[3];
        assert_eq!(denoising.weights, plan.resident);
        let cache = 4 * (512 * 4096 + 768) * 4 + 4 * (16 * 128 * 128) * 4;
        let latents = (3 * 4096 + 8192) * 64 * 4;
        let working = 1_925_185_536 + latents + cache;
        assert_eq!(denoising.working_bytes, working + (16 << 20) + working / 4);
        assert_eq!(plan.peak_bytes, plan.phases.iter().map(|p| p.peak_bytes).max().unwrap());
        // The VAE encoding a 1 MP reference materialises its mid-block attention scores (16,384² · 4 B).
        assert_eq!(plan.busiest_phase().unwrap().phase, PlanPhase::ReferenceEncoding);
        assert_eq!(plan.fits_budget, None);
        // Without references there is no reference phase.
        let t2i = MemoryPlan::new(&PlanInputs { references: Vec::new(), ..kontext_1024(default_webgpu) }).unwrap();
        assert!(t2i.phases.iter().all(|p| p.phase != PlanPhase::ReferenceEncoding));
    }

    #[test]
    fn the_budget_chooses_the_most_resident_plan_that_fits() {
        let plan = |budget| MemoryPlan::new(&kontext_1024(limits(Some(budget)))).unwrap();
        let mut previous = u64::MAX;
        for (budget, residency) in [
            (24 * GB, Residency::KEEP_ALL),
            (13 * GB, Residency { keep_text_encoders: true, ..Residency::LEAN }),
            (10 * GB, Residency::LEAN),
            (8 * GB, Residency::PHASED),
            (5 * GB, Residency::STREAMED),
        ] {
            let chosen = plan(budget);
            assert_eq!(chosen.residency, residency, "{} GB:\n{chosen}", budget / GB);
            assert_eq!(chosen.fits_budget, Some(true), "{chosen}");
            assert!(chosen.peak_bytes <= budget && chosen.peak_bytes <= previous, "{chosen}");
            previous = chosen.peak_bytes;
        }
        // Streaming holds the DiT's input and final layers (12,982,336 · 18 / 32 = 7,302,564) and one double
        // block (226,548,224 · 18 / 32 = 127,433,376) while it denoises, and uploads every block each step.
        let streamed = plan(5 * GB);
        let denoising = streamed.phases.iter().find(|p| p.phase == PlanPhase::Denoising).unwrap();
        assert_eq!(
            denoising.weights,
            vec![
                part("transformer outside its blocks", 7_302_564),
                part("one transformer block (streamed)", 127_433_376)
            ]
        );
        assert_eq!(streamed.streamed_bytes_per_step, 4_849_705_188 - 7_302_564);
        assert!(streamed.resident.is_empty());
        // Below what streaming needs, nothing fits: the plan says so.
        let tiny_budget = plan(2 * GB);
        assert_eq!((tiny_budget.residency, tiny_budget.fits_budget), (Residency::STREAMED, Some(false)));
    }

    /// Hyper-FLUX's LoRA (rank 64 over every linear layer, about its file's 1,388,026,440 bytes of F32 factors) is on the device
    /// in every phase: a resident part that moves the 10 GB choice from lean to phased, and the peak of every
    /// phase grows by its size.
    #[test]
    fn lora_adapters_are_resident_in_every_phase_and_count_against_the_budget() {
        let adapters = 1_388_026_440;
        let plan = |budget, adapter_bytes| {
            MemoryPlan::new(&PlanInputs { adapter_bytes, ..kontext_1024(limits(Some(budget))) }).unwrap()
        };
        let (without, with) = (plan(10 * GB, 0), plan(10 * GB, adapters));
        assert_eq!((without.residency, with.residency), (Residency::LEAN, Residency::PHASED), "{with}");
        assert_eq!(with.fits_budget, Some(true));
        assert!(with.resident.contains(&part("LoRA adapters", adapters)), "{with}");
        assert!(with.phases.iter().all(|p| p.weights.contains(&part("LoRA adapters", adapters))), "{with}");
        assert!(without.phases.iter().all(|p| p.weights.iter().all(|w| w.name != "LoRA adapters")));
        // Under one residency the adapters add exactly their bytes to every phase.
        let lean = |adapter_bytes| {
            let inputs = PlanInputs { adapter_bytes, residency: Some(Residency::LEAN), ..kontext_1024(limits(None)) };
            MemoryPlan::new(&inputs).unwrap()
        };
        for (a, b) in lean(0).phases.iter().zip(&lean(adapters).phases) {
            assert_eq!(b.peak_bytes - a.peak_bytes, adapters, "{:?}", a.phase);
        }
    }

    #[test]
    fn a_plan_that_does_not_fit_says_what_would() {
        // Streamed, the DiT's size hardly matters: decoding 1024² (whole, with 1 GiB buffers) needs 4.3 GB
        // whatever the quantization, so at 4 GB only a smaller output fits.
        let q8 = PlanInputs { dit: DitWeights::Quantized(GgmlType::Q8_0), ..kontext_1024(limits(Some(4 * GB))) };
        assert_eq!(MemoryPlan::new(&q8).unwrap().fits_budget, Some(false));
        let fits = MemoryPlan::what_would_fit(&q8).unwrap();
        assert_eq!(fits.len(), 1, "{fits:?}");
        assert!(fits[0].starts_with("a 768×768 output") && fits[0].contains("streamed"), "{fits:?}");
        // At 3 GB nothing does: T5 alone needs 3.2 GB to encode.
        let q4_at_3gb = kontext_1024(limits(Some(3 * GB)));
        assert_eq!(MemoryPlan::what_would_fit(&q4_at_3gb).unwrap(), Vec::<String>::new());
        assert!(MemoryPlan::what_would_fit(&PlanInputs { limits: limits(None), ..q8.clone() }).unwrap().is_empty());
        let fitting = PlanInputs { limits: limits(Some(24 * GB)), ..q8 };
        assert!(MemoryPlan::what_would_fit(&fitting).unwrap().is_empty(), "a plan that fits needs no advice");
    }

    #[test]
    fn a_chosen_residency_is_planned_as_given() {
        let inputs = PlanInputs { residency: Some(Residency::KEEP_ALL), ..kontext_1024(limits(Some(8 * GB))) };
        let plan = MemoryPlan::new(&inputs).unwrap();
        assert_eq!(plan.residency, Residency::KEEP_ALL);
        assert_eq!(plan.fits_budget, Some(false));
        assert!(plan.released.is_empty());
        // Every weight is in every phase: 6,694,542,180 + 2,700,000,000 + 246,000,000 + 168,000,000.
        assert_eq!(plan.resident_bytes, 9_808_542_180);
    }

    #[test]
    fn measured_device_bytes_split_by_parameter_share() {
        let inputs = PlanInputs { dit: DitWeights::DeviceBytes(6_800_000_000), ..kontext_1024(limits(None)) };
        let plan = MemoryPlan::new(&inputs).unwrap();
        // 6,800,000,000 · 3,279,710,208 / 11,901,408,320 = 1,873,898,350 (floored).
        assert_eq!(plan.released.iter().find(|p| p.name == "modulation layers").unwrap().bytes, 1_873_898_350);
        assert_eq!(plan.resident[0].bytes, 6_800_000_000 - 1_873_898_350);
        assert_eq!(plan.vae_decode, DecodeTiling::Whole);
    }

    #[test]
    fn display_is_a_short_table_and_json_names_every_field() {
        let plan = MemoryPlan::new(&kontext_1024(limits(Some(10 * GB)))).unwrap();
        let text = plan.to_string();
        println!("{text}");
        assert!(text.starts_with("memory plan for 1024×1024 px (8704 tokens)"), "{text}");
        assert!(text.contains("residency: DiT, VAE kept; modulation layers released after use"), "{text}");
        assert!(text.contains("phase denoising"), "{text}");
        assert!(text.contains("fits"), "{text}");
        assert!(text.lines().count() <= 20, "{text}");
        let json = serde_json::to_value(&plan).unwrap();
        assert_eq!(json["phases"][0]["phase"], "text_encoding");
        assert_eq!(json["residency"]["keep_dit"], true);
        assert_eq!(json["peak_bytes"], plan.peak_bytes);
    }
}
