//! GGUF, llama.cpp's file format (version 3): reading a file's metadata and tensor table, and
//! writing a file from metadata and tensors. Tensor data stays bytes in its ggml type; nothing here
//! quantizes or dequantizes.
//!
//! Layout: `GGUF`, version, tensor count, metadata count; the metadata (key, type, value); per tensor
//! its name, dimensions (ggml order: the fastest-varying first), type and offset; then, from the next
//! multiple of `general.alignment` (32 unless set), the tensor data, each tensor aligned.

use std::borrow::Cow;
use std::io::Write;
use std::path::Path;

pub const DEFAULT_ALIGNMENT: usize = 32;

/// Why a GGUF header could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GgufError {
    #[error("not a GGUF file")]
    NotGguf,
    #[error("GGUF version {0} (2 or 3 expected)")]
    Version(u32),
    #[error("truncated")]
    Truncated,
    #[error("a length of {0} past the end")]
    Length(u64),
    #[error("a string that is not UTF-8")]
    NotUtf8,
    #[error("metadata of unknown type {0}")]
    UnknownType(u32),
    #[error("{key}: {error}")]
    Metadata { key: String, error: Box<GgufError> },
    #[error("{name}: {dims} dimensions")]
    Dimensions { name: String, dims: u32 },
    #[error("alignment {0}")]
    Alignment(usize),
    #[error("{0}: data past the end of the file")]
    DataPastEnd(String),
    #[error("{0}: too large")]
    TooLarge(String),
}

/// ggml tensor types kenning writes.
pub const F32: u32 = 0;
pub const F16: u32 = 1;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    /// The element type and the elements (all of that type).
    Array(u32, Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    fn type_id(&self) -> u32 {
        match self {
            Value::U8(_) => 0,
            Value::I8(_) => 1,
            Value::U16(_) => 2,
            Value::I16(_) => 3,
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::String(_) => 8,
            Value::Array(..) => 9,
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// An integer of any width that is not negative.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Value::U8(v) => out.push(*v),
            Value::I8(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::Bool(v) => out.push(u8::from(*v)),
            Value::String(s) => write_string(out, s),
            Value::Array(element, items) => {
                out.extend_from_slice(&element.to_le_bytes());
                out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for item in items {
                    item.write(out);
                }
            }
            Value::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
        }
    }
}

fn write_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// One entry of the tensor table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `[columns, rows, …]`.
    pub dims: Vec<u64>,
    pub ggml_type: u32,
    /// From the start of the data section.
    pub offset: u64,
}

/// A GGUF file's metadata and tensor table (the data stays in the caller's bytes).
#[derive(Debug, Clone)]
pub struct Gguf {
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: usize,
    /// Where the data section starts in the file.
    pub data_start: usize,
}

/// `(elements per block, bytes per block)` of the ggml types with a fixed block layout.
fn block_layout(ggml_type: u32) -> Option<(u64, u64)> {
    Some(match ggml_type {
        0 => (1, 4),      // F32
        1 => (1, 2),      // F16
        2 => (32, 18),    // Q4_0
        3 => (32, 20),    // Q4_1
        6 => (32, 22),    // Q5_0
        7 => (32, 24),    // Q5_1
        8 => (32, 34),    // Q8_0
        9 => (32, 36),    // Q8_1
        10 => (256, 84),  // Q2_K
        11 => (256, 110), // Q3_K
        12 => (256, 144), // Q4_K
        13 => (256, 176), // Q5_K
        14 => (256, 210), // Q6_K
        15 => (256, 292), // Q8_K
        24 => (1, 1),     // I8
        25 => (1, 2),     // I16
        26 => (1, 4),     // I32
        27 => (1, 8),     // I64
        28 => (1, 8),     // F64
        30 => (1, 2),     // BF16
        _ => return None,
    })
}

