//! Comparing secrets — tokens, passwords, CSRF tokens — without a timing side channel: every
//! byte is compared, so how long a refusal takes says nothing about how much was right.

/// Whether `given` equals `expected`, looking at every byte whatever the first difference.
pub fn same(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    #[test]
    fn equal_only_when_every_byte_is() {
        assert!(super::same(b"s3cret", b"s3cret"));
        assert!(!super::same(b"s3cret", b"s3creT"));
        assert!(!super::same(b"s3cret", b"s3cre"));
        assert!(super::same(b"", b""));
    }
}
