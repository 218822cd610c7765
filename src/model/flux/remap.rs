//! diffusers `FluxTransformer2DModel` checkpoints seen under BFL names: the inverse of diffusers'
//! `convert_flux_transformer_checkpoint_to_diffusers`, as one declarative table.
//!
//! In the patterns, `{N}` stands for a block index and `{p}` for `weight` or `bias`; every placeholder of a BFL
//! pattern takes the same value in its diffusers sources.

use crate::formats::weights::{HostTensor, RawBlock, Weights};
use crate::{Error, Result};

/// How a BFL tensor is made from its diffusers sources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Make {
    /// The one source, as is.
    Rename,
    /// The sources stacked along the first axis (fused q, k, v (and MLP-in) projections).
    Concat,
    /// The one source with the two halves of its first axis swapped (diffusers `[scale, shift]` → BFL
    /// `[shift, scale]`).
    SwapHalves,
}

/// One row of the table: a BFL name pattern and the diffusers patterns it is made from.
struct Rule {
    bfl: &'static str,
    make: Make,
    diffusers: &'static [&'static str],
}

const fn rule(bfl: &'static str, make: Make, diffusers: &'static [&'static str]) -> Rule {
    Rule { bfl, make, diffusers }
}

use Make::{Concat, Rename, SwapHalves};

/// BFL name ← diffusers names.
const RULES: &[Rule] = &[
    rule("img_in.{p}", Rename, &["x_embedder.{p}"]),
    rule("txt_in.{p}", Rename, &["context_embedder.{p}"]),
    rule("time_in.in_layer.{p}", Rename, &["time_text_embed.timestep_embedder.linear_1.{p}"]),
    rule("time_in.out_layer.{p}", Rename, &["time_text_embed.timestep_embedder.linear_2.{p}"]),
    rule("vector_in.in_layer.{p}", Rename, &["time_text_embed.text_embedder.linear_1.{p}"]),
    rule("vector_in.out_layer.{p}", Rename, &["time_text_embed.text_embedder.linear_2.{p}"]),
    rule("guidance_in.in_layer.{p}", Rename, &["time_text_embed.guidance_embedder.linear_1.{p}"]),
    rule("guidance_in.out_layer.{p}", Rename, &["time_text_embed.guidance_embedder.linear_2.{p}"]),
    // Double-stream blocks: `attn.*` is the image stream, `attn.add_*` / `*_added_*` / `*_context` the text stream.
    rule("double_blocks.{N}.img_mod.lin.{p}", Rename, &["transformer_blocks.{N}.norm1.linear.{p}"]),
    rule("double_blocks.{N}.txt_mod.lin.{p}", Rename, &["transformer_blocks.{N}.norm1_context.linear.{p}"]),
    rule(
        "double_blocks.{N}.img_attn.qkv.{p}",
        Concat,
        &[
            "transformer_blocks.{N}.attn.to_q.{p}",
            "transformer_blocks.{N}.attn.to_k.{p}",
            "transformer_blocks.{N}.attn.to_v.{p}",
        ],
    ),
    rule(
        "double_blocks.{N}.txt_attn.qkv.{p}",
        Concat,
        &[
            "transformer_blocks.{N}.attn.add_q_proj.{p}",
            "transformer_blocks.{N}.attn.add_k_proj.{p}",
            "transformer_blocks.{N}.attn.add_v_proj.{p}",
        ],
    ),
    rule("double_blocks.{N}.img_attn.norm.query_norm.scale", Rename, &["transformer_blocks.{N}.attn.norm_q.weight"]),
    rule("double_blocks.{N}.img_attn.norm.key_norm.scale", Rename, &["transformer_blocks.{N}.attn.norm_k.weight"]),
    rule(
        "double_blocks.{N}.txt_attn.norm.query_norm.scale",
        Rename,
        &["transformer_blocks.{N}.attn.norm_added_q.weight"],
    ),
    rule(
        "double_blocks.{N}.txt_attn.norm.key_norm.scale",
        Rename,
        &["transformer_blocks.{N}.attn.norm_added_k.weight"],
    ),
    rule("double_blocks.{N}.img_attn.proj.{p}", Rename, &["transformer_blocks.{N}.attn.to_out.0.{p}"]),
    rule("double_blocks.{N}.txt_attn.proj.{p}", Rename, &["transformer_blocks.{N}.attn.to_add_out.{p}"]),
    rule("double_blocks.{N}.img_mlp.0.{p}", Rename, &["transformer_blocks.{N}.ff.net.0.proj.{p}"]),
    rule("double_blocks.{N}.img_mlp.2.{p}", Rename, &["transformer_blocks.{N}.ff.net.2.{p}"]),
    rule("double_blocks.{N}.txt_mlp.0.{p}", Rename, &["transformer_blocks.{N}.ff_context.net.0.proj.{p}"]),
    rule("double_blocks.{N}.txt_mlp.2.{p}", Rename, &["transformer_blocks.{N}.ff_context.net.2.{p}"]),
    // Single-stream blocks: q, k, v and the MLP input are one fused `linear1`.
    rule("single_blocks.{N}.modulation.lin.{p}", Rename, &["single_transformer_blocks.{N}.norm.linear.{p}"]),
    rule(
        "single_blocks.{N}.linear1.{p}",
        Concat,
        &[
            "single_transformer_blocks.{N}.attn.to_q.{p}",
            "single_transformer_blocks.{N}.attn.to_k.{p}",
            "single_transformer_blocks.{N}.attn.to_v.{p}",
            "single_transformer_blocks.{N}.proj_mlp.{p}",
        ],
    ),
    rule("single_blocks.{N}.norm.query_norm.scale", Rename, &["single_transformer_blocks.{N}.attn.norm_q.weight"]),
    rule("single_blocks.{N}.norm.key_norm.scale", Rename, &["single_transformer_blocks.{N}.attn.norm_k.weight"]),
    rule("single_blocks.{N}.linear2.{p}", Rename, &["single_transformer_blocks.{N}.proj_out.{p}"]),
    rule("final_layer.linear.{p}", Rename, &["proj_out.{p}"]),
    rule("final_layer.adaLN_modulation.1.{p}", SwapHalves, &["norm_out.linear.{p}"]),
];

/// Values of the `{N}` / `{p}` placeholders matched in a name.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Captures {
    n: Option<String>,
    p: Option<String>,
}

