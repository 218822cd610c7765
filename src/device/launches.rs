//! Kernel launches counted as they are issued: ours (the WGSL kernels) and burn's, through cubecl's launch
//! observer, which sees every dispatch of every wgpu client of the process.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use burn::cubecl::config::{TypeNameFormatLevel, type_name_format};
use burn::cubecl::logging::{LaunchObservation, LaunchObserver};

/// The kernels `f` launched, by name, with how often each.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Launches {
    /// Launches per kernel name (burn's kernels by their short type name, ours by their WGSL kernel name).
    pub by_kernel: BTreeMap<String, usize>,
}

impl Launches {
    /// Every launch counted.
    pub fn total(&self) -> usize {
        self.by_kernel.values().sum()
    }

    /// The kernels, most launched first (ties by name).
    pub fn ranked(&self) -> Vec<(String, usize)> {
        let mut ranked: Vec<_> = self.by_kernel.iter().map(|(name, &n)| (name.clone(), n)).collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        ranked
    }
}

#[derive(Default)]
struct Counter(Mutex<BTreeMap<&'static str, usize>>);

impl LaunchObserver for Counter {
    fn launched(&self, kernel: &'static str) {
        let mut counts = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        *counts.entry(kernel).or_default() += 1;
    }
}

/// Runs `f` and counts the kernel launches issued while it runs, on any thread: run nothing else on the GPU
/// meanwhile. A launch is counted when issued, before it reaches the device; buffer copies and uploads are not
/// launches.
pub fn count_launches<R>(f: impl FnOnce() -> R) -> (R, Launches) {
    let counter = Arc::new(Counter::default());
    let observation = LaunchObservation::new(counter.clone());
    let result = f();
    drop(observation);
    let counts = counter.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut by_kernel = BTreeMap::new();
    for (name, n) in counts.iter() {
        *by_kernel.entry(type_name_format(name, TypeNameFormatLevel::Short)).or_default() += n;
    }
    (result, Launches { by_kernel })
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Tensor, TensorData};

    #[test]
    fn counts_nothing_on_the_cpu_backend_and_ranks_by_count() {
        let device = crate::device::cpu();
        let x = Tensor::<2>::from_data(TensorData::new(vec![1.0f32; 4], [2, 2]), &device);
        let (_, launches) = count_launches(|| (x.clone() + 1.0).into_data());
        assert_eq!(launches.total(), 0);
        let counted = Launches { by_kernel: [("a".into(), 1), ("b".into(), 3), ("c".into(), 1)].into() };
        assert_eq!(counted.total(), 5);
        assert_eq!(counted.ranked(), vec![("b".into(), 3), ("a".into(), 1), ("c".into(), 1)]);
    }
}
