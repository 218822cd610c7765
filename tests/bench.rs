//! `kontext bench --tiny --json` on wgpu (lavapipe without a GPU): every section (matmul, attention, step, step
//! caches, live previews) is there, every time and rate is a positive number and every kernel timed computed what
//! its reference does (the rows' relative RMS). It checks that the benchmark runs, not what it measures.
#![cfg(not(target_arch = "wasm32"))]

use std::process::Command;

use kontext_web::harness::testing::run_kontext;

fn positive(value: &serde_json::Value, key: &str) -> f64 {
    let number = value[key].as_f64().unwrap_or_else(|| panic!("no number `{key}` in {value}"));
    assert!(number > 0.0 && number.is_finite(), "`{key}` is {number} in {value}");
    number
}

#[test]
fn bench_reports_matmul_attention_step_and_caches_with_positive_numbers() {
    let output = run_kontext(env!("CARGO_BIN_EXE_kontext"), &["bench", "--backend", "wgpu", "--tiny", "--json"]);
    assert!(output.status.success(), "kontext bench failed:\n{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("bench prints JSON");
    assert_eq!(report["backend"], "wgpu");
    assert_eq!(report["sizes"]["preset"], "tiny");

    let matmul = report["matmul"].as_array().expect("a matmul section");
    let types: Vec<&str> = matmul.iter().map(|row| row["ty"].as_str().unwrap()).collect();
    assert_eq!(types, ["Q8_0", "Q4_0", "Q4_K", "F16"]);
    // The model's default is f32; with shader-f16 (lavapipe has it) every row also times the kernel computing in
    // f16; without, those figures are null.
    assert_eq!(report["precision"], "f32");
    // Whether burn's matmul baseline ran autotuned (builds with `--features autotune`) is stated.
    assert!(report["burn_autotune"].is_boolean(), "{}", report["burn_autotune"]);
    let device = run_kontext(env!("CARGO_BIN_EXE_kontext"), &["device", "--backend", "wgpu", "--json"]);
    let device: serde_json::Value = serde_json::from_slice(&device.stdout).expect("device prints JSON");
    let f16 = device["adapter"]["shader_f16"].as_bool().expect("the adapter says whether it has shader-f16");
    // Each operation's kernel path, chosen from the adapter's features: coop where a hardware adapter has
    // cooperative matrices (Debian 12's lavapipe has none; `make test-coop` runs Mesa 26's), else f32 (f16 is
    // opt-in).
    let coop = device["adapter"]["coop_fragment"].is_u64();
    let software = device["adapter"]["software"].as_bool().expect("the adapter says whether it is software");
    let best = if coop && !software { "coop" } else { "f32" };
    assert_eq!(device["kernels"]["chosen"], best, "{}", device["kernels"]);
    assert_eq!(report["kernels"], device["kernels"]);
    let paths = ["coop", "subgroup-f16", "f32"];
    let available = device["kernels"]["available"].as_array().expect("available paths");
    assert_eq!(available.len(), 1 + coop as usize + f16 as usize, "{available:?}");
    if !coop {
        let forced = run_kontext(env!("CARGO_BIN_EXE_kontext"), &["device", "--backend", "wgpu", "--kernels", "coop"]);
        let stderr = String::from_utf8_lossy(&forced.stderr);
        assert!(!forced.status.success());
        assert!(
            stderr.starts_with("kontext: kernel path `coop` is not available on this adapter: it needs"),
            "{stderr}"
        );
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    }
    for row in matmul {
        let path = row["kernel_path"].as_str().expect("every matmul row names its kernel path");
        assert_eq!(path, if best == "coop" && row["m"].as_u64() > Some(8) { "coop" } else { "f32" }, "{row}");
        assert_eq!(row["coop_gflops"].is_null(), !coop || row["m"].as_u64() <= Some(8), "{row}");
        assert_eq!(row["packed"], true, "{row}");
        let ratio = positive(row, "packed_gflops") / positive(row, "f32_gflops");
        assert!((ratio - positive(row, "ratio")).abs() < 1e-9 * ratio.max(1.0), "{row}");
        if !f16 {
            assert!(row["f16_gflops"].is_null(), "{row}");
            continue;
        }
        // The f16 kernel's output against the f32 kernel's on the same x: f16's rounding, within the bench's
        // bound, and not nothing (so the two really differ in precision).
        let f16_error = positive(row, "f16_rel_rms");
        assert!(f16_error <= 1e-2, "{row}");
        let f16 = positive(row, "f16_gflops");
        let to_packed = f16 / positive(row, "packed_gflops");
        assert!((to_packed - positive(row, "f16_ratio_to_packed")).abs() < 1e-9 * to_packed.max(1.0), "{row}");
        let to_f32 = f16 / positive(row, "f32_gflops");
        assert!((to_f32 - positive(row, "f16_ratio_to_f32")).abs() < 1e-9 * to_f32.max(1.0), "{row}");
    }

    let attention = report["attention"].as_array().expect("an attention section");
    assert_eq!(attention.len(), 1);
    for row in attention {
        assert!(
            paths.contains(&row["kernel_path"].as_str().unwrap_or("none")),
            "every attention row names its path: {row}"
        );
        for key in ["L", "heads", "head_dim", "model_ms", "flash_ms", "flash_tflops", "rows_ms", "reference_ms"] {
            positive(row, key);
        }
        // Each kernel's output against the reference's on the same q, k and v, all in f32 here.
        for key in ["model_rel_rms", "flash_rel_rms", "rows_rel_rms"] {
            let error = row[key].as_f64().unwrap_or_else(|| panic!("no number `{key}` in {row}"));
            assert!((0.0..=1e-4).contains(&error), "{row}");
        }
        let speedup = positive(row, "reference_ms") / positive(row, "flash_ms");
        assert!((speedup - positive(row, "flash_speedup")).abs() < 1e-9 * speedup.max(1.0), "{row}");
        assert!(positive(row, "reference_bytes") > positive(row, "flash_bytes"), "{row}");
        // Measured from the allocator's pools: at this tiny L both fit its smallest pages, so only presence is
        // checked here (tests/gpu_memory.rs compares them where the scores dominate).
        positive(row, "reference_peak_bytes");
        positive(row, "flash_peak_bytes");
    }
    assert_eq!(report["attention_bytes_computed"], true);

    // The f16 row where the adapter has shader-f16 (lavapipe does); the checks below read the others.
    let all_rows = report["step"].as_array().expect("a step section");
    let rows_f16: Vec<&serde_json::Value> = all_rows.iter().filter(|r| r["precision"] == "f16").collect();
    assert_eq!(rows_f16.len(), f16 as usize, "{}", report["step"]);
    for row in &rows_f16 {
        assert_eq!((row["weights"].as_str(), row["streamed"].as_bool()), (Some("Q8_0"), Some(false)), "{row}");
        positive(row, "seconds");
        positive(row, "dispatches_per_step");
        assert!(row["plain_seconds"].is_null(), "the plain ops have no f16 path: {row}");
    }
    let step: Vec<serde_json::Value> = all_rows.iter().filter(|r| r["precision"] == "f32").cloned().collect();
    let weights: Vec<&str> = step.iter().map(|row| row["weights"].as_str().unwrap()).collect();
    assert_eq!(weights, ["F32", "Q8_0", "Q4_0", "Q4_0"]);
    // Computing in f16 adds no launch: the matmuls convert as they load their tiles (no cast passes), the heads
    // are written in f16 and the flash kernel reads them so (its `_h` variant).
    for row in &rows_f16 {
        assert_eq!(row["dispatches_per_step"], step[1]["dispatches_per_step"], "{row}");
        let f32_names = step[1]["double_block_kernels"].to_string();
        let names = row["double_block_kernels"].to_string();
        assert!(names.contains("split_heads_f16") && names.contains("_h\""), "{row}");
        assert_eq!(names.replace("_f16", "").replace("_h\"", "\""), f32_names, "{row}");
    }
    let streamed: Vec<bool> = step.iter().map(|row| row["streamed"].as_bool().unwrap()).collect();
    assert_eq!(streamed, [false, false, false, true]);
    assert_eq!(step[0]["packed_linears"], 0);
    assert_eq!(step[0]["ratio_to_f32"], 1.0);
    for row in &step {
        positive(row, "seconds");
        positive(row, "ratio_to_f32");
        positive(row, "device_bytes");
        positive(row, "peak_device_bytes");
    }
    assert!(step[1]["packed_linears"].as_u64().unwrap() > 0);
    assert!(step[2]["device_bytes"].as_u64() < step[0]["device_bytes"].as_u64());
    // Streamed, only the layers outside the blocks stay on the device between steps.
    assert!(step[3]["device_bytes"].as_u64() < step[2]["device_bytes"].as_u64(), "{}", report["step"]);

    // Launches, counted on wgpu: every step launches kernels, the blocks loaded whole are counted by kernel, and
    // the top-level figures are those of the first packed row (Q8_0). The fused kernels keep a double block at
    // 12 matmuls (the MLPs' GELU and gated add in their epilogues) and 9 other launches and a single block at
    // 5 + 7 (measured; their sum is checked, not a bound, so that a change in either direction is seen).
    for row in &step {
        positive(row, "dispatches_per_step");
        // The plain-ops reference path beside each row.
        let speedup = positive(row, "plain_seconds") / positive(row, "seconds");
        assert!((speedup - positive(row, "speedup_over_plain")).abs() < 1e-9 * speedup.max(1.0), "{row}");
    }
    let per_block = |row: &serde_json::Value, key: &str| -> u64 {
        row[key].as_array().expect("kernels by name").iter().map(|k| k[1].as_u64().unwrap()).sum()
    };
    assert_eq!(report["dispatches_per_double_block"].as_u64(), Some(per_block(&step[1], "double_block_kernels")));
    assert_eq!(report["dispatches_per_single_block"].as_u64(), Some(per_block(&step[1], "single_block_kernels")));
    assert_eq!(
        (report["dispatches_per_double_block"].as_u64(), report["dispatches_per_single_block"].as_u64()),
        (Some(21), Some(12))
    );
    assert!(step[3]["double_block_kernels"].as_array().unwrap().is_empty(), "streamed blocks are not counted");
    // Activation bytes, counted at our launches, against the minimum (each activation written and read once).
    let bytes = positive(&report, "activation_bytes_per_step");
    let minimum = positive(&report, "activation_bytes_minimum");
    assert_eq!(bytes, positive(&step[1], "activation_bytes_per_step"));
    assert!(bytes > 0.5 * minimum && bytes < 10.0 * minimum, "{bytes} against {minimum}");
    let ours = positive(&step[1], "activation_launches_per_step");
    assert!(ours <= positive(&step[1], "dispatches_per_step"), "{}", step[1]);

    // The step caches: one edit per setting, none first; evaluations and reused steps agree.
    let cache = report["cache"].as_array().expect("a cache section");
    let settings: Vec<&str> = cache.iter().map(|row| row["cache"].as_str().unwrap()).collect();
    assert_eq!(settings, ["none", "fbc:0.08", "fbc:0.12", "mag:0.06"]);
    assert_eq!((cache[0]["evaluations"].as_u64(), cache[0]["speedup"].as_f64()), (Some(4), Some(1.0)));
    for row in cache {
        positive(row, "seconds");
        let reused = row["reused_steps"].as_array().unwrap().len() as u64;
        assert_eq!(row["evaluations"].as_u64().unwrap() + reused, 4, "{row}");
        let speedup = positive(&cache[0], "seconds") / positive(row, "seconds");
        assert!((speedup - positive(row, "speedup")).abs() < 1e-9 * speedup.max(1.0), "{row}");
    }

    // Live previews: the edit with a preview drawn after every step and without, side by side. The previews
    // read nothing back during the steps; the edit reads its final latents once.
    let previews = &report["previews"];
    assert_eq!(previews["steps"].as_u64(), Some(2), "{previews}");
    let overhead = positive(previews, "seconds_per_step_on") / positive(previews, "seconds_per_step_off") - 1.0;
    assert!((overhead - previews["overhead"].as_f64().unwrap()).abs() < 1e-9, "{previews}");
    assert_eq!(previews["step_readbacks_on"].as_u64(), Some(0), "{previews}");
    assert_eq!(previews["step_readbacks_off"].as_u64(), Some(0), "{previews}");
    assert_eq!(previews["readbacks_on"].as_u64(), Some(1), "{previews}");
}

/// The peer figure: the same DiT step through diffusers on the CPU, with the fixture generator's Python
/// (`~/.cache/kontext-web/venv`, which `make test` installs for the packs; see
/// `tests/fixtures/generator/README.md`) or `KONTEXT_PEER_PYTHON`. Without either it fails, naming them.
#[test]
fn bench_times_the_same_step_through_diffusers_as_a_peer() {
    let python = std::env::var_os("KONTEXT_PEER_PYTHON").map(std::path::PathBuf::from).unwrap_or_else(|| {
        std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
            .join(".cache/kontext-web/venv/bin/python")
    });
    assert!(
        python.exists(),
        "no Python with diffusers at {}: run `make packs` (make test does) or set KONTEXT_PEER_PYTHON",
        python.display()
    );
    let output = Command::new(env!("CARGO_BIN_EXE_kontext"))
        .args(["bench", "--backend", "cpu", "--tiny", "--json", "--peer"])
        .arg(&python)
        .output()
        .expect("cannot start kontext");
    assert!(output.status.success(), "kontext bench --peer failed:\n{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("bench prints JSON");
    positive(&report["peer"], "seconds");
    assert!(report["peer"]["diffusers"].as_str().is_some_and(|v| !v.is_empty()), "{}", report["peer"]);
}
