//! Entropy models as integer probability tables, and coding of symbol tensors with
//! constriction's ANS coder.
//!
//! A symbol stream is a sequence of integer values, each with the index of the table that
//! codes it. Values outside a table's range go through the escape path (see
//! `docs/format.md`), so that no value is ever impossible to code.
#![forbid(unsafe_code)]

mod tables;

pub use tables::{
    default_scale_table, gaussian_table, normal_cdf, scale_table, CdfTable, TableError, MAX_TABLE_LEN,
    PRECISION, TOTAL,
};

use constriction::stream::model::{ContiguousCategoricalEntropyModel, UniformModel};
use constriction::stream::stack::DefaultAnsCoder;
use constriction::stream::{Decode, Encode};
use constriction::UnwrapInfallible;

type Categorical = ContiguousCategoricalEntropyModel<u32, Vec<u32>, 16>;

/// Why a stream could not be coded or decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EntropyError {
    #[error("symbol {index} uses table {table}, but only {count} tables exist")]
    NoSuchTable { index: usize, table: usize, count: usize },
    #[error(transparent)]
    Table(#[from] TableError),
    #[error("corrupted entropy-coded stream: {0}")]
    Corrupt(&'static str),
    #[error("entropy coder failed: {0}")]
    Coder(String),
}

/// A set of tables prepared for coding.
pub struct TableSet {
    tables: Vec<CdfTable>,
    models: Vec<Categorical>,
}

impl std::fmt::Debug for TableSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableSet").field("tables", &self.tables.len()).finish()
    }
}

impl TableSet {
    /// Validate the tables and build their coding models.
    pub fn new(tables: Vec<CdfTable>) -> Result<Self, EntropyError> {
        let models = tables
            .iter()
            .map(|t| {
                t.validate()?;
                Categorical::from_nonzero_fixed_point_probabilities(&t.probs, false)
                    .map_err(|()| EntropyError::Table(TableError::BadTotal(0)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TableSet { tables, models })
    }

    /// The tables, in index order.
    pub fn tables(&self) -> &[CdfTable] {
        &self.tables
    }

    /// Number of tables.
    pub fn len(&self) -> usize {
        self.tables.len()
    }

    /// Whether the set has no tables.
    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }

    /// Information content in bits of coding `value` with table `table` (escape included).
    pub fn bits(&self, value: i32, table: usize) -> f64 {
        let t = &self.tables[table];
        let n = t.range_len();
        let idx = value as i64 - t.offset as i64;
        let p = |i: usize| t.probs[i] as f64 / TOTAL as f64;
        if idx >= 0 && (idx as usize) < n {
            -p(idx as usize).log2()
        } else {
            let b = 32 - zigzag(value).leading_zeros();
            -p(n).log2() + (33f64).log2() + b as f64
        }
    }

    /// Code `values[i]` with table `table_of[i]` for every `i`, in order, as a stream of
    /// its own ([`Packing::Words`], the form of version-1 files).
    pub fn encode(&self, values: &[i32], table_of: &[u16]) -> Result<Vec<u8>, EntropyError> {
        let mut stack = StackEncoder::new();
        stack.push(self, values, table_of)?;
        Ok(stack.finish(Packing::Words))
    }

    /// Decode one value per entry of `table_of` from a stream of its own
    /// ([`Packing::Words`]); see [`StackDecoder::pop`].
    pub fn decode(
        &self,
        bytes: &[u8],
        count: usize,
        table_of: impl FnMut(usize) -> usize,
    ) -> Result<Vec<i32>, EntropyError> {
        let mut stack = StackDecoder::new(bytes, Packing::Words)?;
        let values = stack.pop(self, count, table_of)?;
        stack.finish()?;
        Ok(values)
    }
}

/// How an ANS stack's 32-bit words are stored as bytes: little-endian, and either whole
/// (version-1 files) or with the zero high bytes of the last word left out (version 2; the
/// last byte of a non-empty stream is then never zero, so each stack has one byte form).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Packing {
    Words,
    Trimmed,
}

/// Groups of symbols coded on one ANS stack. ANS is last in, first out: push the group that
/// is decoded last first.
pub struct StackEncoder {
    coder: DefaultAnsCoder,
}

impl Default for StackEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl StackEncoder {
    /// An empty stack.
    pub fn new() -> Self {
        StackEncoder { coder: DefaultAnsCoder::new() }
    }