/// Bytes of a tensor of `ggml_type` and `dims`, when the type has a fixed block layout.
pub fn tensor_size(ggml_type: u32, dims: &[u64]) -> Option<u64> {
    let (block, bytes) = block_layout(ggml_type)?;
    let (first, rest) = dims.split_first()?;
    if first % block != 0 {
        return None;
    }
    rest.iter().try_fold((first / block).checked_mul(bytes)?, |n, &d| n.checked_mul(d))
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], GgufError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len()).ok_or(GgufError::Truncated)?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], GgufError> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }

    fn u32(&mut self) -> Result<u32, GgufError> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, GgufError> {
        self.array().map(u64::from_le_bytes)
    }

    fn len(&mut self) -> Result<usize, GgufError> {
        let n = self.u64()?;
        usize::try_from(n).ok().filter(|&n| n <= self.bytes.len() - self.at).ok_or(GgufError::Length(n))
    }

    fn string(&mut self) -> Result<String, GgufError> {
        let n = self.len()?;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| GgufError::NotUtf8)
    }

    fn value(&mut self, type_id: u32, depth: usize) -> Result<Value, GgufError> {
        Ok(match type_id {
            0 => Value::U8(self.array::<1>()?[0]),
            1 => Value::I8(i8::from_le_bytes(self.array()?)),
            2 => Value::U16(u16::from_le_bytes(self.array()?)),
            3 => Value::I16(i16::from_le_bytes(self.array()?)),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(i32::from_le_bytes(self.array()?)),
            6 => Value::F32(f32::from_le_bytes(self.array()?)),
            7 => Value::Bool(self.array::<1>()?[0] != 0),
            8 => Value::String(self.string()?),
            9 if depth < 4 => {
                let element = self.u32()?;
                let n = self.len()?;
                let items = (0..n).map(|_| self.value(element, depth + 1)).collect::<Result<_, _>>()?;
                Value::Array(element, items)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.array()?)),
            12 => Value::F64(f64::from_le_bytes(self.array()?)),
            other => return Err(GgufError::UnknownType(other)),
        })
    }
}

impl Gguf {
    /// Parses the header of a GGUF file held in `bytes`, checking that every tensor lies inside it.
    pub fn read(bytes: &[u8]) -> Result<Self, GgufError> {
        let mut r = Reader { bytes, at: 0 };
        if r.take(4).ok() != Some(b"GGUF".as_slice()) {
            return Err(GgufError::NotGguf);
        }
        let version = r.u32()?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::Version(version));
        }
        let (n_tensors, n_metadata) = (r.len()?, r.len()?);
        let mut metadata = Vec::with_capacity(n_metadata);
        for _ in 0..n_metadata {
            let key = r.string()?;
            let type_id = r.u32()?;
            let value = r.value(type_id, 0).map_err(|e| GgufError::Metadata { key: key.clone(), error: Box::new(e) })?;
            metadata.push((key, value));
        }
        let mut tensors = Vec::with_capacity(n_tensors);
        for _ in 0..n_tensors {
            let name = r.string()?;
            let n_dims = r.u32()?;
            if n_dims > 4 {
                return Err(GgufError::Dimensions { name, dims: n_dims });
            }
            let dims = (0..n_dims).map(|_| r.u64()).collect::<Result<_, _>>()?;
            let (ggml_type, offset) = (r.u32()?, r.u64()?);
            tensors.push(TensorInfo { name, dims, ggml_type, offset });
        }
        let alignment = metadata
            .iter()
            .find(|(k, _)| k == "general.alignment")
            .and_then(|(_, v)| v.as_u64())
            .map_or(DEFAULT_ALIGNMENT, |a| a as usize);
        if alignment == 0 || !alignment.is_power_of_two() {
            return Err(GgufError::Alignment(alignment));
        }
        let gguf = Self { metadata, tensors, alignment, data_start: r.at.div_ceil(alignment) * alignment };
        for i in 0..gguf.tensors.len() {
            gguf.tensor_data(bytes, i)?;
        }
        Ok(gguf)
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The bytes of tensor `index`: sized by its type, or for a type without a fixed block layout,
    /// up to the next tensor (or the end of the file).
    pub fn tensor_data<'a>(&self, bytes: &'a [u8], index: usize) -> Result<&'a [u8], GgufError> {
        let t = &self.tensors[index];
        let start = usize::try_from(t.offset).ok().and_then(|o| o.checked_add(self.data_start)).filter(|&s| s <= bytes.len());
        let start = start.ok_or_else(|| GgufError::DataPastEnd(t.name.clone()))?;
        let size = match tensor_size(t.ggml_type, &t.dims) {
            Some(size) => usize::try_from(size).map_err(|_| GgufError::TooLarge(t.name.clone()))?,
            None => {
                let next = self.tensors.iter().map(|o| o.offset).filter(|&o| o > t.offset).min();
                next.map_or(bytes.len() - start, |n| (n - t.offset) as usize)
            }
        };
        bytes.get(start..start.saturating_add(size)).ok_or_else(|| GgufError::DataPastEnd(t.name.clone()))
    }
}

/// A tensor to write.
pub struct OutTensor<'a> {
    pub name: String,
    /// ggml order.
    pub dims: Vec<u64>,
    pub ggml_type: u32,
    pub data: Cow<'a, [u8]>,
}

