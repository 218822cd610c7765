//! safetensors (<https://github.com/huggingface/safetensors#format>): an 8-byte little-endian header length,
//! a JSON header (`name → {dtype, shape, data_offsets}` plus an optional `__metadata__` string map), then the data.
//! Opening reads the header only; tensors are read one at a time.

use std::collections::{BTreeMap, HashMap};

use half::{bf16, f16};
use serde_json::Value;

use super::GgmlType;
use super::source::ByteSource;
use crate::formats::weights::{HostTensor, RawBlock, Weights};
use crate::{Error, Result};

/// Largest JSON header accepted (safetensors' own limit).
pub const MAX_HEADER_BYTES: u64 = 100_000_000;

/// One tensor entry of a safetensors header.
#[derive(Debug, Clone, PartialEq)]
pub struct SafetensorsTensor {
    /// Tensor name.
    pub name: String,
    /// safetensors dtype string (`"BF16"`, `"F32"`, …).
    pub dtype: String,
    /// Shape, outermost first.
    pub shape: Vec<usize>,
    /// Absolute byte offset of the data in the file.
    pub offset: u64,
    /// Byte length of the data.
    pub len: u64,
}

impl SafetensorsTensor {
    /// Number of values.
    pub fn numel(&self) -> u64 {
        self.shape.iter().map(|&d| d as u64).product()
    }
}

/// Bits per value of a safetensors dtype, `None` for dtypes this reader does not know.
fn dtype_bits(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" => 8,
        "I16" | "U16" | "F16" | "BF16" => 16,
        "I32" | "U32" | "F32" => 32,
        "I64" | "U64" | "F64" | "C64" => 64,
        "F4" => 4,
        "F6_E2M3" | "F6_E3M2" => 6,
        _ => return None,
    })
}

/// A safetensors file whose header has been read and validated.
pub struct SafetensorsFile {
    source: Box<dyn ByteSource>,
    tensors: Vec<SafetensorsTensor>,
    index: HashMap<String, usize>,
    metadata: BTreeMap<String, String>,
}

impl std::fmt::Debug for SafetensorsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafetensorsFile")
            .field("source", &self.source.label())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl SafetensorsFile {
    /// Reads and validates the header of `source`: every tensor lies inside the file, no two overlap, and each
    /// byte length equals its shape times its dtype size.
    pub fn open(source: impl ByteSource + 'static) -> Result<Self> {
        let source: Box<dyn ByteSource> = Box::new(source);
        let label = source.label();
        let total = source.len();
        let fail = |msg: String| Error::Invalid(format!("{label}: not a valid safetensors file: {msg}"));
        if total < 8 {
            return Err(fail(format!("it has {total} bytes, fewer than the 8-byte header length")));
        }
        let n = u64::from_le_bytes(source.read_at(0, 8)?.try_into().expect("8 bytes were read"));
        if n > MAX_HEADER_BYTES {
            return Err(fail(format!("its header claims {n} bytes, more than the {MAX_HEADER_BYTES}-byte limit")));
        }
        if n > total - 8 {
            return Err(fail(format!("its header claims {n} bytes but the file has only {total}; it is truncated")));
        }
        let header = source.read_at(8, n as usize)?;
        let json: Value = serde_json::from_slice(&header).map_err(|e| fail(format!("its header is not JSON ({e})")))?;
        let Value::Object(entries) = json else {
            return Err(fail("its header is not a JSON object".into()));
        };
        serde_json::from_slice::<UniqueEntries>(&header).map_err(|e| fail(format!("its header {e}")))?;
        let data_start = 8 + n;
        let data_len = total - data_start;
        let mut metadata = BTreeMap::new();
        let mut tensors = Vec::with_capacity(entries.len());
        for (name, entry) in entries {
            if name == "__metadata__" {
                let Value::Object(map) = entry else {
                    return Err(fail("`__metadata__` is not a JSON object".into()));
                };
                for (k, v) in map {
                    let v = match v {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    metadata.insert(k, v);
                }
                continue;
            }
            tensors.push(parse_entry(&name, &entry, data_len).map_err(&fail)?);
        }
        tensors.sort_by_key(|t| (t.offset, t.len));
        for pair in tensors.windows(2) {
            if pair[1].offset < pair[0].offset + pair[0].len {
                return Err(fail(format!("tensors `{}` and `{}` overlap", pair[0].name, pair[1].name)));
            }
        }
        for t in &mut tensors {
            t.offset += data_start;
        }
        let index = tensors.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
        Ok(Self { source, tensors, index, metadata })
    }

    /// The tensors in data order.
    pub fn tensors(&self) -> &[SafetensorsTensor] {
        &self.tensors
    }

    /// The header entry of `name`.
    pub fn tensor(&self, name: &str) -> Option<&SafetensorsTensor> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }

    /// The `__metadata__` string map (empty when the file has none).
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// How errors name the underlying source.
    pub fn label(&self) -> String {
        self.source.label()
    }

    /// The stored bytes of `name`, unconverted.
    pub fn raw(&self, name: &str) -> Result<Vec<u8>> {
        let t = self.tensor(name).ok_or_else(|| self.missing(name))?;
        let len = usize::try_from(t.len)
            .map_err(|_| Error::Invalid(format!("tensor `{name}` ({} bytes) is too large to read here", t.len)))?;
        self.source.read_at(t.offset, len)
    }

    fn missing(&self, name: &str) -> Error {
        Error::Invalid(format!("{}: no tensor `{name}`", self.source.label()))
    }
}

