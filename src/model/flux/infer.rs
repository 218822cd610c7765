//! The Flux configuration read off a checkpoint's tensor names and shapes (any naming, any width), and its
//! reconciliation with a diffusers `config.json`.

use std::collections::{BTreeSet, HashMap};

use serde_json::Value;

use crate::formats::weights::Weights;
use crate::model::flux::config::FluxConfig;
use crate::{Error, Result};

/// The names and shapes (PyTorch order) of every tensor of `weights`, as [`infer_flux_config`] takes them.
pub fn tensor_shapes(weights: &dyn Weights) -> Vec<(String, Vec<usize>)> {
    weights.names().into_iter().filter_map(|n| weights.shape(&n).map(|s| (n, s))).collect()
}

/// Tensor naming of a Flux transformer checkpoint.
#[derive(Clone, Copy, PartialEq)]
enum Naming {
    /// Black Forest Labs' names (`double_blocks.N.img_attn.qkv`), also used by every Flux GGUF.
    Bfl,
    /// diffusers' `FluxTransformer2DModel` names (`transformer_blocks.N.attn.to_q`).
    Diffusers,
}

/// The tensor names that identify a Flux transformer's naming, and where its parts live in each.
struct Layout {
    naming: Naming,
    img_in: &'static str,
    txt_in: &'static str,
    vector_in: &'static str,
    guidance_in: &'static str,
    double: &'static str,
    single: &'static str,
    double_query_norm: &'static str,
    single_query_norm: &'static str,
    double_mlp_in: &'static str,
    single_mlp_in: &'static str,
    double_q_bias: &'static str,
}

const LAYOUTS: [Layout; 2] = [
    Layout {
        naming: Naming::Bfl,
        img_in: "img_in.weight",
        txt_in: "txt_in.weight",
        vector_in: "vector_in.in_layer.weight",
        guidance_in: "guidance_in.in_layer.weight",
        double: "double_blocks.",
        single: "single_blocks.",
        double_query_norm: "img_attn.norm.query_norm.scale",
        single_query_norm: "norm.query_norm.scale",
        double_mlp_in: "img_mlp.0.weight",
        // rows: q, k, v (3 × hidden) then the MLP input
        single_mlp_in: "linear1.weight",
        double_q_bias: "img_attn.qkv.bias",
    },
    Layout {
        naming: Naming::Diffusers,
        img_in: "x_embedder.weight",
        txt_in: "context_embedder.weight",
        vector_in: "time_text_embed.text_embedder.linear_1.weight",
        guidance_in: "time_text_embed.guidance_embedder.linear_1.weight",
        double: "transformer_blocks.",
        single: "single_transformer_blocks.",
        double_query_norm: "attn.norm_q.weight",
        single_query_norm: "attn.norm_q.weight",
        double_mlp_in: "ff.net.0.proj.weight",
        single_mlp_in: "proj_mlp.weight",
        double_q_bias: "attn.to_q.bias",
    },
];

