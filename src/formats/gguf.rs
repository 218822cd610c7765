//! GGUF v2/v3 (<https://github.com/ggml-org/ggml/blob/master/docs/gguf.md>): magic, version, tensor and
//! metadata counts, typed key/value metadata, tensor infos, then the aligned data section. Opening reads the
//! header only (a few MB at most, for embedded tokenizers); tensors are read one at a time.

use std::collections::HashMap;

use super::quant::{GgmlType, dequantize};
use super::source::ByteSource;
use crate::formats::weights::{HostTensor, RawBlock, Weights};
use crate::{Error, Result};

/// Data alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Most dimensions a ggml tensor has (`GGML_MAX_DIMS`).
const MAX_DIMS: u32 = 4;
/// Deepest array nesting accepted in metadata.
const MAX_NESTING: usize = 8;
/// Bytes fetched from the source per header read.
const CHUNK: u64 = 1 << 20;
/// Largest header (metadata and tensor infos) accepted; real ones, tokenizers included, take a few MB.
pub const MAX_HEADER_BYTES: u64 = 256 << 20;
/// Most elements reserved ahead of reading them, whatever a count claims.
const MAX_RESERVE: u64 = 1 << 16;

/// A typed GGUF metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    /// `GGUF_TYPE_UINT8`.
    U8(u8),
    /// `GGUF_TYPE_INT8`.
    I8(i8),
    /// `GGUF_TYPE_UINT16`.
    U16(u16),
    /// `GGUF_TYPE_INT16`.
    I16(i16),
    /// `GGUF_TYPE_UINT32`.
    U32(u32),
    /// `GGUF_TYPE_INT32`.
    I32(i32),
    /// `GGUF_TYPE_FLOAT32`.
    F32(f32),
    /// `GGUF_TYPE_BOOL`.
    Bool(bool),
    /// `GGUF_TYPE_STRING` (invalid UTF-8 is replaced by U+FFFD).
    String(String),
    /// `GGUF_TYPE_ARRAY`.
    Array(GgufArray),
    /// `GGUF_TYPE_UINT64`.
    U64(u64),
    /// `GGUF_TYPE_INT64`.
    I64(i64),
    /// `GGUF_TYPE_FLOAT64`.
    F64(f64),
}

/// A GGUF metadata array, stored by element type.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufArray {
    /// Array of u8 (e.g. `tokenizer.ggml.precompiled_charsmap`).
    U8(Vec<u8>),
    /// Array of i8.
    I8(Vec<i8>),
    /// Array of u16.
    U16(Vec<u16>),
    /// Array of i16.
    I16(Vec<i16>),
    /// Array of u32.
    U32(Vec<u32>),
    /// Array of i32 (e.g. `tokenizer.ggml.token_type`).
    I32(Vec<i32>),
    /// Array of f32 (e.g. `tokenizer.ggml.scores`).
    F32(Vec<f32>),
    /// Array of bools.
    Bool(Vec<bool>),
    /// Array of strings (e.g. `tokenizer.ggml.tokens`).
    String(Vec<String>),
    /// Array of arrays.
    Array(Vec<GgufArray>),
    /// Array of u64.
    U64(Vec<u64>),
    /// Array of i64.
    I64(Vec<i64>),
    /// Array of f64.
    F64(Vec<f64>),
}