fn parse_entry(name: &str, entry: &Value, data_len: u64) -> Result<SafetensorsTensor, String> {
    let dtype =
        entry.get("dtype").and_then(Value::as_str).ok_or_else(|| format!("tensor `{name}` has no dtype string"))?;
    let bits = dtype_bits(dtype).ok_or_else(|| format!("tensor `{name}` has unknown dtype `{dtype}`"))?;
    let shape = entry
        .get("shape")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("tensor `{name}` has no shape list"))?
        .iter()
        .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
        .collect::<Option<Vec<usize>>>()
        .ok_or_else(|| format!("tensor `{name}` has a shape that is not a list of sizes"))?;
    let offsets = entry
        .get("data_offsets")
        .and_then(Value::as_array)
        .and_then(|o| match o.as_slice() {
            [a, b] => Some((a.as_u64()?, b.as_u64()?)),
            _ => None,
        })
        .ok_or_else(|| format!("tensor `{name}` has no [begin, end] data_offsets"))?;
    let (begin, end) = offsets;
    if begin > end || end > data_len {
        return Err(format!(
            "tensor `{name}` has data_offsets [{begin}, {end}] outside the {data_len}-byte data section"
        ));
    }
    let bit_len = shape
        .iter()
        .try_fold(bits, |acc, &d| acc.checked_mul(d as u64))
        .ok_or_else(|| format!("tensor `{name}` has a shape {shape:?} whose size overflows"))?;
    if bit_len % 8 != 0 || bit_len / 8 != end - begin {
        return Err(format!(
            "tensor `{name}` ({dtype} {shape:?}) needs {} bytes but its data_offsets span {}",
            bit_len.div_ceil(8),
            end - begin
        ));
    }
    Ok(SafetensorsTensor { name: name.to_string(), dtype: dtype.to_string(), shape, offset: begin, len: end - begin })
}

/// Converts stored little-endian bytes to f32 values.
type Converter = fn(&[u8]) -> Vec<f32>;

/// The converter for the float dtypes models load.
fn float_reader(name: &str, dtype: &str) -> Result<Converter> {
    Ok(match dtype {
        "F32" => |bytes: &[u8]| bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        "F16" => |bytes: &[u8]| bytes.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        "BF16" => |bytes: &[u8]| bytes.chunks_exact(2).map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        other => {
            return Err(Error::Invalid(format!(
                "tensor `{name}` is stored as {other}; only F32, F16 and BF16 tensors can be loaded"
            )));
        }
    })
}

impl Weights for SafetensorsFile {
    fn names(&self) -> Vec<String> {
        self.tensors.iter().map(|t| t.name.clone()).collect()
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.tensor(name).map(|t| t.shape.clone())
    }

    fn read(&self, name: &str) -> Result<HostTensor> {
        let t = self.tensor(name).ok_or_else(|| self.missing(name))?;
        let convert = float_reader(name, &t.dtype)?;
        HostTensor::new(t.shape.clone(), convert(&self.raw(name)?))
    }