/// Infers a Flux transformer's configuration from tensor names and shapes alone, in BFL or diffusers naming,
/// with or without a prefix such as `model.diffusion_model.`.
///
/// Widths, depths, heads (`hidden / head_dim`, head_dim from the query norm), MLP ratio, qkv bias and the
/// guidance embedding follow from the shapes. The RoPE split cannot: `axes_dim` is
/// [`FluxConfig::default_axes_dim`] (Flux's `[16, 56, 56]` for the real head width 128); use
/// [`FluxConfig::reconcile`] with a diffusers `config.json` when one exists. `theta` is Flux's 10000.
pub fn infer_flux_config(tensors: &[(String, Vec<usize>)]) -> Result<FluxConfig> {
    let shapes: HashMap<&str, &[usize]> = tensors.iter().map(|(n, s)| (n.as_str(), s.as_slice())).collect();
    let (layout, prefix) = LAYOUTS
        .iter()
        .find_map(|layout| {
            tensors.iter().find_map(|(name, _)| {
                let prefix = name.strip_suffix(layout.img_in)?;
                (prefix.is_empty() || prefix.ends_with('.')).then_some((layout, prefix))
            })
        })
        .ok_or_else(|| {
            Error::Invalid(
                "not a Flux transformer: no `img_in.weight` (BFL) or `x_embedder.weight` (diffusers) tensor".into(),
            )
        })?;
    let full = |suffix: &str| format!("{prefix}{suffix}");
    let get = |suffix: &str| shapes.get(full(suffix).as_str()).copied();
    let matrix = |suffix: &str| -> Result<(usize, usize)> {
        match get(suffix) {
            Some(&[rows, cols]) => Ok((rows, cols)),
            Some(other) => {
                Err(Error::Invalid(format!("tensor `{}` has shape {other:?}, expected a matrix", full(suffix))))
            }
            None => Err(Error::Invalid(format!("not a complete Flux transformer: no tensor `{}`", full(suffix)))),
        }
    };

    let (hidden_size, in_channels) = matrix(layout.img_in)?;
    let (txt_rows, context_in_dim) = matrix(layout.txt_in)?;
    let (vec_rows, vec_in_dim) = matrix(layout.vector_in)?;
    for (suffix, rows) in [(layout.txt_in, txt_rows), (layout.vector_in, vec_rows)] {
        if rows != hidden_size {
            return Err(Error::Invalid(format!(
                "tensor `{}` has {rows} rows but `{}` has {hidden_size}; the widths disagree",
                full(suffix),
                full(layout.img_in)
            )));
        }
    }
    let depth = count_blocks(&shapes, &full(layout.double))?;
    let depth_single_blocks = count_blocks(&shapes, &full(layout.single))?;
    let double_part = |part: &str| (depth > 0).then(|| format!("{}0.{part}", layout.double));
    let single_part = |part: &str| (depth_single_blocks > 0).then(|| format!("{}0.{part}", layout.single));

    let head_dim = [double_part(layout.double_query_norm), single_part(layout.single_query_norm)]
        .into_iter()
        .flatten()
        .find_map(|suffix| match get(&suffix) {
            Some(&[d]) => Some(d),
            _ => None,
        })
        .ok_or_else(|| {
            Error::Invalid("not a complete Flux transformer: no query-norm scale gives the head width".into())
        })?;
    if head_dim == 0 || !head_dim.is_multiple_of(2) || !hidden_size.is_multiple_of(head_dim) {
        return Err(Error::Invalid(format!(
            "a head width of {head_dim} (from the query norm) must be even and divide the width {hidden_size}"
        )));
    }
    let mlp_hidden = match (double_part(layout.double_mlp_in), single_part(layout.single_mlp_in)) {
        (Some(suffix), _) => matrix(&suffix)?.0,
        (None, Some(suffix)) => match layout.naming {
            Naming::Bfl => matrix(&suffix)?.0.checked_sub(3 * hidden_size).ok_or_else(|| {
                Error::Invalid(format!("tensor `{}` has fewer rows than q, k and v need", full(&suffix)))
            })?,
            Naming::Diffusers => matrix(&suffix)?.0,
        },
        (None, None) => return Err(Error::Invalid("not a Flux transformer: it has no double or single blocks".into())),
    };
    let qkv_bias = match double_part(layout.double_q_bias) {
        Some(suffix) => get(&suffix).is_some(),
        None => true,
    };
    Ok(FluxConfig {
        in_channels,
        vec_in_dim,
        context_in_dim,
        hidden_size,
        mlp_ratio: mlp_hidden as f64 / hidden_size as f64,
        num_heads: hidden_size / head_dim,
        depth,
        depth_single_blocks,
        axes_dim: FluxConfig::default_axes_dim(head_dim),
        theta: 10_000.0,
        qkv_bias,
        guidance_embed: get(layout.guidance_in).is_some(),
    })
}