impl GgufValue {
    /// The string, when this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    /// Any integer that is not negative, widened to u64.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::U8(v) => Some(v.into()),
            Self::U16(v) => Some(v.into()),
            Self::U32(v) => Some(v.into()),
            Self::U64(v) => Some(v),
            Self::I8(v) => u64::try_from(v).ok(),
            Self::I16(v) => u64::try_from(v).ok(),
            Self::I32(v) => u64::try_from(v).ok(),
            Self::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer that fits an i64.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Self::I8(v) => Some(v.into()),
            Self::I16(v) => Some(v.into()),
            Self::I32(v) => Some(v.into()),
            Self::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// A float (or integer) as f32.
    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            Self::F32(v) => Some(v),
            Self::F64(v) => Some(v as f32),
            _ => self.as_i64().map(|v| v as f32),
        }
    }

    /// The bool, when this is one.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Self::Bool(v) => Some(v),
            _ => None,
        }
    }

    /// The array, when this is one.
    pub fn as_array(&self) -> Option<&GgufArray> {
        match self {
            Self::Array(a) => Some(a),
            _ => None,
        }
    }

    /// The GGUF type name of the value (`"u32"`, `"array<string>"`, …) for messages.
    pub fn type_name(&self) -> String {
        match self {
            Self::U8(_) => "u8".into(),
            Self::I8(_) => "i8".into(),
            Self::U16(_) => "u16".into(),
            Self::I16(_) => "i16".into(),
            Self::U32(_) => "u32".into(),
            Self::I32(_) => "i32".into(),
            Self::F32(_) => "f32".into(),
            Self::Bool(_) => "bool".into(),
            Self::String(_) => "string".into(),
            Self::Array(a) => format!("array<{}>", a.element_type_name()),
            Self::U64(_) => "u64".into(),
            Self::I64(_) => "i64".into(),
            Self::F64(_) => "f64".into(),
        }
    }
}

impl GgufArray {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Self::U8(v) => v.len(),
            Self::I8(v) => v.len(),
            Self::U16(v) => v.len(),
            Self::I16(v) => v.len(),
            Self::U32(v) => v.len(),
            Self::I32(v) => v.len(),
            Self::F32(v) => v.len(),
            Self::Bool(v) => v.len(),
            Self::String(v) => v.len(),
            Self::Array(v) => v.len(),
            Self::U64(v) => v.len(),
            Self::I64(v) => v.len(),
            Self::F64(v) => v.len(),
        }
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The strings of an array of strings.
    pub fn as_strings(&self) -> Option<&[String]> {
        match self {
            Self::String(v) => Some(v),
            _ => None,
        }
    }

    /// The bytes of an array of u8.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Self::U8(v) => Some(v),
            _ => None,
        }
    }

    /// The values of an array of f32.
    pub fn as_f32s(&self) -> Option<&[f32]> {
        match self {
            Self::F32(v) => Some(v),
            _ => None,
        }
    }

    /// The values of an array of i32.
    pub fn as_i32s(&self) -> Option<&[i32]> {
        match self {
            Self::I32(v) => Some(v),
            _ => None,
        }
    }

    /// The values of an array of u32.
    pub fn as_u32s(&self) -> Option<&[u32]> {
        match self {
            Self::U32(v) => Some(v),
            _ => None,
        }
    }

    /// Every element of an integer array widened to i64 (`None` for non-integer arrays or u64 overflow).
    pub fn to_i64s(&self) -> Option<Vec<i64>> {
        match self {
            Self::U8(v) => Some(v.iter().map(|&x| x.into()).collect()),
            Self::I8(v) => Some(v.iter().map(|&x| x.into()).collect()),
            Self::U16(v) => Some(v.iter().map(|&x| x.into()).collect()),
            Self::I16(v) => Some(v.iter().map(|&x| x.into()).collect()),
            Self::U32(v) => Some(v.iter().map(|&x| x.into()).collect()),
            Self::I32(v) => Some(v.iter().map(|&x| x.into()).collect()),
            Self::I64(v) => Some(v.clone()),
            Self::U64(v) => v.iter().map(|&x| i64::try_from(x).ok()).collect(),
            _ => None,
        }
    }

    /// The nested arrays of an array of arrays.
    pub fn as_arrays(&self) -> Option<&[GgufArray]> {
        match self {
            Self::Array(v) => Some(v),
            _ => None,
        }
    }

    fn element_type_name(&self) -> String {
        match self {
            Self::U8(_) => "u8".into(),
            Self::I8(_) => "i8".into(),
            Self::U16(_) => "u16".into(),
            Self::I16(_) => "i16".into(),
            Self::U32(_) => "u32".into(),
            Self::I32(_) => "i32".into(),
            Self::F32(_) => "f32".into(),
            Self::Bool(_) => "bool".into(),
            Self::String(_) => "string".into(),
            Self::Array(v) => format!("array<{}>", v.first().map_or("?".into(), |a| a.element_type_name())),
            Self::U64(_) => "u64".into(),
            Self::I64(_) => "i64".into(),
            Self::F64(_) => "f64".into(),
        }
    }
}

