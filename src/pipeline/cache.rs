//! Step caches: on steps where the DiT's output is predictable from an earlier step, run the first block only
//! (First-Block-Cache) or no block (MagCache) and add the residual the skipped blocks added at the last step
//! that ran them. The definitions are diffusers' hooks (0.42.1, `hooks/first_block_cache.py` and
//! `hooks/mag_cache.py`), applied to Flux as they apply them: the first double block is the head, the last
//! single block the tail, and the residuals are the image stream's (reference tokens included).
//! - **First-Block-Cache** (`fbc`): every step runs the first block. When the relative L1 change of its residual
//!   (`mean |r − r_prev| / mean |r_prev|`, against the last step that ran every block) is at most the
//!   threshold, the rest is skipped and the tail's residual of that step added to the first block's output.
//! - **MagCache** (`mag`): a schedule decided from the model's magnitude ratios alone. After the first
//!   `retention_ratio` of the steps, the ratios multiply up and `|1 − product|` adds up over consecutive
//!   skipped steps; while that error is at most the threshold and at most `max_skip_steps` steps were skipped
//!   in a row, the whole DiT is skipped and the residual of the last computed step added to its input.
//! - **Calibration**: no step skipped; each step's ratio `mean over tokens of ‖r_t‖ / (‖r_{t−1}‖ + 1e-8)` of
//!   the DiT's residual is measured (diffusers' `calibrate=True`), giving the ratios MagCache needs.
//!
//! The cached residuals stay on the device (`[1, image tokens, hidden]` each: two for FBC, one for MagCache),
//! counted in the memory plan ([`CacheConfig::residuals`]).

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::device::read_f32;
use crate::formats::weights::Weights;
use crate::model::flux::rope::Rope;
use crate::model::flux::{Flux, Modulations};
use crate::{Error, Result};

/// MagCache's `max_skip_steps` when not given (diffusers' default).
pub const MAG_MAX_SKIP_STEPS: usize = 3;
/// MagCache's `retention_ratio` when not given (diffusers' default).
pub const MAG_RETENTION_RATIO: f64 = 0.2;

/// Which step cache an edit uses. As JSON (the embed API's `cache`): `{"kind": "fbc", "threshold": 0.08}`,
/// `{"kind": "mag", "threshold": 0.06, "maxSkipSteps": 3, "retentionRatio": 0.2, "ratios": […]}`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", rename_all_fields = "camelCase")]
pub enum CacheConfig {
    /// Every step runs every block.
    #[default]
    None,
    /// First-Block-Cache: skip the other blocks when the first block's residual changed by at most
    /// `threshold` (relative L1).
    Fbc {
        /// The largest relative L1 change that reuses the cache.
        threshold: f64,
    },
    /// MagCache, with the model's magnitude ratios.
    Mag {
        /// The largest accumulated error that reuses the cache.
        threshold: f64,
        /// Most consecutive steps reused.
        #[serde(default = "default_max_skip_steps")]
        max_skip_steps: usize,
        /// Fraction of the steps, from the first, that always run.
        #[serde(default = "default_retention_ratio")]
        retention_ratio: f64,
        /// Magnitude ratio per step (from [`CacheConfig::Calibrate`]), interpolated to the edit's steps as
        /// diffusers does when the counts differ.
        #[serde(default)]
        ratios: Vec<f32>,
    },
    /// Every step runs; the magnitude ratios are measured.
    Calibrate,
}

fn default_max_skip_steps() -> usize {
    MAG_MAX_SKIP_STEPS
}

fn default_retention_ratio() -> f64 {
    MAG_RETENTION_RATIO
}

