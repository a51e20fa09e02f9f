//! An import body as lines: split as the bytes arrive (a CSV record may
//! span lines inside quotes), then each record parsed into a block to
//! import, or the reason it cannot be.

use serde::Deserialize;

use crate::blocklist::entity::{Entity, EntityType};
use crate::blocklist::routes::parse_reason;
use crate::blocklist::store::resolve_expiry;
use crate::error::{Error, Result};
use crate::http::{RejectedLine, NUL_REFUSED};
use crate::time::Timestamp;

/// A record longer than this is rejected unread: no real blocklist line is
/// anywhere near it, and it bounds what one record can make the server hold.
pub const MAX_RECORD_BYTES: usize = 64 * 1024;

/// What the body holds, from its media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportFormat {
    Ndjson,
    Csv,
}

/// One record of the file, as a block to import.
#[derive(Debug, Clone)]
pub struct ImportLine {
    pub line: usize,
    pub entity: Entity,
    pub reason: String,
    /// `None` means permanent.
    pub expires_at: Option<Timestamp>,
}

/// Where the CSV scanner is within a record, so that a line break inside
/// quotes stays in its field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quoting {
    FieldStart,
    Unquoted,
    Quoted,
    /// A quote inside a quoted field: the field's end, or the first half of `""`.
    QuoteInQuoted,
}

/// A record as the splitter hands it over: its first line and its bytes, or
/// why it was not read.
pub type Record<'a> = (usize, std::result::Result<&'a [u8], String>);

/// Splits a body into records as chunks arrive, holding only the record
/// that is not finished yet. Lines are numbered from 1; blank lines are
/// skipped but counted, and a trailing `\r` (CRLF files) is dropped.
pub struct RecordSplitter {
    csv: bool,
    /// The unfinished record's bytes so far.
    pending: Vec<u8>,
    /// Line on which the unfinished record starts.
    line: usize,
    /// Line breaks inside quotes in the unfinished record.
    inner_breaks: usize,
    quoting: Quoting,
    /// The unfinished record is longer than [`MAX_RECORD_BYTES`]: its
    /// bytes are dropped and the record ends at the next line break.
    overlong: bool,
    started: bool,
}

impl RecordSplitter {
    pub fn new(format: ImportFormat) -> Self {
        Self {
            csv: format == ImportFormat::Csv,
            pending: Vec::new(),
            line: 1,
            inner_breaks: 0,
            quoting: Quoting::FieldStart,
            overlong: false,
            started: false,
        }
    }

    /// Takes the next chunk and hands every record it completes to `each`.
    pub fn push(&mut self, mut chunk: &[u8], each: &mut impl FnMut(Record<'_>)) {
        if !self.started {
            self.started = true;
            chunk = chunk.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(chunk);
        }
        while let Some(end) = self.record_end(chunk) {
            let (head, tail) = chunk.split_at(end);
            self.complete(head, each);
            chunk = &tail[1..];
        }
        self.keep(chunk);
    }

    /// Hands over the last record when the body does not end with a line break.
    pub fn finish(&mut self, each: &mut impl FnMut(Record<'_>)) {
        if !self.pending.is_empty() || self.overlong {
            self.complete(&[], each);
        }
    }

    /// The index of the line break ending the record in `chunk`, if any;
    /// the quoting state carries over to the next chunk when there is none.
    fn record_end(&mut self, chunk: &[u8]) -> Option<usize> {
        if !self.csv || self.overlong {
            return chunk.iter().position(|byte| *byte == b'\n');
        }
        for (index, byte) in chunk.iter().enumerate() {
            self.quoting = match (self.quoting, *byte) {
                (Quoting::Quoted, b'\n') => {
                    self.inner_breaks += 1;
                    Quoting::Quoted
                }
                (_, b'\n') => return Some(index),
                (Quoting::FieldStart, b'"') => Quoting::Quoted,
                (Quoting::Quoted, b'"') => Quoting::QuoteInQuoted,
                (Quoting::QuoteInQuoted, b'"') => Quoting::Quoted,
                (Quoting::Quoted, _) => Quoting::Quoted,
                (_, b',') => Quoting::FieldStart,
                _ => Quoting::Unquoted,
            };
        }
        None
    }

    fn keep(&mut self, bytes: &[u8]) {
        if self.overlong {
            return;
        }
        if self.pending.len() + bytes.len() > MAX_RECORD_BYTES {
            self.overlong = true;
            self.pending = Vec::new();
            return;
        }
        self.pending.extend_from_slice(bytes);
    }

    fn complete(&mut self, head: &[u8], each: &mut impl FnMut(Record<'_>)) {
        let line = self.line;
        self.line += 1 + self.inner_breaks;
        self.inner_breaks = 0;
        self.quoting = Quoting::FieldStart;

        let overlong = std::mem::take(&mut self.overlong);
        if overlong || self.pending.len() + head.len() > MAX_RECORD_BYTES {
            self.pending.clear();
            each((line, Err(format!("longer than {MAX_RECORD_BYTES} bytes"))));
            return;
        }
        let record = if self.pending.is_empty() {
            head
        } else {
            self.pending.extend_from_slice(head);
            &self.pending
        };
        let record = record.strip_suffix(b"\r").unwrap_or(record);
        if !record.iter().all(u8::is_ascii_whitespace) {
            each((line, Ok(record)));
        }
        self.pending.clear();
    }
}

/// The fields of one NDJSON line: those of `POST /security/policy/blocks`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LineFields {
    entity_type: EntityType,
    value: String,
    reason: String,
    duration_seconds: Option<i64>,
    expires_at: Option<Timestamp>,
}

/// The columns a CSV header may name, in the order it names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Column {
    EntityType,
    Value,
    Reason,
    DurationSeconds,
}

impl Column {
    fn parse(name: &str) -> Option<Self> {
        match name {
            "entity_type" => Some(Column::EntityType),
            "value" => Some(Column::Value),
            "reason" => Some(Column::Reason),
            "duration_seconds" => Some(Column::DurationSeconds),
            _ => None,
        }
    }
}

/// What a record turned out to be.
pub enum Parsed {
    Block(ImportLine),
    Rejected(RejectedLine),
    /// The CSV header.
    Header,
}

/// Parses records in order; for CSV the first one is the header, which
/// says which column holds what.
pub struct LineParser {
    format: ImportFormat,
    columns: Option<Vec<Column>>,
}

impl LineParser {
    pub fn new(format: ImportFormat) -> Self {
        Self {
            format,
            columns: None,
        }
    }