    /// F32, F16 and BF16 tensors as their ggml namesakes (one value per block, the same little-endian bytes), so
    /// that linear layers keep them as stored on the GPU, read by the packed matmuls; `None` for other dtypes.
    fn stored_type(&self, name: &str) -> Option<GgmlType> {
        match self.tensor(name)?.dtype.as_str() {
            "F32" => Some(GgmlType::F32),
            "F16" => Some(GgmlType::F16),
            "BF16" => Some(GgmlType::BF16),
            _ => None,
        }
    }

    fn raw_block(&self, name: &str) -> Option<Result<RawBlock>> {
        let t = self.tensor(name)?;
        let ty = match t.dtype.as_str() {
            "F32" => GgmlType::F32,
            "F16" => GgmlType::F16,
            "BF16" => GgmlType::BF16,
            _ => return None,
        };
        Some(self.raw(name).map(|bytes| (ty, t.shape.clone(), bytes)))
    }
}

/// A checkpoint split over several safetensors files by a diffusers/transformers `*.index.json`.
pub struct ShardedSafetensors {
    shards: BTreeMap<String, SafetensorsFile>,
    /// Tensor name → shard file name, in data order.
    names: Vec<(String, String)>,
    index: HashMap<String, usize>,
}

impl std::fmt::Debug for ShardedSafetensors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardedSafetensors")
            .field("shards", &self.shards.keys().collect::<Vec<_>>())
            .field("tensors", &self.names.len())
            .finish()
    }
}

impl ShardedSafetensors {
    /// The shard file names that the index JSON's `weight_map` refers to, sorted.
    pub fn shard_names(index_json: &str) -> Result<Vec<String>> {
        let map = weight_map(index_json)?;
        let mut names: Vec<String> = map.into_values().collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// Opens the shards named by `index_json`'s `weight_map` (tensor → shard file name) from `shards`
    /// (shard file name → bytes). Every shard the map names must be given and hold the tensors mapped to it.
    pub fn open(index_json: &str, shards: HashMap<String, Box<dyn ByteSource>>) -> Result<Self> {
        let map = weight_map(index_json)?;
        let mut shards = shards;
        let mut opened = BTreeMap::new();
        for shard in map.values() {
            if opened.contains_key(shard) {
                continue;
            }
            let source = shards
                .remove(shard)
                .ok_or_else(|| Error::Invalid(format!("the index names shard `{shard}`, which was not provided")))?;
            opened.insert(shard.clone(), SafetensorsFile::open(source)?);
        }
        for (name, shard) in &map {
            if opened[shard].tensor(name).is_none() {
                return Err(Error::Invalid(format!("the index puts `{name}` in `{shard}`, which does not hold it")));
            }
        }
        let mut names = Vec::with_capacity(map.len());
        for (shard, file) in &opened {
            for t in file.tensors() {
                if map.get(&t.name) == Some(shard) {
                    names.push((t.name.clone(), shard.clone()));
                }
            }
        }
        let index = names.iter().enumerate().map(|(i, (n, _))| (n.clone(), i)).collect();
        Ok(Self { shards: opened, names, index })
    }

    /// The opened shards by file name.
    pub fn shards(&self) -> &BTreeMap<String, SafetensorsFile> {
        &self.shards
    }

    /// The shard holding `name` and its header entry.
    pub fn tensor(&self, name: &str) -> Option<(&SafetensorsFile, &SafetensorsTensor)> {
        let (_, shard) = &self.names[*self.index.get(name)?];
        let file = &self.shards[shard];
        Some((file, file.tensor(name)?))
    }

    /// Every mapped tensor's header entry, shard by shard in data order.
    pub fn tensors(&self) -> impl Iterator<Item = &SafetensorsTensor> + Clone {
        self.names.iter().filter_map(|(name, shard)| self.shards[shard].tensor(name))
    }
}

/// A JSON object read entry by entry, refused when a name appears twice (`serde_json` maps keep the last one,
/// so a second tensor of the same name would silently replace the first).
struct UniqueEntries;

impl<'de> serde::Deserialize<'de> for UniqueEntries {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct Names;
        impl<'de> serde::de::Visitor<'de> for Names {
            type Value = UniqueEntries;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<UniqueEntries, A::Error> {
                let mut seen = std::collections::HashSet::new();
                while let Some(name) = map.next_key::<String>()? {
                    map.next_value::<serde::de::IgnoredAny>()?;
                    if !seen.insert(name.clone()) {
                        return Err(serde::de::Error::custom(format!("names `{name}` twice")));
                    }
                }
                Ok(UniqueEntries)
            }
        }
        deserializer.deserialize_map(Names)
    }
}

