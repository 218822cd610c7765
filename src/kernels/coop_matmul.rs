//! The packed matmuls on cooperative matrices (the `coop` kernel path, [`super::path::KernelPath::Coop`]):
//! `shaders/matmul_quant_coop.wgsl`, generated for each block type, fragment size (8 or 16: what the adapter
//! offers with f16 inputs and f32 accumulators, [`crate::device::coop_fragment`]), subgroup width and dialect
//! (wgpu's or Chromium's, [`CoopDialect`]), completed
//! by the type's `shaders/matmul_<type>.wgsl` and `shaders/packed_weights.wgsl` as the plain kernels are
//! ([`super::quant_matmul`]). Its twin is the plain kernels' ([`super::quant_matmul::reference`]).

use super::coop_dialect::{CoopDialect, Major, Role};
use super::{WgslKernel, dequant};
use crate::formats::GgmlType;

/// Rows of x up to which the matrix-vector kernel stays in use on the `coop` path (its tiles would be mostly
/// padding).
pub const MIN_ROWS: usize = 8;
/// The sides of the square tiles of y one workgroup may compute (`TILE`): 64 and 128.
pub const TILES: [usize; 2] = [64, 128];
/// Subgroups per workgroup, each computing a quarter of the tile.
const SUBGROUPS: usize = 4;
/// Workgroups of 128-wide tiles from which a matmul takes them on a hardware adapter ([`tile_for`]): two waves
/// on the largest GPUs (132 multiprocessors on an H200), so that the larger tiles leave none idle.
const LARGE_TILE_WORKGROUPS: usize = 256;

/// The tile side a matmul of `m` rows and `n` outputs takes: 128 on a hardware adapter when there are enough
/// such tiles to fill the GPU ([`LARGE_TILE_WORKGROUPS`]: the DiT's linears at 512² and up), else 64.
/// [`TILE_ENV`] forces one natively.
pub fn tile_for(m: usize, n: usize, software: bool) -> usize {
    if let Some(tile) = forced_tile() {
        return tile;
    }
    let large = m.div_ceil(128) * n.div_ceil(128) >= LARGE_TILE_WORKGROUPS;
    if large && !software { 128 } else { 64 }
}

/// The variable that forces the coop matmul's tile natively: `64` or `128`.
pub const TILE_ENV: &str = "KONTEXT_COOP_TILE";

/// The tile [`TILE_ENV`] forces, read once per process.
///
/// # Panics
/// For a value that names no tile, so that a typo never measures the wrong one.
fn forced_tile() -> Option<usize> {
    static FORCED: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    *FORCED.get_or_init(|| {
        let value = std::env::var(TILE_ENV).ok()?;
        let tile = value.trim().parse().ok().filter(|t| TILES.contains(t));
        Some(tile.unwrap_or_else(|| panic!("{TILE_ENV}={value}: the coop matmul's tiles are 64 and 128")))
    })
}

/// One variant of the kernel: what its text depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoopMatmul {
    /// Block type of the weights.
    pub ty: GgmlType,
    /// Side of the square fragments: 8 or 16.
    pub fragment: usize,
    /// Invocations per workgroup: four subgroups of the adapter's largest size (at most 64, so that all four fit
    /// in 256), at least 16.
    pub threads: usize,
    /// Side of the square tile of y one workgroup computes: one of [`TILES`].
    pub tile: usize,
    /// The spelling of the cooperative operations.
    pub dialect: CoopDialect,
}

impl CoopMatmul {
    /// The variant for `ty` on an adapter whose fragments are `fragment` wide and whose subgroups are at most
    /// `subgroup_max` invocations, with 64-wide tiles, in the dialect of the target ([`CoopDialect::of_target`]).
    ///
    /// # Panics
    /// For fragments other than 8 and 16.
    pub fn new(ty: GgmlType, fragment: usize, subgroup_max: usize) -> Self {
        assert!(matches!(fragment, 8 | 16), "cooperative fragments of {fragment}: 8 or 16");
        let threads = (SUBGROUPS * subgroup_max).next_power_of_two().clamp(16, 256);
        Self { ty, fragment, threads, tile: TILES[0], dialect: CoopDialect::of_target() }
    }

    /// The same variant with tiles `tile` wide.
    ///
    /// # Panics
    /// For a tile not in [`TILES`].
    pub fn with_tile(self, tile: usize) -> Self {
        assert!(TILES.contains(&tile), "coop matmul tiles of {tile}: one of {TILES:?}");
        Self { tile, ..self }
    }

    /// The same variant in `dialect`.
    pub fn in_dialect(self, dialect: CoopDialect) -> Self {
        Self { dialect, ..self }
    }

