//! What incoming and outgoing HTTP share on wasi-http: headers as the host
//! carries them (names and raw byte values) and writes in pieces the host
//! accepts.

/// Largest write the host accepts in one `blocking-write-and-flush`.
pub(crate) const WRITE_CHUNK: usize = 4096;

/// Headers from the host as Spindle keeps them: lower-case names, values
/// read as UTF-8 (an invalid byte becomes U+FFFD rather than failing the
/// request), in the order the host gave them.
pub(crate) fn headers_from_wire(entries: Vec<(String, Vec<u8>)>) -> Vec<(String, String)> {
    entries
        .into_iter()
        .map(|(name, value)| {
            (
                name.to_ascii_lowercase(),
                String::from_utf8_lossy(&value).into_owned(),
            )
        })
        .collect()
}

/// Headers as the host's `fields` take them, in order.
pub(crate) fn headers_to_wire(headers: Vec<(String, String)>) -> Vec<(String, Vec<u8>)> {
    headers
        .into_iter()
        .map(|(name, value)| (name, value.into_bytes()))
        .collect()
}

/// Writes `bytes` through `write` in pieces of at most [`WRITE_CHUNK`],
/// stopping at the first piece that fails.
pub(crate) fn write_in_pieces<E>(
    bytes: &[u8],
    write: impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<(), E> {
    bytes.chunks(WRITE_CHUNK).try_for_each(write)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_names_arrive_lower_case_with_values_and_order_kept() {
        let headers = headers_from_wire(vec![
            ("Content-Type".into(), b"application/json".to_vec()),
            ("X-Spindle-Signature".into(), b"t=1,v1=AbC".to_vec()),
            ("x-spindle-signature".into(), b"second".to_vec()),
        ]);
        assert_eq!(
            headers,
            vec![
                ("content-type".to_string(), "application/json".to_string()),
                ("x-spindle-signature".to_string(), "t=1,v1=AbC".to_string()),
                ("x-spindle-signature".to_string(), "second".to_string()),
            ]
        );
    }

    #[test]
    fn a_header_value_that_is_not_utf8_is_read_lossily_instead_of_failing() {
        let headers = headers_from_wire(vec![("x-raw".into(), vec![b'a', 0xff, b'b'])]);
        assert_eq!(
            headers,
            vec![("x-raw".to_string(), "a\u{fffd}b".to_string())]
        );
    }

    #[test]
    fn headers_go_to_the_host_as_their_bytes_in_order() {
        let wire = headers_to_wire(vec![
            ("content-type".into(), "text/event-stream".into()),
            ("spindle-component".into(), "execute".into()),
        ]);
        assert_eq!(
            wire,
            vec![
                ("content-type".to_string(), b"text/event-stream".to_vec()),
                ("spindle-component".to_string(), b"execute".to_vec()),
            ]
        );
    }

    #[test]
    fn a_write_is_split_into_pieces_the_host_accepts_and_loses_nothing() {
        let bytes: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let mut pieces: Vec<Vec<u8>> = Vec::new();
        let written: Result<(), ()> = write_in_pieces(&bytes, |piece| {
            pieces.push(piece.to_vec());
            Ok(())
        });
        assert_eq!(written, Ok(()));
        let lengths: Vec<usize> = pieces.iter().map(Vec::len).collect();
        assert_eq!(lengths, vec![4096, 4096, 1808]);
        assert_eq!(pieces.concat(), bytes);
    }

    #[test]
    fn writing_nothing_makes_no_write() {
        let mut calls = 0;
        let written: Result<(), ()> = write_in_pieces(&[], |_| {
            calls += 1;
            Ok(())
        });
        assert_eq!((written, calls), (Ok(()), 0));
    }

    #[test]
    fn writing_stops_at_the_first_piece_that_fails() {
        let mut calls = 0;
        let written = write_in_pieces(&[0u8; 3 * WRITE_CHUNK], |_| {
            calls += 1;
            if calls == 2 { Err("closed") } else { Ok(()) }
        });
        assert_eq!((written, calls), (Err("closed"), 2));
    }
}
