//! VAE decoding within a buffer limit: the size of the decoder's largest buffer, the largest latent tile that
//! fits under the adapter's binding limit, and a tiled decode whose overlapping tiles are blended with linear
//! ramps (weights summing to 1 at every pixel, so no seams). Plain tensor ops, so it runs on every backend.

use burn::tensor::{Tensor, TensorData};
use serde::Serialize;

use crate::kernels::attention::HEAD_DIM_MAX;
use crate::model::vae::{Vae, VaeConfig};
use crate::{Error, Result};

/// Smallest tile side [`choose_tile`] considers, in latent pixels.
pub const MIN_TILE: usize = 16;
/// Tile sides [`choose_tile`] considers are multiples of this, in latent pixels.
pub const TILE_STEP: usize = 8;
/// Bytes per activation value (f32).
const VALUE_BYTES: u64 = 4;

/// How the decoder covers a latent: all at once, or in overlapping square tiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "mode", rename_all = "lowercase")]
pub enum DecodeTiling {
    /// One decoder call over the whole latent.
    Whole,
    /// Tiles of at most `tile × tile` latent pixels, neighbours sharing at least `overlap` latent pixels.
    Tiled {
        /// Tile side in latent pixels.
        tile: usize,
        /// Least overlap of neighbouring tiles in latent pixels.
        overlap: usize,
    },
}

impl DecodeTiling {
    /// Whole when the decoder's largest buffer at `h × w` latent pixels fits `max_binding_bytes`, otherwise
    /// the largest fitting tile ([`choose_tile`]) with a quarter of it as overlap. Errors when not even a
    /// [`MIN_TILE`] tile fits.
    pub fn choose(cfg: &VaeConfig, h: usize, w: usize, max_binding_bytes: u64) -> Result<Self> {
        if decoder_peak_bytes(cfg, h, w) <= max_binding_bytes {
            return Ok(Self::Whole);
        }
        match choose_tile(cfg, h, w, max_binding_bytes) {
            Some(tile) => Ok(Self::Tiled { tile, overlap: tile / 4 }),
            None => Err(Error::Invalid(format!(
                "VAE decode: even a {MIN_TILE}×{MIN_TILE} latent tile needs a {}-byte buffer, more than the \
                 adapter's limit of {max_binding_bytes} bytes",
                decoder_peak_bytes(cfg, MIN_TILE.min(h), MIN_TILE.min(w))
            ))),
        }
    }
}

/// Bytes of the largest single tensor the decoder creates for a `1 × latent × h × w` input (f32).
///
/// That is the widest `channels × H × W` activation over the mid block and every up block (before and after
/// its ×2 upsampler), and the mid-block attention's `[hw, hw]` scores when that attention cannot run on the
/// flash kernel (one head of width `block_out_channels.last()` > [`HEAD_DIM_MAX`]; Flux's 512 runs on it). Where
/// the flash kernel does not apply at all (the CPU backend) the scores are materialised at any width, but the
/// CPU has no binding limit. Convolutions run direct (burn without autotune), so they add no im2col buffer.
pub fn decoder_peak_bytes(cfg: &VaeConfig, h: usize, w: usize) -> u64 {
    let widths = &cfg.block_out_channels;
    let Some(&last) = widths.last() else { return 0 };
    let mut area = h as u64 * w as u64;
    let mut largest = last as u64 * area; // conv_in and the mid block
    for (i, &width) in widths.iter().rev().enumerate() {
        largest = largest.max(width as u64 * area);
        if i + 1 < widths.len() {
            area = area.saturating_mul(4);
            largest = largest.max((width as u64).saturating_mul(area)); // the upsampler's output
        }
    }
    largest = largest.max((cfg.out_channels as u64).saturating_mul(area));
    let mut values = largest;
    if cfg.mid_block_add_attention && last > HEAD_DIM_MAX {
        let tokens = h as u64 * w as u64;
        values = values.max(tokens.saturating_mul(tokens)); // [1, 1, hw, hw] scores
    }
    values.saturating_mul(VALUE_BYTES)
}

/// The largest square tile side (a multiple of [`TILE_STEP`], at least [`MIN_TILE`], in latent pixels)
/// whose [`decoder_peak_bytes`] fits `max_binding_bytes` when decoding an `h × w` latent; `None` when not
/// even [`MIN_TILE`] fits. A tile wider than the latent along an axis is clipped to it.
pub fn choose_tile(cfg: &VaeConfig, h: usize, w: usize, max_binding_bytes: u64) -> Option<usize> {
    let widest = h.max(w).next_multiple_of(TILE_STEP).max(MIN_TILE);
    (MIN_TILE / TILE_STEP..=widest / TILE_STEP)
        .rev()
        .map(|steps| steps * TILE_STEP)
        .find(|&tile| decoder_peak_bytes(cfg, tile.min(h), tile.min(w)) <= max_binding_bytes)
}

