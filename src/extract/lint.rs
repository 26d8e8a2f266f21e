//! Line-level checks of text inputs before DataFusion reads them, so that a bad row is
//! named by file and line, and quarantine can set it aside instead of failing the run.
//! One driver ([`check_and_copy`]) does this for every text format; a format says how to
//! check one file and how to write the copy the engine reads ([`TextFormat`]).

use std::collections::HashSet;
use std::io::{BufReader, Read};
use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use serde::Serialize;
use tokio_util::io::{StreamReader, SyncIoBridge};

use super::{ExtractError, SourceCtx, scratch_copy_path};
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

/// A text file being read, from any store.
pub(crate) type Reader = Box<dyn Read + Send>;

/// What checking one text file found.
#[derive(Debug, Default)]
pub(crate) struct FileReport<T> {
    pub bad: Vec<BadRow>,
    /// Good rows.
    pub rows: u64,
    /// What the format learned about the file besides its rows: a header, value kinds.
    pub found: T,
}

/// A line-oriented text format (CSV, NDJSON) as the driver sees it.
pub(crate) trait TextFormat: Clone + Send + 'static {
    type Found: Send + 'static;
    /// Reads the file once: its bad rows, by line, and what the format needs to read it.
    /// An error fails the whole file (nothing of it can be trusted).
    fn check(&self, url: &str, reader: Reader) -> Result<FileReport<Self::Found>, String>;
    /// Called once every file is checked, before any copy is written: a format that
    /// reads all files with one schema settles it here.
    fn settle(&mut self, _reports: &[FileReport<Self::Found>]) {}
    /// Whether the engine cannot read the file as it is, even without bad lines.
    fn needs_rewrite(&self, found: &Self::Found) -> bool;
    /// Writes the file without the `skip` lines, rewritten as the format needs, to `dest`.
    fn write_copy(&self, reader: Reader, skip: &HashSet<u64>, dest: &Path) -> std::io::Result<()>;
}

/// One checked file and the URL the engine reads it from: the file itself, or its copy;
/// none when every row of it was bad.
pub(crate) struct CheckedFile<T> {
    pub report: FileReport<T>,
    pub read_url: Option<String>,
}

/// Checks every file of a source line by line, applies the source's bad-row policy, and
/// writes a scratch copy of the files the engine cannot read as they are (bad lines,
/// repairs, a row limit). Returns the settled format and the files in input order.
pub(crate) async fn check_and_copy<F: TextFormat>(
    mut format: F,
    src: &SourceCtx<'_>,
    files: &[(ObjectMeta, String)],
    rejected: &mut RejectedRows,
) -> Result<(F, Vec<CheckedFile<F::Found>>), ExtractError> {
    let mut reports = Vec::with_capacity(files.len());
    for (meta, url) in files {
        let (f, u) = (format.clone(), url.clone());
        let report = with_reader(src.store.clone(), meta.location.clone(), move |r| f.check(&u, r))
            .await
            .map_err(|e| e.to_string())
            .and_then(|checked| checked)
            .map_err(|reason| ExtractError::BadFile { source_name: src.name.into(), file: url.clone(), reason })?;
        for b in &report.bad {
            bad_row(src, b.clone(), &mut rejected.rows)?;
        }
        reports.push(report);
    }
    format.settle(&reports);
    let mut checked = Vec::with_capacity(files.len());
    for (index, ((meta, url), report)) in files.iter().zip(reports).enumerate() {
        let skip: HashSet<u64> = report.bad.iter().map(|b| b.line).collect();
        let read_url = if report.rows == 0 && !skip.is_empty() {
            None
        } else if !skip.is_empty() || src.limit.is_some() || format.needs_rewrite(&report.found) {
            let dest = scratch_copy_path(src.scratch, src.name, index, url);
            let (f, d) = (format.clone(), dest.clone());
            with_reader(src.store.clone(), meta.location.clone(), move |r| f.write_copy(r, &skip, &d))
                .await
                .and_then(|written| written)
                .map_err(|source| ExtractError::Scratch { path: dest.clone(), source })?;
            Some(format!("file://{}", dest.display()))
        } else {
            Some(url.clone())
        };
        checked.push(CheckedFile { report, read_url });
    }
    Ok((format, checked))
}

/// Creates the folder of a scratch copy and opens the file.
pub(crate) fn create_copy(dest: &Path) -> std::io::Result<std::fs::File> {
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::File::create(dest)
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
