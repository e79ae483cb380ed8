//! The IDX format of MNIST (http://yann.lecun.com/exdb/mnist/): a magic number whose third
//! byte is the element type (0x08 = u8) and fourth the number of dimensions, then each
//! dimension as a big-endian u32, then the data. Files may be gzip-compressed (`.gz`).

use std::io::Read;
use std::path::{Path, PathBuf};

/// Why an IDX file could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdxError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not an IDX file of unsigned bytes ({why})")]
    Format { path: PathBuf, why: String },
}

/// An IDX array of unsigned bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Idx {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// The largest array read (MNIST's training images are 47 MB).
const MAX_BYTES: usize = 1 << 30;

/// Parse IDX bytes (already decompressed).
pub fn parse(bytes: &[u8]) -> Result<Idx, String> {
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err("bad magic".into());
    }
    if bytes[2] != 0x08 {
        return Err(format!("element type 0x{:02x}, not u8", bytes[2]));
    }
    let n = bytes[3] as usize;
    if n == 0 || bytes.len() < 4 + 4 * n {
        return Err(format!("{n} dimensions in {} bytes", bytes.len()));
    }
    let dims: Vec<usize> =
        (0..n).map(|i| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().expect("4 bytes")) as usize).collect();
    let len = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).filter(|&l| l <= MAX_BYTES);
    let Some(len) = len else { return Err(format!("dimensions {dims:?} too large")) };
    let data = &bytes[4 + 4 * n..];
    if data.len() != len {
        return Err(format!("dimensions {dims:?} need {len} bytes, the file has {}", data.len()));
    }
    Ok(Idx { dims, data: data.to_vec() })
}

/// Read an IDX file, gunzipping it when its name ends in `.gz`.
pub fn read(path: &Path) -> Result<Idx, IdxError> {
    let io = |source| IdxError::Io { path: path.to_path_buf(), source };
    let raw = std::fs::read(path).map_err(io)?;
    let bytes = if path.extension().is_some_and(|e| e == "gz") {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..]).take(MAX_BYTES as u64 + 1024).read_to_end(&mut out).map_err(io)?;
        out
    } else {
        raw
    };
    parse(&bytes).map_err(|why| IdxError::Format { path: path.to_path_buf(), why })
}

/// One MNIST split: `n` images of `rows` x `cols` and their labels.
#[derive(Clone, Debug)]
pub struct Mnist {
    pub rows: usize,
    pub cols: usize,
    pub images: Vec<u8>,
    pub labels: Vec<u8>,
}

impl Mnist {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Pixels of image `i`.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.rows * self.cols;
        &self.images[i * n..(i + 1) * n]
    }

    /// Load `train` or `t10k` from `dir` (`{split}-images-idx3-ubyte[.gz]` and labels).
    pub fn load(dir: &Path, split: &str) -> Result<Mnist, IdxError> {
        let find = |kind: &str| {
            let plain = dir.join(format!("{split}-{kind}"));
            let gz = dir.join(format!("{split}-{kind}.gz"));
            if plain.exists() { plain } else { gz }
        };
        let (ip, lp) = (find("images-idx3-ubyte"), find("labels-idx1-ubyte"));
        let images = read(&ip)?;
        let labels = read(&lp)?;
        let bad = |why: String| IdxError::Format { path: ip.clone(), why };
        if images.dims.len() != 3 || labels.dims.len() != 1 || images.dims[0] != labels.dims[0] {
            return Err(bad(format!("image dimensions {:?} with label dimensions {:?}", images.dims, labels.dims)));
        }
        Ok(Mnist { rows: images.dims[1], cols: images.dims[2], images: images.data, labels: labels.data })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut b = vec![0, 0, 8, dims.len() as u8];
        for d in dims {
            b.extend_from_slice(&d.to_be_bytes());
        }
        b.extend_from_slice(data);
        b
    }

    #[test]
    fn parses_and_rejects() {
        let idx = parse(&file(&[2, 2, 3], &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12])).unwrap();
        assert_eq!(idx.dims, vec![2, 2, 3]);
        assert_eq!(idx.data[11], 12);
        assert!(parse(&file(&[2, 2, 3], &[0; 11])).is_err(), "short data");
        assert!(parse(&file(&[2, 2, 3], &[0; 13])).is_err(), "trailing data");
        assert!(parse(&[0, 0, 0x0d, 1, 0, 0, 0, 1, 0, 0, 0, 0]).is_err(), "float elements");
        assert!(parse(&file(&[u32::MAX, u32::MAX, u32::MAX], &[])).is_err(), "overflowing size");
        assert!(parse(&[0, 0, 8]).is_err());
    }

    #[test]
    fn reads_gzip_and_pairs_labels() {
        use std::io::Write;
        let dir = std::env::temp_dir().join(format!("cae-seed-idx-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&file(&[2, 2, 2], &[0, 64, 128, 255, 1, 2, 3, 4])).unwrap();
        std::fs::write(dir.join("t10k-images-idx3-ubyte.gz"), gz.finish().unwrap()).unwrap();
        std::fs::write(dir.join("t10k-labels-idx1-ubyte"), file(&[2], &[7, 3])).unwrap();
        let m = Mnist::load(&dir, "t10k").unwrap();
        assert_eq!((m.len(), m.rows, m.cols), (2, 2, 2));
        assert_eq!(m.image(1), &[1, 2, 3, 4]);
        assert_eq!(m.labels, vec![7, 3]);
        std::fs::write(dir.join("t10k-labels-idx1-ubyte"), file(&[3], &[7, 3, 1])).unwrap();
        assert!(Mnist::load(&dir, "t10k").is_err(), "label count differs");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