impl CacheConfig {
    /// Parses the CLI's `none`, `fbc:THRESHOLD` or `mag:THRESHOLD[,MAX_SKIP[,RETENTION]]`. MagCache's ratios
    /// come separately ([`CacheConfig::with_ratios`]).
    pub fn parse(text: &str) -> Result<Self> {
        let bad = |why: &str| {
            Error::Invalid(format!(
                "cache `{text}`: {why} (expected none, fbc:THRESHOLD or mag:THRESHOLD[,MAX_SKIP[,RETENTION]])"
            ))
        };
        let number = |value: &str, what: &str| -> Result<f64> {
            let v: f64 = value.trim().parse().map_err(|_| bad(&format!("{what} `{value}` is not a number")))?;
            if v.is_finite() && v >= 0.0 { Ok(v) } else { Err(bad(&format!("{what} must be 0 or more"))) }
        };
        let config = match text.trim().split_once(':') {
            None if text.trim() == "none" => Self::None,
            Some(("fbc", threshold)) => Self::Fbc { threshold: number(threshold, "the threshold")? },
            Some(("mag", rest)) => {
                let parts: Vec<&str> = rest.split(',').collect();
                if parts.len() > 3 {
                    return Err(bad("too many values"));
                }
                let max_skip_steps = match parts.get(1) {
                    Some(n) => n.trim().parse().map_err(|_| bad(&format!("max_skip `{n}` is not a whole number")))?,
                    None => MAG_MAX_SKIP_STEPS,
                };
                let retention_ratio = parts.get(2).map_or(Ok(MAG_RETENTION_RATIO), |r| number(r, "retention"))?;
                if retention_ratio > 1.0 {
                    return Err(bad("retention is a fraction of the steps, at most 1"));
                }
                Self::Mag {
                    threshold: number(parts[0], "the threshold")?,
                    max_skip_steps,
                    retention_ratio,
                    ratios: vec![],
                }
            }
            _ => return Err(bad("unknown kind")),
        };
        Ok(config)
    }

    /// MagCache with `ratios`; other kinds unchanged.
    pub fn with_ratios(self, ratios: Vec<f32>) -> Self {
        match self {
            Self::Mag { threshold, max_skip_steps, retention_ratio, .. } => {
                Self::Mag { threshold, max_skip_steps, retention_ratio, ratios }
            }
            other => other,
        }
    }

    /// Checks the values and what the kind needs: MagCache its ratios.
    pub fn validate(&self) -> Result<()> {
        if let Self::Fbc { threshold } | Self::Mag { threshold, .. } = self
            && !(threshold.is_finite() && *threshold >= 0.0)
        {
            return Err(Error::Invalid(format!("a cache threshold must be 0 or more, not {threshold}")));
        }
        if let Self::Mag { retention_ratio, .. } = self
            && !(0.0..=1.0).contains(retention_ratio)
        {
            return Err(Error::Invalid(format!("MagCache's retention ratio is a fraction, not {retention_ratio}")));
        }
        match self {
            Self::Mag { ratios, .. } if ratios.is_empty() => Err(Error::Invalid(
                "MagCache needs the model's magnitude ratios: run `kontext calibrate-cache` once and pass its file \
                 with --cache-ratios"
                    .into(),
            )),
            Self::Mag { ratios, .. } if ratios.iter().any(|r| !r.is_finite() || *r <= 0.0) => {
                Err(Error::Invalid("MagCache ratios must be finite and above 0".into()))
            }
            _ => Ok(()),
        }
    }

    /// One line for logs and recipes: `fbc:0.42`, `mag:0.06,3,0.2`.
    pub fn describe(&self) -> String {
        match self {
            Self::None => "none".into(),
            Self::Fbc { threshold } => format!("fbc:{threshold}"),
            Self::Mag { threshold, max_skip_steps, retention_ratio, .. } => {
                format!("mag:{threshold},{max_skip_steps},{retention_ratio}")
            }
            Self::Calibrate => "calibrate".into(),
        }
    }

    /// Image-stream tensors `[1, image tokens, hidden]` the cache keeps on the device between steps.
    pub fn residuals(&self) -> usize {
        match self {
            Self::None => 0,
            Self::Fbc { .. } => 2,
            Self::Mag { .. } | Self::Calibrate => 1,
        }
    }
}

/// The magnitude ratios of a model, as `kontext calibrate-cache` writes them and MagCache reads them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MagRatios {
    /// The model they were measured on (as the recipe names it).
    pub model: String,
    /// Steps of the calibrating edit (MagCache interpolates the ratios to other step counts).
    pub steps: usize,
    /// The ratio of each step, 1 for the first.
    pub mag_ratios: Vec<f32>,
}

