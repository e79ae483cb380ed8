//! The model file ("CAEM"): a TOML configuration and a list of named tensors.
//!
//! ```text
//! "CAEM" | version u8 = 1 | config length u32 | config TOML | entry count u32 | entries
//! entry: name length u16 | name | dtype u8 (1 f16, 2 f32, 3 i32, 4 i64) | rank u8 |
//!        dims u32 × rank | values, little-endian (dtype 5: i16)
//! ```
//! All lengths are little-endian. Float weights of the networks are stored as f16; the
//! integer hyper-synthesis and the probability tables as integers.

use std::collections::HashMap;

const MAGIC: &[u8; 4] = b"CAEM";
const VERSION: u8 = 1;

/// Values of one tensor.
#[derive(Clone, Debug, PartialEq)]
pub enum Values {
    F16(Vec<half::f16>),
    F32(Vec<f32>),
    I32(Vec<i32>),
    I64(Vec<i64>),
    I16(Vec<i16>),
}

impl Values {
    fn len(&self) -> usize {
        match self {
            Values::F16(v) => v.len(),
            Values::F32(v) => v.len(),
            Values::I32(v) => v.len(),
            Values::I64(v) => v.len(),
            Values::I16(v) => v.len(),
        }
    }

    /// As f32 (floats only).
    pub fn to_f32(&self) -> Option<Vec<f32>> {
        match self {
            Values::F16(v) => Some(v.iter().map(|x| x.to_f32()).collect()),
            Values::F32(v) => Some(v.clone()),
            _ => None,
        }
    }
}

/// A named tensor of the model file.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub shape: Vec<usize>,
    pub values: Values,
}

/// A parsed model file.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Blob {
    pub config: String,
    pub entries: Vec<(String, Entry)>,
}

/// Why a model file is unusable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BlobError {
    #[error("model file: {0}")]
    Malformed(&'static str),
    #[error("model file: tensor {0} is missing or has the wrong type or shape")]
    BadTensor(String),
}

impl Blob {
    pub fn push(&mut self, name: impl Into<String>, shape: &[usize], values: Values) {
        assert_eq!(shape.iter().product::<usize>(), values.len(), "shape of tensor");
        self.entries.push((name.into(), Entry { shape: shape.to_vec(), values }));
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&(self.config.len() as u32).to_le_bytes());
        out.extend_from_slice(self.config.as_bytes());
        out.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for (name, e) in &self.entries {
            out.extend_from_slice(&(name.len() as u16).to_le_bytes());
            out.extend_from_slice(name.as_bytes());
            let dtype = match e.values {
                Values::F16(_) => 1u8,
                Values::F32(_) => 2,
                Values::I32(_) => 3,
                Values::I64(_) => 4,
                Values::I16(_) => 5,
            };
            out.push(dtype);
            out.push(e.shape.len() as u8);
            for &d in &e.shape {
                out.extend_from_slice(&(d as u32).to_le_bytes());
            }
            match &e.values {
                Values::F16(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
                Values::F32(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
                Values::I32(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
                Values::I64(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
                Values::I16(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            }
        }
        out
    }

    pub fn parse(bytes: &[u8]) -> Result<Self, BlobError> {
        let mut r = Reader { b: bytes, at: 0 };
        if r.take(4)? != MAGIC {
            return Err(BlobError::Malformed("not a caec model (bad magic)"));
        }
        if r.take(1)?[0] != VERSION {
            return Err(BlobError::Malformed("unsupported model file version"));
        }
        let n = r.u32()? as usize;
        let config = std::str::from_utf8(r.take(n)?)
            .map_err(|_| BlobError::Malformed("config is not UTF-8"))?
            .to_string();
        let count = r.u32()? as usize;
        let mut entries = Vec::new();
        for _ in 0..count {
            let n = u16::from_le_bytes(r.take(2)?.try_into().expect("2 bytes")) as usize;
            let name = std::str::from_utf8(r.take(n)?)
                .map_err(|_| BlobError::Malformed("tensor name is not UTF-8"))?
                .to_string();
            let dtype = r.take(1)?[0];
            let rank = r.take(1)?[0] as usize;
            let mut shape = Vec::with_capacity(rank);
            for _ in 0..rank {
                shape.push(r.u32()? as usize);
            }
            let len = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or(BlobError::Malformed("shape overflows"))?;
            let width = match dtype {
                1 | 5 => 2,
                2 | 3 => 4,
                4 => 8,
                _ => return Err(BlobError::Malformed("unknown tensor type")),
            };
            let raw = r.take(len.checked_mul(width).ok_or(BlobError::Malformed("shape overflows"))?)?;
            let values = match dtype {
                1 => Values::F16(raw.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]])).collect()),
                2 => Values::F32(raw.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4"))).collect()),
                5 => Values::I16(raw.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]])).collect()),
                3 => Values::I32(raw.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().expect("4"))).collect()),
                _ => Values::I64(raw.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8"))).collect()),
            };
            entries.push((name, Entry { shape, values }));
        }
        if r.at != bytes.len() {
            return Err(BlobError::Malformed("trailing bytes"));
        }
        Ok(Blob { config, entries })
    }

    pub fn map(&self) -> HashMap<&str, &Entry> {
        self.entries.iter().map(|(n, e)| (n.as_str(), e)).collect()
    }
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], BlobError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.b.len()).ok_or(BlobError::Malformed("truncated"))?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn u32(&mut self) -> Result<u32, BlobError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_truncation() {
        let mut b = Blob { config: "n = 1".into(), entries: vec![] };
        b.push("a", &[2, 2], Values::F16(vec![half::f16::from_f32(1.5); 4]));
        b.push("b", &[3], Values::I64(vec![-1, 0, 1 << 40]));
        b.push("c", &[1], Values::I32(vec![7]));
        b.push("d", &[2], Values::I16(vec![-32767, 32767]));
        let bytes = b.to_bytes();
        assert_eq!(Blob::parse(&bytes).unwrap(), b);
        for n in 0..bytes.len() {
            assert!(Blob::parse(&bytes[..n]).is_err());
        }
    }
}