fn weight_map(index_json: &str) -> Result<BTreeMap<String, String>> {
    let json: Value = serde_json::from_str(index_json)
        .map_err(|e| Error::Invalid(format!("the safetensors index is not JSON ({e})")))?;
    let map = json
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| Error::Invalid("the safetensors index has no `weight_map` object".into()))?;
    #[derive(serde::Deserialize)]
    struct Index {
        #[serde(rename = "weight_map")]
        _weight_map: UniqueEntries,
    }
    serde_json::from_str::<Index>(index_json)
        .map_err(|e| Error::Invalid(format!("the safetensors index's weight_map {e}")))?;
    map.iter()
        .map(|(k, v)| match v.as_str() {
            Some(s) if s.is_empty() || s == "." || s == ".." || s.contains(['/', '\\', '\0']) => Err(Error::Invalid(
                format!("the safetensors index maps `{k}` to {s:?}, which is not a file name beside the index"),
            )),
            Some(s) => Ok((k.clone(), s.to_string())),
            None => {
                Err(Error::Invalid(format!("the safetensors index maps `{k}` to something that is not a file name")))
            }
        })
        .collect()
}

impl Weights for ShardedSafetensors {
    fn names(&self) -> Vec<String> {
        self.names.iter().map(|(n, _)| n.clone()).collect()
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.tensor(name).map(|(_, t)| t.shape.clone())
    }

    fn read(&self, name: &str) -> Result<HostTensor> {
        match self.tensor(name) {
            Some((file, _)) => file.read(name),
            None => Err(Error::Invalid(format!("no tensor `{name}` in the sharded checkpoint"))),
        }
    }

    fn raw_block(&self, name: &str) -> Option<Result<RawBlock>> {
        self.tensor(name)?.0.raw_block(name)
    }

