//! The two spellings the `coop` kernels ([`super::coop_matmul`], [`super::coop_attention`]) are generated in,
//! from one source: the generators write every fragment type, load, product and store through a
//! [`CoopDialect`].
//!
//! - [`CoopDialect::Wgpu`]: wgpu's `wgpu_cooperative_matrix` (`coop_mat16x16<f16, A>`, `coopLoadT`, …), which
//!   naga translates to Vulkan's `VK_KHR_cooperative_matrix` and Metal's simdgroup matrices: the native CLI.
//! - [`CoopDialect::SubgroupMatrix`]: Chromium's `chromium_experimental_subgroup_matrix`
//!   (`subgroup_matrix_left<f16, 16, 16>`, `subgroupMatrixLoad`, …), which the browser's own compiler (Dawn's
//!   Tint) takes where the adapter exposes `chromium-experimental-subgroup-matrix`: the web worker. wgpu hands
//!   WGSL to the browser as it is, so the kernel reaches Tint untouched.

/// A spelling of cooperative-matrix WGSL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CoopDialect {
    /// wgpu's `wgpu_cooperative_matrix`, through naga.
    Wgpu,
    /// Chromium's `chromium_experimental_subgroup_matrix`, through the browser's Tint.
    SubgroupMatrix,
}

/// The part a fragment plays in `C += A · B`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The left operand, `[M, K]`.
    A,
    /// The right operand, `[K, N]`.
    B,
    /// The accumulator, `[M, N]`.
    C,
}

/// How a fragment lies in the array it is loaded from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Major {
    /// Row `r` at `at + r · stride`.
    Row,
    /// Column `c` at `at + c · stride`.
    Column,
}

impl CoopDialect {
    /// The dialect of the target this crate is built for: the browser's on wasm, wgpu's elsewhere.
    pub const fn of_target() -> Self {
        if cfg!(target_arch = "wasm32") { Self::SubgroupMatrix } else { Self::Wgpu }
    }

    /// What kernel names carry so that both dialects' texts never share a cache entry.
    pub fn suffix(self) -> &'static str {
        match self {
            Self::Wgpu => "",
            Self::SubgroupMatrix => "_sm",
        }
    }

    /// The `enable` lines the kernels need beside `enable f16;` (Tint also wants subgroups enabled for the
    /// `subgroup_id` builtin; naga takes it without).
    pub fn enables(self) -> &'static str {
        match self {
            Self::Wgpu => "enable wgpu_cooperative_matrix;\n",
            Self::SubgroupMatrix => "enable subgroups;\nenable chromium_experimental_subgroup_matrix;\n",
        }
    }

    /// The type of a square `side`×`side` fragment of `scalar` in `role`.
    pub fn fragment(self, side: usize, scalar: &str, role: Role) -> String {
        match self {
            Self::Wgpu => format!("coop_mat{side}x{side}<{scalar}, {role:?}>"),
            Self::SubgroupMatrix => {
                let kind = match role {
                    Role::A => "left",
                    Role::B => "right",
                    Role::C => "result",
                };
                format!("subgroup_matrix_{kind}<{scalar}, {side}, {side}>")
            }
        }
    }

    /// An expression loading a fragment of type `fragment` from `array` (a workgroup array of its scalar) at the
    /// index `at` (a name: naga's SPIR-V writer wants the index bound first), `stride` values between rows or
    /// columns.
    pub fn load(self, fragment: &str, array: &str, at: &str, stride: &str, major: Major) -> String {
        match (self, major) {
            (Self::Wgpu, Major::Row) => format!("coopLoadT<{fragment}>(&{array}[{at}], {stride})"),
            (Self::Wgpu, Major::Column) => format!("coopLoad<{fragment}>(&{array}[{at}], {stride})"),
            (Self::SubgroupMatrix, Major::Row) => {
                format!("subgroupMatrixLoad<{fragment}, row_major>(&{array}, {at}, {stride})")
            }
            (Self::SubgroupMatrix, Major::Column) => {
                format!("subgroupMatrixLoad<{fragment}, col_major>(&{array}, {at}, {stride})")
            }
        }
    }

    /// An expression: `c + a · b`.
    pub fn multiply_add(self, a: &str, b: &str, c: &str) -> String {
        match self {
            Self::Wgpu => format!("coopMultiplyAdd({a}, {b}, {c})"),
            Self::SubgroupMatrix => format!("subgroupMatrixMultiplyAccumulate({a}, {b}, {c})"),
        }
    }

    /// A statement storing the accumulator `value` row-major into `array` at the index `at` (a name), `stride`
    /// values between rows.
    pub fn store_rows(self, value: &str, array: &str, at: &str, stride: &str) -> String {
        match self {
            Self::Wgpu => format!("coopStoreT({value}, &{array}[{at}], {stride});"),
            Self::SubgroupMatrix => format!("subgroupMatrixStore<row_major>(&{array}, {at}, {value}, {stride});"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_dialects_spell_the_same_operations() {
        let wgpu = CoopDialect::Wgpu;
        let chromium = CoopDialect::SubgroupMatrix;
        assert_eq!(wgpu.fragment(16, "f16", Role::A), "coop_mat16x16<f16, A>");
        assert_eq!(chromium.fragment(8, "f32", Role::C), "subgroup_matrix_result<f32, 8, 8>");
        let a = chromium.fragment(16, "f16", Role::A);
        assert_eq!(
            chromium.load(&a, "xs", "a_at", "TILE_K", Major::Row),
            "subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&xs, a_at, TILE_K)"
        );
        assert_eq!(wgpu.load("T", "ws", "b_at", "TILE_K", Major::Column), "coopLoad<T>(&ws[b_at], TILE_K)");
        assert_eq!(
            chromium.store_rows("acc", "ys", "y_at", "64u"),
            "subgroupMatrixStore<row_major>(&ys, y_at, acc, 64u);"
        );
        assert_eq!(wgpu.store_rows("acc", "ys", "y_at", "64u"), "coopStoreT(acc, &ys[y_at], 64u);");
        assert_ne!(wgpu.suffix(), chromium.suffix());
    }
}