/// Matches `name` against `pattern` segment by segment (`.`-separated).
fn capture(pattern: &str, name: &str) -> Option<Captures> {
    let mut captures = Captures::default();
    let mut names = name.split('.');
    for segment in pattern.split('.') {
        let part = names.next()?;
        match segment {
            "{N}" if !part.is_empty() && part.bytes().all(|c| c.is_ascii_digit()) => captures.n = Some(part.into()),
            "{p}" if part == "weight" || part == "bias" => captures.p = Some(part.into()),
            literal if literal == part => {}
            _ => return None,
        }
    }
    names.next().is_none().then_some(captures)
}

fn fill(pattern: &str, captures: &Captures) -> String {
    let mut out = pattern.to_string();
    if let Some(n) = &captures.n {
        out = out.replace("{N}", n);
    }
    if let Some(p) = &captures.p {
        out = out.replace("{p}", p);
    }
    out
}

/// Where a diffusers linear module lives in the BFL model (for LoRA factors, which name modules, not tensors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BflModule {
    /// The BFL module, e.g. `double_blocks.0.img_attn.qkv`.
    pub name: String,
    /// Which of the fused parts the diffusers module is (0 when not fused).
    pub part: usize,
    /// How many diffusers modules are fused into the BFL one (1 when not fused).
    pub parts: usize,
    /// Whether the two halves of the output rows are swapped (`norm_out.linear`).
    pub swap_halves: bool,
}

/// The BFL linear module a diffusers module (`transformer_blocks.0.attn.to_q`) is part of, by the same table.
pub fn bfl_module(diffusers_module: &str) -> Option<BflModule> {
    let tensor = format!("{diffusers_module}.weight");
    RULES.iter().filter(|rule| rule.bfl.ends_with(".{p}")).find_map(|rule| {
        rule.diffusers.iter().enumerate().find_map(|(part, pattern)| {
            let captures = capture(pattern, &tensor)?;
            let bfl = fill(rule.bfl, &captures);
            Some(BflModule {
                name: bfl.strip_suffix(".weight")?.to_string(),
                part,
                parts: rule.diffusers.len(),
                swap_halves: rule.make == SwapHalves,
            })
        })
    })
}

