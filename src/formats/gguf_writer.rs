//! Writing GGUF v3 files (<https://github.com/ggml-org/ggml/blob/master/docs/gguf.md>): string and u32 metadata
//! and tensors in any ggml type, streamed one tensor at a time so that a file of many gigabytes never sits in
//! memory (`kontext make-random`). [`super::gguf::GgufFile`] reads what this writes.

use std::io::Write;

use super::quant::GgmlType;
use crate::{Error, Result};

/// The data alignment written (`general.alignment` is left at its default).
const ALIGNMENT: u64 = 32;
/// GGUF metadata value types.
const TYPE_U32: u32 = 4;
const TYPE_STRING: u32 = 8;

/// A metadata value this writer supports.
#[derive(Debug, Clone, PartialEq)]
pub enum MetadataValue {
    /// `GGUF_TYPE_UINT32`.
    U32(u32),
    /// `GGUF_TYPE_STRING`.
    String(String),
}

/// One tensor to write: its name, type and logical shape in PyTorch order (`[out, in]` for a Linear).
#[derive(Debug, Clone, PartialEq)]
pub struct TensorEntry {
    /// Tensor name.
    pub name: String,
    /// Storage type.
    pub ggml_type: GgmlType,
    /// Logical shape, outermost first.
    pub shape: Vec<usize>,
}

impl TensorEntry {
    /// Bytes of its data.
    pub fn bytes(&self) -> Result<u64> {
        let values: u64 = self.shape.iter().map(|&d| d as u64).product();
        let innermost = self.shape.last().copied().unwrap_or(1);
        if !innermost.is_multiple_of(self.ggml_type.block_size()) {
            return Err(Error::Invalid(format!(
                "`{}`: rows of {innermost} values do not fill {} blocks of {}",
                self.name,
                self.ggml_type,
                self.ggml_type.block_size()
            )));
        }
        self.ggml_type.bytes_for(values)
    }
}

fn string(out: &mut impl Write, s: &str) -> std::io::Result<()> {
    out.write_all(&(s.len() as u64).to_le_bytes())?;
    out.write_all(s.as_bytes())
}

fn padding(out: &mut impl Write, written: u64) -> std::io::Result<u64> {
    let pad = written.next_multiple_of(ALIGNMENT) - written;
    out.write_all(&vec![0; pad as usize])?;
    Ok(pad)
}

/// Writes a GGUF file: `metadata`, then every tensor of `tensors` with the bytes `data(i)` returns for tensor `i`
/// (exactly [`TensorEntry::bytes`] of them; called in order, once each). Returns the bytes written.
pub fn write_gguf(
    out: &mut impl Write,
    metadata: &[(&str, MetadataValue)],
    tensors: &[TensorEntry],
    mut data: impl FnMut(usize) -> Result<Vec<u8>>,
) -> Result<u64> {
    let io = |e: std::io::Error| Error::Invalid(format!("cannot write the GGUF file: {e}"));
    let sizes = tensors.iter().map(TensorEntry::bytes).collect::<Result<Vec<u64>>>()?;
    let mut header = Vec::new();
    header.extend_from_slice(b"GGUF");
    header.extend_from_slice(&3u32.to_le_bytes());
    header.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    header.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (key, value) in metadata {
        string(&mut header, key).map_err(io)?;
        match value {
            MetadataValue::U32(v) => {
                header.extend_from_slice(&TYPE_U32.to_le_bytes());
                header.extend_from_slice(&v.to_le_bytes());
            }
            MetadataValue::String(s) => {
                header.extend_from_slice(&TYPE_STRING.to_le_bytes());
                string(&mut header, s).map_err(io)?;
            }
        }
    }
    let mut offset = 0u64;
    for (tensor, &size) in tensors.iter().zip(&sizes) {
        string(&mut header, &tensor.name).map_err(io)?;
        header.extend_from_slice(&(tensor.shape.len() as u32).to_le_bytes());
        for &d in tensor.shape.iter().rev() {
            header.extend_from_slice(&(d as u64).to_le_bytes()); // ggml order: innermost first
        }
        header.extend_from_slice(&tensor.ggml_type.id().to_le_bytes());
        header.extend_from_slice(&offset.to_le_bytes());
        offset = (offset + size).next_multiple_of(ALIGNMENT);
    }
    out.write_all(&header).map_err(io)?;
    let mut written = header.len() as u64;
    written += padding(out, written).map_err(io)?;
    for (i, (tensor, &size)) in tensors.iter().zip(&sizes).enumerate() {
        let bytes = data(i)?;
        if bytes.len() as u64 != size {
            return Err(Error::Invalid(format!(
                "`{}`: {} bytes given for a {} tensor of {:?} ({size} bytes)",
                tensor.name,
                bytes.len(),
                tensor.ggml_type,
                tensor.shape
            )));
        }
        out.write_all(&bytes).map_err(io)?;
        written += size;
        written += padding(out, written).map_err(io)?;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::gguf::GgufFile;
    use crate::formats::quant::{dequantize, quantize_q8_0};

    #[test]
    fn what_it_writes_reads_back() {
        let weight: Vec<f32> = (0..2 * 64).map(|i| (i as f32 - 60.0) / 50.0).collect();
        let q8 = quantize_q8_0(&weight).unwrap();
        let bias: Vec<u8> = [0.5f32, -1.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let tensors = vec![
            TensorEntry { name: "layer.weight".into(), ggml_type: GgmlType::Q8_0, shape: vec![2, 64] },
            TensorEntry { name: "layer.bias".into(), ggml_type: GgmlType::F32, shape: vec![2] },
        ];
        let metadata = [("general.architecture", MetadataValue::String("flux".into()))];
        let mut file = Vec::new();
        let payload = [q8.clone(), bias.clone()];
        let written = write_gguf(&mut file, &metadata, &tensors, |i| Ok(payload[i].clone())).unwrap();
        assert_eq!(written, file.len() as u64);
        let gguf = GgufFile::open(file).unwrap();
        assert_eq!((gguf.version(), gguf.architecture()), (3, Some("flux")));
        let (ty, shape, bytes) = gguf.raw("layer.weight").unwrap();
        assert_eq!((ty, shape, &bytes), (GgmlType::Q8_0, vec![2, 64], &q8));
        assert_eq!(dequantize(ty, &bytes, 128).unwrap(), dequantize(GgmlType::Q8_0, &q8, 128).unwrap());
        assert_eq!(gguf.raw("layer.bias").unwrap(), (GgmlType::F32, vec![2], bias));
    }

    #[test]
    fn wrong_sizes_and_partial_blocks_are_refused() {
        let entry = TensorEntry { name: "w".into(), ggml_type: GgmlType::Q4_0, shape: vec![2, 48] };
        let err = write_gguf(&mut Vec::new(), &[], &[entry], |_| Ok(vec![])).unwrap_err().to_string();
        assert_eq!(err, "`w`: rows of 48 values do not fill Q4_0 blocks of 32");
        let entry = TensorEntry { name: "w".into(), ggml_type: GgmlType::Q4_0, shape: vec![2, 64] };
        let err = write_gguf(&mut Vec::new(), &[], &[entry], |_| Ok(vec![0; 10])).unwrap_err().to_string();
        assert_eq!(err, "`w`: 10 bytes given for a Q4_0 tensor of [2, 64] (72 bytes)");
    }
}