impl MagRatios {
    /// Reads the JSON of [`MagRatios`], or a bare array of ratios (as diffusers prints them).
    pub fn parse(text: &str) -> Result<Self> {
        let parsed = serde_json::from_str::<Self>(text).or_else(|_| {
            serde_json::from_str::<Vec<f32>>(text).map(|mag_ratios| Self {
                model: String::new(),
                steps: mag_ratios.len(),
                mag_ratios,
            })
        });
        let ratios = parsed.map_err(|_| {
            Error::Invalid("not magnitude ratios: expected the JSON of `kontext calibrate-cache` or an array".into())
        })?;
        CacheConfig::Mag { threshold: 0.0, max_skip_steps: 0, retention_ratio: 0.0, ratios: ratios.mag_ratios.clone() }
            .validate()?;
        Ok(ratios)
    }
}

/// diffusers' `nearest_interp`: `ratios` resampled to `steps` values by the nearest index (rounded half to
/// even, in f32, as torch).
pub fn interpolate_ratios(ratios: &[f32], steps: usize) -> Vec<f32> {
    match (ratios.len(), steps) {
        (0, _) | (_, 0) => Vec::new(),
        (n, s) if n == s => ratios.to_vec(),
        (_, 1) => vec![ratios[ratios.len() - 1]],
        (n, s) => {
            let scale = ((n - 1) as f64 / (s - 1) as f64) as f32;
            (0..s).map(|i| ratios[((i as f32 * scale).round_ties_even() as usize).min(n - 1)]).collect()
        }
    }
}

/// The state of one edit's step cache.
pub struct StepCache {
    config: CacheConfig,
    steps: usize,
    step: usize,
    /// FBC: the first block's image-stream residual at the last step that ran every block.
    head_residual: Option<Tensor<3>>,
    /// The residual the skipped blocks add to the image stream, from the last step that ran them: FBC after
    /// the first block, MagCache (and calibration) over the whole DiT.
    tail_residual: Option<Tensor<3>>,
    accumulated_ratio: f32,
    accumulated_steps: usize,
    accumulated_error: f32,
    reused: Vec<usize>,
    measured_ratios: Vec<f32>,
}

impl StepCache {
    /// The cache for an edit of `steps` steps (MagCache's ratios interpolated to them).
    pub fn new(config: CacheConfig, steps: usize) -> Self {
        let config = match config {
            CacheConfig::Mag { threshold, max_skip_steps, retention_ratio, ratios } => CacheConfig::Mag {
                threshold,
                max_skip_steps,
                retention_ratio,
                ratios: interpolate_ratios(&ratios, steps),
            },
            other => other,
        };
        Self {
            config,
            steps,
            step: 0,
            head_residual: None,
            tail_residual: None,
            accumulated_ratio: 1.0,
            accumulated_steps: 0,
            accumulated_error: 0.0,
            reused: Vec::new(),
            measured_ratios: Vec::new(),
        }
    }

    /// No cache: every step runs every block.
    pub fn none() -> Self {
        Self::new(CacheConfig::None, 0)
    }

    /// The configuration (MagCache's ratios as interpolated to the edit's steps).
    pub fn config(&self) -> &CacheConfig {
        &self.config
    }

    /// Steps (0-based) that reused the cache so far.
    pub fn reused_steps(&self) -> &[usize] {
        &self.reused
    }

    /// Whether the last step reused the cache.
    pub fn last_step_reused(&self) -> bool {
        self.step > 0 && self.reused.last() == Some(&(self.step - 1))
    }

    /// The magnitude ratio of every step so far, where the cache calibrates.
    pub fn measured_ratios(&self) -> &[f32] {
        &self.measured_ratios
    }

