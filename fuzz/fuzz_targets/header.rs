//! Header parsing: never panics; whatever parses writes back to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

mod crc;

fuzz_target!(|data: &[u8]| {
    // The CRC would stop almost every input: half the runs repair it first.
    let bytes = crc::maybe_repair(data);
    let limits = cae_format::Limits::default();
    if let Ok(file) = cae_format::parse(&bytes, &limits) {
        let again = cae_format::write_file(&file).expect("a parsed file writes");
        assert_eq!(again, bytes, "parse → write is not the identity");
        let _ = file.header.decode_memory();
    }
});