/// One tensor of a GGUF file.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufTensorInfo {
    /// Tensor name.
    pub name: String,
    /// ggml dimensions, innermost first (`ne[0]` = the input features of a Linear).
    pub ne: Vec<u64>,
    /// Logical shape in PyTorch order (`ne` reversed).
    pub shape: Vec<usize>,
    /// Storage type.
    pub ggml_type: GgmlType,
    /// Absolute byte offset of the data in the file.
    pub offset: u64,
    /// Byte length of the data.
    pub len: u64,
}

impl GgufTensorInfo {
    /// Number of values.
    pub fn numel(&self) -> u64 {
        self.ne.iter().product()
    }
}

/// A GGUF file whose header has been read and validated.
pub struct GgufFile {
    source: Box<dyn ByteSource>,
    version: u32,
    alignment: u64,
    data_offset: u64,
    metadata: Vec<(String, GgufValue)>,
    metadata_index: HashMap<String, usize>,
    tensors: Vec<GgufTensorInfo>,
    tensor_index: HashMap<String, usize>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("source", &self.source.label())
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// Sequential reads of the header through a chunk buffer, never past [`MAX_HEADER_BYTES`].
struct Cursor<'a> {
    source: &'a dyn ByteSource,
    total: u64,
    limit: u64,
    pos: u64,
    buf: Vec<u8>,
    buf_start: u64,
}

impl<'a> Cursor<'a> {
    fn new(source: &'a dyn ByteSource) -> Self {
        let total = source.len();
        Self { source, total, limit: total.min(MAX_HEADER_BYTES), pos: 0, buf: Vec::new(), buf_start: 0 }
    }

    fn remaining(&self) -> u64 {
        self.limit - self.pos
    }

