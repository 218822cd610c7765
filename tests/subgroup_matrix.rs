//! The `coop` kernels in Chromium's dialect (`kernels::coop_dialect`, what the web worker runs where the browser
//! grants `chromium-experimental-subgroup-matrix`), compiled by Tint and run by Dawn (npm `webgpu`: the WebGPU
//! implementation inside Chromium) on Mesa 26's lavapipe, in the Debian 13 root of `make test-coop`
//! (`tests/coop/dawn.sh`). The worker's device request (`www/device-request.js`) opens that device, as in a
//! browser. Each kernel's output is checked against its host twin on the same f16-rounded values, with controls.
//!
//! `make test-coop` sets `KONTEXT_COOP_ROOT` (and `KONTEXT_REQUIRE_COOP`, which makes a skip a failure);
//! without it the tests print `SKIPPED`.
#![cfg(not(target_arch = "wasm32"))]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use half::f16;
use kontext_web::device::browser_grant::SubgroupMatrixGrant;
use kontext_web::device::selfcheck::test_matrix;
use kontext_web::formats::GgmlType;
use kontext_web::harness::testing::{self, TempDir, attention_heads, relative_error};
use kontext_web::kernels::coop_attention::{self, CoopAttention};
use kontext_web::kernels::coop_dialect::CoopDialect;
use kontext_web::kernels::coop_matmul::CoopMatmul;
use kontext_web::kernels::grid;
use kontext_web::kernels::quant_matmul::{Epilogue, has_kernel, packed_params};
use kontext_web::kernels::repack;

const ROOT_ENV: &str = "KONTEXT_COOP_ROOT";
const REQUIRE_COOP: &str = "KONTEXT_REQUIRE_COOP";

/// The root with Dawn, or `None` after printing why the test is skipped.
fn dawn_root(test: &str) -> Option<PathBuf> {
    let why = match std::env::var_os(ROOT_ENV) {
        None => format!("{ROOT_ENV} is not set (`make test-coop` sets it)"),
        Some(root) => {
            let root = PathBuf::from(root);
            if root.join("opt/kontext-dawn/node_modules/webgpu/package.json").exists() {
                return Some(root);
            }
            format!("{} has no Dawn (tests/coop/ensure-root.sh installs it)", root.display())
        }
    };
    assert!(std::env::var_os(REQUIRE_COOP).is_none(), "{REQUIRE_COOP} is set, and {test}: {why}");
    eprintln!("SKIPPED {test}: {why}");
    None
}

/// A buffer bound to a case's kernel.
enum Binding {
    Storage(Vec<u8>),
    /// The launch parameters, zero-padded to the `array<vec4<u32>, 3>` every kernel declares.
    Uniform(Vec<u32>),
}

/// One dispatch of one kernel.
struct Case {
    name: String,
    wgsl: String,
    workgroups: [u32; 3],
    bindings: Vec<Binding>,
    /// The binding whose bytes come back.
    output: usize,
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn f16_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()).collect()
}

/// `values` as the kernels stage them: clamped to f16's range, rounded to f16.
fn rounded(values: &[f32]) -> Vec<f64> {
    values.iter().map(|&v| f16::from_f32(v.clamp(-65504.0, 65504.0)).to_f64()).collect()
}

/// Runs `tests/coop/dawn.sh` in `dir`.
fn dawn(root: &Path, command: &str, dir: &Path) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/coop/dawn.sh");
    let status = Command::new("bash").arg(script).arg(root).arg(command).arg(dir).status().expect("bash runs");
    assert!(status.success(), "tests/coop/dawn.sh {command}: {status}");
}

/// What the worker's device request got on the root's adapter.
fn granted(root: &Path) -> SubgroupMatrixGrant {
    let dir = TempDir::new("dawn-probe");
    dawn(root, "probe", dir.dir());
    let adapter = std::fs::read_to_string(dir.path("adapter.json")).unwrap();
    let granted = std::fs::read_to_string(dir.path("granted.json")).unwrap();
    let granted: Option<SubgroupMatrixGrant> = serde_json::from_str(&granted).unwrap();
    granted.unwrap_or_else(|| panic!("the worker's request got no subgroup matrices on {adapter}"))
}

