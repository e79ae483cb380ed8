//! Decompression of arbitrary bytes: never panics, and stays within small decoding limits
//! (libFuzzer's -rss_limit_mb catches anything that allocates past them).
#![no_main]

use libfuzzer_sys::fuzz_target;

mod crc;

fuzz_target!(|data: &[u8]| {
    let bytes = crc::maybe_repair(data);
    let limits = caec::Limits { max_width: 1024, max_height: 1024, max_pixels: 1 << 18, max_memory: 256 << 20 };
    if let Ok(img) = caec::decompress(&bytes, &limits) {
        let header = cae_format::parse_header(&bytes).expect("decoded, so it parses");
        assert_eq!((img.width(), img.height()), (header.width, header.height));
    }
    let _ = caec::info(&bytes);
});