    /// The velocity of every image token `[b, n_img, in_channels]` for this step: [`Flux::forward_rotated`]
    /// with the cache deciding which blocks run. Reads back two numbers for FBC's decision and one for each
    /// calibrated ratio.
    pub async fn forward(
        &mut self,
        flux: &Flux,
        img: Tensor<3>,
        txt: Tensor<3>,
        rope: &Rope,
        modulations: &Modulations,
        weights: Option<&dyn Weights>,
    ) -> Result<Tensor<3>> {
        flux.check_inputs(&img, &txt, rope, modulations)?;
        let step = self.step;
        self.step += 1;
        let (img, txt) = flux.embed_streams(img, txt);
        match self.config.clone() {
            CacheConfig::None => Ok(flux.blocks_from(0, img, txt, rope, modulations, weights)?.1),
            CacheConfig::Fbc { threshold } => {
                if flux.double_blocks.is_empty() {
                    return Err(Error::Invalid("First-Block-Cache needs a model with a double block".into()));
                }
                let (head, txt) = flux.double_block(0, img.clone(), txt, rope, modulations, weights)?;
                let residual = head.clone() - img;
                if let (Some(previous), Some(tail)) = (&self.head_residual, &self.tail_residual) {
                    let change = relative_l1_change(residual.clone(), previous.clone()).await?;
                    if change as f64 <= threshold {
                        self.reused.push(step);
                        return Ok(flux.final_layer_of(head + tail.clone(), modulations));
                    }
                }
                let (after, velocity) = flux.blocks_from(1, head.clone(), txt, rope, modulations, weights)?;
                self.head_residual = Some(residual);
                self.tail_residual = Some(after - head);
                Ok(velocity)
            }
            CacheConfig::Mag { threshold, max_skip_steps, retention_ratio, ratios } => {
                if self.mag_skips(step, threshold, max_skip_steps, retention_ratio, &ratios)
                    && let Some(tail) = &self.tail_residual
                {
                    self.reused.push(step);
                    return Ok(flux.final_layer_of(img + tail.clone(), modulations));
                }
                let (after, velocity) = flux.blocks_from(0, img.clone(), txt, rope, modulations, weights)?;
                self.tail_residual = Some(after - img);
                Ok(velocity)
            }
            CacheConfig::Calibrate => {
                let (after, velocity) = flux.blocks_from(0, img.clone(), txt, rope, modulations, weights)?;
                let residual = after - img;
                let ratio = match self.tail_residual.take() {
                    Some(previous) => magnitude_ratio(residual.clone(), previous).await?,
                    None => 1.0,
                };
                self.measured_ratios.push(ratio);
                self.tail_residual = Some(residual);
                Ok(velocity)
            }
        }
    }

    /// MagCache's decision for `step` (diffusers' `MagCacheHeadHook`, in f32 as torch runs it): whether the
    /// step may reuse the cache, resetting the accumulators where it may not.
    fn mag_skips(&mut self, step: usize, threshold: f64, max_skip: usize, retention: f64, ratios: &[f32]) -> bool {
        let retention_step = (retention * self.steps as f64 + 0.5) as usize;
        if step < retention_step {
            return false;
        }
        self.accumulated_ratio *= ratios.get(step).copied().unwrap_or(1.0);
        self.accumulated_steps += 1;
        self.accumulated_error += (1.0 - self.accumulated_ratio).abs();
        let skips = self.tail_residual.is_some()
            && self.accumulated_error <= threshold as f32
            && self.accumulated_steps <= max_skip;
        if !skips {
            self.accumulated_ratio = 1.0;
            self.accumulated_steps = 0;
            self.accumulated_error = 0.0;
        }
        skips
    }
}

/// `mean |r − previous| / mean |previous|`, read back.
async fn relative_l1_change(residual: Tensor<3>, previous: Tensor<3>) -> Result<f32> {
    let sums = Tensor::cat(vec![(residual - previous.clone()).abs().mean(), previous.abs().mean()], 0);
    match read_f32(sums).await?[..] {
        [change, scale] => Ok(change / scale),
        _ => Err(Error::Invalid("the cache's change did not read back as two numbers".into())),
    }
}