/// The root with Dawn, what the worker's request got there and the fragment the coop kernels take; `None` after
/// printing why `test` is skipped.
fn dawn_grant(test: &str) -> Option<(PathBuf, SubgroupMatrixGrant, usize)> {
    let root = dawn_root(test)?;
    let granted = granted(&root);
    let fragment = granted.coop_fragment().expect("a fragment the coop kernels take") as usize;
    Some((root, granted, fragment))
}

/// Runs `cases` on Dawn: each case's output as f32, or what Tint or Dawn said. Lavapipe spends these runs
/// lowering the kernels' cooperative matrices, on one thread and again each run (Mesa's shader cache keeps only
/// what comes after), so the kernels are shared between two Dawn processes by the length of their source, the
/// longest first, each kernel's cases in one process.
fn run(root: &Path, cases: &[Case]) -> BTreeMap<String, Result<Vec<f32>, String>> {
    let mut kernels: Vec<&str> = cases.iter().map(|case| case.wgsl.as_str()).collect();
    kernels.sort_by_key(|&wgsl| (std::cmp::Reverse(wgsl.len()), wgsl));
    kernels.dedup();
    let (mut parts, mut lengths): ([Vec<&str>; 2], [usize; 2]) = Default::default();
    for wgsl in kernels {
        let part = if lengths[0] <= lengths[1] { 0 } else { 1 };
        parts[part].push(wgsl);
        lengths[part] += wgsl.len();
    }
    let parts = parts.map(|kernels| cases.iter().filter(|case| kernels.contains(&case.wgsl.as_str())).collect());
    std::thread::scope(|scope| {
        let runs: Vec<_> =
            parts.iter().map(|part: &Vec<&Case>| scope.spawn(|| run_in_one_process(root, part))).collect();
        runs.into_iter().flat_map(|run| run.join().expect("a Dawn run")).collect()
    })
}

fn run_in_one_process(root: &Path, cases: &[&Case]) -> BTreeMap<String, Result<Vec<f32>, String>> {
    let mut results = BTreeMap::new();
    if cases.is_empty() {
        return results;
    }
    let dir = TempDir::new("dawn-run");
    let mut manifest = Vec::new();
    for (c, case) in cases.iter().enumerate() {
        let wgsl = format!("kernel{c}.wgsl");
        std::fs::write(dir.path(&wgsl), &case.wgsl).unwrap();
        let mut bindings = Vec::new();
        for (b, binding) in case.bindings.iter().enumerate() {
            let file = format!("{}.{b}.bin", case.name);
            let (bytes, uniform) = match binding {
                Binding::Storage(bytes) => (bytes.clone(), false),
                Binding::Uniform(values) => {
                    let mut words = values.clone();
                    words.resize(12, 0);
                    (words.iter().flat_map(|w| w.to_le_bytes()).collect(), true)
                }
            };
            std::fs::write(dir.path(&file), bytes).unwrap();
            bindings.push(serde_json::json!({ "file": file, "uniform": uniform }));
        }
        manifest.push(serde_json::json!({
            "name": case.name, "wgsl": wgsl, "workgroups": case.workgroups, "bindings": bindings, "output": case.output,
        }));
    }
    let manifest = serde_json::json!({ "cases": manifest });
    std::fs::write(dir.path("cases.json"), manifest.to_string()).unwrap();
    dawn(root, "run", dir.dir());
    for case in cases {
        let read = |ext: &str| std::fs::read(dir.path(&format!("{}.{ext}", case.name)));
        let result = match (read("out"), read("error")) {
            (_, Ok(error)) => Err(String::from_utf8_lossy(&error).into_owned()),
            (Ok(bytes), _) => Ok(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()),
            (Err(e), _) => Err(format!("no output: {e}")),
        };
        results.insert(case.name.clone(), result);
    }
    results
}

