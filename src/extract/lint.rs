//! Line-level checks of text inputs before DataFusion reads them, so that a bad row is
//! named by file and line, and quarantine can set it aside instead of failing the run.

use std::io::{BufReader, Read};
use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::Serialize;
use tokio_util::io::{StreamReader, SyncIoBridge};

use super::{ExtractError, SourceCtx};
use crate::config::BadRowPolicy;

/// A row that could not be read, with where it was and why.
#[derive(Debug, Clone, Serialize)]
pub struct BadRow {
    pub file: String,
    /// 1-based line of the row's first line; 0 for a whole file.
    pub line: u64,
    pub reason: String,
    /// The row as it was, lossily decoded.
    pub record: String,
}

/// Rows a source set aside.
#[derive(Debug, Clone, Default)]
pub struct RejectedRows {
    pub rows: Vec<BadRow>,
}

impl RejectedRows {
    pub fn push(&mut self, row: BadRow) {
        self.rows.push(row);
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// Decides what one bad row means under the source's policy: an error that stops the run,
/// or a row set aside.
pub(crate) fn bad_row(src: &SourceCtx<'_>, row: BadRow, rejected: &mut Vec<BadRow>) -> Result<(), ExtractError> {
    match src.spec.on_bad_rows {
        BadRowPolicy::Fail => Err(ExtractError::BadRow {
            source_name: src.name.into(),
            file: row.file,
            line: row.line,
            reason: row.reason,
        }),
        BadRowPolicy::Quarantine => {
            rejected.push(row);
            Ok(())
        }
    }
}

/// Runs `f` over the object's bytes as a synchronous reader on a blocking thread, so that
/// the `csv` and `serde_json` readers can stream files of any size from any store.
pub(crate) async fn with_reader<T, F>(store: Arc<dyn ObjectStore>, path: ObjectPath, f: F) -> Result<T, std::io::Error>
where
    T: Send + 'static,
    F: FnOnce(Box<dyn Read + Send>) -> T + Send + 'static,
{
    let result = store.get(&path).await.map_err(std::io::Error::other)?;
    let stream = result.into_stream().map_err(std::io::Error::other);
    let bridge = SyncIoBridge::new(StreamReader::new(stream));
    tokio::task::spawn_blocking(move || f(Box::new(BufReader::with_capacity(1 << 20, bridge))))
        .await
        .map_err(std::io::Error::other)
}

/// Whether a text value can be read as the declared type, with the parsers the typed view
/// uses.
pub(crate) fn fits(value: &str, to: &DataType) -> bool {
    let v = value.trim();
    if v.is_empty() {
        return true;
    }
    match to {
        DataType::Utf8 => true,
        DataType::Int64 => v.parse::<i64>().is_ok(),
        DataType::Float64 | DataType::Decimal128(_, _) => crate::udf::normalize_number(v).is_some(),
        DataType::Boolean => matches!(
            v.to_ascii_lowercase().as_str(),
            "true" | "false" | "t" | "f" | "1" | "0" | "yes" | "no" | "y" | "n"
        ),
        DataType::Date32 => crate::udf::parse_date(v).is_some(),
        DataType::Timestamp(_, _) => crate::udf::parse_timestamp(v).is_some(),
        _ => true,
    }
}

/// Short lossy rendering of a raw record for error messages and the quarantine.
pub(crate) fn lossy(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim_end_matches(['\r', '\n']);
    if text.len() > 2000 { format!("{}...", &text[..text.floor_char_boundary(2000)]) } else { text.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_types() {
        assert!(fits("12", &DataType::Int64));
        assert!(!fits("twaalf", &DataType::Int64));
        assert!(fits("12.50", &DataType::Decimal128(18, 2)));
        assert!(!fits("NaN", &DataType::Float64));
        assert!(fits("07-03-1980", &DataType::Date32));
        assert!(!fits("31-02-1980", &DataType::Date32));
        assert!(fits("", &DataType::Int64));
        assert!(fits("yes", &DataType::Boolean));
    }

    #[test]
    fn lossy_rendering_cuts_long_rows() {
        assert_eq!(lossy(b"a;b\r\n"), "a;b");
        assert_eq!(lossy(&[b'x'; 3000]).len(), 2003);
        assert_eq!(lossy(b"caf\xe9"), "caf\u{fffd}");
    }
}
