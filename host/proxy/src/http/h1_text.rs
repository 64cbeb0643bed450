//! How HTTP/1.1 spells what weft writes: numbers, chunk sizes and `name: value` lines. Shared by
//! weft's client side (`upstream::wire`) and its server side (`listener::fast_path`), and
//! written into reused buffers without allocating, unlike `format!`.

use http::{HeaderMap, HeaderName, HeaderValue};

pub(crate) const CRLF: &[u8] = b"\r\n";

/// `n` in decimal, written into `room`.
pub(crate) fn itoa(mut n: u64, room: &mut [u8; 20]) -> &[u8] {
    let mut at = room.len();
    loop {
        at -= 1;
        room[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &room[at..];
        }
    }
}

/// A chunk's size, in hex (the line's CRLF is the caller's).
pub(crate) fn put_hex(out: &mut Vec<u8>, n: usize) {
    let digits = (usize::BITS - n.leading_zeros()).div_ceil(4).max(1);
    for shift in (0..digits).rev() {
        out.push(b"0123456789abcdef"[(n >> (shift * 4)) & 0xf]);
    }
}

/// One `name: value` line.
pub(crate) fn put_field(out: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
    out.extend_from_slice(name.as_str().as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(CRLF);
}

/// Every field, a line each (a head's, or the trailers in a chunked body's last chunk).
pub(crate) fn put_fields(out: &mut Vec<u8>, fields: &HeaderMap) {
    for (name, value) in fields {
        put_field(out, name, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_decimal() {
        for (n, text) in [(0, "0"), (7, "7"), (10, "10"), (1_234_567, "1234567"), (u64::MAX, "18446744073709551615")] {
            assert_eq!(itoa(n, &mut [0; 20]), text.as_bytes());
        }
    }

    #[test]
    fn chunk_sizes_are_hex() {
        for (n, hex) in [(0, "0"), (9, "9"), (10, "a"), (255, "ff"), (4096, "1000")] {
            let mut out = Vec::new();
            put_hex(&mut out, n);
            assert_eq!(out, hex.as_bytes());
        }
    }

    #[test]
    fn fields_are_lines() {
        let mut fields = HeaderMap::new();
        fields.insert("x-a", HeaderValue::from_static("1"));
        fields.append("x-a", HeaderValue::from_static("2"));
        let mut out = Vec::new();
        put_fields(&mut out, &fields);
        assert_eq!(out, b"x-a: 1\r\nx-a: 2\r\n");
    }
}