    /// Push `values[i]` coded with table `table_of[i]` of `set`, so that a decoder pops them
    /// in order.
    pub fn push(&mut self, set: &TableSet, values: &[i32], table_of: &[u16]) -> Result<(), EntropyError> {
        assert_eq!(values.len(), table_of.len(), "one table index per value");
        let coder = &mut self.coder;
        let err = |e: constriction::CoderError<_, _>| EntropyError::Coder(format!("{e}"));
        // ANS is a stack: push in reverse so that the decoder pops in order.
        for i in (0..values.len()).rev() {
            let table = table_of[i] as usize;
            let t = set.tables.get(table).ok_or(EntropyError::NoSuchTable {
                index: i,
                table,
                count: set.tables.len(),
            })?;
            let n = t.range_len();
            let idx = values[i] as i64 - t.offset as i64;
            if idx >= 0 && (idx as usize) < n {
                coder.encode_symbol(idx as usize, &set.models[table]).map_err(err)?;
            } else {
                let code = zigzag(values[i]);
                let bits = 32 - code.leading_zeros();
                let chunks = bits.div_ceil(16);
                // Pushed in reverse of the decoding order: last chunk first.
                for c in (0..chunks).rev() {
                    let width = chunk_width(c, chunks, bits);
                    // width >= 1 here: chunks > 0 only when bits > 0.
                    let chunk = (code >> (16 * c)) & ((1u32 << width) - 1);
                    coder.encode_symbol(chunk as usize, UniformModel::<u32, 24>::new(1 << width)).map_err(err)?;
                }
                coder.encode_symbol(bits as usize, UniformModel::<u32, 24>::new(33)).map_err(err)?;
                coder.encode_symbol(n, &set.models[table]).map_err(err)?;
            }
        }
        Ok(())
    }

    /// The stack's bytes.
    pub fn finish(self, packing: Packing) -> Vec<u8> {
        let words = self.coder.into_compressed().unwrap_infallible();
        let mut bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        if packing == Packing::Trimmed {
            // The last word is never zero (constriction's stacks end in a non-zero word).
            while bytes.last() == Some(&0) {
                bytes.pop();
            }
        }
        bytes
    }
}

/// An ANS stack being decoded, group by group.
pub struct StackDecoder {
    coder: DefaultAnsCoder,
}

impl StackDecoder {
    /// Read a stack stored in `packing` form.
    pub fn new(bytes: &[u8], packing: Packing) -> Result<Self, EntropyError> {
        let mut bytes = bytes.to_vec();
        match packing {
            Packing::Words if bytes.len() % 4 != 0 => {
                return Err(EntropyError::Corrupt("length is not a whole number of 32-bit words"));
            }
            Packing::Trimmed if bytes.last() == Some(&0) => {
                return Err(EntropyError::Corrupt("stream ends with a zero byte"));
            }
            _ => bytes.resize(bytes.len().next_multiple_of(4), 0),
        }
        let words: Vec<u32> =
            bytes.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        let coder = DefaultAnsCoder::from_compressed(words)
            .map_err(|_| EntropyError::Corrupt("stream ends with a zero word"))?;
        Ok(StackDecoder { coder })
    }

