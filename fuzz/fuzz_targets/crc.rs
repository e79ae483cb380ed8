/// Repair the CRC when the first byte is odd, so that half the inputs get past the checksum
/// and reach the parser's field checks, the entropy decoder, the hyper-synthesis and the
/// alpha stream.
pub fn maybe_repair(data: &[u8]) -> Vec<u8> {
    let mut bytes = data.to_vec();
    if bytes.first().is_some_and(|b| b & 1 == 1) && bytes.len() >= 4 {
        let n = bytes.len() - 4;
        let crc = crc32fast::hash(&bytes[..n]);
        bytes[n..].copy_from_slice(&crc.to_be_bytes());
    }
    bytes
}
