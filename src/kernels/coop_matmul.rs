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
/// Outputs along M and N one workgroup computes (`TILE_M`, `TILE_N`).
pub const TILE: usize = 64;
/// Subgroups per workgroup, each computing a 32×32 quarter of the tile.
const SUBGROUPS: usize = 4;
/// The side of one subgroup's quarter.
const QUARTER: usize = 32;

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
    /// The spelling of the cooperative operations.
    pub dialect: CoopDialect,
}

impl CoopMatmul {
    /// The variant for `ty` on an adapter whose fragments are `fragment` wide and whose subgroups are at most
    /// `subgroup_max` invocations, in the dialect of the target ([`CoopDialect::of_target`]).
    ///
    /// # Panics
    /// For fragments other than 8 and 16.
    pub fn new(ty: GgmlType, fragment: usize, subgroup_max: usize) -> Self {
        assert!(matches!(fragment, 8 | 16), "cooperative fragments of {fragment}: 8 or 16");
        let threads = (SUBGROUPS * subgroup_max).next_power_of_two().clamp(16, 256);
        Self { ty, fragment, threads, dialect: CoopDialect::of_target() }
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
            "matmul_{}_coop{}_t{}{}",
            dequant::type_name(self.ty),
            self.fragment,
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
        let per_side = QUARTER / f;
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
                let store = dialect.store_rows(&acc, "ys", &format!("y_at{i}_{j}"), "TILE_N");
                stores.push_str(&format!("let y_at{i}_{j} = (sm + {}u) * TILE_N + sn + {}u;\n{store}\n", i * f, j * f));
            }
        }
        let body = include_str!("../../shaders/matmul_quant_coop.wgsl")
            .replace("    //# accumulators\n", &accumulators)
            .replace("            //# products\n", &products)
            .replace("    //# stores\n", &stores);
        let prelude = format!(
            "enable f16;\n{}const FRAG: u32 = {f}u;\nconst THREADS: u32 = {}u;\n",
            dialect.enables(),
            self.threads
        );
        dequant::matmul_source(&prelude, self.ty, &body)
    }
}

/// Every variant the product can generate for `fragment` in the target's dialect: each packed type, the subgroup
/// widths of real adapters.
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
            all.push(CoopMatmul::new(ty, fragment, subgroup_max));
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
        assert_eq!(translated, 2 * 11 * 3);
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
        assert_eq!(v.kernel().name, "matmul_q4_k_coop16_t128");
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
        assert_eq!(chromium.kernel().name, "matmul_q8_0_coop8_t32_sm");
        // naga knows only wgpu's spelling.
        assert!(translate(&c).is_err());
    }
}