    /// The kernel, its text generated once per process ([`WgslKernel::generated`]).
    ///
    /// # Panics
    /// For types without a dequantizing part ([`dequant::dequant_source`]).
    pub fn kernel(&self) -> WgslKernel {
        let name = format!(
            "matmul_{}_coop{}_tile{}_t{}{}",
            dequant::type_name(self.ty),
            self.fragment,
            self.tile,
            self.threads,
            self.dialect.suffix()
        );
        WgslKernel::generated(name, || self.source())
    }

    /// The WGSL text.
    ///
    /// # Panics
    /// For types without a dequantizing part ([`dequant::dequant_source`]).
    pub fn source(&self) -> String {
        let (f, dialect) = (self.fragment, self.dialect);
        let per_side = self.tile / 2 / f;
        let (a16, b16, c32) = (
            dialect.fragment(f, "f16", Role::A),
            dialect.fragment(f, "f16", Role::B),
            dialect.fragment(f, "f32", Role::C),
        );
        let mut accumulators = String::new();
        let mut products = String::new();
        let mut stores = String::new();
        for i in 0..per_side {
            let a = dialect.load(&a16, "xs", &format!("a_at{i}"), "TILE_K", Major::Row);
            let b = dialect.load(&b16, "ws", &format!("b_at{i}"), "TILE_K", Major::Column);
            products.push_str(&format!("let a_at{i} = base + (sm + {}u) * TILE_K;\nlet a{i} = {a};\n", i * f));
            products.push_str(&format!("let b_at{i} = base + (sn + {}u) * TILE_K;\nlet b{i} = {b};\n", i * f));
        }
        for i in 0..per_side {
            for j in 0..per_side {
                let acc = format!("acc{i}_{j}");
                accumulators.push_str(&format!("var {acc} = {c32}();\n"));
                products.push_str(&format!(
                    "{acc} = {};\n",
                    dialect.multiply_add(&format!("a{i}"), &format!("b{j}"), &acc)
                ));
                // Every subgroup is done with `ys` before it is overwritten.
                let store = dialect.store_rows(&acc, "ys", "y_at", "FRAG");
                stores.push_str(&format!(
                    "workgroupBarrier();\n{store}\nworkgroupBarrier();\n\
                     write_fragment({}u, {}u, m0, n0, tid, m_len, n_len, has_bias);\n",
                    i * f,
                    j * f
                ));
            }
        }
        let body = include_str!("../../shaders/matmul_quant_coop.wgsl")
            .replace("    //# accumulators\n", &accumulators)
            .replace("            //# products\n", &products)
            .replace("    //# stores\n", &stores);
        let prelude = format!(
            "enable f16;\n{}const FRAG: u32 = {f}u;\nconst THREADS: u32 = {}u;\nconst TILE: u32 = {}u;\n",
            dialect.enables(),
            self.threads,
            self.tile
        );
        dequant::matmul_source(&prelude, self.ty, &body)
    }
}

/// Every variant the product can generate for `fragment` in the target's dialect: each packed type, the subgroup
/// widths of real adapters, each tile.
pub fn variants(fragment: usize) -> Vec<CoopMatmul> {
    let types = [
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::F32,
    ];
    let mut all = Vec::new();
    for ty in types {
        for subgroup_max in [8, 32, 64] {
            for tile in TILES {
                all.push(CoopMatmul::new(ty, fragment, subgroup_max).with_tile(tile));
            }
        }
    }
    all
}

#[cfg(all(test, not(target_arch = "wasm32")))]
pub(crate) mod tests {
    use super::*;
    use crate::kernels::coop_dialect::CoopDialect;

    /// Parses and validates `source` with naga, then writes it as SPIR-V (Vulkan) and as MSL (Metal).
    pub(crate) fn translate(source: &str) -> Result<(usize, usize), String> {
        use naga::valid::{Capabilities, ValidationFlags, Validator};
        let module = naga::front::wgsl::parse_str(source).map_err(|e| e.emit_to_string(source))?;
        let info = Validator::new(ValidationFlags::all(), Capabilities::all())
            .validate(&module)
            .map_err(|e| e.emit_to_string(source))?;
        let spv = naga::back::spv::write_vec(&module, &info, &naga::back::spv::Options::default(), None)
            .map_err(|e| format!("SPIR-V: {e}"))?;
        let pipeline = naga::back::msl::PipelineOptions::default();
        // Metal's simdgroup matrices, which wgpu maps cooperative matrices to, need MSL 2.3.
        let options = naga::back::msl::Options { lang_version: (2, 3), ..Default::default() };
        let (msl, _) =
            naga::back::msl::write_string(&module, &info, &options, &pipeline).map_err(|e| format!("MSL: {e}"))?;
        Ok((spv.len(), msl.len()))
    }

    /// The lines of a generated kernel that neither dialect spells (no cooperative or subgroup operation).
    pub(crate) fn undialected_lines(source: &str) -> Vec<&str> {
        source.lines().filter(|l| !l.contains("coop") && !l.contains("ubgroup")).collect()
    }

