//! What the browser granted the worker's device beyond wgpu's own request. wgpu asks the browser only for the
//! features in its own table, which has neither `subgroups` nor Chromium's subgroup matrices
//! (`chromium-experimental-subgroup-matrix`), so `www/device-request.js` adds them to the worker's device request
//! where the adapter has them, and records the grants in `globalThis.kontextSubgroups` and
//! `globalThis.kontextSubgroupMatrix`.

use serde::Deserialize;

/// The global the worker's request records its `subgroups` grant in.
pub const SUBGROUPS_GLOBAL: &str = "kontextSubgroups";
/// The global the worker's request records its subgroup-matrix grant in.
pub const MATRIX_GLOBAL: &str = "kontextSubgroupMatrix";

/// A device granted `subgroups`, as `www/device-request.js` records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubgroupsGrant {
    /// The adapter's smallest subgroup size.
    pub subgroup_min_size: u32,
    /// The adapter's largest subgroup size.
    pub subgroup_max_size: u32,
}

/// A device granted subgroup matrices and subgroups, as `www/device-request.js` records it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubgroupMatrixGrant {
    /// The side of the square products with f16 inputs and f32 results the kernels use (16 where the adapter
    /// has it, else 8).
    pub fragment: u32,
    /// The adapter's smallest subgroup size.
    pub subgroup_min_size: u32,
    /// The adapter's largest subgroup size.
    pub subgroup_max_size: u32,
    /// Every product the adapter offers, as `MxNxK inputs→results`.
    pub configs: Vec<String>,
}

impl SubgroupMatrixGrant {
    /// The fragment the `coop` kernels take: 8 or 16, on subgroups of at most [`super::COOP_SUBGROUP_MAX`].
    pub fn coop_fragment(&self) -> Option<u32> {
        let subgroups_fit = (1..=super::COOP_SUBGROUP_MAX).contains(&self.subgroup_max_size);
        (matches!(self.fragment, 8 | 16) && subgroups_fit).then_some(self.fragment)
    }
}

/// The `subgroups` grant recorded in this global scope: `None` natively, and where the request added nothing.
pub fn subgroups() -> Option<SubgroupsGrant> {
    recorded(SUBGROUPS_GLOBAL).filter(|g: &SubgroupsGrant| g.subgroup_min_size > 0)
}

/// The subgroup-matrix grant recorded in this global scope: `None` natively, and where the request added nothing.
pub fn subgroup_matrices() -> Option<SubgroupMatrixGrant> {
    recorded(MATRIX_GLOBAL)
}

/// The grant recorded in the global `name`, where there is one.
fn recorded<T: serde::de::DeserializeOwned>(name: &str) -> Option<T> {
    #[cfg(target_arch = "wasm32")]
    {
        let value = js_sys::Reflect::get(&js_sys::global(), &name.into()).ok()?;
        if value.is_undefined() || value.is_null() {
            return None;
        }
        serde_wasm_bindgen::from_value(value).ok()
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = name;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grant_gives_the_coop_kernels_a_fragment_only_on_subgroups_they_fit() {
        let granted = |fragment, subgroup_max_size| SubgroupMatrixGrant {
            fragment,
            subgroup_min_size: 4,
            subgroup_max_size,
            configs: vec!["16x16x16 f16→f32".into()],
        };
        assert_eq!(granted(16, 32).coop_fragment(), Some(16));
        assert_eq!(granted(8, 64).coop_fragment(), Some(8));
        assert_eq!(granted(16, 128).coop_fragment(), None);
        assert_eq!(granted(32, 32).coop_fragment(), None);
        assert_eq!(granted(16, 0).coop_fragment(), None);
        assert_eq!(
            granted(16, 32),
            serde_json::from_str(
                r#"{"fragment":16,"subgroupMinSize":4,"subgroupMaxSize":32,"configs":["16x16x16 f16→f32"]}"#
            )
            .unwrap()
        );
        assert_eq!(
            SubgroupsGrant { subgroup_min_size: 4, subgroup_max_size: 64 },
            serde_json::from_str(r#"{"subgroupMinSize":4,"subgroupMaxSize":64}"#).unwrap()
        );
        assert_eq!((subgroups(), subgroup_matrices()), (None, None), "nothing is granted natively");
    }
}