    fn take(&mut self, n: u64) -> Result<&[u8]> {
        if n > self.remaining() && self.limit < self.total {
            return Err(Error::Invalid(format!(
                "its header goes past {MAX_HEADER_BYTES} bytes (at offset {}, {n} more bytes), more than any real model needs",
                self.pos
            )));
        }
        if n > self.remaining() {
            return Err(Error::Invalid(format!(
                "the file ends at {} bytes, {n} more were needed at offset {}; it is truncated",
                self.total, self.pos
            )));
        }
        let buf_end = self.buf_start + self.buf.len() as u64;
        if self.pos < self.buf_start || self.pos + n > buf_end {
            let len = n.max(CHUNK).min(self.remaining());
            self.buf = self.source.read_at(self.pos, len as usize)?;
            self.buf_start = self.pos;
        }
        let start = (self.pos - self.buf_start) as usize;
        self.pos += n;
        Ok(&self.buf[start..start + n as usize])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        Ok(self.take(N as u64)?.try_into().expect("take returns N bytes"))
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A count of items that each take at least `min_bytes`, refused when the rest of the file cannot hold them.
    fn count(&mut self, what: &str, min_bytes: u64) -> Result<u64> {
        let n = self.u64()?;
        if n.checked_mul(min_bytes).is_none_or(|need| need > self.remaining()) {
            return Err(Error::Invalid(format!(
                "it claims {n} {what}, more than the remaining {} bytes could hold",
                self.remaining()
            )));
        }
        Ok(n)
    }

    fn string(&mut self) -> Result<String> {
        let n = self.count("string bytes", 1)?;
        Ok(String::from_utf8_lossy(self.take(n)?).into_owned())
    }

    fn strict_string(&mut self, what: &str) -> Result<String> {
        let n = self.count("string bytes", 1)?;
        let bytes = self.take(n)?.to_vec();
        String::from_utf8(bytes).map_err(|_| Error::Invalid(format!("a {what} is not UTF-8")))
    }

    /// `n` items read by `item`, without trusting `n` for the allocation.
    fn repeat<T>(&mut self, n: u64, mut item: impl FnMut(&mut Self) -> Result<T>) -> Result<Vec<T>> {
        let mut items = Vec::with_capacity(n.min(MAX_RESERVE) as usize);
        for _ in 0..n {
            items.push(item(self)?);
        }
        Ok(items)
    }

    fn value(&mut self, ty: u32, depth: usize) -> Result<GgufValue> {
        Ok(match ty {
            0 => GgufValue::U8(self.array::<1>()?[0]),
            1 => GgufValue::I8(self.array::<1>()?[0] as i8),
            2 => GgufValue::U16(u16::from_le_bytes(self.array()?)),
            3 => GgufValue::I16(i16::from_le_bytes(self.array()?)),
            4 => GgufValue::U32(self.u32()?),
            5 => GgufValue::I32(i32::from_le_bytes(self.array()?)),
            6 => GgufValue::F32(f32::from_le_bytes(self.array()?)),
            7 => GgufValue::Bool(self.bool()?),
            8 => GgufValue::String(self.string()?),
            9 => GgufValue::Array(self.array_value(depth)?),
            10 => GgufValue::U64(self.u64()?),
            11 => GgufValue::I64(i64::from_le_bytes(self.array()?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.array()?)),
            other => return Err(Error::Invalid(format!("unknown metadata value type {other}"))),
        })
    }

    fn bool(&mut self) -> Result<bool> {
        match self.array::<1>()?[0] {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(Error::Invalid(format!("a bool holds {other}"))),
        }
    }

    fn array_value(&mut self, depth: usize) -> Result<GgufArray> {
        if depth >= MAX_NESTING {
            return Err(Error::Invalid(format!("arrays are nested deeper than {MAX_NESTING} levels")));
        }
        let ty = self.u32()?;
        let min_bytes = match ty {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            8 | 10..=12 => 8,
            9 => 12,
            other => return Err(Error::Invalid(format!("unknown array element type {other}"))),
        };
        let n = self.count("array elements", min_bytes)?;
        macro_rules! fixed {
            ($variant:ident, $t:ty) => {{
                let bytes = self.take(n * min_bytes)?;
                GgufArray::$variant(
                    bytes
                        .chunks_exact(min_bytes as usize)
                        .map(|b| <$t>::from_le_bytes(b.try_into().unwrap()))
                        .collect(),
                )
            }};
        }
        Ok(match ty {
            0 => GgufArray::U8(self.take(n)?.to_vec()),
            1 => GgufArray::I8(self.take(n)?.iter().map(|&b| b as i8).collect()),
            2 => fixed!(U16, u16),
            3 => fixed!(I16, i16),
            4 => fixed!(U32, u32),
            5 => fixed!(I32, i32),
            6 => fixed!(F32, f32),
            7 => GgufArray::Bool(self.repeat(n, Self::bool)?),
            8 => GgufArray::String(self.repeat(n, Self::string)?),
            9 => GgufArray::Array(self.repeat(n, |cur| cur.array_value(depth + 1))?),
            10 => fixed!(U64, u64),
            11 => fixed!(I64, i64),
            _ => fixed!(F64, f64),
        })
    }
}

impl GgufFile {
    /// Reads and validates the header of `source`: counts bounded by what the file can hold, every tensor's
    /// type known, its data aligned, inside the file and not overlapping another.
    pub fn open(source: impl ByteSource + 'static) -> Result<Self> {
        let source: Box<dyn ByteSource> = Box::new(source);
        let label = source.label();
        Self::parse(source).map_err(|e| Error::Invalid(format!("{label}: not a valid GGUF file: {e}")))
    }

    fn parse(source: Box<dyn ByteSource>) -> Result<Self> {
        let mut cur = Cursor::new(source.as_ref());
        if cur.total < 4 || cur.array::<4>()? != *b"GGUF" {
            return Err(Error::Invalid("it does not start with the magic `GGUF`".into()));
        }
        let version = cur.u32()?;
        match version {
            2 | 3 => {}
            1 => return Err(Error::Invalid("GGUF version 1 is obsolete; convert it with a current llama.cpp".into())),
            v if v.swap_bytes() <= 3 => return Err(Error::Invalid("big-endian GGUF files are not supported".into())),
            v => return Err(Error::Invalid(format!("unknown GGUF version {v}"))),
        }
        let n_tensors = cur.count("tensors", 24)?;
        let n_kv = cur.count("metadata entries", 13)?;

        let mut metadata = Vec::with_capacity(n_kv.min(MAX_RESERVE) as usize);
        let mut metadata_index = HashMap::new();
        for i in 0..n_kv {
            let key = cur.strict_string("metadata key").map_err(|e| in_entry(e, &format!("metadata entry {i}")))?;
            let value =
                cur.u32().and_then(|ty| cur.value(ty, 0)).map_err(|e| in_entry(e, &format!("metadata `{key}`")))?;
            if metadata_index.insert(key.clone(), metadata.len()).is_some() {
                return Err(Error::Invalid(format!("metadata key `{key}` appears twice")));
            }
            metadata.push((key, value));
        }

        let alignment = match metadata_index.get("general.alignment").map(|&i| &metadata[i].1) {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a.is_power_of_two() => a,
                _ => return Err(Error::Invalid(format!("`general.alignment` = {v:?} is not a power of two"))),
            },
        };