/// A packed matmul of `x` `[m, k]` with a `ty` weight `[n, k]` of `bytes` (plus `bias`) in `variant`, and its
/// twin: `x · Wᵀ + bias` over x and W rounded to f16, summed in f64 (W from the repacked words by the host twin of
/// the kernels' dequantization).
fn matmul_case(
    name: &str,
    variant: CoopMatmul,
    n: usize,
    k: usize,
    bytes: &[u8],
    m: usize,
    bias: Option<&[f32]>,
) -> (Case, Vec<f32>) {
    let (layout, mut words) = repack::repack(variant.ty, n, k, bytes).unwrap();
    let w = rounded(&repack::dequantize(variant.ty, &layout, &words));
    let x_values = test_matrix(m, k, m as u32);
    let x = rounded(&x_values);
    let want = (0..m * n)
        .map(|e| {
            let (row, col) = (e / n, e % n);
            let dot: f64 = (0..k).map(|i| x[row * k + i] * w[col * k + i]).sum();
            (dot + bias.map_or(0.0, |b| b[col] as f64)) as f32
        })
        .collect();
    words.resize(words.len().next_multiple_of(4), 0);
    let unread = || Binding::Storage(vec![0; 4]);
    let case = Case {
        name: name.into(),
        wgsl: variant.source(),
        workgroups: [n.div_ceil(variant.tile) as u32, m.div_ceil(variant.tile) as u32, 1],
        bindings: vec![
            Binding::Storage(f32_bytes(&x_values)),
            Binding::Storage(words.iter().flat_map(|w| w.to_le_bytes()).collect()),
            bias.map_or_else(unread, |b| Binding::Storage(f32_bytes(b))),
            Binding::Storage(vec![0; m * n * 4]),
            unread(),
            unread(),
            Binding::Uniform(packed_params([m, n, k], &layout, bias.is_some(), Epilogue::Plain.code(), 0).to_vec()),
        ],
        output: 3,
    };
    (case, want)
}

/// Flash attention over `bh` heads of `lq` queries and `lk` keys of width `d` (f16 heads where `f16_heads`) in
/// `variant`, and its twin: softmax(q·kᵀ/√d)·v over the values rounded to f16, in f64. `key_salt` picks the keys
/// of the twin (the kernel's are salt 2); key j of each head is multiplied by 1 + growth · j / lk, so that with
/// `growth` the scores grow along the keys and the kernel rescales its output.
fn attention_case(variant: CoopAttention, [bh, lq, lk]: [usize; 3], key_salt: u32, growth: f32) -> (Case, Vec<f32>) {
    let d = variant.head_dim;
    let keys = |salt: u32| attention_heads(bh, lk, d, salt, growth);
    let (q, k, v) = (test_matrix(bh * lq, d, 1), keys(2), test_matrix(bh * lk, d, 3));
    let (q16, k16, v16) = (rounded(&q), rounded(&keys(key_salt)), rounded(&v));
    let scale = 1.0 / (d as f64).sqrt();
    let mut want = vec![0f32; bh * lq * d];
    for head in 0..bh {
        for row in 0..lq {
            let query = &q16[(head * lq + row) * d..][..d];
            let scores: Vec<f64> = (0..lk)
                .map(|key| {
                    query.iter().zip(&k16[(head * lk + key) * d..][..d]).map(|(a, b)| a * b).sum::<f64>() * scale
                })
                .collect();
            let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let sum: f64 = weights.iter().sum();
            for col in 0..d {
                let value: f64 = (0..lk).map(|key| weights[key] * v16[(head * lk + key) * d + col]).sum();
                want[(head * lq + row) * d + col] = (value / sum) as f32;
            }
        }
    }
    let heads = |values: &[f32]| match variant.f16_inputs {
        true => Binding::Storage(f16_bytes(values)),
        false => Binding::Storage(f32_bytes(values)),
    };
    let (x, y) = grid(bh * lq.div_ceil(coop_attention::ROWS));
    let half = if variant.f16_inputs { "f16" } else { "f32" };
    let case = Case {
        name: format!("attention_d{d}_{half}_{bh}x{lq}x{lk}_g{growth}_t{}", variant.threads),
        wgsl: variant.source(),
        workgroups: [x, y, 1],
        bindings: vec![
            heads(&q),
            heads(&k),
            heads(&v),
            Binding::Storage(vec![0; bh * lq * d * 4]),
            Binding::Uniform(vec![bh as u32, lq as u32, lk as u32, (scale as f32).to_bits()]),
        ],
        output: 3,
    };
    (case, want)
}