/// The diffusers modules fused into the BFL linear module `bfl_module`, in row order (empty when the table has
/// no rule for it).
pub fn diffusers_modules(bfl_module: &str) -> Vec<String> {
    let tensor = format!("{bfl_module}.weight");
    RULES
        .iter()
        .filter(|rule| rule.bfl.ends_with(".{p}"))
        .find_map(|rule| {
            let captures = capture(rule.bfl, &tensor)?;
            rule.diffusers
                .iter()
                .map(|pattern| fill(pattern, &captures).strip_suffix(".weight").map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// A diffusers-named Flux transformer checkpoint presented under BFL names (shapes and reads), so
/// [`crate::model::flux::Flux::load`] takes it like a BFL file. Tensors no rule covers are not visible.
pub struct DiffusersAsBfl<W: Weights> {
    inner: W,
}

impl<W: Weights> DiffusersAsBfl<W> {
    /// Wraps a diffusers-named source.
    pub fn new(inner: W) -> Self {
        Self { inner }
    }

    /// The wrapped source.
    pub fn into_inner(self) -> W {
        self.inner
    }

    /// The rule for BFL `name` and the diffusers names it is made from.
    fn sources(&self, name: &str) -> Option<(Make, Vec<String>)> {
        RULES.iter().find_map(|rule| {
            let captures = capture(rule.bfl, name)?;
            Some((rule.make, rule.diffusers.iter().map(|pattern| fill(pattern, &captures)).collect()))
        })
    }
}

impl<W: Weights> Weights for DiffusersAsBfl<W> {
    /// The BFL names whose sources all exist, in the order of their first source.
    fn names(&self) -> Vec<String> {
        let mut names = Vec::new();
        for name in self.inner.names() {
            for rule in RULES {
                if let Some(captures) = capture(rule.diffusers[0], &name) {
                    let bfl = fill(rule.bfl, &captures);
                    if self.contains(&bfl) {
                        names.push(bfl);
                    }
                }
            }
        }
        names
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        let (make, sources) = self.sources(name)?;
        let shapes = sources.iter().map(|source| self.inner.shape(source)).collect::<Option<Vec<_>>>()?;
        let mut shape = shapes[0].clone();
        if make == Concat {
            *shape.first_mut()? = shapes.iter().map(|s| s.first().copied().unwrap_or(0)).sum();
        }
        Some(shape)
    }

    /// The ggml blocks of `name` when its sources are blocks too: rows of whole blocks concatenate and swap
    /// like rows of values. `None` (read as f32 instead) when the sources differ in type or row shape.
    fn raw_block(&self, name: &str) -> Option<Result<RawBlock>> {
        let (make, sources) = self.sources(name)?;
        let mut parts = Vec::new();
        for source in &sources {
            match self.inner.raw_block(source)? {
                Ok(part) => parts.push(part),
                Err(e) => return Some(Err(e)),
            }
        }
        let (ty, shape, _) = parts.first()?.clone();
        let rows = *shape.first()?;
        match make {
            Rename => parts.into_iter().next().map(Ok),
            Concat => {
                if parts.iter().any(|(t, s, _)| *t != ty || s.is_empty() || s[1..] != shape[1..]) {
                    return None;
                }
                let rows = parts.iter().map(|(_, s, _)| s[0]).sum();
                let bytes = parts.iter().flat_map(|(_, _, b)| b.iter().copied()).collect();
                Some(Ok((ty, [vec![rows], shape[1..].to_vec()].concat(), bytes)))
            }
            SwapHalves => {
                let (_, _, bytes) = parts.into_iter().next()?;
                if rows % 2 == 1 || bytes.len() % 2 == 1 {
                    return None;
                }
                let (first, second) = bytes.split_at(bytes.len() / 2);
                Some(Ok((ty, shape, [second, first].concat())))
            }
        }
    }

    fn read(&self, name: &str) -> Result<HostTensor> {
        let (make, sources) =
            self.sources(name).ok_or_else(|| Error::Invalid(format!("no diffusers tensor maps to `{name}`")))?;
        let parts = sources.iter().map(|source| self.inner.require(source)).collect::<Result<Vec<_>>>()?;
        match make {
            Rename => Ok(parts.into_iter().next().expect("one source")),
            Concat => {
                let rest = &parts[0].shape[1..];
                if let Some((source, part)) =
                    sources.iter().zip(&parts).find(|(_, p)| p.shape.is_empty() || &p.shape[1..] != rest)
                {
                    return Err(Error::Invalid(format!(
                        "cannot fuse `{name}`: `{source}` has shape {:?}, `{}` has {:?}",
                        part.shape, sources[0], parts[0].shape
                    )));
                }
                let rows = parts.iter().map(|p| p.shape[0]).sum();
                let shape = [vec![rows], rest.to_vec()].concat();
                HostTensor::new(shape, parts.into_iter().flat_map(|p| p.data).collect())
            }
            SwapHalves => {
                let part = parts.into_iter().next().expect("one source");
                let rows = part.shape.first().copied().unwrap_or(0);
                if rows % 2 == 1 || part.shape.is_empty() {
                    return Err(Error::Invalid(format!(
                        "`{}` has shape {:?}: its first axis must hold two equal halves",
                        sources[0], part.shape
                    )));
                }
                let (first, second) = part.data.split_at(part.data.len() / 2);
                HostTensor::new(part.shape, [second, first].concat())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::GgmlType;
    use std::collections::BTreeMap;

    /// An in-memory source holding the given tensors.
    struct Map(BTreeMap<String, HostTensor>);

    impl Weights for Map {
        fn names(&self) -> Vec<String> {
            self.0.keys().cloned().collect()
        }
        fn shape(&self, name: &str) -> Option<Vec<usize>> {
            self.0.get(name).map(|t| t.shape.clone())
        }
        fn read(&self, name: &str) -> Result<HostTensor> {
            self.0.get(name).cloned().ok_or_else(|| Error::Invalid(format!("missing tensor `{name}`")))
        }
    }

    fn map(entries: &[(&str, Vec<usize>, Vec<f32>)]) -> DiffusersAsBfl<Map> {
        let tensors = entries
            .iter()
            .map(|(name, shape, data)| (name.to_string(), HostTensor::new(shape.clone(), data.clone()).unwrap()))
            .collect();
        DiffusersAsBfl::new(Map(tensors))
    }

    #[test]
    fn diffusers_modules_find_their_bfl_module() {
        let qkv = bfl_module("single_transformer_blocks.3.proj_mlp").unwrap();
        assert_eq!((qkv.name.as_str(), qkv.part, qkv.parts, qkv.swap_halves), ("single_blocks.3.linear1", 3, 4, false));
        let out = bfl_module("norm_out.linear").unwrap();
        assert_eq!(
            (out.name.as_str(), out.part, out.parts, out.swap_halves),
            ("final_layer.adaLN_modulation.1", 0, 1, true)
        );
        assert_eq!(bfl_module("transformer_blocks.0.attn.norm_q"), None);
        assert_eq!(bfl_module("transformer_blocks.x.attn.to_q"), None);
        assert_eq!(
            diffusers_modules("double_blocks.1.txt_attn.qkv"),
            [
                "transformer_blocks.1.attn.add_q_proj",
                "transformer_blocks.1.attn.add_k_proj",
                "transformer_blocks.1.attn.add_v_proj"
            ]
        );
        assert_eq!(diffusers_modules("final_layer.linear"), ["proj_out"]);
        assert!(diffusers_modules("double_blocks.1.nothing").is_empty());
    }

    #[test]
    fn captures_block_index_and_parameter() {
        let c = capture("double_blocks.{N}.img_attn.qkv.{p}", "double_blocks.12.img_attn.qkv.bias").unwrap();
        assert_eq!((c.n.as_deref(), c.p.as_deref()), (Some("12"), Some("bias")));
        assert!(capture("double_blocks.{N}.img_attn.qkv.{p}", "double_blocks.x.img_attn.qkv.bias").is_none());
        assert!(capture("img_in.{p}", "img_in.weight.extra").is_none());
        assert!(capture("img_in.{p}", "img_in.scale").is_none());
    }

    #[test]
    fn fuses_qkv_rows_in_order() {
        let w = map(&[
            ("transformer_blocks.3.attn.to_q.weight", vec![1, 2], vec![1.0, 2.0]),
            ("transformer_blocks.3.attn.to_k.weight", vec![1, 2], vec![3.0, 4.0]),
            ("transformer_blocks.3.attn.to_v.weight", vec![2, 2], vec![5.0, 6.0, 7.0, 8.0]),
        ]);
        assert_eq!(w.names(), vec!["double_blocks.3.img_attn.qkv.weight"]);
        assert_eq!(w.shape("double_blocks.3.img_attn.qkv.weight"), Some(vec![4, 2]));
        let fused = w.read("double_blocks.3.img_attn.qkv.weight").unwrap();
        assert_eq!(fused, HostTensor::new(vec![4, 2], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]).unwrap());
        assert!(!w.contains("double_blocks.3.img_attn.qkv.bias"));
    }

    #[test]
    fn swaps_final_modulation_halves() {
        let w = map(&[("norm_out.linear.bias", vec![4], vec![1.0, 2.0, 3.0, 4.0])]);
        let bias = w.read("final_layer.adaLN_modulation.1.bias").unwrap();
        assert_eq!(bias.data, vec![3.0, 4.0, 1.0, 2.0]);
    }

    /// [`Map`] whose tensors are stored as ggml F16 blocks, except those named in the set (as F32).
    struct Blocks(Map, Vec<&'static str>);

    impl Weights for Blocks {
        fn names(&self) -> Vec<String> {
            self.0.names()
        }
        fn shape(&self, name: &str) -> Option<Vec<usize>> {
            self.0.shape(name)
        }
        fn read(&self, name: &str) -> Result<HostTensor> {
            self.0.read(name)
        }
        fn raw_block(&self, name: &str) -> Option<Result<RawBlock>> {
            let t = self.0.0.get(name)?;
            Some(Ok(if self.1.contains(&name) {
                (GgmlType::F32, t.shape.clone(), t.data.iter().flat_map(|v| v.to_le_bytes()).collect())
            } else {
                (GgmlType::F16, t.shape.clone(), f16_bytes(&t.data))
            }))
        }
    }

    fn f16_bytes(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect()
    }

    #[test]
    fn blocks_fuse_and_swap_like_values() {
        let q = ("transformer_blocks.0.attn.to_q.weight", vec![1, 2], vec![1.0, 2.0]);
        let k = ("transformer_blocks.0.attn.to_k.weight", vec![2, 2], vec![3.0, 4.0, 5.0, 6.0]);
        let v = ("transformer_blocks.0.attn.to_v.weight", vec![1, 2], vec![7.0, 8.0]);
        let out = ("norm_out.linear.weight", vec![2, 2], vec![1.0, 2.0, 3.0, 4.0]);
        let tensors = map(&[q, k, v, out]).into_inner();
        let w = DiffusersAsBfl::new(Blocks(tensors, vec![]));
        for name in ["double_blocks.0.img_attn.qkv.weight", "final_layer.adaLN_modulation.1.weight"] {
            let (ty, shape, bytes) = w.raw_block(name).unwrap().unwrap();
            let values = w.read(name).unwrap();
            assert_eq!((ty, &shape, bytes), (GgmlType::F16, &values.shape, f16_bytes(&values.data)), "{name}");
        }
        let mixed = DiffusersAsBfl::new(Blocks(w.into_inner().0, vec!["transformer_blocks.0.attn.to_k.weight"]));
        assert!(mixed.raw_block("double_blocks.0.img_attn.qkv.weight").is_none(), "mixed types fall back to f32");
        assert!(mixed.raw_block("double_blocks.1.img_attn.qkv.weight").is_none());
    }

    #[test]
    fn mismatched_fusion_is_reported() {
        let w = map(&[
            ("single_transformer_blocks.0.attn.to_q.weight", vec![1, 2], vec![0.0; 2]),
            ("single_transformer_blocks.0.attn.to_k.weight", vec![1, 2], vec![0.0; 2]),
            ("single_transformer_blocks.0.attn.to_v.weight", vec![1, 2], vec![0.0; 2]),
            ("single_transformer_blocks.0.proj_mlp.weight", vec![1, 3], vec![0.0; 3]),
        ]);
        let err = w.read("single_blocks.0.linear1.weight").unwrap_err().to_string();
        assert_eq!(
            err,
            "cannot fuse `single_blocks.0.linear1.weight`: `single_transformer_blocks.0.proj_mlp.weight` has shape [1, 3], \
             `single_transformer_blocks.0.attn.to_q.weight` has [1, 2]"
        );
    }
}