        let mut infos = Vec::with_capacity(n_tensors.min(MAX_RESERVE) as usize);
        for i in 0..n_tensors {
            let name = cur.strict_string("tensor name").map_err(|e| in_entry(e, &format!("tensor info {i}")))?;
            let info = tensor_info(&mut cur, &name).map_err(|e| in_entry(e, &format!("tensor `{name}`")))?;
            infos.push((name, info));
        }
        let data_offset = cur.pos.div_ceil(alignment) * alignment;
        let data_len = cur.total.saturating_sub(data_offset);

        let mut tensors = Vec::with_capacity(infos.len());
        let mut tensor_index = HashMap::new();
        for (name, (ne, ggml_type, offset)) in infos {
            if ne.first().is_some_and(|&n0| !n0.is_multiple_of(ggml_type.block_size() as u64)) {
                return Err(Error::Invalid(format!(
                    "tensor `{name}` has rows of {} values, not a multiple of the {ggml_type} block size {}",
                    ne[0],
                    ggml_type.block_size()
                )));
            }
            let numel = ne.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
            let len = numel
                .ok_or_else(|| Error::Invalid(format!("tensor `{name}` has dimensions {ne:?} whose size overflows")))
                .and_then(|n| ggml_type.bytes_for(n))
                .map_err(|e| in_entry(e, &format!("tensor `{name}`")))?;
            if !offset.is_multiple_of(alignment) {
                return Err(Error::Invalid(format!("tensor `{name}` starts at {offset}, not aligned to {alignment}")));
            }
            if offset.checked_add(len).is_none_or(|end| end > data_len) {
                return Err(Error::Invalid(format!(
                    "tensor `{name}` ({len} bytes at data offset {offset}) lies outside the {data_len}-byte data section; the file is truncated or corrupt"
                )));
            }
            let shape =
                ne.iter().rev().map(|&d| usize::try_from(d)).collect::<std::result::Result<Vec<usize>, _>>().map_err(
                    |_| Error::Invalid(format!("tensor `{name}` has dimensions {ne:?} too large for this machine")),
                )?;
            if tensor_index.insert(name.clone(), tensors.len()).is_some() {
                return Err(Error::Invalid(format!("tensor `{name}` appears twice")));
            }
            tensors.push(GgufTensorInfo { name, ne, shape, ggml_type, offset: data_offset + offset, len });
        }
        let mut by_offset: Vec<&GgufTensorInfo> = tensors.iter().collect();
        by_offset.sort_by_key(|t| (t.offset, t.len));
        for pair in by_offset.windows(2) {
            if pair[1].offset < pair[0].offset + pair[0].len {
                return Err(Error::Invalid(format!("tensors `{}` and `{}` overlap", pair[0].name, pair[1].name)));
            }
        }
        drop(cur);
        Ok(Self { source, version, alignment, data_offset, metadata, metadata_index, tensors, tensor_index })
    }

