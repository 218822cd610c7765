//! The one error type of the library: every failure a user can cause ends as one clear line.

/// Everything that can go wrong in the library, each with a message meant for the user.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The GPU or its driver refused or failed.
    #[error("GPU: {0}")]
    Gpu(String),
    /// Input that does not have the shape or content the operation needs.
    #[error("{0}")]
    Invalid(String),
    /// A part of the model that no given file or folder provides; each front end says how to give it.
    #[error("the model has no {part}: add {file}, or a model folder with {folder_path}")]
    MissingPart {
        /// What is missing ("T5 tokenizer").
        part: String,
        /// The kind of file that would provide it ("a T5 GGUF, which carries its tokenizer").
        file: String,
        /// The CLI flag that takes that file (`--t5`).
        flag: String,
        /// Where a diffusers folder keeps it.
        folder_path: String,
    },
    /// An edit whose memory plan exceeds the GPU memory budget, refused before anything is uploaded.
    #[error(
        "a {}×{} edit needs {} of GPU memory ({phase}; {residency}), more than the budget of {}; {}",
        output.0, output.1, binary_size(*needed), binary_size(*budget),
        match advice.is_empty() { true => "nothing smaller fits either".to_string(), false => format!("what would fit: {}", advice.join("; ")) }
    )]
    OverBudget {
        /// Output width and height.
        output: (usize, usize),
        /// The plan's peak.
        needed: u64,
        /// The budget.
        budget: u64,
        /// The phase with that peak.
        phase: String,
        /// What the plan keeps on the device.
        residency: String,
        /// Each change that alone would fit.
        advice: Vec<String>,
    },
    /// The GPU could not allocate memory in the middle of a load or an edit. What the model had uploaded was
    /// released, so the device is usable again and a smaller request can follow.
    #[error("{}", out_of_memory(during, *held, *planned_peak, *budget))]
    OutOfMemory {
        /// What was under way ("denoising step 3").
        during: String,
        /// What the device allocator held when the failure was found.
        held: Option<u64>,
        /// The peak of the plan being followed, when there was one.
        planned_peak: Option<u64>,
        /// The GPU memory budget, when one was set.
        budget: Option<u64>,
    },
    /// Reading a tensor back from the device failed.
    #[error("reading back from the device failed: {0}")]
    Readback(String),
}

impl Error {
    /// Whether the device itself failed (lost, reset, out of memory during a readback) rather than the input:
    /// the GPU state cannot be trusted any more and the device must be opened again.
    pub fn is_device_failure(&self) -> bool {
        matches!(self, Self::Readback(_))
    }
}

/// The answer to a GPU that ran out of memory: what was held and planned, and the budget to try.
fn out_of_memory(during: &str, held: Option<u64>, planned_peak: Option<u64>, budget: Option<u64>) -> String {
    let mut text = format!("the GPU ran out of memory during {during}");
    if let Some(held) = held {
        text += &format!(", holding {}", binary_size(held));
    }
    text += &match (planned_peak, budget) {
        (Some(peak), Some(budget)) => format!(
            "; the plan's peak is {} within the budget of {}, but the GPU had less free",
            binary_size(peak),
            binary_size(budget)
        ),
        (Some(peak), None) => format!("; the plan's peak is {} and no GPU memory budget was set", binary_size(peak)),
        (None, Some(budget)) => format!("; the budget is {}, but the GPU had less free", binary_size(budget)),
        (None, None) => "; no GPU memory budget was set".to_string(),
    };
    // A budget below what the GPU gave before it refused, in steps of 256 MiB (16 MiB below 2 GiB).
    let lower = held
        .map(|held| {
            let step: u64 = if held >= 2 << 30 { 256 << 20 } else { 16 << 20 };
            (held / step).max(1) * step
        })
        .filter(|&lower| budget.is_none_or(|b| lower < b));
    text += &match lower {
        Some(lower) => format!(": try a GPU memory budget of {} or less", binary_size(lower)),
        None => ": try a lower GPU memory budget".to_string(),
    };
    text + ", so that the plan releases or streams what does not fit (other programs may hold GPU memory too)"
}

/// Bytes in MiB or GiB with two decimals.
pub fn binary_size(bytes: u64) -> String {
    match bytes >= 1 << 30 {
        true => format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64),
        false => format!("{:.2} MiB", bytes as f64 / (1u64 << 20) as f64),
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_device_failures_ask_for_a_fresh_device() {
        assert!(Error::Readback("Device lost".into()).is_device_failure());
        assert!(!Error::Invalid("the image is empty".into()).is_device_failure());
        assert!(!Error::Gpu("no usable GPU adapter".into()).is_device_failure());
    }

    #[test]
    fn out_of_memory_says_what_was_held_planned_and_budgeted_and_what_to_try() {
        let gib = 1u64 << 30;
        let error = Error::OutOfMemory {
            during: "denoising step 3".into(),
            held: Some(5 * gib + (300 << 20)),
            planned_peak: Some(6 * gib),
            budget: Some(8 * gib),
        };
        assert_eq!(
            error.to_string(),
            "the GPU ran out of memory during denoising step 3, holding 5.29 GiB; the plan's peak is 6.00 GiB \
             within the budget of 8.00 GiB, but the GPU had less free: try a GPU memory budget of 5.25 GiB or less, \
             so that the plan releases or streams what does not fit (other programs may hold GPU memory too)"
        );
        let unplanned =
            Error::OutOfMemory { during: "the upload".into(), held: Some(100 << 20), planned_peak: None, budget: None };
        assert!(unplanned.to_string().contains("no GPU memory budget was set: try a GPU memory budget of 96.00 MiB"));
        let unknown =
            Error::OutOfMemory { during: "the upload".into(), held: None, planned_peak: None, budget: Some(gib) };
        assert!(unknown.to_string().contains("the budget is 1.00 GiB, but the GPU had less free: try a lower GPU"));
        assert!(!unknown.is_device_failure(), "the device stays usable");
    }
}
