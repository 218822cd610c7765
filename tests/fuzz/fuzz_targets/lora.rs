#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = kontext_web::harness::fuzz::lora(data);
});
