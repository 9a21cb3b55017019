//! Diagnostics: one problem in a configuration file, with the place it was found, and the
//! "did you mean" suggestion for a misspelt name.

use std::fmt;
use std::path::PathBuf;

/// One problem found in a route file, printed as `file:line:column: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

/// The candidate closest to `word`, when it is close enough to be a likely typo.
pub fn did_you_mean<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (strsim::damerau_levenshtein(word, c), *c))
        // Near, and nearer than half the word: `sftp` is two letters from `http` but not a
        // misspelling of it.
        .filter(|(d, c)| *d <= 2.max(c.len() / 3) && *d * 2 < word.len().max(c.len()))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_near_names() {
        assert_eq!(did_you_mean("pathh", &["path", "pattern"]), Some("path"));
        assert_eq!(
            did_you_mean("xml_to_jsn", &["xml_to_json", "set_header"]),
            Some("xml_to_json")
        );
        assert_eq!(did_you_mean("zzz", &["path", "pattern"]), None);
        assert_eq!(did_you_mean("sftp", &["file", "http", "tcp"]), None);
        assert_eq!(did_you_mean("htp", &["file", "http", "tcp"]), Some("http"));
    }
}
