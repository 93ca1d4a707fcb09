//! Text from a client (actor ids, method names, stream ids, paths…) quoted in an error message,
//! cut to a sane length: an error about a 1 MB method name must not be 1 MB itself.

use std::borrow::Cow;

/// The most characters of a client's name quoted in an error.
pub const MAX_NAME_CHARS: usize = 64;

/// The most characters of a longer text (a decoder's description of bad arguments, which may
/// quote them) kept in an error.
pub const MAX_TEXT_CHARS: usize = 256;

/// `name` as it may appear in an error message: whole if it has at most [`MAX_NAME_CHARS`]
/// characters, else its first ones followed by `…`.
pub fn name(name: &str) -> Cow<'_, str> {
    cut(name, MAX_NAME_CHARS)
}

/// `text` cut the same way to [`MAX_TEXT_CHARS`] characters.
pub fn text(text: &str) -> Cow<'_, str> {
    cut(text, MAX_TEXT_CHARS)
}

fn cut(text: &str, max_chars: usize) -> Cow<'_, str> {
    match text.char_indices().nth(max_chars) {
        None => Cow::Borrowed(text),
        Some((end, _)) => Cow::Owned(format!("{}…", &text[..end])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_names_are_cut_on_a_char_boundary_with_an_ellipsis() {
        assert_eq!(name("increment"), "increment");
        let exact = "m".repeat(MAX_NAME_CHARS);
        assert_eq!(name(&exact), exact.as_str());
        let long = "é".repeat(1024 * 1024);
        let quoted = name(&long);
        assert_eq!(quoted.chars().count(), MAX_NAME_CHARS + 1);
        assert!(quoted.ends_with('…'));
        assert!(quoted.starts_with(&"é".repeat(MAX_NAME_CHARS)));
        assert_eq!(text(&long).chars().count(), MAX_TEXT_CHARS + 1);
    }
}