/// The packed matmul of every type in Chromium's dialect against its twin, at rows that leave a 64-row tile
/// partial and several, and in 128-wide tiles; controls: a kernel loading its x tile column-major, and a twin
/// missing one weight row.
#[test]
fn chromium_dialect_coop_matmuls_of_every_packed_type_match_their_twin_on_dawn() {
    let test = "chromium_dialect_coop_matmuls_of_every_packed_type_match_their_twin_on_dawn";
    let Some((root, granted, fragment)) = dawn_grant(test) else { return };
    let variant = |ty, tile| {
        let variant = CoopMatmul::new(ty, fragment, granted.subgroup_max_size as usize).with_tile(tile);
        variant.in_dialect(CoopDialect::SubgroupMatrix)
    };
    // The fixture's vectors of every type, and K-quants with random codes and small scales.
    let file = testing::gguf("bfl_gguf/quant_vectors.gguf");
    let mut weights: Vec<(GgmlType, usize, usize, Vec<u8>)> = (file.tensors().iter())
        .filter(|info| has_kernel(info.ggml_type))
        .map(|info| {
            let (ty, shape, bytes) = file.raw(&info.name).unwrap();
            (ty, shape[0], shape[1], bytes)
        })
        .collect();
    weights.extend(testing::random_k_quant_weights());
    let mut cases = Vec::new();
    let mut wants = BTreeMap::new();
    let mut control = None;
    let mut covered = std::collections::BTreeSet::new();
    for (ty, n, k, bytes) in weights {
        covered.insert(ty);
        let bias: Vec<f32> = (0..n).map(|i| i as f32 * 0.01 - 0.5).collect();
        for (m, bias, tile) in [(9, None, 64), (70, Some(&bias[..]), 64), (200, Some(&bias[..]), 128)] {
            let name = format!("matmul_{}_{n}x{k}_m{m}_tile{tile}", ty.name());
            let (case, want) = matmul_case(&name, variant(ty, tile), n, k, &bytes, m, bias);
            if ty == GgmlType::Q8_0 && m == 70 {
                let mut broken = matmul_case("control_x_column_major", variant(ty, tile), n, k, &bytes, m, bias).0;
                broken.wgsl = broken.wgsl.replacen(", row_major>(&xs,", ", col_major>(&xs,", 1);
                assert_ne!(broken.wgsl, case.wgsl);
                let mut bytes_without_row = bytes.clone();
                bytes_without_row[..bytes.len() / n].fill(0);
                let other = matmul_case(&name, variant(ty, tile), n, k, &bytes_without_row, m, bias).1;
                control = Some((name.clone(), other));
                cases.push(broken);
                wants.insert("control_x_column_major".to_string(), want.clone());
            }
            wants.insert(name, want);
            cases.push(case);
        }
    }
    use GgmlType::*;
    assert_eq!(
        covered.into_iter().collect::<Vec<_>>(),
        [F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K, BF16]
    );
    let results = run(&root, &cases);
    let mut worst = 0f32;
    for (name, want) in &wants {
        let got = results[name].as_ref().unwrap_or_else(|e| panic!("{name}: {e}"));
        let error = relative_error(got, want);
        eprintln!("{name}: max |Chromium dialect − twin| / max |y| = {error:.2e}");
        if name.starts_with("control") {
            assert!(error > 1e-2, "{name}: a kernel reading x column-major matched the twin ({error:.2e})");
        } else {
            // Only the order of the f32 sums differs (products of f16 values are exact in f32).
            assert!(error <= 1e-4, "{name}: {error:.2e}");
            worst = worst.max(error);
        }
    }
    let (name, other) = control.expect("a Q8_0 weight in the fixture");
    let error = relative_error(results[&name].as_ref().unwrap(), &other);
    assert!(error > 100.0 * worst.max(1e-7), "{name} against a weight without its first row: {error:.2e}");
    eprintln!("{} matmuls on Dawn in Chromium's dialect, fragments {fragment}: worst {worst:.2e}", wants.len() - 1);
}