    fn stored_type(&self, name: &str) -> Option<GgmlType> {
        self.tensor(name)?.0.stored_type(name)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Serializes `tensors` (name, dtype, shape, bytes) as a safetensors file, data in the given order.
    pub(crate) fn build(tensors: &[(&str, &str, Vec<usize>, Vec<u8>)], metadata: Option<(&str, &str)>) -> Vec<u8> {
        let mut header = serde_json::Map::new();
        let mut offset = 0;
        for (name, dtype, shape, bytes) in tensors {
            let entry =
                serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + bytes.len()]});
            header.insert(name.to_string(), entry);
            offset += bytes.len();
        }
        if let Some((k, v)) = metadata {
            header.insert("__metadata__".into(), serde_json::json!({ k: v }));
        }
        let header = serde_json::to_vec(&Value::Object(header)).unwrap();
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend(header);
        tensors.iter().for_each(|t| out.extend(&t.3));
        out
    }

    fn with_header(json: &str, data: usize) -> Vec<u8> {
        let mut out = (json.len() as u64).to_le_bytes().to_vec();
        out.extend(json.as_bytes());
        out.extend(vec![0u8; data]);
        out
    }

    fn open_err(bytes: Vec<u8>) -> String {
        SafetensorsFile::open(bytes).unwrap_err().to_string()
    }

    #[test]
    fn reads_f32_f16_bf16_and_metadata() {
        let f32s: Vec<u8> = [1.5f32, -2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let f16s: Vec<u8> = [0.25f32, 3.0].iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()).collect();
        let bf16s: Vec<u8> = [-1.0f32, 1024.0].iter().flat_map(|&v| bf16::from_f32(v).to_le_bytes()).collect();
        let file = SafetensorsFile::open(build(
            &[("a", "F32", vec![2], f32s), ("b", "F16", vec![1, 2], f16s), ("c", "BF16", vec![2, 1], bf16s)],
            Some(("format", "pt")),
        ))
        .unwrap();
        assert_eq!(file.names(), ["a", "b", "c"]);
        assert_eq!(file.metadata().get("format").map(String::as_str), Some("pt"));
        assert_eq!(file.read("a").unwrap().data, [1.5, -2.0]);
        assert_eq!(file.read("b").unwrap(), HostTensor::new(vec![1, 2], vec![0.25, 3.0]).unwrap());
        assert_eq!(file.read("c").unwrap().data, [-1.0, 1024.0]);
        assert!(file.require("d").unwrap_err().to_string().contains("missing tensor `d`"));
    }

    #[test]
    fn other_dtypes_open_but_fail_clearly_when_read() {
        let file = SafetensorsFile::open(build(&[("ids", "I64", vec![2], vec![0; 16])], None)).unwrap();
        assert_eq!(file.shape("ids"), Some(vec![2]));
        let err = file.read("ids").unwrap_err().to_string();
        assert!(err.contains("`ids` is stored as I64"), "{err}");
    }

    #[test]
    fn hostile_headers_are_errors() {
        assert!(open_err(vec![1, 2, 3]).contains("fewer than the 8-byte"));
        let mut truncated = build(&[("a", "F32", vec![2], vec![0; 8])], None);
        truncated.truncate(20);
        assert!(open_err(truncated).contains("truncated"));
        let mut huge = (200_000_000u64).to_le_bytes().to_vec();
        huge.extend([b' '; 16]);
        assert!(open_err(huge).contains("limit"));
        assert!(open_err(with_header("[1, 2]", 0)).contains("not a JSON object"));
        assert!(open_err(with_header("{nope", 0)).contains("not JSON"));
        let outside = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
        assert!(open_err(with_header(outside, 4)).contains("outside"));
        let wrong_len = r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#;
        assert!(open_err(with_header(wrong_len, 8)).contains("needs 12 bytes"));
        let overlap = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#;
        assert!(open_err(with_header(overlap, 12)).contains("overlap"));
        let overflow = r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}}"#;
        assert!(open_err(with_header(overflow, 8)).contains("overflows"));
        let twice = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#;
        assert!(open_err(with_header(twice, 8)).contains("names `a` twice"));
        let unknown = r#"{"a":{"dtype":"Q7","shape":[2],"data_offsets":[0,8]}}"#;
        assert!(open_err(with_header(unknown, 8)).contains("unknown dtype `Q7`"));
    }

    #[test]
    fn sharded_reads_through_the_weight_map() {
        let one = build(&[("a", "F32", vec![1], 1f32.to_le_bytes().to_vec())], None);
        let two = build(
            &[("b", "F32", vec![1], 2f32.to_le_bytes().to_vec()), ("x", "F32", vec![1], 9f32.to_le_bytes().to_vec())],
            None,
        );
        let index = r#"{"metadata":{},"weight_map":{"a":"m-1.safetensors","b":"m-2.safetensors"}}"#;
        assert_eq!(ShardedSafetensors::shard_names(index).unwrap(), ["m-1.safetensors", "m-2.safetensors"]);
        let shards = |one: Vec<u8>, two: Vec<u8>| -> HashMap<String, Box<dyn ByteSource>> {
            HashMap::from([
                ("m-1.safetensors".to_string(), Box::new(one) as Box<dyn ByteSource>),
                ("m-2.safetensors".to_string(), Box::new(two) as Box<dyn ByteSource>),
            ])
        };
        let sharded = ShardedSafetensors::open(index, shards(one.clone(), two.clone())).unwrap();
        assert_eq!(sharded.names(), ["a", "b"]);
        assert_eq!(sharded.read("b").unwrap().data, [2.0]);
        assert!(sharded.read("x").is_err());
        let err = ShardedSafetensors::open(index, shards(two.clone(), one)).unwrap_err().to_string();
        assert!(err.contains("does not hold it"), "{err}");
        for outside in ["../m-1.safetensors", "/etc/passwd", "sub\\\\m.safetensors", ""] {
            let index = format!(r#"{{"weight_map":{{"a":"{outside}"}}}}"#);
            let err = ShardedSafetensors::shard_names(&index).unwrap_err().to_string();
            assert!(err.contains("not a file name beside the index"), "{outside}: {err}");
        }
        let twice = r#"{"weight_map":{"a":"m-1.safetensors","a":"m-2.safetensors"}}"#;
        assert!(ShardedSafetensors::shard_names(twice).unwrap_err().to_string().contains("names `a` twice"));
        let missing = HashMap::from([("m-1.safetensors".to_string(), Box::new(two) as Box<dyn ByteSource>)]);
        let err = ShardedSafetensors::open(index, missing).unwrap_err().to_string();
        assert!(err.contains("not provided"), "{err}");
    }
}
