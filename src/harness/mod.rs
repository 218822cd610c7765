//! Bodies that drive the library from outside: the `kontext bench` measurements, the fuzz targets'
//! bodies (shared by `tests/fuzz/` and the stable corpus replay) and the test support that unit and
//! integration tests share. Not part of the library's API (hidden from its docs).

pub mod bench;
pub mod fuzz;
pub mod kernel_checks;
pub mod testing;