/// `mean over tokens of ‖residual‖ / (‖previous‖ + 1e-8)`, norms over the hidden axis, read back.
async fn magnitude_ratio(residual: Tensor<3>, previous: Tensor<3>) -> Result<f32> {
    let norm = |t: Tensor<3>| t.powi_scalar(2).sum_dim(2).sqrt(); // [b, n, 1]
    let ratio = (norm(residual) / (norm(previous) + 1e-8)).mean();
    read_f32(ratio).await?.first().copied().ok_or_else(|| Error::Invalid("no ratio read back".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_parse_and_describe_themselves() {
        assert_eq!(CacheConfig::parse("none").unwrap(), CacheConfig::None);
        assert_eq!(CacheConfig::parse("fbc:0.12").unwrap(), CacheConfig::Fbc { threshold: 0.12 });
        let mag = CacheConfig::parse("mag:0.06").unwrap();
        assert_eq!(mag.describe(), "mag:0.06,3,0.2");
        assert_eq!(
            CacheConfig::parse("mag:0.1,2,0.25").unwrap(),
            CacheConfig::Mag { threshold: 0.1, max_skip_steps: 2, retention_ratio: 0.25, ratios: vec![] }
        );
        for bad in ["fbc", "fbc:x", "fbc:-1", "mag:0.1,2,3", "mag:0.1,1.5", "tea:0.1", "mag:1,2,0.2,4"] {
            assert!(CacheConfig::parse(bad).is_err(), "{bad}");
        }
        let err = mag.validate().unwrap_err().to_string();
        assert!(err.contains("calibrate-cache"), "{err}");
        assert!(CacheConfig::parse("mag:0.06").unwrap().with_ratios(vec![1.0, 0.9]).validate().is_ok());
        assert_eq!([CacheConfig::None.residuals(), CacheConfig::Fbc { threshold: 0.1 }.residuals()], [0, 2]);
    }

    #[test]
    fn the_embed_api_spells_configs_as_json() {
        let fbc: CacheConfig = serde_json::from_str(r#"{"kind": "fbc", "threshold": 0.2}"#).unwrap();
        assert_eq!(fbc, CacheConfig::Fbc { threshold: 0.2 });
        let mag: CacheConfig = serde_json::from_str(r#"{"kind": "mag", "threshold": 0.06, "ratios": [1.0]}"#).unwrap();
        assert_eq!(mag.describe(), "mag:0.06,3,0.2");
        let mag: CacheConfig = serde_json::from_str(
            r#"{"kind": "mag", "threshold": 0.1, "maxSkipSteps": 2, "retentionRatio": 0.3, "ratios": [1.0]}"#,
        )
        .unwrap();
        assert_eq!(mag.describe(), "mag:0.1,2,0.3");
        assert!(serde_json::from_str::<CacheConfig>(r#"{"kind": "tea", "threshold": 0.1}"#).is_err());
        let negative: CacheConfig = serde_json::from_str(r#"{"kind": "fbc", "threshold": -1}"#).unwrap();
        assert!(negative.validate().is_err());
    }

    #[test]
    fn ratios_interpolate_like_diffusers() {
        // diffusers' nearest_interp of FLUX_MAG_RATIOS' first 5 values to 3 and to 8 steps, by hand: indices
        // round(i · 4/2) = 0, 2, 4 and round(i · 4/7) = 0, 1, 1, 2, 2, 3, 3, 4 (2.5 → 2, half to even).
        let ratios = [1.0, 1.21094, 1.11719, 1.07812, 1.0625];
        assert_eq!(interpolate_ratios(&ratios, 3), [1.0, 1.11719, 1.0625]);
        let eight: Vec<f32> = [0, 1, 1, 2, 2, 3, 3, 4].iter().map(|&i| ratios[i]).collect();
        assert_eq!(interpolate_ratios(&ratios, 8), eight);
        assert_eq!(interpolate_ratios(&ratios, 1), [1.0625]);
        assert_eq!(interpolate_ratios(&ratios, 5), ratios);
    }

    #[test]
    fn magcache_skips_by_its_schedule() {
        // The tiny pack's calibrated ratios (tests/fixtures/tiny/golden/golden_cache.safetensors) and diffusers'
        // decisions for threshold 0.06, at most 2 in a row, retention 0.2 of 12 steps (golden_cache_meta.json).
        let ratios =
            [1.0, 0.92126, 1.03932, 0.97135, 1.05539, 1.00401, 0.98708, 1.02644, 0.94212, 1.03856, 0.97961, 1.01697];
        let mut cache = StepCache::new(CacheConfig::None, 12);
        cache.tail_residual = Some(Tensor::zeros([1, 1, 1], &crate::device::cpu()));
        let skips: Vec<bool> = (0..12).map(|step| cache.mag_skips(step, 0.06, 2, 0.2, &ratios)).collect();
        let computed: Vec<u8> = skips.iter().map(|&s| u8::from(!s)).collect();
        assert_eq!(computed, [1, 1, 0, 0, 1, 0, 0, 1, 0, 1, 0, 0]);
    }
}