    /// A bad record is `Parsed::Rejected`; only a CSV header that cannot be
    /// read fails the whole import, since no record after it could be.
    pub fn parse(&mut self, record: Record<'_>, now: Timestamp) -> Result<Parsed> {
        let (line, bytes) = record;
        let bytes = match bytes {
            Ok(bytes) => bytes,
            Err(error) => return Ok(Parsed::Rejected(RejectedLine { line, error })),
        };
        let parsed = match (self.format, &self.columns) {
            (ImportFormat::Ndjson, _) => parse_ndjson(bytes, now),
            (ImportFormat::Csv, None) => {
                self.columns = Some(parse_header(bytes)?);
                return Ok(Parsed::Header);
            }
            (ImportFormat::Csv, Some(columns)) => parse_csv(columns, bytes, now),
        };
        Ok(match parsed {
            Ok((entity, reason, expires_at)) => Parsed::Block(ImportLine {
                line,
                entity,
                reason,
                expires_at,
            }),
            Err(error) => Parsed::Rejected(RejectedLine { line, error }),
        })
    }
}

type LineResult = std::result::Result<(Entity, String, Option<Timestamp>), String>;

fn parse_ndjson(bytes: &[u8], now: Timestamp) -> LineResult {
    let fields: LineFields = serde_json::from_slice(bytes).map_err(|error| {
        if error.is_data() {
            error.to_string()
        } else {
            format!("malformed JSON: {error}")
        }
    })?;
    to_block(
        fields.entity_type,
        &fields.value,
        &fields.reason,
        fields.duration_seconds,
        fields.expires_at,
        now,
    )
}

fn parse_header(bytes: &[u8]) -> Result<Vec<Column>> {
    let invalid = |message: String| Error::invalid_field("header", message);
    let names = split_csv_fields(bytes).map_err(invalid)?;
    let mut columns = Vec::with_capacity(names.len());
    for name in &names {
        let column = Column::parse(name.trim())
            .ok_or_else(|| invalid(format!("unknown column `{name}`")))?;
        if columns.contains(&column) {
            return Err(invalid(format!("column `{name}` appears twice")));
        }
        columns.push(column);
    }
    for required in [Column::EntityType, Column::Value, Column::Reason] {
        if !columns.contains(&required) {
            return Err(invalid(
                "needs the columns entity_type, value, reason and optionally duration_seconds"
                    .to_string(),
            ));
        }
    }
    Ok(columns)
}

fn parse_csv(columns: &[Column], bytes: &[u8], now: Timestamp) -> LineResult {
    let fields = split_csv_fields(bytes)?;
    if fields.len() != columns.len() {
        return Err(format!(
            "expected {} fields, found {}",
            columns.len(),
            fields.len()
        ));
    }
    let field = |wanted: Column| {
        columns
            .iter()
            .position(|column| *column == wanted)
            .map(|index| fields[index].as_str())
    };
    let entity_type = field(Column::EntityType).unwrap_or_default();
    let entity_type = EntityType::parse(entity_type).ok_or_else(|| {
        format!("entity_type: unknown `{entity_type}`; expected ip, cidr, user or api_key")
    })?;
    let duration_seconds = match field(Column::DurationSeconds).map(str::trim) {
        None | Some("") => None,
        Some(text) => Some(
            text.parse::<i64>()
                .map_err(|_| format!("duration_seconds: `{text}` is not a whole number"))?,
        ),
    };
    to_block(
        entity_type,
        field(Column::Value).unwrap_or_default(),
        field(Column::Reason).unwrap_or_default(),
        duration_seconds,
        None,
        now,
    )
}

/// The fields of one RFC 4180 record: `"` quotes a field, `""` inside
/// quotes is a quote; quotes anywhere else are an error.
fn split_csv_fields(bytes: &[u8]) -> std::result::Result<Vec<String>, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not valid UTF-8".to_string())?;
    let mut fields = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(other) => field.push(other),
                    None => return Err("a quoted field is not closed".to_string()),
                }
            }
            if !matches!(chars.peek(), None | Some(',')) {
                return Err("text after a closing quote".to_string());
            }
        } else {
            while let Some(next) = chars.peek() {
                match next {
                    ',' => break,
                    '"' => return Err("a quote inside an unquoted field".to_string()),
                    _ => field.push(chars.next().expect("peeked")),
                }
            }
        }
        fields.push(field);
        if chars.next().is_none() {
            return Ok(fields);
        }
    }
}

