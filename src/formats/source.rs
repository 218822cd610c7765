//! Random-access bytes: where the readers get weight files from (memory, a native file, later the browser's
//! stored chunks). Readers fetch headers and single tensors, never a whole file.

use std::sync::Arc;

use crate::{Error, Result};

/// A read-only byte sequence with random access.
pub trait ByteSource {
    /// Total length in bytes.
    fn len(&self) -> u64;

    /// The `len` bytes at `offset`. A range that goes past the end is an error naming the source and offset.
    fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>>;

    /// Whether the source holds no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How errors name this source (a path, a URL); in-memory sources are "in-memory bytes".
    fn label(&self) -> String {
        "in-memory bytes".into()
    }
}

/// Checks that `offset..offset + len` lies inside a source of `total` bytes.
pub(crate) fn check_range(label: &str, total: u64, offset: u64, len: usize) -> Result<()> {
    match offset.checked_add(len as u64) {
        Some(end) if end <= total => Ok(()),
        _ => Err(Error::Invalid(format!(
            "{label}: reading {len} bytes at offset {offset} goes past its end ({total} bytes); the file is truncated or corrupt"
        ))),
    }
}

impl ByteSource for [u8] {
    fn len(&self) -> u64 {
        <[u8]>::len(self) as u64
    }

    fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        check_range(&self.label(), ByteSource::len(self), offset, len)?;
        let start = offset as usize;
        Ok(self[start..start + len].to_vec())
    }
}

impl ByteSource for Vec<u8> {
    fn len(&self) -> u64 {
        self.as_slice().len() as u64
    }

    fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        self.as_slice().read_at(offset, len)
    }
}

/// Sources behind a reference or a smart pointer read through to the pointee.
macro_rules! forward_byte_source {
    ($($pointer:ty),*) => {$(
        impl<T: ByteSource + ?Sized> ByteSource for $pointer {
            fn len(&self) -> u64 {
                (**self).len()
            }

            fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
                (**self).read_at(offset, len)
            }

            fn label(&self) -> String {
                (**self).label()
            }
        }
    )*};
}

forward_byte_source!(&T, Box<T>, Arc<T>);

/// A source that errors name as `label` (a file the user picked, held in memory).
#[derive(Debug, Clone)]
pub struct Named<S> {
    label: String,
    inner: S,
}

impl<S: ByteSource> Named<S> {
    /// `inner`, called `label` in messages.
    pub fn new(label: impl Into<String>, inner: S) -> Self {
        Self { label: label.into(), inner }
    }
}

impl<S: ByteSource> ByteSource for Named<S> {
    fn len(&self) -> u64 {
        self.inner.len()
    }

    fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        check_range(&self.label, self.inner.len(), offset, len)?;
        self.inner.read_at(offset, len)
    }

    fn label(&self) -> String {
        self.label.clone()
    }
}

/// A file on disk, read with positional reads (no shared cursor, no memory map).
#[cfg(not(target_arch = "wasm32"))]
#[derive(Debug)]
pub struct FileSource {
    file: std::fs::File,
    len: u64,
    path: std::path::PathBuf,
}

#[cfg(not(target_arch = "wasm32"))]
impl FileSource {
    /// Opens `path` for reading.
    pub fn open(path: impl AsRef<std::path::Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let fail = |e: std::io::Error| Error::Invalid(format!("cannot read {}: {e}", path.display()));
        let file = std::fs::File::open(&path).map_err(fail)?;
        let meta = file.metadata().map_err(fail)?;
        if meta.is_dir() {
            return Err(Error::Invalid(format!("{} is a directory, not a weight file", path.display())));
        }
        Ok(Self { file, len: meta.len(), path })
    }

    /// The path it was opened with.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl ByteSource for FileSource {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        check_range(&self.label(), self.len, offset, len)?;
        let mut buf = vec![0u8; len];
        read_exact_at(&self.file, &mut buf, offset).map_err(|e| {
            Error::Invalid(format!("{}: reading {len} bytes at offset {offset} failed: {e}", self.path.display()))
        })?;
        Ok(buf)
    }

    fn label(&self) -> String {
        self.path.display().to_string()
    }
}

#[cfg(all(unix, not(target_arch = "wasm32")))]
fn read_exact_at(file: &std::fs::File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(windows)]
fn read_exact_at(file: &std::fs::File, mut buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match file.seek_read(buf, offset)? {
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            n => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_memory_sources_read_ranges_and_refuse_the_end() {
        let bytes: Vec<u8> = (0..10).collect();
        assert_eq!(bytes.read_at(3, 4).unwrap(), vec![3, 4, 5, 6]);
        assert_eq!(bytes.read_at(10, 0).unwrap(), Vec::<u8>::new());
        let shared: Arc<[u8]> = bytes.clone().into();
        assert_eq!(shared.read_at(8, 2).unwrap(), vec![8, 9]);
        let err = shared.read_at(8, 3).unwrap_err().to_string();
        assert!(err.contains("offset 8") && err.contains("10 bytes"), "{err}");
        assert!(bytes.read_at(u64::MAX, 2).is_err());
        let dynamic: Box<dyn ByteSource> = Box::new(bytes);
        assert_eq!(dynamic.len(), 10);
    }

    #[cfg(not(target_arch = "wasm32"))]
    #[test]
    fn file_source_names_the_file_past_its_end() {
        let path = std::env::temp_dir().join(format!("kontext-source-{}.bin", std::process::id()));
        std::fs::write(&path, [1u8, 2, 3, 4]).unwrap();
        let source = FileSource::open(&path).unwrap();
        assert_eq!(source.read_at(1, 2).unwrap(), vec![2, 3]);
        let err = source.read_at(2, 5).unwrap_err().to_string();
        std::fs::remove_file(&path).unwrap();
        assert!(err.contains(&path.display().to_string()) && err.contains("offset 2"), "{err}");
    }
}