/// Number of blocks `{blocks}N.…`, checking that they are numbered 0..N without gaps.
fn count_blocks(shapes: &HashMap<&str, &[usize]>, blocks: &str) -> Result<usize> {
    let indices: BTreeSet<usize> =
        shapes.keys().filter_map(|name| name.strip_prefix(blocks)?.split('.').next()?.parse().ok()).collect();
    match indices.last() {
        Some(&last) if last != indices.len() - 1 => Err(Error::Invalid(format!(
            "blocks `{blocks}N` are numbered up to {last} but only {} exist",
            indices.len()
        ))),
        _ => Ok(indices.len()),
    }
}

impl FluxConfig {
    /// The RoPE split used when only the head width is known: each spatial axis gets 7/16 of the head,
    /// rounded down to an even count, and the index axis the rest. For head width 128 this is Flux's
    /// `[16, 56, 56]`; for 64 `[8, 28, 28]`; for 16 `[4, 6, 6]`. Every entry is even and they sum to `head_dim`.
    pub fn default_axes_dim(head_dim: usize) -> Vec<usize> {
        let spatial = 2 * (7 * head_dim / 32);
        vec![head_dim - 2 * spatial, spatial, spatial]
    }

    /// Reads a diffusers `FluxTransformer2DModel` `config.json`. Missing keys take diffusers' defaults
    /// (`num_layers` 19, `num_single_layers` 38, `attention_head_dim` 128, `num_attention_heads` 24,
    /// `in_channels` 64, `joint_attention_dim` 4096, `pooled_projection_dim` 768, `guidance_embeds` false,
    /// `axes_dims_rope` [16, 56, 56]); diffusers fixes mlp_ratio 4, qkv bias and θ 10000.
    pub fn from_diffusers_json(json: &str) -> Result<Self> {
        let config: Value = serde_json::from_str(json)
            .map_err(|e| Error::Invalid(format!("the transformer config.json is not JSON ({e})")))?;
        let fail = |msg: String| Error::Invalid(format!("transformer config.json: {msg}"));
        if let Some(class) = config.get("_class_name").and_then(Value::as_str)
            && class != "FluxTransformer2DModel"
        {
            return Err(fail(format!("it describes a `{class}`, not a `FluxTransformer2DModel`")));
        }
        let size = |key: &str, default: usize| -> Result<usize> {
            match config.get(key) {
                None | Some(Value::Null) => Ok(default),
                Some(v) => v
                    .as_u64()
                    .and_then(|v| usize::try_from(v).ok())
                    .ok_or_else(|| fail(format!("`{key}` = {v} is not a size"))),
            }
        };
        if size("patch_size", 1)? != 1 {
            return Err(fail("only `patch_size` 1 exists for Flux".into()));
        }
        let in_channels = size("in_channels", 64)?;
        if size("out_channels", in_channels)? != in_channels {
            return Err(fail("`out_channels` differs from `in_channels`, which Flux does not support".into()));
        }
        let head_dim = size("attention_head_dim", 128)?;
        let num_heads = size("num_attention_heads", 24)?;
        let axes_dim = match config.get("axes_dims_rope") {
            None | Some(Value::Null) => vec![16, 56, 56],
            Some(v) => v
                .as_array()
                .and_then(|a| a.iter().map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok())).collect())
                .ok_or_else(|| fail(format!("`axes_dims_rope` = {v} is not a list of sizes")))?,
        };
        if axes_dim.iter().sum::<usize>() != head_dim {
            return Err(fail(format!("`axes_dims_rope` {axes_dim:?} does not sum to `attention_head_dim` {head_dim}")));
        }
        let guidance_embed = match config.get("guidance_embeds") {
            None | Some(Value::Null) => false,
            Some(v) => v.as_bool().ok_or_else(|| fail(format!("`guidance_embeds` = {v} is not a bool")))?,
        };
        Ok(Self {
            in_channels,
            vec_in_dim: size("pooled_projection_dim", 768)?,
            context_in_dim: size("joint_attention_dim", 4096)?,
            hidden_size: num_heads * head_dim,
            mlp_ratio: 4.0,
            num_heads,
            depth: size("num_layers", 19)?,
            depth_single_blocks: size("num_single_layers", 38)?,
            axes_dim,
            theta: 10_000.0,
            qkv_bias: true,
            guidance_embed,
        })
    }

    /// Combines a configuration inferred from shapes (`self`) with one read from `config.json`: every field
    /// the shapes determine must agree; `axes_dim` and `theta` come from the JSON.
    pub fn reconcile(self, from_json: FluxConfig) -> Result<FluxConfig> {
        let fields = |config: &FluxConfig| match serde_json::to_value(config) {
            Ok(Value::Object(fields)) => Ok(fields),
            _ => Err(Error::Invalid("a Flux configuration did not serialize to a JSON object".into())),
        };
        let (inferred, declared) = (fields(&self)?, fields(&from_json)?);
        for (key, value) in &inferred {
            if key != "axes_dim" && key != "theta" && declared.get(key) != Some(value) {
                return Err(Error::Invalid(format!(
                    "config.json gives {key} = {} but the weights have {value}",
                    declared.get(key).unwrap_or(&Value::Null)
                )));
            }
        }
        Ok(from_json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bfl_tiny_shapes(config: &FluxConfig) -> Vec<(String, Vec<usize>)> {
        let (h, mlp, hd) = (config.hidden_size, config.mlp_hidden(), config.head_dim());
        let mut t = vec![
            ("img_in.weight".to_string(), vec![h, config.in_channels]),
            ("txt_in.weight".into(), vec![h, config.context_in_dim]),
            ("vector_in.in_layer.weight".into(), vec![h, config.vec_in_dim]),
            ("time_in.in_layer.weight".into(), vec![h, 256]),
        ];
        if config.guidance_embed {
            t.push(("guidance_in.in_layer.weight".into(), vec![h, 256]));
        }
        for i in 0..config.depth {
            if config.qkv_bias {
                t.push((format!("double_blocks.{i}.img_attn.qkv.bias"), vec![3 * h]));
            }
            t.push((format!("double_blocks.{i}.img_attn.norm.query_norm.scale"), vec![hd]));
            t.push((format!("double_blocks.{i}.img_attn.qkv.weight"), vec![3 * h, h]));
            t.push((format!("double_blocks.{i}.img_mlp.0.weight"), vec![mlp, h]));
        }
        for i in 0..config.depth_single_blocks {
            t.push((format!("single_blocks.{i}.norm.query_norm.scale"), vec![hd]));
            t.push((format!("single_blocks.{i}.linear1.weight"), vec![3 * h + mlp, h]));
        }
        t
    }

    #[test]
    fn default_axes_split_is_even_and_sums_to_the_head() {
        assert_eq!(FluxConfig::default_axes_dim(128), [16, 56, 56]);
        assert_eq!(FluxConfig::default_axes_dim(64), [8, 28, 28]);
        assert_eq!(FluxConfig::default_axes_dim(16), [4, 6, 6]);
        for hd in (8..=512).step_by(2) {
            let axes = FluxConfig::default_axes_dim(hd);
            assert_eq!(axes.iter().sum::<usize>(), hd);
            assert!(axes.iter().all(|a| a % 2 == 0 && *a > 0), "{hd}: {axes:?}");
        }
    }

    #[test]
    fn infers_other_widths_heads_depths_and_prefixes() {
        let config = FluxConfig {
            in_channels: 128,
            vec_in_dim: 40,
            context_in_dim: 24,
            hidden_size: 96,
            mlp_ratio: 3.0,
            num_heads: 3,
            depth: 1,
            depth_single_blocks: 3,
            axes_dim: FluxConfig::default_axes_dim(32),
            theta: 10_000.0,
            qkv_bias: false,
            guidance_embed: false,
        };
        let shapes = bfl_tiny_shapes(&config);
        assert_eq!(infer_flux_config(&shapes).unwrap(), config);
        let prefixed: Vec<_> = shapes.iter().map(|(n, s)| (format!("model.diffusion_model.{n}"), s.clone())).collect();
        assert_eq!(infer_flux_config(&prefixed).unwrap(), config);
        let singles_only: Vec<_> = shapes.iter().filter(|(n, _)| !n.starts_with("double_blocks")).cloned().collect();
        let inferred = infer_flux_config(&singles_only).unwrap();
        assert_eq!((inferred.depth, inferred.mlp_ratio, inferred.num_heads), (0, 3.0, 3));
    }

    #[test]
    fn incomplete_or_inconsistent_shapes_are_errors() {
        let shapes = bfl_tiny_shapes(&FluxConfig::tiny());
        let err = |tensors: Vec<(String, Vec<usize>)>| infer_flux_config(&tensors).unwrap_err().to_string();
        assert!(err(vec![("a.weight".into(), vec![1])]).contains("not a Flux transformer"));
        let no_txt: Vec<_> = shapes.iter().filter(|(n, _)| n != "txt_in.weight").cloned().collect();
        assert!(err(no_txt).contains("no tensor `txt_in.weight`"));
        let gap: Vec<_> = shapes.iter().filter(|(n, _)| !n.starts_with("double_blocks.0.")).cloned().collect();
        assert!(err(gap).contains("numbered up to 1"));
        let mut huge_index = shapes.clone();
        huge_index.push((format!("double_blocks.{}.img_mod.lin.bias", usize::MAX), vec![4]));
        assert!(err(huge_index).contains(&format!("numbered up to {}", usize::MAX)));
        let mut odd_head = shapes.clone();
        odd_head.retain(|(n, _)| !n.contains("query_norm"));
        odd_head.push(("double_blocks.0.img_attn.norm.query_norm.scale".into(), vec![24]));
        odd_head.push(("double_blocks.1.img_attn.norm.query_norm.scale".into(), vec![24]));
        assert!(err(odd_head).contains("head width of 24"));
    }

    #[test]
    fn diffusers_json_and_reconcile() {
        let json = r#"{"_class_name":"FluxTransformer2DModel","attention_head_dim":16,"axes_dims_rope":[4,4,8],
            "guidance_embeds":true,"in_channels":64,"joint_attention_dim":32,"num_attention_heads":4,"num_layers":2,
            "num_single_layers":2,"out_channels":null,"patch_size":1,"pooled_projection_dim":32}"#;
        let declared = FluxConfig::from_diffusers_json(json).unwrap();
        assert_eq!(declared, FluxConfig::tiny());
        assert_eq!(
            FluxConfig::from_diffusers_json("{}").unwrap(),
            FluxConfig { guidance_embed: false, ..FluxConfig::kontext_dev() }
        );
        let inferred = infer_flux_config(&bfl_tiny_shapes(&FluxConfig::tiny())).unwrap();
        assert_eq!(inferred.axes_dim, [4, 6, 6]);
        assert_eq!(inferred.clone().reconcile(declared.clone()).unwrap(), FluxConfig::tiny());
        let other = FluxConfig { depth: 3, ..declared };
        assert!(inferred.reconcile(other).unwrap_err().to_string().contains("depth = 3 but the weights have 2"));
        let bad_axes = json.replace("[4,4,8]", "[4,4,4]");
        assert!(FluxConfig::from_diffusers_json(&bad_axes).unwrap_err().to_string().contains("does not sum"));
        let vae = r#"{"_class_name":"AutoencoderKL"}"#;
        assert!(FluxConfig::from_diffusers_json(vae).unwrap_err().to_string().contains("AutoencoderKL"));
    }
}