/// Decodes `z` (`[b, latent, h, w]`, unscaled) so that no decoder buffer exceeds `max_binding_bytes`: whole
/// when it fits, tiled otherwise (see [`DecodeTiling::choose`]; the limit is shared by the batch).
pub fn decode_within(vae: &Vae, z: Tensor<4>, max_binding_bytes: u64) -> Result<Tensor<4>> {
    let [b, _, h, w] = z.dims();
    match DecodeTiling::choose(&vae.config(), h, w, max_binding_bytes / b.max(1) as u64)? {
        DecodeTiling::Whole => vae.decode(z),
        DecodeTiling::Tiled { tile, overlap } => decode_tiled(vae, z, tile, overlap),
    }
}

/// Decodes `z` (`[b, latent, h, w]`, unscaled) tile by tile: tiles of at most `tile × tile` latent pixels
/// spread evenly so that neighbours share at least `overlap` latent pixels, each decoded alone, weighted by
/// linear ramps across every shared strip and summed into `[b, out, 8h, 8w]`. The weights sum to 1 at every
/// pixel; a tile covering the whole latent gives exactly [`Vae::decode`]. Elsewhere the result differs from a
/// whole decode where the decoder looks beyond a tile: GroupNorm statistics, the mid-block attention, and
/// receptive fields crossing the tile border.
pub fn decode_tiled(vae: &Vae, z: Tensor<4>, tile: usize, overlap: usize) -> Result<Tensor<4>> {
    let [b, c, h, w] = z.dims();
    if tile == 0 || overlap >= tile {
        return Err(Error::Invalid(format!(
            "VAE tiled decode needs a tile of at least 1 latent pixel and an overlap smaller than it; got tile \
             {tile}, overlap {overlap}"
        )));
    }
    if c != vae.latent_channels || h == 0 || w == 0 {
        return Err(Error::Invalid(format!(
            "VAE decode takes latents [batch, {}, h, w]; got {:?}",
            vae.latent_channels,
            [b, c, h, w]
        )));
    }
    let device = z.device();
    let f = vae.downscale;
    let rows = spans(h, tile, overlap);
    let cols = spans(w, tile, overlap);
    let col_weights = blend_weights(&cols, f);
    let mut image: Option<Tensor<4>> = None;
    for (&(y, th), wy) in rows.iter().zip(blend_weights(&rows, f)) {
        let wy = Tensor::<1>::from_data(TensorData::new(wy, [th * f]), &device).reshape([1, 1, th * f, 1]);
        for (&(x, tw), wx) in cols.iter().zip(&col_weights) {
            let wx = Tensor::<1>::from_data(TensorData::new(wx.clone(), [tw * f]), &device).reshape([1, 1, 1, tw * f]);
            let decoded = vae.decode(z.clone().slice([0..b, 0..c, y..y + th, x..x + tw]))?; // [b, out, th·f, tw·f]
            let out = decoded.dims()[1];
            let whole = image.take().unwrap_or_else(|| Tensor::zeros([b, out, h * f, w * f], &device));
            let region = [0..b, 0..out, y * f..(y + th) * f, x * f..(x + tw) * f];
            let blended = whole.clone().slice(region.clone()) + decoded * wy.clone() * wx;
            image = Some(whole.slice_assign(region, blended));
        }
    }
    Ok(image.expect("a non-empty latent has at least one tile"))
}

/// `(start, length)` of the tiles along an axis of `n` latent pixels: one tile when it fits, otherwise the
/// fewest tiles of length `tile` whose neighbours share at least `overlap`, spread evenly from 0 to `n`.
fn spans(n: usize, tile: usize, overlap: usize) -> Vec<(usize, usize)> {
    if n <= tile {
        return vec![(0, n)];
    }
    let gaps = (n - tile).div_ceil(tile - overlap);
    (0..=gaps).map(|i| ((i * (n - tile) + gaps / 2) / gaps, tile)).collect()
}