    /// The GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The data alignment (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute byte offset of the data section.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// The metadata value of `key`.
    pub fn metadata(&self, key: &str) -> Option<&GgufValue> {
        self.metadata_index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// Every metadata entry in file order.
    pub fn metadata_entries(&self) -> &[(String, GgufValue)] {
        &self.metadata
    }

    /// `general.architecture` (`"flux"`, `"t5encoder"`, …).
    pub fn architecture(&self) -> Option<&str> {
        self.metadata("general.architecture").and_then(GgufValue::as_str)
    }

    /// The tensor infos in file order.
    pub fn tensors(&self) -> &[GgufTensorInfo] {
        &self.tensors
    }

    /// The tensor info of `name`.
    pub fn tensor(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// How errors name the underlying source.
    pub fn label(&self) -> String {
        self.source.label()
    }

    /// The stored type, logical shape (PyTorch order) and packed bytes of `name`, for keeping blocks quantized.
    pub fn raw(&self, name: &str) -> Result<(GgmlType, Vec<usize>, Vec<u8>)> {
        let t =
            self.tensor(name).ok_or_else(|| Error::Invalid(format!("{}: no tensor `{name}`", self.source.label())))?;
        let len = usize::try_from(t.len)
            .map_err(|_| Error::Invalid(format!("tensor `{name}` ({} bytes) is too large to read here", t.len)))?;
        Ok((t.ggml_type, t.shape.clone(), self.source.read_at(t.offset, len)?))
    }
}

fn in_entry(e: Error, what: &str) -> Error {
    Error::Invalid(format!("{what}: {e}"))
}

/// Reads `n_dims, ne[n_dims], type, offset` after a tensor name.
fn tensor_info(cur: &mut Cursor<'_>, name: &str) -> Result<(Vec<u64>, GgmlType, u64)> {
    let n_dims = cur.u32()?;
    if n_dims > MAX_DIMS {
        return Err(Error::Invalid(format!("it has {n_dims} dimensions; ggml allows at most {MAX_DIMS}")));
    }
    let ne = (0..n_dims).map(|_| cur.u64()).collect::<Result<Vec<u64>>>()?;
    let id = cur.u32()?;
    let ggml_type = GgmlType::from_id(id).map_err(|e| Error::Invalid(format!("tensor `{name}` has an {e}")))?;
    Ok((ne, ggml_type, cur.u64()?))
}

impl Weights for GgufFile {
    fn names(&self) -> Vec<String> {
        self.tensors.iter().map(|t| t.name.clone()).collect()
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.tensor(name).map(|t| t.shape.clone())
    }

    fn read(&self, name: &str) -> Result<HostTensor> {
        let (ty, shape, bytes) = self.raw(name)?;
        if !ty.can_dequantize() {
            return Err(Error::Invalid(format!("tensor `{name}` is stored as {ty}, which cannot be dequantized yet")));
        }
        let numel = shape.iter().product();
        let data = dequantize(ty, &bytes, numel).map_err(|e| Error::Invalid(format!("tensor `{name}`: {e}")))?;
        HostTensor::new(shape, data)
    }

    fn raw_block(&self, name: &str) -> Option<Result<RawBlock>> {
        self.tensor(name).map(|_| self.raw(name))
    }

    fn stored_type(&self, name: &str) -> Option<GgmlType> {
        self.tensor(name).map(|t| t.ggml_type)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Writes a GGUF v3 file: `kv` as raw (key, type id, value bytes), tensors as (name, ne, type id, data).
    pub(crate) fn build(kv: &[(&str, u32, Vec<u8>)], tensors: &[(&str, Vec<u64>, u32, Vec<u8>)]) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend((tensors.len() as u64).to_le_bytes());
        out.extend((kv.len() as u64).to_le_bytes());
        for (k, ty, v) in kv {
            out.extend(string(k));
            out.extend(ty.to_le_bytes());
            out.extend(v);
        }
        let mut offset = 0u64;
        for (name, ne, ty, data) in tensors {
            out.extend(string(name));
            out.extend((ne.len() as u32).to_le_bytes());
            ne.iter().for_each(|d| out.extend(d.to_le_bytes()));
            out.extend(ty.to_le_bytes());
            out.extend(offset.to_le_bytes());
            offset += (data.len() as u64).div_ceil(32) * 32;
        }
        out.resize(out.len().div_ceil(32) * 32, 0);
        for (_, _, _, data) in tensors {
            out.extend(data);
            out.resize(out.len().div_ceil(32) * 32, 0);
        }
        out
    }

    pub(crate) fn string(s: &str) -> Vec<u8> {
        let mut out = (s.len() as u64).to_le_bytes().to_vec();
        out.extend(s.as_bytes());
        out
    }

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn open_err(bytes: Vec<u8>) -> String {
        GgufFile::open(bytes).unwrap_err().to_string()
    }

    #[test]
    fn reads_metadata_of_every_type_and_nested_arrays() {
        let mut nested = 9u32.to_le_bytes().to_vec(); // array of arrays of i32
        nested.extend(2u64.to_le_bytes());
        for row in [[1i32, 2], [3, 4]] {
            nested.extend(5u32.to_le_bytes());
            nested.extend(2u64.to_le_bytes());
            row.iter().for_each(|v| nested.extend(v.to_le_bytes()));
        }
        let mut strings = 8u32.to_le_bytes().to_vec();
        strings.extend(2u64.to_le_bytes());
        strings.extend(string("▁a"));
        strings.extend(string("</s>"));
        let file = GgufFile::open(build(
            &[
                ("general.architecture", 8, string("flux")),
                ("u8", 0, vec![7]),
                ("i16", 3, (-3i16).to_le_bytes().to_vec()),
                ("f32", 6, 0.5f32.to_le_bytes().to_vec()),
                ("bool", 7, vec![1]),
                ("u64", 10, 9u64.to_le_bytes().to_vec()),
                ("f64", 12, 2.5f64.to_le_bytes().to_vec()),
                ("nested", 9, nested),
                ("strings", 9, strings),
            ],
            &[("w", vec![2, 3], 0, f32_bytes(&[0., 1., 2., 3., 4., 5.]))],
        ))
        .unwrap();
        assert_eq!(file.architecture(), Some("flux"));
        assert_eq!(file.metadata("u8").and_then(GgufValue::as_u64), Some(7));
        assert_eq!(file.metadata("i16").and_then(GgufValue::as_i64), Some(-3));
        assert_eq!(file.metadata("i16").and_then(GgufValue::as_u64), None);
        assert_eq!(file.metadata("f32").and_then(GgufValue::as_f32), Some(0.5));
        assert_eq!(file.metadata("bool").and_then(GgufValue::as_bool), Some(true));
        assert_eq!(file.metadata("u64").and_then(GgufValue::as_u64), Some(9));
        assert_eq!(file.metadata("f64").and_then(GgufValue::as_f32), Some(2.5));
        let nested = file.metadata("nested").and_then(GgufValue::as_array).and_then(GgufArray::as_arrays).unwrap();
        assert_eq!(nested[1].as_i32s(), Some(&[3, 4][..]));
        let strings = file.metadata("strings").and_then(GgufValue::as_array).unwrap();
        assert_eq!(strings.as_strings().unwrap(), ["▁a", "</s>"]);
        assert_eq!(file.metadata("nested").unwrap().type_name(), "array<array<i32>>");
        assert_eq!(file.shape("w"), Some(vec![3, 2]));
        assert_eq!(file.read("w").unwrap().data, [0., 1., 2., 3., 4., 5.]);
        assert_eq!(file.data_offset() % 32, 0);
    }

    #[test]
    fn alignment_comes_from_general_alignment() {
        let bytes = build(&[("general.alignment", 4, 64u32.to_le_bytes().to_vec())], &[]);
        let mut padded = bytes.clone();
        padded.resize(bytes.len().div_ceil(64) * 64, 0);
        let file = GgufFile::open(padded).unwrap();
        assert_eq!((file.alignment(), file.data_offset() % 64), (64, 0));
        let bad = build(&[("general.alignment", 4, 48u32.to_le_bytes().to_vec())], &[]);
        assert!(open_err(bad).contains("not a power of two"));
    }

    #[test]
    fn hostile_files_are_errors() {
        assert!(open_err(b"GGML\x03\0\0\0".to_vec()).contains("magic"));
        assert!(open_err(b"GG".to_vec()).contains("magic"));
        let good = build(&[("a", 4, 1u32.to_le_bytes().to_vec())], &[("w", vec![4], 0, f32_bytes(&[1.; 4]))]);
        for cut in [6, 20, 30, 45, 60, 100] {
            let err = open_err(good[..cut].to_vec());
            assert!(err.contains("not a valid GGUF"), "cut {cut}: {err}");
        }
        let mut absurd_tensors = good.clone();
        absurd_tensors[8..16].copy_from_slice(&(1u64 << 60).to_le_bytes());
        assert!(open_err(absurd_tensors).contains("claims 1152921504606846976 tensors"));
        let mut absurd_kv = good.clone();
        absurd_kv[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(open_err(absurd_kv).contains("metadata entries"));
        let mut long_string = 8u32.to_le_bytes().to_vec();
        long_string.extend(1u64.to_le_bytes());
        long_string.extend((1u64 << 40).to_le_bytes());
        assert!(open_err(build(&[("s", 9, long_string)], &[])).contains("string bytes"));
        let mut long_array = 0u32.to_le_bytes().to_vec();
        long_array.extend((1u64 << 50).to_le_bytes());
        assert!(open_err(build(&[("s", 9, long_array)], &[])).contains("array elements"));
        let mut deep = Vec::new();
        for _ in 0..20 {
            deep.extend(9u32.to_le_bytes());
            deep.extend(1u64.to_le_bytes());
        }
        deep.extend(0u32.to_le_bytes());
        deep.extend(0u64.to_le_bytes());
        assert!(open_err(build(&[("d", 9, deep)], &[])).contains("nested deeper"));
        assert!(open_err(build(&[("x", 13, vec![])], &[])).contains("unknown metadata value type 13"));
        let unknown = build(&[], &[("w", vec![32], 99, vec![0; 32])]);
        let err = open_err(unknown);
        assert!(err.contains("tensor `w`") && err.contains("unknown ggml tensor type id 99"), "{err}");
        let mut outside = build(&[], &[("w", vec![4], 0, f32_bytes(&[1.; 4]))]);
        outside.truncate(outside.len() - 32);
        assert!(open_err(outside).contains("outside"));
        let ragged = build(&[], &[("w", vec![31], 8, vec![0; 34])]);
        assert!(open_err(ragged).contains("not a multiple of the Q8_0 block size"));
        let too_many_dims = build(&[], &[("w", vec![1; 5], 0, vec![0; 4])]);
        assert!(open_err(too_many_dims).contains("5 dimensions"));
        let twice = build(&[("a", 0, vec![1]), ("a", 0, vec![2])], &[]);
        assert!(open_err(twice).contains("appears twice"));
    }

    /// A source of `len` zero bytes after `head`, without allocating them.
    struct Sparse {
        head: Vec<u8>,
        len: u64,
    }

    impl ByteSource for Sparse {
        fn len(&self) -> u64 {
            self.len
        }

        fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
            crate::formats::source::check_range("sparse", self.len, offset, len)?;
            Ok((offset..offset + len as u64).map(|i| self.head.get(i as usize).copied().unwrap_or(0)).collect())
        }
    }

    #[test]
    fn headers_past_the_limit_of_a_huge_file_are_refused() {
        // 24 GB of zeros after a header that claims 10^9 metadata entries: each parses as an empty key of type
        // u8, so only the header limit stops it.
        let mut head = b"GGUF".to_vec();
        head.extend(3u32.to_le_bytes());
        head.extend(0u64.to_le_bytes());
        head.extend(1_000_000_000u64.to_le_bytes());
        let err = GgufFile::open(Sparse { head, len: 24 << 30 }).unwrap_err().to_string();
        assert!(err.contains("metadata entries") || err.contains("header goes past"), "{err}");
        let mut head = b"GGUF".to_vec();
        head.extend(3u32.to_le_bytes());
        head.extend(0u64.to_le_bytes());
        head.extend(1u64.to_le_bytes());
        head.extend(string("tokens"));
        head.extend(9u32.to_le_bytes());
        head.extend(0u32.to_le_bytes());
        head.extend((1u64 << 33).to_le_bytes());
        let err = GgufFile::open(Sparse { head, len: 24 << 30 }).unwrap_err().to_string();
        assert!(err.contains("array elements"), "{err}");
    }

    #[test]
    fn unsupported_types_open_but_fail_clearly_when_read() {
        let file = GgufFile::open(build(&[], &[("w", vec![256], 10, vec![0; 84])])).unwrap();
        assert_eq!(file.raw("w").unwrap().0, GgmlType::Q2_K);
        let err = file.read("w").unwrap_err().to_string();
        assert!(err.contains("`w` is stored as Q2_K"), "{err}");
    }
}