    /// Pop `count` values, value `i` with table `table_of(i)` of `set` (the tables may be
    /// chosen lazily: `table_of` is called with the index of each value in turn).
    pub fn pop(
        &mut self,
        set: &TableSet,
        count: usize,
        mut table_of: impl FnMut(usize) -> usize,
    ) -> Result<Vec<i32>, EntropyError> {
        let coder = &mut self.coder;
        let mut out = Vec::with_capacity(count);
        for i in 0..count {
            let table = table_of(i);
            let (t, model) = match (set.tables.get(table), set.models.get(table)) {
                (Some(t), Some(m)) => (t, m),
                _ => return Err(EntropyError::NoSuchTable { index: i, table, count: set.tables.len() }),
            };
            let idx = coder.decode_symbol(model).unwrap_infallible();
            if idx < t.range_len() {
                out.push(t.offset + idx as i32);
            } else {
                let bits = coder.decode_symbol(UniformModel::<u32, 24>::new(33)).unwrap_infallible() as u32;
                let chunks = bits.div_ceil(16);
                let mut code = 0u32;
                for c in 0..chunks {
                    let width = chunk_width(c, chunks, bits);
                    let chunk = coder.decode_symbol(UniformModel::<u32, 24>::new(1 << width)).unwrap_infallible();
                    code |= (chunk as u32) << (16 * c);
                }
                out.push(unzigzag(code));
            }
        }
        Ok(out)
    }

    /// Check that every symbol was popped.
    pub fn finish(self) -> Result<(), EntropyError> {
        if !self.coder.is_empty() {
            return Err(EntropyError::Corrupt("data left over after the last symbol"));
        }
        Ok(())
    }
}

/// Bits in chunk `c` of an escaped value's `bits`-bit code split into `chunks` 16-bit chunks,
/// least significant first: 16, except for a shorter last chunk.
fn chunk_width(c: u32, chunks: u32, bits: u32) -> u32 {
    if c + 1 == chunks && bits % 16 != 0 { bits % 16 } else { 16 }
}

fn zigzag(v: i32) -> u32 {
    ((v << 1) ^ (v >> 31)) as u32
}

fn unzigzag(c: u32) -> i32 {
    ((c >> 1) as i32) ^ -((c & 1) as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set() -> TableSet {
        let mut tables: Vec<CdfTable> = default_scale_table().into_iter().map(gaussian_table).collect();
        tables.push(CdfTable { offset: 5, probs: vec![TOTAL - 1, 1] });
        TableSet::new(tables).unwrap()
    }

    #[test]
    fn zigzag_round_trips_extremes() {
        for v in [0, 1, -1, 2, -2, i32::MAX, i32::MIN, 12345, -98765] {
            assert_eq!(unzigzag(zigzag(v)), v);
        }
    }

    #[test]
    fn round_trip_with_escapes() {
        let s = set();
        let last = (s.len() - 1) as u16;
        let values: Vec<i32> =
            vec![0, 1, -1, 3, -40, 1000, i32::MAX, i32::MIN, 5, 6, 4, 65535, 65536, -65536, 7];
        let tables: Vec<u16> = vec![0, 0, 0, 10, 10, 63, 63, 63, last, last, last, 5, 5, 5, 30];
        let bytes = s.encode(&values, &tables).unwrap();
        let back = s.decode(&bytes, values.len(), |i| tables[i] as usize).unwrap();
        assert_eq!(back, values);
    }

    #[test]
    fn rate_matches_information_content() {
        let s = set();
        // A pseudo-random Laplacian-ish sequence coded with a mid-size table.
        let mut x = 12345u32;
        let values: Vec<i32> = (0..20000)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                ((x >> 16) % 9) as i32 - 4
            })
            .collect();
        let tables = vec![20u16; values.len()];
        let bytes = s.encode(&values, &tables).unwrap();
        let bits: f64 = values.iter().map(|&v| s.bits(v, 20)).sum();
        let real = bytes.len() as f64 * 8.0;
        assert!((real - bits).abs() / bits < 0.01, "real {real} vs estimated {bits}");
        assert_eq!(s.decode(&bytes, values.len(), |_| 20).unwrap(), values);
    }

