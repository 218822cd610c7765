//! Flash attention on cooperative matrices (the `coop` kernel path's attention): `shaders/flash_attention_coop.wgsl`,
//! generated for the fragment size (8 or 16, [`crate::device::coop_fragment`]), the subgroup width, the head
//! width, the element of the heads (f32 or f16) and the dialect (wgpu's or Chromium's, [`CoopDialect`]). Its twin
//! is [`super::attention::reference`].
//!
//! Heads of width 16 to 128 in steps of 16 (Flux's 128, the tiny packs' 16 and 32); wider heads (the VAE's 512)
//! take the other kernels. One pass over the keys: see the shader for how the output is rescaled when a row's
//! maximum grows.

use std::fmt::Write;

use super::coop_dialect::{CoopDialect, Major, Role};
use super::{LLVMPIPE_LOOP_BUDGET, WgslKernel};

/// Query rows one workgroup computes (`ROWS`).
pub const ROWS: usize = 64;
/// Keys per tile (`KEYS`).
const KEYS: usize = 32;
/// Query rows per subgroup.
const SUBGROUP_ROWS: usize = 16;
/// Output columns per round of the final stores (`OUT_COLS`).
const OUT_COLS: usize = 16;
/// Subgroups per workgroup.
const SUBGROUPS: usize = 4;
/// Widest head the kernel takes: its tiles then fill [`crate::device::COOP_WORKGROUP_BYTES`].
pub const HEAD_DIM_MAX: usize = 128;

/// One variant of the kernel: what its text depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoopAttention {
    /// Side of the square fragments: 8 or 16.
    pub fragment: usize,
    /// Invocations per workgroup: four subgroups of the adapter's largest size, at least 16.
    pub threads: usize,
    /// Head width `d`.
    pub head_dim: usize,
    /// Whether the query, key and value buffers hold f16 (else f32).
    pub f16_inputs: bool,
    /// The spelling of the cooperative operations.
    pub dialect: CoopDialect,
}

impl CoopAttention {
    /// Whether the kernel takes heads of width `d`: a multiple of 16 up to [`HEAD_DIM_MAX`].
    pub fn takes(d: usize) -> bool {
        d.is_multiple_of(16) && (16..=HEAD_DIM_MAX).contains(&d)
    }

    /// The variant for heads of width `head_dim` on an adapter whose fragments are `fragment` wide and whose
    /// subgroups are at most `subgroup_max` invocations, in the dialect of the target ([`CoopDialect::of_target`]).
    ///
    /// # Panics
    /// For fragments other than 8 and 16, and heads the kernel does not take ([`CoopAttention::takes`]).
    pub fn new(fragment: usize, subgroup_max: usize, head_dim: usize, f16_inputs: bool) -> Self {
        assert!(matches!(fragment, 8 | 16), "cooperative fragments of {fragment}: 8 or 16");
        assert!(
            Self::takes(head_dim),
            "coop attention takes heads of 16 to {HEAD_DIM_MAX} in steps of 16, not {head_dim}"
        );
        let threads = (SUBGROUPS * subgroup_max).next_power_of_two().clamp(16, 256);
        Self { fragment, threads, head_dim, f16_inputs, dialect: CoopDialect::of_target() }
    }

    /// The same variant in `dialect`.
    pub fn in_dialect(self, dialect: CoopDialect) -> Self {
        Self { dialect, ..self }
    }

    /// Bytes of workgroup memory the kernel declares.
    pub fn workgroup_bytes(&self) -> usize {
        let staged = ROWS * self.head_dim * 2;
        let scores = ROWS * KEYS * 4;
        let probs = ROWS * KEYS * 2;
        let rows = 4 * ROWS * 4;
        let lanes = 2 * ROWS * self.lanes() * 4;
        staged + scores + probs + rows + lanes + 4 + 16
    }