/// Flash attention in Chromium's dialect against its twin: head widths 16 to 128, f32 and f16 heads, partial
/// and several tiles of queries and keys, scores that grow along the keys (so that the output is rescaled), one to
/// four invocations per row in the softmax; a twin over other keys is the control.
#[test]
fn chromium_dialect_coop_attention_matches_its_twin_on_dawn() {
    let test = "chromium_dialect_coop_attention_matches_its_twin_on_dawn";
    let Some((root, granted, fragment)) = dawn_grant(test) else { return };
    // The adapter's subgroups, and wider ones (more invocations per workgroup, so two and four per row in the
    // softmax; the extra subgroups repeat the first four's rows).
    // Only widths from the granted one up: four narrower subgroups would not cover a workgroup's rows.
    let granted_width = granted.subgroup_max_size as usize;
    let mut shapes = vec![
        ([2, 70, 45], 16, 0.0, granted_width),
        ([2, 130, 97], 64, 0.0, granted_width),
        ([1, 64, 40], 128, 0.0, granted_width),
        ([3, 17, 33], 32, 0.0, granted_width),
        ([2, 70, 300], 128, 40.0, granted_width),
    ];
    // One workgroup each: wide workgroups of lavapipe's 8-wide subgroups repeat most of their work.
    shapes.extend(
        [32, 64].into_iter().filter(|&width| width >= granted_width).map(|width| ([1, 64, 300], 128, 40.0, width)),
    );
    let mut cases = Vec::new();
    let mut wants = Vec::new();
    for (shape, d, growth, width) in shapes {
        for f16_heads in [false, true] {
            let variant = CoopAttention::new(fragment, width, d, f16_heads).in_dialect(CoopDialect::SubgroupMatrix);
            let (case, want) = attention_case(variant, shape, 2, growth);
            wants.push((case.name.clone(), want));
            cases.push(case);
        }
    }
    let control_variant = CoopAttention::new(fragment, granted.subgroup_max_size as usize, 64, false)
        .in_dialect(CoopDialect::SubgroupMatrix);
    let other_keys = attention_case(control_variant, [2, 130, 97], 4, 0.0).1;
    let results = run(&root, &cases);
    let mut worst = 0f32;
    for (name, want) in &wants {
        let got = results[name].as_ref().unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(got.iter().all(|v| v.is_finite()), "{name}: not finite");
        let error = relative_error(got, want);
        eprintln!("{name}: max |Chromium dialect − twin| / max |o| = {error:.2e}");
        // P is rounded to f16 before P·V: about 5e-4 of each term.
        assert!(error <= 3e-3, "{name}: {error:.2e}");
        worst = worst.max(error);
    }
    let control_name = format!("attention_d64_f32_2x130x97_g0_t{}", control_variant.threads);
    let control = relative_error(results[&control_name].as_ref().unwrap(), &other_keys);
    assert!(control > 20.0 * worst.max(1e-4), "other keys: {control:.2e} against {worst:.2e}");
}