    #[test]
    fn corrupt_streams_fail_cleanly() {
        let s = set();
        assert!(s.decode(&[1, 2, 3], 3, |_| 0).is_err());
        assert!(s.decode(&[0, 0, 0, 0], 1, |_| 0).is_err());
        assert!(matches!(s.decode(&[], 1, |_| 999), Err(EntropyError::NoSuchTable { .. })));
        let bytes = s.encode(&[1, 2, 3], &[30, 30, 30]).unwrap();
        // Asking for fewer symbols than were coded leaves data behind.
        assert!(s.decode(&bytes, 1, |_| 30).is_err());
        // Random bytes never panic.
        let mut x = 1u32;
        for len in 0..200 {
            let junk: Vec<u8> = (0..len * 4)
                .map(|_| {
                    x = x.wrapping_mul(747_796_405).wrapping_add(2_891_336_453);
                    (x >> 24) as u8
                })
                .collect();
            let _ = s.decode(&junk, 50, |i| i % s.len());
        }
    }

    #[test]
    fn two_groups_on_one_trimmed_stack() {
        let s = set();
        let mut x = 777u32;
        let mut trimmed_total = 0;
        let mut words_total = 0;
        for n in [0usize, 1, 2, 3, 5, 17, 100, 1000] {
            let mut draw = |k: usize| -> (Vec<i32>, Vec<u16>) {
                (0..k)
                    .map(|_| {
                        x = x.wrapping_mul(747_796_405).wrapping_add(2_891_336_453);
                        (((x >> 20) % 31) as i32 - 15, ((x >> 8) % 64) as u16)
                    })
                    .unzip()
            };
            let (z, zt) = draw(n / 3 + 1);
            let (y, yt) = draw(n);
            let mut stack = StackEncoder::new();
            stack.push(&s, &y, &yt).unwrap();
            stack.push(&s, &z, &zt).unwrap();
            let words = {
                let mut w = StackEncoder::new();
                w.push(&s, &y, &yt).unwrap();
                w.push(&s, &z, &zt).unwrap();
                w.finish(Packing::Words)
            };
            let bytes = stack.finish(Packing::Trimmed);
            assert!(bytes.len() <= words.len() && bytes.len() + 3 >= words.len());
            assert_eq!(bytes[..], words[..bytes.len()]);
            assert_ne!(bytes.last(), Some(&0));
            trimmed_total += bytes.len();
            words_total += words.len();
            let mut d = StackDecoder::new(&bytes, Packing::Trimmed).unwrap();
            assert_eq!(d.pop(&s, z.len(), |i| zt[i] as usize).unwrap(), z);
            assert_eq!(d.pop(&s, y.len(), |i| yt[i] as usize).unwrap(), y);
            d.finish().unwrap();
            // The same bytes read as whole words fail unless they happen to be whole.
            if bytes.len() % 4 != 0 {
                assert!(StackDecoder::new(&bytes, Packing::Words).is_err());
            }
            // A trailing zero byte is not the stack's form.
            let mut padded = bytes.clone();
            padded.push(0);
            assert!(StackDecoder::new(&padded, Packing::Trimmed).is_err());
            // Popping fewer symbols leaves data behind.
            let mut d = StackDecoder::new(&bytes, Packing::Trimmed).unwrap();
            d.pop(&s, z.len(), |i| zt[i] as usize).unwrap();
            assert_eq!(d.finish().is_err(), !y.is_empty());
        }
        // Trimming saves bytes on average (1.5 a stack if the state is spread evenly).
        assert!(trimmed_total < words_total, "{trimmed_total} vs {words_total}");
    }

    #[test]
    fn junk_in_a_trimmed_stack_never_panics() {
        let s = set();
        let mut x = 5u32;
        for len in 0..300 {
            let junk: Vec<u8> = (0..len)
                .map(|_| {
                    x = x.wrapping_mul(747_796_405).wrapping_add(2_891_336_453);
                    (x >> 24) as u8
                })
                .collect();
            if let Ok(mut d) = StackDecoder::new(&junk, Packing::Trimmed) {
                let _ = d.pop(&s, 40, |i| i % s.len());
                let _ = d.pop(&s, 40, |i| (i * 7) % s.len());
            }
        }
    }
}
