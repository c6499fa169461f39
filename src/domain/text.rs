//! Bounds on the free text and the bytes a request may carry.

use super::RequestError;

/// Checks a payload-like field against the server's size limit.
pub fn check_size(field: &'static str, value: &[u8], limit: usize) -> Result<(), RequestError> {
    if value.len() > limit {
        return Err(RequestError::TooLarge {
            field: field.to_owned(),
            size: value.len(),
            limit,
        });
    }
    Ok(())
}

/// The longest error text a job keeps; a longer one (a stack trace, say) is cut there.
pub const MAX_STORED_ERROR: usize = 4096;

/// An attempt's error as the job keeps it: whole up to `MAX_STORED_ERROR` bytes, else cut at a
/// character boundary, saying so and how long it was, within the same bound.
pub fn stored_error(error: &str) -> std::borrow::Cow<'_, str> {
    if error.len() <= MAX_STORED_ERROR {
        return error.into();
    }
    let note = format!(" [truncated: {} bytes in all]", error.len());
    let mut end = MAX_STORED_ERROR - note.len();
    while !error.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{note}", &error[..end]).into()
}

/// Characters of a caller's value that a message echoes at most.
pub const MAX_SHOWN: usize = 64;

/// `value` as a message echoes it: quoted, and cut after `MAX_SHOWN` characters with "…", so
/// that no message grows with what a caller sent.
pub fn shown(value: &str) -> String {
    match value.char_indices().nth(MAX_SHOWN) {
        None => format!("{value:?}"),
        Some((end, _)) => format!("{:?}…", &value[..end]),
    }
}

/// Checks a short free-text field such as a cancel reason or an error message.
pub fn check_text(field: &str, value: &str, max: usize) -> Result<(), RequestError> {
    if value.len() > max {
        return Err(RequestError::invalid(
            field,
            format!("must be at most {max} bytes, got {}", value.len()),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echoed_values_are_cut() {
        assert_eq!(shown("key"), "\"key\"");
        let long = "é".repeat(1024 * 1024);
        let echoed = shown(&long);
        assert_eq!(echoed, format!("{:?}…", "é".repeat(MAX_SHOWN)));
    }

    #[test]
    fn long_errors_are_kept_cut_and_say_so() {
        assert_eq!(stored_error("short"), "short");
        let exact = "e".repeat(MAX_STORED_ERROR);
        assert_eq!(stored_error(&exact), exact);
        // Multi-byte characters across the cut: the text stays valid and within the bound.
        let long = "é".repeat(40_000);
        let stored = stored_error(&long);
        assert!(stored.len() <= MAX_STORED_ERROR, "{}", stored.len());
        assert!(stored.starts_with("éé"));
        assert!(
            stored.ends_with(" [truncated: 80000 bytes in all]"),
            "{stored}"
        );
    }
}