/// Writes a GGUF v3 file: `metadata` in order, then the tensors, aligned to `alignment` (which
/// should be the metadata's `general.alignment` when it has one). The file is synced.
pub fn write(path: &Path, metadata: &[(String, Value)], tensors: &[OutTensor], alignment: usize) -> std::io::Result<()> {
    let pad = |n: usize| n.div_ceil(alignment) * alignment;
    let mut head = Vec::new();
    head.extend_from_slice(b"GGUF");
    head.extend_from_slice(&3u32.to_le_bytes());
    head.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    head.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (key, value) in metadata {
        write_string(&mut head, key);
        head.extend_from_slice(&value.type_id().to_le_bytes());
        value.write(&mut head);
    }
    let mut offset = 0usize;
    for t in tensors {
        write_string(&mut head, &t.name);
        head.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            head.extend_from_slice(&d.to_le_bytes());
        }
        head.extend_from_slice(&t.ggml_type.to_le_bytes());
        head.extend_from_slice(&(offset as u64).to_le_bytes());
        offset = pad(offset + t.data.len());
    }
    head.resize(pad(head.len()), 0);

    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    file.write_all(&head)?;
    for t in tensors {
        file.write_all(&t.data)?;
        file.write_all(&vec![0; pad(t.data.len()) - t.data.len()])?;
    }
    file.into_inner().map_err(|e| e.into_error())?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (Vec<(String, Value)>, Vec<OutTensor<'static>>) {
        let metadata = vec![
            ("general.architecture".to_owned(), Value::String("llama".into())),
            ("llama.block_count".to_owned(), Value::U32(2)),
            ("llama.rope.freq_base".to_owned(), Value::F32(10000.0)),
            ("tokenizer.ggml.tokens".to_owned(), Value::Array(8, vec![Value::String("<s>".into()), Value::String("é".into())])),
            ("tokenizer.ggml.scores".to_owned(), Value::Array(6, vec![Value::F32(0.0), Value::F32(-1.5)])),
            ("general.flags".to_owned(), Value::Array(7, vec![Value::Bool(true)])),
            ("x.i64".to_owned(), Value::I64(-3)),
            ("x.f64".to_owned(), Value::F64(0.25)),
        ];
        let tensors = vec![
            OutTensor { name: "token_embd.weight".into(), dims: vec![32, 3], ggml_type: 2, data: Cow::Owned((0..54).collect()) },
            OutTensor { name: "output_norm.weight".into(), dims: vec![5], ggml_type: F32, data: Cow::Owned(vec![7; 20]) },
        ];
        (metadata, tensors)
    }

    #[test]
    fn what_is_written_reads_back_and_rewrites_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let (metadata, tensors) = sample();
        let path = dir.path().join("a.gguf");
        write(&path, &metadata, &tensors, DEFAULT_ALIGNMENT).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let gguf = Gguf::read(&bytes).unwrap();
        assert_eq!(gguf.metadata, metadata);
        assert_eq!(gguf.get("llama.block_count").and_then(Value::as_u64), Some(2));
        assert_eq!(gguf.tensors.iter().map(|t| (t.name.as_str(), t.dims.clone(), t.ggml_type)).collect::<Vec<_>>(), vec![
            ("token_embd.weight", vec![32, 3], 2),
            ("output_norm.weight", vec![5], F32)
        ]);
        assert!(gguf.tensors.iter().all(|t| t.offset.is_multiple_of(32)) && gguf.data_start.is_multiple_of(32));
        for (i, t) in tensors.iter().enumerate() {
            assert_eq!(gguf.tensor_data(&bytes, i).unwrap(), &t.data[..]);
        }
        // Copying every tensor as read gives the same file.
        let copied: Vec<OutTensor> = gguf
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| OutTensor { name: t.name.clone(), dims: t.dims.clone(), ggml_type: t.ggml_type, data: Cow::Borrowed(gguf.tensor_data(&bytes, i).unwrap()) })
            .collect();
        let again = dir.path().join("b.gguf");
        write(&again, &gguf.metadata, &copied, gguf.alignment).unwrap();
        assert_eq!(std::fs::read(&again).unwrap(), bytes);
    }

    #[test]
    fn sizes_follow_the_block_layout() {
        assert_eq!(tensor_size(F32, &[5, 2]), Some(40));
        assert_eq!(tensor_size(12, &[512, 3]), Some(2 * 144 * 3), "Q4_K: 256 per 144-byte block");
        assert_eq!(tensor_size(8, &[33]), None, "not whole blocks");
        assert_eq!(tensor_size(99, &[32]), None);
    }

    #[test]
    fn damaged_files_are_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let (metadata, tensors) = sample();
        let path = dir.path().join("a.gguf");
        write(&path, &metadata, &tensors, DEFAULT_ALIGNMENT).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert!(Gguf::read(b"GGML....").is_err());
        // (The last 12 bytes are the last tensor's padding.)
        for cut in [3, 10, 30, 100, bytes.len() - 13] {
            assert!(Gguf::read(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut huge = bytes.clone();
        huge[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(Gguf::read(&huge).is_err());
    }
}
