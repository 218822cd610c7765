//! What the browser granted the worker's device beyond wgpu's own request: Chromium's subgroup matrices
//! (`chromium-experimental-subgroup-matrix`) and subgroups. wgpu asks the browser only for the features in its
//! own table, which has neither, so `www/subgroup-matrix.js` adds them to the worker's device request where the
//! adapter has what the `coop` kernels need, and records the grant in `globalThis.kontextSubgroupMatrix`.

use serde::Deserialize;

/// The global the worker's request records its grant in.
pub const GLOBAL: &str = "kontextSubgroupMatrix";

/// A device granted subgroup matrices and subgroups, as `www/subgroup-matrix.js` records it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Granted {
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

impl Granted {
    /// The fragment the `coop` kernels take: 8 or 16, on subgroups of at most [`super::COOP_SUBGROUP_MAX`].
    pub fn coop_fragment(&self) -> Option<u32> {
        let subgroups_fit = (1..=super::COOP_SUBGROUP_MAX).contains(&self.subgroup_max_size);
        (matches!(self.fragment, 8 | 16) && subgroups_fit).then_some(self.fragment)
    }
}

/// The grant recorded in this global scope: `None` natively, and where the request added nothing.
pub fn granted() -> Option<Granted> {
    #[cfg(target_arch = "wasm32")]
    {
        let value = js_sys::Reflect::get(&js_sys::global(), &GLOBAL.into()).ok()?;
        if value.is_undefined() || value.is_null() {
            return None;
        }
        serde_wasm_bindgen::from_value(value).ok()
    }
    #[cfg(not(target_arch = "wasm32"))]
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grant_gives_the_coop_kernels_a_fragment_only_on_subgroups_they_fit() {
        let granted = |fragment, subgroup_max_size| Granted {
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
        assert_eq!(super::granted(), None, "nothing is granted natively");
    }
}