/// The same rules as a single `POST /security/policy/blocks`.
fn to_block(
    entity_type: EntityType,
    value: &str,
    reason: &str,
    duration_seconds: Option<i64>,
    expires_at: Option<Timestamp>,
    now: Timestamp,
) -> LineResult {
    if value.contains('\0') {
        return Err(format!("value: {NUL_REFUSED}"));
    }
    if reason.contains('\0') {
        return Err(format!("reason: {NUL_REFUSED}"));
    }
    let entity =
        Entity::parse_new(entity_type, value).map_err(|message| format!("value: {message}"))?;
    let reason = parse_reason(reason).map_err(detail)?;
    let expires_at = resolve_expiry(now, duration_seconds, expires_at).map_err(detail)?;
    Ok((entity, reason, expires_at))
}

/// The client-facing text of a validation error.
fn detail(error: Error) -> String {
    match error {
        Error::Invalid { detail, .. } => detail,
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(format: ImportFormat, chunks: &[&[u8]]) -> Vec<(usize, String)> {
        let mut splitter = RecordSplitter::new(format);
        let mut records = Vec::new();
        let mut each = |(line, record): Record<'_>| {
            let text = match record {
                Ok(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                Err(error) => format!("error: {error}"),
            };
            records.push((line, text));
        };
        for chunk in chunks {
            splitter.push(chunk, &mut each);
        }
        splitter.finish(&mut each);
        records
    }

    #[test]
    fn records_keep_their_line_numbers_across_chunks_blank_lines_and_crlf() {
        let records = split(ImportFormat::Ndjson, &[b"a\r\n\r\nb", b"c\n  \n", b"d"]);

        assert_eq!(
            records,
            vec![(1, "a".into()), (3, "bc".into()), (5, "d".into())]
        );
    }

    #[test]
    fn a_csv_line_break_inside_quotes_stays_in_the_record() {
        let records = split(
            ImportFormat::Csv,
            &[
                b"h\r\nip,1.2.3.4,\"two\nli",
                b"nes \"\"x\"\"\"\nuser,bob,ok\n",
            ],
        );

        assert_eq!(
            records,
            vec![
                (1, "h".into()),
                (2, "ip,1.2.3.4,\"two\nlines \"\"x\"\"\"".into()),
                (4, "user,bob,ok".into())
            ]
        );
    }

    #[test]
    fn an_overlong_record_is_rejected_and_the_next_one_read() {
        let long = vec![b'x'; MAX_RECORD_BYTES + 10];
        let records = split(ImportFormat::Csv, &[b"\"", &long, b"\nnext\n"]);

        assert_eq!(records.len(), 2);
        assert_eq!(records[0].0, 1);
        assert!(records[0].1.starts_with("error: longer than"));
        assert_eq!(records[1], (2, "next".into()));
    }

    #[test]
    fn csv_fields_follow_rfc_4180_quoting() {
        assert_eq!(
            split_csv_fields(b"ip,\"a,b\",\"say \"\"hi\"\"\",").unwrap(),
            vec!["ip", "a,b", "say \"hi\"", ""]
        );
        assert!(split_csv_fields(b"ip,a\"b").is_err());
        assert!(split_csv_fields(b"ip,\"ab\"c").is_err());
        assert!(split_csv_fields(b"ip,\"ab").is_err());
    }
}
