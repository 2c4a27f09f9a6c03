//! Config errors that say where: the file, the line and column, and the
//! field, rendered once when the error is made.

use std::fmt;
use std::ops::Range;
use std::path::Path;

/// A configuration error, already rendered with its location.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub(super) String);

impl ConfigError {
    pub(crate) fn at(
        file: &Path,
        text: &str,
        span: Option<Range<usize>>,
        field: &str,
        msg: impl fmt::Display,
    ) -> Self {
        let loc = match span {
            Some(span) => {
                let (line, col) = line_col(text, span.start);
                format!("{}:{line}:{col}", file.display())
            }
            None => file.display().to_string(),
        };
        if field.is_empty() {
            ConfigError(format!("{loc}: {msg}"))
        } else {
            ConfigError(format!("{loc}: {field}: {msg}"))
        }
    }
}

pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, col)
}