    /// Translates every variant's source, first checking that no `markers` were left ungenerated; the count.
    pub(crate) fn translate_all<V: std::fmt::Debug>(
        variants: impl IntoIterator<Item = V>,
        source: impl Fn(&V) -> String,
        markers: &[&str],
    ) -> usize {
        let mut translated = 0;
        for variant in variants {
            let source = source(&variant);
            for marker in markers {
                assert!(!source.contains(marker), "{variant:?}: `{marker}` was not generated");
            }
            let (spv, msl) = translate(&source).unwrap_or_else(|e| panic!("{variant:?}:\n{e}"));
            assert!(spv > 0 && msl > 0);
            translated += 1;
        }
        translated
    }

    #[test]
    fn every_coop_variant_translates_to_spirv_and_msl() {
        let markers = ["//# accumulators", "//# products", "//# stores"];
        let translated = translate_all([8, 16].into_iter().flat_map(variants), CoopMatmul::source, &markers);
        assert_eq!(translated, 2 * 11 * 3 * 2);
    }

    #[test]
    fn a_broken_coop_shader_fails_translation() {
        let source = CoopMatmul::new(GgmlType::Q8_0, 16, 32).source();
        // A B fragment where the product wants an A: naga refuses it.
        let broken = source.replacen("coopLoadT<coop_mat16x16<f16, A>>", "coopLoadT<coop_mat16x16<f16, B>>", 1);
        assert!(translate(&broken).is_err());
        assert!(translate(&source).is_ok());
    }

    #[test]
    fn variants_size_their_workgroups_and_fragments() {
        let v = CoopMatmul::new(GgmlType::Q4_K, 16, 32);
        assert_eq!(v.threads, 128);
        assert_eq!(CoopMatmul::new(GgmlType::Q4_K, 8, 8).threads, 32);
        assert_eq!(CoopMatmul::new(GgmlType::Q4_K, 8, 128).threads, 256);
        let source = v.source();
        assert_eq!(source.matches("coopMultiplyAdd").count(), 4);
        assert_eq!(CoopMatmul::new(GgmlType::Q4_K, 8, 8).source().matches("coopMultiplyAdd").count(), 16);
        assert!(source.contains("switch dims[1].w"), "one kernel for every epilogue");
        assert_eq!(v.kernel().name, "matmul_q4_k_coop16_tile64_t128");
        // 128-wide tiles: each subgroup's 64×64 quarter is 4×4 fragments of 16 (8 loads for 16 products).
        let large = v.with_tile(128);
        assert_eq!(large.source().matches("coopMultiplyAdd").count(), 16);
        assert_eq!(large.source().matches("coopLoad").count(), 8);
        assert!(large.source().contains("const TILE: u32 = 128u;"));
        assert_eq!(large.kernel().name, "matmul_q4_k_coop16_tile128_t128");
        // The DiT's linears at 1024² take 128-wide tiles on a GPU; T5's 512 tokens, small matmuls and software
        // adapters 64-wide ones.
        assert_eq!((tile_for(8704, 3072, false), tile_for(2560, 3072, false)), (128, 128));
        assert_eq!((tile_for(512, 4096, false), tile_for(8704, 3072, true), tile_for(70, 64, false)), (64, 64, 64));
        // Each accumulator passes through the subgroup's fragment of `ys` on its way to y.
        assert_eq!(large.source().matches("coopStoreT(").count(), 16);
        assert_eq!(large.source().matches("write_fragment(").count(), 16 + 1);
    }

    #[test]
    fn the_chromium_dialect_spells_the_same_kernel_in_subgroup_matrices() {
        let wgpu = CoopMatmul::new(GgmlType::Q8_0, 8, 8).in_dialect(CoopDialect::Wgpu);
        let chromium = wgpu.in_dialect(CoopDialect::SubgroupMatrix);
        let (w, c) = (wgpu.source(), chromium.source());
        assert_eq!(w.matches("coopMultiplyAdd").count(), c.matches("subgroupMatrixMultiplyAccumulate").count());
        assert_eq!(c.matches("subgroupMatrixLoad<subgroup_matrix_left<f16, 8, 8>, row_major>(&xs,").count(), 4);
        assert_eq!(c.matches("subgroupMatrixLoad<subgroup_matrix_right<f16, 8, 8>, col_major>(&ws,").count(), 4);
        assert_eq!(c.matches("subgroupMatrixStore<row_major>(&ys,").count(), 16);
        assert!(c.starts_with("enable f16;\nenable subgroups;\nenable chromium_experimental_subgroup_matrix;\n"));
        assert!(!c.contains("coop_mat8x8") && !c.contains("coopLoad") && !c.contains("wgpu_cooperative_matrix"));
        // Outside the generated lines the two texts are the same kernel.
        assert_eq!(undialected_lines(&w), undialected_lines(&c));
        assert_eq!(chromium.kernel().name, "matmul_q8_0_coop8_tile64_t32_sm");
        // naga knows only wgpu's spelling.
        assert!(translate(&c).is_err());
    }
}