    /// Keys one dispatch may cover on Mesa's llvmpipe within [`LLVMPIPE_LOOP_BUDGET`], counting every loop's
    /// iterations plus one for its exit test, with a margin of half for the loops the driver's own lowering of
    /// the cooperative products may add. The kernel makes one dispatch, so longer keys take another kernel there.
    pub fn llvmpipe_max_keys(&self) -> usize {
        let per = |n: usize| n.div_ceil(self.threads) + 1;
        let lanes = self.lanes();
        let (items, keys) = ((ROWS * lanes).div_ceil(self.threads), KEYS.div_ceil(lanes) + 1);
        let rounds = self.head_dim / OUT_COLS * per(ROWS * OUT_COLS);
        let fixed = per(ROWS * self.head_dim) + per(ROWS) + 2 + rounds;
        // Staging; the softmax's lane maxima, probabilities and sums; a rescale (at worst every tile).
        let softmax = items * (keys + 1) + 1 + items * (lanes + 1 + keys + 1) + 1 + per(ROWS) * (lanes + 1);
        let tile = 1 + per(KEYS * self.head_dim) + softmax + rounds;
        (LLVMPIPE_LOOP_BUDGET / 2).saturating_sub(fixed) / tile * KEYS
    }

    /// Invocations per row in the softmax (`LANES`): the workgroup over [`ROWS`] rows, at least 1.
    pub fn lanes(&self) -> usize {
        (self.threads / ROWS).max(1)
    }

    /// The kernel, its text generated once per process ([`WgslKernel::generated`]).
    pub fn kernel(&self) -> WgslKernel {
        let half = if self.f16_inputs { "_h" } else { "" };
        let dialect = self.dialect.suffix();
        let name = format!("flash_attention_coop{}_t{}_d{}{half}{dialect}", self.fragment, self.threads, self.head_dim);
        WgslKernel::generated(name, || self.source())
    }

