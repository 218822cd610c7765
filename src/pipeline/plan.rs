//! The memory plan of one edit: which weights stay on the device, which are released after use, the largest
//! activation (attention is O(L·d), never L×L), whether the VAE decode must tile, and whether it all fits the
//! adapter's limits. Arithmetic from the configs and sizes only; nothing is allocated.

use std::fmt;

use serde::Serialize;

use crate::Result;
use crate::formats::GgmlType;
use crate::model::FluxConfig;
use crate::model::flux::embeddings::TIMESTEP_FEATURES;
use crate::model::vae::config::VaeConfig;
use crate::model::vae::tiling::{DecodeTiling, decoder_peak_bytes};

/// Bytes per activation value (f32).
const VALUE_BYTES: u64 = 4;
/// Side of the image patch one DiT token covers, in pixels (8× VAE, 2×2 packing).
const PIXELS_PER_TOKEN_SIDE: usize = 16;

/// How big the transformer's weights are on the device.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DitWeights {
    /// Every parameter stored packed in this GGUF type (an estimate: real files keep a few small tensors F32/F16).
    Quantized(GgmlType),
    /// Measured on the loaded model (`Flux::device_bytes`).
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

/// What the plan is made from.
#[derive(Debug, Clone)]
pub struct PlanInputs {
    /// The transformer's architecture.
    pub flux: FluxConfig,
    /// The transformer's weight size.
    pub dit: DitWeights,
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
    /// Whether the pipeline computes every step's modulation vectors up front and frees those weights.
    pub modulation_precomputed: bool,
}

/// Weights of one part of the model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Part {
    /// What they are.
    pub name: String,
    /// Device bytes.
    pub bytes: u64,
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
    /// Weights and caches held from loading to the decoded image.
    pub resident: Vec<Part>,
    /// Weights released once used: the text encoders after encoding (the embeddings stay cached) and the
    /// modulation weights after their vectors are precomputed.
    pub released: Vec<Part>,
    /// Sum of `resident`.
    pub resident_bytes: u64,
    /// The largest single DiT activation: a single block's fused `linear1` output `[L, 3·hidden + mlp]`.
    pub largest_activation_bytes: u64,
    /// Whether that activation fits one storage binding.
    pub largest_activation_fits: bool,
    /// Attention's own buffers, O(L·d): q, k, v and the output `[L, hidden]` each.
    pub attention_bytes: u64,
    /// What materialised `[heads, L, L]` scores of every head would take, which attention never allocates.
    pub attention_scores_avoided_bytes: u64,
    /// The score block attention does allocate where it takes the materialised path for whole heads (see
    /// [`crate::kernels::attention::auto_score_bytes`]), alive with the largest activation; 0 on the flash kernel.
    pub attention_score_block_bytes: u64,
    /// How the VAE decodes under the binding limit.
    pub vae_decode: DecodeTiling,
    /// The VAE decoder's largest buffer as planned (per tile when tiled).
    pub vae_decode_peak_bytes: u64,
    /// Most device bytes held at once over text encoding, denoising and decoding, counting weights and the
    /// largest activation of each phase (a lower bound: other live activations come on top).
    pub peak_bytes: u64,
    /// Whether `peak_bytes` fits the budget, when there is one.
    pub fits_budget: Option<bool>,
}

/// Parameters of a Flux DiT with `cfg`: everything, and the adaLN modulation weights among them.
pub fn flux_params(cfg: &FluxConfig) -> (u64, u64) {
    let (h, m, d) = (cfg.hidden_size as u64, cfg.mlp_hidden() as u64, cfg.head_dim() as u64);
    let linear = |i: u64, o: u64| i * o + o;
    let qkv_bias = if cfg.qkv_bias { 3 * h } else { 0 };
    let modulation_double = 2 * linear(h, 6 * h);
    let double = modulation_double
        + 2 * (h * 3 * h + qkv_bias)
        + 2 * 2 * d
        + 2 * linear(h, h)
        + 2 * (linear(h, m) + linear(m, h));
    let modulation_single = linear(h, 3 * h);
    let single = linear(h, 3 * h + m) + linear(h + m, h) + 2 * d + modulation_single;
    let modulation_final = linear(h, 2 * h);
    let embed = |i: u64| linear(i, h) + linear(h, h);
    let (t, guidance) = (TIMESTEP_FEATURES as u64, cfg.guidance_embed as u64);
    let embeddings = linear(cfg.in_channels as u64, h)
        + linear(cfg.context_in_dim as u64, h)
        + (1 + guidance) * embed(t)
        + embed(cfg.vec_in_dim as u64);
    let (nd, ns) = (cfg.depth as u64, cfg.depth_single_blocks as u64);
    let total = nd * double + ns * single + embeddings + linear(h, cfg.in_channels as u64) + modulation_final;
    (total, nd * modulation_double + ns * modulation_single + modulation_final)
}