/// Per tile of `spans`, the weight of each of its `length · f` pixels: a linear ramp across each strip it
/// shares with its neighbour before or after, 1 elsewhere, then divided by the sum over all tiles at that
/// pixel so the weights add up to 1 even where three tiles meet.
fn blend_weights(spans: &[(usize, usize)], f: usize) -> Vec<Vec<f32>> {
    let pixels = spans.last().map_or(0, |&(start, len)| (start + len) * f);
    let raw: Vec<Vec<f64>> = spans
        .iter()
        .enumerate()
        .map(|(i, &(start, len))| {
            let (begin, end) = (start * f, (start + len) * f);
            let before = i.checked_sub(1).map(|j| (spans[j].0 + spans[j].1) * f - begin);
            let after = spans.get(i + 1).map(|next| end - next.0 * f);
            (begin..end)
                .map(|x| {
                    let up = before.map_or(1.0, |shared| ((x - begin) as f64 + 0.5) / shared as f64);
                    let down = after.map_or(1.0, |shared| ((end - x) as f64 - 0.5) / shared as f64);
                    up.min(down).min(1.0)
                })
                .collect()
        })
        .collect();
    let mut total = vec![0.0; pixels];
    for (&(start, _), weights) in spans.iter().zip(&raw) {
        for (k, weight) in weights.iter().enumerate() {
            total[start * f + k] += weight;
        }
    }
    spans
        .iter()
        .zip(raw)
        .map(|(&(start, _), weights)| {
            weights.iter().enumerate().map(|(k, weight)| (weight / total[start * f + k]) as f32).collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::testing::{tiny_vae, tiny_vae_config as tiny_config};
    use burn::tensor::{Device, Distribution, Tolerance};

    /// Seeded standard-normal latents `[1, 16, h, w]`, the distribution the sampler ends near.
    fn latents(h: usize, w: usize, device: &Device) -> Tensor<4> {
        let values = crate::pipeline::rng::NoiseRng::new(7).normals(16 * h * w);
        Tensor::from_data(TensorData::new(values, [1, 16, h, w]), device)
    }

    /// Largest absolute difference and PSNR (dB) over a peak-to-peak range of 2 (images in [-1, 1]).
    pub(crate) fn difference(a: Tensor<4>, b: Tensor<4>) -> (f32, f64) {
        let a = a.into_data().try_into_vec_as::<f32>().unwrap();
        let b = b.into_data().try_into_vec_as::<f32>().unwrap();
        let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
        let mse = a.iter().zip(&b).map(|(x, y)| ((x - y) as f64).powi(2)).sum::<f64>() / a.len() as f64;
        (worst, 10.0 * (4.0 / mse).log10())
    }

    #[test]
    fn spans_cover_the_axis_with_evenly_spread_overlapping_tiles() {
        assert_eq!(spans(40, 16, 8), vec![(0, 16), (8, 16), (16, 16), (24, 16)]);
        assert_eq!(spans(24, 16, 8), vec![(0, 16), (8, 16)]);
        assert_eq!(spans(30, 16, 4), vec![(0, 16), (7, 16), (14, 16)]);
        assert_eq!(spans(17, 16, 4), vec![(0, 16), (1, 16)]);
        assert_eq!(spans(10, 16, 8), vec![(0, 10)]);
        assert_eq!(spans(16, 16, 8), vec![(0, 16)]);
    }

    #[test]
    fn blend_weights_are_ramps_in_the_overlap_and_sum_to_one_everywhere() {
        // Two tiles of 2 latent px (f = 2) sharing 1 latent px = 2 pixels: ramps (0.75, 0.25) and (0.25, 0.75).
        let weights = blend_weights(&[(0, 2), (1, 2)], 2);
        assert_eq!(weights, vec![vec![1.0, 1.0, 0.75, 0.25], vec![0.25, 0.75, 1.0, 1.0]]);
        for (n, tile, overlap) in [(40, 16, 8), (30, 16, 4), (17, 16, 4), (37, 16, 12), (100, 24, 6), (9, 16, 4)] {
            let spans = spans(n, tile, overlap);
            let mut total = vec![0.0f32; n * 8];
            for (&(start, len), weights) in spans.iter().zip(blend_weights(&spans, 8)) {
                assert_eq!(weights.len(), len * 8);
                assert!(weights.iter().all(|&w| (0.0..=1.0).contains(&w)), "{n} {tile} {overlap}");
                for (k, w) in weights.into_iter().enumerate() {
                    total[start * 8 + k] += w;
                }
            }
            let worst = total.iter().map(|t| (t - 1.0).abs()).fold(0.0, f32::max);
            assert!(worst <= 1e-6, "n {n}, tile {tile}, overlap {overlap}: weights sum off by {worst}");
        }
    }

    #[test]
    fn decoder_peak_is_the_widest_full_resolution_activation_or_the_attention_scores() {
        let flux = VaeConfig::flux();
        // 128×128 latent (1024² px): 256 channels × 1024 × 1024 px × 4 B = 1 GiB (the input of the last up
        // block); the [16384, 16384] f32 scores of the 512-wide attention are 1 GiB as well.
        assert_eq!(decoder_peak_bytes(&flux, 128, 128), 1 << 30);
        // 40×40: 256 × 320² × 4 = 104,857,600 beats 1600² × 4 = 10,240,000.
        assert_eq!(decoder_peak_bytes(&flux, 40, 40), 104_857_600);
        // 256×256 (2048² px): 256 × 2048² × 4 = 4 GiB; the 512-wide attention runs on the flash kernel, so its
        // 65536² scores (16 GiB) never exist.
        assert_eq!(decoder_peak_bytes(&flux, 256, 256), 1 << 32);
        // A head wider than the flash kernel takes materialises them: they beat its largest activation (4 GiB).
        let wide = VaeConfig { block_out_channels: vec![128, 256, 512, 1024], ..VaeConfig::flux() };
        assert_eq!(decoder_peak_bytes(&wide, 256, 256), 1 << 34);
        // The tiny VAE (widths [8, 16, 32, 32]) runs its 32-wide attention on the flash kernel: at 10×8, the
        // largest tensor is the last upsampler's 16 channels × 80 × 64 px × 4 B = 327,680.
        assert_eq!(decoder_peak_bytes(&tiny_config(), 10, 8), 327_680);
    }

    #[test]
    fn choose_tile_takes_the_largest_multiple_of_8_that_fits() {
        let flux = VaeConfig::flux();
        // 256 × (8t)² × 4 = 65,536·t² ≤ 128 MiB ⇔ t ≤ 45.25 → 40.
        assert_eq!(choose_tile(&flux, 128, 128, 128 << 20), Some(40));
        // 1 GiB: the whole 128×128 latent fits exactly.
        assert_eq!(choose_tile(&flux, 128, 128, 1 << 30), Some(128));
        // 65,536·t² ≤ 16 MiB ⇔ t ≤ 16.
        assert_eq!(choose_tile(&flux, 128, 128, 16 << 20), Some(16));
        assert_eq!(choose_tile(&flux, 128, 128, (16 << 20) - 1), None);
        // A 20×200 latent: tiles are clipped to its 20 rows: 256 × 160 × 8t × 4 = 1,310,720·t ≤ 64 MiB ⇔
        // t ≤ 51.2 → 48.
        assert_eq!(choose_tile(&flux, 20, 200, 64 << 20), Some(48));
        assert_eq!(
            DecodeTiling::choose(&flux, 128, 128, 128 << 20).unwrap(),
            DecodeTiling::Tiled { tile: 40, overlap: 10 }
        );
        assert_eq!(DecodeTiling::choose(&flux, 128, 128, 1 << 30).unwrap(), DecodeTiling::Whole);
        let err = DecodeTiling::choose(&flux, 128, 128, 1 << 20).unwrap_err().to_string();
        assert!(err.contains("16×16") && err.contains("16777216"), "{err}");
    }

    #[test]
    fn a_tile_covering_the_latent_equals_the_whole_decode() {
        let device = crate::device::cpu();
        let vae = tiny_vae(&device);
        let z = latents(10, 12, &device);
        let whole = vae.decode(z.clone()).unwrap();
        let tiled = decode_tiled(&vae, z, 16, 8).unwrap();
        tiled.into_data().assert_approx_eq::<f32>(&whole.into_data(), Tolerance::absolute(1e-5));
    }

    /// The tiny VAE has random weights, so its GroupNorm statistics and 17-latent-pixel receptive field make
    /// tiles differ far more than a trained VAE's would. Measured (CPU): 24×40 with tile 16 / overlap 8
    /// (2 × 4 tiles) max |diff| 1.81, 22.51 dB; 40×40 with tile 32 / overlap 8 (2 × 2 tiles) 0.415, 37.88 dB.
    #[test]
    fn tiled_decode_is_close_to_the_whole_decode() {
        let device = crate::device::cpu();
        let vae = tiny_vae(&device);
        for (h, w, tile, overlap, least_psnr) in [(24, 40, 16, 8, 20.0), (40, 40, 32, 8, 35.0)] {
            let z = latents(h, w, &device);
            let whole = vae.decode(z.clone()).unwrap();
            let tiled = decode_tiled(&vae, z, tile, overlap).unwrap();
            assert_eq!(tiled.dims(), [1, 3, 8 * h, 8 * w]);
            let (worst, psnr) = difference(tiled, whole);
            println!("{h}×{w}, tile {tile} / overlap {overlap}: max |diff| {worst}, PSNR {psnr:.2} dB");
            assert!(psnr >= least_psnr, "{h}×{w}, tile {tile}: PSNR {psnr:.2} dB, max |diff| {worst}");
        }
    }

    #[test]
    fn bad_tiles_and_latents_are_errors() {
        let device = crate::device::cpu();
        let vae = tiny_vae(&device);
        let z = latents(8, 8, &device);
        assert!(decode_tiled(&vae, z.clone(), 0, 0).unwrap_err().to_string().contains("tile 0"));
        assert!(decode_tiled(&vae, z, 8, 8).unwrap_err().to_string().contains("overlap 8"));
        let wrong = Tensor::<4>::random([1, 4, 8, 8], Distribution::Default, &device);
        assert!(decode_tiled(&vae, wrong, 16, 4).unwrap_err().to_string().contains("[batch, 16, h, w]"));
    }
}