    /// The WGSL text.
    pub fn source(&self) -> String {
        let (f, dialect) = (self.fragment, self.dialect);
        let row_frags = SUBGROUP_ROWS / f;
        let dim_frags = self.head_dim / f;
        let key_frags = KEYS / f;
        let (a16, b16, c32) = (
            dialect.fragment(f, "f16", Role::A),
            dialect.fragment(f, "f16", Role::B),
            dialect.fragment(f, "f32", Role::C),
        );
        let load = |fragment: &str, array: &str, at: String, stride: &str, major: Major| {
            dialect.load(fragment, array, &at, stride, major)
        };
        let mut queries = String::new();
        for i in 0..row_frags {
            for k in 0..dim_frags {
                let (r, c) = (i * f, k * f);
                let _ = writeln!(queries, "let q_at{i}_{k} = (sr + {r}u) * HEAD_DIM + {c}u;");
                let q = load(&a16, "staged", format!("q_at{i}_{k}"), "HEAD_DIM", Major::Row);
                let _ = writeln!(queries, "let q{i}_{k} = {q};");
            }
        }
        let mut scores = String::new();
        for i in 0..row_frags {
            for j in 0..key_frags {
                let _ = writeln!(scores, "var s{i}_{j} = {c32}();");
            }
        }
        for j in 0..key_frags {
            for k in 0..dim_frags {
                let (key, c) = (j * f, k * f);
                // Kᵀ [d, keys] is the key tile read column-major.
                let _ = writeln!(scores, "let k_at{j}_{k} = {key}u * HEAD_DIM + {c}u;");
                let key_fragment = load(&b16, "staged", format!("k_at{j}_{k}"), "HEAD_DIM", Major::Column);
                let _ = writeln!(scores, "let k{j}_{k} = {key_fragment};");
                for i in 0..row_frags {
                    let product =
                        dialect.multiply_add(&format!("q{i}_{k}"), &format!("k{j}_{k}"), &format!("s{i}_{j}"));
                    let _ = writeln!(scores, "s{i}_{j} = {product};");
                }
            }
        }
        for i in 0..row_frags {
            for j in 0..key_frags {
                let (r, c) = (i * f, j * f);
                let _ = writeln!(scores, "let s_at{i}_{j} = (sr + {r}u) * KEYS + {c}u;");
                let _ = writeln!(
                    scores,
                    "{}",
                    dialect.store_rows(&format!("s{i}_{j}"), "scores", &format!("s_at{i}_{j}"), "KEYS")
                );
            }
        }
        let mut accumulators = String::new();
        for i in 0..row_frags {
            for n in 0..dim_frags {
                let _ = writeln!(accumulators, "var o{i}_{n} = {c32}();");
            }
        }
        let mut values = String::new();
        for kk in 0..key_frags {
            for i in 0..row_frags {
                let (r, c) = (i * f, kk * f);
                let _ = writeln!(values, "let p_at{i}_{kk} = (sr + {r}u) * KEYS + {c}u;");
                let p = load(&a16, "probs", format!("p_at{i}_{kk}"), "KEYS", Major::Row);
                let _ = writeln!(values, "let p{i}_{kk} = {p};");
            }
            for n in 0..dim_frags {
                let (key, c) = (kk * f, n * f);
                let _ = writeln!(values, "let v_at{kk}_{n} = VALUES_AT + {key}u * HEAD_DIM + {c}u;");
                let v = load(&b16, "staged", format!("v_at{kk}_{n}"), "HEAD_DIM", Major::Row);
                let _ = writeln!(values, "let v{kk}_{n} = {v};");
                for i in 0..row_frags {
                    let product =
                        dialect.multiply_add(&format!("p{i}_{kk}"), &format!("v{kk}_{n}"), &format!("o{i}_{n}"));
                    let _ = writeln!(values, "o{i}_{n} = {product};");
                }
            }
        }
        // OUT_COLS columns of the output at a time through `scores`: multiplied by the rows' rescale factors and
        // loaded back (`rescale`), or divided by the rows' sums and written out (`outputs`).
        let per_round = OUT_COLS / f;
        let rounds = self.head_dim / OUT_COLS;
        let store_round = |code: &mut String, round: usize| {
            let _ = writeln!(code, "workgroupBarrier();");
            for i in 0..row_frags {
                for c in 0..per_round {
                    let n = round * per_round + c;
                    let (r, col) = (i * f, c * f);
                    let _ = writeln!(code, "let o_at{i}_{n} = (sr + {r}u) * OUT_COLS + {col}u;");
                    let store = dialect.store_rows(&format!("o{i}_{n}"), "scores", &format!("o_at{i}_{n}"), "OUT_COLS");
                    let _ = writeln!(code, "{store}");
                }
            }
            let _ = writeln!(code, "workgroupBarrier();");
        };
        let mut rescale = String::new();
        let mut outputs = String::new();
        for round in 0..rounds {
            store_round(&mut rescale, round);
            let _ = writeln!(rescale, "rescale_columns(lid);");
            let _ = writeln!(rescale, "workgroupBarrier();");
            for i in 0..row_frags {
                for c in 0..per_round {
                    let n = round * per_round + c;
                    let o = load(&c32, "scores", format!("o_at{i}_{n}"), "OUT_COLS", Major::Row);
                    let _ = writeln!(rescale, "o{i}_{n} = {o};");
                }
            }
            store_round(&mut outputs, round);
            let _ = writeln!(outputs, "write_output(first_row, rows, {}u, lid);", round * OUT_COLS);
        }
        let body = include_str!("../../shaders/flash_attention_coop.wgsl")
            .replace("    //# queries\n", &queries)
            .replace("    //# accumulators\n", &accumulators)
            .replace("        //# scores\n", &scores)
            .replace("            //# rescale\n", &rescale)
            .replace("        //# values\n", &values)
            .replace("    //# outputs\n", &outputs);
        let input = if self.f16_inputs { "f16" } else { "f32" };
        format!(
            "enable f16;\n{}const FRAG: u32 = {f}u;\nconst THREADS: u32 = {}u;\nconst LANES: u32 = {}u;\n\
             const HEAD_DIM: u32 = {}u;\nalias INPUT = {input};\n{body}",
            dialect.enables(),
            self.threads,
            self.lanes(),
            self.head_dim
        )
    }
}