impl MemoryPlan {
    /// Plans an edit. Errors when not even the smallest VAE tile fits the binding limit.
    pub fn new(inputs: &PlanInputs) -> Result<Self> {
        let cfg = &inputs.flux;
        let (params, modulation_params) = flux_params(cfg);
        let (dit_bytes, modulation_bytes) = match inputs.dit {
            DitWeights::Quantized(ty) => {
                let bytes = |n: u64| n * ty.type_size() as u64 / ty.block_size() as u64;
                (bytes(params), bytes(modulation_params))
            }
            DitWeights::DeviceBytes(bytes) => {
                (bytes, (bytes as u128 * modulation_params as u128 / params as u128) as u64)
            }
        };
        let tokens_of = |(w, h): (usize, usize)| (w / PIXELS_PER_TOKEN_SIDE) * (h / PIXELS_PER_TOKEN_SIDE);
        let tokens = inputs.text_tokens
            + tokens_of(inputs.output)
            + inputs.references.iter().copied().map(tokens_of).sum::<usize>();
        let l = tokens as u64;
        let hidden = cfg.hidden_size as u64;

        let embeddings = (inputs.text_tokens * cfg.context_in_dim + cfg.vec_in_dim) as u64 * VALUE_BYTES;
        let (transformer, mut released) = match inputs.modulation_precomputed {
            true => (
                dit_bytes - modulation_bytes,
                vec![part("modulation weights (after precomputing every step)", modulation_bytes)],
            ),
            false => (dit_bytes, Vec::new()),
        };
        let mut resident =
            vec![part("transformer", transformer), part("vae", inputs.vae_bytes), part("text embeddings", embeddings)];
        let text_encoders = [part("t5", inputs.t5_bytes), part("clip", inputs.clip_bytes)];

        let limits = inputs.limits;
        let binding = limits.max_storage_buffer_binding_size.min(limits.max_buffer_size);
        let largest_activation_bytes = l * (3 * hidden + cfg.mlp_hidden() as u64) * VALUE_BYTES;
        let (latent_w, latent_h) = (inputs.output.0 / 8, inputs.output.1 / 8);
        let vae_decode = DecodeTiling::choose(&inputs.vae, latent_h, latent_w, binding)?;
        let vae_decode_peak_bytes = match vae_decode {
            DecodeTiling::Whole => decoder_peak_bytes(&inputs.vae, latent_h, latent_w),
            DecodeTiling::Tiled { tile, .. } => decoder_peak_bytes(&inputs.vae, tile.min(latent_h), tile.min(latent_w)),
        };

        let sum = |parts: &[Part]| parts.iter().map(|p| p.bytes).sum::<u64>();
        let text_phase = sum(&text_encoders) + embeddings;
        let attention_score_block_bytes =
            crate::kernels::attention::auto_score_bytes(cfg.num_heads, tokens, tokens, binding);
        let working = (largest_activation_bytes + attention_score_block_bytes).max(vae_decode_peak_bytes);
        let keep_text_encoders =
            limits.budget.is_some_and(|budget| sum(&resident) + sum(&text_encoders) + working <= budget);
        match keep_text_encoders {
            true => resident.extend(text_encoders),
            false => released.extend(
                text_encoders.into_iter().map(|p| Part { name: format!("{} (after text encoding)", p.name), ..p }),
            ),
        }
        let resident_bytes = sum(&resident);
        let peak_bytes = text_phase
            .max(resident_bytes + largest_activation_bytes + attention_score_block_bytes)
            .max(resident_bytes + vae_decode_peak_bytes);
        Ok(Self {
            limits,
            output: inputs.output,
            tokens,
            resident,
            released,
            resident_bytes,
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
}

fn part(name: &str, bytes: u64) -> Part {
    Part { name: name.to_string(), bytes }
}

/// Bytes in MiB or GiB with two decimals.
fn size(bytes: u64) -> String {
    match bytes >= 1 << 30 {
        true => format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64),
        false => format!("{:.2} MiB", bytes as f64 / (1u64 << 20) as f64),
    }
}

impl fmt::Display for MemoryPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let yes_no = |fits: bool| if fits { "fits" } else { "EXCEEDS" };
        writeln!(f, "memory plan for {}×{} px ({} tokens)", self.output.0, self.output.1, self.tokens)?;
        writeln!(f, "  {:<52} {:>12}", "resident", size(self.resident_bytes))?;
        for p in &self.resident {
            writeln!(f, "    {:<50} {:>12}", p.name, size(p.bytes))?;
        }
        writeln!(f, "  released after use")?;
        for p in &self.released {
            writeln!(f, "    {:<50} {:>12}", p.name, size(p.bytes))?;
        }
        let binding = size(self.limits.max_storage_buffer_binding_size.min(self.limits.max_buffer_size));
        let act = format!("largest activation (binding {binding}: {})", yes_no(self.largest_activation_fits));
        writeln!(f, "  {act:<52} {:>12}", size(self.largest_activation_bytes))?;
        let attn = format!("attention O(L·d) (L×L scores avoided: {})", size(self.attention_scores_avoided_bytes));
        writeln!(f, "  {attn:<52} {:>12}", size(self.attention_bytes))?;
        if self.attention_score_block_bytes > 0 {
            writeln!(f, "  {:<52} {:>12}", "attention score block", size(self.attention_score_block_bytes))?;
        }
        let vae = match self.vae_decode {
            DecodeTiling::Whole => "vae decode whole".to_string(),
            DecodeTiling::Tiled { tile, overlap } => format!("vae decode tiled ({tile} latent px, overlap {overlap})"),
        };
        writeln!(f, "  {vae:<52} {:>12}", size(self.vae_decode_peak_bytes))?;
        let peak = match (self.limits.budget, self.fits_budget) {
            (Some(budget), Some(fits)) => format!("peak, lower bound (budget {}: {})", size(budget), yes_no(fits)),
            _ => "peak, lower bound".to_string(),
        };
        write!(f, "  {peak:<52} {:>12}", size(self.peak_bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kontext_1024(limits: DeviceLimits, modulation_precomputed: bool) -> PlanInputs {
        PlanInputs {
            flux: FluxConfig::kontext_dev(),
            dit: DitWeights::Quantized(GgmlType::Q4_0),
            t5_bytes: 2_700_000_000,
            clip_bytes: 246_000_000,
            vae: VaeConfig::flux(),
            vae_bytes: 168_000_000,
            limits,
            output: (1024, 1024),
            references: vec![(1024, 1024)],
            text_tokens: 512,
            modulation_precomputed,
        }
    }

    #[test]
    fn kontext_dev_params_and_modulation_share() {
        // Double block: 2·(3072·18432 + 18432) mod + 2·3072·9216 + 2·9216 qkv + 4·128 norms + 2·(3072² + 3072)
        // proj + 2·(3072·12288 + 12288 + 12288·3072 + 3072) mlp; single: 3072·21504 + 21504 + 15360·3072 + 3072
        // + 2·128 + 3072·9216 + 9216; embeddings, final layer. Modulation: 19·2·56,641,536 + 38·28,320,768
        // + (3072·6144 + 6144) = 3,247,448,064.
        assert_eq!(flux_params(&FluxConfig::kontext_dev()), (11_901_408_320, 3_247_448_064));
    }

    #[test]
    fn kontext_dev_at_1024_q4_0_under_default_webgpu_limits() {
        let limits =
            DeviceLimits { max_buffer_size: 256 << 20, max_storage_buffer_binding_size: 128 << 20, budget: None };
        let plan = MemoryPlan::new(&kontext_1024(limits, false)).unwrap();
        // Q4_0 is 18 bytes per 32 values: 11,901,408,320 · 18 / 32 = 6,694,542,180.
        // Text embeddings: (512 · 4096 + 768) · 4 = 8,391,680.
        assert_eq!(
            plan.resident,
            vec![part("transformer", 6_694_542_180), part("vae", 168_000_000), part("text embeddings", 8_391_680)]
        );
        // No budget: the text encoders are released after encoding.
        assert_eq!(
            plan.released,
            vec![part("t5 (after text encoding)", 2_700_000_000), part("clip (after text encoding)", 246_000_000)]
        );
        assert_eq!(plan.resident_bytes, 6_870_933_860);
        // L = 512 + 64² + 64² = 8704; linear1 output 8704 · (3 · 3072 + 12288) · 4 = 748,683,264 > 128 MiB.
        assert_eq!(plan.tokens, 8704);
        assert_eq!(plan.largest_activation_bytes, 748_683_264);
        assert!(!plan.largest_activation_fits);
        // q, k, v, out: 4 · 8704 · 3072 · 4 = 427,819,008; scores 24 · 8704² · 4 = 7,272,923,136.
        assert_eq!(plan.attention_bytes, 427_819_008);
        assert_eq!(plan.attention_scores_avoided_bytes, 7_272_923_136);
        // VAE at 128×128 latent: 1 GiB whole; 65,536·t² ≤ 128 MiB → tile 40, overlap 10, 104,857,600 per tile.
        assert_eq!(plan.vae_decode, DecodeTiling::Tiled { tile: 40, overlap: 10 });
        assert_eq!(plan.vae_decode_peak_bytes, 104_857_600);
        // Denoising: 6,870,933,860 + 748,683,264.
        assert_eq!(plan.peak_bytes, 7_619_617_124);
        assert_eq!(plan.fits_budget, None);
    }

    #[test]
    fn a_budget_decides_whether_the_text_encoders_stay() {
        let limits = |budget| DeviceLimits {
            max_buffer_size: 2 << 30,
            max_storage_buffer_binding_size: 1 << 30,
            budget: Some(budget),
        };
        // 1 GiB binding: the whole 1 GiB decode fits. Everything resident: 6,870,933,860 + 2,946,000,000
        // + 1,073,741,824 (decode, the larger working buffer) = 10,890,675,684 > 10 GB → released.
        let tight = MemoryPlan::new(&kontext_1024(limits(10_000_000_000), false)).unwrap();
        assert_eq!(tight.vae_decode, DecodeTiling::Whole);
        assert_eq!(tight.released.len(), 2);
        // Decoding: 6,870,933,860 + 1,073,741,824.
        assert_eq!(tight.peak_bytes, 7_944_675_684);
        assert_eq!(tight.fits_budget, Some(true));
        let roomy = MemoryPlan::new(&kontext_1024(limits(12_000_000_000), false)).unwrap();
        assert!(roomy.released.is_empty());
        assert_eq!(roomy.resident_bytes, 9_816_933_860);
        assert_eq!(roomy.peak_bytes, 10_890_675_684);
        // Precomputed modulation frees 3,247,448,064 · 18 / 32 = 1,826,689,536 of the transformer.
        let lean = MemoryPlan::new(&kontext_1024(limits(7_000_000_000), true)).unwrap();
        assert_eq!(lean.resident[0], part("transformer", 4_867_852_644));
        assert_eq!(lean.released[0], part("modulation weights (after precomputing every step)", 1_826_689_536));
        assert_eq!(lean.peak_bytes, 4_867_852_644 + 168_000_000 + 8_391_680 + 1_073_741_824);
        assert_eq!(lean.fits_budget, Some(true));
        assert_eq!(MemoryPlan::new(&kontext_1024(limits(6_000_000_000), true)).unwrap().fits_budget, Some(false));
    }

    #[test]
    fn measured_device_bytes_split_modulation_by_parameter_share() {
        let limits =
            DeviceLimits { max_buffer_size: u64::MAX, max_storage_buffer_binding_size: u64::MAX, budget: None };
        let inputs = PlanInputs { dit: DitWeights::DeviceBytes(6_800_000_000), ..kontext_1024(limits, true) };
        let plan = MemoryPlan::new(&inputs).unwrap();
        // 6,800,000,000 · 3,247,448,064 / 11,901,408,320 = 1,855,465,020 (floored).
        assert_eq!(plan.released[0].bytes, 1_855_465_020);
        assert_eq!(plan.resident[0].bytes, 6_800_000_000 - 1_855_465_020);
        assert_eq!(plan.vae_decode, DecodeTiling::Whole);
    }

    #[test]
    fn display_is_a_short_table_and_json_names_every_field() {
        let limits =
            DeviceLimits { max_buffer_size: 256 << 20, max_storage_buffer_binding_size: 128 << 20, budget: None };
        let plan = MemoryPlan::new(&kontext_1024(limits, false)).unwrap();
        let text = plan.to_string();
        println!("{text}");
        assert!(text.starts_with("memory plan for 1024×1024 px (8704 tokens)"), "{text}");
        assert!(text.contains("transformer") && text.contains("6.23 GiB"), "{text}");
        assert!(text.contains("vae decode tiled (40 latent px, overlap 10)"), "{text}");
        assert!(text.contains("EXCEEDS"), "{text}");
        assert!(text.lines().count() <= 14, "{text}");
        let json = serde_json::to_value(&plan).unwrap();
        assert_eq!(json["vae_decode"], serde_json::json!({"mode": "tiled", "tile": 40, "overlap": 10}));
        assert_eq!(json["peak_bytes"], 7_619_617_124u64);
        assert_eq!(json["released"][0]["name"], "t5 (after text encoding)");
    }
}