/// Every variant the product can generate for `fragment` in the target's dialect: each head width, the subgroup
/// widths of real adapters, f32 and f16 heads.
pub fn variants(fragment: usize) -> Vec<CoopAttention> {
    let mut all = Vec::new();
    for head_dim in (16..=HEAD_DIM_MAX).step_by(16) {
        for subgroup_max in [8, 32, 64] {
            for f16_inputs in [false, true] {
                all.push(CoopAttention::new(fragment, subgroup_max, head_dim, f16_inputs));
            }
        }
    }
    all
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;
    use crate::kernels::coop_matmul::tests::{translate, translate_all, undialected_lines};

    #[test]
    fn every_coop_attention_variant_translates_to_spirv_and_msl() {
        let markers = ["//# queries", "//# scores", "//# accumulators", "//# rescale", "//# values", "//# outputs"];
        let translated = translate_all([8, 16].into_iter().flat_map(variants), CoopAttention::source, &markers);
        assert_eq!(translated, 2 * 8 * 3 * 2);
    }

    #[test]
    fn the_chromium_dialect_spells_the_same_attention_in_subgroup_matrices() {
        let wgpu = CoopAttention::new(16, 32, 128, true).in_dialect(CoopDialect::Wgpu);
        let chromium = wgpu.in_dialect(CoopDialect::SubgroupMatrix);
        let (w, c) = (wgpu.source(), chromium.source());
        let products = c.matches("subgroupMatrixMultiplyAccumulate").count();
        assert_eq!((products, w.matches("coopMultiplyAdd").count()), (32, 32));
        assert_eq!(c.matches("subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&staged,").count(), 16);
        assert_eq!(c.matches("subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&staged,").count(), 16);
        assert_eq!(c.matches("subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&probs,").count(), 2);
        // A rescale loads each of the 8 output fragments back.
        assert_eq!(c.matches("subgroupMatrixLoad<subgroup_matrix_result<f32, 16, 16>, row_major>(&scores,").count(), 8);
        assert!(!c.contains("coop_mat16x16") && !c.contains("coopLoad") && !c.contains("coopStore"));
        assert_eq!(undialected_lines(&w), undialected_lines(&c));
        assert_eq!(chromium.kernel().name, "flash_attention_coop16_t128_d128_h_sm");
        assert!(translate(&c).is_err());
    }

    #[test]
    fn a_broken_coop_attention_shader_fails_translation() {
        let source = CoopAttention::new(16, 32, 128, false).source();
        // The probabilities as a B fragment where the product wants an A: naga refuses it.
        let broken =
            source.replacen("coopLoadT<coop_mat16x16<f16, A>>(&probs", "coopLoadT<coop_mat16x16<f16, B>>(&probs", 1);
        assert_ne!(broken, source);
        assert!(translate(&broken).is_err());
        assert!(translate(&source).is_ok());
    }

    #[test]
    fn variants_fit_the_workgroup_memory_the_path_needs_and_count_their_products() {
        for fragment in [8, 16] {
            for v in variants(fragment) {
                assert!(v.workgroup_bytes() <= crate::device::COOP_WORKGROUP_BYTES as usize, "{v:?}");
            }
        }
        let v = CoopAttention::new(16, 32, 128, false);
        assert_eq!(v.threads, 128);
        // The softmax spreads each row over the workgroup: 2 invocations per row of 128, 4 of 256, 1 of 32.
        assert_eq!(v.lanes(), 2);
        assert!(v.source().contains("const LANES: u32 = 2u;"));
        assert_eq!(
            (CoopAttention::new(16, 64, 128, false).lanes(), CoopAttention::new(8, 8, 128, false).lanes()),
            (4, 1)
        );
        // Q·Kᵀ (1 × 2 fragments of 8 products each) and P·V (2 keys × 8 columns), once each.
        assert_eq!(v.source().matches("coopMultiplyAdd").count(), 16 + 16);
        assert_eq!(v.kernel().name, "flash_attention_coop16_t128_d128");
        assert!(CoopAttention::takes(16) && CoopAttention::takes(128));
        assert!(!CoopAttention::takes(24) && !CoopAttention::takes(144) && !CoopAttention::takes(512));
        // lavapipe's 8-wide fragments and subgroups: 32 invocations; a few thousand keys per dispatch.
        let lavapipe = CoopAttention::new(8, 8, 128, false);
        assert_eq!(lavapipe.threads, 32);
        let keys = lavapipe.llvmpipe_max_keys();
        assert!((1000..8704).contains(&keys), "{keys}");
    }
}
